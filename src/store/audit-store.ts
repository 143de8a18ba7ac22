// SQL for the audit log: single events inside a change's own transaction or
// statement, batches for group commit, listing, verification reads,
// checkpoints, the signers of sealed-time events, and retention.

import type { AuditOutcome, AuditRow } from "./audit-row.js";
import { insertIdempotencyRow } from "./idempotency-store.js";
import { guarded, type Queryable, type Sql } from "./database.js";
import { lockEpoch, readEpoch, writeEpoch, type EpochRow, type EpochSeal } from "./grant-epoch-store.js";
import { labelRow, type LabelRow } from "./secret-label-row.js";

/** Checks the set of latest checkpoints as it was and seals it as it will be; throws to refuse. */
export type SealCheckpoints = (epoch: EpochRow | undefined, before: Checkpoint[], after: Checkpoint[]) => EpochSeal;

export interface Checkpoint {
  readonly replicaId: string;
  readonly writtenAt: Date;
  readonly firstSequence: number;
  readonly lastSequence: number;
  readonly final: boolean;
  /** Sequence numbers given up, as flat inclusive pairs [first, last, …]. */
  readonly givenUp: readonly number[];
  readonly mac: Buffer;
}

/** A certificate chain that signed sealed-time events, keyed by its leaf's SHA-256. */
export interface AuditSignerRecord {
  readonly certificateSha256: Buffer;
  readonly certificateChainPem: string;
}

export interface AuditFilter {
  readonly from?: Date;
  readonly to?: Date;
  readonly caller?: string;
  readonly pathPrefix?: string;
  readonly rpc?: string;
  readonly outcome?: AuditOutcome;
}

/** A secret version to read in the statement that writes the event (GetSecret); version 0 = the one `label` names (default CURRENT). */
export interface AuditedRead {
  readonly path: string;
  readonly version: number;
  readonly label?: "current" | "pending" | "previous";
}

/**
 * How a group commit commits. durable: the call answers after the WAL holding
 * its event is flushed. relaxed (reads only, NEXUS_AUDIT_READ_DURABILITY):
 * after PostgreSQL has the row, without waiting for the flush
 * (synchronous_commit off for that transaction only).
 */
export type BatchDurability = "durable" | "relaxed";

export interface BatchEvent {
  readonly row: AuditRow;
  readonly read?: AuditedRead;
}

/** A servable secret version, with what it takes to decrypt it. */
export interface ReadableVersion {
  readonly secretId: string;
  readonly path: string;
  readonly dataKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly keyringKeyId: number;
  readonly version: number;
  readonly ciphertext: Buffer;
  readonly createdAt: Date;
  /** The secret's label columns as read in the same statement, for the service to verify. */
  readonly labels: LabelRow;
}

export interface StoredAuditRow extends AuditRow {
  readonly id: number;
}

/** Inserts one event, e.g. inside the transaction of the change it records. */
export async function insertAuditRow(q: Queryable, r: AuditRow): Promise<void> {
  await q`
    INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
    VALUES (${r.replicaId}, ${r.sequence}, ${r.time}, ${r.requestId}, ${r.caller}, ${r.rpc}, ${r.path}, ${r.version},
            ${r.outcome}, ${r.code}, ${q.json(r.detail as never)}, ${r.mac}, ${r.signature}, ${r.signer})`;
  // The change's idempotency record commits (or not) with its event.
  await insertIdempotencyRow(q, r.idempotency);
}

/**
 * A `INSERT … SELECT <values>` fragment for a data-modifying CTE; the caller
 * appends `FROM <cte>` so the event is written only if the change happened.
 */
export function auditInsertFragment(sql: Queryable, r: AuditRow) {
  return sql`
    INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
    SELECT ${r.replicaId}, ${r.sequence}::bigint, ${r.time}::timestamptz, ${r.requestId}, ${r.caller}, ${r.rpc}, ${r.path}::text,
           ${r.version}::int, ${r.outcome}, ${r.code}, ${sql.json(r.detail as never)}::jsonb, ${r.mac}::bytea, ${r.signature}::bytea, ${r.signer}::bytea`;
}

/** An event as a JSON object for json_to_recordset (column names as in audit_events; the MAC in hex). */
export function auditJson(r: AuditRow) {
  return {
    replica_id: r.replicaId,
    sequence: r.sequence,
    time: r.time.toISOString(),
    request_id: r.requestId,
    caller: r.caller,
    rpc: r.rpc,
    path: r.path,
    version: r.version,
    outcome: r.outcome,
    code: r.code,
    detail: r.detail,
    mac_hex: r.mac === null ? null : r.mac.toString("hex"),
    // Only sealed-time events are signed: absent keys read as NULL and keep the batch small.
    ...(r.signature === null ? {} : { signature_hex: r.signature.toString("hex"), signer_hex: r.signer?.toString("hex") }),
  };
}

export class AuditStore {
  constructor(private readonly sql: Sql) {}

  /**
   * Writes a batch in one statement (group commit); one prepared statement for
   * any batch size. An event with a read is written only if that read finds a
   * servable version — a live secret, the version neither deleted nor
   * destroyed — so the read and its "ok" event commit together or not at all.
   * Returns the rows found, by the event's index in `events`.
   */
  async insertBatch(events: readonly BatchEvent[], durability: BatchDurability = "durable"): Promise<Map<number, ReadableVersion>> {
    // One JSON parameter for the whole batch: the driver sends it as it is,
    // where a column per field would be escaped element by element.
    const batch = JSON.stringify(events.map((e, i) => ({ ...auditJson(e.row), i, read_path: e.read?.path, read_version: e.read?.version, read_label: e.read?.label })));
    // SET LOCAL inside the statement's own transaction: evaluated for every row
    // of t, which the INSERT always reads in full, and in effect at its commit.
    // Still one round trip; the durable statement is the one it always was.
    const relaxed = durability === "relaxed" ? this.sql`WHERE set_config('synchronous_commit', 'off', true) = 'off'` : this.sql``;
    const rows = await this.run(
      () => this.sql`
        WITH t AS MATERIALIZED (
          SELECT * FROM json_to_recordset(${batch}::text::json) AS t(
            replica_id text, sequence bigint, time timestamptz, request_id text, caller text, rpc text, path text, version int,
            outcome text, code text, detail jsonb, mac_hex text, signature_hex text, signer_hex text, i int, read_path text, read_version int, read_label text)
          ${relaxed}
        ), r AS MATERIALIZED (
          SELECT t.i, s.id, s.path, s.data_key_id, s.wrapped_data_key, s.keyring_key_id, v.version, v.ciphertext, v.created_at,
                 s.latest_version, s.current_version, s.pending_version, s.previous_version, s.label_epoch, s.labels_mac
          FROM t
          JOIN secrets s ON s.path = t.read_path AND (s.expires_at IS NULL OR s.expires_at > now())
          -- version 0: the version the label names (CURRENT by default), as readVersion; servable only if live.
          -- The labels come back with it, read in this snapshot, for the service to verify.
          JOIN secret_versions v ON v.secret_id = s.id
            AND v.version = CASE WHEN t.read_version <> 0 THEN t.read_version
                                 WHEN t.read_label = 'pending' THEN s.pending_version
                                 WHEN t.read_label = 'previous' THEN s.previous_version
                                 ELSE s.current_version END
            AND v.deleted_at IS NULL AND v.ciphertext IS NOT NULL
        ), ins AS (
          INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
          SELECT replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, decode(mac_hex, 'hex'),
                 decode(signature_hex, 'hex'), decode(signer_hex, 'hex')
          FROM t WHERE t.read_path IS NULL OR t.i IN (SELECT i FROM r)
        )
        SELECT * FROM r`,
    );
    const found = new Map<number, ReadableVersion>();
    for (const row of rows) {
      found.set(row.i, {
        secretId: row.id,
        path: row.path,
        dataKeyId: row.data_key_id,
        wrappedDataKey: row.wrapped_data_key,
        keyringKeyId: row.keyring_key_id,
        version: row.version,
        ciphertext: row.ciphertext,
        createdAt: row.created_at,
        labels: labelRow(row),
      });
    }
    return found;
  }

  async list(filter: AuditFilter, after: { time: Date; id: number } | undefined, limit: number): Promise<StoredAuditRow[]> {
    const sql = this.sql;
    const conditions = [
      filter.from ? sql`time >= ${filter.from}` : sql`true`,
      filter.to ? sql`time < ${filter.to}` : sql`true`,
      filter.caller ? sql`caller = ${filter.caller}` : sql`true`,
      filter.pathPrefix ? sql`starts_with(path, ${filter.pathPrefix})` : sql`true`,
      filter.rpc ? sql`(rpc = ${filter.rpc} OR rpc LIKE ${"%/" + filter.rpc.replace(/[\\%_]/g, "\\$&")})` : sql`true`,
      filter.outcome ? sql`outcome = ${filter.outcome}` : sql`true`,
      after ? sql`(time, id) < (${after.time}, ${after.id})` : sql`true`,
    ];
    return this.run(async () => {
      const rows = await sql`
        SELECT * FROM audit_events
        WHERE ${conditions[0]} AND ${conditions[1]} AND ${conditions[2]} AND ${conditions[3]} AND ${conditions[4]} AND ${conditions[5]} AND ${conditions[6]}
        ORDER BY time DESC, id DESC LIMIT ${limit}`;
      return rows.map(toRow);
    });
  }

  /** Every event, by replica and sequence (verification reads the whole retained log). */
  async allForVerification(): Promise<StoredAuditRow[]> {
    return this.run(async () => (await this.sql`SELECT * FROM audit_events ORDER BY replica_id, sequence, id`).map(toRow));
  }


  /**
   * Every checkpoint that moved a replica's floor (first sequence above 1),
   * highest first: retention writes one per run that pruned, so they are few.
   * The caller takes the highest whose MAC verifies; a forged one above it
   * must not hide it.
   */
  async floorCheckpoints(): Promise<Checkpoint[]> {
    return this.run(async () => (await this.sql`
      SELECT * FROM audit_checkpoints WHERE first_sequence > 1 ORDER BY replica_id, first_sequence DESC, written_at DESC`).map(toCheckpoint));
  }



  /** The latest checkpoint of every replica and the set's epoch row, in one snapshot. */
  async checkpointSnapshot(): Promise<{ epoch: EpochRow | undefined; latest: Checkpoint[] }> {
    return this.run(() =>
      this.sql.begin("ISOLATION LEVEL REPEATABLE READ READ ONLY", async (tx) => ({ epoch: await readEpoch(tx, "audit_checkpoints"), latest: await latestCheckpointsOn(tx) })),
    );
  }

  /**
   * Records a checkpoint and seals the set of every replica's latest one at
   * its next epoch, in one transaction holding the epoch row's lock:
   * `sealEpoch` checks the set as it was and seals it as it will be (it
   * throws, and nothing is written, if the stored set was tampered with).
   */
  async insertCheckpoint(c: Checkpoint, sealEpoch: SealCheckpoints): Promise<number | undefined> {
    return this.run(() => this.sql.begin((tx) => this.checkpointOn(tx, c, sealEpoch)));
  }

  /** The operator's acceptance of the stored checkpoints (Unseal with accept_restored_state). */
  async adoptCheckpoints(sealEpoch: (epoch: EpochRow | undefined, latest: Checkpoint[]) => EpochSeal, tx: Queryable): Promise<number> {
    const epoch = await lockEpoch(tx, "audit_checkpoints");
    const seal = sealEpoch(epoch, await latestCheckpointsOn(tx));
    await writeEpoch(tx, "audit_checkpoints", seal);
    return seal.epoch;
  }

  /**
   * Key rotation, in its key transaction: the latest checkpoint of every
   * replica MAC'd again under the new integrity key and the set sealed under
   * it (`reseal` checks the set under the old key first). Older checkpoints
   * keep their MACs; they verify under the key that made them.
   */
  async remacCheckpoints(tx: Queryable, reseal: (epoch: EpochRow | undefined, latest: Checkpoint[]) => { rows: Checkpoint[]; seal: EpochSeal }): Promise<void> {
    const epoch = await lockEpoch(tx, "audit_checkpoints");
    const { rows, seal } = reseal(epoch, await latestCheckpointsOn(tx));
    for (const c of rows) await tx`UPDATE audit_checkpoints SET mac = ${c.mac} WHERE replica_id = ${c.replicaId} AND written_at = ${c.writtenAt}`;
    await writeEpoch(tx, "audit_checkpoints", seal);
  }

  private async checkpointOn(tx: Queryable, c: Checkpoint, sealEpoch: SealCheckpoints): Promise<number | undefined> {
    const epoch = await lockEpoch(tx, "audit_checkpoints");
    const before = await latestCheckpointsOn(tx);
    const after = [...before.filter((b) => b.replicaId !== c.replicaId), c];
    const seal = sealEpoch(epoch, before, after);
    const inserted = await insertCheckpointRow(tx, c);
    if (inserted.length === 0) return undefined; // one already at that instant: the set is as it was
    await writeEpoch(tx, "audit_checkpoints", seal);
    return seal.epoch;
  }

  /** Registers a signer's certificate chain (once; later calls change nothing). */
  async insertSigner(s: AuditSignerRecord): Promise<void> {
    await this.run(
      () => this.sql`
        INSERT INTO audit_signers (certificate_sha256, certificate_chain) VALUES (${s.certificateSha256}, ${s.certificateChainPem})
        ON CONFLICT DO NOTHING`,
    );
  }

  /** Every registered signer (one per SVID the replicas signed with while sealed). */
  async signers(): Promise<AuditSignerRecord[]> {
    return this.run(async () =>
      (await this.sql`SELECT certificate_sha256, certificate_chain FROM audit_signers`).map((r) => ({
        certificateSha256: r.certificate_sha256 as Buffer,
        certificateChainPem: r.certificate_chain as string,
      })),
    );
  }

  /** Replicas that have events: one index probe per replica (a loose index scan), not a pass over every event. */
  async replicaIds(): Promise<string[]> {
    return this.run(async () =>
      (await this.sql`
        WITH RECURSIVE r AS (
          (SELECT replica_id FROM audit_events ORDER BY replica_id LIMIT 1)
          UNION ALL
          SELECT (SELECT e.replica_id FROM audit_events e WHERE e.replica_id > r.replica_id ORDER BY e.replica_id LIMIT 1)
          FROM r WHERE r.replica_id IS NOT NULL
        )
        SELECT replica_id FROM r WHERE replica_id IS NOT NULL`).map((r) => r.replica_id as string),
    );
  }

  /** A replica's events from `fromSequence` up, by sequence: retention selects by sequence, never by a row's own time. */
  async eventsFrom(replicaId: string, fromSequence: number, limit: number): Promise<StoredAuditRow[]> {
    return this.run(async () =>
      (await this.sql`
        SELECT * FROM audit_events WHERE replica_id = ${replicaId} AND sequence >= ${fromSequence}
        ORDER BY sequence, id LIMIT ${limit}`).map(toRow),
    );
  }

  /** Events after `afterId`, by id: the audit export follows the table in the order ids were drawn. */
  async eventsAfterId(afterId: number, limit: number): Promise<StoredAuditRow[]> {
    return this.run(async () => (await this.sql`SELECT * FROM audit_events WHERE id > ${afterId} ORDER BY id LIMIT ${limit}`).map(toRow));
  }

  /** The last id drawn for an audit event (committed or not); 0 if none ever was. */
  async lastIdDrawn(): Promise<number> {
    return this.run(async () => {
      const [r] = await this.sql`SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_events', 'id')::regclass)::text AS last`;
      return r.last === null ? 0 : Number(r.last);
    });
  }

  /**
   * The transaction ids of a snapshot taken now: every transaction below
   * `xmin` has ended; every transaction that exists now is below `xmax`.
   */
  async transactionHorizon(): Promise<{ xmin: bigint; xmax: bigint }> {
    return this.run(async () => {
      const [r] = await this.sql`
        SELECT pg_snapshot_xmin(s)::text AS xmin, pg_snapshot_xmax(s)::text AS xmax FROM pg_current_snapshot() AS s`;
      return { xmin: BigInt(r.xmin as string), xmax: BigInt(r.xmax as string) };
    });
  }

  /**
   * Deletes the given events and records the replica's new floor in one
   * transaction, so pruned events are never missing without the checkpoint
   * that explains them.
   */
  async prune(ids: readonly number[], floor: Checkpoint, sealEpoch: SealCheckpoints): Promise<number | undefined> {
    // Every replica runs retention over every replica's events. When two
    // passes overlap, the one that commits second finds some of its events
    // gone: it rolls back rather than write a second, competing floor, and
    // says so (undefined); the next pass starts from the new floor.
    const overlapped = new Error("another retention pass pruned these events first");
    return this.run(async () => {
      try {
        return await this.sql.begin(async (tx) => {
          let deleted = 0;
          for (let i = 0; i < ids.length; i += 10_000) deleted += (await tx`DELETE FROM audit_events WHERE id = ANY(${ids.slice(i, i + 10_000) as never}::bigint[])`).count;
          if (deleted !== ids.length) throw overlapped;
          const epoch = await this.checkpointOn(tx, floor, sealEpoch);
          if (epoch === undefined) throw overlapped;
          return epoch;
        });
      } catch (err) {
        if (err === overlapped) return undefined;
        throw err;
      }
    });
  }

  private readonly run = guarded;
}

function insertCheckpointRow(q: Queryable, c: Checkpoint) {
  return q`
    INSERT INTO audit_checkpoints (replica_id, written_at, first_sequence, last_sequence, final, given_up, mac)
    VALUES (${c.replicaId}, ${c.writtenAt}, ${c.firstSequence}, ${c.lastSequence}, ${c.final}, ${c.givenUp as never}::bigint[], ${c.mac})
    ON CONFLICT DO NOTHING
    RETURNING 1`;
}

/** Each replica's latest checkpoint (by time written). */
async function latestCheckpointsOn(q: Queryable): Promise<Checkpoint[]> {
  return (await q`SELECT DISTINCT ON (replica_id) * FROM audit_checkpoints ORDER BY replica_id, written_at DESC`).map(toCheckpoint);
}

function toCheckpoint(r: Record<string, unknown>): Checkpoint {
  return {
    replicaId: r.replica_id as string,
    writtenAt: r.written_at as Date,
    firstSequence: Number(r.first_sequence),
    lastSequence: Number(r.last_sequence),
    final: r.final as boolean,
    givenUp: ((r.given_up as Array<string | number> | null) ?? []).map(Number),
    mac: r.mac as Buffer,
  };
}

function toRow(r: Record<string, unknown>): StoredAuditRow {
  return {
    id: Number(r.id),
    replicaId: r.replica_id as string,
    sequence: Number(r.sequence),
    time: r.time as Date,
    requestId: r.request_id as string,
    caller: r.caller as string,
    rpc: r.rpc as string,
    path: (r.path as string | null) ?? null,
    version: (r.version as number | null) ?? null,
    outcome: r.outcome as AuditOutcome,
    code: r.code as string,
    detail: r.detail as Record<string, unknown>,
    mac: (r.mac as Buffer | null) ?? null,
    signature: (r.signature as Buffer | null) ?? null,
    signer: (r.signer as Buffer | null) ?? null,
  };
}
