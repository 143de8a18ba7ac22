// ChangeAdminPassword and RotateRootKey on two servers sharing one database:
// the old password stops working for Unseal and Login on both at once, old
// sessions end while admin tokens stay, a wrong current password counts toward
// the lockout, and bad input is refused before anything is written. After
// RotateRootKey the other replica seals itself and unseals with the password.

import { expect } from "chai";
import type postgres from "postgres";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createAdminToken } from "../support/admin-fixtures.js";
import { adminSession, ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { startTestServer, type TestServer } from "../support/test-server.js";

const NEW_PASSWORD = "a-brand-new-admin-password-7";

async function waitFor(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("ChangeAdminPassword and RotateRootKey", function () {
  this.timeout(120_000);
  let a: SecretTestServer;
  let b: TestServer;
  let db: postgres.Sql;
  let ca: NexusClient;
  let cb: NexusClient;

  beforeEach(async () => {
    a = await startSecretServer({ start: { ...FAST_KDF } });
    b = await startTestServer({ pki: a.pki, databaseUrl: a.nexus.databaseUrl, start: FAST_KDF });
    db = openDatabase(a.nexus.databaseUrl);
    ca = a.client("grpc");
    cb = b.client("connect");
    ok(await cb.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "unseal B");
  });
  afterEach(async () => {
    await db?.end();
    await b?.stop();
    await a?.stop();
  });

  it("the bad-input table: each refused with its status and field, and nothing changes", async () => {
    const session = await adminSession(ca);
    const cases: Array<{ request: { currentPassword: string; newPassword: string }; code: string; field?: string; reason: string }> = [
      { request: { currentPassword: ADMIN_PASSWORD, newPassword: "short-11chr" }, code: "INVALID_ARGUMENT", field: "new_password", reason: "PASSWORD_TOO_SHORT" },
      { request: { currentPassword: ADMIN_PASSWORD, newPassword: ADMIN_PASSWORD }, code: "INVALID_ARGUMENT", field: "new_password", reason: "PASSWORD_UNCHANGED" },
      { request: { currentPassword: "", newPassword: NEW_PASSWORD }, code: "INVALID_ARGUMENT", field: "current_password", reason: "EMPTY_PASSWORD" },
      { request: { currentPassword: "not-the-password-at-all", newPassword: NEW_PASSWORD }, code: "PERMISSION_DENIED", reason: "WRONG_PASSWORD" },
    ];
    const [before] = await db`SELECT encrypted_key, kdf_salt FROM root_keys`;
    for (const c of cases) {
      const result = await ca.call(OperatorService.method.changeAdminPassword, c.request, { bearerToken: session });
      fails(result, c.code, JSON.stringify(c.request));
      expect(result.reason).to.equal(c.reason);
      if (c.field) expect(result.violations?.map((v) => v.field)).to.deep.equal([c.field]);
    }
    // A workload SVID is PERMISSION_DENIED; no session UNAUTHENTICATED.
    const workload = a.client("grpc", a.pki.workload);
    fails(await workload.call(OperatorService.method.changeAdminPassword, { currentPassword: ADMIN_PASSWORD, newPassword: NEW_PASSWORD }), "PERMISSION_DENIED");
    fails(await ca.call(OperatorService.method.changeAdminPassword, { currentPassword: ADMIN_PASSWORD, newPassword: NEW_PASSWORD }), "UNAUTHENTICATED");
    const [after] = await db`SELECT encrypted_key, kdf_salt FROM root_keys`;
    expect(after.encrypted_key.equals(before.encrypted_key)).to.equal(true);
    // The wrong current password was counted toward the lockout shared with Login and Unseal.
    const [failures] = await db`SELECT count(*)::int AS n FROM auth_failures`;
    expect(failures.n).to.be.greaterThan(0);
    // Sealed: FAILED_PRECONDITION (the admin rule refuses before the handler).
    await seal(ca);
    fails(await ca.call(OperatorService.method.changeAdminPassword, { currentPassword: ADMIN_PASSWORD, newPassword: NEW_PASSWORD }, { bearerToken: session }), "FAILED_PRECONDITION");
  });

  it("after a change on A, the old password is PERMISSION_DENIED for Login and Unseal on A and B and the new one works; old sessions are UNAUTHENTICATED, admin tokens stay", async () => {
    const session = await adminSession(ca);
    const sessionB = await adminSession(cb);
    const token = (await createAdminToken(ca, session, "automation", 3_600_000)).token;
    const res = ok(await ca.call(OperatorService.method.changeAdminPassword, { currentPassword: ADMIN_PASSWORD, newPassword: NEW_PASSWORD }, { bearerToken: session }));
    expect(res.sessionsRevoked).to.equal(2);
    for (const client of [ca, cb]) {
      expect(fails(await client.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD }), "PERMISSION_DENIED")).to.match(/not correct/);
      fails(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "PERMISSION_DENIED");
      ok(await client.call(OperatorService.method.login, { adminPassword: NEW_PASSWORD }), "Login with the new password");
      ok(await client.call(OperatorService.method.unseal, { adminPassword: NEW_PASSWORD }), "Unseal with the new password");
    }
    fails(await ca.call(OperatorService.method.listAdminTokens, {}, { bearerToken: session }), "UNAUTHENTICATED");
    fails(await cb.call(OperatorService.method.listAdminTokens, {}, { bearerToken: sessionB }), "UNAUTHENTICATED");
    ok(await cb.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token }), "the admin token stays");
    // A restart unseals with the new password only.
    const restarted = await a.restart();
    a = restarted;
    const cr = restarted.client("grpc");
    fails(await cr.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "PERMISSION_DENIED");
    ok(await cr.call(OperatorService.method.unseal, { adminPassword: NEW_PASSWORD }));
  });

  it("RotateRootKey on A: a new root key, the old row deleted, every secret still readable; B seals itself and unseals with the password", async () => {
    ok(await ca.call(SecretService.method.putSecret, { path: "app/one", data: { v: "1" } }));
    const session = await adminSession(ca);
    fails(await ca.call(OperatorService.method.rotateRootKey, { adminPassword: "wrong-password-here" }, { bearerToken: session }), "PERMISSION_DENIED");
    const res = ok(await ca.call(OperatorService.method.rotateRootKey, { adminPassword: ADMIN_PASSWORD }, { bearerToken: session }));
    expect(res.rootKeyId).to.equal(2);
    const roots = await db`SELECT id, active FROM root_keys`;
    expect(roots.map((r) => r.id)).to.deep.equal([2]);
    const ring = await db`SELECT DISTINCT root_key_id FROM keyring_keys`;
    expect(ring.map((r) => r.root_key_id)).to.deep.equal([2]);
    expect(ok(await ca.call(SecretService.method.getSecret, { path: "app/one" })).data).to.deep.equal({ v: "1" });
    await waitFor(async () => b.nexus.keys.sealed);
    fails(await cb.call(SecretService.method.getSecret, { path: "app/one" }), "FAILED_PRECONDITION");
    ok(await cb.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
    expect(ok(await cb.call(SecretService.method.getSecret, { path: "app/one" })).data).to.deep.equal({ v: "1" });
    // A restart of A unseals under the new root key.
    a = await a.restart();
    ok(await a.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
    expect(ok(await a.client("grpc").call(SecretService.method.getSecret, { path: "app/one" })).data).to.deep.equal({ v: "1" });
  });
});
