// SecretService: versioned secrets with Vault KV v2 semantics. Handlers guard
// first (sealed? valid request?), then encrypt or decrypt through keys/ and read
// or write through store/. Every write is one conditional statement; a put that
// loses a race is retried with the version the database reported, or ABORTED
// when the caller asked for check-and-set. Labels (CURRENT, PENDING,
// PREVIOUS) move with the writes that move them, sealed by the service and
// checked on every read that uses them (secret-labels.ts); rotation policies
// are validated and MAC'd here and run by secret-rotation.ts.

import { randomUUID } from "node:crypto";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { SecretService, type SecretMetadataSchema } from "../../gen/spike/nexus/v1/secret_pb.js";
import { NexusError } from "../errors/nexus-error.js";
import { owned } from "../keys/aead.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { SecretCipher } from "../keys/secret-cipher.js";
import type { AuditRow } from "../audit/audit-event.js";
import type { Logger } from "../log/logger.js";
import type { AppendResult, AppendVersion, SecretMetadataRow, SecretStore, VersionChange } from "../store/secret-store.js";
import { registerService, type CallContext, type ServiceRegistration } from "../calls/call-context.js";
import {
  DEFAULT_MAX_VERSIONS,
  decodePageToken,
  encodeData,
  encodePageToken,
  pageSize,
  validateCustomMetadata,
  validateFutureTime,
  validateMaxVersions,
  validatePath,
  validatePrefix,
  validateVersions,
  MAX_VERSION,
} from "./secret-rules.js";
import { maskedFields } from "./update-mask.js";
import { KnownSecrets, type KnownSecret } from "./known-secrets.js";
import {
  checkLabels,
  labelName,
  labelStateFromRow,
  labelsAfterPromote,
  labelsAfterPut,
  labelsOf,
  sealLabels,
  type LabelFreshness,
  type LabelState,
} from "./secret-labels.js";
import {
  policyToProto,
  rotationMac,
  rotationPolicyAltered,
  validateBytesGenerator,
  validateDataKey,
  validatePasswordGenerator,
  validatePolicy,
  verifiedPolicy,
  type StoredPolicy,
} from "./rotation-policy.js";
import type { SecretRotator } from "./secret-rotation.js";
import { watchSecrets, type SecretWatchDeps } from "./secret-watch.js";

export interface SecretServiceDeps {
  readonly keys: KeyManager;
  readonly cipher: SecretCipher;
  readonly store: SecretStore;
  readonly maxSecretBytes: number;
  /** How many paths' key references a replica remembers for one-round-trip puts. */
  readonly knownSecretsLimit?: number;
  /** This process's memory of label epochs, shared with the rotator. */
  readonly freshness: LabelFreshness;
  readonly rotator: SecretRotator;
  readonly logger: Logger;
  /** WatchSecrets (secret-watch.ts). */
  readonly watch: SecretWatchDeps;
}

const PROMOTE_ATTEMPTS = 10;

/** An unconditional put retries while it keeps losing races; the database reports the fresh version each time. */
const PUT_ATTEMPTS = 50;
/** Rows one ListSecrets call may examine for a caller whose policies hide most paths. */
const LIST_SCAN_LIMIT = 5000;
const UPDATABLE_FIELDS = ["max_versions", "custom_metadata", "expires_at", "rotation"];

export function secretService(deps: SecretServiceDeps): ServiceRegistration {
  const { keys, cipher, store, freshness, logger } = deps;
  const known = new KnownSecrets(deps.knownSecretsLimit ?? 10_000);
  keys.onSealChange((sealed) => sealed && known.clear());

  /** Verifies labels read by a statement begun at `started` (MAC and epoch), or throws LABELS_ALTERED. */
  const verifyLabels = (secretId: string, path: string, labels: LabelState, started: number) => {
    if (keys.sealed) throw keys.sealedError();
    checkLabels((id) => keys.integrityKeyForRow(id), freshness, secretId, path, labels, started, (why) => logger.error("secret labels failed their integrity check; refused", { path, why }));
  };

  const lookup = async (path: string): Promise<KnownSecret | undefined> => {
    const started = freshness.start();
    const row = await store.findByPath(path);
    if (row === undefined) return undefined;
    if (row.expired) {
      await store.purgeIfExpired(row.id);
      cipher.forget(row.id);
      return undefined;
    }
    const labels = labelStateFromRow(row);
    verifyLabels(row.id, path, labels, started);
    return known.remember({
      secretId: row.id, path, dataKeyId: row.dataKeyId, keyringKeyId: row.keyringKeyId, wrappedDataKey: row.wrappedDataKey, latestVersion: row.latestVersion, labels,
      dataKeyOriginKeyId: row.dataKeyOriginKeyId,
    });
  };

  const appendWithFreshDataKey = async (secret: KnownSecret, a: Omit<AppendVersion, "ciphertext">, plaintext: Buffer, audit: AuditRow): Promise<AppendResult> => {
    const version = a.version;
    const read = await store.keyAndLiveCiphertexts(secret.secretId);
    // Gone, or its data key replaced or re-wrapped since it was remembered: read the row again.
    if (read === undefined || read.key.dataKeyId !== secret.dataKeyId || !read.key.wrappedDataKey.equals(secret.wrappedDataKey)) return { kind: "gone" };
    if (!keys.hasWrappingKey(read.key.keyringKeyId)) return { kind: "gone" };
    const replaced = cipher.replaceDataKey(secret, read.versions);
    const ciphertext = cipher.encryptVersion({ secretId: secret.secretId, path: secret.path, dataKeyId: replaced.key.dataKeyId }, replaced.key.dataKey, version, plaintext);
    const key = { previousDataKeyId: secret.dataKeyId, dataKeyId: replaced.key.dataKeyId, wrappedDataKey: replaced.key.wrappedDataKey, keyringKeyId: replaced.key.keyringKeyId };
    const result = await store.appendWithNewDataKey({ ...a, ciphertext }, key, replaced.versions, audit);
    if (result.kind === "written") {
      // In place: the caller records the version it wrote on this same entry.
      Object.assign(secret, { dataKeyId: key.dataKeyId, wrappedDataKey: owned(key.wrappedDataKey), keyringKeyId: key.keyringKeyId, dataKeyOriginKeyId: key.keyringKeyId });
    } else {
      cipher.forget(secret.secretId);
    }
    return result;
  };

  /**
   * A remembered secret whose wrapping key this replica no longer holds (a
   * rotation re-wrapped it and retired the key): read its row again, and take
   * up a wrapping key another replica created if the row names one.
   */
  const rewrappedSince = async (stale: KnownSecret): Promise<KnownSecret | undefined> => {
    known.delete(stale.path);
    const fresh = await lookup(stale.path);
    if (fresh !== undefined && !keys.hasWrappingKey(fresh.keyringKeyId)) await keys.refreshKeyring();
    return fresh;
  };

  // Soft delete, undelete and destroy share one statement. Explicit version
  // numbers that cannot exist match nothing (and never mean "current").
  const changeVersions = async (path: string, change: VersionChange, versions: number[], explicit: boolean, ctx: CallContext) => {
    if (explicit && versions.length === 0) {
      if ((await store.findByPath(path)) === undefined) throw notFound(path);
      return [];
    }
    const changed = await store.changeVersions(path, change, versions, ctx.audit.prepare({ versions }));
    if (changed === undefined) throw notFound(path);
    ctx.audit.markWritten();
    return changed;
  };

  const requireUnsealed = () => {
    if (keys.sealed) throw keys.sealedError();
  };

  /** The metadata with its labels verified (INTERNAL LABELS_ALTERED otherwise) and its policy checked. */
  const readMetadata = async (path: string) => {
    const started = freshness.start();
    const row = await store.metadata(path);
    if (row === undefined) throw notFound(path);
    const labels = labelStateFromRow(row);
    verifyLabels(row.id, path, labels, started);
    let policy: StoredPolicy | undefined;
    if (row.rotation.policy !== null) {
      if (keys.sealed) throw keys.sealedError();
      policy = verifiedPolicy((id) => keys.integrityKeyForRow(id), row.id, path, row.rotation.policy, row.rotation.mac);
      if (policy === undefined) {
        logger.error("rotation policy failed its integrity check", { path });
        throw rotationPolicyAltered(path);
      }
    }
    return toMetadata(row, labels, policy);
  };

  return registerService(SecretService, {
    async putSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const expiresAt = req.expiresAt ? validateFutureTime(req.expiresAt, "expires_at") : undefined;
      const plaintext = encodeData(req.data, deps.maxSecretBytes);
      const cas = req.cas;
      const stageName = labelName(req.stage, "stage");
      if (stageName === "previous") {
        plaintext.fill(0);
        throw NexusError.invalidArgument("stage", "a put can stage a version as CURRENT or PENDING; PREVIOUS is set only by moving CURRENT", "INVALID_STAGE");
      }
      const stage = stageName ?? "current";
      if (cas !== undefined && cas > MAX_VERSION) {
        plaintext.fill(0);
        throw casMismatch(path, cas, (await store.findByPath(path))?.latestVersion ?? 0);
      }
      try {
        for (let attempt = 0; attempt < PUT_ATTEMPTS; attempt++) {
          // A cas of 0 asserts the path is new: ask the database, not the cache.
          let secret = cas === 0 ? await lookup(path) : (known.get(path) ?? (await lookup(path)));
          if (secret !== undefined && !keys.hasWrappingKey(secret.keyringKeyId)) secret = await rewrappedSince(secret);
          if (secret === undefined) {
            if (cas !== undefined && cas !== 0) throw casMismatch(path, cas, 0);
            const id = randomUUID();
            const dk = cipher.newDataKey(id, path);
            const ciphertext = cipher.encryptVersion({ secretId: id, path, dataKeyId: dk.dataKeyId }, dk.dataKey, 1, plaintext);
            const labels = sealLabels(keys.activeIntegrityKey(), id, path, { epoch: 0 }, labelsAfterPut({ current: null, pending: null, previous: null }, 1, stage), 1);
            ctx.audit.subject(path, 1);
            const started = freshness.start();
            const createdAt = await store.insertNew({
              id, path, maxVersions: DEFAULT_MAX_VERSIONS, dataKeyId: dk.dataKeyId, wrappedDataKey: dk.wrappedDataKey,
              keyringKeyId: dk.keyringKeyId, expiresAt, ciphertext, createdBy: ctx.caller.toString(), labels,
            }, recorded(ctx, ctx.audit.prepare(stage === "pending" ? { stage } : {}), { version: 1 }));
            if (createdAt !== undefined) {
              ctx.audit.markWritten();
              freshness.accept(id, labels.epoch, started);
              known.remember({ secretId: id, path, dataKeyId: dk.dataKeyId, keyringKeyId: dk.keyringKeyId, wrappedDataKey: dk.wrappedDataKey, latestVersion: 1, labels, dataKeyOriginKeyId: dk.keyringKeyId });
              return { version: 1, createdAt: timestampFromDate(createdAt) };
            }
            cipher.forget(id);
            if (cas === 0) throw casMismatch(path, 0, undefined);
            continue; // created concurrently: write the next version instead
          }
          if (cas === 0) throw casMismatch(path, 0, secret.latestVersion);
          const version = (cas ?? secret.latestVersion) + 1;
          const before = secret.labels;
          const labels = sealLabels(keys.activeIntegrityKey(), secret.secretId, path, before, labelsAfterPut(before, version, stage), version);
          ctx.audit.subject(path, version);
          const started = freshness.start();
          const audit = recorded(ctx, ctx.audit.prepare(stage === "pending" ? { stage } : {}), { version });
          const append = { secretId: secret.secretId, dataKeyId: secret.dataKeyId, version, createdBy: ctx.caller.toString(), expiresAt, labels, expectedLabelsMac: before.mac };
          let result: AppendResult;
          if (secret.dataKeyOriginKeyId < keys.activeWrappingKey().id) {
            // The first write after a key rotation: a fresh data key, every live version re-encrypted under it.
            result = await appendWithFreshDataKey(secret, append, plaintext, audit);
          } else {
            const ciphertext = cipher.encryptVersion(secret, cipher.dataKey(secret), version, plaintext);
            result = await store.appendVersion({ ...append, ciphertext }, audit);
          }
          if (result.kind === "written") {
            ctx.audit.markWritten();
            freshness.accept(secret.secretId, labels.epoch, started);
            known.wrote(secret, version, labels);
            return { version, createdAt: timestampFromDate(result.createdAt) };
          }
          known.delete(path);
          if (result.kind === "gone") continue;
          if (result.expired) {
            await store.purgeIfExpired(secret.secretId);
            cipher.forget(secret.secretId);
            if (cas !== undefined && cas !== 0) throw casMismatch(path, cas, 0);
            continue;
          }
          // Another replica gave the secret a fresh data key: read its row again.
          if (result.dataKeyId !== secret.dataKeyId) {
            if (cas !== undefined && result.latestVersion !== cas) throw casMismatch(path, cas, result.latestVersion);
            continue;
          }
          // cas compares with latest_version only: labels moved by a promotion
          // in between are not a mismatch, just a reason to write again.
          if (cas !== undefined && result.latestVersion !== cas) throw casMismatch(path, cas, result.latestVersion);
          const fresh = labelStateFromRow(result.labels);
          verifyLabels(secret.secretId, path, fresh, started);
          known.remember({ ...secret, latestVersion: result.latestVersion, labels: fresh });
          // Spread out writers that keep colliding on one hot path.
          if (attempt >= 2) await new Promise((r) => setTimeout(r, Math.random() * attempt));
        }
        throw new NexusError("aborted", `too many concurrent writes to "${path}"; retry`, { reason: "CONCURRENT_UPDATE" });
      } finally {
        plaintext.fill(0);
      }
    },

    async getSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const label = labelName(req.label, "label");
      if (label !== undefined && req.version !== 0) {
        throw NexusError.invalidArgument("label", "give a version or a label, not both", "VERSION_AND_LABEL");
      }
      if (req.version > MAX_VERSION) {
        throw new NexusError("not_found", `version ${req.version} of secret "${path}" does not exist`, { reason: "VERSION_NOT_FOUND" });
      }
      const byLabel = req.version === 0 ? (label ?? "current") : undefined;
      // The common case in one round trip: the read rides in the audit group
      // commit and its "ok" event is written only if it found a servable
      // version. The labels come from the same statement and are verified
      // before anything is decrypted.
      const started = freshness.start();
      const found = await ctx.audit.recordRead({ path, version: req.version, label: byLabel });
      if (found !== undefined) {
        // Re-wrapped under a key another replica created a moment ago: take it up first.
        if (!keys.hasWrappingKey(found.keyringKeyId)) await keys.refreshKeyring();
        const labels = labelStateFromRow(found.labels);
        verifyLabels(found.secretId, path, labels, started);
        const data = cipher.decryptVersion(found, found.version, found.ciphertext);
        return { path, version: found.version, data, createdAt: timestampFromDate(found.createdAt), labels: labelsOf(labels, found.version) };
      }
      // Nothing servable (or it appeared since): read again to serve it or say why not.
      const again = freshness.start();
      const row = await store.readVersion(path, req.version, byLabel);
      if (row === undefined || row.expired) throw notFound(path);
      const labels = labelStateFromRow(row);
      verifyLabels(row.id, path, labels, again);
      if (row.version === null) {
        if (byLabel === undefined) throw new NexusError("not_found", `version ${req.version} of secret "${path}" does not exist`, { reason: "VERSION_NOT_FOUND" });
        if (byLabel === "current") throw new NexusError("not_found", `secret "${path}" has no current version`, { reason: "NO_CURRENT_VERSION" });
        throw new NexusError("not_found", `no version of secret "${path}" is labelled ${byLabel.toUpperCase()}`, { reason: "LABEL_NOT_ASSIGNED" });
      }
      // A deleted or destroyed CURRENT version is NOT_FOUND, never an older
      // value in its place: put a new version, undelete it, promote one, or
      // read an older one by number.
      const gone = row.ciphertext === null ? "destroyed" : row.deletedAt !== null ? "deleted" : undefined;
      if (gone !== undefined && byLabel === "current") {
        throw new NexusError("not_found", `the current version (${row.version}) of secret "${path}" is ${gone}; read an older version by number, undelete it, promote one or put a new one`, {
          reason: "CURRENT_VERSION_DELETED",
        });
      }
      if (row.ciphertext === null) throw new NexusError("not_found", `version ${row.version} of secret "${path}" is destroyed`, { reason: "VERSION_DESTROYED" });
      if (gone === "deleted") throw new NexusError("not_found", `version ${row.version} of secret "${path}" is deleted`, { reason: "VERSION_DELETED" });
      if (!keys.hasWrappingKey(row.keyringKeyId)) await keys.refreshKeyring();
      const data = cipher.decryptVersion(
        { secretId: row.id, path: row.path, dataKeyId: row.dataKeyId, keyringKeyId: row.keyringKeyId, wrappedDataKey: row.wrappedDataKey },
        row.version,
        row.ciphertext,
      );
      return { path, version: row.version, data, createdAt: timestampFromDate(row.createdAt!), labels: labelsOf(labels, row.version) };
    },

    // Only paths the caller may list are returned. The scan is bounded, so a
    // page can come back short (even empty) with a token to continue from the
    // last path examined; only an empty token means the end. That path may be
    // one the caller may not see: the token is sealed (see secret-rules.ts).
    async listSecrets(req, ctx) {
      requireUnsealed();
      const prefix = validatePrefix(req.prefix);
      const size = pageSize(req.pageSize);
      const binding = { caller: ctx.caller.toString(), prefix };
      let after = decodePageToken(keys.integrityKey(), req.pageToken, binding);
      const page: string[] = [];
      let scanned = 0;
      for (;;) {
        const chunk = await store.listPaths(prefix, after, size + 1);
        let i = 0;
        for (; i < chunk.length && page.length < size; i++) {
          after = chunk[i];
          scanned++;
          if (ctx.access.mayList(chunk[i])) page.push(chunk[i]);
        }
        const moreRows = i < chunk.length || chunk.length === size + 1;
        if (!moreRows) return { paths: page, nextPageToken: "" };
        if (page.length === size || scanned >= LIST_SCAN_LIMIT) return { paths: page, nextPageToken: encodePageToken(keys.integrityKey(), binding, after) };
      }
    },

    async deleteSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      return { versions: await changeVersions(path, "delete", validateVersions(req.versions, false), req.versions.length > 0, ctx) };
    },

    async undeleteSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      return { versions: await changeVersions(path, "undelete", validateVersions(req.versions, true), req.versions.length > 0, ctx) };
    },

    async destroySecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      return { versions: await changeVersions(path, "destroy", validateVersions(req.versions, true), req.versions.length > 0, ctx) };
    },

    async getSecretMetadata(req) {
      requireUnsealed();
      const path = validatePath(req.path);
      return { metadata: await readMetadata(path) };
    },

    async updateSecretMetadata(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const mask = maskedFields(req.updateMask, UPDATABLE_FIELDS, ctx.wireFormat);
      const fields = [...mask];
      const maxVersions = mask.has("max_versions") ? validateMaxVersions(req.maxVersions) : undefined;
      const customMetadata = mask.has("custom_metadata") ? validateCustomMetadata(req.customMetadata) : undefined;
      const expiresAt = mask.has("expires_at") ? (req.expiresAt ? validateFutureTime(req.expiresAt, "expires_at") : null) : undefined;
      const policy = mask.has("rotation") && req.rotation !== undefined ? validatePolicy(req.rotation) : undefined;
      let rotation: { policy: Record<string, unknown>; mac: Buffer; nextRotationAt: Date | null } | null | undefined;
      if (mask.has("rotation")) {
        if (policy === undefined) {
          rotation = null;
        } else {
          // The MAC binds the policy to the secret's id: read it first (a rare admin write).
          const secret = await store.findByPath(path);
          if (secret === undefined || secret.expired) throw notFound(path);
          if (keys.sealed) throw keys.sealedError();
          const nextRotationAt = policy.generator.kind === "external" ? null : new Date(Date.now() + policy.period_ms);
          rotation = { policy: policy as unknown as Record<string, unknown>, mac: rotationMac(keys.activeIntegrityKey(), secret.id, path, policy), nextRotationAt };
        }
      }
      const updated = await store.updateMetadata(path, { maxVersions, customMetadata, expiresAt, rotation }, ctx.audit.prepare({ fields }));
      if (!updated) throw notFound(path);
      // Recorded as committed before anything else can fail: a later failure
      // gets an event of its own instead of a second one with this number.
      ctx.audit.markWritten();
      known.delete(path);
      return { metadata: await readMetadata(path) }; // NOT_FOUND if purged in between
    },

    async promoteSecretVersion(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      if (req.version < 1) throw NexusError.invalidArgument("version", "name the version to promote (versions are numbered from 1)", "INVALID_VERSION");
      const expected = req.expectedCurrentVersion;
      ctx.audit.subject(path, req.version);
      for (let attempt = 0; attempt < PROMOTE_ATTEMPTS; attempt++) {
        const started = freshness.start();
        const row = req.version > MAX_VERSION ? undefined : await store.readVersion(path, req.version);
        if (req.version > MAX_VERSION || (row !== undefined && !row.expired && row.version === null)) {
          throw new NexusError("not_found", `version ${req.version} of secret "${path}" does not exist`, { reason: "VERSION_NOT_FOUND" });
        }
        if (row === undefined || row.expired) throw notFound(path);
        const before = labelStateFromRow(row);
        verifyLabels(row.id, path, before, started);
        if (expected !== undefined && (before.current ?? 0) !== expected) {
          throw new NexusError("failed_precondition", `the current version of "${path}" is ${before.current ?? "none"}, not ${expected}; nothing was promoted`, {
            reason: "CURRENT_VERSION_MISMATCH",
          });
        }
        if (row.ciphertext === null || row.deletedAt !== null) {
          throw new NexusError("failed_precondition", `version ${req.version} of "${path}" is ${row.ciphertext === null ? "destroyed" : "deleted"}; only a live version can be promoted (undelete it first)`, {
            reason: "VERSION_NOT_LIVE",
          });
        }
        const respond = (l: LabelState) => ({ currentVersion: l.current ?? 0, previousVersion: l.previous ?? 0, pendingVersion: l.pending ?? 0 });
        if (before.current === req.version) return respond(before); // already CURRENT: nothing moves
        if (keys.sealed) throw keys.sealedError();
        const after = sealLabels(keys.activeIntegrityKey(), row.id, path, before, labelsAfterPromote(before, req.version), before.latestVersion);
        const writeStarted = freshness.start();
        const audit = recorded(ctx, ctx.audit.prepare({ previous_current: before.current }), respond(after));
        const result = await store.promote(row.id, req.version, { labelsMac: before.mac, latestVersion: before.latestVersion }, after, audit);
        if (result.kind === "gone") throw notFound(path);
        if (result.kind === "promoted") {
          ctx.audit.markWritten();
          freshness.accept(row.id, after.epoch, writeStarted);
          known.delete(path);
          return respond(after);
        }
        // Labels, latest version or the version's state changed in between: judge again.
      }
      throw new NexusError("aborted", `too many concurrent writes to "${path}"; retry`, { reason: "CONCURRENT_UPDATE" });
    },

    async rotateSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const g = req.generator;
      const generator =
        g.case === "randomPassword" ? validatePasswordGenerator(g.value, "random_password") : g.case === "randomBytes" ? validateBytesGenerator(g.value, "random_bytes") : undefined;
      if (req.dataKey !== "") validateDataKey(req.dataKey, "data_key");
      const stored = await store.rotationPolicy(path);
      if (stored === undefined) throw notFound(path);
      let policy: StoredPolicy | undefined;
      if (stored.policy !== null) {
        if (keys.sealed) throw keys.sealedError();
        policy = verifiedPolicy((id) => keys.integrityKeyForRow(id), stored.id, path, stored.policy, stored.mac);
        if (policy === undefined) {
          logger.error("rotation policy failed its integrity check; not rotated", { path });
          throw rotationPolicyAltered(path);
        }
      }
      const result = await deps.rotator.rotate({
        path,
        policy,
        generator: generator as Exclude<typeof generator, { kind: "external" }>,
        dataKey: req.dataKey || undefined,
        promote: req.promote,
        createdBy: ctx.caller.toString(),
        audit: ctx.audit,
        idempotency: ctx.idempotency,
      });
      known.delete(path);
      return result;
    },

    watchSecrets: watchSecrets(deps.watch),

    async purgeSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const id = await store.purge(path, ctx.audit.prepare());
      if (id === undefined) throw notFound(path);
      ctx.audit.markWritten();
      known.delete(path);
      cipher.forget(id);
      freshness.forget(id);
      return {};
    },
  });
}

/**
 * The change's audit row with the call's idempotency record attached, if the
 * call has an idempotency key: the store writes both in the change's statement.
 * `created_at` is left out of `response`: the record's own time is that time.
 */
function recorded(ctx: CallContext, audit: AuditRow, response: object): AuditRow {
  return ctx.idempotency === undefined ? audit : ctx.idempotency.attach(audit, response);
}

function notFound(path: string): NexusError {
  return new NexusError("not_found", `secret "${path}" does not exist`, { reason: "SECRET_NOT_FOUND" });
}

function casMismatch(path: string, cas: number, latest: number | undefined): NexusError {
  const actual = latest === undefined ? "it was written concurrently" : latest === 0 ? "it has no versions" : `its latest version is ${latest}`;
  return new NexusError("aborted", `check-and-set failed for "${path}": cas was ${cas} but ${actual}`, { reason: "CAS_MISMATCH" });
}

function ts(d: Date | null): Timestamp | undefined {
  return d === null ? undefined : timestampFromDate(d);
}

function toMetadata(row: SecretMetadataRow, labels: LabelState, policy: StoredPolicy | undefined): MessageInitShape<typeof SecretMetadataSchema> {
  const current = row.versions.find((v) => v.version === labels.current);
  // External rotation is due once CURRENT is one period old; a generated one when the scheduler's time comes.
  const nextRotationAt =
    policy === undefined ? null : policy.generator.kind === "external" ? (current ? new Date(current.createdAt.getTime() + policy.period_ms) : new Date()) : row.rotation.nextRotationAt;
  const externalDue = policy?.generator.kind === "external" && nextRotationAt !== null && nextRotationAt.getTime() <= Date.now();
  return {
    path: row.path,
    latestVersion: row.latestVersion,
    // The version a read without a version number or label addresses, deleted or not.
    currentVersion: labels.current ?? 0,
    oldestVersion: row.versions.length ? row.versions[0].version : 0,
    maxVersions: row.maxVersions,
    customMetadata: row.customMetadata,
    createdAt: ts(row.createdAt),
    updatedAt: ts(row.updatedAt),
    expiresAt: ts(row.expiresAt),
    versions: row.versions.map((v) => ({
      version: v.version, createdAt: ts(v.createdAt), deletedAt: ts(v.deletedAt), destroyed: v.destroyed, createdBy: v.createdBy, labels: labelsOf(labels, v.version),
    })),
    rotation: policy === undefined ? undefined : policyToProto(policy),
    nextRotationAt: ts(nextRotationAt),
    lastRotatedAt: ts(row.rotation.lastRotatedAt),
    rotationDue: externalDue || (labels.pending !== null && labels.pending > (labels.current ?? 0)),
  };
}
