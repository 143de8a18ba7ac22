// How big and how long: `make bench` (full: under 8 minutes on a 2-core
// machine), BENCH_QUICK=1 (under a minute, smaller data), BENCH_PROFILE=1
// (CPU profiles of the get and put windows instead of the report), BENCH_AB=1
// (A/B of a proposed change, see ab-experiment.ts). Any
// number can be overridden with its BENCH_* variable for experiments.

export type BenchMode = "full" | "quick" | "profile" | "ab";

export interface BenchConfig {
  readonly mode: BenchMode;
  readonly readSecrets: number;
  readonly writeSecrets: number;
  readonly listPaths: number;
  readonly valueBytes: number;
  readonly rounds: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Calls in flight and connections of the throughput scenarios. */
  readonly inFlight: number;
  readonly connections: number;
  /** Load-generating processes of the throughput scenarios. */
  readonly workers: number;
  /** NEXUS_DB_POOL_MAX, and pgbench's client count. */
  readonly poolMax: number;
  readonly pgbench: boolean;
  readonly pgbenchSeconds: number;
  readonly propagationRepeats: number;
  readonly startupRepeats: number;
  /** GetSecret with 1, 2 and 3 replicas on one database (issue 16). */
  readonly replicaScaling: boolean;
  /** Failovers to a synchronous standby (Debian PostgreSQL packages; issue 16). */
  readonly failoverRepeats: number;
  /** Data keys in the database for the timed key rotation (0: skip it). */
  readonly rotationDataKeys: number;
  /** GetSecret's open-loop window without a re-wrap, before the one during it. */
  readonly rotationWindowMs: number;
  /** WatchSecrets fan-out (watch-fanout.ts): streams over two replicas (0: skipped), puts per second through A, and for how long. */
  readonly watchers: number;
  readonly watchPutsPerSecond: number;
  readonly watchDurationMs: number;
  /** The open-loop GetSecret also against a second server with NEXUS_AUDIT_READ_DURABILITY=relaxed (its own line). */
  readonly relaxedRead: boolean;
}

const FULL: BenchConfig = {
  mode: "full",
  readSecrets: 10_000,
  writeSecrets: 10_000,
  listPaths: 1_000_000,
  valueBytes: 1024,
  rounds: 3,
  warmupMs: 2000,
  durationMs: 7000,
  inFlight: 64,
  connections: 4,
  workers: 2,
  poolMax: 8,
  pgbench: true,
  pgbenchSeconds: 7,
  propagationRepeats: 20,
  startupRepeats: 5,
  replicaScaling: true,
  failoverRepeats: 3,
  rotationDataKeys: 100_000,
  rotationWindowMs: 10_000,
  watchers: 1000,
  watchPutsPerSecond: 200,
  watchDurationMs: 10_000,
  relaxedRead: true,
};

const QUICK: BenchConfig = {
  ...FULL,
  mode: "quick",
  readSecrets: 1000,
  writeSecrets: 1000,
  listPaths: 20_000,
  rounds: 1,
  warmupMs: 700,
  durationMs: 2000,
  pgbenchSeconds: 2,
  propagationRepeats: 5,
  startupRepeats: 1,
  replicaScaling: false,
  failoverRepeats: 0,
  rotationDataKeys: 3000,
  rotationWindowMs: 1500,
  watchers: 100,
  watchDurationMs: 3000,
};

const PROFILE: BenchConfig = {
  ...FULL,
  mode: "profile",
  listPaths: 20_000,
  rounds: 1,
  durationMs: 10_000,
  pgbench: false,
  propagationRepeats: 0,
  startupRepeats: 0,
  replicaScaling: false,
  failoverRepeats: 0,
  rotationDataKeys: 0,
  watchers: 0,
};

const AB: BenchConfig = {
  ...FULL,
  mode: "ab",
  listPaths: 20_000,
  rounds: 4,
  warmupMs: 1500,
  durationMs: 5000,
  pgbench: false,
  propagationRepeats: 0,
  startupRepeats: 0,
  replicaScaling: false,
  failoverRepeats: 0,
  rotationDataKeys: 0,
  watchers: 0,
};

export function benchConfig(env: NodeJS.ProcessEnv = process.env): BenchConfig {
  const base = env.BENCH_AB === "1" ? AB : env.BENCH_PROFILE === "1" ? PROFILE : env.BENCH_QUICK === "1" ? QUICK : FULL;
  const num = (name: string, fallback: number) => {
    const raw = env[`BENCH_${name}`];
    if (raw === undefined || raw === "") return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) throw new Error(`BENCH_${name}: "${raw}" is not a non-negative number`);
    return n;
  };
  return {
    ...base,
    readSecrets: num("READ_SECRETS", base.readSecrets),
    writeSecrets: num("WRITE_SECRETS", base.writeSecrets),
    listPaths: num("LIST_PATHS", base.listPaths),
    rounds: num("ROUNDS", base.rounds),
    warmupMs: num("WARMUP_MS", base.warmupMs),
    durationMs: num("DURATION_MS", base.durationMs),
    workers: num("WORKERS", base.workers),
    poolMax: num("POOL_MAX", base.poolMax),
    pgbench: env.BENCH_PGBENCH === undefined ? base.pgbench : env.BENCH_PGBENCH === "1",
    pgbenchSeconds: num("PGBENCH_SECONDS", base.pgbenchSeconds),
    propagationRepeats: num("PROPAGATION_REPEATS", base.propagationRepeats),
    startupRepeats: num("STARTUP_REPEATS", base.startupRepeats),
    replicaScaling: env.BENCH_REPLICA_SCALING === undefined ? base.replicaScaling : env.BENCH_REPLICA_SCALING === "1",
    failoverRepeats: num("FAILOVER_REPEATS", base.failoverRepeats),
    watchers: num("WATCHERS", base.watchers),
    watchPutsPerSecond: num("WATCH_PUTS_PER_SECOND", base.watchPutsPerSecond),
    watchDurationMs: num("WATCH_DURATION_MS", base.watchDurationMs),
    relaxedRead: env.BENCH_RELAXED_READ === undefined ? base.relaxedRead : env.BENCH_RELAXED_READ === "1",
  };
}
