// Online rotation of the keyring (RotateEncryptionKey): a new wrapping key and
// a new integrity key, the grant sets re-MAC'd under the new integrity key in
// the same transaction, then every data key re-wrapped in the background in
// batches, and the old wrapping key deleted once nothing references it. The
// state lives in key_rotations, so a rotation survives kill -9: whichever
// replica next unseals (or finds the driver's lease expired) resumes it.
// See docs/adr/0010-key-rotation.md.

import type { Queryable } from "../store/database.js";
import { CREDENTIAL_SET } from "../authorization/admin-credentials.js";
import type { GrantEpochs } from "../keys/grant-epochs.js";
import { POLICY_SET } from "../authorization/policy-sync.js";
import type { AuditRow } from "../audit/audit-event.js";
import { CHECKPOINT_SET } from "../audit/audit-log.js";
import type { AuditStore } from "../store/audit-store.js";
import { NexusError } from "../errors/nexus-error.js";
import { integrityWindowMac, type KeyManager } from "../keys/key-manager.js";
import type { SecretCipher } from "../keys/secret-cipher.js";
import type { Logger } from "../log/logger.js";
import type { CredentialStore } from "../store/credential-store.js";
import { keyedMacKeyId } from "../keys/keyed-mac.js";
import type { KeyRotationStore, RotationPhaseName, RotationRow, SecretMacRow, SecretMacUpdate } from "../store/key-rotation-store.js";
import { rotationMac, verifiedPolicy } from "./rotation-policy.js";
import { labelsMac as labelsMacUnder, labelsVerify } from "./secret-labels.js";
import type { PolicyStore } from "../store/policy-store.js";

/**
 * Something the integrity key protects, re-MAC'd in the rotation's key
 * transaction: it reads its rows (locking what it must), checks them under
 * the old key and writes them MAC'd under `newKey`.
 */
export interface RemacParticipant {
  readonly name: string;
  remac(tx: Queryable, newKey: { readonly id: number; readonly key: Buffer }): Promise<void>;
}

export interface KeyRotationOptions {
  /** Data keys per re-wrap transaction. */
  readonly batchSize: number;
  /** Pause between batches, so the re-wrap leaves room for requests. */
  readonly pauseMs: number;
  /** How long after creating the keys before the old wrapping key may be deleted (other replicas take the new one up within 1 s). */
  readonly retireAfterMs: number;
  /** How long a driver's claim lasts without a batch renewing it. */
  readonly leaseMs: number;
}

export const DEFAULT_ROTATION_OPTIONS: KeyRotationOptions = { batchSize: 500, pauseMs: 0, retireAfterMs: 3000, leaseMs: 15_000 };

/** How often each replica checks whether a scheduled rotation is due. */
export const SCHEDULE_CHECK_MS = 60_000;

/**
 * The sets bound by a MAC'd epoch (ADR 0006), re-MAC'd and re-sealed in the
 * key transaction: policies, admin credentials, and every replica's latest
 * audit checkpoint (a set under a retired key is refused, so each must move
 * to the new key with it). Per-secret rows are many and are re-MAC'd in
 * batches afterwards (remacRows).
 */
export function grantSetParticipants(epochs: GrantEpochs, policies: PolicyStore, credentials: CredentialStore, audit: AuditStore): RemacParticipant[] {
  return [
    { name: "policies", remac: (tx, newKey) => policies.remac(tx, (epoch, rows) => epochs.reseal(POLICY_SET, epoch, rows, newKey)) },
    { name: "admin_credentials", remac: (tx, newKey) => credentials.remac(tx, (epoch, rows) => epochs.reseal(CREDENTIAL_SET, epoch, rows, newKey)) },
    { name: "audit_checkpoints", remac: (tx, newKey) => audit.remacCheckpoints(tx, (epoch, latest) => epochs.reseal(CHECKPOINT_SET, epoch, latest, newKey)) },
  ];
}

export class KeyRotation {
  private driving: Promise<void> | undefined;
  /** Data keys the rotation driven here has still to re-wrap (metrics); 0 when this replica drives none. */
  remainingKeys = 0;
  private stopped = false;

  constructor(
    private readonly store: KeyRotationStore,
    private readonly keys: KeyManager,
    private readonly cipher: SecretCipher,
    private readonly participants: readonly RemacParticipant[],
    private readonly worker: string,
    private readonly logger: Logger,
    private readonly options: KeyRotationOptions = DEFAULT_ROTATION_OPTIONS,
  ) {}

  /** Starts a rotation, or attaches to the one running on any replica; the re-wrap goes on in the background. */
  async start(startedBy: string, reencrypt: boolean, audit: AuditRow): Promise<{ rotation: RotationRow; started: boolean }> {
    return (await this.startIf(startedBy, reencrypt, () => audit, undefined))!;
  }

  /**
   * The schedule (every replica checks; the first to find a rotation due
   * under the lock starts it, the others find it running or not due).
   * Returns whether this call started one.
   */
  async startIfDue(schedule: { intervalMs: number; maxEncryptions: number }, audit: () => AuditRow): Promise<boolean> {
    if (this.keys.sealed) return false;
    const result = await this.startIf("schedule", false, audit, schedule);
    if (result?.started) this.logger.info("scheduled key rotation started", { rotationId: result.rotation.id });
    return result?.started ?? false;
  }

  private async startIf(
    startedBy: string,
    reencrypt: boolean,
    audit: () => AuditRow,
    schedule: { intervalMs: number; maxEncryptions: number } | undefined,
  ): Promise<{ rotation: RotationRow; started: boolean } | undefined> {
    const generation = this.keys.generation;
    let made: Array<{ key: Buffer }> = [];
    const result = await this.store.start({
      startedBy,
      reencrypt,
      audit,
      schedule,
      keys: (maxKeyId) => {
        const wrapping = this.keys.newKeyringKey(maxKeyId + 1, "wrapping");
        const integrity = this.keys.newKeyringKey(maxKeyId + 2, "integrity");
        made = [wrapping, integrity];
        return { rows: [wrapping.row, integrity.row], wrappingKeyId: maxKeyId + 1, integrityKeyId: maxKeyId + 2 };
      },
      windowMac: (oldIntegrityKeyId) => {
        const integrity = made[1] as { key: Buffer; row: { id: number } };
        return integrityWindowMac({ id: integrity.row.id, key: integrity.key }, oldIntegrityKeyId);
      },
      remac: async (tx) => {
        const integrity = made[1] as { key: Buffer; row: { id: number } };
        for (const p of this.participants) {
          // A Seal while this transaction runs zeroes the old key in place: refuse rather than MAC with zeros.
          if (this.keys.generation !== generation) throw this.keys.sealedError();
          await p.remac(tx, { id: integrity.row.id, key: integrity.key });
        }
        if (this.keys.generation !== generation) throw this.keys.sealedError();
      },
    });
    made.forEach((m) => m.key.fill(0));
    if (result === undefined) return undefined;
    // Take the new keys up at once here (from the database: only committed
    // keys count, and an attached call made none); other replicas follow by NOTIFY.
    await this.keys.refreshKeyring();
    this.resume(result.rotation.id);
    return result;
  }

  /** Drives the running rotation here unless another live replica does (after unseal, and periodically). */
  resume(id?: number): void {
    if (this.driving !== undefined || this.keys.sealed || this.stopped) return;
    this.driving = this.drive(id)
      .catch((err) => this.logger.error("key rotation paused; it resumes later", { err }))
      .finally(() => (this.driving = undefined));
  }

  /**
   * Shutdown: stops driving after the batch in flight (it commits or rolls
   * back whole); the rotation stays in the database for the next replica.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.driving;
  }

  private async drive(id: number | undefined): Promise<void> {
    const rotation = id === undefined ? await this.store.running() : await this.store.byId(id);
    if (rotation === undefined || rotation.phase === "done") return;
    if (!(await this.store.claim(rotation.id, this.worker, this.options.leaseMs))) return;
    if (!this.keys.hasWrappingKey(rotation.newWrappingKeyId)) await this.keys.refreshKeyring();
    if (!this.keys.hasWrappingKey(rotation.newWrappingKeyId) || this.keys.activeWrappingKey().id !== rotation.newWrappingKeyId) {
      throw new NexusError("internal", "the rotation's wrapping key is not the active key here", { reason: "ROTATION_KEY_MISSING" });
    }
    this.logger.info("key rotation: re-wrapping", { rotationId: rotation.id, from: rotation.oldWrappingKeyId, to: rotation.newWrappingKeyId });
    let phase: RotationPhaseName | undefined = rotation.phase;
    this.remainingKeys = phase === "rewrapping" ? await this.store.remaining(rotation.newWrappingKeyId) : 0;
    try {
      if (phase === "rewrapping") phase = await this.rewrap(rotation);
    } finally {
      this.remainingKeys = 0;
    }
    if (phase === undefined) return; // sealed meanwhile
    if (phase === "remacing") {
      this.logger.info("key rotation: re-MACing label states and rotation policies", { rotationId: rotation.id, integrityKeyId: rotation.newIntegrityKeyId });
      if (!(await this.remacRows(rotation))) return;
      // Re-MAC done: the window closes, so rows under the retired key are refused from now on everywhere.
      await this.store.closeIntegrityWindow(rotation.id, rotation.newIntegrityKeyId);
    }
    const retired = await this.store.retireWrappingKeys(rotation.newWrappingKeyId);
    await this.keys.refreshKeyring();
    await this.store.setPhase(rotation.id, "done");
    this.logger.info("key rotation done", { rotationId: rotation.id, retiredWrappingKeys: retired });
  }

  /** The re-wrap passes; returns the next phase, or undefined if this replica was sealed. */
  private async rewrap(rotation: RotationRow): Promise<"remacing" | undefined> {
    const batch = { id: rotation.id, newWrappingKeyId: rotation.newWrappingKeyId, reencrypt: rotation.reencrypt, worker: this.worker, leaseMs: this.options.leaseMs };
    for (;;) {
      if (this.keys.sealed || this.stopped) return undefined;
      const generation = this.keys.generation;
      const n = await this.store.rewrapBatch(batch, this.options.batchSize, (rows) => {
        if (this.keys.generation !== generation) throw this.keys.sealedError();
        return rows.map((r) => {
          if (r.versions === undefined) return this.cipher.rewrap(r);
          // reencrypt: a fresh data key under the new wrapping key, every live version re-encrypted under it.
          const replaced = this.cipher.replaceDataKey(r, r.versions);
          return { keyringKeyId: replaced.key.keyringKeyId, wrappedDataKey: replaced.key.wrappedDataKey, dataKeyId: replaced.key.dataKeyId, versions: replaced.versions };
        });
      });
      if (n > 0) {
        this.remainingKeys = Math.max(0, this.remainingKeys - n);
        if (this.options.pauseMs > 0) await new Promise((r) => setTimeout(r, this.options.pauseMs));
        continue;
      }
      // End of a pass: data keys written meanwhile by a replica still on the old key get another pass.
      const left = await this.store.remaining(rotation.newWrappingKeyId);
      const age = Date.now() - rotation.startedAt.getTime();
      if (left > 0) {
        this.remainingKeys = left;
        await this.store.restartPass(rotation.id, left);
        continue;
      }
      // Every replica takes the new keys up within this time: after it, no row is written under the old integrity key.
      if (age < this.options.retireAfterMs) {
        await new Promise((r) => setTimeout(r, Math.min(250, this.options.retireAfterMs - age)));
        continue;
      }
      await this.store.startRemac(rotation.id);
      return "remacing";
    }
  }

  /**
   * The remacing phase: every label state and rotation policy still MAC'd
   * under the retired integrity key is checked under it and MAC'd again under
   * the new one, in batches in secrets.id order with the cursor moved in the
   * same transaction (resumable, like the re-wrap). Passes repeat until one
   * finds nothing left to re-MAC; a row that does not verify under its key is
   * left as it is (it is refused either way) and reported. Returns false if
   * this replica was sealed meanwhile.
   */
  private async remacRows(rotation: RotationRow): Promise<boolean> {
    const batch = { id: rotation.id, newIntegrityKeyId: rotation.newIntegrityKeyId, worker: this.worker, leaseMs: this.options.leaseMs };
    let remacd = 0;
    for (;;) {
      if (this.keys.sealed || this.stopped) return false;
      const generation = this.keys.generation;
      const result = await this.store.remacBatch(batch, this.options.batchSize, (rows) => {
        if (this.keys.generation !== generation) throw this.keys.sealedError();
        return remacSecretRows(this.keys, rotation.newIntegrityKeyId, rows, (path, what) => this.logger.error(`key rotation: a ${what} does not verify under its integrity key; left as it is (it is refused)`, { path }));
      });
      if (result.scanned > 0) {
        remacd += result.remacd;
        continue;
      }
      if (remacd === 0) return true;
      // Another pass for rows a replica wrote under the old key while this one ran.
      remacd = 0;
      await this.store.restartRemacPass(rotation.id);
    }
  }
}

/** New MACs for one batch's rows: each label state and policy verified under the key it names, then MAC'd under the new key. */
function remacSecretRows(keys: KeyManager, newIntegrityKeyId: number, rows: readonly SecretMacRow[], report: (path: string, what: string) => void): SecretMacUpdate[] {
  const newKey = keys.activeIntegrityKey();
  if (newKey.id !== newIntegrityKeyId) throw new NexusError("internal", "the rotation's integrity key is not the active key here", { reason: "ROTATION_KEY_MISSING" });
  const keyFor = (id: number) => keys.integrityKeyForRow(id);
  return rows.map((r) => {
    let labelsMac: Buffer | undefined;
    let rotationMacValue: Buffer | undefined;
    if (r.labels.mac !== null && keyedMacKeyId(r.labels.mac) !== newKey.id) {
      if (labelsVerify(keyFor, r.id, r.path, r.labels)) labelsMac = labelsMacUnder(newKey, r.id, r.path, r.labels);
      else report(r.path, "label state");
    }
    if (r.rotation !== null && r.rotationMac !== null && keyedMacKeyId(r.rotationMac) !== newKey.id) {
      if (verifiedPolicy(keyFor, r.id, r.path, r.rotation, r.rotationMac) !== undefined) rotationMacValue = rotationMac(newKey, r.id, r.path, r.rotation);
      else report(r.path, "rotation policy");
    }
    return { labelsMac, rotationMac: rotationMacValue };
  });
}
