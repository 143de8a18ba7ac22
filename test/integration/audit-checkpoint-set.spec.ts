// Every replica's latest audit checkpoint is bound as one set by a MAC'd epoch
// (ADR 0003, ADR 0006). Found by the outside review of the hardening work:
// deleting a stopped replica's checkpoints turned its deletions into crash
// gaps, and deleting its events and checkpoints together left no trace. Now
// both are reported, and retention does not prune across what it cannot vouch for.

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { auditProblems } from "../support/audit-fixtures.js";
import { ADMIN_PASSWORD, adminSession, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";

describe("the set of audit checkpoints", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let stopped: string;
  let client: ReturnType<SecretTestServer["client"]>;
  let token: string;

  before(async () => {
    const first = await startSecretServer();
    const c1 = first.client("grpc");
    for (let i = 0; i < 5; i++) ok(await c1.call(SecretService.method.putSecret, { path: `hole/${i}`, data: { v: String(i) } }));
    // A clean stop writes the first replica's final checkpoint; the next one is a new replica.
    server = await first.restart();
    client = server.client("grpc");
    ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
    token = await adminSession(client);
    db = openDatabase(server.nexus.databaseUrl);
    [{ replica_id: stopped }] = await db`SELECT replica_id FROM audit_events WHERE rpc LIKE '%/PutSecret' LIMIT 1`;
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  it("a clean log verifies, with the stopped replica's final checkpoint in the set", async () => {
    expect((await db`SELECT final FROM audit_checkpoints WHERE replica_id = ${stopped}`).some((c) => c.final)).to.equal(true);
    expect(await auditProblems(client, token)).to.deep.equal([]);
  });

  it("an event deleted and then that replica's checkpoints deleted too is still reported: the set no longer matches its epoch", async () => {
    const [mid] = await db`SELECT id, sequence::int AS s FROM audit_events WHERE replica_id = ${stopped} AND rpc LIKE '%/PutSecret' ORDER BY sequence LIMIT 1 OFFSET 2`;
    await db`DELETE FROM audit_events WHERE id = ${mid.id}`;
    expect(await auditProblems(client, token)).to.include(`DELETED ${stopped} ${mid.s}`);
    const saved = await db`SELECT * FROM audit_checkpoints WHERE replica_id = ${stopped}`;
    await db`DELETE FROM audit_checkpoints WHERE replica_id = ${stopped}`;
    const problems = await auditProblems(client, token);
    expect(problems, "the missing checkpoint").to.include("DELETED  0");
    // Put back: the set matches again, and the deletion is a deletion again.
    for (const row of saved) await db`INSERT INTO audit_checkpoints ${db(row)}`;
    expect(await auditProblems(client, token)).to.include(`DELETED ${stopped} ${mid.s}`).and.not.include("DELETED  0");
  });

  it("a stopped replica's whole history deleted — events and checkpoints — is reported, not silence", async () => {
    await db`DELETE FROM audit_events WHERE replica_id = ${stopped}`;
    await db`DELETE FROM audit_checkpoints WHERE replica_id = ${stopped}`;
    const problems = await auditProblems(client, token);
    expect(problems).to.not.deep.equal([]);
    expect(problems).to.include("DELETED  0");
  });
});
