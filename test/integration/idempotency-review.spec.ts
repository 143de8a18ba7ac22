// Review of issue 17 §5 (adversarial): a duplicate of a policy write that
// arrives while the first still runs must get the first result (as
// docs/operations.md promises), and a database writer must not be able to
// keep a record alive past its 24 h by moving its unMAC'd created_at.

import { expect } from "chai";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { holdRowLock } from "../support/row-lock.js";
import { login } from "../support/admin-fixtures.js";
import { ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { sleep } from "../support/wait.js";

describe("idempotent writes (review)", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let token: string;
  let admin: NexusClient;

  /** Holds the policies' grant-epoch row (every policy write locks it first) until released. */
  const holdPolicies = () => holdRowLock(db, (tx) => tx`SELECT 1 FROM grant_epochs WHERE name = 'policies' FOR UPDATE`);

  before(async () => {
    server = await startSecretServer();
    admin = server.client("grpc");
    db = openDatabase(server.nexus.databaseUrl);
    token = (await login(admin, 3_600_000)).token;
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  it("a duplicate CreatePolicy arriving while the first still runs gets the first result, not ALREADY_EXISTS", async () => {
    const policy = { policy: { name: "idem-review-dup", spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.*", permissions: [Permission.READ] } };
    const release = await holdPolicies();
    const calls = [server.client("grpc"), server.client("connect")].map((c) => c.call(PolicyService.method.createPolicy, policy, { bearerToken: token, idempotencyKey: "k-review-create" }));
    await sleep(300);
    await release();
    const results = await Promise.all(calls);
    expect(results.map((r) => `${r.code} ${r.reason ?? ""}`)).to.deep.equal(["OK ", "OK "]);
  });

  it("a duplicate DeletePolicy arriving while the first still runs gets the first result, not NOT_FOUND", async () => {
    const name = "idem-review-del";
    ok(await admin.call(PolicyService.method.createPolicy, { policy: { name, spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.*", permissions: [Permission.READ] } }, { bearerToken: token }));
    const release = await holdPolicies();
    const calls = [server.client("grpc"), server.client("connect")].map((c) => c.call(PolicyService.method.deletePolicy, { name }, { bearerToken: token, idempotencyKey: "k-review-delete" }));
    await sleep(300);
    await release();
    const results = await Promise.all(calls);
    expect(results.map((r) => `${r.code} ${r.reason ?? ""}`)).to.deep.equal(["OK ", "OK "]);
  });

  it("a duplicate UpdatePolicy arriving while the first still runs gets the first result, not ABORTED", async () => {
    const name = "idem-review-upd";
    ok(await admin.call(PolicyService.method.createPolicy, { policy: { name, spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.*", permissions: [Permission.READ] } }, { bearerToken: token }));
    const update = { name, policy: { pathPattern: "y/.*" }, updateMask: { paths: ["path_pattern"] } };
    const release = await holdPolicies();
    const calls = [server.client("grpc"), server.client("connect")].map((c) => c.call(PolicyService.method.updatePolicy, update, { bearerToken: token, idempotencyKey: "k-review-update" }));
    await sleep(300);
    await release();
    const results = await Promise.all(calls);
    expect(results.map((r) => `${r.code} ${r.reason ?? ""}`)).to.deep.equal(["OK ", "OK "]);
  });

  it("a duplicate PutSecret with cas arriving while the first still runs gets the first result, not a cas mismatch", async () => {
    const path = "idem-review/cas";
    ok(await admin.call(SecretService.method.putSecret, { path, data: { v: "1" } }));
    // Holds the secret's row: the puts wait for it together.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const held = db.begin(async (tx) => {
      await tx`SELECT id FROM secrets WHERE path = ${path} FOR UPDATE`;
      locked();
      await released;
    });
    await isLocked;
    const put = { path, data: { v: "2" }, cas: 1 };
    const calls = [server.client("grpc"), server.client("connect")].map((c) => c.call(SecretService.method.putSecret, put, { idempotencyKey: "k-review-cas" }));
    await sleep(300);
    release();
    await held;
    const results = await Promise.all(calls);
    expect(results.map((r) => `${r.code} ${r.reason ?? ""} ${r.response?.version ?? ""}`)).to.deep.equal(["OK  2", "OK  2"]);
  });

  it("a record whose created_at a database writer moved forward is not replayed (it would outlive its 24 h)", async () => {
    const path = "idem-review/moved";
    const put = { path, data: { v: "1" } };
    const first = ok(await admin.call(SecretService.method.putSecret, put, { idempotencyKey: "k-review-moved" }));
    // A database writer keeps the record alive forever (and picks the time a replay reports).
    await db`UPDATE idempotency_keys SET created_at = now() + interval '10 years' WHERE key = 'k-review-moved'`;
    const res = await admin.call(SecretService.method.putSecret, put, { idempotencyKey: "k-review-moved" });
    const reported = res.response?.createdAt ? new Date(timestampMs(res.response.createdAt)).toISOString() : "-";
    expect(res.code, `replayed version ${res.response?.version} created ${reported} (first: ${new Date(timestampMs(first.createdAt!)).toISOString()})`).to.not.equal("OK");
  });
});
