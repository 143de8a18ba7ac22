// What the cluster-seal row (sql/009, ADR 0012) means to a replica holding the
// keys. The row is MAC'd under an integrity key over (epoch, sealed,
// changed_by); a replica remembers the highest epoch it has seen, so an older
// row put back (or the row deleted) is not believed either. Handovers are
// refused unless the row verifies, is not older than one seen, and is lifted:
// whatever a database writer does to the row, peers can only refuse more.

import type { ClusterSealRow } from "../store/peer-unseal-store.js";
import type { KeyManager } from "./key-manager.js";
import { keyedMac, keyedMacMatches } from "./keyed-mac.js";

const LABEL = "nexus/v1/cluster-seal";

/** open: handovers allowed; sealed: a verified cluster seal; unverified/stale: a row a database writer made or put back. */
export type ClusterSealVerdict = "open" | "sealed" | "unverified" | "stale";

export class ClusterSealGuard {
  private highestSeen = 0;

  constructor(private readonly keys: KeyManager) {}

  /**
   * The row that follows `previous` (undefined: none yet), MAC'd under the
   * active integrity key (throws SEALED while sealed). Synchronous: no key is
   * held across an await.
   */
  next(previous: ClusterSealRow | undefined, sealed: boolean, changedBy: string): ClusterSealRow {
    const epoch = Math.max(previous?.epoch ?? 0, this.highestSeen) + 1;
    return { epoch, sealed, changedBy, mac: keyedMac(this.keys.activeIntegrityKey(), LABEL, [epoch, sealed, changedBy]) };
  }

  /** Whether `row` is older than one this replica has seen, or missing after one was seen (needs no key). */
  isStale(row: ClusterSealRow | undefined): boolean {
    return row === undefined ? this.highestSeen > 0 : row.epoch < this.highestSeen;
  }

  /** Records a row this replica wrote or verified, so an older one is never believed again. */
  observe(row: ClusterSealRow): void {
    this.highestSeen = Math.max(this.highestSeen, row.epoch);
  }

  /** Judges the stored row with the keys held (a sealed replica holds none: "unverified"). */
  judge(row: ClusterSealRow | undefined): ClusterSealVerdict {
    // Older than a row seen (or gone): the database was rolled back; told without keys.
    if (this.isStale(row)) return "stale";
    if (row === undefined) return "open";
    if (this.keys.sealed) return "unverified";
    const verifies = keyedMacMatches((id) => this.keys.integrityKeyById(id), LABEL, [row.epoch, row.sealed, row.changedBy], row.mac);
    if (!verifies) return "unverified";
    if (row.epoch < this.highestSeen) return "stale";
    this.observe(row);
    return row.sealed ? "sealed" : "open";
  }
}
