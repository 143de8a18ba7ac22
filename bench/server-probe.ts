// Preloaded into the server process by the harness (NODE_OPTIONS="--import
// …/server-probe.js"); observes, changes nothing the server does.
//   BENCH_PROBE_FILE    every 500 ms, process.memoryUsage() (and the maxima
//                       since start) written to this JSON file, so the report
//                       can say what the RSS is made of (V8 heap, external
//                       memory, or native memory outside both)
//                       SIGWINCH runs a full garbage collection and records
//                       the heap still in use after it (what the server really
//                       holds, not garbage not yet collected) as afterGc,
//                       then a second one (secondHeapUsed: see below)
//   BENCH_HEAP_SNAPSHOT_DIR  with BENCH_PROBE_FILE: after that collection (and
//                       after afterGc is written), a V8 heap snapshot
//                       heap-<n>.heapsnapshot, to see what the live heap holds
//                       (bench/heap-summary.ts reads it)
//   BENCH_GC_LOG        with BENCH_PROBE_FILE: each afterGc appended to this
//                       file, with the heap after a third, "major-snapshot" GC
//   BENCH_HEAP_SAMPLING_FILE  with BENCH_PROBE_FILE: V8's sampling heap
//                       profiler runs from start; after that collection, the
//                       allocation sites of the sampled objects still alive
//                       go to this file (a .heapprofile): what allocated the
//                       heap a forced collection keeps, which a snapshot
//                       (after its own, more thorough collections) may not show;
//                       with BENCH_HEAP_SAMPLING_ALL=1 every sampled
//                       allocation since start, collected or not
//   BENCH_PROFILE_DIR   SIGUSR2 starts V8's CPU profiler, the next SIGUSR2
//                       stops it and writes window-<n>.cpuprofile: exactly one
//                       scenario window of a warmed-up server, which --cpu-prof
//                       (the whole process life) cannot give

import { appendFileSync, renameSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import path from "node:path";
import { getHeapSpaceStatistics, setFlagsFromString, writeHeapSnapshot } from "node:v8";
import { runInNewContext } from "node:vm";

export interface MemorySample {
  readonly rss: number;
  readonly heapTotal: number;
  readonly heapUsed: number;
  readonly external: number;
  readonly arrayBuffers: number;
}

export interface ProbeFile {
  readonly at: number;
  readonly now: MemorySample;
  readonly max: MemorySample;
  /** The latest forced full GC (SIGWINCH): when, and heap used after it (MB). */
  readonly afterGc?: {
    readonly at: number;
    readonly heapUsed: number;
    /** Heap used after a second full GC straight after the first (no marking cycle left in progress). */
    readonly secondHeapUsed: number;
    readonly rss: number;
    readonly external: number;
    readonly arrayBuffers: number;
    /** V8 heap spaces' used size after the second GC (MB). */
    readonly spaces: Record<string, number>;
  };
}

function writeAtomically(file: string, content: string): void {
  writeFileSync(file + ".tmp", content);
  renameSync(file + ".tmp", file);
}

const probeFile = process.env.BENCH_PROBE_FILE;
if (probeFile !== undefined) {
  const mb = (n: number) => Math.round((n / 1024 / 1024) * 10) / 10;
  let max: MemorySample = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
  let afterGc: ProbeFile["afterGc"];
  const snapshotDir = process.env.BENCH_HEAP_SNAPSHOT_DIR;
  let snapshots = 0;
  // gc() without starting the server with --expose-gc (a flag that changes nothing else).
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as (options?: { type: "major"; execution: "sync" }) => void;
  const samplingFile = process.env.BENCH_HEAP_SAMPLING_FILE;
  const sampler = samplingFile === undefined ? undefined : new Session();
  if (sampler !== undefined) {
    sampler.connect();
    // BENCH_HEAP_SAMPLING_ALL=1: every sampled allocation, collected or not (where the allocation per request comes from).
    const all = process.env.BENCH_HEAP_SAMPLING_ALL === "1";
    sampler.post("HeapProfiler.startSampling", { samplingInterval: 8192, includeObjectsCollectedByMajorGC: all, includeObjectsCollectedByMinorGC: all });
  }
  process.on("SIGWINCH", () => {
    gc({ type: "major", execution: "sync" });
    const m = process.memoryUsage();
    // The same-thread session answers synchronously: the profile is of this moment, right after the collection.
    sampler?.post("HeapProfiler.getSamplingProfile", (err, result) => {
      if (err === null) writeAtomically(samplingFile!, JSON.stringify(result.profile));
    });
    // A second full collection straight after: the first one finishes the
    // marking cycle that was in progress under load, and what was marked or
    // allocated during that cycle survives it even if it died since (floating
    // garbage). Measured once: 109 MB after the first, 42 MB after the second,
    // as a heap snapshot saw. Not always: another run kept 124 MB through both
    // while the snapshot right after held 43 MB (experiments/memory.md).
    gc({ type: "major", execution: "sync" });
    const second = process.memoryUsage().heapUsed;
    const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, mb(s.space_used_size)]));
    afterGc = { at: Date.now(), heapUsed: mb(m.heapUsed), secondHeapUsed: mb(second), rss: mb(m.rss), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers), spaces };
    writeAtomically(probeFile, JSON.stringify({ at: Date.now(), now: { rss: mb(m.rss), heapTotal: mb(m.heapTotal), heapUsed: mb(m.heapUsed), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) }, max, afterGc } satisfies ProbeFile));
    // BENCH_GC_LOG: afterGc, then the heap after a third, "major-snapshot" GC
    // (as a heap snapshot collects: no heap pointers assumed on the native stack).
    const gcLog = process.env.BENCH_GC_LOG;
    if (gcLog !== undefined) {
      (gc as (options: { type: string; execution: string }) => void)({ type: "major-snapshot", execution: "sync" });
      appendFileSync(gcLog, JSON.stringify({ ...afterGc, majorSnapshotHeapUsed: mb(process.memoryUsage().heapUsed) }) + "\n");
    }
    if (snapshotDir !== undefined) writeHeapSnapshot(path.join(snapshotDir, `heap-${++snapshots}.heapsnapshot`));
  });
  setInterval(() => {
    const m = process.memoryUsage();
    const now = { rss: mb(m.rss), heapTotal: mb(m.heapTotal), heapUsed: mb(m.heapUsed), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) };
    max = {
      rss: Math.max(max.rss, now.rss),
      heapTotal: Math.max(max.heapTotal, now.heapTotal),
      heapUsed: Math.max(max.heapUsed, now.heapUsed),
      external: Math.max(max.external, now.external),
      arrayBuffers: Math.max(max.arrayBuffers, now.arrayBuffers),
    };
    writeAtomically(probeFile, JSON.stringify({ at: Date.now(), now, max, afterGc } satisfies ProbeFile));
  }, 500).unref();
}

const profileDir = process.env.BENCH_PROFILE_DIR;
if (profileDir !== undefined) {
  const session = new Session();
  session.connect();
  let profiling = false;
  let windows = 0;
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params ?? {}, (err, result) => (err ? reject(err) : resolve(result))));
  process.on("SIGUSR2", () => {
    if (!profiling) {
      profiling = true;
      void post("Profiler.enable")
        .then(() => post("Profiler.setSamplingInterval", { interval: 250 }))
        .then(() => post("Profiler.start"));
    } else {
      profiling = false;
      void post("Profiler.stop").then((result) => {
        writeAtomically(path.join(profileDir, `window-${++windows}.cpuprofile`), JSON.stringify((result as { profile: unknown }).profile));
      });
    }
  });
}
