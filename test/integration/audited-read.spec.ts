// GetSecret reads in the statement that commits its audit event: the "ok" event
// is written only when that read finds a servable version; every other state
// falls back to a second read that says why. Whichever way a read goes, each
// call leaves exactly one event with its own outcome, the replica's sequence
// stays gapless, and a read whose ciphertext then fails to decrypt adds an
// error event that points at the recorded read.

import { expect } from "chai";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { login } from "../support/admin-fixtures.js";
import { auditProblems, expectGaplessSequences } from "../support/audit-fixtures.js";
import { connectJson, connectSession } from "../support/connect-json.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";

const GET_SECRET = "/spike.nexus.v1.SecretService/GetSecret";

describe("GetSecret's read and its audit event in one statement", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let admin: NexusClient;
  let adminToken: string;
  let db: ReturnType<typeof openDatabase>;

  const put = async (path: string, v: string) => ok(await admin.call(SecretService.method.putSecret, { path, data: { v } }), `put ${path}`);

  before(async () => {
    server = await startSecretServer();
    admin = server.client("grpc");
    adminToken = (await login(admin, 3_600_000)).token;
    db = openDatabase(server.nexus.databaseUrl);

    await put("read/current", "c1");
    await put("read/current", "c2");
    await put("read/versions", "v1");
    await put("read/versions", "v2");
    await put("read/versions", "v3");
    ok(await admin.call(SecretService.method.deleteSecret, { path: "read/versions", versions: [2] }));
    ok(await admin.call(SecretService.method.destroySecret, { path: "read/versions", versions: [1] }));
    await put("read/latest-deleted", "d1");
    await put("read/latest-deleted", "d2");
    ok(await admin.call(SecretService.method.deleteSecret, { path: "read/latest-deleted" }));
    await put("read/all-deleted", "a1");
    ok(await admin.call(SecretService.method.deleteSecret, { path: "read/all-deleted" }));
    await put("read/expired", "e1");
    await db`UPDATE secrets SET expires_at = now() - interval '1 second' WHERE path = 'read/expired'`;
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  it("serves or refuses every version state, concurrently on both listeners, with one event per call and a gapless, verifiable log", async () => {
    const cases: Array<{ path: string; version?: number; code: string; reason?: string; value?: string; servedVersion?: number }> = [
      { path: "read/current", code: "OK", value: "c2", servedVersion: 2 },
      { path: "read/current", version: 1, code: "OK", value: "c1", servedVersion: 1 },
      { path: "read/current", version: 3, code: "NOT_FOUND", reason: "does not exist" },
      { path: "read/versions", code: "OK", value: "v3", servedVersion: 3 },
      { path: "read/versions", version: 3, code: "OK", value: "v3", servedVersion: 3 },
      { path: "read/versions", version: 2, code: "NOT_FOUND", reason: "is deleted" },
      { path: "read/versions", version: 1, code: "NOT_FOUND", reason: "is destroyed" },
      { path: "read/latest-deleted", code: "NOT_FOUND", reason: 'current version (2) of secret "read/latest-deleted" is deleted' },
      { path: "read/latest-deleted", version: 1, code: "OK", value: "d1", servedVersion: 1 },
      { path: "read/latest-deleted", version: 2, code: "NOT_FOUND", reason: "is deleted" },
      { path: "read/all-deleted", code: "NOT_FOUND", reason: 'current version (1) of secret "read/all-deleted" is deleted' },
      { path: "read/expired", code: "NOT_FOUND" },
      { path: "read/missing", code: "NOT_FOUND" },
    ];
    const before = new Date();
    const rounds = 8;
    const calls = Array.from({ length: rounds }, (_, r) =>
      cases.map((c, i) => server.client(LISTENERS[(r + i) % 2]).call(SecretService.method.getSecret, { path: c.path, version: c.version ?? 0 })),
    ).flat();
    const results = await Promise.all(calls);
    results.forEach((res, k) => {
      const c = cases[k % cases.length];
      const what = `${c.path}@${c.version ?? "current"}`;
      if (c.code === "OK") {
        const response = ok(res, what);
        expect(response.data, what).to.deep.equal({ v: c.value });
        expect(response.version, what).to.equal(c.servedVersion);
      } else {
        const message = fails(res, c.code, what);
        if (c.reason) expect(message, what).to.include(c.reason);
      }
    });

    const events = await db`SELECT path, version, outcome, code FROM audit_events WHERE rpc = ${GET_SECRET} AND time >= ${before}`;
    const tally = (xs: Array<{ path: string; version: number | null; outcome: string; code: string }>) =>
      xs.map((e) => `${e.path}@${e.version ?? "current"} ${e.outcome} ${e.code}`).sort();
    const expected = Array.from({ length: rounds }, () =>
      cases.map((c) => ({ path: c.path, version: c.version ?? null, outcome: c.code === "OK" ? "ok" : "error", code: c.code })),
    ).flat();
    expect(tally(events as never), "one event per call, with its outcome").to.deep.equal(tally(expected));
    await expectGaplessSequences(db);
    expect(await auditProblems(admin, adminToken)).to.deep.equal([]);
  });

  // The ok-then-error pair is also how these cases show that the batch statement
  // (not the fallback read, which would leave one error event) served the read.
  for (const version of [0, 1]) {
    it(`a read (version ${version}) recorded as ok whose ciphertext then fails its integrity check gets an error event pointing at it`, async () => {
      const path = `read/corrupted-${version}`;
      await put(path, "x1");
      await put(path, "x2");
      const [{ id }] = await db`SELECT id FROM secrets WHERE path = ${path}`;
      // Flip one byte of the ciphertext body: the version is still servable to the database.
      const target = version === 0 ? 2 : version;
      await db`UPDATE secret_versions SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1) WHERE secret_id = ${id} AND version = ${target}`;

      const before = new Date();
      const message = fails(await server.client("grpc").call(SecretService.method.getSecret, { path, version }), "INTERNAL");
      expect(message).to.not.match(/x[12]/);
      const events = await db`
        SELECT sequence::int AS sequence, outcome, code, detail FROM audit_events
        WHERE rpc = ${GET_SECRET} AND path = ${path} AND time >= ${before} ORDER BY sequence`;
      expect(events.map((e) => `${e.outcome} ${e.code}`)).to.deep.equal(["ok OK", "error INTERNAL"]);
      expect(events[1].detail).to.deep.include({ reason: "INTEGRITY_CHECK_FAILED", after_sequence: events[0].sequence });
      await expectGaplessSequences(db);
      expect(await auditProblems(admin, adminToken)).to.deep.equal([]);
    });
  }

  it("an event the database refuses fails only its own call: the reads that shared its batch are served and audited", async () => {
    for (let n = 0; n < 20; n++) await put(`read/batch/${n}`, `b${n}`);
    await put("read/refused", "r");
    await db`ALTER TABLE audit_events ADD CONSTRAINT audited_read_spec_refuses CHECK (path IS DISTINCT FROM 'read/refused') NOT VALID`;
    try {
      const before = new Date();
      const client = server.client("grpc");
      const results = await Promise.all([
        ...Array.from({ length: 10 }, (_, n) => client.call(SecretService.method.getSecret, { path: `read/batch/${n}` })),
        client.call(SecretService.method.getSecret, { path: "read/refused" }),
        ...Array.from({ length: 10 }, (_, n) => client.call(SecretService.method.getSecret, { path: `read/batch/${n + 10}` })),
      ]);
      const refused = results.splice(10, 1)[0];
      fails(refused, "UNAVAILABLE", "the read whose event cannot be written");
      results.forEach((r, n) => expect(ok(r, `read/batch/${n}`).data).to.deep.equal({ v: `b${n}` }));
      const events = await db`SELECT path, outcome FROM audit_events WHERE rpc = ${GET_SECRET} AND time >= ${before} AND path LIKE 'read/batch/%'`;
      expect(events.map((e) => `${e.path} ${e.outcome}`).sort()).to.deep.equal(Array.from({ length: 20 }, (_, n) => `read/batch/${n} ok`).sort());
    } finally {
      await db`ALTER TABLE audit_events DROP CONSTRAINT audited_read_spec_refuses`;
    }
  });

  it("a request path the database could not store (lone surrogate, NUL) is refused alone and audited in a storable form", async () => {
    await put("read/neighbour", "n");
    const session = connectSession(server);
    try {
      const before = new Date();
      const neighbours = Array.from({ length: 8 }, () => server.client("connect").call(SecretService.method.getSecret, { path: "read/neighbour" }));
      const bad = await Promise.all([
        connectJson(session, "/spike.nexus.v1.SecretService/GetSecret", '{"path":"read/\\ud800x"}'),
        connectJson(session, "/spike.nexus.v1.SecretService/GetSecret", '{"path":"read/\\u0000x"}'),
      ]);
      // Both are invalid_argument (HTTP 400): the lone surrogate already in
      // connect-node's JSON decoding, the NUL in our path rules, after its
      // event was queued with the neighbours' reads.
      for (const b of bad) expect([b.status, JSON.parse(b.body).code], b.body).to.deep.equal([400, "invalid_argument"]);
      for (const r of await Promise.all(neighbours)) expect(ok(r, "neighbour").data).to.deep.equal({ v: "n" });
      const events = await db`SELECT path, code FROM audit_events WHERE rpc = ${GET_SECRET} AND time >= ${before} AND path <> 'read/neighbour'`;
      expect(events.map((e) => `${e.path} ${e.code}`)).to.deep.equal(["read/\uFFFDx INVALID_ARGUMENT"]);
    } finally {
      session.close();
    }
  });
});
