// Two timings that involve more than one server process on one database:
// policy propagation (a policy created through replica A, until replica B
// lets the workload in) and start-up (spawning `nexus serve` against an
// existing, migrated database, until its health port answers and until it
// says SERVING).

import { performance } from "node:perf_hooks";
import { OperatorService } from "../gen/spike/nexus/v1/operator_pb.js";
import { Permission } from "../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient } from "../src/client/nexus-client.js";
import { callerId, NEXUS_ID, type BenchPki } from "./bench-pki.js";
import { createPolicy, type Operator } from "./nexus-setup.js";
import { retryOnPortClash, spawnServer, waitForHealth, type ServerOptions } from "./server-process.js";

export interface Timings {
  readonly samples: number[];
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

export function timings(samples: number[]): Timings {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (p: number) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]);
  return { samples, p50: at(50), p99: at(99), max: sorted[sorted.length - 1] ?? NaN };
}

/**
 * Creates `repeats` policies through replica A (`operator`); after each
 * CreatePolicy returns, calls GetSecret on replica B as the workload the
 * policy names until it is no longer PERMISSION_DENIED. Milliseconds from the
 * CreatePolicy response (the commit) to the first allowed call on B.
 */
export async function policyPropagation(operator: Operator, replicaB: string, pki: BenchPki, repeats: number): Promise<Timings> {
  const workload = grpcNexusClient(replicaB, { ...pki.callers.prop, ca: pki.ca, serverId: NEXUS_ID });
  const samples: number[] = [];
  try {
    for (let i = 0; i < repeats; i++) {
      const path = `bench/prop/p${Date.now()}-${i}`;
      let before = await workload.call(SecretService.method.getSecret, { path });
      // A replica just started may still be taking its keys or policies up: UNAVAILABLE is retryable.
      if (before.code === "UNAVAILABLE") process.stderr.write(`propagation: replica B answered UNAVAILABLE ${before.reason ?? ""} (${before.message}); retrying\n`);
      for (const t = performance.now(); before.code === "UNAVAILABLE" && performance.now() - t < 10_000; ) {
        await new Promise((r) => setTimeout(r, 100));
        before = await workload.call(SecretService.method.getSecret, { path });
      }
      if (before.code !== "PERMISSION_DENIED") throw new Error(`propagation: expected PERMISSION_DENIED before the policy, got ${before.code} ${before.reason ?? ""}: ${before.message}`);
      await createPolicy(operator, {
        name: `bench-prop-${Date.now()}-${i}`,
        spiffeIdPattern: callerId("prop").replace(/\./g, "\\."),
        pathPattern: path.replace(/\./g, "\\."),
        permissions: [Permission.READ],
      });
      const committed = performance.now();
      for (;;) {
        const res = await workload.call(SecretService.method.getSecret, { path }, { deadlineMs: 5000 });
        if (res.code !== "PERMISSION_DENIED") {
          if (res.code !== "NOT_FOUND") throw new Error(`propagation: unexpected ${res.code} ${res.message}`);
          break;
        }
        if (performance.now() - committed > 30_000) throw new Error("propagation: replica B still denies after 30 s");
      }
      samples.push(performance.now() - committed);
    }
  } finally {
    workload.close();
  }
  return timings(samples);
}

export interface StartupTimings {
  /** Spawn to the health listener answering (sealed: no password file). */
  readonly listening: Timings;
  /** Spawn, listener up, then an Unseal RPC (scrypt): to SERVING. */
  readonly servingAfterUnsealRpc: Timings;
  /** Spawn with NEXUS_ADMIN_PASSWORD_FILE (unseals itself, scrypt included): to SERVING. */
  readonly servingWithPasswordFile: Timings;
}

export async function startupTimes(base: ServerOptions, pki: BenchPki, password: string, passwordFile: string, repeats: number): Promise<StartupTimings> {
  const listening: number[] = [];
  const unsealed: number[] = [];
  const auto: number[] = [];
  for (let i = 0; i < repeats; i++) {
    await retryOnPortClash(async () => {
      const sealed = await spawnServer({ ...base, adminPasswordFile: undefined });
      try {
        const answered = (await waitForHealth(sealed, "answer")) - sealed.spawnedAt;
        const operator = grpcNexusClient(sealed.address, { ...pki.superuser, ca: pki.ca, serverId: NEXUS_ID });
        const res = await operator.call(OperatorService.method.unseal, { adminPassword: password }, { deadlineMs: 30_000 });
        operator.close();
        if (res.code !== "OK") throw new Error(`Unseal: ${res.code} ${res.message}`);
        unsealed.push((await waitForHealth(sealed, "SERVING")) - sealed.spawnedAt);
        listening.push(answered);
      } finally {
        await sealed.stop();
      }
    });
    await retryOnPortClash(async () => {
      const server = await spawnServer({ ...base, adminPasswordFile: passwordFile });
      try {
        auto.push((await waitForHealth(server, "SERVING")) - server.spawnedAt);
      } finally {
        await server.stop();
      }
    });
  }
  return { listening: timings(listening), servingAfterUnsealRpc: timings(unsealed), servingWithPasswordFile: timings(auto) };
}

