// Puts that append to existing secrets share one statement and one commit when
// they arrive together (SecretStore's group commit). Each put must still be
// all-or-nothing with its own audit event: concurrent puts to one secret get
// distinct versions, check-and-set holds, pruning holds, and a put the
// database refuses fails alone while the others in its batch are written.

import { expect } from "chai";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { login } from "../support/admin-fixtures.js";
import { auditProblems, expectGaplessSequences } from "../support/audit-fixtures.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

const PUT_SECRET = "/spike.nexus.v1.SecretService/PutSecret";

describe("puts to existing secrets in group commit", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let admin: NexusClient;
  let adminToken: string;
  let db: ReturnType<typeof openDatabase>;
  const clients: NexusClient[] = [];

  const put = async (path: string, v: string) => ok(await admin.call(SecretService.method.putSecret, { path, data: { v } }), `put ${path}`);
  const client = (i: number) => clients[i % clients.length];
  const decrypted = async (path: string, version: number) =>
    ok(await admin.call(SecretService.method.getSecret, { path, version }), `get ${path}@${version}`).data.v;

  before(async () => {
    server = await startSecretServer();
    admin = server.client("grpc");
    adminToken = (await login(admin, 3_600_000)).token;
    db = openDatabase(server.nexus.databaseUrl);
    // Several connections on both listeners, so the puts arrive together.
    for (const listener of LISTENERS) for (let k = 0; k < 3; k++) clients.push(server.client(listener));
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  it("concurrent puts to 64 secrets, three each, get distinct versions, keep every value, and share statements", async () => {
    const N = 64;
    for (let n = 0; n < N; n++) await put(`gc/many/${n}`, "v1");
    const before = new Date();
    const jobs = Array.from({ length: 3 * N }, (_, k) => ({ path: `gc/many/${k % N}`, v: `w${Math.floor(k / N)}` }));
    const results = await Promise.all(jobs.map((j, k) => client(k).call(SecretService.method.putSecret, { path: j.path, data: { v: j.v } })));

    const versions = new Map<string, Map<number, string>>();
    results.forEach((res, k) => {
      const { path, v } = jobs[k];
      const version = ok(res, `put ${path}`).version;
      const seen = versions.get(path) ?? new Map<number, string>();
      expect(seen.has(version), `${path}: version ${version} given to two puts`).to.equal(false);
      seen.set(version, v);
      versions.set(path, seen);
    });
    for (let n = 0; n < N; n++) {
      const path = `gc/many/${n}`;
      expect([...versions.get(path)!.keys()].sort(), path).to.deep.equal([2, 3, 4]);
      for (const [version, v] of versions.get(path)!) expect(await decrypted(path, version), `${path}@${version}`).to.equal(v);
    }

    // The set-up puts wrote version 1; an event's time is its call's start, which can share a millisecond with `before`.
    const events = await db`SELECT outcome, code FROM audit_events WHERE rpc = ${PUT_SECRET} AND time >= ${before} AND path LIKE 'gc/many/%' AND version > 1`;
    expect(events.map((e) => `${e.outcome} ${e.code}`)).to.deep.equal(Array.from({ length: 3 * N }, () => "ok OK"));
    // Rows written by one statement share its transaction's now(): puts to
    // different secrets with one created_at were committed together.
    const [{ shared }] = await db`
      SELECT count(*)::int AS shared FROM (
        SELECT v.created_at FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
        WHERE s.path LIKE 'gc/many/%' AND v.version > 1 GROUP BY v.created_at HAVING count(DISTINCT v.secret_id) > 1) x`;
    expect(shared, "batches that carried puts to more than one secret").to.be.greaterThan(0);
    await expectGaplessSequences(db);
    expect(await auditProblems(admin, adminToken)).to.deep.equal([]);
  });

  it("check-and-set in a batch: stale versions are ABORTED and write nothing, current ones are written", async () => {
    const N = 24;
    for (let n = 0; n < N; n++) {
      await put(`gc/cas/${n}`, "v1");
      await put(`gc/cas/${n}`, "v2");
    }
    const results = await Promise.all(
      Array.from({ length: N }, (_, n) => client(n).call(SecretService.method.putSecret, { path: `gc/cas/${n}`, data: { v: "v3" }, cas: n % 2 === 0 ? 2 : 1 })),
    );
    for (let n = 0; n < N; n++) {
      const path = `gc/cas/${n}`;
      if (n % 2 === 0) expect(ok(results[n], path).version, path).to.equal(3);
      else expect(fails(results[n], "ABORTED", path), path).to.include("cas was 1 but its latest version is 2");
      const [{ latest }] = await db`SELECT latest_version AS latest FROM secrets WHERE path = ${path}`;
      expect(latest, path).to.equal(n % 2 === 0 ? 3 : 2);
    }
  });

  it("prunes each secret to its own max_versions when its puts are batched", async () => {
    const N = 16;
    for (let n = 0; n < N; n++) {
      await put(`gc/prune/${n}`, "v1");
      ok(await admin.call(SecretService.method.updateSecretMetadata, {
        path: `gc/prune/${n}`, maxVersions: n % 2 === 0 ? 2 : 5, updateMask: { paths: ["max_versions"] },
      }), `metadata gc/prune/${n}`);
    }
    for (let round = 2; round <= 6; round++) {
      const results = await Promise.all(Array.from({ length: N }, (_, n) => client(n).call(SecretService.method.putSecret, { path: `gc/prune/${n}`, data: { v: `v${round}` } })));
      results.forEach((r, n) => expect(ok(r, `gc/prune/${n}`).version).to.equal(round));
    }
    for (let n = 0; n < N; n++) {
      const rows = await db`SELECT v.version FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ${`gc/prune/${n}`} ORDER BY v.version`;
      expect(rows.map((r) => r.version), `gc/prune/${n}`).to.deep.equal(n % 2 === 0 ? [5, 6] : [2, 3, 4, 5, 6]);
    }
  });

  it("in one batch: expires_at set where given and kept where not, and a secret deleted behind the server's back is created anew", async () => {
    const N = 12;
    for (let n = 0; n < N; n++) await put(`gc/mixed/${n}`, "v1");
    const later = new Date(Date.now() + 3_600_000);
    later.setMilliseconds(0);
    await db`UPDATE secrets SET expires_at = now() + interval '2 hours' WHERE path = 'gc/mixed/1'`;
    await db`DELETE FROM secrets WHERE path = 'gc/mixed/0'`; // the server still remembers it at version 1
    const results = await Promise.all(
      Array.from({ length: N }, (_, n) =>
        admin.call(SecretService.method.putSecret, { path: `gc/mixed/${n}`, data: { v: "v2" }, expiresAt: n % 3 === 2 ? timestampFromDate(later) : undefined }),
      ),
    );
    expect(ok(results[0], "gc/mixed/0").version, "re-created").to.equal(1);
    for (let n = 1; n < N; n++) expect(ok(results[n], `gc/mixed/${n}`).version, `gc/mixed/${n}`).to.equal(2);
    const rows = await db`SELECT path, expires_at FROM secrets WHERE path LIKE 'gc/mixed/%'`;
    const expiry = new Map(rows.map((r) => [r.path as string, r.expires_at as Date | null]));
    for (let n = 0; n < N; n++) {
      const path = `gc/mixed/${n}`;
      const got = expiry.get(path);
      if (n % 3 === 2) expect(got?.getTime(), path).to.equal(later.getTime());
      else if (n === 1) expect(got, path).to.not.equal(null);
      else expect(got, path).to.equal(null);
    }
    expect(await decrypted("gc/mixed/0", 1)).to.equal("v2");
  });

  it("a secret row locked elsewhere holds up only the puts to it, not the others that arrive with them", async () => {
    const N = 10;
    for (let n = 0; n < N; n++) await put(`gc/locked/${n}`, "v1");
    const locker = await db.reserve();
    await locker`BEGIN`;
    await locker`SELECT 1 FROM secrets WHERE path = 'gc/locked/0' FOR UPDATE`;
    let lockedPut: Promise<unknown> | undefined;
    try {
      const puts = Array.from({ length: N }, (_, n) => admin.call(SecretService.method.putSecret, { path: `gc/locked/${n}`, data: { v: "v2" } }));
      lockedPut = puts[0];
      const others = await Promise.race([Promise.all(puts.slice(1)), sleep(10_000).then(() => "timed out" as const)]);
      expect(others, "the puts to unlocked secrets, while the lock is held").to.not.equal("timed out");
      if (others !== "timed out") others.forEach((r, n) => expect(ok(r, `gc/locked/${n + 1}`).version).to.equal(2));
      expect(await Promise.race([puts[0].then(() => "done"), sleep(200).then(() => "waiting")]), "the put to the locked secret").to.equal("waiting");
      // A put that arrives now is not stuck behind the waiting one either.
      expect(ok(await admin.call(SecretService.method.putSecret, { path: "gc/locked/1", data: { v: "v3" } })).version).to.equal(3);
    } finally {
      await locker`ROLLBACK`;
      locker.release();
    }
    const res = (await lockedPut) as Awaited<ReturnType<typeof admin.call<typeof SecretService.method.putSecret>>>;
    expect(ok(res, "gc/locked/0").version).to.equal(2);
  });

  it("a put the database refuses fails alone: the others that arrived with it are written and audited ok", async () => {
    const N = 20;
    const refused = (n: number) => n % 4 === 1;
    for (let n = 0; n < N; n++) await put(`gc/refuse/${n}`, "v1");
    // The database refuses the "ok" events of some paths, so their puts' statements fail.
    await db`ALTER TABLE audit_events ADD CONSTRAINT gc_spec_refuses CHECK (NOT (path LIKE 'gc/refuse/%' AND outcome = 'ok' AND path IN ('gc/refuse/1', 'gc/refuse/5', 'gc/refuse/9', 'gc/refuse/13', 'gc/refuse/17'))) NOT VALID`;
    try {
      const before = new Date();
      // One connection, so they arrive together and share a batch.
      const results = await Promise.all(Array.from({ length: N }, (_, n) => admin.call(SecretService.method.putSecret, { path: `gc/refuse/${n}`, data: { v: "v2" } })));
      for (let n = 0; n < N; n++) {
        const path = `gc/refuse/${n}`;
        if (refused(n)) fails(results[n], "INTERNAL", path);
        else expect(ok(results[n], path).version, path).to.equal(2);
        const [{ latest }] = await db`SELECT latest_version AS latest FROM secrets WHERE path = ${path}`;
        expect(latest, path).to.equal(refused(n) ? 1 : 2);
      }
      const events = await db`SELECT path, outcome, code FROM audit_events WHERE rpc = ${PUT_SECRET} AND time >= ${before} AND path LIKE 'gc/refuse/%' AND version = 2`;
      const expected = Array.from({ length: N }, (_, n) => `gc/refuse/${n} ${refused(n) ? "error INTERNAL" : "ok OK"}`);
      expect(events.map((e) => `${e.path} ${e.outcome} ${e.code}`).sort()).to.deep.equal(expected.sort());
    } finally {
      await db`ALTER TABLE audit_events DROP CONSTRAINT gc_spec_refuses`;
    }
    await expectGaplessSequences(db);
    expect(await auditProblems(admin, adminToken)).to.deep.equal([]);
  });
});
