// Key rotation under the bench (issue 11): the re-wrap rate of RotateEncryptionKey
// with no other load, and GetSecret's p99 at a fixed open-loop rate (half the
// measured GetSecret maximum) during a re-wrap divided by its p99 at that rate
// without one. Open loop: each request is due at its scheduled time and its
// latency counts from then, so a stalled server is not hidden by waiting callers.

import { performance } from "node:perf_hooks";
import { OperatorService, RotationPhase } from "../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient, type NexusClient } from "../src/client/nexus-client.js";
import { NEXUS_ID, type BenchPki } from "./bench-pki.js";
import { LatencyHistogram } from "./latency-histogram.js";
import { readPath, secretData } from "./load-protocol.js";
import type { Operator } from "./nexus-setup.js";

export interface RotationBench {
  /** Data keys in the database when the timed rotation ran. */
  readonly dataKeys: number;
  readonly rewrapSeconds: number;
  readonly keysPerSecond: number;
  /** The open-loop GetSecret rate (half the measured maximum). */
  readonly getRate: number;
  readonly p99WithoutRewrap: number;
  readonly p99DuringRewrap: number;
  readonly p99Ratio: number;
  readonly getErrors: number;
}

export interface RotationBenchOptions {
  readonly address: string;
  readonly pki: BenchPki;
  readonly operator: Operator;
  /** Secrets the bench already seeded (bench/read/…) that GetSecret reads. */
  readonly readSecrets: number;
  /** Data keys to have in the database for the timed re-wrap (more are seeded with PutSecret). */
  readonly dataKeys: number;
  /** GetSecret throughput measured by the scenarios (req/s). */
  readonly getMaxRps: number;
  readonly windowMs: number;
  readonly log: (line: string) => void;
}

export async function keyRotationBench(o: RotationBenchOptions): Promise<RotationBench> {
  const existing = await countSecrets(o.operator);
  await seedExtra(o.operator, Math.max(0, o.dataKeys - existing), o.log);
  // 1. The re-wrap rate with no other load.
  const first = await rotate(o.operator);
  o.log(`re-wrap: ${first.total} data keys in ${first.seconds.toFixed(1)} s (${(first.total / first.seconds).toFixed(0)}/s)`);
  // 2. GetSecret p99 at half its maximum rate, without and then during a re-wrap.
  const rate = Math.max(1, Math.round(o.getMaxRps / 2));
  const readers = Array.from({ length: 4 }, (_, i) =>
    grpcNexusClient(o.address, { ...o.pki.superuser, ca: o.pki.ca, serverId: NEXUS_ID }, { "nexus.bench.rotation": i, "grpc.use_local_subchannel_pool": 1 }),
  );
  try {
    const before = await openLoopGets(readers, rate, o.readSecrets, () => sleepMs(o.windowMs));
    let during = { histogram: new LatencyHistogram(), errors: 0 };
    during = await openLoopGets(readers, rate, o.readSecrets, async () => void (await rotate(o.operator)));
    const p99Before = before.histogram.percentile(99);
    const p99During = during.histogram.percentile(99);
    return {
      dataKeys: first.total,
      rewrapSeconds: first.seconds,
      keysPerSecond: first.total / first.seconds,
      getRate: rate,
      p99WithoutRewrap: p99Before,
      p99DuringRewrap: p99During,
      p99Ratio: p99During / p99Before,
      getErrors: before.errors + during.errors,
    };
  } finally {
    readers.forEach((c) => c.close());
  }
}

/** Runs one rotation to the end; the re-wrap's time is from the first report to the last data key done. */
async function rotate(op: Operator): Promise<{ total: number; seconds: number }> {
  const started = performance.now();
  let doneAt = started;
  let total = 0;
  for await (const m of op.clients[0].stream(OperatorService.method.rotateEncryptionKey, {}, { bearerToken: op.token })) {
    total = Number(m.total);
    // Read to the end: a rotation left running would be attached to by the next call.
    if (m.phase === RotationPhase.REWRAPPING || doneAt === started) doneAt = performance.now();
  }
  return { total, seconds: Math.max(0.001, (doneAt - started) / 1000) };
}

async function openLoopGets(clients: NexusClient[], rate: number, secrets: number, during: () => Promise<void>): Promise<{ histogram: LatencyHistogram; errors: number }> {
  const histogram = new LatencyHistogram();
  let errors = 0;
  let stop = false;
  const inFlight = new Set<Promise<void>>();
  const interval = 1000 / rate;
  const start = performance.now();
  let sent = 0;
  const pump = async () => {
    while (!stop) {
      const due = start + sent * interval;
      const now = performance.now();
      if (due > now) {
        await sleepMs(Math.min(5, due - now));
        continue;
      }
      const client = clients[sent % clients.length];
      const path = readPath(sent % secrets);
      sent++;
      const p: Promise<void> = client.call(SecretService.method.getSecret, { path }).then((r) => {
        histogram.record(performance.now() - due);
        if (r.code !== "OK") errors++;
      });
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      // Behind schedule the loop never sleeps: let the responses in now and then.
      if (sent % 32 === 0) await new Promise((r) => setImmediate(r));
    }
  };
  const pumping = pump();
  await during();
  stop = true;
  await pumping;
  await Promise.all(inFlight);
  return { histogram, errors };
}

async function countSecrets(op: Operator): Promise<number> {
  const status = await op.clients[0].call(OperatorService.method.getStatus, {}, { bearerToken: op.token });
  if (status.code !== "OK") throw new Error(`GetStatus: ${status.code} ${status.message}`);
  return status.response!.keyring.reduce((sum, k) => sum + Number(k.dataKeys), 0);
}

async function seedExtra(op: Operator, count: number, log: (line: string) => void): Promise<void> {
  if (count === 0) return;
  log(`seeding ${count} more data keys for the re-wrap with PutSecret…`);
  let next = 0;
  const worker = async (client: NexusClient) => {
    while (next < count) {
      const i = next++;
      const r = await client.call(SecretService.method.putSecret, { path: `bench/rotation/${i}`, data: secretData(64, i) });
      if (r.code !== "OK") throw new Error(`seed PutSecret: ${r.code} ${r.message}`);
    }
  };
  await Promise.all(Array.from({ length: 32 }, (_, i) => worker(op.clients[i % op.clients.length])));
}

function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
