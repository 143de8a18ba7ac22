// OperatorService: the server's own state and its administration. GetStatus
// tells any valid SVID of the trust domain who it is; Initialize, Unseal and
// Seal drive the key hierarchy; Login/Logout and admin tokens issue the admin
// credentials; ListAuditEvents and VerifyAuditLog read the audit log. Who may
// call what is decided in authorization/, not here.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import {
  AuditOutcome,
  AuditProblemKind,
  OperatorService,
  RotationPhase,
  SealScope,
  type AdminTokenSchema,
  type AuditEventSchema,
} from "../../gen/spike/nexus/v1/operator_pb.js";
import { CHECKPOINT_SET, type AuditLog } from "../audit/audit-log.js";
import type { AuditVerifier, ProblemKind } from "../audit/audit-verifier.js";
import type { AuditOutcome as Outcome } from "../audit/audit-event.js";
import { CREDENTIAL_SET, type AdminCredentials } from "../authorization/admin-credentials.js";
import type { GrantEpochs } from "../keys/grant-epochs.js";
import { POLICY_SET, type PolicySync } from "../authorization/policy-sync.js";
import type { PasswordAttempts } from "../authorization/password-attempts.js";
import { NexusError } from "../errors/nexus-error.js";
import { validatePassword, type KeyManager } from "../keys/key-manager.js";
import type { RootKeyStore } from "../store/root-key-store.js";
import type { AuditStore, StoredAuditRow } from "../store/audit-store.js";
import type { CredentialRow, CredentialStore } from "../store/credential-store.js";
import type { GrantEpochStore } from "../store/grant-epoch-store.js";
import type { PolicyStore } from "../store/policy-store.js";
import type { KeyRotationStore, RotationPhaseName, RotationRow } from "../store/key-rotation-store.js";
import type { KeyRotation } from "./key-rotation.js";
import { isStorableText } from "../store/storable-text.js";
import { registerService, type ServiceRegistration } from "../calls/call-context.js";
import { sleep } from "../timing/backoff.js";
import { NEXUS_VERSION } from "../version.js";
import { pageSize, validateTime } from "./secret-rules.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const SESSION_TTL = { default: HOUR, max: 12 * HOUR };
const TOKEN_TTL = { default: 30 * DAY, max: 365 * DAY };
const TOKEN_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** Longer than any SPIFFE ID, path or RPC name a filter can match. */
const MAX_AUDIT_FILTER_LENGTH = 2048;

export interface OperatorDeps {
  readonly trustDomain: string;
  readonly keys: KeyManager;
  readonly initialized: () => Promise<boolean>;
  readonly credentials: AdminCredentials;
  readonly credentialStore: CredentialStore;
  readonly attempts: PasswordAttempts;
  readonly auditStore: AuditStore;
  readonly auditLog: AuditLog;
  readonly verifier: AuditVerifier;
  readonly epochs: GrantEpochs;
  readonly grantStore: GrantEpochStore;
  readonly policyStore: PolicyStore;
  readonly policySync: PolicySync;
  readonly rotation: KeyRotation;
  readonly rootKeys: RootKeyStore;
  readonly rotationStore: KeyRotationStore;
  readonly sealing: SealCoordinator;
}

/** Seal's scopes and the cluster seal (server/peer-unseal.ts, ADR 0012). */
export interface SealCoordinator {
  /** Seals this replica; its peers do not unseal it again until it restarts or is unsealed. */
  sealReplica(): void;
  /** Records and broadcasts a cluster seal, then seals this replica. */
  sealCluster(by: string): Promise<void>;
  /**
   * Runs `unseal` (the admin password checked), then lifts a cluster seal so
   * the other replicas follow; a cluster seal seen meanwhile does not seal
   * this replica again.
   */
  unsealWithPassword(by: string, unseal: () => Promise<void>): Promise<void>;
}

const PHASE_TO_PROTO: Record<RotationPhaseName, RotationPhase> = {
  creating_keys: RotationPhase.CREATING_KEYS,
  rewrapping: RotationPhase.REWRAPPING,
  remacing: RotationPhase.REMACING,
  retiring: RotationPhase.RETIRING,
  done: RotationPhase.DONE,
};
/** How often an attached stream reads the rotation's progress (it may run on another replica). */
const PROGRESS_INTERVAL_MS = 250;

const OUTCOME_TO_PROTO: Record<Outcome, AuditOutcome> = { ok: AuditOutcome.OK, denied: AuditOutcome.DENIED, error: AuditOutcome.ERROR };
const OUTCOME_FROM_PROTO: Partial<Record<AuditOutcome, Outcome>> = { [AuditOutcome.OK]: "ok", [AuditOutcome.DENIED]: "denied", [AuditOutcome.ERROR]: "error" };
const PROBLEM_TO_PROTO: Record<ProblemKind, AuditProblemKind> = {
  altered: AuditProblemKind.ALTERED,
  inserted: AuditProblemKind.INSERTED,
  deleted: AuditProblemKind.DELETED,
  reordered: AuditProblemKind.REORDERED,
  duplicated: AuditProblemKind.DUPLICATED,
  crash_gap: AuditProblemKind.CRASH_GAP,
};

export function operatorService(deps: OperatorDeps): ServiceRegistration {
  const { keys, credentials } = deps;
  return registerService(OperatorService, {
    async getStatus(_req, ctx) {
      const status = {
        version: NEXUS_VERSION,
        initialized: await deps.initialized(),
        sealed: keys.sealed,
        trustDomain: deps.trustDomain,
        callerSpiffeId: ctx.caller.toString(),
        activeKeyringKeyId: keys.activeKeyringKeyId,
      };
      // The admin view: authorization granted it (superuser SVID and a live admin credential).
      if (ctx.access.credential === undefined || keys.sealed) return status;
      const [perKey, running] = await Promise.all([deps.rotationStore.dataKeysPerWrappingKey(), deps.rotationStore.running()]);
      return {
        ...status,
        rootKeyId: keys.rootKeyId,
        keyring: keys.keyringIds().map((k) => ({ ...k, dataKeys: BigInt(k.purpose === "wrapping" ? (perKey.get(k.id) ?? 0) : 0) })),
        rotation: running && {
          rotationId: BigInt(running.id),
          phase: PHASE_TO_PROTO[running.phase],
          done: BigInt(running.done),
          total: BigInt(Math.max(running.total, running.done)),
          startedAt: timestampFromDate(running.startedAt),
          startedBy: running.startedBy,
        },
      };
    },

    async initialize(req) {
      return keys.initialize(req.adminPassword);
    },

    async unseal(req, ctx) {
      // A person with the password decides: a cluster seal ends here.
      await deps.sealing.unsealWithPassword(ctx.caller.toString(), () => deps.attempts.guard(ctx.caller, () => keys.unseal(req.adminPassword)));
      if (req.acceptRestoredState) {
        const { epochs } = deps;
        const adopted = await deps.grantStore.acceptStored(
          { adopt: (tx) => deps.policyStore.adopt((epoch, rows) => epochs.adopt(POLICY_SET, epoch, rows), tx) },
          { adopt: (tx) => deps.credentialStore.adopt((epoch) => epochs.adopt(CREDENTIAL_SET, epoch, []), tx) },
          { adopt: (tx) => deps.auditStore.adoptCheckpoints((epoch, latest) => epochs.adopt(CHECKPOINT_SET, epoch, latest), tx) },
          ctx.audit.prepare({ acceptRestoredState: true }),
        );
        ctx.audit.markWritten();
        epochs.advance("policies", adopted.policies, true);
        epochs.advance("admin_credentials", adopted.credentials, true);
        epochs.advance("audit_checkpoints", adopted.checkpoints, true);
        await deps.policySync.reload();
      }
      return { activeKeyringKeyId: keys.activeKeyringKeyId };
    },

    async seal(req, ctx) {
      if (req.scope === SealScope.CLUSTER) await deps.sealing.sealCluster(ctx.caller.toString());
      else if (req.scope === SealScope.REPLICA || req.scope === SealScope.UNSPECIFIED) deps.sealing.sealReplica();
      else throw NexusError.invalidArgument("scope", "must be SEAL_SCOPE_REPLICA or SEAL_SCOPE_CLUSTER", "INVALID_SEAL_SCOPE");
      return {};
    },

    async login(req, ctx) {
      if (keys.sealed) throw new NexusError("failed_precondition", "Nexus is sealed: unseal it before logging in", { reason: "SEALED" });
      const ttl = ttlMs(req.ttl, SESSION_TTL, "ttl");
      await deps.attempts.guard(ctx.caller, () => keys.verifyPassword(req.adminPassword));
      const { token, record } = await credentials.issue("session", ctx.caller, ttl, null, ctx.audit.prepare({ ttlSeconds: ttl / 1000 }));
      ctx.audit.markWritten();
      return { sessionToken: token, expiresAt: timestampFromDate(record.expiresAt) };
    },

    async logout(_req, ctx) {
      if (ctx.access.credential?.kind !== "session") {
        throw new NexusError("failed_precondition", "Logout ends a session; revoke admin tokens with RevokeAdminToken", { reason: "NOT_A_SESSION" });
      }
      if (await credentials.revokeSession(ctx.bearerToken!, ctx.audit.prepare())) ctx.audit.markWritten();
      return {};
    },

    async createAdminToken(req, ctx) {
      if (!TOKEN_NAME.test(req.name)) throw NexusError.invalidArgument("name", "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'", "INVALID_TOKEN_NAME");
      const ttl = ttlMs(req.ttl, TOKEN_TTL, "ttl");
      const { token, record } = await credentials.issue("token", ctx.caller, ttl, req.name, ctx.audit.prepare({ name: req.name, ttlSeconds: ttl / 1000 }));
      ctx.audit.markWritten();
      return { token, adminToken: adminToken(record) };
    },

    async listAdminTokens() {
      return { adminTokens: (await credentials.listTokens()).map(adminToken) };
    },

    async revokeAdminToken(req, ctx) {
      if (!TOKEN_NAME.test(req.name)) throw NexusError.invalidArgument("name", "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'", "INVALID_TOKEN_NAME");
      if (!(await credentials.revokeToken(req.name, ctx.audit.prepare({ name: req.name })))) {
        throw new NexusError("not_found", `no admin token named "${req.name}"`, { reason: "TOKEN_NOT_FOUND" });
      }
      ctx.audit.markWritten();
      return {};
    },

    async listAuditEvents(req) {
      const size = pageSize(req.pageSize);
      const after = req.pageToken === "" ? undefined : decodeAuditToken(req.pageToken);
      const from = req.startTime ? validateTime(req.startTime, "start_time") : undefined;
      const to = req.endTime ? validateTime(req.endTime, "end_time") : undefined;
      if (from && to && from.getTime() > to.getTime()) throw NexusError.invalidArgument("end_time", "must not be before start_time", "INVALID_TIME_RANGE");
      const rows = await deps.auditStore.list(
        {
          from,
          to,
          caller: auditFilter(req.callerSpiffeId, "caller_spiffe_id"),
          pathPrefix: auditFilter(req.pathPrefix, "path_prefix"),
          rpc: auditFilter(req.rpc, "rpc"),
          outcome: OUTCOME_FROM_PROTO[req.outcome],
        },
        after,
        size + 1,
      );
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      const verified = await deps.verifier.authenticate(page);
      return {
        events: page.map((e, i) => ({ ...auditEvent(e), verified: verified[i] })),
        nextPageToken: rows.length > size ? Buffer.from(JSON.stringify({ t: last.time.toISOString(), i: last.id })).toString("base64url") : "",
      };
    },

    async *rotateEncryptionKey(req, ctx) {
      if (keys.sealed) throw keys.sealedError();
      const { rotation, started } = await deps.rotation.start(ctx.caller.toString(), req.reencrypt, ctx.audit.prepare({ reencrypt: req.reencrypt }));
      if (started) ctx.audit.markWritten();
      // Progress is read from the database: the rotation may be driven by
      // another replica, and leaving this stream does not stop it.
      let last: RotationRow = rotation;
      let sample = { at: Date.now(), done: rotation.done };
      let rate = 0;
      yield progress(last, rate);
      while (last.phase !== "done" && !ctx.signal?.aborted) {
        await sleep(PROGRESS_INTERVAL_MS, ctx.signal);
        if (ctx.signal?.aborted) return;
        const now = await deps.rotationStore.byId(rotation.id);
        if (now === undefined) return;
        const elapsed = Date.now() - sample.at;
        if (elapsed >= 1000 || now.phase !== last.phase) {
          rate = now.done >= sample.done && elapsed > 0 ? ((now.done - sample.done) * 1000) / elapsed : rate;
          sample = { at: Date.now(), done: now.done };
        }
        if (now.phase !== last.phase || now.done !== last.done || now.total !== last.total) yield progress(now, rate);
        last = now;
      }
    },

    async rotateRootKey(req, ctx) {
      if (keys.sealed) throw keys.sealedError();
      if (req.adminPassword === "") throw NexusError.invalidArgument("admin_password", "must not be empty", "EMPTY_PASSWORD");
      const rootKeyId = await deps.attempts.guard(ctx.caller, () =>
        keys.rotateRootKey(req.adminPassword, (oldId, root, keyring) => deps.rootKeys.replaceRootKey(oldId, root, keyring, ctx.audit.prepare({ oldRootKeyId: oldId, rootKeyId: root.id }))),
      );
      ctx.audit.markWritten();
      return { rootKeyId };
    },

    async changeAdminPassword(req, ctx) {
      if (keys.sealed) throw keys.sealedError();
      if (req.currentPassword === "") throw NexusError.invalidArgument("current_password", "must not be empty", "EMPTY_PASSWORD");
      validatePassword(req.newPassword, "new_password");
      if (req.newPassword === req.currentPassword) throw NexusError.invalidArgument("new_password", "must differ from current_password", "PASSWORD_UNCHANGED");
      await deps.attempts.guard(ctx.caller, () =>
        keys.changePassword(req.currentPassword, req.newPassword, (root, expected) => deps.rootKeys.resealRootKey(root, expected, ctx.audit.prepare({ sessionsRevoked: true }))),
      );
      ctx.audit.markWritten();
      // Sessions were opened with the old password: they end. Admin tokens stay (automation).
      const sessionsRevoked = await credentials.revokeAllSessions();
      return { sessionsRevoked };
    },

    async verifyAuditLog(req) {
      // A checkpoint refused because the stored checkpoints were tampered with
      // is what the verification below reports; it must not stop it.
      await deps.auditLog.checkpoint().catch(() => {});
      const report = await deps.verifier.verify({
        from: req.startTime ? validateTime(req.startTime, "start_time") : undefined,
        to: req.endTime ? validateTime(req.endTime, "end_time") : undefined,
      });
      return {
        eventsChecked: BigInt(report.eventsChecked),
        eventsUnsealed: BigInt(report.eventsSigned),
        problems: report.problems.map((p) => ({ kind: PROBLEM_TO_PROTO[p.kind], replicaId: p.replicaId, sequence: BigInt(p.sequence), description: p.description })),
      };
    },
  });
}

function progress(r: RotationRow, keysPerSecond: number) {
  return {
    rotationId: BigInt(r.id),
    phase: PHASE_TO_PROTO[r.phase],
    done: BigInt(r.done),
    total: BigInt(Math.max(r.total, r.done)),
    keysPerSecond,
    oldKeyId: r.oldWrappingKeyId,
    newKeyId: r.newWrappingKeyId,
  };
}


function ttlMs(ttl: Duration | undefined, limits: { default: number; max: number }, field: string): number {
  if (ttl === undefined) return limits.default;
  const ms = durationMs(ttl);
  if (ms < 1000 || ms > limits.max) throw NexusError.invalidArgument(field, `must be between 1 s and ${limits.max / HOUR} h`, "INVALID_TTL");
  return ms;
}

function adminToken(r: CredentialRow): MessageInitShape<typeof AdminTokenSchema> {
  return {
    name: r.name ?? "",
    createdBy: r.spiffeId,
    createdAt: timestampFromDate(r.createdAt),
    expiresAt: timestampFromDate(r.expiresAt),
    lastActivity: timestampFromDate(r.lastActivity),
  };
}

function auditEvent(e: StoredAuditRow): MessageInitShape<typeof AuditEventSchema> {
  return {
    replicaId: e.replicaId,
    sequence: BigInt(e.sequence),
    time: timestampFromDate(e.time),
    requestId: e.requestId,
    callerSpiffeId: e.caller,
    rpc: e.rpc,
    path: e.path ?? "",
    version: e.version ?? 0,
    outcome: OUTCOME_TO_PROTO[e.outcome],
    code: e.code,
    detailJson: JSON.stringify(e.detail),
  };
}

function decodeAuditToken(token: string): { time: Date; id: number } {
  try {
    const { t, i } = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { t: string; i: number };
    const time = new Date(t);
    if (Number.isNaN(time.getTime()) || !Number.isSafeInteger(i)) throw new Error("bad token");
    return { time, id: i };
  } catch {
    throw NexusError.invalidArgument("page_token", "is not a token this server issued", "INVALID_PAGE_TOKEN");
  }
}

/** A text filter of ListAuditEvents: empty means none; refused if the database could not compare it. */
function auditFilter(value: string, field: string): string | undefined {
  if (value === "") return undefined;
  if (value.length > MAX_AUDIT_FILTER_LENGTH) throw NexusError.invalidArgument(field, `must be at most ${MAX_AUDIT_FILTER_LENGTH} characters`, "INVALID_FILTER");
  if (!isStorableText(value)) throw NexusError.invalidArgument(field, "must not contain NUL or unpaired surrogate characters", "INVALID_FILTER");
  return value;
}
