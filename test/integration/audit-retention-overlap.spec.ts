// Every replica runs audit retention over every replica's events. Two passes
// that overlap must not both prune: the second to commit would delete nothing
// new yet write a second floor checkpoint and count the events again. Real
// modules on a real database: two replicas' retention, run at once.

import { expect } from "chai";
import { AuditLog } from "../../src/audit/audit-log.js";
import { AuditRetention } from "../../src/audit/audit-retention.js";
import { AuditVerifier } from "../../src/audit/audit-verifier.js";
import { TrustBundleSet } from "../../src/identity/trust-bundle.js";
import { GrantEpochs } from "../../src/keys/grant-epochs.js";
import { KeyManager } from "../../src/keys/key-manager.js";
import { silentLogger } from "../../src/log/logger.js";
import { AuditStore } from "../../src/store/audit-store.js";
import type { Sql } from "../../src/store/database.js";
import { RootKeyStore } from "../../src/store/root-key-store.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { ADMIN_PASSWORD, FAST_KDF, ok, openDatabase, startSecretServer } from "../support/secret-server.js";
import { NEXUS_ID, TRUST_DOMAIN } from "../support/test-server.js";

describe("overlapping audit retention passes on two replicas", function () {
  this.timeout(60_000);

  it("prune each event once: one pass prunes, the other writes nothing, and the log still verifies", async () => {
    const server = await startSecretServer();
    const client = server.client("grpc");
    for (let i = 0; i < 20; i++) ok(await client.call(SecretService.method.putSecret, { path: `overlap/${i}`, data: { v: "x" } }));
    const caPem = server.pki.ca.certPem;
    const url = server.nexus.databaseUrl;
    await server.stop();
    const db = openDatabase(url);
    const sql = db as unknown as Sql;
    try {
      const keys = new KeyManager(new RootKeyStore(sql), silentLogger, FAST_KDF.kdfParams, 0);
      await keys.unseal(ADMIN_PASSWORD);
      const noSigner = { sign: (): never => { throw new Error("unsealed: nothing is signed"); } };
      const trust = () => ({ serverId: NEXUS_ID, bundle: TrustBundleSet.single(TRUST_DOMAIN, caPem) });
      const retention = (replicaId: string) => {
        const store = new AuditStore(sql);
        const epochs = new GrantEpochs(keys);
        return new AuditRetention(store, keys, new AuditLog(store, keys, noSigner, silentLogger, epochs, replicaId), trust, silentLogger, epochs);
      };
      const [{ events }] = await db`SELECT count(*)::int AS events FROM audit_events`;
      const future = new Date(Date.now() + 60_000); // everything is old enough

      const results = await Promise.all([retention("replica-a").prune(future), retention("replica-b").prune(future)]);

      const pruned = results.flat().reduce((n, r) => n + r.pruned, 0);
      const [{ left }] = await db`SELECT count(*)::int AS left FROM audit_events`;
      expect(pruned, "events counted as pruned").to.equal(events - left);
      expect(results.filter((r) => r.length > 0), "passes that pruned").to.have.length(1);
      const floors = await db`SELECT first_sequence::int AS floor FROM audit_checkpoints WHERE first_sequence > 1`;
      expect(floors, "floor checkpoints written").to.have.length(1);

      const epochs = new GrantEpochs(keys);
      const verifier = new AuditVerifier(new AuditStore(sql), keys, new AuditLog(new AuditStore(sql), keys, noSigner, silentLogger, epochs, "verifier"), trust, epochs);
      expect((await verifier.verify()).problems).to.deep.equal([]);
    } finally {
      await db.end();
    }
  });
});
