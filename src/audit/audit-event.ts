// One audit event: what a call was, who made it, how it ended. Never a secret
// value, password or token. The MAC covers every field, including the replica
// and its gapless sequence number, so an event cannot be altered, moved or
// forged without the integrity key.

import { mac, macMatches } from "../keys/integrity.js";

export type AuditOutcome = "ok" | "denied" | "error";

export interface AuditFields {
  readonly replicaId: string;
  readonly sequence: number;
  readonly time: Date;
  readonly requestId: string;
  readonly caller: string;
  readonly rpc: string;
  readonly path: string | null;
  readonly version: number | null;
  readonly outcome: AuditOutcome;
  readonly code: string;
  readonly detail: Readonly<Record<string, unknown>>;
}

export interface AuditRow extends AuditFields {
  /** Null when recorded while sealed; filled in once the integrity key is back. */
  readonly mac: Buffer | null;
}

export const AUDIT_MAC_LABEL = "nexus/v1/audit-event";

export function auditMacInput(e: AuditFields): unknown {
  return [e.replicaId, e.sequence, e.time.toISOString(), e.requestId, e.caller, e.rpc, e.path, e.version, e.outcome, e.code, e.detail];
}

export function macAuditEvent(key: Buffer, e: AuditFields): Buffer {
  return mac(key, AUDIT_MAC_LABEL, auditMacInput(e));
}

export function auditEventVerifies(key: Buffer, e: AuditFields, stored: Uint8Array | null): boolean {
  return macMatches(key, AUDIT_MAC_LABEL, auditMacInput(e), stored);
}
