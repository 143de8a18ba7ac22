// `make bench`: measures Nexus against its own stack's ceiling (Health/Check on
// the same mTLS port) and PostgreSQL's floor (pgbench with the server's own
// statements), in one run on one machine, and writes the report.
//
//   1. an embedded PostgreSQL with durable commits, the PKI, and the real
//      server (`node bin/nexus.js serve`, production mode) as a child process;
//   2. Initialize, Login, policies; secrets seeded with PutSecret, the
//      1,000,000 ListSecrets paths with generate_series; ANALYZE;
//   3. rounds of interleaved scenarios (A B C … A B C …), load from forked
//      worker processes, server CPU and RSS read from /proc around each window;
//   4. policy propagation between two replicas, start-up time; in full mode,
//      GetSecret with 1, 2 and 3 replicas and failover to a synchronous
//      standby (high-availability.ts);
//   5. bench/results/latest.{json,md}, and the table on stdout.
//
// BENCH_QUICK=1: the same in under a minute with less data. BENCH_PROFILE=1:
// CPU profiles of the server during the get and put windows (profile.md).

import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { abExperiment, abSettings } from "./ab-experiment.js";
import { benchConfig, type BenchConfig } from "./bench-config.js";
import { analyze, capturedStatements, resetStatements, seedListPaths, startBenchDatabase, type BenchDatabase, type CapturedStatement } from "./bench-database.js";
import { createBenchPki, NEXUS_ID, type BenchPki } from "./bench-pki.js";
import { profileMarkdown, summarizeProfile, type CpuProfile } from "./cpu-profile.js";
import { FLOOR_BOOKKEEPING, findPgbench, floorPutsWritten, floorReadsFound, pgbenchGet, pgbenchPut, prepareFloorData, type FloorRun, type PgbenchResult } from "./database-floor.js";
import { BENCH_POLICIES, createPolicy, initializeAndLogin, seedReadAndWriteSecrets } from "./nexus-setup.js";
import { processRssMb } from "./process-stats.js";
import { explainHotStatements } from "./query-plans.js";
import { failoverTimes, replicaScaling, type HighAvailabilityResults } from "./high-availability.js";
import { keyRotationBench, type RotationBench } from "./key-rotation-bench.js";
import { policyPropagation, startupTimes } from "./replica-timings.js";
import { buildReport, label, writeReport, type BenchRun, type Round, type StatementCapture } from "./report.js";
import { watchFanout } from "./watch-fanout.js";
import { runScenario, type ScenarioResult, type ScenarioSpec, type Target, type WindowHooks } from "./scenario-runner.js";
import { readProbe, retryOnPortClash, sleep, spawnServer, waitForHealth, type ServerOptions, type ServerProcess } from "./server-process.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const RESULTS = path.join(REPO, "bench", "results");
const PASSWORD = "bench-admin-password-0123456789";

function scenarios(config: BenchConfig, pki: BenchPki): ScenarioSpec[] {
  const n = config.inFlight;
  const wide = { inFlight: n, connections: config.connections, workers: config.workers, warmupMs: config.warmupMs, durationMs: config.durationMs };
  const single = { inFlight: 1, connections: 1, workers: 1, warmupMs: config.warmupMs, durationMs: config.durationMs };
  const c = pki.callers;
  return [
    { name: `health@${n}`, kind: "health", identity: c.reader, ...wide },
    { name: `get@${n}`, kind: "get", identity: c.reader, ...wide },
    { name: `put@${n}`, kind: "put", identity: c.writer, ...wide },
    { name: `mix@${n}`, kind: "mix", identity: c.mixed, putPercent: 10, ...wide },
    { name: "health@1", kind: "health", identity: c.reader, ...single },
    { name: "get@1", kind: "get", identity: c.reader, ...single },
    { name: "list@1", kind: "list", identity: c.lister, ...single },
  ];
}

/**
 * Open loop (issue 15): Health and GetSecret at the same fixed rate, half of
 * the GetSecret maximum measured earlier in the same round, so their p99s
 * compare the server's own latency at a load it can sustain. At most 4096
 * calls may be outstanding (a stall shows as latency, not as calls not sent);
 * more count as errors.
 */
function openLoopScenarios(config: BenchConfig, pki: BenchPki, rate: number, relaxed = false): ScenarioSpec[] {
  const shape = { inFlight: 4096, connections: config.connections, workers: config.workers, warmupMs: config.warmupMs, durationMs: config.durationMs, rate };
  return [
    { name: "health@open", kind: "health", identity: pki.callers.reader, ...shape },
    { name: "get@open", kind: "get", identity: pki.callers.reader, ...shape },
    // The opt-in relaxed read audit (NEXUS_AUDIT_READ_DURABILITY=relaxed), on a server of its own: its own line, never a target.
    ...(relaxed ? [{ name: RELAXED_OPEN, kind: "get" as const, identity: pki.callers.reader, ...shape }] : []),
  ];
}

const RELAXED_OPEN = "get@open-relaxed";

async function main(): Promise<void> {
  const config = benchConfig();
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const log = (line: string) => process.stderr.write(`[bench ${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const work = await mkdtemp(path.join(tmpdir(), "nexus-bench-"));
  // Traversable (not readable) by the postgres OS user the embedded cluster runs as.
  await chmod(work, 0o711);
  const undo: Array<() => Promise<void>> = [];
  const cleanup = async () => {
    for (const step of undo.splice(0).reverse()) await step().catch((err: Error) => log(`cleanup: ${err.message}`));
    await rm(work, { recursive: true, force: true });
  };
  process.once("SIGINT", () => {
    log("interrupted: stopping servers and PostgreSQL");
    void cleanup().finally(() => process.exit(130));
  });
  const setup: Record<string, number> = {};
  const phase = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    log(`${name}…`);
    const result = await fn();
    setup[name] = Number(((performance.now() - t) / 1000).toFixed(2));
    return result;
  };
  const notes: string[] = [];

  try {
    log(`mode ${config.mode}; work folder ${work}`);
    const db = await phase("start PostgreSQL", () => startBenchDatabase(path.join(work, "pg")));
    undo.push(() => db.stop());
    notes.push(
      db.statementsCaptured
        ? "pg_stat_statements: loaded (the embedded binaries ship it); statements below were captured during round 1."
        : "pg_stat_statements: not shipped by the embedded binaries; statement capture skipped.",
    );
    const pki = await phase("create PKI", () => createBenchPki(path.join(work, "pki")));
    const passwordFile = path.join(work, "admin-password");
    await writeFile(passwordFile, PASSWORD + "\n", { mode: 0o600 });
    await chmod(passwordFile, 0o600);
    const base: ServerOptions = { databaseUrl: db.url, files: pki.files, dataDir: path.join(work, "nexus"), poolMax: config.poolMax };

    const profileDir = config.mode === "profile" ? await mkdtemp(path.join(tmpdir(), "nexus-bench-profiles-")) : undefined;
    const probeFile = path.join(work, "server-a-memory.json");
    const server = await phase("start server A", async () => {
      const s = await spawnServer({ ...base, probeFile, ...(profileDir ? { extraEnv: { BENCH_PROFILE_DIR: profileDir } } : {}) });
      undo.push(() => s.stop());
      await waitForHealth(s, "answer");
      return s;
    });
    const operator = await phase("Initialize + Login (scrypt N=2^17)", () => initializeAndLogin(server.address, pki, PASSWORD));
    undo.push(async () => operator.close());
    await phase("create policies", async () => {
      for (const p of BENCH_POLICIES) await createPolicy(operator, p);
    });
    await phase(`seed ${config.readSecrets + config.writeSecrets} secrets with PutSecret`, () => seedReadAndWriteSecrets(operator, config.readSecrets, config.writeSecrets, config.valueBytes));
    await phase(`seed ${config.listPaths} list paths with generate_series`, () => seedListPaths(db.sql, config.listPaths));
    const pgbenchBin = config.pgbench ? findPgbench(log) : undefined;
    const floor = pgbenchBin
      ? await phase("copy read secrets for pgbench", async (): Promise<FloorRun> => ({
          bin: pgbenchBin,
          url: db.url,
          dir: await mkdtemp(path.join(work, "pgbench-")),
          data: await prepareFloorData(db.sql, config.readSecrets, config.poolMax, config.writeSecrets),
          durationS: config.pgbenchSeconds,
          threads: 2,
        }))
      : undefined;
    if (config.pgbench && !pgbenchBin) notes.push("pgbench: not available; the database floor was skipped.");
    await phase("VACUUM ANALYZE", () => analyze(db.sql));

    const target: Target = {
      address: server.address,
      serverId: NEXUS_ID,
      ca: pki.ca,
      data: { readSecrets: config.readSecrets, writeSecrets: config.writeSecrets, valueBytes: config.valueBytes, listPageSize: 100 },
      serverPid: server.pid,
      postgresPid: db.postmasterPid(),
    };

    if (config.mode === "profile" && profileDir) {
      await profile(config, pki, target, server, profileDir, log);
      return;
    }
    if (config.mode === "ab") {
      await server.stop();
      // The open-loop pair at a fixed rate (BENCH_AB_OPEN_RATE, default 2000/s): an A/B compares both sides at the same load.
      const openRate = Number(process.env.BENCH_AB_OPEN_RATE ?? 2000);
      const abSpecs = [...scenarios(config, pki), ...openLoopScenarios(config, pki, openRate)];
      const md = await abExperiment({ config, pki, base, target, work, passwordFile, specs: abSpecs, resultsDir: path.join(RESULTS, "experiments"), log }, abSettings());
      process.stdout.write("\n" + md + "\n");
      return;
    }
    const idleRssMb = processRssMb(server.pid);
    // A second server on the same database with NEXUS_AUDIT_READ_DURABILITY=relaxed, for the
    // open-loop GetSecret's relaxed line; its caches warmed by a closed-loop read pass first.
    let relaxedServer: ServerProcess | undefined;
    const relaxedTarget = config.relaxedRead
      ? await phase("start server R (NEXUS_AUDIT_READ_DURABILITY=relaxed) and warm it", async (): Promise<Target> => {
          const r = (relaxedServer = await retryOnPortClash(async () => {
            const s = await spawnServer({ ...base, adminPasswordFile: passwordFile, extraEnv: { NEXUS_AUDIT_READ_DURABILITY: "relaxed" } });
            undo.push(() => s.stop());
            await waitForHealth(s, "SERVING");
            return s;
          }));
          const t: Target = { ...target, address: r.address, serverPid: r.pid };
          const warm = scenarios(config, pki).find((x) => x.kind === "get" && x.inFlight === config.inFlight)!;
          await runScenario({ ...warm, warmupMs: 0, durationMs: Math.min(config.durationMs, 4000) }, t);
          return t;
        })
      : undefined;

    const rounds: Round[] = [];
    const captures: StatementCapture[] = [];
    let auditBatch: number | undefined;
    let putBatch: number | undefined;
    const floorMatch: Record<string, "queryid" | "text" | "different"> = {};
    const floorPutsBefore = floor ? await floorPutsWritten(db.sql) : 0;
    const floorReadsBefore = floor ? await floorReadsFound(db.sql) : 0;
    const specs = scenarios(config, pki);
    // The database floor after the scenarios that have one: get and put under
    // load with the server's mean batch, and get at one call in flight with one
    // client and one read per statement.
    const floorFor = (run: FloorRun, spec: ScenarioSpec): (() => Promise<PgbenchResult>) | undefined => {
      if (spec.kind === "get" && spec.inFlight === 1) return () => pgbenchGet(run, 1, 1, "get@1");
      if (spec.inFlight !== config.inFlight) return undefined;
      if (spec.kind === "get") return () => pgbenchGet(run, auditBatch ?? 8);
      if (spec.kind === "put") return () => pgbenchPut(run, putBatch ?? 1);
      return undefined;
    };
    for (let round = 0; round < config.rounds; round++) {
      const results: ScenarioResult[] = [];
      const pgbench: PgbenchResult[] = [];
      // The open-loop pair runs after the closed-loop scenarios, at half of this round's GetSecret maximum.
      const openAfter = (): ScenarioSpec[] => {
        const getMax = results.find((r) => r.name === `get@${config.inFlight}`)?.rps ?? 0;
        return getMax > 0 ? openLoopScenarios(config, pki, Math.max(1, Math.round(getMax / 2)), relaxedTarget !== undefined) : [];
      };
      for (const spec of thenLater(specs, openAfter)) {
        const capture = round === 0 && (spec.name === `get@${config.inFlight}` || spec.name === `put@${config.inFlight}`);
        if (capture) await resetStatements(db);
        const r: ScenarioResult =
          spec.name === RELAXED_OPEN && relaxedTarget !== undefined ? await runScenario(spec, relaxedTarget) : { ...(await runScenario(spec, target)), serverMemory: readProbe(probeFile)?.now };
        results.push(r);
        log(
          `round ${round + 1}/${config.rounds} ${spec.name.padEnd(10)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50.toFixed(2)}  p99 ${r.p99.toFixed(2)} ms  ` +
            `cores: server ${cores(r.serverCpuSeconds, r)} pg ${cores(r.postgresCpuSeconds, r)} load ${cores(r.clientCpuSeconds, r)} machine ${((r.machineBusyPercent / 100) * availableParallelism()).toFixed(2)}  ` +
            `rss ${r.maxRssMb.toFixed(0)} MB  errors ${r.errors}${r.firstError ? ` (${r.firstError})` : ""}`,
        );
        if (capture) {
          const statements = await capturedStatements(db);
          captures.push({ label: `Nexus server during ${spec.name} (round 1)`, statements });
          if (spec.kind === "get") auditBatch = auditBatchSize(statements);
          if (spec.kind === "put") putBatch = putBatchSize(statements);
        }
        const floorRun = floor && floorFor(floor, spec);
        if (floorRun) {
          // Round 1 of the loaded get and put compares what pgbench ran with what the server ran.
          if (capture) await resetStatements(db);
          const p = await floorRun();
          pgbench.push(p);
          log(`round ${round + 1}/${config.rounds} pgbench-${p.name.padEnd(5)}  ${p.tps.toFixed(0).padStart(6)} tps    p50 ${p.p50.toFixed(2)}  p99 ${p.p99.toFixed(2)} ms${p.failed ? `  FAILED: ${p.failed}` : ""}`);
          if (capture) {
            const floorStatements = await capturedStatements(db);
            captures.push({ label: `pgbench ${p.name} (round 1): ${p.command}`, statements: floorStatements });
            const server = captures.find((c) => c.label.startsWith(`Nexus server during ${spec.name}`))?.statements ?? [];
            floorMatch[p.name] = sameStatements(server, floorStatements);
            if (floorMatch[p.name] === "different") log(`WARNING: pgbench ${p.name} does not run the server's statements (src/ changed?): update bench/database-floor.ts`);
          }
        }
      }
      rounds.push({ scenarios: results, pgbench });
    }
    // Server R is only for the relaxed line: it idles through nothing else.
    await relaxedServer?.stop();
    const heap = await phase("live heap after a full GC under load", () => heapUnderLoad(specs, target, probeFile, config));
    const floorPuts = floor
      ? { transactions: rounds.flatMap((r) => r.pgbench.filter((p) => p.name === "put")).reduce((a, p) => a + p.transactions, 0), written: (await floorPutsWritten(db.sql)) - floorPutsBefore }
      : undefined;
    const floorReads = floor
      ? { transactions: rounds.flatMap((r) => r.pgbench.filter((p) => p.name.startsWith("get"))).reduce((a, p) => a + p.transactions, 0), found: (await floorReadsFound(db.sql)) - floorReadsBefore }
      : undefined;
    if (floorReads && floorReads.found < floorReads.transactions) log(`WARNING: only ${floorReads.found} of ${floorReads.transactions} pgbench reads found their version: the floor is not doing a GetSecret's work`);

    const plans = await phase("EXPLAIN ANALYZE the hot statements", () => explainHotStatements(db.sql));

    // Key rotation, after the scenarios (it adds secrets and changes the keys they read under).
    let rotation: RotationBench | undefined;
    if (config.rotationDataKeys > 0) {
      // Rows the harness wrote with SQL carry data keys no rotation can unwrap:
      // the ListSecrets paths a placeholder, pgbench's copies of the read
      // secrets a key bound to another secret. Their scenarios are done; they
      // go before the re-wrap, which would otherwise retry them forever.
      await phase("drop the SQL-seeded rows (list paths, pgbench copies)", () => db.sql`DELETE FROM secrets WHERE path LIKE 'bench/list/%' OR path NOT LIKE 'bench/%'`.then(() => undefined));
      const getMaxRps = Math.max(...rounds.map((r) => r.scenarios.find((x) => x.name === `get@${config.inFlight}`)?.rps ?? 0));
      rotation = await phase(`key rotation (${config.rotationDataKeys} data keys)`, () =>
        keyRotationBench({ address: server.address, pki, operator, readSecrets: config.readSecrets, dataKeys: config.rotationDataKeys, getMaxRps, windowMs: config.rotationWindowMs, log }),
      );
      log(`key rotation: ${rotation.keysPerSecond.toFixed(0)} data keys/s; GetSecret p99 at ${rotation.getRate}/s ${rotation.p99WithoutRewrap.toFixed(2)} ms without, ${rotation.p99DuringRewrap.toFixed(2)} ms during a re-wrap (×${rotation.p99Ratio.toFixed(2)})`);
    }

    let propagation;
    if (config.propagationRepeats > 0) {
      propagation = await phase(`policy propagation ×${config.propagationRepeats}`, async () => {
        const b = await retryOnPortClash(async () => {
          const server = await spawnServer({ ...base, adminPasswordFile: passwordFile });
          await waitForHealth(server, "SERVING").catch(async (err) => {
            await server.stop();
            throw err;
          });
          return server;
        });
        try {
          return await policyPropagation(operator, b.address, pki, config.propagationRepeats);
        } finally {
          await b.stop();
        }
      });
    }
    let highAvailability: HighAvailabilityResults | undefined;
    if (config.replicaScaling) {
      const spec = specs.find((x) => x.kind === "get" && x.inFlight === config.inFlight)!;
      const scaling = await phase("GetSecret with 1, 2 and 3 replicas", () => replicaScaling(spec, target, base, passwordFile));
      highAvailability = { replicaScaling: scaling };
    }
    let watch;
    if (config.watchers > 0) {
      watch = await phase(`watch fan-out: ${config.watchers} watchers, ${config.watchPutsPerSecond} puts/s`, async () => {
        const b = await retryOnPortClash(async () => {
          const replica = await spawnServer({ ...base, adminPasswordFile: passwordFile });
          await waitForHealth(replica, "SERVING").catch(async (err) => {
            await replica.stop();
            throw err;
          });
          return replica;
        });
        try {
          return await watchFanout(server, b, pki, { watchers: config.watchers, putsPerSecond: config.watchPutsPerSecond, durationMs: config.watchDurationMs });
        } finally {
          await b.stop();
        }
      });
    }
    await server.stop();
    if (config.failoverRepeats > 0) {
      try {
        const failover = await phase(`failover to a synchronous standby ×${config.failoverRepeats}`, () => failoverTimes(pki, work, PASSWORD, config.poolMax, config.failoverRepeats));
        highAvailability = { ...highAvailability, failover };
      } catch (err) {
        // Debian's PostgreSQL packages may be missing and not installable (not root, no network).
        highAvailability = { ...highAvailability, skipped: `failover not measured: ${(err as Error).message.split("\n")[0]}` };
      }
    }
    let startup;
    if (config.startupRepeats > 0) {
      startup = await phase(`start-up ×${config.startupRepeats}`, () => startupTimes(base, pki, PASSWORD, passwordFile, config.startupRepeats));
    }

    notes.push(...runNotes(config, db, floor, auditBatch, putBatch, floorPuts, floorReads));
    for (const [name, same] of Object.entries(floorMatch)) {
      const rpc = name === "get" ? "GetSecret" : "PutSecret";
      notes.push(
        same === "queryid"
          ? `pgbench ${name} ran exactly the server's ${rpc} statements: pg_stat_statements gave them the same queryids as the server's (below).`
          : same === "text"
            ? `pgbench ${name} ran the server's ${rpc} statement text (comments and whitespace aside, below); pg_stat_statements gives it another queryid only because postgres.js declares the types of Buffer and Date parameters (bytea, timestamptz) where pgbench lets PostgreSQL infer them.`
            : `WARNING: pgbench ${name}'s statements differ from the server's during ${name}@${config.inFlight}: src/ changed the SQL; bench/database-floor.ts needs the new text.`,
      );
    }
    const run: BenchRun = {
      startedAt,
      config,
      database: db.settings,
      statementsCaptured: db.statementsCaptured,
      pgbench: pgbenchBin,
      setupSeconds: setup,
      idleRssMb,
      heap,
      rounds,
      propagation,
      watch,
      startup,
      highAvailability,
      rotation,
      captures: captures.map((c) => ({ label: c.label, statements: c.statements.filter(isInteresting) })),
      plans,
      auditBatch,
      floorPuts,
      floorMatch,
      notes,
      totalSeconds: Number(((performance.now() - started) / 1000).toFixed(1)),
    };
    const report = buildReport(run);
    const dir = config.mode === "full" ? RESULTS : path.join(RESULTS, "quick");
    const written = await writeReport(dir, report, "");
    process.stdout.write("\n" + written.table + "\n");
    log(`wrote ${path.relative(process.cwd(), written.json)} and ${path.relative(process.cwd(), written.md)} in ${run.totalSeconds} s`);
  } finally {
    await cleanup();
  }
}

/** Yields `first`, then `more()`'s items, computed only once the iteration gets there (after the first ones have run). */
function* thenLater<T>(first: readonly T[], more: () => T[]): Generator<T> {
  yield* first;
  yield* more();
}

/**
 * The heap the server really holds under load: in the middle of a mix@N
 * window (gets and puts), the probe forces a full garbage collection
 * (SIGWINCH) and records the heap used after it, and after a second one
 * straight after (the first keeps the floating garbage of the marking cycle
 * it finished; server-probe.ts). A window of its own, so the
 * collection's pause touches no reported scenario.
 */
async function heapUnderLoad(specs: ScenarioSpec[], target: Target, probeFile: string, config: BenchConfig): Promise<{ heapUsedMb: number; secondHeapUsedMb: number; rssMb: number; scenario: string } | undefined> {
  const spec = specs.find((s) => s.kind === "mix" && s.inFlight === config.inFlight);
  if (spec === undefined || target.serverPid === undefined) return undefined;
  const pid = target.serverPid;
  let timer: NodeJS.Timeout | undefined;
  const before = readProbe(probeFile)?.afterGc?.at ?? 0;
  const durationMs = Math.min(spec.durationMs, 4000);
  await runScenario({ ...spec, durationMs }, target, { start: () => (timer = setTimeout(() => process.kill(pid, "SIGWINCH"), durationMs / 2)) });
  clearTimeout(timer);
  for (let i = 0; i < 50; i++) {
    const gc = readProbe(probeFile)?.afterGc;
    if (gc !== undefined && gc.at > before) return { heapUsedMb: gc.heapUsed, secondHeapUsedMb: gc.secondHeapUsed, rssMb: gc.rss, scenario: spec.name };
    await sleep(100);
  }
  return undefined;
}

/** CPU seconds per second of the window: how many cores a process used. */
function cores(seconds: number, r: ScenarioResult): string {
  return (seconds / (r.durationMs / 1000)).toFixed(2);
}

/** The audit group commit's mean batch size: rows per call of AuditStore.insertBatch. */
function auditBatchSize(statements: CapturedStatement[]): number | undefined {
  const batch = statements.find((s) => /INSERT INTO audit_events/i.test(s.query) && /read_path/.test(s.query));
  return batch && batch.calls > 0 ? batch.rows / batch.calls : undefined;
}

/** The put group commit's mean batch: puts per statement that writes versions (appendMany, and appendOne when a batch went again one by one). */
function putBatchSize(statements: CapturedStatement[]): number | undefined {
  const puts = statements.filter((s) => /INSERT INTO secret_versions/i.test(s.query) && /WITH/i.test(s.query));
  const calls = puts.reduce((a, s) => a + s.calls, 0);
  return calls > 0 ? puts.reduce((a, s) => a + s.rows, 0) / calls : undefined;
}

/**
 * How every busy statement pgbench ran relates to the server's: "queryid" (the
 * same statement to pg_stat_statements), "text" (the same SQL once comments
 * and whitespace are set aside; the queryids differ only because postgres.js
 * declares bytea/timestamptz for Buffer/Date parameters and pgbench lets
 * PostgreSQL infer them), or "different".
 */
function sameStatements(server: CapturedStatement[], floor: CapturedStatement[]): "queryid" | "text" | "different" {
  const normalize = (q: string) => q.replace(/--[^\n]*/g, " ").replace(/\s+/g, " ").replace(/\( /g, "(").replace(/ \)/g, ")").trim();
  const ids = new Set(server.map((s) => s.queryid));
  const texts = new Set(server.map((s) => normalize(s.query)));
  const busy = floor.filter((s) => s.calls >= 100 && !s.query.includes(FLOOR_BOOKKEEPING));
  if (busy.length === 0) return "different";
  if (busy.every((s) => ids.has(s.queryid))) return "queryid";
  return busy.every((s) => ids.has(s.queryid) || texts.has(normalize(s.query))) ? "text" : "different";
}

/** Leaves out the harness's own and the server's background statements. */
function isInteresting(s: CapturedStatement): boolean {
  return !/pg_stat_statements|pg_settings|^\s*(BEGIN|COMMIT|SET|SHOW|LISTEN)\b/i.test(s.query);
}

function runNotes(
  config: BenchConfig,
  db: BenchDatabase,
  floor: FloorRun | undefined,
  auditBatch: number | undefined,
  putBatch: number | undefined,
  floorPuts: { transactions: number; written: number } | undefined,
  floorReads: { transactions: number; found: number } | undefined,
): string[] {
  const notes = [
    `One machine runs everything: the server (one Node process), PostgreSQL, ${config.workers} load-worker processes (grpc-js over mTLS, EC P-256 SVIDs) and pgbench; figures are comparable within this run, not across machines.`,
    `Durable commits: fsync=${db.settings.fsync}, synchronous_commit=${db.settings.synchronous_commit}, full_page_writes=${db.settings.full_page_writes}, wal_sync_method=${db.settings.wal_sync_method}.`,
    `Callers are workloads with policies: GetSecret as spiffe://spike.ist/bench/reader (READ+LIST on bench/read/.*), PutSecret as …/bench/writer (WRITE on bench/write/.*), the mix as …/bench/mixed (both policies), ListSecrets as …/bench/lister (LIST on bench/list/.*, so every listed path is checked against the policy). Every call is audited: GetSecret reads inside the audit group commit statement that writes its event, ListSecrets through the same group commit, PutSecret in its own statement (the put group commit).`,
    `PutSecret writes a new version of one of ${config.writeSecrets.toLocaleString("en-US")} existing secrets at random (1 KiB value), so a put is SecretStore.appendVersion: one statement, shared with the puts to other secrets that arrive with it (group commit); concurrent puts to the same path retry. GetSecret reads the current version of one of ${config.readSecrets.toLocaleString("en-US")} secrets at random.`,
    `ListSecrets: prefix bench/list/<xx>/ (256 prefixes, ~${Math.round(config.listPaths / 256).toLocaleString("en-US")} paths each), first page of 100, over ${config.listPaths.toLocaleString("en-US")} seeded paths.`,
    "Server CPU is utime+stime of the server process from /proc over the measured window; PostgreSQL CPU is the postmaster's process tree; load-gen CPU is the worker processes' own process.cpuUsage() over the window; RSS is VmRSS sampled every 100 ms in the window (the scrypt spike at unseal is outside it).",
    "The server process runs with one bench-only preload (NODE_OPTIONS=--import dist/bench/server-probe.js) that writes process.memoryUsage() every 500 ms, so RSS can be split into V8 heap, external memory and the rest; it does not touch the server's code paths.",
  ];
  if (floor) {
    notes.push(
      `Database floor: ${floor.bin.version} (${floor.bin.path}${floor.bin.installed ? `, installed by the harness: ${floor.bin.installed}` : ", found installed"}) against the embedded PostgreSQL ${db.settings.server_version} — the libpq protocol is compatible. -M prepared, -c ${floor.data.clients} (= NEXUS_DB_POOL_MAX), -j ${floor.threads}, ${floor.durationS} s per round.`,
      `pgbench put: SecretStore's put statement verbatim — appendMany, the group commit of puts to different secrets, with ${Math.max(1, Math.round(putBatch ?? 1))} puts per statement (the mean batch the server wrote during put@${config.inFlight}${putBatch === undefined ? ": not captured, 1 assumed" : `: ${putBatch.toFixed(1)}`}), each client appending to its own existing write secrets, plus one bookkeeping SELECT per statement for their next version numbers; expires_at is SQL NULL. pgbench-put throughput counts puts (statements × batch).${floorPuts ? ` ${floorPuts.written.toLocaleString("en-US")} of ${floorPuts.transactions.toLocaleString("en-US")} floor puts wrote a version.` : ""}`,
      `pgbench get: AuditStore.insertBatch verbatim — the audit group commit that carries GetSecret's reads — with ${Math.max(1, Math.round(auditBatch ?? 8))} reads per statement (the mean batch the server wrote during get@${config.inFlight}${auditBatch === undefined ? ": not captured, 8 assumed" : `: ${auditBatch.toFixed(1)}`}), over a fixed random batch of copies of the read secrets at paths "0".."${config.readSecrets - 1}" (pgbench variables are fixed strings). pgbench-get throughput counts reads (statements × batch).${floorReads ? ` ${floorReads.found.toLocaleString("en-US")} of ${floorReads.transactions.toLocaleString("en-US")} floor reads (get and get@1) found their version and wrote their audit event.` : ""}`,
      `pgbench get@1: the same statement with one client and one read per statement, run after GetSecret @1 — the database's share of a read at one call in flight (parse, execute, one durable commit). Health p50 plus its p50 is the least GetSecret p50 @1 can be while every read's audit event is committed before the answer: the ratio row "(Health p50 + pgbench-get@1 p50) / Health p50 @1".`,
    );
  }
  return notes;
}

async function profile(config: BenchConfig, pki: BenchPki, target: Target, server: ServerProcess, dir: string, log: (line: string) => void): Promise<void> {
  // BENCH_PROFILE_SCENARIOS=get@1,health@1 profiles others (names as in the report).
  const wanted = (process.env.BENCH_PROFILE_SCENARIOS ?? `get@${config.inFlight},put@${config.inFlight}`).split(",");
  const specs = scenarios(config, pki).filter((s) => wanted.includes(s.name));
  const sections: string[] = [];
  let window = 0;
  for (const spec of specs) {
    const hooks: WindowHooks = { start: () => process.kill(server.pid, "SIGUSR2"), end: () => process.kill(server.pid, "SIGUSR2") };
    const r = await runScenario(spec, target, hooks);
    const file = path.join(dir, `window-${++window}.cpuprofile`);
    for (let i = 0; i < 200 && !existsSync(file); i++) await sleep(100);
    const summary = summarizeProfile(JSON.parse(await readFile(file, "utf8")) as CpuProfile);
    log(`profiled ${spec.name}: ${r.rps.toFixed(0)} req/s under the profiler, ${file}`);
    sections.push(
      profileMarkdown(
        `${label(spec.name)} — ${r.rps.toFixed(0)} req/s under the profiler, server CPU ${((1000 * r.serverCpuSeconds) / Math.max(1, r.count)).toFixed(3)} s per 1k requests`,
        summary,
      ),
    );
  }
  await mkdir(RESULTS, { recursive: true });
  const md = [
    "## CPU profile of the Nexus server",
    "",
    `\`BENCH_PROFILE=1 node dist/bench/run.js\`: the real server (\`node bin/nexus.js serve\`) with a preloaded hook (bench/profile-hook.ts) that runs V8's sampling profiler (250 µs) over exactly one measured window of a warmed-up server; ${config.durationMs / 1000} s per scenario (${specs.map((spec) => spec.name).join(", ")}). Self time aggregated by callFrame functionName + url (bench/cpu-profile.ts). The profiles were kept in ${dir}.`,
    "",
    ...sections,
  ].join("\n");
  await writeFile(path.join(RESULTS, "profile.md"), md);
  process.stdout.write(md + "\n");
}

main().catch((err: Error) => {
  process.stderr.write(`bench failed: ${err.stack ?? err.message}\n`);
  process.exitCode = 1;
});
