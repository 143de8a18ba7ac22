// Idempotent writes (issue 17 §5): a write with an `idempotency-key` header
// that is retried with the same key and request gets the first result, and
// nothing is written twice — also when the first call's client gave up after
// the server committed, and when the retry arrives while the first still runs.
// Reuse with another request is refused; keys are per caller; a record is MAC'd
// so a database writer cannot forge a replayed result; records expire.

import { expect } from "chai";
import { toBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { PutSecretResponseSchema, SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { IDEMPOTENCY_TTL_MS } from "../../src/services/idempotency.js";
import { IdempotencyStore } from "../../src/store/idempotency-store.js";
import { holdRowLock } from "../support/row-lock.js";
import { login } from "../support/admin-fixtures.js";
import { expectGaplessSequences } from "../support/audit-fixtures.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, SUPERUSER_ID, WORKLOAD_ID } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

const PUT_SECRET = "/spike.nexus.v1.SecretService/PutSecret";

describe("idempotent writes (idempotency-key)", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let token: string;
  const admin: Record<string, NexusClient> = {};
  let workload: NexusClient;

  const versions = async (path: string) =>
    (await db`SELECT v.version FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ${path} ORDER BY v.version`).map((r) => r.version as number);

  /** Holds the secret's row lock in a transaction of the test's own until `release` is called: a put waits for it. */
  const holdRow = (path: string) => holdRowLock(db, (tx) => tx`SELECT id FROM secrets WHERE path = ${path} FOR UPDATE`);

  before(async () => {
    server = await startSecretServer();
    for (const l of LISTENERS) admin[l] = server.client(l);
    workload = server.client("grpc", server.pki.workload);
    db = openDatabase(server.nexus.databaseUrl);
    token = (await login(admin.grpc, 3_600_000)).token;
    ok(
      await admin.grpc.call(PolicyService.method.createPolicy, { policy: { name: "idem-workload", spiffeIdPattern: WORKLOAD_ID.replace(/\./g, "\\."), pathPattern: "idem/.*", permissions: [Permission.WRITE, Permission.READ] } }, { bearerToken: token }),
    );
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  for (const listener of LISTENERS) {
    it(`${listener}: a client that timed out after the server committed retries with the same key and gets the same version; one version is written`, async () => {
      const path = `idem/timeout-${listener}`;
      const client = admin[listener];
      ok(await client.call(SecretService.method.putSecret, { path, data: { v: "1" } }));
      const release = await holdRow(path);
      const put = { path, data: { v: "2" } };
      // The put waits for the row; the client gives up first.
      const first = client.call(SecretService.method.putSecret, put, { idempotencyKey: `k-timeout-${listener}`, deadlineMs: 300 });
      expect((await first).code).to.equal("DEADLINE_EXCEEDED");
      await release();
      // The server carried on and committed the put with its record.
      await waitFor(async () => (await versions(path)).length === 2);
      const retry = ok(await client.call(SecretService.method.putSecret, put, { idempotencyKey: `k-timeout-${listener}` }), "retry");
      expect(retry.version).to.equal(2);
      const [stored] = await db`SELECT v.created_at FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ${path} AND v.version = 2`;
      expect(timestampMs(retry.createdAt!)).to.equal((stored.created_at as Date).getTime());
      // And again: still the first result, still one version.
      expect(ok(await client.call(SecretService.method.putSecret, put, { idempotencyKey: `k-timeout-${listener}` })).version).to.equal(2);
      expect(await versions(path)).to.deep.equal([1, 2]);
      const events = await db`SELECT outcome, code, detail FROM audit_events WHERE rpc = ${PUT_SECRET} AND path = ${path} ORDER BY id`;
      const replays = events.filter((e) => (e.detail as Record<string, unknown>).idempotent_replay === true);
      expect(replays.map((e) => `${e.outcome} ${e.code} ${(e.detail as Record<string, unknown>).idempotency_key}`)).to.deep.equal([
        `ok OK k-timeout-${listener}`,
        `ok OK k-timeout-${listener}`,
      ]);
    });
  }

  it("a duplicate arriving while the first call still runs waits for it and gets its result; one version is written", async () => {
    const path = "idem/concurrent";
    ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "1" } }));
    const release = await holdRow(path);
    const put = { path, data: { v: "2" } };
    const calls = [admin.grpc, admin.connect, admin.grpc].map((c) => c.call(SecretService.method.putSecret, put, { idempotencyKey: "k-concurrent" }));
    await sleep(300);
    await release();
    const results = await Promise.all(calls);
    expect(results.map((r) => `${r.code} ${r.response?.version}`)).to.deep.equal(["OK 2", "OK 2", "OK 2"]);
    expect(await versions(path)).to.deep.equal([1, 2]);
    await expectGaplessSequences(db);
  });

  it("the same request through the other listener, with its map entries in another order, is a replay", async () => {
    const path = "idem/map-order";
    const first = ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { a: "1", b: "2" } }, { idempotencyKey: "k-order" }));
    const again = ok(await admin.connect.call(SecretService.method.putSecret, { path, data: { b: "2", a: "1" } }, { idempotencyKey: "k-order" }), "replay");
    expect(again.version).to.equal(first.version);
    expect(await versions(path)).to.deep.equal([1]);
  });

  it("the same key with a different request is INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED and writes nothing", async () => {
    const path = "idem/reused";
    ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "1" } }, { idempotencyKey: "k-reused" }));
    const other = await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "other" } }, { idempotencyKey: "k-reused" });
    fails(other, "INVALID_ARGUMENT");
    expect(other.reason).to.equal("IDEMPOTENCY_KEY_REUSED");
    expect(other.violations?.map((v) => v.field)).to.deep.equal(["idempotency-key"]);
    // Another method with the same key is another request too.
    const promote = await admin.connect.call(SecretService.method.promoteSecretVersion, { path, version: 1 }, { idempotencyKey: "k-reused" });
    expect(promote.reason).to.equal("IDEMPOTENCY_KEY_REUSED");
    expect(await versions(path)).to.deep.equal([1]);
  });

  it("keys are scoped to the caller: another workload with the same key writes its own version", async () => {
    const path = "idem/callers";
    const a = ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "same" } }, { idempotencyKey: "k-shared" }));
    const b = ok(await workload.call(SecretService.method.putSecret, { path, data: { v: "same" } }, { idempotencyKey: "k-shared" }), "workload put");
    expect([a.version, b.version]).to.deep.equal([1, 2]);
    const rows = await db`SELECT caller FROM idempotency_keys WHERE key = 'k-shared' ORDER BY caller`;
    expect(rows.map((r) => r.caller)).to.deep.equal([SUPERUSER_ID, WORKLOAD_ID].sort());
  });

  it("a replay is re-authorized: a caller who lost its permission is refused, not replayed", async () => {
    const path = "idem/reauthorized";
    ok(await workload.call(SecretService.method.putSecret, { path, data: { v: "1" } }, { idempotencyKey: "k-reauth" }));
    ok(await admin.grpc.call(PolicyService.method.updatePolicy, { name: "idem-workload", policy: { permissions: [Permission.READ] }, updateMask: { paths: ["permissions"] } }, { bearerToken: token }));
    try {
      fails(await workload.call(SecretService.method.putSecret, { path, data: { v: "1" } }, { idempotencyKey: "k-reauth" }), "PERMISSION_DENIED");
    } finally {
      ok(await admin.grpc.call(PolicyService.method.updatePolicy, { name: "idem-workload", policy: { permissions: [Permission.READ, Permission.WRITE] }, updateMask: { paths: ["permissions"] } }, { bearerToken: token }));
    }
  });

  it("a stored result altered in the database is refused (INTERNAL IDEMPOTENCY_RECORD_ALTERED), not replayed", async () => {
    const path = "idem/tampered";
    const put = { path, data: { v: "1" } };
    ok(await admin.grpc.call(SecretService.method.putSecret, put, { idempotencyKey: "k-tampered" }));
    const forged = Buffer.from(toBinary(PutSecretResponseSchema, { $typeName: "spike.nexus.v1.PutSecretResponse", version: 7 } as never));
    await db`UPDATE idempotency_keys SET response = ${forged} WHERE key = 'k-tampered'`;
    const res = await admin.grpc.call(SecretService.method.putSecret, put, { idempotencyKey: "k-tampered" });
    fails(res, "INTERNAL");
    expect(res.reason).to.equal("IDEMPOTENCY_RECORD_ALTERED");
    expect(await versions(path)).to.deep.equal([1]);
  });

  it("PromoteSecretVersion, RotateSecret and the policy writes replay their first result", async () => {
    const path = "idem/others";
    ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "1" } }));
    ok(await admin.grpc.call(SecretService.method.putSecret, { path, data: { v: "2" }, stage: SecretLabel.PENDING }));
    const promote = { path, version: 2 };
    const p1 = ok(await admin.grpc.call(SecretService.method.promoteSecretVersion, promote, { idempotencyKey: "k-promote" }));
    // Promoting 1 back, then retrying the promotion of 2: the retry returns the first result and moves nothing.
    ok(await admin.grpc.call(SecretService.method.promoteSecretVersion, { path, version: 1 }));
    expect(ok(await admin.connect.call(SecretService.method.promoteSecretVersion, promote, { idempotencyKey: "k-promote" }))).to.deep.include({
      currentVersion: p1.currentVersion, previousVersion: p1.previousVersion,
    });
    const [labels] = await db`SELECT current_version FROM secrets WHERE path = ${path}`;
    expect(labels.current_version).to.equal(1);

    const rotate = { path, generator: { case: "randomBytes" as const, value: { length: 16 } }, dataKey: "token" };
    const r1 = ok(await admin.grpc.call(SecretService.method.rotateSecret, rotate, { idempotencyKey: "k-rotate" }));
    const r2 = ok(await admin.grpc.call(SecretService.method.rotateSecret, rotate, { idempotencyKey: "k-rotate" }));
    expect(r2.version).to.equal(r1.version);
    expect(await versions(path)).to.deep.equal([1, 2, 3]);

    const policy = { policy: { name: "idem-created", spiffeIdPattern: "spiffe://spike\\.ist/x", pathPattern: "x/.*", permissions: [Permission.READ] } };
    const c1 = ok(await admin.grpc.call(PolicyService.method.createPolicy, policy, { bearerToken: token, idempotencyKey: "k-policy" }));
    // Without the key the second create would be ALREADY_EXISTS.
    const c2 = ok(await admin.connect.call(PolicyService.method.createPolicy, policy, { bearerToken: token, idempotencyKey: "k-policy" }));
    expect(timestampMs(c2.policy!.createdAt!)).to.equal(timestampMs(c1.policy!.createdAt!));
    ok(await admin.grpc.call(PolicyService.method.deletePolicy, { name: "idem-created" }, { bearerToken: token, idempotencyKey: "k-policy-delete" }));
    ok(await admin.grpc.call(PolicyService.method.deletePolicy, { name: "idem-created" }, { bearerToken: token, idempotencyKey: "k-policy-delete" }));
  });

  it("a malformed key, or a key on a method that takes none, is INVALID_ARGUMENT and runs nothing", async () => {
    for (const key of ["", "has space", "x".repeat(129), "a/b", "k;1"]) {
      for (const listener of LISTENERS) {
        const res = await admin[listener].call(SecretService.method.putSecret, { path: "idem/malformed", data: { v: "1" } }, { idempotencyKey: key });
        if (key === "" && res.code === "OK") throw new Error(`${listener}: an empty idempotency-key header was accepted`);
        fails(res, "INVALID_ARGUMENT", `${listener} key ${JSON.stringify(key)}`);
        expect(res.reason).to.equal("INVALID_IDEMPOTENCY_KEY");
      }
    }
    expect(await versions("idem/malformed")).to.deep.equal([]);
    const read = await admin.grpc.call(SecretService.method.getSecret, { path: "idem/reused" }, { idempotencyKey: "k-read" });
    fails(read, "INVALID_ARGUMENT");
    expect(read.reason).to.equal("IDEMPOTENCY_NOT_SUPPORTED");
  });

  it("records expire after 24 h: an expired key runs again, and one replica at a time deletes expired records", async () => {
    const path = "idem/expiry";
    const put = { path, data: { v: "1" } };
    ok(await admin.grpc.call(SecretService.method.putSecret, put, { idempotencyKey: "k-expiry" }));
    await db`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k-expiry'`;
    // Expired but not yet deleted: the call runs again (a new version) and takes the key over.
    expect(ok(await admin.grpc.call(SecretService.method.putSecret, put, { idempotencyKey: "k-expiry" })).version).to.equal(2);

    await db`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k-expiry'`;
    const store = new IdempotencyStore(db as never);
    // While another replica holds the job's lock, this one skips the run.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const other = db.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(hashtext('nexus/idempotency-expiry'))`;
      locked();
      await released;
    });
    await isLocked;
    expect(await store.deleteExpired(IDEMPOTENCY_TTL_MS)).to.equal(-1);
    release();
    await other;
    expect(await store.deleteExpired(IDEMPOTENCY_TTL_MS)).to.be.greaterThan(0);
    expect(await db`SELECT 1 FROM idempotency_keys WHERE key = 'k-expiry'`).to.have.length(0);
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("condition not met in time");
    await sleep(20);
  }
}
