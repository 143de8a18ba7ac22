// One rotation of one secret, for RotateSecret and the scheduler: read CURRENT
// and the labels in one statement (labels verified), fill the policy's data key
// with a generated value, copy the other keys, and write latest+1 as PENDING
// (or CURRENT when the policy promotes) with its audit event and the next due
// time, conditional on the labels it verified. A generated value is never
// logged; the plaintext buffers are zeroed once encrypted.

import { SecretLabel } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { CallAudit } from "../audit/audit-log.js";
import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { SecretCipher } from "../keys/secret-cipher.js";
import type { Logger } from "../log/logger.js";
import type { SecretStore } from "../store/secret-store.js";
import { checkLabels, labelStateFromRow, labelsAfterPut, labelsOf, sealLabels, type LabelFreshness } from "./secret-labels.js";
import { generateValue, type Generator, type StoredPolicy } from "./rotation-policy.js";
import { encodeData } from "./secret-rules.js";
import type { IdempotencyIntent } from "./idempotency.js";

/** Attempts before a rotation that keeps losing races to writers gives up. */
const ROTATE_ATTEMPTS = 10;

export interface RotationRequest {
  readonly path: string;
  /** The verified stored policy, if the secret has one. */
  readonly policy: StoredPolicy | undefined;
  /** Overrides from the request (RotateSecret); the scheduler gives none. */
  readonly generator?: Exclude<Generator, { kind: "external" }>;
  readonly dataKey?: string;
  readonly promote?: boolean;
  /** Who writes the version (a SPIFFE ID, or the scheduler's name). */
  readonly createdBy: string;
  readonly audit: CallAudit;
  readonly detail?: Record<string, unknown>;
  /** RotateSecret with an idempotency key: the record goes into the version's statement. */
  readonly idempotency?: IdempotencyIntent;
}

export interface SecretRotatorDeps {
  readonly keys: KeyManager;
  readonly cipher: SecretCipher;
  readonly store: SecretStore;
  readonly freshness: LabelFreshness;
  readonly logger: Logger;
  readonly maxSecretBytes: number;
}

export class SecretRotator {
  constructor(private readonly d: SecretRotatorDeps) {}

  /** Rotates once; resolves with the version written and its labels. */
  async rotate(r: RotationRequest): Promise<{ version: number; labels: SecretLabel[] }> {
    const { keys, cipher, store, freshness } = this.d;
    const generator = r.generator ?? (r.policy?.generator.kind === "external" ? undefined : r.policy?.generator);
    if (generator === undefined) {
      throw new NexusError(
        "failed_precondition",
        r.policy === undefined
          ? `secret "${r.path}" has no rotation policy; set one with UpdateSecretMetadata or give a generator in the request`
          : `secret "${r.path}" is rotated externally by its owner; put the new value, or give a generator in the request`,
        { reason: r.policy === undefined ? "NO_ROTATION_POLICY" : "EXTERNAL_ROTATION" },
      );
    }
    const dataKey = r.dataKey || r.policy?.data_key;
    if (!dataKey) throw NexusError.invalidArgument("data_key", "name the data key the generated value is written to", "INVALID_DATA_KEY");
    const stage = (r.promote ?? r.policy?.promote ?? false) ? "current" : "pending";
    const nextRotationAt = r.policy !== undefined && r.policy.generator.kind !== "external" ? new Date(Date.now() + r.policy.period_ms) : null;

    for (let attempt = 0; attempt < ROTATE_ATTEMPTS; attempt++) {
      const started = freshness.start();
      const row = await store.readVersion(r.path, 0, "current");
      if (row === undefined || row.expired) throw new NexusError("not_found", `secret "${r.path}" does not exist`, { reason: "SECRET_NOT_FOUND" });
      const before = labelStateFromRow(row);
      // Re-wrapped under a key another replica created a moment ago: take it up first.
      if (!keys.sealed && !keys.hasWrappingKey(row.keyringKeyId)) await keys.refreshKeyring();
      if (keys.sealed) throw keys.sealedError();
      checkLabels((id) => keys.integrityKeyForRow(id), freshness, row.id, row.path, before, started, (why) => this.d.logger.error("secret labels failed their integrity check", { path: r.path, why }));
      const ref = { secretId: row.id, path: row.path, dataKeyId: row.dataKeyId, keyringKeyId: row.keyringKeyId, wrappedDataKey: row.wrappedDataKey };
      // Other keys come from CURRENT when it is servable; a deleted or destroyed
      // CURRENT contributes nothing (its data is not to be revived).
      let data: Record<string, string> = {};
      if (row.version !== null && row.ciphertext !== null && row.deletedAt === null) {
        const current = cipher.decryptVersion(ref, row.version, row.ciphertext);
        data = { ...current };
      }
      data[dataKey] = generateValue(generator);
      const plaintext = encodeData(data, this.d.maxSecretBytes);
      const version = row.latestVersion + 1;
      try {
        const ciphertext = cipher.encryptVersion(ref, cipher.dataKey(ref), version, plaintext);
        if (keys.sealed) throw keys.sealedError();
        const after = sealLabels(keys.activeIntegrityKey(), row.id, row.path, before, labelsAfterPut(before, version, stage), version);
        r.audit.subject(r.path, version);
        const writeStarted = freshness.start();
        const result = await store.appendRotatedVersion(
          { secretId: row.id, dataKeyId: row.dataKeyId, version, ciphertext, createdBy: r.createdBy, expiresAt: undefined, labels: after, expectedLabelsMac: before.mac },
          attachRecord(r, r.audit.prepare({ ...r.detail, stage, generator: generator.kind, data_key: dataKey }), { version, labels: labelsOf(after, version) }),
          { nextRotationAt },
        );
        if (result.kind === "written") {
          r.audit.markWritten();
          freshness.accept(row.id, after.epoch, writeStarted);
          return { version, labels: labelsOf(after, version) };
        }
        if (result.kind === "gone") throw new NexusError("not_found", `secret "${r.path}" does not exist`, { reason: "SECRET_NOT_FOUND" });
      } finally {
        plaintext.fill(0);
      }
      // Lost a race with a put, a promotion or another rotation: read again.
    }
    throw new NexusError("aborted", `too many concurrent writes to "${r.path}"; retry`, { reason: "CONCURRENT_UPDATE" });
  }
}

function attachRecord(r: RotationRequest, audit: AuditRow, response: object): AuditRow {
  return r.idempotency === undefined ? audit : r.idempotency.attach(audit, response);
}
