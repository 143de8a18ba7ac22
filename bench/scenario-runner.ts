// Runs one scenario window: forks the load workers, starts them together,
// and around the measured window reads the server's CPU time and samples its
// RSS (and PostgreSQL's CPU time, and the machine's). Returns throughput,
// latency percentiles and cost per request for that window.

import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { LatencyHistogram } from "./latency-histogram.js";
import type { DataSet, Operation, PemIdentity, ScenarioKind, WorkerMessage, WorkerResult, WorkerTask } from "./load-protocol.js";
import type { MemorySample } from "./server-probe.js";
import { machineCpu, processCpuSeconds, processTreeCpuSeconds, sampleRss } from "./process-stats.js";

export interface ScenarioSpec {
  /** Report name, e.g. "get@64". */
  readonly name: string;
  readonly kind: ScenarioKind;
  readonly inFlight: number;
  readonly connections: number;
  readonly workers: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  readonly identity: PemIdentity;
  readonly putPercent?: number;
  /** Open loop at this many calls per second in all (shared by the workers); inFlight caps what may be outstanding. */
  readonly rate?: number;
}

export interface Target {
  readonly address: string;
  readonly serverId: string;
  readonly ca: string;
  readonly data: DataSet;
  /** The server process to measure, when it is a separate process. */
  readonly serverPid?: number;
  /** The postmaster, whose process tree is PostgreSQL's CPU. */
  readonly postgresPid?: number;
}

export interface OperationStats {
  readonly count: number;
  readonly errors: number;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly mean: number;
}

export interface ScenarioResult extends OperationStats {
  readonly name: string;
  readonly kind: ScenarioKind;
  readonly inFlight: number;
  readonly connections: number;
  readonly durationMs: number;
  readonly histogram: number[];
  readonly operations: Partial<Record<Operation, OperationStats & { histogram: number[] }>>;
  readonly errorCodes: Record<string, number>;
  readonly firstError?: string;
  readonly serverCpuSeconds: number;
  readonly postgresCpuSeconds: number;
  readonly clientCpuSeconds: number;
  readonly machineBusyPercent: number;
  readonly maxRssMb: number;
  readonly shortPages: number;
  /** process.memoryUsage() of the server at the end of the window (MB), when the probe runs. */
  readonly serverMemory?: MemorySample;
}

const WORKER = fileURLToPath(new URL("./load-worker.js", import.meta.url));
let scenarioCounter = 0;

/** Called at the edges of the measured window (the profiler uses them). */
export interface WindowHooks {
  readonly start?: () => void;
  readonly end?: () => void;
}

export async function runScenario(spec: ScenarioSpec, target: Target, hooks: WindowHooks = {}): Promise<ScenarioResult> {
  const workers = Math.max(1, Math.min(spec.workers, spec.inFlight, spec.connections));
  const salt = `${process.pid}-${++scenarioCounter}-${Date.now()}`;
  const children: ChildProcess[] = [];
  try {
    const tasks: WorkerTask[] = [];
    for (let w = 0; w < workers; w++) {
      tasks.push({
        workerId: w,
        kind: spec.kind,
        address: target.address,
        serverId: target.serverId,
        ca: target.ca,
        identity: spec.identity,
        channels: share(spec.connections, workers, w),
        inFlight: share(spec.inFlight, workers, w),
        ...(spec.rate === undefined ? {} : { rate: spec.rate / workers }),
        warmupMs: spec.warmupMs,
        durationMs: spec.durationMs,
        putPercent: spec.putPercent ?? 10,
        data: target.data,
        seed: (scenarioCounter * 7919 + w * 104729 + Date.now()) >>> 0,
        channelSalt: salt,
      });
    }
    for (const task of tasks) {
      // No inherited NODE_OPTIONS (a profiler meant for the server) or exec flags.
      const env = { ...process.env };
      delete env.NODE_OPTIONS;
      const child = fork(WORKER, ["--worker"], { execArgv: [], env, stdio: ["ignore", "inherit", "inherit", "ipc"] });
      children.push(child);
      child.send({ type: "prepare", task });
    }
    await Promise.all(children.map((c) => nextMessage(c, "ready", 30_000)));

    const startAt = Date.now() + 50;
    const results = children.map((c) => nextMessage(c, "result", spec.warmupMs + spec.durationMs + 60_000));
    // Awaited below; this only keeps an early failure from being "unhandled" meanwhile.
    for (const r of results) r.catch(() => {});
    for (const c of children) c.send({ type: "go", startAt });

    await sleepUntil(startAt + spec.warmupMs);
    hooks.start?.();
    const before = observe(target);
    const rss = target.serverPid === undefined ? undefined : sampleRss(target.serverPid);
    await sleepUntil(startAt + spec.warmupMs + spec.durationMs);
    const after = observe(target);
    hooks.end?.();
    const maxRssMb = rss?.stop() ?? NaN;

    const done = (await Promise.all(results)).map((m) => (m as Extract<WorkerMessage, { type: "result" }>).result);
    return summarize(spec, done, {
      serverCpuSeconds: after.server - before.server,
      postgresCpuSeconds: after.postgres - before.postgres,
      machineBusyPercent: (100 * (after.machine.busy - before.machine.busy)) / Math.max(1e-9, after.machine.total - before.machine.total),
      maxRssMb,
    });
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill();
  }
}

function summarize(
  spec: ScenarioSpec,
  results: WorkerResult[],
  observed: Pick<ScenarioResult, "serverCpuSeconds" | "postgresCpuSeconds" | "machineBusyPercent" | "maxRssMb">,
): ScenarioResult {
  const seconds = spec.durationMs / 1000;
  const all = new LatencyHistogram();
  const perOp = new Map<Operation, { h: LatencyHistogram; count: number; errors: number }>();
  const errorCodes: Record<string, number> = {};
  let count = 0;
  let errors = 0;
  let clientCpuSeconds = 0;
  let shortPages = 0;
  for (const r of results) {
    for (const [op, o] of Object.entries(r.operations) as Array<[Operation, NonNullable<WorkerResult["operations"][Operation]>]>) {
      const entry = perOp.get(op) ?? { h: new LatencyHistogram(), count: 0, errors: 0 };
      entry.h.add(o.histogram);
      entry.count += o.count;
      entry.errors += o.errors;
      perOp.set(op, entry);
      all.add(o.histogram);
      count += o.count;
      errors += o.errors;
    }
    for (const [code, n] of Object.entries(r.errorCodes)) errorCodes[code] = (errorCodes[code] ?? 0) + n;
    clientCpuSeconds += r.clientCpuSeconds;
    shortPages += r.shortPages;
  }
  const stats = (h: LatencyHistogram, n: number, e: number): OperationStats => ({
    count: n,
    errors: e,
    rps: n / seconds,
    p50: h.percentile(50),
    p99: h.percentile(99),
    p999: h.percentile(99.9),
    mean: h.mean(),
  });
  const operations: ScenarioResult["operations"] = {};
  for (const [op, e] of perOp) operations[op] = { ...stats(e.h, e.count, e.errors), histogram: e.h.toArray() };
  return {
    name: spec.name,
    kind: spec.kind,
    inFlight: spec.inFlight,
    connections: spec.connections,
    durationMs: spec.durationMs,
    ...stats(all, count, errors),
    histogram: all.toArray(),
    operations,
    errorCodes,
    firstError: results.find((r) => r.firstError)?.firstError,
    clientCpuSeconds,
    shortPages,
    ...observed,
  };
}

function observe(target: Target) {
  return {
    server: target.serverPid === undefined ? NaN : processCpuSeconds(target.serverPid),
    postgres: target.postgresPid === undefined ? NaN : processTreeCpuSeconds(target.postgresPid),
    machine: machineCpu(),
  };
}

function share(total: number, parts: number, index: number): number {
  return Math.floor(total / parts) + (index < total % parts ? 1 : 0);
}

function nextMessage(child: ChildProcess, type: WorkerMessage["type"], timeoutMs: number): Promise<WorkerMessage> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`load worker: no "${type}" within ${timeoutMs} ms`)), timeoutMs);
    const onMessage = (m: WorkerMessage) => {
      if (m.type === "failed") fail(new Error(`load worker failed: ${m.message}`));
      else if (m.type === type) {
        cleanup();
        resolve(m);
      }
    };
    const onExit = (code: number | null) => fail(new Error(`load worker exited (${code}) before "${type}"`));
    const cleanup = () => {
      clearTimeout(timer);
      child.off("message", onMessage);
      child.off("exit", onExit);
    };
    function fail(err: Error) {
      cleanup();
      reject(err);
    }
    child.on("message", onMessage);
    child.on("exit", onExit);
  });
}

function sleepUntil(epochMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, epochMs - Date.now())));
}
