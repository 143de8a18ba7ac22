// SQL for peer unseal (ADR 0012): the replica adverts (where each replica's
// gRPC listener is reachable, with a heartbeat) and the one cluster-seal row.
// Rows only: what a cluster-seal MAC means is decided in keys/cluster-seal.ts.

import { guarded, type Sql } from "./database.js";

export interface ReplicaAdvert {
  readonly instanceId: string;
  readonly address: string;
}

export interface ClusterSealRow {
  readonly epoch: number;
  readonly sealed: boolean;
  readonly changedBy: string;
  readonly mac: Buffer;
}

const CHANNEL = "nexus_cluster_seal";

export class PeerUnsealStore {
  constructor(private readonly sql: Sql) {}

  /** Records (or refreshes) this replica's advert. */
  async heartbeat(instanceId: string, address: string): Promise<void> {
    await guarded(
      () => this.sql`
        INSERT INTO replica_adverts (instance_id, address, heartbeat_at) VALUES (${instanceId}, ${address}, now())
        ON CONFLICT (instance_id) DO UPDATE SET address = EXCLUDED.address, heartbeat_at = now()`,
    );
  }

  /** Adverts other than `self` whose heartbeat is younger than `freshMs`; also drops adverts dead for an hour. */
  async liveAdverts(self: string, freshMs: number): Promise<ReplicaAdvert[]> {
    return guarded(async () => {
      await this.sql`DELETE FROM replica_adverts WHERE heartbeat_at < now() - interval '1 hour'`;
      const rows = await this.sql`
        SELECT instance_id, address FROM replica_adverts
        WHERE instance_id <> ${self} AND heartbeat_at > now() - make_interval(secs => ${freshMs / 1000})
        ORDER BY heartbeat_at DESC`;
      return rows.map((r) => ({ instanceId: r.instance_id as string, address: r.address as string }));
    });
  }

  async withdraw(instanceId: string): Promise<void> {
    await guarded(() => this.sql`DELETE FROM replica_adverts WHERE instance_id = ${instanceId}`);
  }

  /** The cluster-seal row; undefined if no cluster seal was ever recorded. */
  async clusterSeal(): Promise<ClusterSealRow | undefined> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT epoch, sealed, changed_by, mac FROM cluster_seal WHERE id = 1`;
      return row === undefined ? undefined : { epoch: Number(row.epoch), sealed: row.sealed as boolean, changedBy: row.changed_by as string, mac: row.mac as Buffer };
    });
  }

  /**
   * Writes `row` if the stored epoch is still `previousEpoch` (0: no row yet),
   * and tells every replica (NOTIFY) in the same transaction. False: changed meanwhile.
   */
  async writeClusterSeal(previousEpoch: number, row: ClusterSealRow): Promise<boolean> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const written = await tx`
          INSERT INTO cluster_seal (id, epoch, sealed, changed_at, changed_by, mac)
          VALUES (1, ${row.epoch}, ${row.sealed}, now(), ${row.changedBy}, ${row.mac})
          ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, sealed = EXCLUDED.sealed, changed_at = now(),
            changed_by = EXCLUDED.changed_by, mac = EXCLUDED.mac
          WHERE cluster_seal.epoch = ${previousEpoch}
          RETURNING epoch`;
        if (written.length === 0) return false;
        await tx`SELECT pg_notify(${CHANNEL}, ${String(row.epoch)})`;
        return true;
      }),
    );
  }

  /** Calls `onChange` when the cluster seal changes, and after a reconnect (a notification may have been missed). */
  async listen(onChange: () => void): Promise<{ unlisten(): Promise<void> }> {
    const meta = await this.sql.listen(CHANNEL, () => onChange(), () => onChange());
    return { unlisten: () => meta.unlisten() };
  }
}
