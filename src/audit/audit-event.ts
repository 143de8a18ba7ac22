// One audit event: what a call was, who made it, how it ended. Never a secret
// value, password or token. The MAC covers every field, including the replica
// and its gapless sequence number, so an event cannot be altered, moved or
// forged without the integrity key. An event recorded while sealed is signed
// over the same fields with the server's SVID key instead (ADR 0003).

import { canonicalJson, mac, macMatches } from "../keys/integrity.js";

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
  /** Null when recorded while sealed: such an event is signed instead, and never MAC'd later. */
  readonly mac: Buffer | null;
  /** The SVID signature of an event recorded while sealed, else null. */
  readonly signature: Buffer | null;
  /** SHA-256 of the signing certificate (audit_signers), with the signature. */
  readonly signer: Buffer | null;
  /**
   * The idempotency record of the change this event records (issue 17 §5),
   * written by the same statement or transaction as the event. Not part of the
   * event: neither stored in audit_events nor covered by its MAC.
   */
  readonly idempotency?: IdempotencyRecordRow;
}

/** One idempotency_keys row as the change that creates it writes it (migration 010). */
export interface IdempotencyRecordRow {
  readonly caller: string;
  readonly key: string;
  readonly rpc: string;
  readonly requestMac: Buffer;
  readonly response: Buffer;
  readonly responseMac: Buffer;
}

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
