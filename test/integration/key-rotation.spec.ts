// RotateEncryptionKey over both listeners: a server stream through the call
// pipeline (start and end audited, refusals audited, client cancel), and the
// rotation itself: new keys, every data key re-wrapped, policies and admin
// credentials re-MAC'd under the new integrity key, the old wrapping key
// deleted, and a second server on the same database following.

import { expect } from "chai";
import type postgres from "postgres";
import { OperatorService, RotationPhase, type RotateEncryptionKeyResponse } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import { StreamFailure, type NexusClient } from "../../src/client/nexus-client.js";
import { createPolicy, exactly, forEachConcurrently, issueSvid, spiffeId } from "../support/admin-fixtures.js";
import { adminSession, ADMIN_PASSWORD, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, startTestServer } from "../support/test-server.js";
import { FAST_KDF } from "../support/secret-server.js";

const ROTATE = OperatorService.method.rotateEncryptionKey;

async function collect(stream: AsyncIterable<RotateEncryptionKeyResponse>): Promise<RotateEncryptionKeyResponse[]> {
  const out: RotateEncryptionKeyResponse[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

async function streamFailure(stream: AsyncIterable<unknown>): Promise<StreamFailure> {
  try {
    for await (const _ of stream) {
      // no message expected
    }
  } catch (err) {
    expect(err).to.be.instanceOf(StreamFailure);
    return err as StreamFailure;
  }
  throw new Error("the stream did not fail");
}

async function waitFor(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function putSecrets(client: NexusClient, n: number, prefix = "app/s"): Promise<void> {
  await forEachConcurrently(
    Array.from({ length: n }, (_, i) => i),
    16,
    async (i) => void ok(await client.call(SecretService.method.putSecret, { path: `${prefix}${i}`, data: { v: `value-${i}` } }), `put ${i}`),
  );
}

describe("RotateEncryptionKey (a server stream on both listeners)", function () {
  this.timeout(120_000);
  let server: SecretTestServer;
  let db: postgres.Sql;
  let admin: NexusClient;
  let token: string;

  before(async () => {
    server = await startSecretServer({ start: { ...FAST_KDF } });
    db = openDatabase(server.nexus.databaseUrl);
    admin = server.client("grpc");
    token = await adminSession(admin);
    await putSecrets(admin, 1200);
  });
  after(async () => {
    await db?.end();
    await server?.stop();
  });

  for (const listener of LISTENERS) {
    it(`on the ${listener} listener: streams progress to DONE; every version still decrypts; the old wrapping key row is deleted`, async () => {
      const client = server.client(listener);
      const bearerToken = await adminSession(client);
      const [before] = await db`SELECT max(id) AS id FROM keyring_keys WHERE purpose = 'wrapping'`;
      const messages = await collect(client.stream(ROTATE, {}, { bearerToken }));
      const last = messages[messages.length - 1];
      expect(last.phase).to.equal(RotationPhase.DONE);
      expect(last.oldKeyId).to.equal(before.id);
      expect(last.newKeyId).to.be.greaterThan(before.id);
      const [all] = await db`SELECT count(*)::int AS n FROM secrets`;
      expect(Number(last.done)).to.equal(all.n);
      expect(new Set(messages.map((m) => m.rotationId)).size).to.equal(1);
      const keyring = await db`SELECT id, purpose FROM keyring_keys ORDER BY id`;
      expect(keyring.filter((k) => k.purpose === "wrapping").map((k) => k.id)).to.deep.equal([last.newKeyId]);
      const [wrapped] = await db`SELECT count(*)::int AS n FROM secrets WHERE keyring_key_id <> ${last.newKeyId}`;
      expect(wrapped.n).to.equal(0);
      for (const i of [0, 599, 1199]) {
        const got = ok(await client.call(SecretService.method.getSecret, { path: `app/s${i}` }), `get ${i}`);
        expect(got.data).to.deep.equal({ v: `value-${i}` });
      }
      // A new secret is wrapped by the new key.
      ok(await client.call(SecretService.method.putSecret, { path: `app/new-${listener}`, data: { v: "n" } }));
      const [row] = await db`SELECT keyring_key_id FROM secrets WHERE path = ${`app/new-${listener}`}`;
      expect(row.keyring_key_id).to.equal(last.newKeyId);
      // The stream's start and end are audit events.
      const events = await db`SELECT outcome, code, detail FROM audit_events WHERE rpc = '/spike.nexus.v1.OperatorService/RotateEncryptionKey' ORDER BY id DESC LIMIT 3`;
      expect(events.map((e) => e.detail.stream ?? (e.detail.reencrypt === false ? "rotation" : undefined))).to.have.members(["started", "rotation", "ended"]);
      expect(events.every((e) => e.code === "OK")).to.equal(true);
    });
  }

  it("re-MACs policies and admin credentials under the new integrity key: sessions and policies keep working, the audit log still verifies", async () => {
    const workload = await issueSvid(server, spiffeId("workload/rotated"));
    await createPolicy(admin, token, { name: "rotated-reader", spiffeIdPattern: exactly(spiffeId("workload/rotated")), pathPattern: "^app/s1$", permissions: [Permission.READ] });
    const [epochBefore] = await db`SELECT integrity_key_id FROM grant_epochs WHERE name = 'policies'`;
    const messages = await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    expect(messages[messages.length - 1].phase).to.equal(RotationPhase.DONE);
    const epochs = await db`SELECT name, integrity_key_id FROM grant_epochs ORDER BY name`;
    for (const e of epochs) expect(e.integrity_key_id).to.be.greaterThan(epochBefore.integrity_key_id);
    // The session from before the rotation still works, and the policy still grants.
    ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token }), "session from before the rotation");
    const reader = server.client("grpc", workload);
    ok(await reader.call(SecretService.method.getSecret, { path: "app/s1" }), "policy from before the rotation");
    const verified = ok(await admin.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }));
    expect(verified.problems, JSON.stringify(verified.problems)).to.deep.equal([]);
  });

  it("a policy set written back from before the rotation (MAC'd under the retired integrity key) is refused: its policies grant nothing", async () => {
    const reader = server.client("grpc", await issueSvid(server, spiffeId("workload/rotated")));
    ok(await reader.call(SecretService.method.getSecret, { path: "app/s1" }), "before");
    const policiesBefore = await db`SELECT id, mac FROM policies`;
    const [epochBefore] = await db`SELECT epoch, digest, mac, integrity_key_id FROM grant_epochs WHERE name = 'policies'`;
    await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    const policiesNow = await db`SELECT id, mac FROM policies`;
    const [epochNow] = await db`SELECT epoch, digest, mac, integrity_key_id FROM grant_epochs WHERE name = 'policies'`;
    const writeBack = (rows: postgres.Row[], epoch: postgres.Row, bump: number) =>
      db.begin(async (tx) => {
        for (const p of rows) await tx`UPDATE policies SET mac = ${p.mac} WHERE id = ${p.id}`;
        await tx`UPDATE grant_epochs SET epoch = ${Number(epoch.epoch) + bump}, digest = ${epoch.digest}, mac = ${epoch.mac}, integrity_key_id = ${epoch.integrity_key_id} WHERE name = 'policies'`;
      });
    await writeBack(policiesBefore, epochBefore, 0);
    await waitFor(async () => (await reader.call(SecretService.method.getSecret, { path: "app/s1" })).code === "PERMISSION_DENIED");
    await writeBack(policiesNow, epochNow, 0);
    await waitFor(async () => (await reader.call(SecretService.method.getSecret, { path: "app/s1" })).code === "OK");
  });

  it("refusals are audited: a workload SVID is PERMISSION_DENIED, no credential UNAUTHENTICATED", async () => {
    const workload = server.client("connect", server.pki.workload);
    expect((await streamFailure(workload.stream(ROTATE, {}))).code).to.equal("PERMISSION_DENIED");
    expect((await streamFailure(server.client("grpc").stream(ROTATE, {}))).code).to.equal("UNAUTHENTICATED");
    const events = await db`SELECT outcome, code FROM audit_events WHERE rpc = '/spike.nexus.v1.OperatorService/RotateEncryptionKey' ORDER BY id DESC LIMIT 2`;
    expect(events.map((e) => e.code).sort()).to.deep.equal(["PERMISSION_DENIED", "UNAUTHENTICATED"]);
  });

  it("a client that closes the stream does not cancel the rotation; a second call attaches to it", async () => {
    for (const listener of LISTENERS) {
      const client = server.client(listener);
      const bearerToken = await adminSession(client);
      let first: RotateEncryptionKeyResponse | undefined;
      for await (const m of client.stream(ROTATE, {}, { bearerToken })) {
        first = m;
        break;
      }
      const attached = await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
      expect(attached[0].rotationId).to.equal(first!.rotationId);
      expect(attached[attached.length - 1].phase).to.equal(RotationPhase.DONE);
      // The closed stream's end is recorded CANCELLED.
      await new Promise((r) => setTimeout(r, 300));
      const [ended] = await db`
        SELECT code FROM audit_events WHERE rpc = '/spike.nexus.v1.OperatorService/RotateEncryptionKey' AND detail->>'stream' = 'ended' AND code = 'CANCELLED'`;
      expect(ended, `${listener}: a CANCELLED end event`).to.not.equal(undefined);
    }
  });

  it("sealed: FAILED_PRECONDITION", async () => {
    await seal(admin);
    expect((await streamFailure(admin.stream(ROTATE, {}, { bearerToken: token }))).code).to.equal("FAILED_PRECONDITION");
    ok(await admin.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
  });
});

describe("RotateEncryptionKey with two servers on one database", function () {
  this.timeout(120_000);

  it("A rotates under GetSecret and PutSecret load on A and B: not one request fails, and B's new rows use the new wrapping key", async () => {
    const a = await startSecretServer({ start: { ...FAST_KDF } });
    const b = await startTestServer({ pki: a.pki, databaseUrl: a.nexus.databaseUrl, start: FAST_KDF });
    const db = openDatabase(a.nexus.databaseUrl);
    try {
      const ca = a.client("grpc");
      const cb = b.client("connect");
      ok(await cb.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
      await putSecrets(ca, 800);
      const token = await adminSession(ca);
      let stop = false;
      const failures: string[] = [];
      let requests = 0;
      const load = async (client: NexusClient, name: string) => {
        let i = 0;
        while (!stop) {
          const n = i++ % 800;
          const r = i % 3 === 0
            ? await client.call(SecretService.method.putSecret, { path: `app/s${n}`, data: { v: `value-${n}` } })
            : await client.call(SecretService.method.getSecret, { path: `app/s${n}` });
          requests++;
          if (r.code !== "OK") failures.push(`${name}: ${r.code} ${r.reason} ${r.message}`);
        }
      };
      const loads = [load(ca, "A"), load(ca, "A"), load(cb, "B"), load(cb, "B")];
      const messages = await collect(ca.stream(ROTATE, {}, { bearerToken: token }));
      stop = true;
      await Promise.all(loads);
      expect(failures.slice(0, 5)).to.deep.equal([]);
      expect(requests).to.be.greaterThan(100);
      const newKeyId = messages[messages.length - 1].newKeyId;
      ok(await cb.call(SecretService.method.putSecret, { path: "app/from-b", data: { v: "b" } }));
      const [row] = await db`SELECT keyring_key_id FROM secrets WHERE path = 'app/from-b'`;
      expect(row.keyring_key_id).to.equal(newKeyId);
      for (const client of [ca, cb]) {
        for (const n of [0, 400, 799]) expect(ok(await client.call(SecretService.method.getSecret, { path: `app/s${n}` })).data).to.deep.equal({ v: `value-${n}` });
      }
      const [orphans] = await db`SELECT count(*)::int AS n FROM secrets s WHERE NOT EXISTS (SELECT 1 FROM keyring_keys k WHERE k.id = s.keyring_key_id)`;
      expect(orphans.n).to.equal(0);
    } finally {
      await db.end();
      await b.stop();
      await a.stop();
    }
  });
});
