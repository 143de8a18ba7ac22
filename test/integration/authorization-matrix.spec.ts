// Who may call what, over the wire, on both listeners: every RPC of
// OperatorService, PolicyService and SecretService against every kind of caller,
// as one matrix, including near misses that only whole-string matching refuses
// (IDs that extend the superuser's or a policy's ID, a pattern matching only the
// start of a path). Then what a matrix cannot show: listing filtered across pages,
// linear-time patterns, patterns that do not compile, case-insensitive names,
// policy rows written behind Nexus's back, a second replica picking up a
// policy change, and sealed ListSecrets page tokens.

import { expect } from "chai";
import type { DescMethod, DescMethodServerStreaming, DescMethodUnary, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { randomBytes } from "node:crypto";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { CallResult, NexusClient, StreamFailure } from "../../src/client/nexus-client.js";
import { createAdminToken, createPolicy, exactly, forEachConcurrently, issueSvid, login, spiffeId } from "../support/admin-fixtures.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import type { IssuedCert } from "../support/test-pki.js";
import { LISTENERS, SUPERUSER_ID, startTestServer, type Listener, type TestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

const OTHER_SUPERUSER_ID = spiffeId("spike/pilot/role/other");
const MINUTE = 60_000;
const CALL = { deadlineMs: 15_000 };

/** A unary call, or a server stream read to its end: OK with its last message, or the failure it ended with. */
async function callAny(client: NexusClient, method: DescMethodUnary, request: MessageInitShape<DescMethodUnary["input"]>, options: typeof CALL & { bearerToken?: string }): Promise<CallResult<DescMethodUnary>> {
  if ((method as DescMethod).methodKind !== "server_streaming") return client.call(method, request, options);
  let last: MessageShape<DescMethodUnary["output"]> | undefined;
  try {
    for await (const m of client.stream(method as unknown as DescMethodServerStreaming, request, options)) last = m as never;
  } catch (err) {
    const f = err as StreamFailure;
    return { code: f.code, message: f.message, reason: f.reason, violations: f.violations };
  }
  return { code: "OK", response: last! };
}

// ---------------------------------------------------------------------------
// The matrix. Columns are callers; each row is one RPC.
//   ok      allowed: the RPC runs (its own result is the row's `allowed` code)
//   UNAUTH  UNAUTHENTICATED: the superuser without a live admin credential of its own
//   DENIED  PERMISSION_DENIED: the caller may not call this RPC (on this path)
// The superuser columns differ only in the `authorization: Bearer` credential
// sent. Workloads present a stolen, live admin session: it must not matter.
// ---------------------------------------------------------------------------

const COLUMNS = [
  "session", "none", "expiredSession", "expiredToken", "revokedSession", "revokedToken", "othersToken",
  "read", "write", "list", "super", "elsewhere", "noPolicy",
  "suffixedSuperuser", "nestedSuperuser", "nestedReader", "partialPath",
] as const;
type Column = (typeof COLUMNS)[number];

const COLUMN_TITLES: Record<Column, string> = {
  session: "superuser with an admin session",
  none: "superuser without a credential",
  expiredSession: "superuser with an expired session",
  expiredToken: "superuser with an expired admin token",
  revokedSession: "superuser with a session ended by Logout",
  revokedToken: "superuser with a revoked admin token",
  othersToken: "superuser with another identity's session",
  read: "workload with READ on the path",
  write: "workload with WRITE on the path",
  list: "workload with LIST on the path",
  super: "workload with SUPER on the path",
  elsewhere: "workload with SUPER on another path",
  noPolicy: "workload with no policy",
  suffixedSuperuser: "workload whose ID is the superuser's plus a suffix (…/role/superuser2)",
  nestedSuperuser: "workload whose ID is below the superuser's (…/role/superuser/x)",
  nestedReader: "workload whose ID is below the READ workload's (a policy's ID pattern matches only part of it)",
  partialPath: "workload with SUPER on a pattern that matches only a leading part of each path",
};

//                                              superuser SVID, credential:                                 | workload with:                             | near misses:
//                                              session none   exp.S  exp.T  rev.S  rev.T  other's          | READ   WRITE  LIST   SUPER  elsew. none    | su2    su/x   read/x partial
const MATRIX: Record<string, string> = {
  "OperatorService/GetStatus":                 "ok      ok     ok     ok     ok     ok     ok               | ok     ok     ok     ok     ok     ok      | ok     ok     ok     ok",
  "OperatorService/Initialize":                "ok      ok     ok     ok     ok     ok     ok               | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/Unseal":                    "ok      ok     ok     ok     ok     ok     ok               | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/Login":                     "ok      ok     ok     ok     ok     ok     ok               | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/Seal":                      "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/Logout":                    "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/CreateAdminToken":          "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/ListAdminTokens":           "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/RevokeAdminToken":          "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/ListAuditEvents":           "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/VerifyAuditLog":            "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/RotateEncryptionKey":       "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/RotateRootKey":             "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "OperatorService/ChangeAdminPassword":       "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "PolicyService/CreatePolicy":                "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "PolicyService/GetPolicy":                   "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "PolicyService/ListPolicies":                "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "PolicyService/UpdatePolicy":                "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "PolicyService/DeletePolicy":                "ok      UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH UNAUTH           | DENIED DENIED DENIED DENIED DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/GetSecret":                   "ok      ok     ok     ok     ok     ok     ok               | ok     DENIED DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/GetSecretMetadata":           "ok      ok     ok     ok     ok     ok     ok               | ok     DENIED DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/ListSecrets":                 "ok      ok     ok     ok     ok     ok     ok               | DENIED DENIED ok     ok     ok     DENIED  | DENIED DENIED DENIED ok",
  "SecretService/PutSecret":                   "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/DeleteSecret":                "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/UndeleteSecret":              "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/DestroySecret":               "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/UpdateSecretMetadata":        "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/PurgeSecret":                 "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/PromoteSecretVersion":        "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/RotateSecret":                "ok      ok     ok     ok     ok     ok     ok               | DENIED ok     DENIED ok     DENIED DENIED  | DENIED DENIED DENIED DENIED",
  "SecretService/WatchSecrets":                "ok      ok     ok     ok     ok     ok     ok               | DENIED DENIED ok     ok     ok     DENIED  | DENIED DENIED DENIED ok",
};

type Expectation = "ok" | "UNAUTH" | "DENIED";

function expectations(rpc: string): Record<Column, Expectation> {
  const line = MATRIX[rpc];
  if (line === undefined) throw new Error(`the matrix has no row for ${rpc}`);
  const cells = line.split(/\s+/).filter((c) => c !== "|" && c !== "");
  if (cells.length !== COLUMNS.length) throw new Error(`the row for ${rpc} has ${cells.length} cells, not ${COLUMNS.length}`);
  return Object.fromEntries(COLUMNS.map((c, i) => [c, cells[i] as Expectation])) as Record<Column, Expectation>;
}

/** What one cell of the matrix knows: where it runs and for whom. */
interface Cell {
  readonly listener: Listener;
  readonly column: Column;
  /** Unique per cell, safe in names and paths. */
  readonly tag: string;
}

interface RowSpec<M extends DescMethodUnary> {
  readonly method: M;
  /** The status of an allowed call (the RPC's own, deterministic result). */
  readonly allowed: string;
  /** Builds the request, creating whatever it addresses first. */
  readonly request: (cell: Cell) => Promise<MessageInitShape<M["input"]>>;
  /** More to check on an allowed call's response. */
  readonly check?: (response: MessageShape<M["output"]>, cell: Cell, request: MessageInitShape<M["input"]>) => void | Promise<void>;
  /** Puts the server back as the next cell expects it (after Seal, Unseal). */
  readonly restore?: () => Promise<void>;
}
type Row = RowSpec<DescMethodUnary>;
const row = <M extends DescMethodUnary>(spec: RowSpec<M>): Row => spec as unknown as Row;
const rpcName = (method: DescMethodUnary) => `${method.parent.name}/${method.name}`;

function describeRow(rpc: string, allowed: string): string {
  const cells = expectations(rpc);
  const by = (e: Expectation) => COLUMNS.filter((c) => cells[c] === e);
  const parts = [
    [`allowed (${allowed})`, by("ok")],
    ["UNAUTHENTICATED", by("UNAUTH")],
    ["PERMISSION_DENIED", by("DENIED")],
  ] as const;
  return `${rpc}: ${parts
    .filter(([, cols]) => cols.length > 0)
    .map(([what, cols]) => `${what} for ${cols.join(", ")}`)
    .join("; ")}`;
}

describe("authorization over the wire", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let admin: NexusClient;
  let adminToken: string;

  before(async () => {
    server = await startSecretServer();
    admin = server.client("grpc");
    adminToken = (await login(admin, 12 * 60 * MINUTE)).token;
  });

  after(async () => server?.stop());

  describe("the matrix: every RPC × every kind of caller", () => {
    const workloadIds: Partial<Record<Column, string>> = {
      read: spiffeId("workload/matrix-read"),
      write: spiffeId("workload/matrix-write"),
      list: spiffeId("workload/matrix-list"),
      super: spiffeId("workload/matrix-super"),
      elsewhere: spiffeId("workload/matrix-elsewhere"),
      noPolicy: spiffeId("workload/matrix-no-policy"),
      // Near misses: IDs and paths where matching a prefix or a part of the
      // string would grant what matching the whole string does not.
      suffixedSuperuser: `${SUPERUSER_ID}2`,
      nestedSuperuser: `${SUPERUSER_ID}/x`,
      nestedReader: spiffeId("workload/matrix-read/x"),
      partialPath: spiffeId("workload/matrix-partial-path"),
    };
    const certs = new Map<Column, IssuedCert>();
    const clients = new Map<string, NexusClient>();
    const credentials = new Map<Column, string>();
    const MATRIX_PATH = /^matrix\/.+$/;
    // Which paths each caller may see in ListSecrets: the superuser every one.
    const all = () => true;
    const lists: Record<Column, (path: string) => boolean> = {
      session: all,
      none: all,
      expiredSession: all,
      expiredToken: all,
      revokedSession: all,
      revokedToken: all,
      othersToken: all,
      read: () => false,
      write: () => false,
      list: (p) => MATRIX_PATH.test(p),
      super: (p) => MATRIX_PATH.test(p),
      elsewhere: (p) => /^elsewhere\/.+$/.test(p),
      noPolicy: () => false,
      suffixedSuperuser: () => false,
      nestedSuperuser: () => false,
      nestedReader: () => false,
      partialPath: () => false,
    };
    // What the server says when it refuses each caller: the refusal must be for the right reason.
    const refusal: Record<Column, string> = {
      session: "",
      none: "need an admin credential",
      expiredSession: "invalid, expired or revoked",
      expiredToken: "invalid, expired or revoked",
      revokedSession: "invalid, expired or revoked",
      revokedToken: "invalid, expired or revoked",
      othersToken: "belongs to another identity",
      read: "may not call",
      write: "may not call",
      list: "may not call",
      super: "may not call",
      elsewhere: "may not call",
      noPolicy: "may not call",
      suffixedSuperuser: "may not call",
      nestedSuperuser: "may not call",
      nestedReader: "may not call",
      partialPath: "may not call",
    };
    const isWorkload = (c: Column) => workloadIds[c] !== undefined;
    const probe = { path: "matrix/probe", data: { probe: "value" } };

    const clientFor = (listener: Listener, column: Column): NexusClient => {
      const key = `${listener}/${isWorkload(column) ? column : "superuser"}`;
      let c = clients.get(key);
      if (c === undefined) {
        c = isWorkload(column) ? server.client(listener, certs.get(column)!) : server.client(listener);
        clients.set(key, c);
      }
      return c;
    };
    const tokenFor = async (column: Column): Promise<string | undefined> => {
      if (column === "session") return (await login(admin)).token; // fresh: Logout and Seal use it up
      if (column === "none") return undefined;
      if (isWorkload(column)) return adminToken;
      return credentials.get(column);
    };
    // Unseal and Seal cells change the seal state; the next cell needs it unsealed
    // with its policies loaded again.
    const unsealedWithPolicies = async () => {
      if (server.nexus.keys.sealed) ok(await admin.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
      const reader = clientFor("grpc", "read");
      await eventually(async () => ok(await reader.call(SecretService.method.getSecret, { path: probe.path }), "the READ workload reads the probe"));
    };
    const seeded = async (cell: Cell, rpc: string): Promise<string> => {
      const path = `matrix/${cell.listener}/${rpc}/${cell.column}`;
      ok(await admin.call(SecretService.method.putSecret, { path, data: { v: "1" } }), `seed ${path}`);
      ok(await admin.call(SecretService.method.putSecret, { path, data: { v: "2" } }), `seed ${path}`);
      return path;
    };
    const throwawayPolicy = async (name: string) =>
      createPolicy(admin, adminToken, { name, spiffeIdPattern: exactly(spiffeId("nobody")), pathPattern: "nowhere/.+", permissions: [Permission.READ] });

    const ROWS: Row[] = [
      row({
        method: OperatorService.method.getStatus,
        allowed: "OK",
        request: async () => ({}),
        check: (res) => {
          expect(res.sealed).to.equal(false);
        },
      }),
      row({ method: OperatorService.method.initialize, allowed: "FAILED_PRECONDITION", request: async () => ({ adminPassword: ADMIN_PASSWORD }) }),
      row({ method: OperatorService.method.unseal, allowed: "OK", request: async () => ({ adminPassword: ADMIN_PASSWORD }), restore: unsealedWithPolicies }),
      row({
        method: OperatorService.method.login,
        allowed: "OK",
        request: async () => ({ adminPassword: ADMIN_PASSWORD }),
        check: (res) => {
          expect(res.sessionToken).to.match(/^nxs_[A-Za-z0-9_-]{43}$/);
        },
      }),
      row({ method: OperatorService.method.seal, allowed: "OK", request: async () => ({}), restore: unsealedWithPolicies }),
      row({ method: OperatorService.method.logout, allowed: "OK", request: async () => ({}) }),
      row({
        method: OperatorService.method.createAdminToken,
        allowed: "OK",
        request: async (cell) => ({ name: `matrix-${cell.tag}`, ttl: durationFromMs(60 * MINUTE) }),
        check: (res) => {
          expect(res.token).to.match(/^nxt_[A-Za-z0-9_-]{43}$/);
        },
      }),
      row({ method: OperatorService.method.listAdminTokens, allowed: "OK", request: async () => ({}) }),
      // A server stream: the cell's result is the stream's end (see callAny).
      row({ method: OperatorService.method.rotateEncryptionKey as unknown as DescMethodUnary, allowed: "OK", request: async () => ({}) }),
      // Allowed calls are refused by validation, which runs only after authorization: the password stays as it is.
      row({ method: OperatorService.method.rotateRootKey, allowed: "INVALID_ARGUMENT", request: async () => ({ adminPassword: "" }) }),
      row({ method: OperatorService.method.changeAdminPassword, allowed: "INVALID_ARGUMENT", request: async () => ({ currentPassword: ADMIN_PASSWORD, newPassword: "short" }) }),
      row({
        method: OperatorService.method.revokeAdminToken,
        allowed: "OK",
        request: async (cell) => {
          const name = `matrix-revoke-${cell.tag}`;
          await createAdminToken(admin, adminToken, name, 60 * MINUTE);
          return { name };
        },
      }),
      row({
        method: OperatorService.method.listAuditEvents,
        allowed: "OK",
        request: async () => ({ pageSize: 5 }),
        check: (res) => {
          expect(res.events).to.have.length(5);
        },
      }),
      row({
        method: OperatorService.method.verifyAuditLog,
        allowed: "OK",
        request: async () => ({}),
        check: (res) => {
          expect(res.problems.map((p) => p.description)).to.deep.equal([]);
        },
      }),
      row({
        method: PolicyService.method.createPolicy,
        allowed: "OK",
        request: async (cell) => ({
          policy: { name: `matrix-created-${cell.tag}`, spiffeIdPattern: exactly(spiffeId("nobody")), pathPattern: "nowhere/.+", permissions: [Permission.READ] },
        }),
      }),
      row({
        method: PolicyService.method.getPolicy,
        allowed: "OK",
        request: async () => ({ name: "matrix-read" }),
        check: (res) => {
          expect(res.policy?.pathPattern).to.equal("matrix/.+");
        },
      }),
      row({ method: PolicyService.method.listPolicies, allowed: "OK", request: async () => ({ pageSize: 100 }) }),
      row({
        method: PolicyService.method.updatePolicy,
        allowed: "OK",
        request: async (cell) => {
          const name = `matrix-update-${cell.tag}`;
          await throwawayPolicy(name);
          return { name, policy: { permissions: [Permission.LIST] }, updateMask: { paths: ["permissions"] } };
        },
        check: (res) => {
          expect(res.policy?.permissions).to.deep.equal([Permission.LIST]);
        },
      }),
      row({
        method: PolicyService.method.deletePolicy,
        allowed: "OK",
        request: async (cell) => {
          const name = `matrix-delete-${cell.tag}`;
          await throwawayPolicy(name);
          return { name };
        },
      }),
      row({
        method: SecretService.method.getSecret,
        allowed: "OK",
        request: async (cell) => ({ path: await seeded(cell, "get") }),
        check: (res) => {
          expect(res.data).to.deep.equal({ v: "2" });
        },
      }),
      row({
        method: SecretService.method.getSecretMetadata,
        allowed: "OK",
        request: async (cell) => ({ path: await seeded(cell, "metadata") }),
        check: (res) => {
          expect(res.metadata?.latestVersion).to.equal(2);
        },
      }),
      row({
        method: SecretService.method.listSecrets,
        allowed: "OK",
        request: async (cell) => {
          await seeded(cell, "list");
          return { prefix: "matrix/", pageSize: 1000 };
        },
        check: (res, cell) => {
          const mine = `matrix/${cell.listener}/list/${cell.column}`;
          expect(res.paths.filter((p) => !lists[cell.column](p)), "paths listed that the caller may not list").to.deep.equal([]);
          expect(res.paths.includes(mine), `lists ${mine}`).to.equal(lists[cell.column](mine));
          expect(res.nextPageToken).to.equal("");
        },
      }),
      // A stream that would not end by itself: allowed calls are refused by
      // validation (a malformed cursor), which runs only after authorization.
      row({ method: SecretService.method.watchSecrets as unknown as DescMethodUnary, allowed: "INVALID_ARGUMENT", request: async () => ({ prefix: "matrix/", cursor: "not-a-cursor" }) }),
      row({ method: SecretService.method.putSecret, allowed: "OK", request: async (cell) => ({ path: `matrix/${cell.listener}/put/${cell.column}`, data: { v: "new" } }) }),
      row({ method: SecretService.method.deleteSecret, allowed: "OK", request: async (cell) => ({ path: await seeded(cell, "delete") }) }),
      row({ method: SecretService.method.undeleteSecret, allowed: "OK", request: async (cell) => ({ path: await seeded(cell, "undelete"), versions: [1] }) }),
      row({ method: SecretService.method.destroySecret, allowed: "OK", request: async (cell) => ({ path: await seeded(cell, "destroy"), versions: [1] }) }),
      row({
        method: SecretService.method.updateSecretMetadata,
        allowed: "OK",
        request: async (cell) => ({ path: await seeded(cell, "update-metadata"), maxVersions: 5, updateMask: { paths: ["max_versions"] } }),
      }),
      row({ method: SecretService.method.purgeSecret, allowed: "OK", request: async (cell) => ({ path: await seeded(cell, "purge") }) }),
      // Issue 12: moving labels and rotating need WRITE, like a put.
      row({ method: SecretService.method.promoteSecretVersion, allowed: "OK", request: async (cell) => ({ path: await seeded(cell, "promote"), version: 1 }) }),
      row({
        method: SecretService.method.rotateSecret,
        allowed: "OK",
        request: async (cell) => ({ path: await seeded(cell, "rotate"), generator: { case: "randomBytes" as const, value: { length: 16 } }, dataKey: "v" }),
      }),
    ];

    before(async () => {
      // Credentials that stop working: expired ones first, so their lifetime runs out during the rest of the setup.
      const expiring = { session: await login(admin, 3000), token: await createAdminToken(admin, adminToken, "matrix-expiring", 3000) };
      credentials.set("expiredSession", expiring.session.token);
      credentials.set("expiredToken", expiring.token.token);
      const revokedSession = await login(admin);
      const revokedToken = await createAdminToken(admin, adminToken, "matrix-revoked", 60 * MINUTE);
      for (const c of [expiring.session, expiring.token, revokedSession, revokedToken]) {
        ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: c.token }), "each credential works before it expires or is revoked");
      }
      ok(await admin.call(OperatorService.method.logout, {}, { bearerToken: revokedSession.token }), "Logout");
      ok(await admin.call(OperatorService.method.revokeAdminToken, { name: "matrix-revoked" }, { bearerToken: adminToken }), "RevokeAdminToken");
      credentials.set("revokedSession", revokedSession.token);
      credentials.set("revokedToken", revokedToken.token);

      // Another identity's session: a replica on the same database whose superuser is another SPIFFE ID.
      const otherCert = await issueSvid(server, OTHER_SUPERUSER_ID);
      const replica = await startTestServer({ pki: server.pki, databaseUrl: server.nexus.databaseUrl, env: { NEXUS_SUPERUSER_ID: OTHER_SUPERUSER_ID }, start: FAST_KDF });
      try {
        const other = replica.client("grpc", otherCert);
        ok(await other.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal as the other superuser");
        const othersSession = await login(other);
        ok(await other.call(OperatorService.method.listAdminTokens, {}, { bearerToken: othersSession.token }), "the other identity's session works for it");
        credentials.set("othersToken", othersSession.token);
      } finally {
        await replica.stop();
      }

      for (const [column, id] of Object.entries(workloadIds) as Array<[Column, string]>) certs.set(column, await issueSvid(server, id));
      const grant = (column: Column, pathPattern: string, permissions: Permission[]) =>
        createPolicy(admin, adminToken, { name: `matrix-${column}`, spiffeIdPattern: exactly(workloadIds[column]!), pathPattern, permissions });
      await grant("read", "matrix/.+", [Permission.READ]);
      await grant("write", "matrix/.+", [Permission.WRITE]);
      await grant("list", "matrix/.+", [Permission.LIST]);
      await grant("super", "matrix/.+", [Permission.SUPER]);
      await grant("elsewhere", "elsewhere/.+", [Permission.SUPER]);
      // Every cell's path is matrix/<listener>/<rpc>/<column>: this matches its first three segments only.
      await grant("partialPath", "matrix/(grpc|connect)/[a-z-]+", [Permission.SUPER]);
      ok(await admin.call(SecretService.method.putSecret, probe), "the probe secret");
      ok(await admin.call(SecretService.method.putSecret, { path: "elsewhere/secret", data: { v: "1" } }), "a secret elsewhere");

      const expired = Math.max(expiring.session.expiresAt.getTime(), expiring.token.expiresAt.getTime());
      await sleep(Math.max(0, expired - Date.now() + 200));
    });

    it("covers every RPC of OperatorService, PolicyService and SecretService, and nothing else", () => {
      const services: DescService[] = [OperatorService, PolicyService, SecretService];
      const rpcs = services.flatMap((s) => s.methods.map((m) => `${s.name}/${m.name}`));
      expect(ROWS.map((r) => rpcName(r.method)).sort()).to.deep.equal([...rpcs].sort());
      expect(Object.keys(MATRIX).sort()).to.deep.equal([...rpcs].sort());
    });

    for (const listener of LISTENERS) {
      describe(`on the ${listener} listener`, () => {
        for (const r of ROWS) {
          const rpc = rpcName(r.method);
          it(describeRow(rpc, r.allowed), async () => {
            const expected = expectations(rpc);
            const wrong: string[] = [];
            for (const column of COLUMNS) {
              const cell: Cell = { listener, column, tag: `${listener}-${column}` };
              const request = await r.request(cell);
              const result = await callAny(clientFor(listener, column), r.method, request, { ...CALL, bearerToken: await tokenFor(column) });
              const want = expected[column];
              const wantCode = want === "ok" ? r.allowed : want === "UNAUTH" ? "UNAUTHENTICATED" : "PERMISSION_DENIED";
              if (result.code !== wantCode) {
                wrong.push(`${COLUMN_TITLES[column]}: expected ${wantCode}, got ${result.code} (${result.message ?? "no message"})`);
              } else if (want !== "ok" && !(result.message ?? "").includes(refusal[column])) {
                wrong.push(`${COLUMN_TITLES[column]}: ${wantCode} for the wrong reason: "${result.message}"`);
              } else if (result.code === "OK" && r.check) {
                try {
                  await r.check(result.response!, cell, request);
                } catch (err) {
                  wrong.push(`${COLUMN_TITLES[column]}: ${(err as Error).message}`);
                }
              }
              if (result.code === "OK") await r.restore?.();
            }
            expect(wrong, "cells that differ from the matrix").to.deep.equal([]);
          });
        }
      });
    }
  });

  describe("ListSecrets", () => {
    const TEAMS = ["alpha", "bravo", "charlie", "delta", "echo"];
    const paths = TEAMS.flatMap((team) => Array.from({ length: 12 }, (_, n) => `catalog/${team}/${String(n).padStart(2, "0")}`));
    const permitted = paths.filter((p) => /^catalog\/(bravo|delta)\//.test(p)).sort();
    let lister: IssuedCert;

    before(async () => {
      await forEachConcurrently(paths, 8, async (path) => void ok(await admin.call(SecretService.method.putSecret, { path, data: { v: "1" } }), path));
      const id = spiffeId("workload/catalog-lister");
      lister = await issueSvid(server, id);
      await createPolicy(admin, adminToken, { name: "catalog-lister", spiffeIdPattern: exactly(id), pathPattern: "catalog/(bravo|delta)/.+", permissions: [Permission.LIST] });
    });

    const listAll = async (client: NexusClient, prefix: string, pageSize: number) => {
      const seen: string[] = [];
      let pageToken = "";
      for (let calls = 0; ; calls++) {
        expect(calls, "pagination ends").to.be.lessThan(200);
        const page = ok(await client.call(SecretService.method.listSecrets, { prefix, pageSize, pageToken }), "ListSecrets");
        expect(page.paths.length, "a page never exceeds page_size").to.be.at.most(pageSize);
        seen.push(...page.paths);
        if (page.nextPageToken === "") return seen;
        pageToken = page.nextPageToken;
      }
    };

    for (const listener of LISTENERS) {
      it(`on the ${listener} listener, pages of 5 concatenate to exactly the permitted paths (24 of 60), in order, each once`, async () => {
        const seen = await listAll(server.client(listener, lister), "catalog/", 5);
        expect(seen).to.deep.equal(permitted);
      });

      it(`on the ${listener} listener, a prefix narrows the permitted paths and pages of 1 still find all of them`, async () => {
        const seen = await listAll(server.client(listener, lister), "catalog/d", 1);
        expect(seen).to.deep.equal(permitted.filter((p) => p.startsWith("catalog/delta/")));
        expect(await listAll(server.client(listener, lister), "catalog/a", 3), "nothing under a prefix with no permitted path").to.deep.equal([]);
      });

      it(`on the ${listener} listener, the superuser lists every path across pages`, async () => {
        expect(await listAll(server.client(listener), "catalog/", 7)).to.deep.equal([...paths].sort());
      });
    }
  });

  describe("ListSecrets page tokens", () => {
    // More hidden rows than one call examines (5,000), between two visible ones:
    // the first page ends its scan on a hidden path and must not reveal it.
    const HIDDEN = 5100;
    const listerId = spiffeId("workload/token-lister");
    const otherListerId = spiffeId("workload/token-lister-2");
    let lister: NexusClient;
    let otherLister: NexusClient;
    let db: ReturnType<typeof openDatabase>;

    before(async () => {
      db = openDatabase(server.nexus.databaseUrl);
      for (const path of ["tokens/a-visible", "tokens/z-visible"]) ok(await admin.call(SecretService.method.putSecret, { path, data: { v: "1" } }), path);
      // Listing reads only paths: copies of a real row's key columns under hidden paths.
      await db`INSERT INTO secrets (id, path, wrapped_data_key, keyring_key_id)
               SELECT gen_random_uuid(), 'tokens/hidden/' || lpad(n::text, 5, '0'), wrapped_data_key, keyring_key_id
               FROM secrets, generate_series(1, ${HIDDEN}) AS n WHERE path = 'tokens/a-visible'`;
      lister = server.client("grpc", await issueSvid(server, listerId));
      otherLister = server.client("grpc", await issueSvid(server, otherListerId));
      for (const [name, id] of [["token-lister", listerId], ["token-lister-2", otherListerId]]) {
        await createPolicy(admin, adminToken, { name, spiffeIdPattern: exactly(id), pathPattern: "tokens/[a-z]-visible", permissions: [Permission.LIST] });
      }
    });

    after(async () => db?.end());

    const firstPage = async (client = lister) => ok(await client.call(SecretService.method.listSecrets, { prefix: "tokens/", pageSize: 10 }), "first page");
    const next = (client: NexusClient, pageToken: string, prefix = "tokens/") => client.call(SecretService.method.listSecrets, { prefix, pageSize: 10, pageToken });
    const refused = (result: Awaited<ReturnType<typeof next>>, what: string) =>
      expect(fails(result, "INVALID_ARGUMENT", what), what).to.include("page_token").and.to.include("not a token this server issued");

    it("a page whose scan ends on a hidden row returns a token that reveals no path, and the listing still finds every visible path", async () => {
      const page = await firstPage();
      expect(page.paths).to.deep.equal(["tokens/a-visible"]);
      expect(page.nextPageToken, "the scan stopped at its limit, before the end").not.to.equal("");
      const decoded = Buffer.from(page.nextPageToken, "base64url").toString("latin1");
      expect(decoded, "the token's bytes").not.to.include("tokens/");
      expect(decoded, "the token's bytes").not.to.include("hidden");
      const seen = [...page.paths];
      for (let token = page.nextPageToken, calls = 0; token !== ""; calls++) {
        expect(calls, "pagination ends").to.be.lessThan(5);
        const more = ok(await next(lister, token), "next page");
        seen.push(...more.paths);
        token = more.nextPageToken;
      }
      expect(seen).to.deep.equal(["tokens/a-visible", "tokens/z-visible"]);
    });

    it("a token continues on the other listener for the same caller", async () => {
      const { nextPageToken } = await firstPage();
      const connect = server.client("connect", await issueSvid(server, listerId));
      try {
        ok(await next(connect, nextPageToken), "the same caller over Connect");
      } finally {
        connect.close();
      }
    });

    it("a forged token naming a hidden resume point, an altered token, another caller's token, or a token for another prefix is INVALID_ARGUMENT", async () => {
      const forged = Buffer.from(JSON.stringify({ v: 1, p: "tokens/", a: "tokens/hidden/02500" })).toString("base64url");
      refused(await next(lister, forged), "a token forged in the old clear format");
      const { nextPageToken } = await firstPage();
      const bytes = Buffer.from(nextPageToken, "base64url");
      bytes[40] ^= 0x01;
      refused(await next(lister, bytes.toString("base64url")), "a token with one bit flipped");
      refused(await next(otherLister, nextPageToken), "a token presented by another caller with the same policy");
      refused(await next(lister, nextPageToken, "tokens/h"), "a token presented with another prefix");
      ok(await next(lister, nextPageToken), "the token itself still works");
    });

    it("the audit event of a ListSecrets call records its prefix, refused or not", async () => {
      await firstPage(otherLister);
      refused(await next(otherLister, "forged", "tokens/z"), "a forged token");
      const { events } = ok(
        await admin.call(OperatorService.method.listAuditEvents, { callerSpiffeId: otherListerId, rpc: "ListSecrets", pageSize: 10 }, { bearerToken: adminToken }),
        "ListAuditEvents",
      );
      const summary = events.map((e) => `${e.path} ${e.code}`);
      expect(summary).to.include("tokens/ OK");
      expect(summary).to.include("tokens/z INVALID_ARGUMENT");
    });
  });

  describe("patterns", () => {
    it("a pattern that backtracks in a naive engine, (a+)+$, against a 2,000-character SPIFFE ID answers promptly", async () => {
      await createPolicy(admin, adminToken, { name: "redos", spiffeIdPattern: "spiffe://spike\\.ist/redos/(a+)+$", pathPattern: "redos/(a+)+$", permissions: [Permission.READ] });
      ok(await admin.call(SecretService.method.putSecret, { path: "redos/aaaa", data: { v: "1" } }));
      for (const [i, listener] of LISTENERS.entries()) {
        // A different length per listener: the engine remembers per SPIFFE ID which policies apply.
        const as = "a".repeat(2000 - i);
        const nearMiss = server.client(listener, await issueSvid(server, spiffeId(`redos/${as}b`)));
        const match = server.client(listener, await issueSvid(server, spiffeId(`redos/${as}`)));
        const prompt = { deadlineMs: 5000 };
        fails(await nearMiss.call(SecretService.method.getSecret, { path: "redos/aaaa" }, prompt), "PERMISSION_DENIED", `${listener}: an ID of 2,000 a's and a b`);
        fails(await match.call(SecretService.method.getSecret, { path: `redos/${"a".repeat(240)}b` }, prompt), "PERMISSION_DENIED", `${listener}: a path of 240 a's and a b`);
        ok(await match.call(SecretService.method.getSecret, { path: "redos/aaaa" }, prompt), `${listener}: an ID of 2,000 a's reads redos/aaaa`);
      }
    });

    const BAD_PATTERNS = [
      { pattern: "(", reason: "missing closing )" },
      { pattern: "a**", reason: "invalid nested repetition operator" },
      { pattern: "(?=lookahead)", reason: "invalid or unsupported Perl syntax" },
      { pattern: "(a)\\1", reason: "invalid escape sequence" },
      { pattern: "[z-a]", reason: "invalid character class range" },
      { pattern: "", reason: "must not be empty" },
    ];
    for (const field of ["spiffe_id_pattern", "path_pattern"] as const) {
      for (const { pattern, reason } of BAD_PATTERNS) {
        it(`a ${field} of ${JSON.stringify(pattern)} is INVALID_ARGUMENT naming the field and why ("${reason}"), and nothing is created`, async () => {
          const name = `bad-${field}-${randomBytes(4).toString("hex")}`;
          const policy = { name, spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.+", permissions: [Permission.READ] };
          const bad = field === "spiffe_id_pattern" ? { ...policy, spiffeIdPattern: pattern } : { ...policy, pathPattern: pattern };
          const message = fails(await admin.call(PolicyService.method.createPolicy, { policy: bad }, { bearerToken: adminToken }), "INVALID_ARGUMENT");
          expect(message).to.include(field).and.to.include(reason);
          fails(await admin.call(PolicyService.method.getPolicy, { name }, { bearerToken: adminToken }), "NOT_FOUND");
        });
      }
    }

    it("an update to a pattern that does not compile is INVALID_ARGUMENT and leaves the policy as it was", async () => {
      await createPolicy(admin, adminToken, { name: "update-bad-pattern", spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.+", permissions: [Permission.READ] });
      const message = fails(
        await admin.call(PolicyService.method.updatePolicy, { name: "update-bad-pattern", policy: { pathPattern: "x/(" }, updateMask: { paths: ["path_pattern"] } }, { bearerToken: adminToken }),
        "INVALID_ARGUMENT",
      );
      expect(message).to.include("path_pattern").and.to.include("missing closing )");
      const kept = ok(await admin.call(PolicyService.method.getPolicy, { name: "update-bad-pattern" }, { bearerToken: adminToken })).policy!;
      expect(kept.pathPattern).to.equal("x/.+");
    });

    it("a policy name already used in another case is ALREADY_EXISTS, and the first policy is kept", async () => {
      await createPolicy(admin, adminToken, { name: "Billing-Readers", spiffeIdPattern: "spiffe://spike\\.ist/billing", pathPattern: "billing/.+", permissions: [Permission.READ] });
      for (const name of ["billing-readers", "BILLING-READERS", "Billing-Readers"]) {
        const dup = { name, spiffeIdPattern: "spiffe://spike\\.ist/.+", pathPattern: ".+", permissions: [Permission.SUPER] };
        fails(await admin.call(PolicyService.method.createPolicy, { policy: dup }, { bearerToken: adminToken }), "ALREADY_EXISTS", name);
      }
      const kept = ok(await admin.call(PolicyService.method.getPolicy, { name: "bILLING-rEADERS" }, { bearerToken: adminToken })).policy!;
      expect(kept).to.include({ name: "Billing-Readers", pathPattern: "billing/.+" });
      expect(kept.permissions).to.deep.equal([Permission.READ]);
    });
  });

  describe("policy rows written behind Nexus's back", () => {
    const forgerId = spiffeId("workload/forger");
    const sentinelId = spiffeId("workload/sentinel");
    let forger: NexusClient;
    let sentinel: NexusClient;
    let db: ReturnType<typeof openDatabase>;
    let sentinels = 0;

    before(async () => {
      db = openDatabase(server.nexus.databaseUrl);
      forger = server.client("grpc", await issueSvid(server, forgerId));
      sentinel = server.client("grpc", await issueSvid(server, sentinelId));
      await createPolicy(admin, adminToken, { name: "forge-valid", spiffeIdPattern: exactly(forgerId), pathPattern: "forge/allowed", permissions: [Permission.READ] });
      for (const path of ["forge/allowed", "forge/target"]) ok(await admin.call(SecretService.method.putSecret, { path, data: { v: path } }));
    });

    after(async () => db?.end());

    // Every replica reloads on the table's NOTIFY; CreatePolicy also reloads before
    // it answers. A new sentinel policy that works proves a reload read the rows as
    // they are now, tampered ones included.
    const reloaded = async () => {
      const n = ++sentinels;
      await createPolicy(admin, adminToken, { name: `sentinel-${n}`, spiffeIdPattern: exactly(sentinelId), pathPattern: `forge/sentinel-${n}`, permissions: [Permission.READ] });
      fails(await sentinel.call(SecretService.method.getSecret, { path: `forge/sentinel-${n}` }), "NOT_FOUND", "the sentinel policy is in force");
    };
    const forgerReads = async (path: string) => (await forger.call(SecretService.method.getSecret, { path })).code;

    // Any replica reloads on a NOTIFY; a database writer can send one too.
    const notifyReload = async () => void (await db`SELECT pg_notify('nexus_policies', '')`);

    // A row that does not verify is ignored; the set still verifies without it.
    // A valid row altered is missing from the set its epoch bound: the whole set
    // is refused (every policy-based call denied) until the row is put back.
    const TAMPERING: Array<{ what: string; wholeSet: boolean; tamper: () => Promise<void>; undo: () => Promise<void> }> = [
      {
        what: "a new row with a random MAC granting SUPER on forge/.+",
        wholeSet: false,
        tamper: async () => {
          await db`INSERT INTO policies (id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac)
                   VALUES (gen_random_uuid(), 'forged-random-mac', ${exactly(forgerId)}, 'forge/.+', '{super}', now(), ${spiffeId("spike/pilot/role/superuser")}, now(), ${randomBytes(32)})`;
        },
        undo: async () => void (await db`DELETE FROM policies WHERE name = 'forged-random-mac'`),
      },
      {
        what: "a copy of the valid row (its MAC kept) under a new id and name, granting SUPER on forge/.+",
        wholeSet: false,
        tamper: async () => {
          await db`INSERT INTO policies (id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac)
                   SELECT gen_random_uuid(), 'forged-copied-mac', spiffe_id_pattern, 'forge/.+', '{super}', created_at, created_by, updated_at, mac
                   FROM policies WHERE name = 'forge-valid'`;
        },
        undo: async () => void (await db`DELETE FROM policies WHERE name = 'forged-copied-mac'`),
      },
      {
        what: "the valid row with its path_pattern widened to forge/.+ (its MAC kept)",
        wholeSet: true,
        tamper: async () => void (await db`UPDATE policies SET path_pattern = 'forge/.+' WHERE name = 'forge-valid'`),
        undo: async () => void (await db`UPDATE policies SET path_pattern = 'forge/allowed' WHERE name = 'forge-valid'`),
      },
      {
        what: "the valid row with its permissions raised to SUPER (its MAC kept)",
        wholeSet: true,
        tamper: async () => void (await db`UPDATE policies SET permissions = '{super}' WHERE name = 'forge-valid'`),
        undo: async () => void (await db`UPDATE policies SET permissions = '{read}' WHERE name = 'forge-valid'`),
      },
      {
        what: "the valid row with its spiffe_id_pattern widened to every workload (its MAC kept)",
        wholeSet: true,
        tamper: async () => void (await db`UPDATE policies SET spiffe_id_pattern = 'spiffe://spike\\.ist/workload/.+' WHERE name = 'forge-valid'`),
        undo: async () => void (await db`UPDATE policies SET spiffe_id_pattern = ${exactly(forgerId)} WHERE name = 'forge-valid'`),
      },
    ];

    for (const { what, wholeSet, tamper, undo } of TAMPERING) {
      it(`${what} grants nothing${wholeSet ? ", and the altered set grants nothing at all until it is put back" : ""}`, async () => {
        expect(await forgerReads("forge/allowed"), "before: the valid policy grants READ on forge/allowed").to.equal("OK");
        expect(await forgerReads("forge/target"), "before: nothing else").to.equal("PERMISSION_DENIED");
        await tamper();
        try {
          if (wholeSet) {
            await notifyReload();
            await eventually(async () => expect(await forgerReads("forge/allowed"), "the altered set's valid rows grant nothing either").to.equal("PERMISSION_DENIED"));
            const create = await admin.call(
              PolicyService.method.createPolicy,
              { policy: { name: "while-altered", spiffeIdPattern: exactly(sentinelId), pathPattern: "forge/x", permissions: [Permission.READ] } },
              { bearerToken: adminToken },
            );
            expect(fails(create, "INTERNAL", "a policy change on an altered set"), "it says why").to.match(/integrity check/);
          } else {
            await reloaded();
          }
          expect(await forgerReads("forge/target"), "the tampered grant").to.equal("PERMISSION_DENIED");
          const write = await forger.call(SecretService.method.putSecret, { path: "forge/allowed", data: { v: "forged" } });
          expect(write.code, "a write through the tampered grant").to.equal("PERMISSION_DENIED");
        } finally {
          await undo();
        }
        await notifyReload();
        await eventually(async () => expect(await forgerReads("forge/allowed"), "after undoing it, the valid policy works again").to.equal("OK"));
      });
    }
  });

  describe("a second replica on the same database", () => {
    let replica: TestServer;

    before(async () => {
      replica = await startTestServer({ pki: server.pki, databaseUrl: server.nexus.databaseUrl, start: FAST_KDF });
      ok(await replica.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal the replica");
      ok(await admin.call(SecretService.method.putSecret, { path: "replicated/secret", data: { v: "1" } }));
    });

    after(async () => replica?.stop());

    it("enforces a policy created through the first server, and its deletion, on both of its listeners", async () => {
      const id = spiffeId("workload/replicated-reader");
      const cert = await issueSvid(server, id);
      const onReplica = LISTENERS.map((l) => replica.client(l, cert));
      for (const c of onReplica) fails(await c.call(SecretService.method.getSecret, { path: "replicated/secret" }), "PERMISSION_DENIED", "before the policy");

      await createPolicy(admin, adminToken, { name: "replicated-reader", spiffeIdPattern: exactly(id), pathPattern: "replicated/.+", permissions: [Permission.READ] });
      for (const c of onReplica) {
        await eventually(async () => ok(await c.call(SecretService.method.getSecret, { path: "replicated/secret" }), "the replica applies the new policy"), { timeoutMs: 10_000 });
      }

      ok(await admin.call(PolicyService.method.deletePolicy, { name: "replicated-reader" }, { bearerToken: adminToken }));
      for (const c of onReplica) {
        await eventually(async () => fails(await c.call(SecretService.method.getSecret, { path: "replicated/secret" }), "PERMISSION_DENIED", "the replica drops the deleted policy"), {
          timeoutMs: 10_000,
        });
      }
    });
  });
});
