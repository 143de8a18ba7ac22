// The audit log of this replica. Every call gets a gapless sequence number when
// it starts. A change writes its event in its own transaction (prepare +
// markWritten); everything else — reads, refusals, failures — goes through
// group commit: events that arrive while a batch is being written wait for the
// next one, so under load one INSERT carries many events, and each call waits
// until its event has committed — durably, unless NEXUS_AUDIT_READ_DURABILITY
// is relaxed and every event of the batch is of a method that changes nothing
// (then PostgreSQL has the rows but need not have flushed them; see
// docs/threat-model.md). A GetSecret's read rides in that statement,
// and its event is written only if the read found what it asked for (ADR 0005).
// If an event cannot be written, the call fails (fail closed). Events recorded
// while sealed carry no MAC (the integrity key is not in memory): they are
// signed with the server's SVID key, and never MAC'd afterwards — a later
// replica cannot tell a forged unMAC'd row from a real one. Sequence numbers
// given up (a write whose fate is unknown) are recorded in the checkpoints.

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { NexusError } from "../errors/nexus-error.js";
import type { GrantEpochs, GrantSetRules } from "../keys/grant-epochs.js";
import { mac, macMatches } from "../keys/integrity.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import type { AuditedRead, AuditStore, BatchDurability, BatchEvent, Checkpoint, ReadableVersion } from "../store/audit-store.js";
import { isDatabaseUnavailable } from "../store/database.js";
import { GroupCommit } from "../store/group-commit.js";
import { auditSignatureInput, macAuditEvent, type AuditFields, type AuditOutcome, type AuditRow } from "./audit-event.js";
import { SequenceRanges } from "./sequence-ranges.js";

const CHECKPOINT_MAC_LABEL = "nexus/v1/audit-checkpoint";

export interface CallAudit {
  /** Sets what the call addressed, for the event. */
  subject(path: string | null, version: number | null): void;
  /** The event as it will read if the change commits; write it in the change's transaction. */
  prepare(detail?: Record<string, unknown>): AuditRow;
  /** The prepared event was committed with the change. */
  markWritten(): void;
  /**
   * Reads a secret version in the statement that commits this call's "ok"
   * event (one round trip for GetSecret). Undefined, and nothing recorded, when
   * there is no servable version: the call then goes on and is recorded as usual.
   */
  recordRead(read: AuditedRead): Promise<ReadableVersion | undefined>;
}

/** Signs sealed-time events; the composition root backs it with the server's SVID (src/identity/svid-signature.ts). */
export interface AuditSigner {
  sign(data: Buffer): { signature: Buffer; certificateSha256: Buffer; certificateChainPem: string };
}

/** Watches group commits (metrics): events per batch, its write time and how it committed, or a batch that failed. */
export interface AuditObserver {
  batchWritten(events: number, seconds: number, durability: BatchDurability): void;
  batchFailed(events: number): void;
}

export class AuditLog {
  readonly replicaId: string;
  private nextSequence = 1;
  private committedThrough = 0;
  private readonly completed = new Set<number>();
  private readonly givenUp = new SequenceRanges();
  private readonly batches: GroupCommit<BatchEvent, ReadableVersion | undefined>;
  /** Signer certificate (hex SHA-256) -> its registration in audit_signers. */
  private readonly signers = new Map<string, Promise<void>>();
  private readonly signerChains = new Map<string, string>();

  constructor(
    private readonly store: AuditStore,
    private readonly keys: KeyManager,
    private readonly signer: AuditSigner,
    private readonly logger: Logger,
    private readonly epochs: GrantEpochs,
    replicaId = `${hostname().replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 40)}-${randomBytes(4).toString("hex")}`,
    private readonly maxBatch = 512,
    private readonly observer?: AuditObserver,
    /**
     * Methods that change nothing (NEXUS_AUDIT_READ_DURABILITY=relaxed; empty:
     * every batch is durable). A batch made only of their events commits
     * without waiting for the WAL flush; one event of any other method makes
     * the whole batch durable. Decided by the method, never by the caller.
     */
    private readonly relaxedRpcs: ReadonlySet<string> = new Set(),
  ) {
    this.replicaId = replicaId;
    this.batches = new GroupCommit((batch) => this.writeBatch(batch), { maxBatch });
  }

  /** Whether this replica gave `sequence` up: numbered, but its write failed or its fate is unknown. */
  gaveUp(sequence: number): boolean {
    return this.givenUp.has(sequence);
  }

  /**
   * The highest sequence such that it and every lower one are settled: written,
   * or given up after a write that failed or whose fate is unknown (those are
   * missing from the log, and checkpoints list them so VerifyAuditLog does not
   * call them deleted; the head must not stop at them, or checkpoints would
   * stop covering new events).
   */
  get head(): number {
    return this.committedThrough;
  }

  /** Events queued for the next group commit. */
  get eventsWaiting(): number {
    return this.batches.waiting;
  }

  /** Starts the record of one call. */
  begin(call: { requestId: string; rpc: string; time: Date }): CallRecord {
    return new CallRecord(this, this.nextSequence++, call);
  }

  /**
   * A record that takes its sequence number only when it is first needed: a
   * change prepared with it, or its finish. A stream's end event is one: a
   * number taken when a watch opens would stay unwritten for the stream's
   * whole life, holding back the checkpointed head and showing the verifier a
   * gap for as long as any watch is open.
   */
  beginDeferred(call: { requestId: string; rpc: string }): DeferredCallRecord {
    return new DeferredCallRecord(() => this.begin({ ...call, time: new Date() }));
  }

  /** Builds the row for an event: MAC'd if the integrity key is available, else signed with the SVID key. */
  row(fields: AuditFields): AuditRow {
    if (!this.keys.sealed) return { ...fields, mac: macAuditEvent(this.keys.integrityKey(), fields), signature: null, signer: null };
    const s = this.signer.sign(auditSignatureInput(fields));
    // Awaited, and retried, by write(). A change's prepared event goes into its
    // own transaction without waiting, but changes need the keys, so only a
    // Seal racing a change gets here for one; its signer is registered anyway.
    void this.registerSigner(s).catch(() => {});
    return { ...fields, mac: null, signature: s.signature, signer: s.certificateSha256 };
  }

  /** Queues an event for the next group commit; resolves once it has committed. */
  async write(row: AuditRow): Promise<void> {
    if (row.signer !== null) await this.signerRegistered(row.signer);
    await this.batches.submit({ row });
  }

  /**
   * Queues an event that is written only if `read` finds a servable version,
   * in the same group commit; resolves with that version, or undefined (and the
   * event's sequence number still unused) when there is none.
   */
  async writeWithRead(row: AuditRow, read: AuditedRead): Promise<ReadableVersion | undefined> {
    if (row.signer !== null) await this.signerRegistered(row.signer);
    return this.batches.submit({ row, read });
  }

  /** Marks a sequence number as given up: it will not be written (again), and checkpoints say so. */
  giveUp(sequence: number): void {
    this.givenUp.add(sequence);
    this.markCompleted(sequence);
  }

  /** Marks a sequence number as used up (written, in a batch or with its change). */
  markCompleted(sequence: number): void {
    this.completed.add(sequence);
    while (this.completed.delete(this.committedThrough + 1)) this.committedThrough++;
  }

  /**
   * Writes a MAC'd checkpoint of this replica's written range and the numbers
   * it gave up in it; skipped while sealed. Its first sequence is 1: where
   * retention pruning left the log starting is recorded by retention's own
   * checkpoints, and verification takes the highest first sequence of any
   * valid checkpoint.
   */
  async checkpoint(final = false): Promise<void> {
    if (this.keys.sealed || this.committedThrough === 0) return;
    const last = this.committedThrough;
    const c = { replicaId: this.replicaId, writtenAt: new Date(), firstSequence: 1, lastSequence: last, final, givenUp: this.givenUp.pairs(1, last) };
    // A key rotation committing meanwhile re-seals the set under its new key: MAC the checkpoint again under it.
    const epoch = await this.epochs.acrossRotation(() =>
      this.store.insertCheckpoint({ ...c, mac: checkpointMac(this.keys.integrityKey(), c) }, (e, before, after) => this.epochs.next(CHECKPOINT_SET, e, before, after)),
    );
    if (epoch !== undefined) this.epochs.advance("audit_checkpoints", epoch);
  }

  /**
   * One group commit: marks what was written. If the database refused the
   * statement (it rolled back as a whole), each event goes again on its own, so
   * one bad event fails only its own call; if the database is unreachable, the
   * batch's calls fail (fail closed).
   */
  private async writeBatch(batch: BatchEvent[]): Promise<Array<ReadableVersion | undefined | Promise<ReadableVersion | undefined>>> {
    try {
      return await this.writeEvents(batch);
    } catch (err) {
      if (batch.length === 1 || isDatabaseUnavailable((err as { cause?: unknown }).cause)) throw err;
      const each = batch.map((e) => this.writeEvents([e]).then(([found]) => found));
      await Promise.allSettled(each);
      return each;
    }
  }

  private async writeEvents(batch: BatchEvent[]): Promise<Array<ReadableVersion | undefined>> {
    let found: Map<number, ReadableVersion>;
    const started = performance.now();
    const durability = this.durabilityOf(batch);
    try {
      found = await this.store.insertBatch(batch, durability);
      this.observer?.batchWritten(batch.length, (performance.now() - started) / 1000, durability);
    } catch (err) {
      this.observer?.batchFailed(batch.length);
      const cause = (err as { cause?: unknown }).cause ?? err;
      this.logger.error("audit events not written; failing their calls", { events: batch.length, err: cause });
      throw new NexusError("unavailable", "the audit log cannot be written; the call was refused", { reason: "AUDIT_UNAVAILABLE", cause });
    }
    return batch.map((e, i) => {
      const version = found.get(i);
      // An event with a read is written only if the read found something.
      if (e.read === undefined || version !== undefined) this.markCompleted(e.row.sequence);
      return version;
    });
  }

  /** Relaxed only if every event of the batch is of a method that changes nothing. */
  private durabilityOf(batch: readonly BatchEvent[]): BatchDurability {
    if (this.relaxedRpcs.size === 0) return "durable";
    for (const e of batch) if (!this.relaxedRpcs.has(e.row.rpc)) return "durable";
    return "relaxed";
  }

  /** Starts registering a signing certificate the first time it signs (again after a failed attempt). */
  private registerSigner(s: { certificateSha256: Buffer; certificateChainPem: string }): Promise<void> {
    const id = s.certificateSha256.toString("hex");
    let registration = this.signers.get(id);
    if (registration === undefined) {
      registration = this.store.insertSigner({ certificateSha256: s.certificateSha256, certificateChainPem: s.certificateChainPem });
      registration.catch(() => this.signers.delete(id));
      this.signers.set(id, registration);
      this.signerChains.set(id, s.certificateChainPem);
    }
    return registration;
  }

  /** A signed event is written only once its signer is on record: without it nothing could verify the event. */
  private async signerRegistered(signer: Buffer): Promise<void> {
    const id = signer.toString("hex");
    try {
      await this.registerSigner({ certificateSha256: signer, certificateChainPem: this.signerChains.get(id)! });
    } catch (err) {
      this.logger.error("audit signer not registered; failing the call", { err });
      throw new NexusError("unavailable", "the audit log cannot be written; the call was refused", { reason: "AUDIT_UNAVAILABLE", cause: err });
    }
  }
}

/** The audit record of one call. */
export class CallRecord implements CallAudit {
  private path: string | null = null;
  private version: number | null = null;
  private caller = "";
  private written = false;
  private prepared = false;

  constructor(
    private readonly log: AuditLog,
    readonly sequence: number,
    private readonly call: { requestId: string; rpc: string; time: Date },
  ) {}

  identify(caller: string): void {
    this.caller = caller;
  }

  /** Whether this record's event is written (with a change or a read) or given up. */
  get isWritten(): boolean {
    return this.written;
  }

  subject(path: string | null, version: number | null): void {
    this.path = path;
    this.version = version;
  }

  prepare(detail: Record<string, unknown> = {}): AuditRow {
    this.prepared = true;
    return this.log.row(this.fields("ok", "OK", detail));
  }

  markWritten(): void {
    this.written = true;
    this.log.markCompleted(this.sequence);
  }

  async recordRead(read: AuditedRead): Promise<ReadableVersion | undefined> {
    if (this.written) throw new Error("the call's audit event is already written");
    let found: ReadableVersion | undefined;
    try {
      found = await this.log.writeWithRead(this.log.row(this.fields("ok", "OK", {})), read);
    } catch (err) {
      // Whether that statement committed is unknown: never write this sequence
      // number again (the failure gets an event of its own that points at it).
      this.giveUp();
      throw err;
    }
    if (found !== undefined) this.written = true;
    return found;
  }

  /**
   * Records how the call ended. If its event is already written (with its
   * change or its read) and the call failed after all, the failure gets an
   * event of its own, so the log never shows only "ok" for a failed call.
   */
  async finish(outcome: AuditOutcome, code: string, detail: Record<string, unknown> = {}): Promise<void> {
    // A change whose statement met an unreachable database may have committed
    // its prepared event: its sequence number is not reused either.
    if (this.prepared && code === "UNAVAILABLE" && !this.written) this.giveUp();
    if (this.written) {
      if (outcome === "ok") return;
      const followUp = this.log.begin(this.call);
      followUp.identify(this.caller);
      followUp.subject(this.path, this.version);
      return followUp.finish(outcome, code, { ...detail, after_sequence: this.sequence });
    }
    this.written = true;
    try {
      await this.log.write(this.log.row(this.fields(outcome, code, detail)));
    } catch (err) {
      this.log.giveUp(this.sequence);
      throw err;
    }
  }

  /** This call's sequence number will not be written (again): it no longer holds back the head, and checkpoints list it. */
  private giveUp(): void {
    this.written = true;
    this.log.giveUp(this.sequence);
  }

  private fields(outcome: AuditOutcome, code: string, detail: Record<string, unknown>): AuditFields {
    return {
      replicaId: this.log.replicaId,
      sequence: this.sequence,
      time: this.call.time,
      requestId: this.call.requestId,
      caller: this.caller,
      rpc: this.call.rpc,
      path: this.path,
      version: this.version,
      outcome,
      code,
      detail,
    };
  }
}

/** A CallRecord begun on first use (see AuditLog.beginDeferred). */
export class DeferredCallRecord implements CallAudit {
  private record: CallRecord | undefined;
  private caller = "";
  private addressed: [string | null, number | null] = [null, null];

  constructor(private readonly begin: () => CallRecord) {}

  identify(caller: string): void {
    this.caller = caller;
    this.record?.identify(caller);
  }

  subject(path: string | null, version: number | null): void {
    this.addressed = [path, version];
    this.record?.subject(path, version);
  }

  /** Whether its event is written (a record never begun has written nothing). */
  get isWritten(): boolean {
    return this.record?.isWritten ?? false;
  }

  prepare(detail?: Record<string, unknown>): AuditRow {
    return this.begun().prepare(detail);
  }

  markWritten(): void {
    this.begun().markWritten();
  }

  recordRead(read: AuditedRead): Promise<ReadableVersion | undefined> {
    return this.begun().recordRead(read);
  }

  finish(outcome: AuditOutcome, code: string, detail?: Record<string, unknown>): Promise<void> {
    return this.begun().finish(outcome, code, detail);
  }

  private begun(): CallRecord {
    if (this.record === undefined) {
      this.record = this.begin();
      this.record.identify(this.caller);
      this.record.subject(...this.addressed);
    }
    return this.record;
  }
}

interface CheckpointFields {
  readonly replicaId: string;
  readonly writtenAt: Date;
  readonly firstSequence: number;
  readonly lastSequence: number;
  readonly final: boolean;
  /** Flat inclusive pairs of the sequence numbers given up. */
  readonly givenUp: readonly number[];
}

function checkpointMacInput(c: CheckpointFields): unknown {
  const input = [c.replicaId, c.writtenAt.toISOString(), c.firstSequence, c.lastSequence, c.final];
  // Without given-up numbers, the input checkpoints had before they recorded any, so those still verify.
  return c.givenUp.length === 0 ? input : [...input, c.givenUp];
}

export function checkpointMac(key: Buffer, c: CheckpointFields): Buffer {
  return mac(key, CHECKPOINT_MAC_LABEL, checkpointMacInput(c));
}

/** Whether a stored checkpoint's MAC is the one checkpointMac gives it (constant-time). */
export function checkpointVerifies(key: Buffer, c: CheckpointFields, stored: Uint8Array | null): boolean {
  return macMatches(key, CHECKPOINT_MAC_LABEL, checkpointMacInput(c), stored);
}

/**
 * Every replica's latest checkpoint, bound as one set by a MAC'd epoch
 * (keys/grant-epochs.ts): deleting a checkpoint (to turn a deletion into a
 * crash gap) or a whole replica's events and checkpoints is reported, not
 * silently believed.
 */
export const CHECKPOINT_SET: GrantSetRules<Checkpoint> = {
  name: "audit_checkpoints",
  orderKey: (c) => c.replicaId,
  rowVerifies: (key, c) => checkpointVerifies(key, c, c.mac),
  storedMac: (c) => c.mac,
  remac: (key, c) => ({ ...c, mac: checkpointMac(key, c) }),
};
