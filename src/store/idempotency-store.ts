// SQL for idempotency records (issue 17 §5, migration 010). A record is
// written by the statement or transaction of the change it belongs to (the
// fragments below, used by the secret and policy stores); this module reads
// records back for a retry and deletes the expired ones. It never sees a key:
// the MACs are computed and checked by services/idempotency.ts.

import type { IdempotencyRecordRow } from "./audit-row.js";
import { guarded, type Queryable, type Sql } from "./database.js";

export interface StoredIdempotencyRecord extends IdempotencyRecordRow {
  readonly createdAt: Date;
  readonly expired: boolean;
}

/** Names the expiry job's lock: one replica deletes at a time, the others skip. */
const EXPIRY_LOCK = "nexus/idempotency-expiry";

/** Inserts the record inside a change's transaction (does nothing for undefined). */
export async function insertIdempotencyRow(q: Queryable, r: IdempotencyRecordRow | undefined): Promise<void> {
  if (r === undefined) return;
  await q`
    INSERT INTO idempotency_keys (caller, key, rpc, request_mac, response, response_mac, created_at)
    VALUES (${r.caller}, ${r.key}, ${r.rpc}, ${r.requestMac}, ${r.response}, ${r.responseMac}, ${r.createdAt})`;
}

/**
 * A data-modifying CTE (with its leading comma) that writes the record once
 * per row of `from` — the CTE that says the change happened — or an empty
 * fragment when there is no record.
 */
export function idempotencyCte(sql: Queryable, r: IdempotencyRecordRow | undefined, from: string) {
  if (r === undefined) return sql``;
  return sql`, idem AS (
          INSERT INTO idempotency_keys (caller, key, rpc, request_mac, response, response_mac, created_at)
          SELECT ${r.caller}, ${r.key}, ${r.rpc}, ${r.requestMac}::bytea, ${r.response}::bytea, ${r.responseMac}::bytea, ${r.createdAt}::timestamptz
          FROM ${sql.unsafe(from)}
        )`;
}

/**
 * The created_at of a version written by a change that carries a record: the
 * record's (MAC'd) time, so PutSecret's created_at on a replay is the
 * version's; now() without one.
 */
export function versionTime(r: IdempotencyRecordRow | undefined): Date | null {
  return r?.createdAt ?? null;
}

/** The record as JSON fields for a json_to_recordset batch (see SecretStore.appendMany). */
export function idempotencyJson(r: IdempotencyRecordRow | undefined) {
  if (r === undefined) return {};
  return {
    idem_caller: r.caller,
    idem_key: r.key,
    idem_rpc: r.rpc,
    idem_request_mac_hex: r.requestMac.toString("hex"),
    idem_response_hex: r.response.toString("hex"),
    idem_response_mac_hex: r.responseMac.toString("hex"),
    idem_created_at: r.createdAt.toISOString(),
  };
}

export class IdempotencyStore {
  constructor(private readonly sql: Sql) {}

  /**
   * The caller's record for `key`, if any; `expired` when its time (which the
   * service checks under the response MAC) is older than `maxAgeMs`, by this
   * replica's clock, the one that chose it: to be ignored and replaced.
   */
  async find(caller: string, key: string, maxAgeMs: number): Promise<StoredIdempotencyRecord | undefined> {
    return guarded(async () => {
      const [r] = await this.sql`
        SELECT caller, key, rpc, request_mac, response, response_mac, created_at
        FROM idempotency_keys WHERE caller = ${caller} AND key = ${key}`;
      if (!r) return undefined;
      return {
        caller: r.caller as string,
        key: r.key as string,
        rpc: r.rpc as string,
        requestMac: r.request_mac as Buffer,
        response: r.response as Buffer,
        responseMac: r.response_mac as Buffer,
        createdAt: r.created_at as Date,
        expired: Date.now() - (r.created_at as Date).getTime() >= maxAgeMs,
      };
    });
  }

  /**
   * Deletes the expired record `seen` (as find() returned it: its time to the
   * millisecond), so the key can be used again before the expiry job runs.
   */
  async deleteExpiredRecord(seen: StoredIdempotencyRecord): Promise<void> {
    await guarded(() => this.sql`DELETE FROM idempotency_keys WHERE caller = ${seen.caller} AND key = ${seen.key}
      AND created_at >= ${seen.createdAt} AND created_at < ${seen.createdAt}::timestamptz + interval '1 millisecond'`);
  }

  /**
   * Deletes records older than `maxAgeMs`; -1 if another replica holds the
   * job's lock (it is deleting them). A transaction-scoped advisory lock, so a
   * replica that dies mid-run releases it with its connection.
   */
  async deleteExpired(maxAgeMs: number): Promise<number> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const [lock] = await tx`SELECT pg_try_advisory_xact_lock(hashtext(${EXPIRY_LOCK})) AS locked`;
        if (!lock.locked) return -1;
        const rows = await tx`DELETE FROM idempotency_keys WHERE created_at <= now() - ${maxAgeMs} * interval '1 millisecond' RETURNING 1`;
        return rows.length;
      }),
    );
  }
}
