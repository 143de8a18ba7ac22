// Audit retention: prunes events older than the retention, per replica, in
// sequence order from where its retained log starts (its verified floor), and
// only events that authenticate. It stops at the first event that is young,
// does not authenticate, appears twice, or is missing for no recorded reason,
// so a database writer cannot have tampered events pruned (a time set to 1970
// fails the MAC) nor move the floor with a junk row (the floor is one past
// the last event pruned, never taken from row contents). Each run deletes and
// writes the MAC'd floor checkpoint in one transaction. See ADR 0003.
// Every replica runs it over every replica's events; of two passes that
// overlap, only the first to commit prunes (AuditStore.prune), so events are
// pruned and counted once and each floor is written once.

import type { GrantEpochs } from "../keys/grant-epochs.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import type { AuditSignerRecord, AuditStore, Checkpoint, StoredAuditRow } from "../store/audit-store.js";
import { CHECKPOINT_SET, checkpointMac, checkpointVerifies, type AuditLog } from "./audit-log.js";
import { EventAuthenticator, type SignatureTrust } from "./event-authenticator.js";
import { SequenceRanges } from "./sequence-ranges.js";

const CHUNK = 1000;
/** Per replica and run; the next run goes on from there. */
const MAX_PRUNED_PER_RUN = 50_000;

export interface PruneResult {
  readonly replicaId: string;
  readonly pruned: number;
  /** The replica's first retained sequence now. */
  readonly floor: number;
}

export class AuditRetention {
  constructor(
    private readonly store: AuditStore,
    private readonly keys: KeyManager,
    private readonly ownLog: AuditLog,
    private readonly trust: () => SignatureTrust,
    private readonly logger: Logger,
    private readonly epochs: GrantEpochs,
  ) {}

  /** Prunes what may be pruned of every replica's events older than `before`. */
  async prune(before: Date): Promise<PruneResult[]> {
    if (this.keys.sealed) return [];
    const [replicas, snapshot, floors, signers] = await Promise.all([
      this.store.replicaIds(),
      this.store.checkpointSnapshot(),
      this.store.floorCheckpoints(),
      this.store.signers(),
    ]);
    if (this.keys.sealed) return [];
    let latest: Checkpoint[];
    try {
      // The set of latest checkpoints must be whole and fresh: a deleted one would make its gaps look prunable.
      latest = this.epochs.verify(CHECKPOINT_SET, snapshot.epoch, snapshot.latest).rows;
    } catch (err) {
      this.logger.warn("audit retention prunes nothing: the audit checkpoints fail their integrity check", { reason: (err as Error).message });
      return [];
    }
    const results: PruneResult[] = [];
    for (const replicaId of replicas) {
      const cp = latest.find((c) => c.replicaId === replicaId);
      // Another replica with events but no checkpoint: what it settled is unknown, so nothing of it is pruned.
      if (cp === undefined && replicaId !== this.ownLog.replicaId) continue;
      const result = await this.pruneReplica(replicaId, cp, floors.filter((f) => f.replicaId === replicaId), signers, before);
      if (result !== undefined) results.push(result);
    }
    return results;
  }

  private async pruneReplica(
    replicaId: string,
    latest: Checkpoint | undefined,
    floors: readonly Checkpoint[],
    signers: readonly AuditSignerRecord[],
    before: Date,
  ): Promise<PruneResult | undefined> {
    // Where the retained log starts and what is settled, from checkpoints whose MAC verifies (key taken and dropped synchronously).
    if (this.keys.sealed) return undefined;
    // Checkpoints keep the integrity key they were MAC'd with (a rotation retires keys, not checkpoints).
    const held = this.keys.integrityKeys().map((k) => k.key);
    const verifies = (c: NonNullable<typeof latest>) => held.some((k) => checkpointVerifies(k, c, c.mac));
    if (latest !== undefined && !verifies(latest)) {
      this.logger.warn("audit retention skips a replica whose latest checkpoint fails its MAC", { replicaId });
      return undefined;
    }
    const floorCp = floors.find((f) => verifies(f));
    const floor = Math.max(floorCp?.firstSequence ?? 1, latest?.firstSequence ?? 1);
    const own = replicaId === this.ownLog.replicaId;
    const settled = Math.max(latest?.lastSequence ?? 0, own ? this.ownLog.head : 0);
    const givenUp = SequenceRanges.fromPairs(latest?.givenUp ?? []);
    // A number missing for a recorded reason (given up), or — another
    // replica's — after its last checkpoint (a crash gap, which verification
    // cannot tell from a deletion anyway), does not stop pruning.
    const skippable = (s: number) => givenUp.has(s) || (own ? this.ownLog.gaveUp(s) : s > settled);

    const ids: number[] = [];
    let next = floor; // the sequence expected next
    let prunedThrough = floor - 1;
    for (;;) {
      const rows = await this.store.eventsFrom(replicaId, next, CHUNK);
      if (this.keys.sealed) return undefined;
      // After the await: take the key again now, use it synchronously.
      const auth = new EventAuthenticator(this.keys.integrityKeys().map((k) => k.key), signers, this.trust());
      const full = rows.length === CHUNK;
      const bySequence = groupBySequence(rows);
      // A full chunk may have cut the copies of its last sequence: that one is read again next time.
      if (full) bySequence.delete(rows[rows.length - 1].sequence);
      let stopped = bySequence.size === 0;
      for (const [sequence, copies] of bySequence) {
        while (next < sequence && skippable(next)) next++;
        const prunable = next === sequence && copies.length === 1 && auth.check(copies[0]) !== undefined && copies[0].time < before;
        if (!prunable) {
          stopped = true;
          break;
        }
        ids.push(copies[0].id);
        prunedThrough = sequence;
        next = sequence + 1;
      }
      if (stopped || !full || ids.length >= MAX_PRUNED_PER_RUN) break;
    }
    if (ids.length === 0) return undefined;

    const newFloor = prunedThrough + 1;
    const c = {
      replicaId,
      writtenAt: new Date(),
      firstSequence: newFloor,
      lastSequence: Math.max(latest?.lastSequence ?? 0, prunedThrough),
      final: latest?.final ?? false,
      givenUp: givenUp.pairs(newFloor),
    };
    if (this.keys.sealed) return undefined;
    // A key rotation committing meanwhile re-seals the checkpoint set: MAC the floor again under its new key.
    const epoch = await this.epochs.acrossRotation(() =>
      this.store.prune(ids, { ...c, mac: checkpointMac(this.keys.integrityKey(), c) }, (e, before, after) => this.epochs.next(CHECKPOINT_SET, e, before, after)),
    );
    if (epoch === undefined) {
      this.logger.debug("audit retention pass overlapped another replica's; it pruned first", { replicaId });
      return undefined;
    }
    this.epochs.advance("audit_checkpoints", epoch);
    return { replicaId, pruned: ids.length, floor: newFloor };
  }
}

function groupBySequence(rows: readonly StoredAuditRow[]): Map<number, StoredAuditRow[]> {
  const out = new Map<number, StoredAuditRow[]>();
  for (const r of rows) {
    const group = out.get(r.sequence);
    if (group === undefined) out.set(r.sequence, [r]);
    else group.push(r);
  }
  return out;
}
