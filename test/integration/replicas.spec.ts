// Three Nexus replicas on one PostgreSQL (issue 16, section 1): three
// `nexus serve` processes, as production runs them, sharing one database and
// nothing else. They must agree: a compare-and-set race across replicas has one
// winner, a policy written on one is enforced by the others within a second,
// each replica's audit sequence is gapless and the whole log verifies, and the
// scheduled jobs (expiry, audit retention) do their work once, not once per
// replica.

import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretLabel, SecretService, WatchEventType } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { exactly } from "../support/admin-fixtures.js";
import { startReplica, unsealReplica, type NexusReplica } from "../support/nexus-replica.js";
import { ADMIN_PASSWORD, adminSession, ok, openDatabase } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";
import { createTestPki, WORKLOAD_ID, type TestPki } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

// Retention short enough to run during the suite: its job runs every ten
// cleanup intervals (1 s) on every replica.
const JOBS = { NEXUS_CLEANUP_INTERVAL: "100ms", NEXUS_AUDIT_RETENTION: "4s" };

/** The JSON log entries with this msg a replica has written so far. */
function logEntries(replica: NexusReplica, msg: string): Array<Record<string, unknown>> {
  return replica.process
    .stderr()
    .split("\n")
    .filter((line) => line.startsWith("{") && line.endsWith("}"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((e) => e.msg === msg);
}

describe("three replicas on one PostgreSQL", function () {
  this.timeout(120_000);
  let pki: TestPki;
  let databaseUrl: string;
  let replicas: NexusReplica[] = [];
  let superusers: NexusClient[];
  let token: string;

  before(async () => {
    pki = await createTestPki();
    databaseUrl = await createTestDatabase("replicas");
    // The first replica migrates the schema; the others start on it.
    const first = await startReplica({ name: "a", pki, databaseUrl, env: JOBS });
    replicas = [first, ...(await Promise.all(["b", "c"].map((name) => startReplica({ name, pki, databaseUrl, env: JOBS }))))];
    superusers = replicas.map((r) => r.client());
    ok(await superusers[0].call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }), "Initialize");
    for (const r of replicas.slice(1)) await unsealReplica(r, ADMIN_PASSWORD);
    for (const r of replicas) await eventually(async () => expect(await r.health.check()).to.deep.equal({ status: "SERVING" }));
    token = await adminSession(superusers[0]);
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.stop().catch(() => {})));
    await pki?.remove();
  });

  it("an admin session from one replica works on the others", async () => {
    for (const su of superusers) ok(await su.call(PolicyService.method.listPolicies, {}, { bearerToken: token }), "ListPolicies");
  });

  it("two writers on different replicas with the same cas: exactly one wins, every round", async () => {
    const path = "replicas/cas";
    ok(await superusers[0].call(SecretService.method.putSecret, { path, data: { round: "0" }, cas: 0 }), "first put");
    for (let round = 1; round <= 20; round++) {
      // Rotate the pairs so every replica races every other, each with a warm cache.
      const [x, y] = [superusers[round % 3], superusers[(round + 1) % 3]];
      const results = await Promise.all(
        [x, y].map((c, i) => c.call(SecretService.method.putSecret, { path, data: { round: String(round), writer: String(i) }, cas: round })),
      );
      expect(results.map((r) => r.code).sort(), `round ${round}`).to.deep.equal(["ABORTED", "OK"]);
      const winner = results.findIndex((r) => r.code === "OK");
      // Every replica reads the winner's value as the latest version.
      for (const su of superusers) {
        const got = ok(await su.call(SecretService.method.getSecret, { path }), "GetSecret");
        expect({ version: got.version, data: got.data }).to.deep.equal({ version: round + 1, data: { round: String(round), writer: String(winner) } });
      }
    }
  });

  it("a policy created on one replica is enforced by the others within 1 s, and so is its deletion", async () => {
    ok(await superusers[0].call(SecretService.method.putSecret, { path: "shared/config", data: { v: "1" } }), "PutSecret");
    const workloads = replicas.map((r) => r.client(pki.workload));
    for (const w of workloads) expect((await w.call(SecretService.method.getSecret, { path: "shared/config" })).code).to.equal("PERMISSION_DENIED");

    const policy = { name: "shared-readers", spiffeIdPattern: exactly(WORKLOAD_ID), pathPattern: "shared/.*", permissions: [Permission.READ] };
    ok(await superusers[0].call(PolicyService.method.createPolicy, { policy }, { bearerToken: token }), "CreatePolicy on a");
    const created = Date.now();
    for (const [i, w] of workloads.entries()) {
      await eventually(async () => expect((await w.call(SecretService.method.getSecret, { path: "shared/config" })).code).to.equal("OK"), { timeoutMs: 1000, intervalMs: 20 });
      expect(Date.now() - created, `ms until replica ${replicas[i].name} enforced the new policy`).to.be.below(1000);
    }

    ok(await superusers[1].call(PolicyService.method.deletePolicy, { name: "shared-readers" }, { bearerToken: token }), "DeletePolicy on b");
    const deleted = Date.now();
    for (const [i, w] of workloads.entries()) {
      await eventually(async () => expect((await w.call(SecretService.method.getSecret, { path: "shared/config" })).code).to.equal("PERMISSION_DENIED"), {
        timeoutMs: 1000,
        intervalMs: 20,
      });
      expect(Date.now() - deleted, `ms until replica ${replicas[i].name} enforced the deletion`).to.be.below(1000);
    }
  });

  it("expired secrets and admin sessions are removed once: the replicas' expiry jobs together remove each exactly once", async () => {
    const expiring = 12;
    const sessions = 3;
    const removedSoFar = () => {
      const entries = replicas.flatMap((r) => logEntries(r, "expired rows removed"));
      return { secrets: entries.reduce((n, e) => n + Number(e.secrets), 0), credentials: entries.reduce((n, e) => n + Number(e.credentials), 0) };
    };
    const before = removedSoFar();
    const expiresAt = timestampFromDate(new Date(Date.now() + 1500));
    for (let i = 0; i < expiring; i++) {
      ok(await superusers[i % 3].call(SecretService.method.putSecret, { path: `expiring/${i}`, data: { v: "x" }, expiresAt }), "PutSecret with expires_at");
    }
    for (let i = 0; i < sessions; i++) {
      ok(await superusers[i % 3].call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD, ttl: durationFromMs(1000) }), "Login with a 1 s session");
    }
    const sql = openDatabase(databaseUrl);
    try {
      await sleep(1500);
      await eventually(
        async () => {
          const [{ secrets }] = await sql`SELECT count(*)::int AS secrets FROM secrets WHERE path LIKE 'expiring/%'`;
          const [{ credentials }] = await sql`SELECT count(*)::int AS credentials FROM admin_credentials WHERE expires_at <= now()`;
          expect({ secrets, credentials }).to.deep.equal({ secrets: 0, credentials: 0 });
        },
        { timeoutMs: 10_000 },
      );
    } finally {
      await sql.end();
    }
    await sleep(300); // each job logs after its transaction
    const after = removedSoFar();
    expect({ secrets: after.secrets - before.secrets, credentials: after.credentials - before.credentials }, "removed by the three replicas together").to.deep.equal({
      secrets: expiring,
      credentials: sessions,
    });
  });

  it("audit retention prunes each event once across the replicas, and every replica's sequence stays gapless from its floor", async () => {
    const sql = openDatabase(databaseUrl);
    try {
      // Events older than the retention (4 s) exist by now; wait until some are pruned.
      await eventually(async () => expect(replicas.some((r) => logEntries(r, "audit events pruned").length > 0)).to.equal(true), { timeoutMs: 15_000 });
      // Let a few more retention rounds run on all three replicas, then give
      // each a recent event that retention keeps.
      await sleep(2500);
      for (const su of superusers) ok(await su.call(SecretService.method.putSecret, { path: "retained/recent", data: { v: "1" } }), "PutSecret");
      // Retention keeps running: compare the logs and the database between its rounds.
      await eventually(
        async () => {
          const { floors, sequences } = await sql.begin("isolation level repeatable read", async (tx) => ({
            floors: await tx`
              SELECT replica_id, first_sequence::int AS floor, count(*)::int AS copies FROM audit_checkpoints
              WHERE first_sequence > 1 GROUP BY replica_id, first_sequence`,
            sequences: await tx`
              SELECT replica_id, min(sequence)::int AS first, max(sequence)::int AS last, count(*)::int AS n, count(DISTINCT sequence)::int AS distinct_n
              FROM audit_events GROUP BY replica_id`,
          }));
          const pruned = replicas.reduce((n, r) => n + logEntries(r, "audit events pruned").reduce((m, e) => m + Number(e.events), 0), 0);
          expect(floors.filter((f) => f.copies > 1), "a floor written twice").to.deep.equal([]);
          const highest = new Map<string, number>();
          for (const f of floors) highest.set(f.replica_id as string, Math.max(highest.get(f.replica_id as string) ?? 1, f.floor as number));
          // Nothing was given up and no replica crashed: every number below a floor was pruned, once.
          const belowFloors = [...highest.values()].reduce((n, floor) => n + floor - 1, 0);
          expect(pruned, "events the replicas logged as pruned").to.equal(belowFloors);
          expect(sequences.length, "replicas with audit events").to.be.at.least(3);
          for (const s of sequences) {
            const floor = highest.get(s.replica_id as string) ?? 1;
            expect({ first: s.first, gapless: s.n === s.last - s.first + 1, duplicates: s.n - s.distinct_n }, `replica ${s.replica_id}`).to.deep.equal({
              first: floor,
              gapless: true,
              duplicates: 0,
            });
          }
        },
        { timeoutMs: 10_000, intervalMs: 150 },
      );
    } finally {
      await sql.end();
    }
  });

  it("a watch on one replica sees writes and promotions made on the others, each within 1 s", async () => {
    const events: Array<{ type: WatchEventType; path: string; versions: number[]; at: number }> = [];
    let opened = false;
    const stream = superusers[2].stream(SecretService.method.watchSecrets, { prefix: "watched/" });
    const consumed = (async () => {
      for await (const e of stream) {
        opened = true;
        if (e.type !== WatchEventType.HEARTBEAT) events.push({ type: e.type, path: e.path, versions: e.versions, at: Date.now() });
      }
    })().catch(() => {});
    /** The first event of this type for this path, once it has arrived. */
    const arrival = async (path: string, type: WatchEventType): Promise<{ versions: number[]; at: number }> => {
      const find = () => events.find((e) => e.path === path && e.type === type);
      await eventually(async () => expect(find(), `a ${WatchEventType[type]} event for ${path}`).to.not.equal(undefined), { timeoutMs: 5000, intervalMs: 5 });
      return find()!;
    };
    try {
      // Writes before the stream is open are not sent: warm up until one arrives.
      let warm = 0;
      await eventually(async () => {
        ok(await superusers[0].call(SecretService.method.putSecret, { path: "watched/warm", data: { v: String(++warm) } }), "PutSecret");
        expect(opened || events.length > 0, "the stream delivered something").to.equal(true);
      }, { timeoutMs: 10_000, intervalMs: 100 });

      ok(await superusers[0].call(SecretService.method.putSecret, { path: "watched/db", data: { v: "1" } }), "PutSecret on a");
      const putAt = Date.now();
      const created = await arrival("watched/db", WatchEventType.VERSION_CREATED);
      expect(created.versions).to.deep.equal([1]);
      expect(created.at - putAt, "ms from a's acknowledgement to c's event").to.be.below(1000);

      ok(await superusers[1].call(SecretService.method.putSecret, { path: "watched/db", data: { v: "2" }, stage: SecretLabel.PENDING }), "staged on b");
      ok(await superusers[1].call(SecretService.method.promoteSecretVersion, { path: "watched/db", version: 2 }), "PromoteSecretVersion on b");
      const promotedAt = Date.now();
      const promoted = await arrival("watched/db", WatchEventType.PROMOTED);
      expect(promoted.versions).to.deep.equal([2]);
      expect(promoted.at - promotedAt, "ms from b's acknowledgement to c's event").to.be.below(1000);
    } finally {
      // Ends at the stream's next message; awaiting it would wait for a heartbeat.
      void stream[Symbol.asyncIterator]().return?.();
      void consumed;
    }
  });

  it("a key rotation started on one replica is followed by all: within 1 s each writes under the new key and reads every old version", async () => {
    for (let i = 0; i < 30; i++) ok(await superusers[i % 3].call(SecretService.method.putSecret, { path: `rotated/s${i}`, data: { v: `value-${i}` } }), "PutSecret");
    const sql = openDatabase(databaseUrl);
    try {
      let newKeyId = 0;
      for await (const m of superusers[1].stream(OperatorService.method.rotateEncryptionKey, {}, { bearerToken: token })) newKeyId = m.newKeyId || newKeyId;
      expect(newKeyId, "the rotation named its new key").to.be.greaterThan(0);
      const finished = Date.now();
      for (const [i, su] of superusers.entries()) {
        await eventually(async () => {
          ok(await su.call(SecretService.method.putSecret, { path: `rotated/after-${replicas[i].name}`, data: { v: "new" } }), "PutSecret");
          const [row] = await sql`SELECT keyring_key_id FROM secrets WHERE path = ${`rotated/after-${replicas[i].name}`}`;
          expect(row.keyring_key_id, `replica ${replicas[i].name} writes under the new key`).to.equal(newKeyId);
        }, { timeoutMs: 1000, intervalMs: 20 });
        expect(Date.now() - finished).to.be.below(1000 * (i + 1));
        for (const n of [0, 14, 29]) expect(ok(await su.call(SecretService.method.getSecret, { path: `rotated/s${n}` }), "GetSecret").data).to.deep.equal({ v: `value-${n}` });
      }
      const [stale] = await sql`SELECT count(*)::int AS n FROM secrets WHERE keyring_key_id <> ${newKeyId}`;
      expect(stale.n, "rows left under an older key once the rotation finished").to.equal(0);
    } finally {
      await sql.end();
    }
  });

  it("VerifyAuditLog on any replica reports no problem in the whole log the three wrote", async () => {
    // Load on all three at once, so their events interleave in time.
    await Promise.all(
      superusers.map(async (su, i) => {
        for (let k = 0; k < 30; k++) ok(await su.call(SecretService.method.putSecret, { path: `audited/${i}`, data: { k: String(k) } }), "PutSecret");
      }),
    );
    for (const su of superusers) {
      const report = ok(await su.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
      expect(report.problems.map((p) => `${p.kind} ${p.replicaId}#${p.sequence}: ${p.description}`)).to.deep.equal([]);
      expect(Number(report.eventsChecked)).to.be.greaterThan(0);
    }
  });

  it("restarts of a replica continue its log without a gap the verifier reports", async () => {
    const [a] = replicas;
    await a.stop();
    replicas[0] = await startReplica({ name: "a", pki, databaseUrl, env: JOBS });
    await unsealReplica(replicas[0], ADMIN_PASSWORD);
    superusers[0] = replicas[0].client();
    ok(await superusers[0].call(SecretService.method.putSecret, { path: "audited/after-restart", data: { v: "1" } }), "PutSecret");
    const report = ok(await superusers[2].call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
    expect(report.problems.map((p) => `${p.kind} ${p.replicaId}#${p.sequence}: ${p.description}`)).to.deep.equal([]);
  });
});
