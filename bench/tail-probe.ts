// Bench-only observer for the open-loop tail (issue 15), loaded by
// server-patches.ts as the `tail-probe` patch: every second it appends one
// JSON line to BENCH_TAIL_PROBE_FILE (default /tmp/nexus-tail-probe-<pid>.jsonl)
// with the event loop's delay (is the loop blocked?), garbage-collection
// pauses by kind, and the group commits' batches: how many items, how long an
// item waited from submit to its result, and how long each batch's statement
// took. It wraps GroupCommit's methods and changes nothing they do.

import { appendFileSync } from "node:fs";
import { monitorEventLoopDelay, PerformanceObserver, performance } from "node:perf_hooks";

interface Stats {
  n: number;
  values: number[];
}
const stats = (): Stats => ({ n: 0, values: [] });
const add = (s: Stats, v: number) => {
  s.n++;
  s.values.push(v);
};
const summary = (s: Stats) => {
  const v = s.values.sort((a, b) => a - b);
  const at = (q: number) => (v.length === 0 ? 0 : Number(v[Math.min(v.length - 1, Math.floor(q * v.length))].toFixed(2)));
  return { n: s.n, p50: at(0.5), p99: at(0.99), max: at(1), sum: Number(v.reduce((a, b) => a + b, 0).toFixed(1)) };
};

const file = process.env.BENCH_TAIL_PROBE_FILE ?? `/tmp/nexus-tail-probe-${process.pid}.jsonl`;
const loop = monitorEventLoopDelay({ resolution: 5 });
loop.enable();
let gc: Record<string, Stats> = {};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = String((e as { detail?: { kind?: number } }).detail?.kind ?? "?");
    add((gc[kind] ??= stats()), e.duration);
  }
}).observe({ entryTypes: ["gc"] });

let waited = stats();
let batchSizes = stats();
let statements = stats();
let cpu = process.cpuUsage();

const { GroupCommit } = (await import(new URL("../src/store/group-commit.js", import.meta.url).href)) as typeof import("../src/store/group-commit.js");
type Any = Record<string, (...args: unknown[]) => unknown>;
const proto = GroupCommit.prototype as unknown as Any;
const submit = proto.submit;
proto.submit = function (this: unknown, ...args: unknown[]) {
  const t = performance.now();
  const p = submit.apply(this, args) as Promise<unknown>;
  p.then(
    () => add(waited, performance.now() - t),
    () => add(waited, performance.now() - t),
  );
  return p;
};
const take = proto.take;
proto.take = function (this: { run: (b: unknown[]) => Promise<unknown> } & Any, ...args: unknown[]) {
  const batch = take.apply(this, args) as unknown[];
  add(batchSizes, batch.length);
  const run = this.run;
  if (!(run as { probed?: boolean }).probed) {
    const wrapped = async (b: unknown[]) => {
      const t = performance.now();
      try {
        return await run(b);
      } finally {
        add(statements, performance.now() - t);
      }
    };
    (wrapped as { probed?: boolean }).probed = true;
    this.run = wrapped;
  }
  return batch;
};

setInterval(() => {
  const c = process.cpuUsage(cpu);
  cpu = process.cpuUsage();
  const line = {
    t: new Date().toISOString(),
    cpuMs: Math.round((c.user + c.system) / 1000),
    loopMs: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
    gc: Object.fromEntries(Object.entries(gc).map(([k, s]) => [k, summary(s)])),
    groupCommitWaitMs: summary(waited),
    batchSize: summary(batchSizes),
    batchStatementMs: summary(statements),
    heapMb: Math.round(process.memoryUsage().heapUsed / 1048576),
  };
  loop.reset();
  gc = {};
  waited = stats();
  batchSizes = stats();
  statements = stats();
  appendFileSync(file, JSON.stringify(line) + "\n");
}, 1000).unref();
