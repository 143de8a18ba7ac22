// Freshness for the sets of rows that grant something: the policies and the
// admin credentials. Each row carries its own MAC, which stops a database
// writer from forging or altering a row but not from copying back one that was
// deleted (a removed policy, a revoked token). So each set is also bound as a
// whole by its grant_epochs row: a counter that every change raises and a
// digest of the MACs of the rows in the set, MAC'd together.
//
// A replica accepts a set only if its epoch row verifies, the digest matches
// the rows whose own MAC verifies, and the epoch is not lower than the highest
// this process has seen: a row put back, or a whole older set put back under
// a running replica, is refused. What remains (a whole older snapshot written
// while every replica is down) is in docs/threat-model.md. An operator accepts
// a restored database explicitly: Unseal with accept_restored_state.
//
// A set is MAC'd under one integrity key, named by its epoch row. A key
// rotation re-MACs the rows and re-seals the epoch under the new key in one
// transaction (reseal); a replica accepts a set only under its own active
// integrity key — a set under a retired key is refused, and one under a newer
// key makes the replica read the keyring first (ensureKeyOf).

import { createHash } from "node:crypto";
import { NexusError } from "../errors/nexus-error.js";
import { mac, macMatches } from "./integrity.js";
import type { KeyManager } from "./key-manager.js";
import type { Logger } from "../log/logger.js";
import type { EpochRow, EpochSeal, GrantEpochStore, GrantSetName } from "../store/grant-epoch-store.js";

const EPOCH_MAC_LABEL = "nexus/v1/grant-epoch";
const DIGEST_LABEL = "nexus/v1/grant-set";

/** How a set's rows are ordered and authenticated. */
export interface GrantSetRules<R> {
  readonly name: GrantSetName;
  /** A stable key per row: the digest takes the rows' MACs in this order. */
  orderKey(row: R): string;
  /** Whether the row's own MAC verifies under `integrityKey`. */
  rowVerifies(integrityKey: Buffer, row: R): boolean;
  storedMac(row: R): Buffer;
  /** The row MAC'd again under `integrityKey` (key rotation). */
  remac(integrityKey: Buffer, row: R): R;
}

export class GrantEpochs {
  /** The highest epoch of each set this process has seen verified or committed. */
  private readonly seen = new Map<GrantSetName, number>();

  constructor(private readonly keys: KeyManager) {}

  /**
   * The rows of a set read in one snapshot with its epoch row, if the set is
   * fresh and whole; throws GRANT_SET_ALTERED otherwise. Rows whose own MAC
   * fails are left out (and do not count in the digest): inserting one grants
   * nothing and breaks nothing.
   */
  verify<R>(rules: GrantSetRules<R>, epoch: EpochRow | undefined, rows: readonly R[], seenBefore?: number): { rows: R[]; epoch: number } {
    // Synchronous from here: the key is used where it is taken.
    const key = this.keyFor(rules.name, epoch);
    const valid = rows.filter((r) => rules.rowVerifies(key, r));
    const problem = this.problem(key, rules, epoch, valid, seenBefore);
    if (problem !== undefined) throw altered(rules.name, problem);
    this.advance(rules.name, epoch!.epoch);
    return { rows: valid, epoch: epoch!.epoch };
  }

  /**
   * For a writer holding the epoch row's lock: checks the set as it was, then
   * seals the set as it will be at the next epoch. Call `advance` once committed.
   */
  next<R>(rules: GrantSetRules<R>, epoch: EpochRow | undefined, before: readonly R[], after: readonly R[]): EpochSeal {
    const key = this.keyFor(rules.name, epoch);
    const problem = this.problem(key, rules, epoch, before.filter((r) => rules.rowVerifies(key, r)));
    if (problem !== undefined) throw altered(rules.name, problem);
    // A row this change adds, MAC'd before a rotation committed: do it again under the new key.
    if (after.some((r) => !before.includes(r) && !rules.rowVerifies(key, r))) throw keyringChanging();
    return this.seal(key, rules, epoch!.epoch + 1, after.filter((r) => rules.rowVerifies(key, r)), this.keys.activeIntegrityKeyId);
  }

  /**
   * The operator's explicit acceptance of the stored set (a restored backup, or
   * the first start after the upgrade that introduced epochs): the rows whose
   * own MAC verifies become the set, at an epoch above any this process has seen.
   */
  adopt<R>(rules: GrantSetRules<R>, epoch: EpochRow | undefined, rows: readonly R[]): EpochSeal {
    const key = this.keys.integrityKey();
    const next = Math.max(epoch?.epoch ?? 0, this.seen.get(rules.name) ?? 0) + 1;
    return this.seal(key, rules, next, rows.filter((r) => rules.rowVerifies(key, r)), this.keys.activeIntegrityKeyId);
  }

  /**
   * Key rotation, for a writer holding the epoch row's lock: checks the set as
   * it is under the key its epoch names, then MACs every row again under
   * `newKey` and seals the set at the next epoch under it. Rows whose own MAC
   * does not verify are left out (they grant nothing now either).
   */
  reseal<R>(rules: GrantSetRules<R>, epoch: EpochRow | undefined, rows: readonly R[], newKey: { id: number; key: Buffer }): { rows: R[]; seal: EpochSeal } {
    const oldKey = this.keyFor(rules.name, epoch);
    const valid = rows.filter((r) => rules.rowVerifies(oldKey, r));
    const problem = this.problem(oldKey, rules, epoch, valid);
    if (problem !== undefined) throw altered(rules.name, problem);
    const remacd = valid.map((r) => rules.remac(newKey.key, r));
    return { rows: remacd, seal: this.seal(newKey.key, rules, epoch!.epoch + 1, remacd, newKey.id) };
  }

  /**
   * Before verifying a set read from the database: if its epoch names an
   * integrity key newer than this replica's (another replica rotated), read
   * the keyring first.
   */
  async ensureKeyOf(epoch: EpochRow | undefined): Promise<void> {
    if (epoch !== undefined && !this.keys.sealed && epoch.integrityKeyId > this.keys.activeIntegrityKeyId) await this.keys.refreshKeyring();
  }

  /**
   * Raises the epoch this process will accept no lower than, from an epoch row
   * another replica just stored, if its MAC verifies (a forged row raises
   * nothing). The set itself is checked when it is next read.
   */
  observe(name: GrantSetName, epoch: EpochRow | undefined): void {
    if (epoch?.mac == null || epoch.digest === null || this.keys.sealed) return;
    if (macMatches(this.keys.integrityKey(), EPOCH_MAC_LABEL, epochMacInput(name, epoch.epoch, epoch.digest), epoch.mac)) this.advance(name, epoch.epoch);
  }

  /**
   * Runs a change to a grant set again (at most twice more) when a key
   * rotation committed while it ran: the keyring is read, and `change` MACs
   * its rows under the new integrity key.
   */
  async acrossRotation<T>(change: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await change();
      } catch (err) {
        if (attempt >= 2 || !(err instanceof NexusError) || err.reason !== "KEYRING_CHANGING") throw err;
        await this.keys.refreshKeyring();
      }
    }
  }

  /**
   * The highest epoch seen so far: take it before reading a snapshot and pass
   * it to verify, so that a change this replica committed while the snapshot
   * was being read (a concurrent Login) does not make that snapshot look
   * rolled back.
   */
  seenEpoch(name: GrantSetName): number {
    return this.seen.get(name) ?? 0;
  }

  /** Records a committed epoch (or, after adopt, forgets higher ones). */
  advance(name: GrantSetName, epoch: number, reset = false): void {
    if (reset || epoch > (this.seen.get(name) ?? 0)) this.seen.set(name, epoch);
  }

  /**
   * The integrity key a set must verify under: the active one, named by its
   * epoch row. A set under a retired key is refused (a copy from before a
   * rotation, or forged with an old key); one under a key not held yet asks
   * the caller to retry once the keyring has been read.
   */
  private keyFor(name: GrantSetName, epoch: EpochRow | undefined): Buffer {
    const active = this.keys.activeIntegrityKeyId;
    const key = this.keys.integrityKey();
    if (epoch === undefined || epoch.mac === null) return key;
    if (epoch.integrityKeyId < active) throw altered(name, `it is MAC'd under integrity key ${epoch.integrityKeyId}, which a rotation retired (a copy from before the rotation written back?)`);
    if (epoch.integrityKeyId > active) {
      void this.keys.refreshKeyring().catch(() => {});
      throw keyringChanging();
    }
    return key;
  }

  private problem<R>(key: Buffer, rules: GrantSetRules<R>, epoch: EpochRow | undefined, valid: readonly R[], seenBefore?: number): string | undefined {
    if (epoch === undefined) return "its grant_epochs row is missing";
    const seen = seenBefore ?? this.seen.get(rules.name) ?? 0;
    if (epoch.mac === null || epoch.digest === null) {
      // Before the first change the set is empty at epoch 0; anything else
      // unbound was written outside Nexus (or predates epochs: accept it explicitly).
      if (epoch.epoch === 0 && valid.length === 0 && seen === 0) return undefined;
      return "it is not bound by a MAC'd epoch (rows written outside Nexus, or a database from before epochs)";
    }
    if (!macMatches(key, EPOCH_MAC_LABEL, epochMacInput(rules.name, epoch.epoch, epoch.digest), epoch.mac)) return "its epoch row does not verify";
    if (epoch.epoch < seen) return `its epoch went back from ${seen} to ${epoch.epoch} (an older copy written back?)`;
    if (!setDigest(rules, valid).equals(epoch.digest)) return `its rows are not the ones epoch ${epoch.epoch} bound (a row deleted, or an old one written back)`;
    return undefined;
  }

  private seal<R>(key: Buffer, rules: GrantSetRules<R>, epoch: number, valid: readonly R[], integrityKeyId: number): EpochSeal {
    const digest = setDigest(rules, valid);
    return { epoch, integrityKeyId, digest, mac: mac(key, EPOCH_MAC_LABEL, epochMacInput(rules.name, epoch, digest)) };
  }
}

function epochMacInput(name: GrantSetName, epoch: number, digest: Buffer): unknown {
  return [name, epoch, digest.toString("hex")];
}

function setDigest<R>(rules: GrantSetRules<R>, rows: readonly R[]): Buffer {
  const ordered = [...rows].sort((a, b) => {
    const ka = rules.orderKey(a);
    const kb = rules.orderKey(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  const hash = createHash("sha256").update(DIGEST_LABEL).update("\0").update(rules.name).update("\0");
  for (const row of ordered) hash.update(rules.storedMac(row));
  return hash.digest();
}

function keyringChanging(): NexusError {
  return new NexusError("unavailable", "the keyring is changing (a key rotation); retry in a moment", { reason: "KEYRING_CHANGING" });
}

function altered(name: GrantSetName, problem: string): NexusError {
  const what = { policies: "the stored policies", admin_credentials: "the stored admin credentials", audit_checkpoints: "the stored audit checkpoints" }[name];
  return new NexusError("internal", `${what} failed their integrity check: ${problem}; an operator can accept the stored state with Unseal accept_restored_state`, {
    reason: "GRANT_SET_ALTERED",
  });
}

/**
 * Follows the epochs other replicas store (NOTIFY on grant_epochs): each new
 * epoch raises this process's floor for that set at once, so a set written
 * back from an older copy is refused here too, not only on the replica that
 * made the newer epoch.
 */
export class GrantEpochFollower {
  private listener: { unlisten(): Promise<void> } | undefined;

  constructor(
    private readonly store: GrantEpochStore,
    private readonly epochs: GrantEpochs,
    private readonly keys: KeyManager,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    this.listener = await this.store.listen((name) => void this.follow(name));
  }

  async stop(): Promise<void> {
    await this.listener?.unlisten().catch(() => {});
  }

  private async follow(name: GrantSetName): Promise<void> {
    if (this.keys.sealed) return;
    const generation = this.keys.generation;
    try {
      const epoch = await this.store.read(name);
      // A seal in between may have zeroed the key the MAC would be checked with.
      if (this.keys.generation === generation) this.epochs.observe(name, epoch);
    } catch (err) {
      this.logger.warn("could not read a new grant epoch", { set: name, err });
    }
  }
}
