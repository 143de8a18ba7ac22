// High availability in `make bench` (full mode only; issue 16): GetSecret
// throughput with one, two and three replicas on the same database, and the
// time a failover to a synchronous standby costs writers.
//
// Replicas: the extra servers unseal from the password file; the load is split
// evenly over the replicas, each share from its own worker processes, and the
// rates are added. On a two-core machine the replicas, PostgreSQL and the load
// generators share the same two cores, so this shows what a replica costs and
// that nothing serializes across replicas, not how Nexus scales on more
// hardware (bench/README.md).
//
// Failover: a primary and a synchronous standby from Debian's PostgreSQL
// packages (test/support/debian-postgres.ts, which installs them when missing),
// one server on a multi-host URL, eight writers; the primary is stopped
// immediately and the standby promoted at once (as a failover manager does
// once it has decided; its detection time comes on top). Measured: the longest
// pause between acknowledged writes around the crash (what a writer sees), and
// the time from the promotion to health SERVING.

import { performance } from "node:perf_hooks";
import path from "node:path";
import { SecretService } from "../gen/spike/nexus/v1/secret_pb.js";
import { addStandby, createDebianDatabase, startDebianPrimary } from "../test/support/debian-postgres.js";
import { type BenchPki } from "./bench-pki.js";
import { initializeAndLogin } from "./nexus-setup.js";
import { timings, type Timings } from "./replica-timings.js";
import { runScenario, type ScenarioResult, type ScenarioSpec, type Target } from "./scenario-runner.js";
import { retryOnPortClash, spawnServer, waitForHealth, type ServerOptions, type ServerProcess } from "./server-process.js";

export interface ReplicaThroughput {
  readonly replicas: number;
  /** Calls per second, all replicas together. */
  readonly rps: number;
  /** The highest p50 and p99 of the replicas (ms). */
  readonly p50: number;
  readonly p99: number;
  readonly errors: number;
}

/**
 * GetSecret at `spec.inFlight` calls in flight, spread over 1, 2 and 3
 * replicas: `target` is the running replica A; B and C are started here (and
 * stopped again) on the same database.
 */
export async function replicaScaling(spec: ScenarioSpec, target: Target, base: ServerOptions, passwordFile: string): Promise<ReplicaThroughput[]> {
  const extra: ServerProcess[] = [];
  const results: ReplicaThroughput[] = [];
  try {
    for (let replicas = 1; replicas <= 3; replicas++) {
      while (extra.length < replicas - 1) {
        extra.push(
          await retryOnPortClash(async () => {
            const s = await spawnServer({ ...base, adminPasswordFile: passwordFile });
            await waitForHealth(s, "SERVING").catch(async (err) => {
              await s.stop();
              throw err;
            });
            return s;
          }),
        );
      }
      const addresses = [target.address, ...extra.map((s) => s.address)];
      const share = (n: number, i: number) => Math.floor(n / replicas) + (i < n % replicas ? 1 : 0);
      const windows: ScenarioResult[] = await Promise.all(
        addresses.map((address, i) =>
          runScenario(
            {
              ...spec,
              name: `${spec.name} ×${replicas} replicas`,
              inFlight: Math.max(1, share(spec.inFlight, i)),
              connections: Math.max(1, share(spec.connections, i)),
              workers: Math.max(1, share(spec.workers, i)),
            },
            { ...target, address, serverPid: undefined },
          ),
        ),
      );
      results.push({
        replicas,
        rps: windows.reduce((n, w) => n + w.rps, 0),
        p50: Math.max(...windows.map((w) => w.p50)),
        p99: Math.max(...windows.map((w) => w.p99)),
        errors: windows.reduce((n, w) => n + w.errors, 0),
      });
    }
  } finally {
    for (const s of extra) await s.stop();
  }
  return results;
}

export interface FailoverTimings {
  /** The longest pause between acknowledged writes around the crash (ms). */
  readonly writePauseMs: Timings;
  /** From `pg_ctl promote` to health SERVING (ms). */
  readonly promotionToServingMs: Timings;
  /** Writes that failed (all UNAVAILABLE, or the run throws) and writes acknowledged but not found afterwards. */
  readonly failedWrites: number;
  readonly lostWrites: number;
}

const WRITERS = 8;

/** `repeats` failovers, each on a fresh primary and standby. */
export async function failoverTimes(pki: BenchPki, work: string, password: string, poolMax: number, repeats: number): Promise<FailoverTimings> {
  const pauses: number[] = [];
  const toServing: number[] = [];
  let failedWrites = 0;
  let lostWrites = 0;
  for (let i = 0; i < repeats; i++) {
    const primary = await startDebianPrimary();
    const standby = await addStandby(primary).catch(async (err) => {
      await primary.remove();
      throw err;
    });
    let server: ServerProcess | undefined;
    try {
      await createDebianDatabase(primary, "nexus");
      const url = `postgres://postgres@127.0.0.1:${primary.port},127.0.0.1:${standby.port}/nexus?target_session_attrs=read-write`;
      server = await retryOnPortClash(() => spawnServer({ databaseUrl: url, files: pki.files, dataDir: path.join(work, `failover-${i}`), poolMax }));
      await waitForHealth(server, "answer");
      const operator = await initializeAndLogin(server.address, pki, password);
      try {
        const acks: number[] = [];
        const acknowledged: Array<{ path: string; version: number }> = [];
        let running = true;
        const writers = Array.from({ length: WRITERS }, async (_, w) => {
          const client = operator.clients[w % operator.clients.length];
          while (running) {
            const p = `bench/failover/w${w}`;
            const r = await client.call(SecretService.method.putSecret, { path: p, data: { v: String(acks.length) } }, { deadlineMs: 30_000 });
            if (r.response !== undefined) {
              acks.push(performance.now());
              acknowledged.push({ path: p, version: r.response.version });
            } else {
              if (r.code !== "UNAVAILABLE") throw new Error(`failover: PutSecret ${r.code} ${r.message}`);
              failedWrites++;
            }
          }
        });
        await new Promise((resolve) => setTimeout(resolve, 2000));
        const crashed = performance.now();
        await primary.stop("immediate");
        const promoting = performance.now();
        await standby.promote();
        await waitForHealth(server, "SERVING", 30_000);
        toServing.push(performance.now() - promoting);
        await new Promise((resolve) => setTimeout(resolve, 2000));
        running = false;
        await Promise.all(writers);
        const around = acks.filter((t) => t >= crashed - 1000);
        const before = acks.filter((t) => t < crashed).at(-1) ?? crashed;
        pauses.push(Math.max(...around.map((t, k) => t - (k === 0 ? before : around[k - 1]))));
        const latest = new Map<string, number>();
        for (const a of acknowledged) latest.set(a.path, Math.max(latest.get(a.path) ?? 0, a.version));
        for (const [p, version] of latest) {
          const r = await operator.clients[0].call(SecretService.method.getSecret, { path: p });
          if (r.response === undefined || r.response.version < version) lostWrites++;
        }
      } finally {
        operator.close();
      }
    } finally {
      await server?.stop();
      await standby.remove();
      await primary.remove();
    }
  }
  return { writePauseMs: timings(pauses), promotionToServingMs: timings(toServing), failedWrites, lostWrites };
}

export interface HighAvailabilityResults {
  readonly replicaScaling?: ReplicaThroughput[];
  readonly failover?: FailoverTimings;
  /** Why a part was not measured. */
  readonly skipped?: string;
}

/** The report's lines for these results. */
export function highAvailabilityMarkdown(ha: HighAvailabilityResults): string[] {
  const lines: string[] = [];
  const f = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : "—");
  if (ha.replicaScaling) {
    lines.push("GetSecret with replicas on one database (load split evenly; two cores shared by all, see bench/README.md):", "");
    lines.push("| replicas | req/s (all) | p50 ms (worst) | p99 ms (worst) | errors |", "|---:|---:|---:|---:|---:|");
    for (const r of ha.replicaScaling) lines.push(`| ${r.replicas} | ${f(r.rps)} | ${f(r.p50, 2)} | ${f(r.p99, 2)} | ${r.errors} |`);
    lines.push("");
  }
  if (ha.failover) {
    const fo = ha.failover;
    lines.push(
      `Failover to a synchronous standby (${fo.writePauseMs.samples.length} runs, immediate stop then promotion, ${WRITERS} writers): longest pause between acknowledged writes p50 ${f(fo.writePauseMs.p50)} ms, max ${f(fo.writePauseMs.max)} ms; promotion to SERVING p50 ${f(fo.promotionToServingMs.p50)} ms, max ${f(fo.promotionToServingMs.max)} ms; ${fo.failedWrites} writes UNAVAILABLE, ${fo.lostWrites} acknowledged writes lost.`,
      "",
    );
  }
  if (ha.skipped) lines.push(`High availability: ${ha.skipped}`, "");
  return lines;
}
