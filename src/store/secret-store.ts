// SQL for secrets and their versions. Every write is one statement (one round
// trip) whose conditions make it safe under concurrency without a process lock:
// the database settles races, so replicas can share it. Rows hold ciphertext
// only; this layer never sees a key or a plaintext value. Label assignments and
// rotation policies are stored with MACs the service computes and checks; a
// write that moves labels is conditional on the exact labels state (its MAC)
// the service verified, so it never seals over a state it did not check.

import type { AuditRow } from "./audit-row.js";
import { NexusError } from "../errors/nexus-error.js";
import { auditInsertFragment, auditJson, insertAuditRow } from "./audit-store.js";
import { guarded, type Sql } from "./database.js";
import { idempotencyCte, idempotencyJson, versionTime } from "./idempotency-store.js";
import { concurrencyLimit, GroupCommit } from "./group-commit.js";
import { labelRow, type LabelRow } from "./secret-label-row.js";

export type { LabelRow } from "./secret-label-row.js";

/** A label state to store: the versions, its epoch and MAC. */
export interface NewLabels {
  readonly current: number | null;
  readonly pending: number | null;
  readonly previous: number | null;
  readonly epoch: number;
  readonly mac: Buffer;
}

export interface SecretKeyRow extends LabelRow {
  readonly id: string;
  readonly path: string;
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
  readonly labels: NewLabels;
}

export interface AppendVersion {
  readonly secretId: string;
  /** The data key the ciphertext is under: written only if the secret still has it (a rotation's fresh data key may have replaced it). */
  readonly dataKeyId: number;
  readonly version: number;
  readonly ciphertext: Buffer;
  readonly createdBy: string;
  readonly expiresAt: Date | undefined;
  /** The labels after this version; written only if the stored labels MAC is `expectedLabelsMac`. */
  readonly labels: NewLabels;
  readonly expectedLabelsMac: Buffer | null;
}

/** A rotation's bookkeeping, set with its version. */
export interface RotationMark {
  readonly nextRotationAt: Date | null;
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
  | { readonly kind: "conflict"; readonly latestVersion: number; readonly expired: boolean; readonly labels: LabelRow; readonly dataKeyId: number }
  | { readonly kind: "gone" };

/** A stored rotation policy with its MAC and schedule. */
export interface RotationRow {
  readonly policy: Record<string, unknown> | null;
  readonly mac: Buffer | null;
  readonly nextRotationAt: Date | null;
  readonly lastRotatedAt: Date | null;
}

/** A rotation the scheduler claimed. */
export interface ClaimedRotation {
  readonly id: string;
  readonly path: string;
  readonly policy: Record<string, unknown>;
  readonly mac: Buffer | null;
}

export type PromoteResult =
  | { readonly kind: "promoted" }
  /** The labels or latest version changed since they were read, or the version is no longer live. */
  | { readonly kind: "changed" }
  | { readonly kind: "gone" };

export interface VersionRow extends SecretKeyRow {
  readonly version: number | null;
  readonly ciphertext: Buffer | null;
  readonly createdAt: Date | null;
  readonly deletedAt: Date | null;
}

export interface SecretMetadataRow extends LabelRow {
  readonly id: string;
  readonly path: string;
  readonly rotation: RotationRow;
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
  /** A policy (canonical JSON) with its MAC and first due time; null turns rotation off. */
  readonly rotation?: { readonly policy: Record<string, unknown>; readonly mac: Buffer; readonly nextRotationAt: Date | null } | null;
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
               current_version, pending_version, previous_version, label_epoch, labels_mac,
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
          INSERT INTO secrets (id, path, latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, data_key_origin_key_id, expires_at,
                               current_version, pending_version, previous_version, label_epoch, labels_mac)
          VALUES (${s.id}, ${s.path}, 1, ${s.maxVersions}, ${s.dataKeyId}, ${s.wrappedDataKey}, ${s.keyringKeyId}, ${s.keyringKeyId}, ${s.expiresAt ?? null},
                  ${s.labels.current}, ${s.labels.pending}, ${s.labels.previous}, ${s.labels.epoch}, ${s.labels.mac})
          ON CONFLICT (path) DO NOTHING
          RETURNING id
        ), a AS (
          ${auditInsertFragment(this.sql, audit)} FROM s
        )${idempotencyCte(this.sql, audit.idempotency, "s")}
        INSERT INTO secret_versions (secret_id, version, ciphertext, created_by, created_at)
        SELECT id, 1, ${s.ciphertext}, ${s.createdBy}, coalesce(${versionTime(audit.idempotency)}::timestamptz, now()) FROM s
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

  /** appendVersion for a rotation, outside group commit: also records when it ran and when the next is due. */
  appendRotatedVersion(a: AppendVersion, audit: AuditRow, mark: RotationMark): Promise<AppendResult> {
    return this.appendOne(a, audit, mark);
  }

  private async appendOne(a: AppendVersion, audit: AuditRow, mark?: RotationMark): Promise<AppendResult> {
    const l = a.labels;
    return this.run(async () => {
      const [row] = await this.sql`
        WITH cur AS (
          -- FOR UPDATE: after waiting for a concurrent writer this sees its
          -- committed latest_version and labels, so a loser retries with fresh ones.
          SELECT latest_version, data_key_id, current_version, pending_version, previous_version, label_epoch, labels_mac,
                 (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          FROM secrets WHERE id = ${a.secretId} FOR UPDATE
        ), upd AS (
          UPDATE secrets
          SET latest_version = ${a.version}, updated_at = now(), expires_at = coalesce(${a.expiresAt ?? null}::timestamptz, expires_at),
              current_version = ${l.current}, pending_version = ${l.pending}, previous_version = ${l.previous},
              label_epoch = ${l.epoch}, labels_mac = ${l.mac},
              last_rotated_at = CASE WHEN ${mark !== undefined} THEN now() ELSE last_rotated_at END,
              next_rotation_at = CASE WHEN ${mark !== undefined} THEN ${mark?.nextRotationAt ?? null}::timestamptz ELSE next_rotation_at END
          WHERE id = ${a.secretId} AND latest_version = ${a.version - 1} AND data_key_id = ${a.dataKeyId} AND labels_mac IS NOT DISTINCT FROM ${a.expectedLabelsMac}::bytea
            AND ${this.sql.unsafe(LIVE)}
          RETURNING id, max_versions
        ), ${this.insertVersion(a, audit)}, ${this.pruneAndAudit(a.version, l, audit)}
        SELECT (SELECT created_at FROM ins) AS created_at, cur.* FROM cur`;
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
        new_current: a.labels.current,
        new_pending: a.labels.pending,
        new_previous: a.labels.previous,
        new_epoch: a.labels.epoch,
        new_labels_mac_hex: a.labels.mac.toString("hex"),
        expected_labels_mac_hex: a.expectedLabelsMac?.toString("hex"),
        ...auditJson(audit),
        ...idempotencyJson(audit.idempotency),
      })),
    );
    const rows = await this.run(
      () => this.sql`
        WITH t AS MATERIALIZED (
          SELECT * FROM json_to_recordset(${json}::text::json) AS t(
            i int, secret_id uuid, new_version int, data_key_id int, ciphertext_hex text, created_by text, expires_at timestamptz,
            new_current int, new_pending int, new_previous int, new_epoch bigint, new_labels_mac_hex text, expected_labels_mac_hex text,
            replica_id text, sequence bigint, time timestamptz, request_id text, caller text, rpc text, path text, version int,
            outcome text, code text, detail jsonb, mac_hex text, signature_hex text, signer_hex text,
            idem_caller text, idem_key text, idem_rpc text, idem_request_mac_hex text, idem_response_hex text, idem_response_mac_hex text,
            idem_created_at timestamptz)
        ), cur AS MATERIALIZED (
          SELECT id, latest_version, data_key_id, current_version, pending_version, previous_version, label_epoch, labels_mac,
                 (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          -- NOWAIT: a row someone else holds fails the batch at once (each put then
          -- goes alone) instead of stalling every put of this replica behind it.
          FROM secrets WHERE id IN (SELECT secret_id FROM t) ORDER BY id FOR UPDATE NOWAIT
        ), upd AS (
          UPDATE secrets s
          SET latest_version = t.new_version, updated_at = now(), expires_at = coalesce(t.expires_at, s.expires_at),
              current_version = t.new_current, pending_version = t.new_pending, previous_version = t.new_previous,
              label_epoch = t.new_epoch, labels_mac = decode(t.new_labels_mac_hex, 'hex')
          FROM t JOIN cur ON cur.id = t.secret_id
          WHERE s.id = t.secret_id AND s.latest_version = t.new_version - 1 AND s.data_key_id = t.data_key_id AND (s.expires_at IS NULL OR s.expires_at > now())
            AND s.labels_mac IS NOT DISTINCT FROM decode(t.expected_labels_mac_hex, 'hex')
          RETURNING s.id, s.max_versions, t.i
        ), ins AS (
          INSERT INTO secret_versions (secret_id, version, ciphertext, created_by, created_at)
          SELECT upd.id, t.new_version, decode(t.ciphertext_hex, 'hex'), t.created_by, coalesce(t.idem_created_at, now()) FROM upd JOIN t ON t.i = upd.i
          RETURNING secret_id, created_at
        ), pruned AS (
          DELETE FROM secret_versions v USING upd JOIN t ON t.i = upd.i
          WHERE v.secret_id = upd.id AND v.version <= t.new_version - upd.max_versions
            AND v.version IS DISTINCT FROM t.new_current AND v.version IS DISTINCT FROM t.new_pending
            AND v.version IS DISTINCT FROM t.new_previous
        ), aud AS (
          INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
          SELECT t.replica_id, t.sequence, t.time, t.request_id, t.caller, t.rpc, t.path, t.version, t.outcome, t.code, t.detail, decode(t.mac_hex, 'hex'),
                 decode(t.signature_hex, 'hex'), decode(t.signer_hex, 'hex')
          FROM t JOIN upd ON upd.i = t.i
        ), idem AS (
          INSERT INTO idempotency_keys (caller, key, rpc, request_mac, response, response_mac, created_at)
          SELECT t.idem_caller, t.idem_key, t.idem_rpc, decode(t.idem_request_mac_hex, 'hex'), decode(t.idem_response_hex, 'hex'), decode(t.idem_response_mac_hex, 'hex'),
                 t.idem_created_at
          FROM t JOIN upd ON upd.i = t.i WHERE t.idem_key IS NOT NULL
        )
        SELECT t.i, ins.created_at, cur.latest_version, cur.expired, cur.data_key_id, cur.current_version, cur.pending_version,
               cur.previous_version, cur.label_epoch, cur.labels_mac
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
    const l = a.labels;
    return this.run(async () => {
      const [row] = await this.sql`
        WITH cur AS (
          SELECT latest_version, data_key_id, current_version, pending_version, previous_version, label_epoch, labels_mac,
                 (expires_at IS NOT NULL AND expires_at <= now()) AS expired
          FROM secrets WHERE id = ${a.secretId} FOR UPDATE
        ), upd AS (
          UPDATE secrets
          SET latest_version = ${a.version}, updated_at = now(), expires_at = coalesce(${a.expiresAt ?? null}::timestamptz, expires_at),
              data_key_id = ${key.dataKeyId}, wrapped_data_key = ${key.wrappedDataKey}, keyring_key_id = ${key.keyringKeyId}, data_key_origin_key_id = ${key.keyringKeyId},
              current_version = ${l.current}, pending_version = ${l.pending}, previous_version = ${l.previous},
              label_epoch = ${l.epoch}, labels_mac = ${l.mac}
          WHERE id = ${a.secretId} AND latest_version = ${a.version - 1} AND data_key_id = ${key.previousDataKeyId}
            AND labels_mac IS NOT DISTINCT FROM ${a.expectedLabelsMac}::bytea AND ${this.sql.unsafe(LIVE)}
          RETURNING id, max_versions
        ), re AS (
          UPDATE secret_versions v SET ciphertext = decode(t.c, 'hex')
          FROM upd, json_to_recordset(${json}::text::json) AS t(version int, c text)
          WHERE v.secret_id = upd.id AND v.version = t.version AND v.ciphertext IS NOT NULL
        ), ${this.insertVersion(a, audit)}, ${this.pruneAndAudit(a.version, l, audit)}
        SELECT (SELECT created_at FROM ins) AS created_at, cur.* FROM cur`;
      return appendResult(row);
    });
  }

  /** The `ins` CTE of a single-secret append: the new version, at the idempotency record's time when there is one. */
  private insertVersion(a: AppendVersion, audit: AuditRow) {
    return this.sql`ins AS (
          INSERT INTO secret_versions (secret_id, version, ciphertext, created_by, created_at)
          SELECT id, ${a.version}, ${a.ciphertext}, ${a.createdBy}, coalesce(${versionTime(audit.idempotency)}::timestamptz, now()) FROM upd
          RETURNING created_at
        )`;
  }

  /**
   * The end of a single-secret append (CTEs `pruned` and `aud`, after `upd`
   * and `ins`): versions beyond max_versions are pruned, never a labelled
   * one, and the audit event is written only if the append happened.
   */
  private pruneAndAudit(version: number, l: { current: number | null; pending: number | null; previous: number | null }, audit: AuditRow) {
    return this.sql`pruned AS (
          DELETE FROM secret_versions v USING upd
          WHERE v.secret_id = upd.id AND v.version <= ${version} - upd.max_versions
            AND v.version IS DISTINCT FROM ${l.current}::int AND v.version IS DISTINCT FROM ${l.pending}::int
            AND v.version IS DISTINCT FROM ${l.previous}::int
        ), aud AS (
          ${auditInsertFragment(this.sql, audit)} FROM upd
        )${idempotencyCte(this.sql, audit.idempotency, "upd")}`;
  }

  /** Removes a secret only if it has expired (so a put can reuse its path). */
  async purgeIfExpired(id: string): Promise<void> {
    await this.run(() => this.sql`DELETE FROM secrets WHERE id = ${id} AND expires_at <= now()`);
  }

  /**
   * The secret, its labels and one version: by number, or (`version` 0) the
   * one `label` names, deleted or not: a deleted labelled version is reported
   * as such, never replaced by an older one (a database writer who sets
   * deleted_at on it must not roll readers back). The version fields are null
   * when no such row exists.
   */
  async readVersion(path: string, version: number, label: LabelColumn = "current"): Promise<VersionRow | undefined> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT s.id, s.path, s.latest_version, s.data_key_id, s.wrapped_data_key, s.keyring_key_id,
               s.current_version, s.pending_version, s.previous_version, s.label_epoch, s.labels_mac,
               (s.expires_at IS NOT NULL AND s.expires_at <= now()) AS expired,
               v.version, v.ciphertext, v.created_at, v.deleted_at
        FROM secrets s
        LEFT JOIN secret_versions v ON v.secret_id = s.id AND v.version = ${labelledVersion(this.sql, version, label)}
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
   * version labelled CURRENT (if it is deleted already, nothing changes; the
   * label never moves). Returns the versions that changed, or undefined if the
   * secret does not exist.
   */
  async changeVersions(path: string, change: VersionChange, versions: readonly number[], audit: AuditRow): Promise<number[] | undefined> {
    return this.run(async () => {
      const target = versions.length
        ? this.sql`v.version = ANY(${versions as number[]}::int[])`
        : this.sql`v.version = s.current_version`;
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
          SELECT id, current_version FROM secrets WHERE path = ${path} AND ${this.sql.unsafe(LIVE)}
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
        SELECT s.id, s.path, s.latest_version, s.max_versions, s.custom_metadata, s.created_at, s.updated_at, s.expires_at,
               s.current_version, s.pending_version, s.previous_version, s.label_epoch, s.labels_mac,
               s.rotation, s.rotation_mac, s.next_rotation_at, s.last_rotated_at,
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
    const rotation = changes.rotation;
    return this.run(async () => {
      return await this.sql.begin(async (tx) => {
        const [s] = await tx`
          UPDATE secrets SET
            max_versions = coalesce(${changes.maxVersions ?? null}::int, max_versions),
            custom_metadata = coalesce(${changes.customMetadata === undefined ? null : tx.json(changes.customMetadata)}::jsonb, custom_metadata),
            expires_at = CASE WHEN ${changes.expiresAt !== undefined} THEN ${changes.expiresAt ?? null}::timestamptz ELSE expires_at END,
            rotation = CASE WHEN ${rotation !== undefined} THEN ${rotation === undefined || rotation === null ? null : tx.json(rotation.policy as never)}::jsonb ELSE rotation END,
            rotation_mac = CASE WHEN ${rotation !== undefined} THEN ${rotation?.mac ?? null}::bytea ELSE rotation_mac END,
            next_rotation_at = CASE WHEN ${rotation !== undefined} THEN ${rotation?.nextRotationAt ?? null}::timestamptz ELSE next_rotation_at END,
            updated_at = now()
          WHERE path = ${path} AND ${tx.unsafe(LIVE)}
          RETURNING id, latest_version, max_versions, current_version, pending_version, previous_version`;
        if (!s) return false;
        // A labelled version is never pruned.
        await tx`
          DELETE FROM secret_versions WHERE secret_id = ${s.id} AND version <= ${s.latest_version - s.max_versions}
            AND version IS DISTINCT FROM ${s.current_version}::int AND version IS DISTINCT FROM ${s.pending_version}::int
            AND version IS DISTINCT FROM ${s.previous_version}::int`;
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

  /**
   * Sets the labels of a live secret to `labels` if its stored labels MAC and
   * latest version are still `expected` and `version` is live (neither
   * deleted nor destroyed), with its audit event: one statement.
   */
  async promote(secretId: string, version: number, expected: { labelsMac: Buffer | null; latestVersion: number }, labels: NewLabels, audit: AuditRow): Promise<PromoteResult> {
    return this.run(async () => {
      const [row] = await this.sql`
        WITH s AS (
          SELECT id FROM secrets WHERE id = ${secretId} AND ${this.sql.unsafe(LIVE)}
        ), upd AS (
          UPDATE secrets SET current_version = ${labels.current}, pending_version = ${labels.pending}, previous_version = ${labels.previous},
                             label_epoch = ${labels.epoch}, labels_mac = ${labels.mac}, updated_at = now()
          WHERE id = (SELECT id FROM s) AND latest_version = ${expected.latestVersion}
            AND labels_mac IS NOT DISTINCT FROM ${expected.labelsMac}::bytea
            AND EXISTS (SELECT 1 FROM secret_versions v WHERE v.secret_id = ${secretId} AND v.version = ${version}
                        AND v.deleted_at IS NULL AND v.ciphertext IS NOT NULL)
          RETURNING id
        ), aud AS (
          ${auditInsertFragment(this.sql, audit)} FROM upd
        )${idempotencyCte(this.sql, audit.idempotency, "upd")}
        SELECT (SELECT id FROM s) AS id, (SELECT id FROM upd) AS promoted`;
      if (!row.id) return { kind: "gone" };
      return row.promoted ? { kind: "promoted" } : { kind: "changed" };
    });
  }

  /**
   * Claims up to `limit` due rotations of live secrets for this replica: each
   * row's next_rotation_at moves `leaseMs` ahead in the claiming statement, so
   * no other replica claims it (SKIP LOCKED passes over rows being claimed; a
   * row claimed meanwhile is re-checked and no longer due). The rotation's own
   * write sets the real next time; a replica that dies holding a claim leaves
   * it to another once the lease runs out. External policies are never claimed.
   */
  async claimDueRotations(limit: number, leaseMs: number): Promise<ClaimedRotation[]> {
    return this.run(async () => {
      const rows = await this.sql`
        UPDATE secrets SET next_rotation_at = now() + ${leaseMs} * interval '1 millisecond'
        WHERE id IN (
          SELECT id FROM secrets
          WHERE next_rotation_at <= now() AND rotation IS NOT NULL AND rotation->'generator'->>'kind' <> 'external'
            AND ${this.sql.unsafe(LIVE)}
          ORDER BY next_rotation_at LIMIT ${limit} FOR UPDATE SKIP LOCKED
        )
        RETURNING id, path, rotation, rotation_mac`;
      return rows.map((r) => ({ id: r.id as string, path: r.path as string, policy: r.rotation as Record<string, unknown>, mac: (r.rotation_mac as Buffer | null) ?? null }));
    });
  }

  /**
   * Marks external rotations that have come due (CURRENT is one period old):
   * next_rotation_at is set to that due time, once per CURRENT version, and
   * the watch trigger (migration 008) turns the mark into a ROTATION_DUE
   * event. With several replicas, a row marked by one is re-checked by the
   * other after the lock and left alone. Returns how many were marked.
   */
  async markExternalRotationsDue(): Promise<number> {
    return this.run(async () => {
      const rows = await this.sql`
        UPDATE secrets s SET next_rotation_at = d.due
        FROM (
          SELECT s2.id, v.created_at + (s2.rotation->>'period_ms')::bigint * interval '1 millisecond' AS due
          FROM secrets s2 JOIN secret_versions v ON v.secret_id = s2.id AND v.version = s2.current_version
          WHERE s2.rotation->'generator'->>'kind' = 'external' AND (s2.expires_at IS NULL OR s2.expires_at > now())
        ) d
        WHERE s.id = d.id AND d.due <= now() AND s.next_rotation_at IS DISTINCT FROM d.due
        RETURNING s.id`;
      return rows.length;
    });
  }

  /** The stored rotation policy of a live secret, or undefined if there is no such secret. */
  async rotationPolicy(path: string): Promise<(RotationRow & { id: string }) | undefined> {
    return this.run(async () => {
      const [r] = await this.sql`
        SELECT id, rotation, rotation_mac, next_rotation_at, last_rotated_at FROM secrets WHERE path = ${path} AND ${this.sql.unsafe(LIVE)}`;
      return r ? { id: r.id as string, ...rotationRow(r) } : undefined;
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
  return { kind: "conflict", latestVersion: row.latest_version as number, expired: row.expired as boolean, labels: labelRow(row), dataKeyId: row.data_key_id as number };
}

/** Which label a read by label (version 0) follows. */
export type LabelColumn = "current" | "pending" | "previous";

/** The version number a read addresses: `version`, or (0) the one `label` names on the secrets row `s`. */
function labelledVersion(sql: Sql, version: number, label: LabelColumn) {
  if (version !== 0) return sql`${version}::int`;
  return { current: sql`s.current_version`, pending: sql`s.pending_version`, previous: sql`s.previous_version` }[label];
}

function rotationRow(r: Record<string, unknown>): RotationRow {
  return {
    policy: (r.rotation as Record<string, unknown> | null) ?? null,
    mac: (r.rotation_mac as Buffer | null) ?? null,
    nextRotationAt: (r.next_rotation_at as Date | null) ?? null,
    lastRotatedAt: (r.last_rotated_at as Date | null) ?? null,
  };
}

function keyRow(row: Record<string, unknown>): SecretKeyRow {
  return {
    ...labelRow(row),
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
    ...labelRow(row),
    id: row.id as string,
    path: row.path as string,
    rotation: rotationRow(row),
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
