// SecretService: versioned secrets with Vault KV v2 semantics. Handlers guard
// first (sealed? valid request?), then encrypt or decrypt through keys/ and read
// or write through store/. Every write is one conditional statement; a put that
// loses a race is retried with the version the database reported, or ABORTED
// when the caller asked for check-and-set.

import { randomUUID } from "node:crypto";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { SecretService, type SecretMetadataSchema } from "../../gen/spike/nexus/v1/secret_pb.js";
import { NexusError } from "../errors/nexus-error.js";
import { ownedCopy } from "../keys/aead.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { DataKeyRef, SecretCipher } from "../keys/secret-cipher.js";
import type { AppendResult, SecretMetadataRow, SecretStore, VersionChange } from "../store/secret-store.js";
import type { AuditRow } from "../audit/audit-event.js";
import { registerService, type CallContext, type ServiceRegistration } from "../transport/call-context.js";
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

export interface SecretServiceDeps {
  readonly keys: KeyManager;
  readonly cipher: SecretCipher;
  readonly store: SecretStore;
  readonly maxSecretBytes: number;
  /** How many paths' key references a replica remembers for one-round-trip puts. */
  readonly knownSecretsLimit?: number;
}

interface KnownSecret extends Omit<DataKeyRef, "wrappedDataKey"> {
  wrappedDataKey: Buffer;
  latestVersion: number;
  /** The wrapping key active when its data key was made: older than the active one means a rotation since. */
  dataKeyOriginKeyId: number;
}

/** An unconditional put retries while it keeps losing races; the database reports the fresh version each time. */
const PUT_ATTEMPTS = 50;
/** Rows one ListSecrets call may examine for a caller whose policies hide most paths. */
const LIST_SCAN_LIMIT = 5000;
const UPDATABLE_FIELDS = ["max_versions", "custom_metadata", "expires_at"];

export function secretService(deps: SecretServiceDeps): ServiceRegistration {
  const { keys, cipher, store } = deps;
  const known = new Map<string, KnownSecret>();
  const knownLimit = deps.knownSecretsLimit ?? 10_000;
  keys.onSealChange((sealed) => sealed && known.clear());

  const remember = (s: KnownSecret) => {
    known.delete(s.path);
    // Rows' buffers are slices of the driver's receive buffer: keep our own copy.
    if (s.wrappedDataKey.buffer.byteLength !== s.wrappedDataKey.byteLength) s.wrappedDataKey = ownedCopy(s.wrappedDataKey);
    known.set(s.path, s);
    if (known.size > knownLimit) known.delete(known.keys().next().value as string);
  };

  const lookup = async (path: string): Promise<KnownSecret | undefined> => {
    const row = await store.findByPath(path);
    if (row === undefined) return undefined;
    if (row.expired) {
      await store.purgeIfExpired(row.id);
      cipher.forget(row.id);
      return undefined;
    }
    const s: KnownSecret = { secretId: row.id, path, dataKeyId: row.dataKeyId, keyringKeyId: row.keyringKeyId, wrappedDataKey: row.wrappedDataKey, latestVersion: row.latestVersion, dataKeyOriginKeyId: row.dataKeyOriginKeyId };
    remember(s);
    return s;
  };

  const appendWithFreshDataKey = async (secret: KnownSecret, version: number, plaintext: Buffer, createdBy: string, expiresAt: Date | undefined, audit: AuditRow): Promise<AppendResult> => {
    const read = await store.keyAndLiveCiphertexts(secret.secretId);
    // Gone, or its data key replaced or re-wrapped since it was remembered: read the row again.
    if (read === undefined || read.key.dataKeyId !== secret.dataKeyId || !read.key.wrappedDataKey.equals(secret.wrappedDataKey)) return { kind: "gone" };
    if (!keys.hasWrappingKey(read.key.keyringKeyId)) return { kind: "gone" };
    const replaced = cipher.replaceDataKey(secret, read.versions);
    const ciphertext = cipher.encryptVersion({ secretId: secret.secretId, path: secret.path, dataKeyId: replaced.key.dataKeyId }, replaced.key.dataKey, version, plaintext);
    const key = { previousDataKeyId: secret.dataKeyId, dataKeyId: replaced.key.dataKeyId, wrappedDataKey: replaced.key.wrappedDataKey, keyringKeyId: replaced.key.keyringKeyId };
    const result = await store.appendWithNewDataKey({ secretId: secret.secretId, dataKeyId: secret.dataKeyId, version, ciphertext, createdBy, expiresAt }, key, replaced.versions, audit);
    if (result.kind === "written") {
      Object.assign(secret, { dataKeyId: key.dataKeyId, wrappedDataKey: key.wrappedDataKey, keyringKeyId: key.keyringKeyId, dataKeyOriginKeyId: key.keyringKeyId });
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

  return registerService(SecretService, {
    async putSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const expiresAt = req.expiresAt ? validateFutureTime(req.expiresAt, "expires_at") : undefined;
      const plaintext = encodeData(req.data, deps.maxSecretBytes);
      const cas = req.cas;
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
            ctx.audit.subject(path, 1);
            const createdAt = await store.insertNew({
              id, path, maxVersions: DEFAULT_MAX_VERSIONS, dataKeyId: dk.dataKeyId, wrappedDataKey: dk.wrappedDataKey,
              keyringKeyId: dk.keyringKeyId, expiresAt, ciphertext, createdBy: ctx.caller.toString(),
            }, ctx.audit.prepare());
            if (createdAt !== undefined) {
              ctx.audit.markWritten();
              remember({ secretId: id, path, dataKeyId: dk.dataKeyId, keyringKeyId: dk.keyringKeyId, wrappedDataKey: dk.wrappedDataKey, latestVersion: 1, dataKeyOriginKeyId: dk.keyringKeyId });
              return { version: 1, createdAt: timestampFromDate(createdAt) };
            }
            cipher.forget(id);
            if (cas === 0) throw casMismatch(path, 0, undefined);
            continue; // created concurrently: write the next version instead
          }
          if (cas === 0) throw casMismatch(path, 0, secret.latestVersion);
          const version = (cas ?? secret.latestVersion) + 1;
          ctx.audit.subject(path, version);
          let result: AppendResult;
          if (secret.dataKeyOriginKeyId < keys.activeWrappingKey().id) {
            // The first write after a key rotation: a fresh data key, every live version re-encrypted under it.
            result = await appendWithFreshDataKey(secret, version, plaintext, ctx.caller.toString(), expiresAt, ctx.audit.prepare());
          } else {
            const ciphertext = cipher.encryptVersion(secret, cipher.dataKey(secret), version, plaintext);
            result = await store.appendVersion({ secretId: secret.secretId, dataKeyId: secret.dataKeyId, version, ciphertext, createdBy: ctx.caller.toString(), expiresAt }, ctx.audit.prepare());
          }
          if (result.kind === "written") {
            ctx.audit.markWritten();
            secret.latestVersion = version;
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
          if (cas !== undefined) throw casMismatch(path, cas, result.latestVersion);
          secret.latestVersion = result.latestVersion;
          remember(secret);
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
      if (req.version > MAX_VERSION) {
        throw new NexusError("not_found", `version ${req.version} of secret "${path}" does not exist`, { reason: "VERSION_NOT_FOUND" });
      }
      // The common case in one round trip: the read rides in the audit group
      // commit and its "ok" event is written only if it found a servable version.
      const found = await ctx.audit.recordRead({ path, version: req.version });
      if (found !== undefined) {
        // Re-wrapped under a key another replica created a moment ago: take it up first.
        if (!keys.hasWrappingKey(found.keyringKeyId)) await keys.refreshKeyring();
        const data = cipher.decryptVersion(found, found.version, found.ciphertext);
        return { path, version: found.version, data, createdAt: timestampFromDate(found.createdAt) };
      }
      // Nothing servable (or it appeared since): read again to serve it or say why not.
      const row = await store.readVersion(path, req.version);
      if (row === undefined || row.expired) throw notFound(path);
      if (row.version === null) {
        throw req.version === 0
          ? new NexusError("not_found", `secret "${path}" has no current version`, { reason: "NO_CURRENT_VERSION" })
          : new NexusError("not_found", `version ${req.version} of secret "${path}" does not exist`, { reason: "VERSION_NOT_FOUND" });
      }
      // A deleted or destroyed current version is NOT_FOUND, never an older
      // value in its place: put a new version, undelete it, or read an older
      // one by number.
      const gone = row.ciphertext === null ? "destroyed" : row.deletedAt !== null ? "deleted" : undefined;
      if (gone !== undefined && req.version === 0) {
        throw new NexusError("not_found", `the current version (${row.version}) of secret "${path}" is ${gone}; read an older version by number, undelete it or put a new one`, {
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
      return { path, version: row.version, data, createdAt: timestampFromDate(row.createdAt!) };
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
      const row = await store.metadata(path);
      if (row === undefined) throw notFound(path);
      return { metadata: toMetadata(row) };
    },

    async updateSecretMetadata(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const mask = maskedFields(req.updateMask, UPDATABLE_FIELDS, ctx.wireFormat);
      const fields = [...mask];
      const updated = await store.updateMetadata(
        path,
        {
          maxVersions: mask.has("max_versions") ? validateMaxVersions(req.maxVersions) : undefined,
          customMetadata: mask.has("custom_metadata") ? validateCustomMetadata(req.customMetadata) : undefined,
          expiresAt: mask.has("expires_at") ? (req.expiresAt ? validateFutureTime(req.expiresAt, "expires_at") : null) : undefined,
        },
        ctx.audit.prepare({ fields }),
      );
      if (!updated) throw notFound(path);
      // Recorded as committed before anything else can fail: a later failure
      // gets an event of its own instead of a second one with this number.
      ctx.audit.markWritten();
      known.delete(path);
      const row = await store.metadata(path);
      if (row === undefined) throw notFound(path); // purged in between
      return { metadata: toMetadata(row) };
    },

    async purgeSecret(req, ctx) {
      requireUnsealed();
      const path = validatePath(req.path);
      const id = await store.purge(path, ctx.audit.prepare());
      if (id === undefined) throw notFound(path);
      ctx.audit.markWritten();
      known.delete(path);
      cipher.forget(id);
      return {};
    },
  });
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

function toMetadata(row: SecretMetadataRow): MessageInitShape<typeof SecretMetadataSchema> {
  return {
    path: row.path,
    latestVersion: row.latestVersion,
    // The version a read without a version number addresses, deleted or not.
    currentVersion: row.latestVersion,
    oldestVersion: row.versions.length ? row.versions[0].version : 0,
    maxVersions: row.maxVersions,
    customMetadata: row.customMetadata,
    createdAt: ts(row.createdAt),
    updatedAt: ts(row.updatedAt),
    expiresAt: ts(row.expiresAt),
    versions: row.versions.map((v) => ({ version: v.version, createdAt: ts(v.createdAt), deletedAt: ts(v.deletedAt), destroyed: v.destroyed, createdBy: v.createdBy })),
  };
}
