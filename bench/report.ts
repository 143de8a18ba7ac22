// Turns one harness run into the report: per scenario (pooled over rounds)
// throughput, latency percentiles, CPU per 1,000 requests and RSS; the ratios
// the issue's targets are stated in, per round and as the median of rounds;
// pass/fail against those targets; and the machine it ran on. Writes
// bench/results/latest.json and latest.md.

import { highAvailabilityMarkdown, type HighAvailabilityResults } from "./high-availability.js";
import type { WatchFanoutResult } from "./watch-fanout.js";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { BenchConfig } from "./bench-config.js";
import type { CapturedStatement } from "./bench-database.js";
import type { RotationBench } from "./key-rotation-bench.js";
import type { PgbenchBinary, PgbenchResult } from "./database-floor.js";
import { LatencyHistogram } from "./latency-histogram.js";
import type { QueryPlan } from "./query-plans.js";
import type { StartupTimings, Timings } from "./replica-timings.js";
import type { ScenarioResult } from "./scenario-runner.js";
import type { MemorySample } from "./server-probe.js";

export interface Round {
  readonly scenarios: ScenarioResult[];
  readonly pgbench: PgbenchResult[];
}

export interface StatementCapture {
  readonly label: string;
  readonly statements: CapturedStatement[];
}

export interface BenchRun {
  readonly startedAt: string;
  readonly config: BenchConfig;
  readonly database: Readonly<Record<string, string>>;
  readonly statementsCaptured: boolean;
  readonly pgbench?: PgbenchBinary;
  readonly setupSeconds: Readonly<Record<string, number>>;
  /** Server RSS after seeding, before any scenario. */
  readonly idleRssMb: number;
  /** Heap used right after a forced full GC in the middle of a loaded window (issue 15). */
  /** secondHeapUsedMb: after a second full GC straight after the first (absent in runs before it was recorded). */
  readonly heap?: { readonly heapUsedMb: number; readonly secondHeapUsedMb?: number; readonly rssMb: number; readonly scenario: string };
  readonly rounds: Round[];
  readonly propagation?: Timings;
  /** WatchSecrets fan-out (issue 12). */
  readonly watch?: WatchFanoutResult;
  readonly startup?: StartupTimings;
  /** Replicas on one database and failover to a standby (full mode only). */
  readonly highAvailability?: HighAvailabilityResults;
  /** RotateEncryptionKey: the re-wrap rate, and GetSecret p99 during a re-wrap ÷ without (open loop). */
  readonly rotation?: RotationBench;
  readonly captures: StatementCapture[];
  readonly plans: QueryPlan[];
  readonly auditBatch?: number;
  readonly floorPuts?: { readonly transactions: number; readonly written: number };
  /** Per pgbench scenario: did it run the server's statements (same queryid, same text, or not)? */
  readonly floorMatch: Readonly<Record<string, "queryid" | "text" | "different">>;
  readonly notes: string[];
  readonly totalSeconds: number;
}

export interface PooledScenario {
  readonly name: string;
  readonly inFlight: number;
  readonly connections: number;
  readonly rps: number;
  readonly rpsPerRound: number[];
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly serverCpuPer1k: number;
  readonly postgresCpuPer1k: number;
  readonly clientCpuPer1k: number;
  readonly machineBusyPercent: number;
  readonly maxRssMb: number;
  readonly count: number;
  readonly errors: number;
  readonly errorCodes: Record<string, number>;
  readonly firstError?: string;
  readonly operations: Record<string, { rps: number; p50: number; p99: number; p999: number }>;
  readonly shortPages: number;
  /** The server's process.memoryUsage() at the end of the last round's window (MB). */
  readonly serverMemory?: MemorySample;
}

export interface Ratio {
  readonly name: string;
  readonly perRound: number[];
  readonly median: number;
}

export interface Target {
  /** The issue that set it. */
  readonly issue: number;
  readonly name: string;
  readonly goal: string;
  readonly value: number;
  readonly unit: string;
  readonly pass: boolean | undefined;
}

/** Which source was measured: the commit, and whether src/ or sql/ had uncommitted changes (read-only git). */
export function sourceInfo(): { commit: string; srcModified: boolean } {
  try {
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src", "sql", "gen"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return { commit, srcModified: dirty !== "" };
  } catch {
    return { commit: "unknown", srcModified: false };
  }
}

export function machineInfo() {
  const cpuinfo = safeRead("/proc/cpuinfo");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? "unknown";
  return {
    cores: os.availableParallelism(),
    model,
    memoryGb: Math.round(os.totalmem() / 1024 ** 3),
    node: process.version,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverageAtEnd: os.loadavg().map((l) => Number(l.toFixed(2))),
  };
}

function safeRead(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

export function pool(run: BenchRun): PooledScenario[] {
  const names = [...new Set(run.rounds.flatMap((r) => r.scenarios.map((s) => s.name)))];
  return names.map((name) => {
    const all = run.rounds.flatMap((r) => r.scenarios.filter((s) => s.name === name));
    const h = new LatencyHistogram();
    for (const s of all) h.add(s.histogram);
    const count = sum(all.map((s) => s.count));
    const seconds = sum(all.map((s) => s.durationMs)) / 1000;
    const per1k = (f: (s: ScenarioResult) => number) => (1000 * sum(all.map(f))) / Math.max(1, count);
    const ops: PooledScenario["operations"] = {};
    for (const op of new Set(all.flatMap((s) => Object.keys(s.operations)))) {
      const oh = new LatencyHistogram();
      let n = 0;
      for (const s of all) {
        const o = s.operations[op as keyof ScenarioResult["operations"]];
        if (o) {
          oh.add(o.histogram);
          n += o.count;
        }
      }
      ops[op] = { rps: n / seconds, p50: oh.percentile(50), p99: oh.percentile(99), p999: oh.percentile(99.9) };
    }
    const errorCodes: Record<string, number> = {};
    for (const s of all) for (const [c, n] of Object.entries(s.errorCodes)) errorCodes[c] = (errorCodes[c] ?? 0) + n;
    return {
      name,
      inFlight: all[0].inFlight,
      connections: all[0].connections,
      rps: count / seconds,
      rpsPerRound: all.map((s) => s.rps),
      p50: h.percentile(50),
      p99: h.percentile(99),
      p999: h.percentile(99.9),
      serverCpuPer1k: per1k((s) => s.serverCpuSeconds),
      postgresCpuPer1k: per1k((s) => s.postgresCpuSeconds),
      clientCpuPer1k: per1k((s) => s.clientCpuSeconds),
      machineBusyPercent: sum(all.map((s) => s.machineBusyPercent)) / all.length,
      maxRssMb: Math.max(...all.map((s) => s.maxRssMb)),
      count,
      errors: sum(all.map((s) => s.errors)),
      errorCodes,
      firstError: all.find((s) => s.firstError)?.firstError,
      operations: ops,
      shortPages: sum(all.map((s) => s.shortPages)),
      serverMemory: all[all.length - 1].serverMemory,
    };
  });
}

export function poolPgbench(run: BenchRun): Array<PgbenchResult & { tpsPerRound: number[] }> {
  const names = [...new Set(run.rounds.flatMap((r) => r.pgbench.map((p) => p.name)))];
  return names.map((name) => {
    const all = run.rounds.flatMap((r) => r.pgbench.filter((p) => p.name === name));
    const ok = all.filter((p) => p.failed === undefined);
    const median = (f: (p: PgbenchResult) => number) => medianOf(ok.map(f));
    return {
      ...all[0],
      tps: sum(ok.map((p) => p.transactions)) / Math.max(1e-9, sum(ok.map((p) => p.durationS))),
      transactions: sum(ok.map((p) => p.transactions)),
      p50: median((p) => p.p50),
      p99: median((p) => p.p99),
      p999: median((p) => p.p999),
      tpsPerRound: all.map((p) => p.tps),
    };
  });
}

export function ratios(run: BenchRun, inFlight: number): Ratio[] {
  const perRound = (f: (r: Round) => number | undefined) => run.rounds.map(f).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const s = (r: Round, name: string) => r.scenarios.find((x) => x.name === name);
  const p = (r: Round, name: string) => r.pgbench.find((x) => x.name === name && x.failed === undefined);
  const hi = `@${inFlight}`;
  const make = (name: string, f: (r: Round) => number | undefined): Ratio => {
    const values = perRound(f);
    return { name, perRound: values, median: medianOf(values) };
  };
  return [
    make(`GetSecret / Health throughput ${hi}`, (r) => div(s(r, `get${hi}`)?.rps, s(r, `health${hi}`)?.rps)),
    make(`PutSecret / Health throughput ${hi}`, (r) => div(s(r, `put${hi}`)?.rps, s(r, `health${hi}`)?.rps)),
    make(`Mix 90/10 / Health throughput ${hi}`, (r) => div(s(r, `mix${hi}`)?.rps, s(r, `health${hi}`)?.rps)),
    make(`GetSecret p99 / Health p99 ${hi}`, (r) => div(s(r, `get${hi}`)?.p99, s(r, `health${hi}`)?.p99)),
    make("GetSecret p50 / Health p50 @1", (r) => div(s(r, "get@1")?.p50, s(r, "health@1")?.p50)),
    // The least a durably audited read can add to a health check: the database's own time for it.
    make("(Health p50 + pgbench-get@1 p50) / Health p50 @1", (r) => {
      const health = s(r, "health@1")?.p50;
      const floor = p(r, "get@1")?.p50;
      return health === undefined || floor === undefined ? undefined : (health + floor) / health;
    }),
    make("PutSecret / pgbench-put throughput", (r) => div(s(r, `put${hi}`)?.rps, p(r, "put")?.tps)),
    make("GetSecret / pgbench-get throughput", (r) => div(s(r, `get${hi}`)?.rps, p(r, "get")?.tps)),
    // Issue 15: what the server itself controls.
    make("Server CPU ms per GetSecret @1", (r) => cpuPerCall(s(r, "get@1"))),
    make("GetSecret p50 @1 / (Health p50 @1 + pgbench-get@1 p50)", (r) => {
      const health = s(r, "health@1")?.p50;
      const floor = p(r, "get@1")?.p50;
      return health === undefined || floor === undefined ? undefined : div(s(r, "get@1")?.p50, health + floor);
    }),
    make(`Server CPU per GetSecret / per Health ${hi}`, (r) => div(cpuPerCall(s(r, `get${hi}`)), cpuPerCall(s(r, `health${hi}`)))),
    make(`Server CPU per PutSecret / per Health ${hi}`, (r) => div(cpuPerCall(s(r, `put${hi}`)), cpuPerCall(s(r, `health${hi}`)))),
    make("GetSecret p99 / Health p99, open loop at half the GetSecret maximum", (r) => div(s(r, "get@open")?.p99, s(r, "health@open")?.p99)),
    // Not a target: the opt-in mode where read audit events commit without waiting for the flush.
    make("GetSecret p99 with NEXUS_AUDIT_READ_DURABILITY=relaxed / Health p99, same open loop", (r) => div(s(r, "get@open-relaxed")?.p99, s(r, "health@open")?.p99)),
  ];
}

export function targets(run: BenchRun, pooled: PooledScenario[], rs: Ratio[]): Target[] {
  const ratio = (prefix: string) => rs.find((r) => r.name.startsWith(prefix))?.median ?? NaN;
  const list = pooled.find((s) => s.name === "list@1");
  const rss = Math.max(...pooled.map((s) => s.maxRssMb).filter(Number.isFinite));
  const check = (value: number, ok: (v: number) => boolean) => (Number.isFinite(value) ? ok(value) : undefined);
  const t = (name: string, goal: string, value: number, unit: string, ok: (v: number) => boolean, issue = 5): Target => ({ issue, name, goal, value, unit, pass: check(value, ok) });
  return [
    t(`GetSecret throughput ÷ Health @${run.config.inFlight}`, "≥ 0.8", ratio("GetSecret / Health throughput"), "×", (v) => v >= 0.8),
    t(`PutSecret throughput ÷ Health @${run.config.inFlight} (durable commits)`, "≥ 0.6", ratio("PutSecret / Health throughput"), "×", (v) => v >= 0.6),
    t(`GetSecret p99 ÷ Health p99 @${run.config.inFlight}`, "≤ 1.5", ratio("GetSecret p99 / Health p99"), "×", (v) => v <= 1.5),
    t("GetSecret p50 ÷ Health p50 @1", "≤ 2", ratio("GetSecret p50 / Health p50 @1"), "×", (v) => v <= 2),
    t(`ListSecrets p99 @1 (page of 100 of ${run.config.listPaths.toLocaleString("en-US")} paths)`, "≤ 20 ms", list?.p99 ?? NaN, "ms", (v) => v <= 20),
    t("Server RSS under load (max)", "≤ 150 MB", rss, "MB", (v) => v <= 150),
    t("Start to SERVING, existing migrated database (median)", "≤ 1000 ms", run.startup?.servingWithPasswordFile.p50 ?? NaN, "ms", (v) => v <= 1000),
    t("Policy propagation between replicas (p99)", "≤ 1000 ms", run.propagation?.p99 ?? NaN, "ms", (v) => v <= 1000),
    t(`Key rotation re-wrap rate, no other load (${(run.rotation?.dataKeys ?? 0).toLocaleString("en-US")} data keys)`, "≥ 5000 /s", run.rotation?.keysPerSecond ?? NaN, "/s", (v) => v >= 5000, 11),
    t("GetSecret p99 during a re-wrap ÷ without (open loop at half the GetSecret maximum)", "≤ 2", run.rotation?.p99Ratio ?? NaN, "×", (v) => v <= 2, 11),
    t("WatchSecrets delivery latency (p99)", "≤ 250 ms", run.watch?.latencyMs.p99 ?? NaN, "ms", (v) => v <= 250, 12),
    t("Server memory per idle watch stream (worse replica)", "≤ 50 KB", run.watch ? Math.max(run.watch.idleStreamKb.a, run.watch.idleStreamKb.b) : NaN, "KB", (v) => v <= 50, 12),
    // Issue 15 (second pass): what the server itself controls.
    t("Server CPU per GetSecret @1", "≤ 0.4 ms", ratio("Server CPU ms per GetSecret @1"), "ms", (v) => v <= 0.4, 15),
    t("GetSecret p50 @1 ÷ (Health p50 @1 + pgbench get@1 p50)", "≤ 1.5", ratio("GetSecret p50 @1 / (Health p50"), "×", (v) => v <= 1.5, 15),
    t(`Server CPU per GetSecret ÷ per Health @${run.config.inFlight}`, "≤ 2.5", ratio("Server CPU per GetSecret / per Health"), "×", (v) => v <= 2.5, 15),
    t(`Server CPU per PutSecret (durable) ÷ per Health @${run.config.inFlight}`, "≤ 3.0", ratio("Server CPU per PutSecret / per Health"), "×", (v) => v <= 3, 15),
    t("GetSecret p99 ÷ Health p99, same open-loop rate (half the GetSecret maximum)", "≤ 1.5", ratio("GetSecret p99 / Health p99, open loop"), "×", (v) => v <= 1.5, 15),
    t("Live heap after a full GC under load", "≤ 64 MB", run.heap?.heapUsedMb ?? NaN, "MB", (v) => v <= 64, 15),
    t("Server RSS under load (max), default settings", "≤ 180 MB", rss, "MB", (v) => v <= 180, 15),
  ];
}

export function buildReport(run: BenchRun) {
  const pooled = pool(run);
  const pgbench = poolPgbench(run);
  const rs = ratios(run, run.config.inFlight);
  const ts = targets(run, pooled, rs);
  return {
    generatedAt: new Date().toISOString(),
    startedAt: run.startedAt,
    mode: run.config.mode,
    command: run.config.mode === "quick" ? "BENCH_QUICK=1 make bench" : "make bench",
    machine: machineInfo(),
    source: sourceInfo(),
    database: { ...run.database, pgStatStatements: String(run.statementsCaptured) } as Record<string, string>,
    pgbench: run.pgbench,
    config: run.config,
    setupSeconds: run.setupSeconds,
    idleRssMb: run.idleRssMb,
    heap: run.heap,
    scenarios: pooled,
    pgbenchRuns: pgbench,
    ratios: rs,
    targets: ts,
    propagationMs: run.propagation,
    rotation: run.rotation,
    watch: run.watch,
    startupMs: run.startup,
    highAvailability: run.highAvailability,
    auditBatchDuringGet: run.auditBatch,
    floorPuts: run.floorPuts,
    floorRunsServerStatements: run.floorMatch,
    statements: run.captures,
    queryPlans: run.plans,
    rounds: run.rounds.map((r) => ({
      scenarios: r.scenarios.map(({ histogram: _h, operations, ...rest }) => ({
        ...rest,
        operations: Object.fromEntries(Object.entries(operations).map(([k, { histogram: _oh, ...o }]) => [k, o])),
      })),
      pgbench: r.pgbench,
    })),
    notes: run.notes,
    totalSeconds: run.totalSeconds,
  };
}

export type Report = ReturnType<typeof buildReport>;

export function markdown(report: Report): string {
  const m = report.machine;
  const f = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : "–");
  const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–");
  const lines: string[] = [];
  lines.push(`## Nexus benchmark (${report.mode} mode)`, "");
  lines.push(
    `${report.generatedAt.slice(0, 16).replace("T", " ")} UTC · ${m.cores} cores, ${m.model}, ${m.memoryGb} GB · Node ${m.node} · PostgreSQL ${report.database.server_version ?? "?"} (embedded; fsync=${report.database.fsync}, synchronous_commit=${report.database.synchronous_commit}, shared_buffers=${report.database.shared_buffers}×8kB) · pool ${report.config.poolMax} · ${report.config.rounds} round(s) × ${report.config.durationMs / 1000} s per scenario after ${report.config.warmupMs / 1000} s warm-up, interleaved · source ${report.source.commit}${report.source.srcModified ? " + uncommitted src/ changes" : ""} · reproduce: \`${report.command}\``,
    "",
  );
  lines.push("| scenario | in flight / conns | req/s | p50 ms | p99 ms | p99.9 ms | server CPU s / 1k req | PostgreSQL CPU s / 1k req | load-gen CPU s / 1k req | max server RSS MB | errors |");
  lines.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const s of report.scenarios) {
    lines.push(
      `| ${label(s.name)} | ${s.inFlight} / ${s.connections} | ${int(s.rps)} | ${f(s.p50)} | ${f(s.p99)} | ${f(s.p999)} | ${f(s.serverCpuPer1k, 3)} | ${f(s.postgresCpuPer1k, 3)} | ${f(s.clientCpuPer1k, 3)} | ${f(s.maxRssMb, 0)} | ${s.errors}${Object.keys(s.errorCodes).length ? ` (${Object.entries(s.errorCodes).map(([c, n]) => `${c} ${n}`).join(", ")})` : ""} |`,
    );
  }
  for (const p of report.pgbenchRuns) {
    lines.push(`| pgbench ${p.name} (database floor) | ${p.clients} / ${p.clients} | ${int(p.tps)} | ${f(p.p50)} | ${f(p.p99)} | ${f(p.p999)} | – | – | – | – | ${p.failed ? "FAILED" : 0} |`);
  }
  lines.push("");
  lines.push("| ratio (median of rounds) | value | per round |", "|---|---:|---|");
  for (const r of report.ratios) lines.push(`| ${r.name} | ${f(r.median)} | ${r.perRound.map((v) => f(v)).join(", ")} |`);
  lines.push("");
  lines.push("| target | issue | goal | measured | result |", "|---|---:|---|---:|---|");
  for (const t of report.targets) {
    lines.push(`| ${t.name} | ${t.issue} | ${t.goal} | ${t.unit === "×" ? f(t.value) + " ×" : f(t.value, t.unit === "MB" ? 0 : t.value < 10 ? 2 : 1) + " " + t.unit} | ${t.pass === undefined ? "not measured" : t.pass ? "pass" : "**FAIL**"} |`);
  }
  lines.push("");
  if (report.startupMs) {
    const s = report.startupMs;
    lines.push(
      `Start-up against the existing, migrated database (median of ${s.listening.samples.length}): health listener answers after ${f(s.listening.p50, 0)} ms (sealed); SERVING after ${f(s.servingAfterUnsealRpc.p50, 0)} ms with an Unseal RPC, ${f(s.servingWithPasswordFile.p50, 0)} ms with NEXUS_ADMIN_PASSWORD_FILE (scrypt N=2^17 included in both).`,
    );
  }
  const heaviest = [...report.scenarios].filter((s) => s.serverMemory).sort((a, b) => b.maxRssMb - a.maxRssMb)[0];
  lines.push(
    `Server RSS idle after seeding: ${f(report.idleRssMb, 0)} MB.` +
      (report.heap ? ` Heap used right after a forced full GC in the middle of ${report.heap.scenario} (its own window): ${f(report.heap.heapUsedMb, 1)} MB (RSS then ${f(report.heap.rssMb, 0)} MB)${report.heap.secondHeapUsedMb === undefined ? "" : `; after a second full GC straight after it, ${f(report.heap.secondHeapUsedMb, 1)} MB (lower when the first kept the floating garbage of the marking cycle it finished; a heap snapshot may hold less than both, see experiments/memory.md)`}.` : "") +
      (heaviest?.serverMemory
        ? ` At the end of ${heaviest.name} (max RSS ${f(heaviest.maxRssMb, 0)} MB): rss ${heaviest.serverMemory.rss} MB = V8 heap ${heaviest.serverMemory.heapTotal} MB (${heaviest.serverMemory.heapUsed} MB used) + external ${heaviest.serverMemory.external} MB (array buffers ${heaviest.serverMemory.arrayBuffers} MB) + ${f(heaviest.serverMemory.rss - heaviest.serverMemory.heapTotal - heaviest.serverMemory.external, 0)} MB code, stacks and native allocations.`
        : ""),
  );
  if (report.rotation) {
    const r = report.rotation;
    lines.push(
      `Key rotation: ${r.dataKeys.toLocaleString("en-US")} data keys re-wrapped in ${f(r.rewrapSeconds, 1)} s (${f(r.keysPerSecond, 0)}/s, no other load); GetSecret open loop at ${r.getRate}/s: p99 ${f(r.p99WithoutRewrap, 2)} ms without, ${f(r.p99DuringRewrap, 2)} ms during a re-wrap (×${f(r.p99Ratio, 2)}), ${r.getErrors} errors.`,
    );
  }
  if (report.propagationMs) {
    const p = report.propagationMs;
    lines.push(`Policy propagation A → B (${p.samples.length} policies): p50 ${f(p.p50, 1)} ms, p99 ${f(p.p99, 1)} ms, max ${f(p.max, 1)} ms.`);
  }
  if (report.highAvailability) lines.push("", ...highAvailabilityMarkdown(report.highAvailability));
  if (report.watch) {
    const w = report.watch;
    lines.push(
      `WatchSecrets fan-out: ${w.watchers} watchers over two replicas, ${w.puts} puts through A (each matching ≤ 5 watchers): ${w.delivered} deliveries (${w.missing} missing, ${w.errors} errors), latency p50 ${f(w.latencyMs.p50, 1)} ms, p99 ${f(w.latencyMs.p99, 1)} ms, max ${f(w.latencyMs.max, 1)} ms; RSS per idle stream ${f(w.idleStreamKb.a, 1)} KB on A, ${f(w.idleStreamKb.b, 1)} KB on B.`,
    );
  }
  lines.push("");
  return lines.join("\n");
}

export function label(name: string): string {
  const [kind, at] = name.split("@");
  if (at === "open") return `${label(`${kind}@x`).replace(/ @x$/, "")}, open loop at half the GetSecret maximum`;
  if (at === "open-relaxed") return `${label(`${kind}@open`)}, NEXUS_AUDIT_READ_DURABILITY=relaxed (read audit events not flushed before the answer; its own server)`;
  const names: Record<string, string> = { health: "Health/Check (mTLS)", get: "GetSecret", put: "PutSecret", mix: "90 % Get / 10 % Put", list: "ListSecrets (page of 100)" };
  return `${names[kind] ?? kind} @${at}`;
}

export function statementsMarkdown(report: Report): string {
  if (report.statements.length === 0) return "";
  const lines = ["### Statements captured by pg_stat_statements", ""];
  for (const c of report.statements) {
    lines.push(`**${c.label}**`, "");
    if (c.statements.length === 0) lines.push("(none with enough calls)", "");
    for (const s of c.statements) {
      lines.push(`- queryid \`${s.queryid}\`: ${s.calls.toLocaleString("en-US")} calls, ${s.rows.toLocaleString("en-US")} rows, ${s.meanMs.toFixed(3)} ms mean`, "", "  ```sql", ...s.query.trim().split("\n").map((l) => `  ${l}`), "  ```", "");
    }
  }
  return lines.join("\n");
}

export function plansMarkdown(report: Report): string {
  if (report.queryPlans.length === 0) return "";
  const lines = ["### Query plans (EXPLAIN ANALYZE, BUFFERS) of the hot statements", ""];
  for (const p of report.queryPlans) {
    lines.push(`**${p.label}**, ${p.planMode} plan: ${p.executionMs.toFixed(3)} ms`, "", "```", p.plan, "```", "");
  }
  return lines.join("\n");
}

export async function writeReport(dir: string, report: Report, extraMarkdown: string): Promise<{ json: string; md: string; table: string }> {
  await mkdir(dir, { recursive: true });
  const table = markdown(report);
  const md = [
    table,
    extraMarkdown,
    plansMarkdown(report),
    statementsMarkdown(report),
    "### Notes",
    "",
    ...report.notes.map((n) => `- ${n}`),
    "",
  ].join("\n");
  const json = path.join(dir, "latest.json");
  const mdFile = path.join(dir, "latest.md");
  await writeFile(json, JSON.stringify(report, null, 2) + "\n");
  await writeFile(mdFile, md);
  return { json, md: mdFile, table };
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
}

export function medianOf(values: number[]): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Server CPU milliseconds per completed call in a scenario window. */
function cpuPerCall(s: ScenarioResult | undefined): number | undefined {
  return s === undefined || s.count === 0 || !Number.isFinite(s.serverCpuSeconds) ? undefined : (1000 * s.serverCpuSeconds) / s.count;
}

function div(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : a / b;
}
