// SQL for secrets and their versions. Every write is one statement (one round
// trip) whose conditions make it safe under concurrency without a process lock:
// the database settles races, so replicas can share it. Rows hold ciphertext
// only; this layer never sees a key or a plaintext value.

import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import { auditInsertFragment, auditJson, insertAuditRow } from "./audit-store.js";
import { guarded, type Sql } from "./database.js";
import { concurrencyLimit, GroupCommit } from "./group-commit.js";

export interface SecretKeyRow {
  readonly id: string;
  readonly path: string;
  readonly latestVersion: number;
  readonly dataKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly keyringKeyId: number;
  /** The wrapping key active when the data key was made (a rotation's re-wrap leaves it). */
  readonly dataKeyOriginKeyId: number;
  readonly expired: boolean;
}

export interface NewSecret {
  readonly id: string;
  readonly path: string;
  readonly maxVersions: number;
  readonly dataKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly keyringKeyId: number;
  readonly expiresAt: Date | undefined;
  readonly ciphertext: Buffer;
  readonly createdBy: string;
}

export interface AppendVersion {
  readonly secretId: string;
  /** The data key the ciphertext is under: written only if the secret still has it (a rotation's fresh data key may have replaced it). */
  readonly dataKeyId: number;
  readonly version: number;
  readonly ciphertext: Buffer;
  readonly createdBy: string;
  readonly expiresAt: Date | undefined;
}

/** A secret's replacement data key, and the one it replaces (compare-and-swap). */
export interface NewDataKeyRow {
  readonly previousDataKeyId: number;
  readonly dataKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly keyringKeyId: number;
}

export type AppendResult =
  | { readonly kind: "written"; readonly createdAt: Date }
  | { readonly kind: "conflict"; readonly latestVersion: number; readonly expired: boolean; readonly dataKeyId: number }
  | { readonly kind: "gone" };

export interface VersionRow extends SecretKeyRow {
  readonly version: number | null;
  readonly ciphertext: Buffer | null;
  readonly createdAt: Date | null;
  readonly deletedAt: Date | null;
}

export interface SecretMetadataRow {
  readonly path: string;
  readonly latestVersion: number;
  readonly maxVersions: number;
  readonly customMetadata: Record<string, string>;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly expiresAt: Date | null;
  readonly versions: ReadonlyArray<{
    readonly version: number;
    readonly createdAt: Date;
    readonly deletedAt: Date | null;
    readonly destroyed: boolean;
    readonly createdBy: string;
  }>;
}

export interface MetadataChanges {
  readonly maxVersions?: number;
  readonly customMetadata?: Record<string, string>;
  /** null clears the expiry. */
  readonly expiresAt?: Date | null;
}

export type VersionChange = "delete" | "undelete" | "destroy";

/** Sorts after every character a path may contain ([A-Za-z0-9._/-]). */
const PATH_CEILING = "\u007f";

const LIVE = "(expires_at IS NULL OR expires_at > now())";

/** Puts in one batch statement at most; a batch never holds two puts to one secret. */
const MAX_PUT_BATCH = 128;
/** Puts of a failed batch that go again on their own at the same time. */
const FALLBACK_CONCURRENCY = 4;

export class SecretStore {
  private readonly appends: GroupCommit<{ a: AppendVersion; audit: AuditRow }, AppendResult>;
  private readonly fallbackSlot = concurrencyLimit(FALLBACK_CONCURRENCY);

  constructor(private readonly sql: Sql) {
    this.appends = new GroupCommit((batch) => this.appendBatch(batch), { maxBatch: MAX_PUT_BATCH, key: (p) => p.a.secretId });
  }

  async findByPath(path: string): Promise<SecretKeyRow | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        SELECT id, path, latest_version, data_key_id, wrapped_data_key, keyring_key_id, data_key_origin_key_id,
               (expires_at IS NOT NULL AND expires_at <= now()) AS expired
        FROM secrets WHERE path = ${path}`;
      return row ? keyRow(row) : undefined;
    });
  }

  /** Creates a secret with version 1 and its audit event; undefined if the path already exists. */
  async insertNew(s: NewSecret, audit: AuditRow): Promise<Date | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        WITH s AS (
          INSERT INTO secrets (id, path, latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, data_key_origin_key_id, expires_at)
          VALUES (${s.id}, ${s.path}, 1, ${s.maxVersions}, ${s.dataKeyId}, ${s.wrappedDataKey}, ${s.keyringKeyId}, ${s.keyringKeyId}, ${s.expiresAt ?? null})
          ON CONFLICT (path) DO NOTHING
          RETURNING id
        ), a AS (
          ${auditInsertFragment(this.sql, audit)} FROM s
        )
        INSERT INTO secret_versions (secret_id, version, ciphertext, created_by)
        SELECT id, 1, ${s.ciphertext}, ${s.createdBy} FROM s
        RETURNING created_at`;
      return row?.created_at as Date | undefined;
    });
  }

  /**
   * Writes `version` if the secret's latest version is exactly version - 1 and it
   * has not expired, and prunes versions beyond max_versions. Puts to different
   * secrets that arrive together share one statement and one commit (group
   * commit): each is still all-or-nothing with its own audit event.
   */
  appendVersion(a: AppendVersion, audit: AuditRow): Promise<AppendResult> {
    return this.appends.submit({ a, audit });
  }

  private async appendBatch(batch: ReadonlyArray<{ a: AppendVersion; audit: AuditRow }>): Promise<Array<AppendResult | Promise<AppendResult>>> {
    try {
      return await this.appendMany(batch);
    } catch (err) {
      if (err instanceof NexusError && err.code === "unavailable") throw err;
      // The statement rolled back as a whole: a row locked elsewhere (NOWAIT),
      // a deadlock, or one put the database refused. Each put goes again on its
      // own — waiting for its row if it must, outside the group commit, so the
      // puts after it do not wait too — a few at a time, so the pool keeps
      // connections for the audit log. One put's failure is only its own.
      return batch.map((p) => this.fallbackSlot(() => this.appendOne(p.a, p.audit)));
    }
  }

  private async appendOne(a: AppendVersion, audit: AuditRow): Promise<AppendResult> {
    return this.run(async () => {
      const [row] = await this.sql`
        WITH cur AS (
          -- FOR UPDATE: after waiting for a concurrent writer this sees its
          -- committed latest_version, so a loser retries with a fresh number.
          SELECT latest_version, data_key_id, (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          FROM secrets WHERE id = ${a.secretId} FOR UPDATE
        ), upd AS (
          UPDATE secrets
          SET latest_version = ${a.version}, updated_at = now(), expires_at = coalesce(${a.expiresAt ?? null}::timestamptz, expires_at)
          WHERE id = ${a.secretId} AND latest_version = ${a.version - 1} AND data_key_id = ${a.dataKeyId} AND ${this.sql.unsafe(LIVE)}
          RETURNING id, max_versions
        ), ins AS (
          INSERT INTO secret_versions (secret_id, version, ciphertext, created_by)
          SELECT id, ${a.version}, ${a.ciphertext}, ${a.createdBy} FROM upd
          RETURNING created_at
        ), pruned AS (
          DELETE FROM secret_versions v USING upd
          WHERE v.secret_id = upd.id AND v.version <= ${a.version} - upd.max_versions
        ), aud AS (
          ${auditInsertFragment(this.sql, audit)} FROM upd
        )
        SELECT (SELECT created_at FROM ins) AS created_at, cur.latest_version, cur.expired, cur.data_key_id FROM cur`;
      return appendResult(row);
    });
  }

  /** appendOne for any number of secrets (distinct ids) in one statement; rows lock in id order, without waiting. */
  private async appendMany(batch: ReadonlyArray<{ a: AppendVersion; audit: AuditRow }>): Promise<AppendResult[]> {
    // One JSON parameter for the batch (see AuditStore.insertBatch).
    const json = JSON.stringify(
      batch.map(({ a, audit }, i) => ({
        i,
        secret_id: a.secretId,
        new_version: a.version,
        data_key_id: a.dataKeyId,
        ciphertext_hex: a.ciphertext.toString("hex"),
        created_by: a.createdBy,
        expires_at: a.expiresAt?.toISOString(),
        ...auditJson(audit),
      })),
    );
    const rows = await this.run(
      () => this.sql`
        WITH t AS MATERIALIZED (
          SELECT * FROM json_to_recordset(${json}::text::json) AS t(
            i int, secret_id uuid, new_version int, data_key_id int, ciphertext_hex text, created_by text, expires_at timestamptz,
            replica_id text, sequence bigint, time timestamptz, request_id text, caller text, rpc text, path text, version int,
            outcome text, code text, detail jsonb, mac_hex text, signature_hex text, signer_hex text)
        ), cur AS MATERIALIZED (
          SELECT id, latest_version, data_key_id, (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          -- NOWAIT: a row someone else holds fails the batch at once (each put then
          -- goes alone) instead of stalling every put of this replica behind it.
          FROM secrets WHERE id IN (SELECT secret_id FROM t) ORDER BY id FOR UPDATE NOWAIT
        ), upd AS (
          UPDATE secrets s
          SET latest_version = t.new_version, updated_at = now(), expires_at = coalesce(t.expires_at, s.expires_at)
          FROM t JOIN cur ON cur.id = t.secret_id
          WHERE s.id = t.secret_id AND s.latest_version = t.new_version - 1 AND s.data_key_id = t.data_key_id AND (s.expires_at IS NULL OR s.expires_at > now())
          RETURNING s.id, s.max_versions, t.i
        ), ins AS (
          INSERT INTO secret_versions (secret_id, version, ciphertext, created_by)
          SELECT upd.id, t.new_version, decode(t.ciphertext_hex, 'hex'), t.created_by FROM upd JOIN t ON t.i = upd.i
          RETURNING secret_id, created_at
        ), pruned AS (
          DELETE FROM secret_versions v USING upd JOIN t ON t.i = upd.i
          WHERE v.secret_id = upd.id AND v.version <= t.new_version - upd.max_versions
        ), aud AS (
          INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
          SELECT t.replica_id, t.sequence, t.time, t.request_id, t.caller, t.rpc, t.path, t.version, t.outcome, t.code, t.detail, decode(t.mac_hex, 'hex'),
                 decode(t.signature_hex, 'hex'), decode(t.signer_hex, 'hex')
          FROM t JOIN upd ON upd.i = t.i
        )
        SELECT t.i, ins.created_at, cur.latest_version, cur.expired, cur.data_key_id
        FROM t LEFT JOIN cur ON cur.id = t.secret_id LEFT JOIN ins ON ins.secret_id = t.secret_id`,
    );
    const results = new Array<AppendResult>(batch.length);
    for (const row of rows) results[row.i as number] = appendResult(row.latest_version === null ? undefined : row);
    return results;
  }

  /**
   * A secret's data key and the versions that still hold ciphertext, read in
   * one statement (one snapshot: the versions are under that data key), for a
   * data-key replacement. Undefined if the secret is gone.
   */
  async keyAndLiveCiphertexts(secretId: string): Promise<{ key: SecretKeyRow; versions: Array<{ version: number; ciphertext: Buffer }> } | undefined> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT s.id, s.path, s.latest_version, s.data_key_id, s.wrapped_data_key, s.keyring_key_id, s.data_key_origin_key_id,
               (s.expires_at IS NOT NULL AND s.expires_at <= now()) AS expired, v.version, v.ciphertext
        FROM secrets s LEFT JOIN secret_versions v ON v.secret_id = s.id AND v.ciphertext IS NOT NULL
        WHERE s.id = ${secretId} ORDER BY v.version`;
      if (rows.length === 0) return undefined;
      return {
        key: keyRow(rows[0]),
        versions: rows.filter((r) => r.version !== null).map((r) => ({ version: r.version as number, ciphertext: r.ciphertext as Buffer })),
      };
    });
  }

  /**
   * appendOne with a fresh data key (the first write after a key rotation):
   * the secret's data key is replaced, every version read before is written
   * re-encrypted under it, and the new version appended, in one statement that
   * writes nothing unless the data key and latest version are still the ones
   * read. A version destroyed meanwhile stays destroyed.
   */
  async appendWithNewDataKey(a: AppendVersion, key: NewDataKeyRow, reencrypted: ReadonlyArray<{ version: number; ciphertext: Buffer }>, audit: AuditRow): Promise<AppendResult> {
    const json = JSON.stringify(reencrypted.map((v) => ({ version: v.version, c: v.ciphertext.toString("hex") })));
    return this.run(async () => {
      const [row] = await this.sql`
        WITH cur AS (
          SELECT latest_version, data_key_id, (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          FROM secrets WHERE id = ${a.secretId} FOR UPDATE
        ), upd AS (
          UPDATE secrets
          SET latest_version = ${a.version}, updated_at = now(), expires_at = coalesce(${a.expiresAt ?? null}::timestamptz, expires_at),
              data_key_id = ${key.dataKeyId}, wrapped_data_key = ${key.wrappedDataKey}, keyring_key_id = ${key.keyringKeyId}, data_key_origin_key_id = ${key.keyringKeyId}
          WHERE id = ${a.secretId} AND latest_version = ${a.version - 1} AND data_key_id = ${key.previousDataKeyId} AND ${this.sql.unsafe(LIVE)}
          RETURNING id, max_versions
        ), re AS (
          UPDATE secret_versions v SET ciphertext = decode(t.c, 'hex')
          FROM upd, json_to_recordset(${json}::text::json) AS t(version int, c text)
          WHERE v.secret_id = upd.id AND v.version = t.version AND v.ciphertext IS NOT NULL
        ), ins AS (
          INSERT INTO secret_versions (secret_id, version, ciphertext, created_by)
          SELECT id, ${a.version}, ${a.ciphertext}, ${a.createdBy} FROM upd
          RETURNING created_at
        ), pruned AS (
          DELETE FROM secret_versions v USING upd
          WHERE v.secret_id = upd.id AND v.version <= ${a.version} - upd.max_versions
        ), aud AS (
          ${auditInsertFragment(this.sql, audit)} FROM upd
        )
        SELECT (SELECT created_at FROM ins) AS created_at, cur.latest_version, cur.expired, cur.data_key_id FROM cur`;
      return appendResult(row);
    });
  }

  /** Removes a secret only if it has expired (so a put can reuse its path). */
  async purgeIfExpired(id: string): Promise<void> {
    await this.run(() => this.sql`DELETE FROM secrets WHERE id = ${id} AND expires_at <= now()`);
  }

  /**
   * The secret and one version: `version` 0 is the current version, the
   * latest written, deleted or not: a deleted current version is reported as
   * such, never replaced by an older one (a database writer who sets
   * deleted_at on it must not roll readers back). The version fields are null
   * when no such row exists.
   */
  async readVersion(path: string, version: number): Promise<VersionRow | undefined> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT s.id, s.path, s.latest_version, s.data_key_id, s.wrapped_data_key, s.keyring_key_id,
               (s.expires_at IS NOT NULL AND s.expires_at <= now()) AS expired,
               v.version, v.ciphertext, v.created_at, v.deleted_at
        FROM secrets s
        LEFT JOIN secret_versions v ON v.secret_id = s.id AND v.version = CASE WHEN ${version}::int = 0 THEN s.latest_version ELSE ${version}::int END
        WHERE s.path = ${path}`;
      const row = rows[0];
      if (!row) return undefined;
      return { ...keyRow(row), version: row.version, ciphertext: row.ciphertext, createdAt: row.created_at, deletedAt: row.deleted_at };
    });
  }

  /** Up to `limit` live paths after `after` that start with `prefix`, in byte order. */
  async listPaths(prefix: string, after: string, limit: number): Promise<string[]> {
    const upper = prefix === "" ? PATH_CEILING : prefixCeiling(prefix);
    return this.run(async () => {
      const rows = await this.sql`
        SELECT path FROM secrets
        WHERE path >= ${prefix} AND path < ${upper} AND path > ${after} AND ${this.sql.unsafe(LIVE)}
        ORDER BY path
        LIMIT ${limit}`;
      return rows.map((r) => r.path as string);
    });
  }

  /**
   * Applies a change to versions of a live secret; `versions` empty means the
   * current version (the latest written: if it is deleted already, nothing changes). Returns the versions that changed, or undefined if the
   * secret does not exist.
   */
  async changeVersions(path: string, change: VersionChange, versions: readonly number[], audit: AuditRow): Promise<number[] | undefined> {
    return this.run(async () => {
      const target = versions.length
        ? this.sql`v.version = ANY(${versions as number[]}::int[])`
        : this.sql`v.version = s.latest_version`;
      const set = {
        delete: this.sql`deleted_at = now()`,
        undelete: this.sql`deleted_at = NULL`,
        destroy: this.sql`ciphertext = NULL`,
      }[change];
      const eligible = {
        delete: this.sql`v.deleted_at IS NULL AND v.ciphertext IS NOT NULL`,
        undelete: this.sql`v.deleted_at IS NOT NULL AND v.ciphertext IS NOT NULL`,
        destroy: this.sql`v.ciphertext IS NOT NULL`,
      }[change];
      const [row] = await this.sql`
        WITH s AS (
          SELECT id, latest_version FROM secrets WHERE path = ${path} AND ${this.sql.unsafe(LIVE)}
        ), changed AS (
          UPDATE secret_versions v SET ${set}
          FROM s WHERE v.secret_id = s.id AND ${target} AND ${eligible}
          RETURNING v.version
        ), touched AS (
          UPDATE secrets SET updated_at = now() WHERE id = (SELECT id FROM s) AND EXISTS (SELECT 1 FROM changed)
        ), aud AS (
          ${auditInsertFragment(this.sql, audit)} FROM s
        )
        SELECT (SELECT id FROM s) AS id, coalesce((SELECT array_agg(version ORDER BY version) FROM changed), '{}') AS versions`;
      if (!row.id) return undefined;
      return row.versions as number[];
    });
  }

  async metadata(path: string): Promise<SecretMetadataRow | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        SELECT s.path, s.latest_version, s.max_versions, s.custom_metadata, s.created_at, s.updated_at, s.expires_at,
               coalesce(json_agg(json_build_object(
                 'version', v.version, 'created_at', v.created_at, 'deleted_at', v.deleted_at,
                 'destroyed', v.ciphertext IS NULL, 'created_by', v.created_by) ORDER BY v.version)
                 FILTER (WHERE v.version IS NOT NULL), '[]') AS versions
        FROM secrets s LEFT JOIN secret_versions v ON v.secret_id = s.id
        WHERE s.path = ${path} AND ${this.sql.unsafe("(s.expires_at IS NULL OR s.expires_at > now())")}
        GROUP BY s.id`;
      return row ? metadataRow(row) : undefined;
    });
  }

  /** Sets the given fields (pruning if max_versions shrinks) with its audit event; false if the secret does not exist. */
  async updateMetadata(path: string, changes: MetadataChanges, audit: AuditRow): Promise<boolean> {
    return this.run(async () => {
      return await this.sql.begin(async (tx) => {
        const [s] = await tx`
          UPDATE secrets SET
            max_versions = coalesce(${changes.maxVersions ?? null}::int, max_versions),
            custom_metadata = coalesce(${changes.customMetadata === undefined ? null : tx.json(changes.customMetadata)}::jsonb, custom_metadata),
            expires_at = CASE WHEN ${changes.expiresAt !== undefined} THEN ${changes.expiresAt ?? null}::timestamptz ELSE expires_at END,
            updated_at = now()
          WHERE path = ${path} AND ${tx.unsafe(LIVE)}
          RETURNING id, latest_version, max_versions`;
        if (!s) return false;
        await tx`DELETE FROM secret_versions WHERE secret_id = ${s.id} AND version <= ${s.latest_version - s.max_versions}`;
        await insertAuditRow(tx, audit);
        return true;
      });
    });
  }

  /** Removes the secret, its versions and metadata; false if it did not exist. */
  async purge(path: string, audit: AuditRow): Promise<string | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        WITH d AS (DELETE FROM secrets WHERE path = ${path} RETURNING id), a AS (${auditInsertFragment(this.sql, audit)} FROM d)
        SELECT id FROM d`;
      return row?.id as string | undefined;
    });
  }

  /** Deletes expired secrets, a batch at a time; returns how many. */
  async purgeExpired(batch = 1000): Promise<number> {
    return this.run(async () => {
      let total = 0;
      for (;;) {
        const rows = await this.sql`
          DELETE FROM secrets WHERE id IN (
            SELECT id FROM secrets WHERE expires_at <= now() ORDER BY expires_at LIMIT ${batch} FOR UPDATE SKIP LOCKED
          ) RETURNING id`;
        total += rows.length;
        if (rows.length < batch) return total;
      }
    });
  }

  private readonly run = guarded;
}

function appendResult(row: Record<string, unknown> | undefined): AppendResult {
  if (!row) return { kind: "gone" };
  if (row.created_at) return { kind: "written", createdAt: row.created_at as Date };
  return { kind: "conflict", latestVersion: row.latest_version as number, expired: row.expired as boolean, dataKeyId: row.data_key_id as number };
}

function keyRow(row: Record<string, unknown>): SecretKeyRow {
  return {
    id: row.id as string,
    path: row.path as string,
    latestVersion: row.latest_version as number,
    dataKeyId: row.data_key_id as number,
    wrappedDataKey: row.wrapped_data_key as Buffer,
    keyringKeyId: row.keyring_key_id as number,
    dataKeyOriginKeyId: (row.data_key_origin_key_id as number | undefined) ?? (row.keyring_key_id as number),
    expired: row.expired as boolean,
  };
}

function metadataRow(row: Record<string, unknown>): SecretMetadataRow {
  const versions = row.versions as Array<Record<string, unknown>>;
  return {
    path: row.path as string,
    latestVersion: row.latest_version as number,
    maxVersions: row.max_versions as number,
    customMetadata: row.custom_metadata as Record<string, string>,
    createdAt: row.created_at as Date,
    updatedAt: row.updated_at as Date,
    expiresAt: row.expires_at as Date | null,
    versions: versions.map((v) => ({
      version: v.version as number,
      createdAt: new Date(v.created_at as string),
      deletedAt: v.deleted_at ? new Date(v.deleted_at as string) : null,
      destroyed: v.destroyed as boolean,
      createdBy: v.created_by as string,
    })),
  };
}

/** The smallest string greater than every string that starts with `prefix`. */
function prefixCeiling(prefix: string): string {
  const last = prefix.charCodeAt(prefix.length - 1);
  return prefix.slice(0, -1) + String.fromCharCode(last + 1);
}
