// One audit event: what a call was, who made it, how it ended. Never a secret
// value, password or token. The MAC covers every field, including the replica
// and its gapless sequence number, so an event cannot be altered, moved or
// forged without the integrity key. An event recorded while sealed is signed
// over the same fields with the server's SVID key instead (ADR 0003).

import { canonicalJson, mac, macMatches } from "../keys/integrity.js";
import type { AuditFields } from "../store/audit-row.js";

// The row shape lives with the store that persists it (ADR 0013: store imports no higher layer).
export type { AuditFields, AuditOutcome, AuditRow, IdempotencyRecordRow } from "../store/audit-row.js";

export const AUDIT_MAC_LABEL = "nexus/v1/audit-event";
const AUDIT_SIGNATURE_LABEL = "nexus/v1/audit-event-signature";

export function auditMacInput(e: AuditFields): unknown {
  return [e.replicaId, e.sequence, e.time.toISOString(), e.requestId, e.caller, e.rpc, e.path, e.version, e.outcome, e.code, e.detail];
}

export function macAuditEvent(key: Buffer, e: AuditFields): Buffer {
  return mac(key, AUDIT_MAC_LABEL, auditMacInput(e));
}

export function auditEventVerifies(key: Buffer, e: AuditFields, stored: Uint8Array | null): boolean {
  return macMatches(key, AUDIT_MAC_LABEL, auditMacInput(e), stored);
}

/** The bytes an event's signature covers: the MAC's input under a label of its own. */
export function auditSignatureInput(e: AuditFields): Buffer {
  return Buffer.from(`${AUDIT_SIGNATURE_LABEL}\0${canonicalJson(auditMacInput(e))}`, "utf8");
}
