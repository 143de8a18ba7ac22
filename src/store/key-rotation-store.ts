// SQL for key rotation (key_rotations, and the keyring and secrets rows a
// rotation changes). A rotation starts in one transaction under an advisory
// lock (new keyring keys, the re-MAC participants' rows, the rotation row, its
// audit event); the re-wrap then runs one transaction per batch, in secrets.id
// order, and records where it got to in the same transaction, so a replica
// killed mid-batch loses nothing and the next one resumes there. Ciphertext
// only: wrapping happens above, in keys/.

import type { AuditRow } from "./audit-row.js";
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

/** A data key as a re-wrap batch reads it (with its live versions when the rotation re-encrypts). */
export interface WrappedDataKeyRow {
  readonly secretId: string;
  readonly path: string;
  readonly dataKeyId: number;
  readonly keyringKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly versions?: ReadonlyArray<{ readonly version: number; readonly ciphertext: Buffer }>;
}

/** What a batch writes back: the data key wrapped anew, or (re-encrypting) a fresh data key and its versions. */
export interface RewrappedDataKey {
  readonly keyringKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly dataKeyId?: number;
  readonly versions?: ReadonlyArray<{ readonly version: number; readonly ciphertext: Buffer }>;
}

/** A secret's integrity-protected columns, as a re-MAC batch reads them. */
export interface SecretMacRow {
  readonly id: string;
  readonly path: string;
  readonly labels: {
    readonly current: number | null;
    readonly pending: number | null;
    readonly previous: number | null;
    readonly epoch: number;
    readonly latestVersion: number;
    readonly mac: Buffer | null;
  };
  readonly rotation: Record<string, unknown> | null;
  readonly rotationMac: Buffer | null;
}

/** What a re-MAC batch writes back per row: a new MAC, or undefined to leave it. */
export interface SecretMacUpdate {
  readonly labelsMac: Buffer | undefined;
  readonly rotationMac: Buffer | undefined;
}

/** What the start transaction asks of the layers above, with the highest keyring id and the active wrapping key id as stored. */
export interface RotationStart {
  /** The new keyring rows (wrapping, integrity), built for the ids after `maxKeyId`. */
  keys(maxKeyId: number): { readonly rows: readonly KeyringKeyRow[]; readonly wrappingKeyId: number; readonly integrityKeyId: number };
  /** Re-MACs what the integrity key protects, in the same transaction. */
  remac(tx: Queryable): Promise<void>;
  /** The re-MAC window's MAC (under the new integrity key) for rows still under `oldIntegrityKeyId`. */
  windowMac(oldIntegrityKeyId: number): Buffer;
  readonly startedBy: string;
  readonly reencrypt: boolean;
  /** The start's audit event, asked for only once the rotation will start. */
  audit(): AuditRow;
  /** A scheduled start: only if a rotation is due (checked under the lock, so one replica starts it). */
  readonly schedule?: { readonly intervalMs: number; readonly maxEncryptions: number };
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
  async start(s: RotationStart): Promise<{ rotation: RotationRow; started: boolean } | undefined> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(hashtext(${LOCK}))`;
        const [running] = await tx`SELECT ${tx.unsafe(COLUMNS)} FROM key_rotations WHERE phase <> 'done'`;
        if (running) return s.schedule ? undefined : { rotation: toRotation(running), started: false };
        if (s.schedule && !(await rotationDue(tx, s.schedule))) return undefined;
        const [ids] = await tx`
          SELECT max(id) AS max_id, max(id) FILTER (WHERE purpose = 'wrapping') AS wrapping_id,
                 max(id) FILTER (WHERE purpose = 'integrity') AS integrity_id FROM keyring_keys`;
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
          INSERT INTO key_rotations (phase, reencrypt, old_wrapping_key_id, new_wrapping_key_id, new_integrity_key_id, total, started_by,
                                     old_integrity_key_id, integrity_window_mac)
          VALUES ('rewrapping', ${s.reencrypt}, ${Number(ids.wrapping_id)}, ${made.wrappingKeyId}, ${made.integrityKeyId}, ${Number(count.n)}, ${s.startedBy},
                  ${Number(ids.integrity_id)}, ${s.windowMac(Number(ids.integrity_id))})
          RETURNING ${tx.unsafe(COLUMNS)}`;
        await insertAuditRow(tx, s.audit());
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
    rotation: { id: number; newWrappingKeyId: number; reencrypt: boolean; worker: string; leaseMs: number },
    limit: number,
    rewrap: (rows: WrappedDataKeyRow[]) => RewrappedDataKey[],
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
        const versions = new Map<string, Array<{ version: number; ciphertext: Buffer }>>();
        if (rotation.reencrypt) {
          // Rows locked above: no version of these secrets changes under us.
          const ids = rows.map((x) => x.id as string);
          for (const v of await tx`SELECT secret_id, version, ciphertext FROM secret_versions WHERE secret_id = ANY(${ids}::uuid[]) AND ciphertext IS NOT NULL ORDER BY secret_id, version`) {
            const list = versions.get(v.secret_id as string) ?? [];
            list.push({ version: v.version as number, ciphertext: v.ciphertext as Buffer });
            versions.set(v.secret_id as string, list);
          }
        }
        const refs = rows.map((x) => ({
          secretId: x.id as string, path: x.path as string, dataKeyId: x.data_key_id as number, keyringKeyId: x.keyring_key_id as number,
          wrappedDataKey: x.wrapped_data_key as Buffer, versions: versions.get(x.id as string),
        }));
        const wrapped = rewrap(refs);
        const json = JSON.stringify(refs.map((ref, i) => ({ id: ref.secretId, k: wrapped[i].keyringKeyId, w: wrapped[i].wrappedDataKey.toString("hex"), d: wrapped[i].dataKeyId ?? ref.dataKeyId })));
        await tx`
          UPDATE secrets s SET keyring_key_id = t.k, wrapped_data_key = decode(t.w, 'hex'), data_key_id = t.d,
                 data_key_origin_key_id = CASE WHEN t.d <> s.data_key_id THEN t.k ELSE s.data_key_origin_key_id END
          FROM json_to_recordset(${json}::text::json) AS t(id uuid, k int, w text, d int) WHERE s.id = t.id`;
        const reencrypted = refs.flatMap((ref, i) => (wrapped[i].versions ?? []).map((v) => ({ id: ref.secretId, v: v.version, c: v.ciphertext.toString("hex") })));
        if (reencrypted.length > 0) {
          await tx`
            UPDATE secret_versions sv SET ciphertext = decode(t.c, 'hex')
            FROM json_to_recordset(${JSON.stringify(reencrypted)}::text::json) AS t(id uuid, v int, c text)
            WHERE sv.secret_id = t.id AND sv.version = t.v AND sv.ciphertext IS NOT NULL`;
        }
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

  /**
   * One re-MAC batch in one transaction: locks up to `limit` secrets after the
   * rotation's cursor whose label state or rotation policy is MAC'd under
   * another integrity key than the new one, lets `remac` MAC them again
   * (undefined: leave that MAC), writes them, and moves the cursor. The label
   * epoch is not raised: the state is the same, only its key changed.
   */
  async remacBatch(
    rotation: { id: number; newIntegrityKeyId: number; worker: string; leaseMs: number },
    limit: number,
    remac: (rows: SecretMacRow[]) => SecretMacUpdate[],
  ): Promise<{ scanned: number; remacd: number }> {
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(rotation.newIntegrityKeyId);
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const [r] = await tx`
          SELECT resume_after FROM key_rotations WHERE id = ${rotation.id} AND worker = ${rotation.worker} AND phase = 'remacing' FOR UPDATE`;
        if (!r) return { scanned: 0, remacd: 0 };
        const rows = await tx`
          SELECT id, path, latest_version, current_version, pending_version, previous_version, label_epoch, labels_mac, rotation, rotation_mac
          FROM secrets
          WHERE id > ${r.resume_after ?? "00000000-0000-0000-0000-000000000000"}
            AND ((labels_mac IS NOT NULL AND (length(labels_mac) <> 36 OR substring(labels_mac from 1 for 4) <> ${prefix}))
              OR (rotation_mac IS NOT NULL AND (length(rotation_mac) <> 36 OR substring(rotation_mac from 1 for 4) <> ${prefix})))
          ORDER BY id LIMIT ${limit} FOR UPDATE`;
        if (rows.length === 0) return { scanned: 0, remacd: 0 };
        const read: SecretMacRow[] = rows.map((x) => ({
          id: x.id as string,
          path: x.path as string,
          labels: {
            current: (x.current_version as number | null) ?? null,
            pending: (x.pending_version as number | null) ?? null,
            previous: (x.previous_version as number | null) ?? null,
            epoch: Number(x.label_epoch),
            latestVersion: x.latest_version as number,
            mac: (x.labels_mac as Buffer | null) ?? null,
          },
          rotation: (x.rotation as Record<string, unknown> | null) ?? null,
          rotationMac: (x.rotation_mac as Buffer | null) ?? null,
        }));
        const updates = remac(read);
        const json = JSON.stringify(
          read.flatMap((row, i) => {
            const u = updates[i];
            if (u.labelsMac === undefined && u.rotationMac === undefined) return [];
            return [{ id: row.id, l: u.labelsMac?.toString("hex") ?? null, r: u.rotationMac?.toString("hex") ?? null }];
          }),
        );
        const remacd = updates.filter((u) => u.labelsMac !== undefined || u.rotationMac !== undefined).length;
        if (remacd > 0) {
          await tx`
            UPDATE secrets s SET labels_mac = coalesce(decode(t.l, 'hex'), s.labels_mac), rotation_mac = coalesce(decode(t.r, 'hex'), s.rotation_mac)
            FROM json_to_recordset(${json}::text::json) AS t(id uuid, l text, r text) WHERE s.id = t.id`;
        }
        await tx`
          UPDATE key_rotations SET resume_after = ${read[read.length - 1].id}, lease_until = now() + ${rotation.leaseMs} * interval '1 millisecond'
          WHERE id = ${rotation.id}`;
        return { scanned: rows.length, remacd };
      }),
    );
  }

  /** Moves from the re-wrap to the re-MAC, whose cursor starts from the beginning. */
  async startRemac(id: number): Promise<void> {
    await guarded(() => this.sql`UPDATE key_rotations SET phase = 'remacing', resume_after = NULL WHERE id = ${id} AND phase = 'rewrapping'`);
  }

  /** Starts another re-MAC pass from the beginning. */
  async restartRemacPass(id: number): Promise<void> {
    await guarded(() => this.sql`UPDATE key_rotations SET resume_after = NULL WHERE id = ${id} AND phase = 'remacing'`);
  }

  /**
   * Ends the re-MAC: the window closes (rows under the retired integrity key
   * are refused from now on) and the rotation moves on to retiring, in one
   * transaction; touching the new key's row NOTIFYs every replica to re-read
   * the window.
   */
  async closeIntegrityWindow(id: number, newIntegrityKeyId: number): Promise<void> {
    await guarded(() =>
      this.sql.begin(async (tx) => {
        await tx`UPDATE key_rotations SET integrity_window_mac = NULL, phase = 'retiring', resume_after = NULL WHERE id = ${id}`;
        await tx`UPDATE keyring_keys SET active = active WHERE id = ${newIntegrityKeyId}`;
      }),
    );
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

/**
 * Whether a scheduled rotation is due: the active wrapping key is older than
 * the interval, or has wrapped `maxEncryptions` data keys (data keys made under
 * it plus those a rotation re-wrapped to it: each is one AES-GCM encryption
 * with a random nonce under that key; deleted secrets are not counted, so the
 * count errs low — keep the limit well below 2^32).
 */
async function rotationDue(tx: Queryable, schedule: { intervalMs: number; maxEncryptions: number }): Promise<boolean> {
  const [row] = await tx`
    WITH active AS (SELECT id, created_at FROM keyring_keys WHERE purpose = 'wrapping' ORDER BY id DESC LIMIT 1)
    SELECT extract(epoch FROM now() - (SELECT created_at FROM active)) * 1000 AS age_ms,
           (SELECT count(*) FROM secrets WHERE data_key_origin_key_id = (SELECT id FROM active))
             + coalesce((SELECT sum(done) FROM key_rotations WHERE new_wrapping_key_id = (SELECT id FROM active)), 0) AS encryptions`;
  if (schedule.intervalMs > 0 && Number(row.age_ms) >= schedule.intervalMs) return true;
  return Number(row.encryptions) >= schedule.maxEncryptions;
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
