// What this replica's connections are doing, as PostgreSQL sees them: the
// `postgres` driver keeps its pool's queues private, so the pool's occupancy is
// read from pg_stat_activity instead, by the application_name each replica
// connects with. Sampled when metrics are scraped. The one figure PostgreSQL
// cannot see, the queries waiting for a connection, comes from the driver
// (our patch exposes its queue length: patches/README.md).

import { hostname } from "node:os";
import { guarded, type Sql } from "./database.js";

export interface PoolActivity {
  /** Connections running a statement or inside a transaction. */
  readonly inUse: number;
  /** Connections open, busy or idle. */
  readonly open: number;
}

/** A name unique to this process among a cluster's replicas (PostgreSQL keeps 63 bytes). */
export function replicaApplicationName(): string {
  return `nexus/${hostname().replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 40)}/${process.pid}`;
}

export function poolActivity(sql: Sql, applicationName: string): Promise<PoolActivity> {
  return guarded(async () => {
    const [r] = await sql`
      SELECT count(*) FILTER (WHERE state <> 'idle' AND pid <> pg_backend_pid())::int AS in_use, count(*)::int AS open
      FROM pg_stat_activity WHERE application_name = ${applicationName}
        -- The driver's LISTEN connection (NOTIFYs of keyring, grant epochs, policies, watch events) is not in the pool.
        AND NOT (state = 'idle' AND query ILIKE 'listen %')`;
    return { inUse: r.in_use as number, open: r.open as number };
  });
}

/** Queries and transactions waiting in the driver for a free connection (0 when the driver lacks the patch). */
export function poolWaiting(sql: Sql): number {
  const waiting = (sql as unknown as { waiting?: () => number }).waiting;
  return typeof waiting === "function" ? waiting() : 0;
}
