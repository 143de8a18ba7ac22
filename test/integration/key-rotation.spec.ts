// RotateEncryptionKey over both listeners: a server stream through the call
// pipeline (start and end audited, refusals audited, client cancel), and the
// rotation itself: new keys, every data key re-wrapped, policies and admin
// credentials re-MAC'd under the new integrity key, the old wrapping key
// deleted, and a second server on the same database following.

import { expect } from "chai";
import type postgres from "postgres";
import { OperatorService, RotationPhase, type RotateEncryptionKeyResponse } from "../../gen/spike/nexus/v1/operator_pb.js";
import { ByteEncoding, SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { integrityWindowMac } from "../../src/keys/key-manager.js";
import { labelsMac } from "../../src/services/secret-labels.js";
import { Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import { StreamFailure, type NexusClient } from "../../src/client/nexus-client.js";
import { createPolicy, exactly, forEachConcurrently, issueSvid, spiffeId } from "../support/admin-fixtures.js";
import { adminSession, ADMIN_PASSWORD, fails, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, startTestServer } from "../support/test-server.js";
import { PolicyStore } from "../../src/store/policy-store.js";
import { CredentialStore } from "../../src/store/credential-store.js";
import { POLICY_SET } from "../../src/authorization/policy-sync.js";
import { CREDENTIAL_SET } from "../../src/authorization/admin-credentials.js";
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

  it("each secret's next write after a rotation uses a fresh data key; its older versions are re-encrypted under it and still decrypt", async () => {
    ok(await admin.call(SecretService.method.putSecret, { path: "fresh/a", data: { v: "1" } }));
    ok(await admin.call(SecretService.method.putSecret, { path: "fresh/a", data: { v: "2" } }));
    const [before] = await db`SELECT data_key_id, (SELECT ciphertext FROM secret_versions WHERE secret_id = s.id AND version = 1) AS v1 FROM secrets s WHERE path = 'fresh/a'`;
    await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    const [rewrapped] = await db`SELECT data_key_id FROM secrets WHERE path = 'fresh/a'`;
    expect(rewrapped.data_key_id, "a re-wrap keeps the data key").to.equal(before.data_key_id);
    ok(await admin.call(SecretService.method.putSecret, { path: "fresh/a", data: { v: "3" } }));
    const [after] = await db`SELECT data_key_id, (SELECT ciphertext FROM secret_versions WHERE secret_id = s.id AND version = 1) AS v1 FROM secrets s WHERE path = 'fresh/a'`;
    expect(after.data_key_id).to.equal(before.data_key_id + 1);
    expect(after.v1.equals(before.v1)).to.equal(false);
    for (const [version, v] of [[1, "1"], [2, "2"], [3, "3"]] as const) {
      for (const listener of LISTENERS) {
        expect(ok(await server.client(listener).call(SecretService.method.getSecret, { path: "fresh/a", version })).data).to.deep.equal({ v });
      }
    }
    // The write after that keeps the fresh key.
    ok(await admin.call(SecretService.method.putSecret, { path: "fresh/a", data: { v: "4" } }));
    const [later] = await db`SELECT data_key_id FROM secrets WHERE path = 'fresh/a'`;
    expect(later.data_key_id).to.equal(after.data_key_id);
  });

  it("reencrypt: true gives every secret a fresh data key and re-encrypts every live version; all still decrypt", async () => {
    const before = new Map((await db`SELECT path, data_key_id FROM secrets`).map((r) => [r.path as string, r.data_key_id as number]));
    const messages = await collect(admin.stream(ROTATE, { reencrypt: true }, { bearerToken: token }));
    expect(messages[messages.length - 1].phase).to.equal(RotationPhase.DONE);
    const after = await db`SELECT path, data_key_id, data_key_origin_key_id, keyring_key_id FROM secrets`;
    for (const r of after) {
      expect(r.data_key_id, r.path).to.equal(before.get(r.path)! + 1);
      expect(r.data_key_origin_key_id).to.equal(r.keyring_key_id);
    }
    for (const i of [0, 1, 1199]) expect(ok(await admin.call(SecretService.method.getSecret, { path: `app/s${i}` })).data).to.deep.equal({ v: `value-${i}` });
    expect(ok(await admin.call(SecretService.method.getSecret, { path: "fresh/a", version: 1 })).data).to.deep.equal({ v: "1" });
  });

  it("the keys from before a rotation cannot verify a policy, a credential or an epoch written after it (the new ones can)", async () => {
    const oldKey = Buffer.from(server.nexus.keys.integrityKey());
    await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    await createPolicy(admin, token, { name: "after-rotation", spiffeIdPattern: exactly(spiffeId("workload/after")), pathPattern: "^x$", permissions: [Permission.READ] });
    const session = await adminSession(admin);
    const newKey = server.nexus.keys.integrityKey();
    const policies = await new PolicyStore(db as never).all();
    const credentials = (await new CredentialStore(db as never).snapshot()).rows;
    const after = policies.find((p) => p.name === "after-rotation")!;
    expect(POLICY_SET.rowVerifies(oldKey, after)).to.equal(false);
    expect(POLICY_SET.rowVerifies(newKey, after)).to.equal(true);
    expect(credentials.length).to.be.greaterThan(0);
    for (const c of credentials) {
      expect(CREDENTIAL_SET.rowVerifies(oldKey, c)).to.equal(false);
      expect(CREDENTIAL_SET.rowVerifies(newKey, c)).to.equal(true);
    }
    // Every row re-MAC'd: not one policy from before verifies under the old key any more.
    expect(policies.filter((p) => POLICY_SET.rowVerifies(oldKey, p))).to.deep.equal([]);
    ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: session }));
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

  it("GetStatus shows the superuser with an admin credential the root key, the keyring and data keys per wrapping key; everyone else sees what they saw before", async () => {
    for (const listener of LISTENERS) {
      const status = ok(await server.client(listener).call(OperatorService.method.getStatus, {}, { bearerToken: token }));
      expect(status.rootKeyId).to.equal(1);
      const wrapping = status.keyring.filter((k) => k.purpose === "wrapping" && k.active);
      expect(wrapping.map((k) => k.id)).to.deep.equal([status.activeKeyringKeyId]);
      const [count] = await db`SELECT count(*)::int AS n FROM secrets`;
      expect(Number(wrapping[0].dataKeys)).to.equal(count.n);
      expect(status.keyring.filter((k) => k.purpose === "integrity" && k.active)).to.have.length(1);
      expect(status.rotation).to.equal(undefined);
      for (const [who, options] of [
        [server.client(listener, server.pki.workload), {}],
        [server.client(listener, server.pki.workload), { bearerToken: token }],
        [server.client(listener), {}],
        [server.client(listener), { bearerToken: "nxs_not-a-real-token" }],
      ] as const) {
        const plain = ok(await who.call(OperatorService.method.getStatus, {}, options));
        expect([plain.rootKeyId, plain.keyring.length, plain.rotation]).to.deep.equal([0, 0, undefined]);
        expect(plain.activeKeyringKeyId).to.equal(status.activeKeyringKeyId);
      }
    }
  });

  it("Logins and policy changes while a rotation commits on the same replica all succeed (MAC'd again under the new key when they raced it)", async () => {
    let stop = false;
    const failures: string[] = [];
    let n = 0;
    const churn = async () => {
      while (!stop) {
        const i = n++;
        const login = await admin.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD });
        if (login.code !== "OK") failures.push(`Login: ${login.code} ${login.reason}`);
        const policy = await admin.call((await import("../../gen/spike/nexus/v1/policy_pb.js")).PolicyService.method.createPolicy, {
          policy: { name: `churn-${i}`, spiffeIdPattern: exactly(spiffeId(`workload/churn-${i}`)), pathPattern: "^x$", permissions: [Permission.READ] },
        }, { bearerToken: token });
        if (policy.code !== "OK") failures.push(`CreatePolicy: ${policy.code} ${policy.reason}`);
      }
    };
    const workers = [churn(), churn(), churn()];
    for (let r = 0; r < 3; r++) await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    stop = true;
    await Promise.all(workers);
    expect(failures.slice(0, 5).join("\n")).to.equal("");
    expect(n).to.be.greaterThan(3);
    // Every policy written under the churn verifies: the set still loads and grants.
    ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token }));
  });

  it("two calls at once, on both listeners, start one rotation: both stream the same rotation id", async () => {
    const [rows] = await db`SELECT count(*)::int AS n FROM key_rotations`;
    const both = await Promise.all(LISTENERS.map(async (listener) => collect(server.client(listener).stream(ROTATE, {}, { bearerToken: await adminSession(server.client(listener)) }))));
    expect(both[0][0].rotationId).to.equal(both[1][0].rotationId);
    const [after] = await db`SELECT count(*)::int AS n FROM key_rotations`;
    expect(after.n).to.equal(rows.n + 1);
  });

  it("a database writer cannot re-activate a retired key: after restart and Unseal the replica uses the highest id of each purpose, whatever the active flags say", async () => {
    const integrity = await db`SELECT id FROM keyring_keys WHERE purpose = 'integrity' ORDER BY id`;
    expect(integrity.length).to.be.greaterThan(1);
    const highest = integrity[integrity.length - 1].id as number;
    await db.begin(async (tx) => {
      await tx`UPDATE keyring_keys SET active = false WHERE active`;
      await tx`UPDATE keyring_keys SET active = true WHERE id = ${integrity[0].id}`;
    });
    server = await server.restart();
    db = openDatabase(server.nexus.databaseUrl);
    admin = server.client("grpc");
    ok(await admin.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
    expect(server.nexus.keys.activeIntegrityKeyId).to.equal(highest);
    const [wrapping] = await db`SELECT max(id) AS id FROM keyring_keys WHERE purpose = 'wrapping'`;
    expect(server.nexus.keys.activeKeyringKeyId).to.equal(wrapping.id);
    token = await adminSession(admin);
    ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token }), "credentials verify under the highest integrity key");
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
      const stream = ca.stream(ROTATE, {}, { bearerToken: token });
      const messages: RotateEncryptionKeyResponse[] = [];
      let followedWithinMs: number | undefined;
      for await (const m of stream) {
        if (messages.length === 0) {
          // B takes the new wrapping key up within a second (LISTEN/NOTIFY).
          const t = Date.now();
          while (b.nexus.keys.activeKeyringKeyId !== m.newKeyId && Date.now() - t < 1000) await new Promise((r) => setTimeout(r, 10));
          if (b.nexus.keys.activeKeyringKeyId === m.newKeyId) followedWithinMs = Date.now() - t;
        }
        messages.push(m);
      }
      expect(followedWithinMs, "B active wrapping key = the new one within 1 s").to.not.equal(undefined);
      stop = true;
      await Promise.all(loads);
      expect(failures.slice(0, 5).join("\n")).to.equal("");
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

describe("RotateEncryptionKey and per-secret rows under the integrity key (labels, rotation policies)", function () {
  this.timeout(120_000);
  let server: SecretTestServer;
  let db: postgres.Sql;
  let admin: NexusClient;
  let token: string;
  const { CURRENT, PENDING, PREVIOUS } = SecretLabel;
  const policy = { period: { seconds: 60n, nanos: 0 }, generator: { case: "randomBytes" as const, value: { length: 16, encoding: ByteEncoding.HEX } }, dataKey: "key" };
  const keyIdOf = (mac: Buffer) => (mac.length === 32 ? 2 : mac.readUInt32BE(0));
  const integrityKeyId = async () => Number((await db`SELECT max(id) AS id FROM keyring_keys WHERE purpose = 'integrity'`)[0].id);

  before(async () => {
    // Small batches: the re-MAC of 1,200 labelled secrets takes many resumable transactions.
    server = await startSecretServer({ start: { ...FAST_KDF }, env: { NEXUS_KEY_ROTATION_BATCH: "50" } });
    db = openDatabase(server.nexus.databaseUrl);
    admin = server.client("grpc");
    token = await adminSession(admin);
    // Labelled secrets: three versions each, the third staged PENDING (CURRENT, PENDING and PREVIOUS all set).
    await forEachConcurrently(Array.from({ length: 1200 }, (_, i) => i), 16, async (i) => {
      for (const [v, stage] of [["1", undefined], ["2", undefined], ["3", PENDING]] as const) {
        ok(await admin.call(SecretService.method.putSecret, { path: `lab/s${i}`, data: { v }, stage }), `put ${i} ${v}`);
      }
    });
    for (const i of [0, 1, 2]) ok(await admin.call(SecretService.method.updateSecretMetadata, { path: `lab/s${i}`, rotation: policy, updateMask: { paths: ["rotation"] } }));
  });
  after(async () => {
    await db?.end();
    await server?.stop();
  });

  it("after a rotation every label state and rotation policy is MAC'd under the new integrity key and reads as before, on both listeners", async () => {
    const before = await integrityKeyId();
    const messages = await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    expect(messages[messages.length - 1].phase).to.equal(RotationPhase.DONE);
    const after = await integrityKeyId();
    expect(after).to.be.greaterThan(before);
    const rows = await db`SELECT path, labels_mac, rotation_mac FROM secrets WHERE path LIKE 'lab/%'`;
    expect(rows.length).to.equal(1200);
    for (const r of rows) {
      expect(keyIdOf(r.labels_mac as Buffer), r.path as string).to.equal(after);
      if (r.rotation_mac !== null) expect(keyIdOf(r.rotation_mac as Buffer), r.path as string).to.equal(after);
    }
    expect(rows.filter((r) => r.rotation_mac !== null).length).to.equal(3);
    const [window] = await db`SELECT integrity_window_mac FROM key_rotations ORDER BY id DESC LIMIT 1`;
    expect(window.integrity_window_mac, "the re-MAC window is closed").to.equal(null);
    for (const listener of LISTENERS) {
      const client = server.client(listener);
      for (const [label, v] of [[CURRENT, "2"], [PENDING, "3"], [PREVIOUS, "1"]] as const) {
        const got = ok(await client.call(SecretService.method.getSecret, { path: "lab/s7", label }), `get ${label}`);
        expect(got.data).to.deep.equal({ v });
      }
      const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path: "lab/s1" })).metadata!;
      expect(meta.rotation?.dataKey).to.equal("key");
    }
    // Labels still move: a promotion and a put after the rotation.
    ok(await admin.call(SecretService.method.promoteSecretVersion, { path: "lab/s8", version: 3 }));
    ok(await admin.call(SecretService.method.putSecret, { path: "lab/s9", data: { v: "4" } }));
    expect(ok(await admin.call(SecretService.method.getSecret, { path: "lab/s8" })).data).to.deep.equal({ v: "3" });
  });

  it("a label row or rotation policy MAC'd under the retired integrity key is refused after the rotation (written back, or forged with the old key)", async () => {
    const oldKey = server.nexus.keys.activeIntegrityKey();
    const retired = { id: oldKey.id, key: Buffer.from(oldKey.key) };
    const [saved] = await db`SELECT * FROM secrets WHERE path = 'lab/s20'`;
    const [savedPolicy] = await db`SELECT rotation, rotation_mac FROM secrets WHERE path = 'lab/s2'`;
    await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    expect(ok(await admin.call(SecretService.method.getSecret, { path: "lab/s20" })).data).to.deep.equal({ v: "2" });
    // Written back as it was before the rotation (same epoch, old key).
    await db`UPDATE secrets SET labels_mac = ${saved.labels_mac} WHERE path = 'lab/s20'`;
    const written = await admin.call(SecretService.method.getSecret, { path: "lab/s20" });
    fails(written, "INTERNAL");
    expect(written.reason).to.equal("LABELS_ALTERED");
    // Forged with the retired key: CURRENT moved back to version 1 at a higher epoch.
    const [row] = await db`SELECT id, latest_version, label_epoch FROM secrets WHERE path = 'lab/s21'`;
    const forged = { current: 1, pending: 3, previous: null, epoch: Number(row.label_epoch) + 1, latestVersion: row.latest_version as number };
    const mac = labelsMac(retired, row.id as string, "lab/s21", forged);
    await db`UPDATE secrets SET current_version = 1, previous_version = NULL, label_epoch = ${forged.epoch}, labels_mac = ${mac} WHERE path = 'lab/s21'`;
    const got = await server.client("connect").call(SecretService.method.getSecret, { path: "lab/s21" });
    fails(got, "INTERNAL");
    expect(got.reason).to.equal("LABELS_ALTERED");
    // The same forgery under the active key is accepted: only the key makes the difference.
    const activeMac = labelsMac(server.nexus.keys.activeIntegrityKey(), row.id as string, "lab/s21", forged);
    await db`UPDATE secrets SET labels_mac = ${activeMac} WHERE path = 'lab/s21'`;
    expect(ok(await admin.call(SecretService.method.getSecret, { path: "lab/s21" })).data).to.deep.equal({ v: "1" });
    // A rotation policy written back from before the rotation.
    await db`UPDATE secrets SET rotation = ${savedPolicy.rotation}, rotation_mac = ${savedPolicy.rotation_mac} WHERE path = 'lab/s2'`;
    const meta = await admin.call(SecretService.method.getSecretMetadata, { path: "lab/s2" });
    fails(meta, "INTERNAL");
    expect(meta.reason).to.equal("ROTATION_POLICY_ALTERED");
    retired.key.fill(0);
  });

  it("a re-MAC window put back after the rotation opens nothing: a forged one does not verify, a replayed one is refused by a replica that saw it close", async () => {
    const oldKey = server.nexus.keys.activeIntegrityKey();
    const retired = { id: oldKey.id, key: Buffer.from(oldKey.key) };
    const [saved] = await db`SELECT labels_mac FROM secrets WHERE path = 'lab/s30'`;
    await collect(admin.stream(ROTATE, {}, { bearerToken: token }));
    const active = server.nexus.keys.activeIntegrityKey();
    const [last] = await db`SELECT * FROM key_rotations ORDER BY id DESC LIMIT 1`;
    const putBack = async (mac: Buffer) => {
      await db`DELETE FROM key_rotations WHERE phase <> 'done'`;
      await db`
        INSERT INTO key_rotations (phase, old_wrapping_key_id, new_wrapping_key_id, new_integrity_key_id, started_by, old_integrity_key_id, integrity_window_mac)
        VALUES ('remacing', ${last.old_wrapping_key_id}, ${last.new_wrapping_key_id}, ${active.id}, 'intruder', ${retired.id}, ${mac})`;
      // Any keyring change makes every replica read the keyring and the window again.
      await db`UPDATE keyring_keys SET active = active WHERE id = ${active.id}`;
      await server.nexus.keys.refreshKeyring();
    };
    await db`UPDATE secrets SET labels_mac = ${saved.labels_mac} WHERE path = 'lab/s30'`;
    // Forged with the retired key: does not verify under the new one.
    await putBack(integrityWindowMac(retired, retired.id));
    fails(await admin.call(SecretService.method.getSecret, { path: "lab/s30" }), "INTERNAL");
    // The genuine window (as a writer who read it during the rotation would have it): this replica saw it close.
    await putBack(integrityWindowMac(active, retired.id));
    fails(await admin.call(SecretService.method.getSecret, { path: "lab/s30" }), "INTERNAL");
    await db`DELETE FROM key_rotations WHERE phase <> 'done'`;
    retired.key.fill(0);
  });
});
