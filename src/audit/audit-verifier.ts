// Verification of the audit log (see docs/adr/0003-audit-log.md). Per replica:
// every event must authenticate (MAC, or SVID signature if recorded while
// sealed); sequence numbers must run without gaps from the checkpointed first
// sequence to the last one known written; each sequence must appear once.
// Findings are classified as altered, inserted, deleted, duplicated, reordered
// (two events verify only under each other's sequence numbers) or crash gaps
// (missing after the replica's last checkpoint, which a crash can leave).
// A time range selects problems by the authenticated times of their
// neighbours in sequence, never by a suspect row's own (forgeable) time.

import type { GrantEpochs } from "../keys/grant-epochs.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { AuditSignerRecord, AuditStore, Checkpoint, StoredAuditRow } from "../store/audit-store.js";
import type { EpochRow } from "../store/grant-epoch-store.js";
import { CHECKPOINT_SET, checkpointVerifies, type AuditLog } from "./audit-log.js";
import { EventAuthenticator, type SignatureTrust } from "./event-authenticator.js";
import { SequenceRanges } from "./sequence-ranges.js";

export type ProblemKind = "altered" | "inserted" | "deleted" | "reordered" | "duplicated" | "crash_gap";

export interface AuditProblem {
  readonly kind: ProblemKind;
  readonly replicaId: string;
  readonly sequence: number;
  readonly description: string;
}

export interface VerificationReport {
  readonly eventsChecked: number;
  /** Events recorded while sealed, authenticated by their SVID signature. */
  readonly eventsSigned: number;
  readonly problems: AuditProblem[];
}

const MAX_REORDER_CANDIDATES = 256;

/** A problem and the sequence numbers it concerns (for the time range); none = always reported. */
interface Finding {
  readonly problem: AuditProblem;
  readonly span?: readonly [number, number];
}

export class AuditVerifier {
  constructor(
    private readonly store: AuditStore,
    private readonly keys: KeyManager,
    private readonly ownLog: AuditLog,
    private readonly trust: () => SignatureTrust,
    private readonly epochs: GrantEpochs,
  ) {}

  /** Per row, whether it is authentic (ListAuditEvents' `verified`). Only signatures count while sealed. */
  async authenticate(rows: readonly StoredAuditRow[]): Promise<boolean[]> {
    const signers = rows.some((r) => r.signer !== null) ? await this.store.signers() : [];
    // After the last await: the key is taken now and used only synchronously.
    const auth = new EventAuthenticator(this.keys.sealed ? undefined : this.keys.integrityKeys().map((k) => k.key), signers, this.trust());
    return rows.map((r) => auth.check(r) !== undefined);
  }

  async verify(range: { from?: Date; to?: Date } = {}): Promise<VerificationReport> {
    const [rows, checkpoints, floors, signers] = await Promise.all([
      this.store.allForVerification(),
      this.store.checkpointSnapshot(),
      this.store.floorCheckpoints(),
      this.store.signers(),
    ]);
    // Everything from here on is synchronous: the integrity key is taken after
    // the last await, so a Seal (which zeroes it in place) cannot happen while
    // it is in use and make rows MAC'd with an all-zero key verify.
    return this.check(rows, checkpoints, floors, signers, range);
  }

  private check(
    rows: readonly StoredAuditRow[],
    checkpoints: { epoch: EpochRow | undefined; latest: Checkpoint[] },
    floors: readonly Checkpoint[],
    signers: readonly AuditSignerRecord[],
    range: { from?: Date; to?: Date },
  ): VerificationReport {
    // Every integrity key held: events and checkpoints keep the key they were MAC'd with.
    const keys = this.keys.integrityKeys().map((k) => k.key);
    const auth = new EventAuthenticator(keys, signers, this.trust());
    const verifies = (c: Checkpoint) => keys.some((key) => checkpointVerifies(key, c, c.mac));
    const byReplica = groupBy(rows, (r) => r.replicaId);
    const kept: AuditProblem[] = [];
    // Every replica's latest checkpoint is bound as one set: a checkpoint
    // deleted (turning deletions into crash gaps) or a replica's whole history
    // removed with its checkpoints is reported here.
    try {
      this.epochs.verify(CHECKPOINT_SET, checkpoints.epoch, checkpoints.latest);
    } catch (err) {
      kept.push({ kind: "deleted", replicaId: "", sequence: 0, description: (err as Error).message });
    }
    const latest = new Map(checkpoints.latest.map((c) => [c.replicaId, c]));
    const floorsOf = groupBy(floors, (c) => c.replicaId);
    const findings: Finding[] = [];
    let signed = 0;

    for (const replicaId of new Set([...byReplica.keys(), ...latest.keys()])) {
      const events = byReplica.get(replicaId) ?? [];
      const found = (kind: ProblemKind, sequence: number, description: string, span?: readonly [number, number]) =>
        findings.push({ problem: { kind, replicaId, sequence, description }, span });

      let cp = latest.get(replicaId);
      if (cp && !verifies(cp)) {
        found("altered", cp.lastSequence, "the latest checkpoint of this replica fails its MAC; it was ignored");
        cp = undefined;
      }
      // The highest floor whose MAC verifies; a forged one above it is reported, not obeyed.
      let floor = 1;
      for (const f of floorsOf.get(replicaId) ?? []) {
        if (verifies(f)) {
          floor = f.firstSequence;
          break;
        }
        found("altered", f.firstSequence, `a checkpoint moving this replica's first sequence to ${f.firstSequence} fails its MAC; it was ignored`);
      }
      const first = Math.max(cp?.firstSequence ?? 1, floor);
      const own = replicaId === this.ownLog.replicaId;
      // Settled: known written or given up, by a checkpoint or by this replica itself.
      const settled = Math.max(cp?.lastSequence ?? 0, own ? this.ownLog.head : 0);
      const givenUp = SequenceRanges.fromPairs(cp?.givenUp ?? []);
      const gaveUp = (s: number) => givenUp.has(s) || (own && this.ownLog.gaveUp(s));

      const valid = new Map<number, StoredAuditRow[]>();
      const invalid: StoredAuditRow[] = [];
      for (const e of events) {
        const how = auth.check(e);
        if (how === undefined) invalid.push(e);
        else {
          append(valid, e.sequence, e);
          if (how === "signature") signed++;
        }
      }
      let last = settled;
      for (const seqs of valid.values()) last = Math.max(last, seqs[0].sequence);

      for (const [sequence, copies] of valid) {
        for (let i = 1; i < copies.length; i++) found("duplicated", sequence, `event ${sequence} appears more than once`, [sequence, sequence]);
      }
      // Two rows that verify only with each other's sequence numbers were
      // swapped. The search is quadratic, and a signature check costs far more
      // than a MAC: past a few hundred suspect rows they are reported one by
      // one (altered or inserted) instead, so junk rows cannot stall verification.
      const reordered = new Set<StoredAuditRow>();
      const pairable = invalid.length <= MAX_REORDER_CANDIDATES ? invalid : [];
      for (const a of pairable) {
        for (const b of pairable) {
          if (a === b || reordered.has(a) || reordered.has(b)) continue;
          if (auth.check(a, { ...a, sequence: b.sequence }) && auth.check(b, { ...b, sequence: a.sequence })) {
            reordered.add(a).add(b);
            const span = [Math.min(a.sequence, b.sequence), Math.max(a.sequence, b.sequence)] as const;
            found("reordered", a.sequence, `events ${a.sequence} and ${b.sequence} carry each other's sequence numbers`, span);
          }
        }
      }
      for (const e of invalid) {
        if (reordered.has(e)) continue;
        const altered = e.sequence >= first && e.sequence <= last && !valid.has(e.sequence);
        found(
          altered ? "altered" : "inserted",
          e.sequence,
          altered ? `event ${e.sequence} matches neither its MAC nor a signature` : `event ${e.sequence} was not written by Nexus`,
          [e.sequence, e.sequence],
        );
      }
      const present = new Set(events.map((e) => e.sequence));
      for (let s = first; s <= last; s++) {
        if (present.has(s) || gaveUp(s)) continue;
        if (s <= settled) found("deleted", s, `event ${s} is missing`, [s, s]);
        else found("crash_gap", s, `event ${s} is missing after the replica's last checkpoint: lost in a crash, still in flight, or deleted`, [s, s]);
      }

      const window = timeWindows(valid);
      for (const f of findings.splice(0)) if (f.span === undefined || window(f.span, range)) kept.push(f.problem);
    }
    return { eventsChecked: rows.length, eventsSigned: signed, problems: kept };
  }
}

/**
 * Whether the time between a span's nearest authentic neighbours (by
 * sequence) meets the range: a suspect row's own time proves nothing, but
 * its neighbours' times are authenticated.
 */
function timeWindows(valid: ReadonlyMap<number, readonly StoredAuditRow[]>) {
  const sequences = [...valid.keys()].sort((a, b) => a - b);
  const timeOf = (s: number) => valid.get(s)![0].time.getTime();
  return ([lo, hi]: readonly [number, number], range: { from?: Date; to?: Date }): boolean => {
    if (range.from === undefined && range.to === undefined) return true;
    const i = firstAbove(sequences, lo - 1); // first valid sequence >= lo
    const before = sequences[i - 1];
    const after = sequences[firstAbove(sequences, hi)];
    const times = [before === undefined ? -Infinity : timeOf(before), after === undefined ? Infinity : timeOf(after)];
    const start = Math.min(...times);
    const end = Math.max(...times);
    return (range.to === undefined || start < range.to.getTime()) && (range.from === undefined || end >= range.from.getTime());
  };
}

/** Index of the first element above `n` in an ascending array. */
function firstAbove(sorted: readonly number[], n: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] <= n) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function groupBy<T>(items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const item of items) append(out, key(item), item);
  return out;
}

// In place: copying the group for each item made verification quadratic in a replica's events.
function append<K, T>(groups: Map<K, T[]>, key: K, item: T): void {
  const group = groups.get(key);
  if (group === undefined) groups.set(key, [item]);
  else group.push(item);
}
