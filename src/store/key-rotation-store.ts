// SQL for key rotation (key_rotations, and the keyring and secrets rows a
// rotation changes). A rotation starts in one transaction under an advisory
// lock (new keyring keys, the re-MAC participants' rows, the rotation row, its
// audit event); the re-wrap then runs one transaction per batch, in secrets.id
// order, and records where it got to in the same transaction, so a replica
// killed mid-batch loses nothing and the next one resumes there. Ciphertext
// only: wrapping happens above, in keys/.

import type { AuditRow } from "../audit/audit-event.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Queryable, type Sql } from "./database.js";
import type { KeyringKeyRow } from "./root-key-store.js";

export type RotationPhaseName = "creating_keys" | "rewrapping" | "remacing" | "retiring" | "done";

export interface RotationRow {
  readonly id: number;
  readonly phase: RotationPhaseName;
  readonly reencrypt: boolean;
  readonly oldWrappingKeyId: number;
  readonly newWrappingKeyId: number;
  readonly newIntegrityKeyId: number;
  readonly done: number;
  readonly total: number;
  readonly resumeAfter: string | null;
  readonly startedAt: Date;
  readonly startedBy: string;
}

/** A data key as a re-wrap batch reads it. */
export interface WrappedDataKeyRow {
  readonly secretId: string;
  readonly path: string;
  readonly dataKeyId: number;
  readonly keyringKeyId: number;
  readonly wrappedDataKey: Buffer;
}

/** What the start transaction asks of the layers above, with the highest keyring id and the active wrapping key id as stored. */
export interface RotationStart {
  /** The new keyring rows (wrapping, integrity), built for the ids after `maxKeyId`. */
  keys(maxKeyId: number): { readonly rows: readonly KeyringKeyRow[]; readonly wrappingKeyId: number; readonly integrityKeyId: number };
  /** Re-MACs what the integrity key protects, in the same transaction. */
  remac(tx: Queryable): Promise<void>;
  readonly startedBy: string;
  readonly reencrypt: boolean;
  readonly audit: AuditRow;
}

const LOCK = "nexus/key-rotation";
const COLUMNS = "id, phase, reencrypt, old_wrapping_key_id, new_wrapping_key_id, new_integrity_key_id, done, total, resume_after, started_at, started_by";

export class KeyRotationStore {
  constructor(private readonly sql: Sql) {}

  /** The rotation not yet done, if any. */
  async running(): Promise<RotationRow | undefined> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT ${this.sql.unsafe(COLUMNS)} FROM key_rotations WHERE phase <> 'done'`;
      return row ? toRotation(row) : undefined;
    });
  }

  async byId(id: number): Promise<RotationRow | undefined> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT ${this.sql.unsafe(COLUMNS)} FROM key_rotations WHERE id = ${id}`;
      return row ? toRotation(row) : undefined;
    });
  }

  /**
   * Starts a rotation, or returns the one running (attach: `started` false).
   * One at a time across replicas: the transaction holds an advisory lock, and
   * a unique index allows one unfinished row.
   */
  async start(s: RotationStart): Promise<{ rotation: RotationRow; started: boolean }> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(hashtext(${LOCK}))`;
        const [running] = await tx`SELECT ${tx.unsafe(COLUMNS)} FROM key_rotations WHERE phase <> 'done'`;
        if (running) return { rotation: toRotation(running), started: false };
        const [ids] = await tx`
          SELECT max(id) AS max_id, max(id) FILTER (WHERE purpose = 'wrapping') AS wrapping_id FROM keyring_keys`;
        const made = s.keys(Number(ids.max_id));
        // The flag is for people reading the table; replicas go by the highest id.
        await tx`UPDATE keyring_keys SET active = false WHERE active`;
        for (const k of made.rows) {
          await tx`
            INSERT INTO keyring_keys (id, purpose, root_key_id, wrapped_key, active)
            VALUES (${k.id}, ${k.purpose}, ${k.rootKeyId}, ${k.wrappedKey}, true)`;
        }
        await s.remac(tx);
        const [count] = await tx`SELECT count(*)::bigint AS n FROM secrets WHERE keyring_key_id <> ${made.wrappingKeyId}`;
        const [row] = await tx`
          INSERT INTO key_rotations (phase, reencrypt, old_wrapping_key_id, new_wrapping_key_id, new_integrity_key_id, total, started_by)
          VALUES ('rewrapping', ${s.reencrypt}, ${Number(ids.wrapping_id)}, ${made.wrappingKeyId}, ${made.integrityKeyId}, ${Number(count.n)}, ${s.startedBy})
          RETURNING ${tx.unsafe(COLUMNS)}`;
        await insertAuditRow(tx, s.audit);
        return { rotation: toRotation(row), started: true };
      }),
    );
  }

  /**
   * Claims the right to drive rotation `id` for `leaseMs` (renewed by each
   * batch): false while another live replica holds it.
   */
  async claim(id: number, worker: string, leaseMs: number): Promise<boolean> {
    return guarded(async () => {
      const rows = await this.sql`
        UPDATE key_rotations SET worker = ${worker}, lease_until = now() + ${leaseMs} * interval '1 millisecond'
        WHERE id = ${id} AND phase <> 'done' AND (worker IS NULL OR worker = ${worker} OR lease_until < now())
        RETURNING id`;
      return rows.length === 1;
    });
  }

  /**
   * One re-wrap batch in one transaction: locks up to `limit` data keys after
   * the rotation's cursor that the new wrapping key does not wrap yet, lets
   * `rewrap` wrap them again, writes them, and moves the cursor. Returns how
   * many it did (0: the pass reached the end).
   */
  async rewrapBatch(
    rotation: { id: number; newWrappingKeyId: number; worker: string; leaseMs: number },
    limit: number,
    rewrap: (rows: WrappedDataKeyRow[]) => Array<{ keyringKeyId: number; wrappedDataKey: Buffer }>,
  ): Promise<number> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const [r] = await tx`
          SELECT resume_after FROM key_rotations WHERE id = ${rotation.id} AND worker = ${rotation.worker} AND phase = 'rewrapping' FOR UPDATE`;
        if (!r) return 0;
        const rows = await tx`
          SELECT id, path, data_key_id, keyring_key_id, wrapped_data_key FROM secrets
          WHERE keyring_key_id <> ${rotation.newWrappingKeyId} AND id > ${r.resume_after ?? "00000000-0000-0000-0000-000000000000"}
          ORDER BY id LIMIT ${limit} FOR UPDATE`;
        if (rows.length === 0) return 0;
        const refs = rows.map((x) => ({ secretId: x.id as string, path: x.path as string, dataKeyId: x.data_key_id as number, keyringKeyId: x.keyring_key_id as number, wrappedDataKey: x.wrapped_data_key as Buffer }));
        const wrapped = rewrap(refs);
        const json = JSON.stringify(refs.map((ref, i) => ({ id: ref.secretId, k: wrapped[i].keyringKeyId, w: wrapped[i].wrappedDataKey.toString("hex") })));
        await tx`
          UPDATE secrets s SET keyring_key_id = t.k, wrapped_data_key = decode(t.w, 'hex')
          FROM json_to_recordset(${json}::text::json) AS t(id uuid, k int, w text) WHERE s.id = t.id`;
        await tx`
          UPDATE key_rotations SET done = done + ${rows.length}, resume_after = ${refs[refs.length - 1].secretId},
                 lease_until = now() + ${rotation.leaseMs} * interval '1 millisecond'
          WHERE id = ${rotation.id}`;
        return rows.length;
      }),
    );
  }

  /** Data keys not yet under the new wrapping key (written by a replica that had not taken it up yet). */
  async remaining(newWrappingKeyId: number): Promise<number> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT count(*)::bigint AS n FROM secrets WHERE keyring_key_id <> ${newWrappingKeyId}`;
      return Number(row.n);
    });
  }

  /** Starts another pass from the beginning (for stragglers). */
  async restartPass(id: number, extra: number): Promise<void> {
    await guarded(() => this.sql`UPDATE key_rotations SET resume_after = NULL, total = total + ${extra} WHERE id = ${id}`);
  }

  async setPhase(id: number, phase: RotationPhaseName): Promise<void> {
    await guarded(() => this.sql`
      UPDATE key_rotations SET phase = ${phase}, finished_at = CASE WHEN ${phase} = 'done' THEN now() ELSE NULL END WHERE id = ${id}`);
  }

  /** Deletes wrapping keys older than `newWrappingKeyId` that no data key references; returns their ids. */
  async retireWrappingKeys(newWrappingKeyId: number): Promise<number[]> {
    return guarded(async () => {
      const rows = await this.sql`
        DELETE FROM keyring_keys k WHERE purpose = 'wrapping' AND id < ${newWrappingKeyId}
          AND NOT EXISTS (SELECT 1 FROM secrets s WHERE s.keyring_key_id = k.id)
        RETURNING id`;
      return rows.map((r) => r.id as number);
    });
  }

  /** Data keys per wrapping key, for GetStatus. */
  async dataKeysPerWrappingKey(): Promise<Map<number, number>> {
    return guarded(async () => {
      const rows = await this.sql`SELECT keyring_key_id AS id, count(*)::bigint AS n FROM secrets GROUP BY keyring_key_id`;
      return new Map(rows.map((r) => [r.id as number, Number(r.n)]));
    });
  }
}

function toRotation(row: Record<string, unknown>): RotationRow {
  return {
    id: Number(row.id),
    phase: row.phase as RotationPhaseName,
    reencrypt: row.reencrypt as boolean,
    oldWrappingKeyId: row.old_wrapping_key_id as number,
    newWrappingKeyId: row.new_wrapping_key_id as number,
    newIntegrityKeyId: row.new_integrity_key_id as number,
    done: Number(row.done),
    total: Number(row.total),
    resumeAfter: (row.resume_after as string | null) ?? null,
    startedAt: row.started_at as Date,
    startedBy: row.started_by as string,
  };
}
