// Checks of a server's audit log shared by the specs: VerifyAuditLog's
// problems in one line each, and every replica's sequence gapless from 1.

import { expect } from "chai";
import type postgres from "postgres";
import { AuditProblemKind, OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { ok } from "./secret-server.js";

/** VerifyAuditLog's problems, as "KIND replica sequence" lines (none for a clean log). */
export async function auditProblems(admin: NexusClient, adminToken: string): Promise<string[]> {
  const report = ok(await admin.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: adminToken }), "VerifyAuditLog");
  return report.problems.map((p) => `${AuditProblemKind[p.kind]} ${p.replicaId} ${p.sequence}`);
}

/** Each replica's events are numbered 1..n, each number once. */
export async function expectGaplessSequences(db: postgres.Sql): Promise<void> {
  const replicas = await db`SELECT replica_id, count(*)::int AS n, count(DISTINCT sequence)::int AS d, min(sequence)::int AS lo, max(sequence)::int AS hi FROM audit_events GROUP BY replica_id`;
  for (const r of replicas) expect({ n: r.n, distinct: r.d, lo: r.lo }, `replica ${r.replica_id}`).to.deep.equal({ n: r.hi, distinct: r.hi, lo: 1 });
}
