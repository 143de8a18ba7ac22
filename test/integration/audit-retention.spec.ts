// Retention prunes old audit events and records where each replica's log now
// starts, so what remains still verifies: pruned events are not "deleted". It
// prunes only events that authenticate, in sequence order from the floor, so a
// database writer cannot launder tampering through it (ADR 0003).

import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { auditProblems } from "../support/audit-fixtures.js";
import { adminSession, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { eventually, sleep } from "../support/wait.js";

describe("audit retention", function () {
  this.timeout(60_000);
  let server: SecretTestServer;

  before(async () => {
    server = await startSecretServer({ env: { NEXUS_AUDIT_RETENTION: "2s", NEXUS_CLEANUP_INTERVAL: "100ms" } });
  });
  after(async () => server?.stop());

  it("prunes events older than the retention and the rest still verifies", async () => {
    const client = server.client("grpc");
    const token = await adminSession(client);
    for (let i = 0; i < 5; i++) ok(await client.call(SecretService.method.putSecret, { path: `retained/${i}`, data: { v: "x" } }));
    const sql = openDatabase(server.nexus.databaseUrl);
    try {
      const [{ before }] = await sql`SELECT count(*)::int AS before FROM audit_events`;
      await sleep(2500);
      // The retention job runs every ten cleanup intervals; wait until it pruned.
      await eventually(async () => {
        const [{ n }] = await sql`SELECT count(*)::int AS n FROM audit_events WHERE time < now() - interval '2 seconds'`;
        expect(n).to.equal(0);
      }, { timeoutMs: 15_000 });
      const [{ after }] = await sql`SELECT count(*)::int AS after FROM audit_events`;
      expect(after).to.be.lessThan(before + 10);
      const report = ok(await client.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
      expect(report.problems.map((p) => p.description)).to.deep.equal([]);
      const [{ floor }] = await sql`SELECT max(first_sequence)::int AS floor FROM audit_checkpoints`;
      expect(floor).to.be.greaterThan(1);
    } finally {
      await sql.end();
    }
  });
});

describe("audit retention under tampering", function () {
  this.timeout(60_000);
  // Retention 2 s, and its job every second (ten cleanup intervals).
  const RETENTION = { NEXUS_AUDIT_RETENTION: "2s", NEXUS_CLEANUP_INTERVAL: "100ms" };
  let server: SecretTestServer | undefined;
  let sql: ReturnType<typeof openDatabase> | undefined;

  afterEach(async () => {
    await sql?.end();
    await server?.stop();
    server = undefined;
    sql = undefined;
  });

  /** A server with a few puts, a SQL handle, and its replica's rows by sequence. */
  const setUp = async () => {
    server = await startSecretServer({ env: RETENTION });
    const client = server.client("grpc");
    const token = await adminSession(client);
    for (let i = 0; i < 6; i++) ok(await client.call(SecretService.method.putSecret, { path: `laundry/${i}`, data: { v: "x" } }));
    sql = openDatabase(server.nexus.databaseUrl);
    const [{ replica_id: replicaId }] = await sql`SELECT replica_id FROM audit_events GROUP BY replica_id`;
    const puts = await sql`SELECT id, sequence::int AS sequence FROM audit_events WHERE replica_id = ${replicaId} AND path LIKE 'laundry/%' ORDER BY sequence`;
    const floor = async () => Number((await sql!`SELECT coalesce(max(first_sequence), 1) AS floor FROM audit_checkpoints WHERE replica_id = ${replicaId}`)[0].floor);
    return { client, token, sql, replicaId: replicaId as string, puts, floor };
  };

  it("an event whose time was set to 1970 is not pruned, nor is anything after it, and VerifyAuditLog reports it ALTERED", async () => {
    const { client, token, sql, replicaId, puts, floor } = await setUp();
    const target = puts[3];
    await sql`UPDATE audit_events SET time = '1970-01-01T00:00:00Z' WHERE id = ${target.id}`;
    const [{ after }] = await sql`SELECT count(*)::int AS after FROM audit_events WHERE replica_id = ${replicaId} AND sequence > ${target.sequence}`;
    // Everything before it is old after 2 s and pruned; the floor stops at the tampered event.
    await eventually(async () => expect(await floor()).to.equal(target.sequence), { timeoutMs: 15_000 });
    await sleep(2500); // two more runs: still stopped there
    expect(await floor()).to.equal(target.sequence);
    expect(await sql`SELECT id FROM audit_events WHERE id = ${target.id}`, "the tampered event is kept").to.have.length(1);
    const [{ kept }] = await sql`SELECT count(*)::int AS kept FROM audit_events WHERE replica_id = ${replicaId} AND sequence > ${target.sequence}`;
    expect(kept, "nothing after it is pruned").to.be.at.least(after);
    expect(await auditProblems(client, token)).to.deep.equal([`ALTERED ${replicaId} ${target.sequence}`]);
  });

  it("a junk row with a huge sequence number and a 1970 time does not move the floor: it is INSERTED, and a deletion below it is still DELETED", async () => {
    const { client, token, sql, replicaId, puts, floor } = await setUp();
    const JUNK = 1_000_000_000_000;
    await sql`
      INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac)
      VALUES (${replicaId}, ${JUNK}, '1970-01-01T00:00:00Z', 'junk', 'spiffe://spike.ist/junk', 'junk', NULL, NULL, 'ok', 'OK', '{}'::jsonb, ${randomBytes(32)})`;
    // The legitimate events age past the retention and are pruned; the floor stays one past the last of them.
    await eventually(async () => expect(await floor()).to.be.greaterThan(puts[puts.length - 1].sequence), { timeoutMs: 15_000 });
    await sleep(1500);
    expect(await floor(), "the floor is not derived from the junk row").to.be.lessThan(JUNK);
    expect(await sql`SELECT id FROM audit_events WHERE sequence = ${JUNK}`, "the junk row is kept").to.have.length(1);

    // A deletion of a retained event is still a deletion.
    ok(await client.call(SecretService.method.putSecret, { path: "laundry/late", data: { v: "x" } }));
    const [late] = await sql`SELECT id, sequence::int AS sequence FROM audit_events WHERE path = 'laundry/late'`;
    await sql`DELETE FROM audit_events WHERE id = ${late.id}`;
    expect(await auditProblems(client, token)).to.deep.equal([`INSERTED ${replicaId} ${JUNK}`, `DELETED ${replicaId} ${late.sequence}`]);
  });
});
