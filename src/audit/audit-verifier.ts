// Verification of the audit log (see docs/adr/0003-audit-log.md). Per replica:
// every event's MAC must verify; sequence numbers must run without gaps from the
// checkpointed first sequence to the last one known written (the latest
// checkpoint, or this replica's own head); each sequence must appear once.
// Findings are classified as altered, inserted, deleted, duplicated or
// reordered (two events verify only under each other's sequence numbers).

import type { KeyManager } from "../keys/key-manager.js";
import type { AuditStore, Checkpoint, StoredAuditRow } from "../store/audit-store.js";
import { auditEventVerifies } from "./audit-event.js";
import { checkpointVerifies, type AuditLog } from "./audit-log.js";

export type ProblemKind = "altered" | "inserted" | "deleted" | "reordered" | "duplicated";

export interface AuditProblem {
  readonly kind: ProblemKind;
  readonly replicaId: string;
  readonly sequence: number;
  readonly time: Date | null;
  readonly description: string;
}

export interface VerificationReport {
  readonly eventsChecked: number;
  readonly eventsAwaitingMac: number;
  readonly problems: AuditProblem[];
}

export class AuditVerifier {
  constructor(
    private readonly store: AuditStore,
    private readonly keys: KeyManager,
    private readonly ownLog: AuditLog,
  ) {}

  async verify(range: { from?: Date; to?: Date } = {}): Promise<VerificationReport> {
    const key = this.keys.integrityKey();
    const [rows, checkpoints, floors] = await Promise.all([
      this.store.allForVerification(),
      this.store.latestCheckpoints(),
      this.store.floorCheckpoints(),
    ]);
    const problems: AuditProblem[] = [];
    const byReplica = groupBy(rows, (r) => r.replicaId);
    const verifies = (c: Checkpoint) => checkpointVerifies(key, c, c.mac);
    const cps = new Map(checkpoints.map((c) => [c.replicaId, c]));
    const floorOf = new Map(floors.filter(verifies).map((c) => [c.replicaId, c.firstSequence]));
    let awaitingMac = 0;

    for (const replicaId of new Set([...byReplica.keys(), ...cps.keys()])) {
      const events = byReplica.get(replicaId) ?? [];
      let cp: Checkpoint | undefined = cps.get(replicaId);
      if (cp && !verifies(cp)) {
        problems.push({ kind: "altered", replicaId, sequence: cp.lastSequence, time: cp.writtenAt, description: "the latest checkpoint of this replica fails its MAC; it was ignored" });
        cp = undefined;
      }
      const first = Math.max(cp?.firstSequence ?? 1, floorOf.get(replicaId) ?? 1);
      let last = cp?.lastSequence ?? 0;
      if (replicaId === this.ownLog.replicaId) last = Math.max(last, this.ownLog.head);

      const valid = new Map<number, StoredAuditRow[]>();
      const invalid: StoredAuditRow[] = [];
      const unmacd: StoredAuditRow[] = [];
      for (const e of events) {
        if (e.mac === null) unmacd.push(e);
        else if (auditEventVerifies(key, e, e.mac)) append(valid, e.sequence, e);
        else invalid.push(e);
      }
      // A row without a MAC is only "awaiting" if it could be one recorded while
      // sealed: not beside a valid event of the same sequence, and, for this
      // replica, one it remembers writing.
      for (const e of unmacd) {
        const own = replicaId === this.ownLog.replicaId;
        if (valid.has(e.sequence) || (own && !this.ownLog.wroteWhileSealed(e))) invalid.push(e);
        else awaitingMac++;
      }
      for (const seqs of valid.values()) last = Math.max(last, seqs[0].sequence);

      for (const [sequence, copies] of valid) {
        for (const extra of copies.slice(1)) {
          problems.push({ kind: "duplicated", replicaId, sequence, time: extra.time, description: `event ${sequence} appears more than once` });
        }
      }
      // Two rows that verify only with each other's sequence numbers were swapped.
      const reordered = new Set<StoredAuditRow>();
      for (const a of invalid) {
        for (const b of invalid) {
          if (a === b || reordered.has(a)) continue;
          if (auditEventVerifies(key, { ...a, sequence: b.sequence }, a.mac) && auditEventVerifies(key, { ...b, sequence: a.sequence }, b.mac)) {
            reordered.add(a).add(b);
            problems.push({ kind: "reordered", replicaId, sequence: a.sequence, time: a.time, description: `events ${a.sequence} and ${b.sequence} carry each other's sequence numbers` });
          }
        }
      }
      for (const e of invalid) {
        if (reordered.has(e)) continue;
        const inRange = e.sequence >= first && e.sequence <= last;
        const kind: ProblemKind = inRange && !valid.has(e.sequence) ? "altered" : "inserted";
        problems.push({
          kind,
          replicaId,
          sequence: e.sequence,
          time: e.time,
          description: kind === "altered" ? `event ${e.sequence} no longer matches its MAC` : `event ${e.sequence} was not written by Nexus`,
        });
      }
      const present = new Set(events.map((e) => e.sequence));
      for (let s = first; s <= last; s++) {
        if (!present.has(s)) problems.push({ kind: "deleted", replicaId, sequence: s, time: null, description: `event ${s} is missing` });
      }
    }
    const inRange = (p: AuditProblem) =>
      p.time === null || ((!range.from || p.time >= range.from) && (!range.to || p.time < range.to));
    return { eventsChecked: rows.length, eventsAwaitingMac: awaitingMac, problems: problems.filter(inRange) };
  }
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

