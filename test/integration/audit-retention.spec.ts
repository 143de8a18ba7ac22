// Retention prunes old audit events and records where each replica's log now
// starts, so what remains still verifies: pruned events are not "deleted".

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
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
