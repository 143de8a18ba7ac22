// The shape of one audit event as the stores write it in the same transaction as
// the change it records. What the fields mean, and the MAC and signature over
// them, belong to src/audit/audit-event.ts; the type lives here so that the
// store layer imports nothing above it (ADR 0013).

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
  /**
   * The record's time, chosen by the service and under response_mac (so a
   * database writer cannot keep a record alive or pick the time a replay
   * reports); a version the change writes gets it as its created_at too.
   */
  readonly createdAt: Date;
}
