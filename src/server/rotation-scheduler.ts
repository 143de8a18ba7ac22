// The rotation scheduler (issue 12): every few seconds an unsealed replica
// claims the secrets whose generated rotation is due (SELECT … FOR UPDATE SKIP
// LOCKED, so each due rotation is claimed by one replica) and rotates each once
// through the same code as RotateSecret. The rotation sets the next due time to
// one period after it ran, so periods missed while every replica was down run
// once, not once per period. Each rotation is an audit event whose caller is
// "nexus-scheduler@<replica id>". A policy whose MAC does not verify is skipped
// and reported (error log and an audit event), never run.

import { randomUUID } from "node:crypto";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { AuditLog } from "../audit/audit-log.js";
import { asNexusError } from "../transport/error-mapping.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import { rotationPolicyAltered, verifiedPolicy } from "../services/rotation-policy.js";
import type { SecretRotator } from "../services/secret-rotation.js";
import type { SecretStore } from "../store/secret-store.js";

/** Rotations claimed per round; the rest wait for the next round. */
const CLAIM_BATCH = 20;
/** How long a claim keeps other replicas off a due rotation if this one dies before writing it. */
export const ROTATION_LEASE_MS = 120_000;

export interface RotationSchedulerDeps {
  readonly store: SecretStore;
  readonly rotator: SecretRotator;
  readonly auditLog: AuditLog;
  readonly keys: KeyManager;
  readonly logger: Logger;
}

const ROTATE_RPC = `/${SecretService.typeName}/${SecretService.method.rotateSecret.name}`;

/** The caller a scheduled rotation is recorded under. */
export function schedulerCaller(replicaId: string): string {
  return `nexus-scheduler@${replicaId}`;
}

/** One round: claims and runs due rotations until none are left; returns how many ran. */
export async function runDueRotations(d: RotationSchedulerDeps): Promise<number> {
  let rotated = 0;
  // External rotations are the owner's to make; watchers learn they are due.
  if (!d.keys.sealed) await d.store.markExternalRotationsDue();
  for (;;) {
    if (d.keys.sealed) return rotated; // sealed replicas never rotate
    const claimed = await d.store.claimDueRotations(CLAIM_BATCH, ROTATION_LEASE_MS);
    for (const c of claimed) {
      const record = d.auditLog.begin({ requestId: randomUUID(), rpc: ROTATE_RPC, time: new Date() });
      record.identify(schedulerCaller(d.auditLog.replicaId));
      record.subject(c.path, null);
      try {
        if (d.keys.sealed) throw d.keys.sealedError();
        const policy = verifiedPolicy((id) => d.keys.integrityKeyForRow(id), c.id, c.path, c.policy, c.mac);
        if (policy === undefined) {
          d.logger.error("rotation policy failed its integrity check; not rotated", { path: c.path });
          throw rotationPolicyAltered(c.path);
        }
        const result = await d.rotator.rotate({ path: c.path, policy, createdBy: schedulerCaller(d.auditLog.replicaId), audit: record, detail: { scheduled: true } });
        await record.finish("ok", "OK");
        d.logger.info("secret rotated", { path: c.path, version: result.version });
        rotated++;
      } catch (err) {
        const e = asNexusError(err);
        if (e.reason !== "ROTATION_POLICY_ALTERED") d.logger.warn("scheduled rotation failed; retried after the lease", { path: c.path, reason: e.reason });
        await record.finish("error", e.code.toUpperCase(), { reason: e.reason, scheduled: true }).catch((auditErr) => d.logger.error("audit event of a scheduled rotation not written", { err: auditErr }));
      }
    }
    if (claimed.length < CLAIM_BATCH) return rotated;
  }
}
