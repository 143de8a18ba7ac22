// A sequence number given up (its write met an unreachable database, so
// whether it committed is unknown) is listed in the replica's MAC'd
// checkpoint, and verification by another replica does not report it as a
// deletion. Real modules on a real database; only the first batch is made to
// fail as an unreachable database would.

import { expect } from "chai";
import { GrantEpochs } from "../../src/keys/grant-epochs.js";
import { AuditLog } from "../../src/audit/audit-log.js";
import { AuditVerifier } from "../../src/audit/audit-verifier.js";
import { NexusError } from "../../src/errors/nexus-error.js";
import { TrustBundleSet } from "../../src/identity/trust-bundle.js";
import { KeyManager } from "../../src/keys/key-manager.js";
import { silentLogger } from "../../src/log/logger.js";
import { AuditStore, type BatchEvent, type ReadableVersion } from "../../src/store/audit-store.js";
import type { Sql } from "../../src/store/database.js";
import { RootKeyStore } from "../../src/store/root-key-store.js";
import { ADMIN_PASSWORD, FAST_KDF, openDatabase, startSecretServer } from "../support/secret-server.js";
import { NEXUS_ID, TRUST_DOMAIN } from "../support/test-server.js";

/** An AuditStore whose next batch fails as if the connection had been reset mid-statement. */
class FlakyStore extends AuditStore {
  failNext = false;

  override async insertBatch(events: readonly BatchEvent[]): Promise<Map<number, ReadableVersion>> {
    if (this.failNext) {
      this.failNext = false;
      throw new NexusError("unavailable", "the database is unavailable", { cause: Object.assign(new Error("reset"), { code: "ECONNRESET" }) });
    }
    return super.insertBatch(events);
  }
}

describe("a given-up audit sequence number", function () {
  this.timeout(60_000);

  it("is recorded in the replica's checkpoint and not reported as DELETED by another replica", async () => {
    const server = await startSecretServer();
    const caPem = server.pki.ca.certPem;
    const url = server.nexus.databaseUrl;
    await server.stop();
    const sql = openDatabase(url) as unknown as Sql;
    try {
      const keys = new KeyManager(new RootKeyStore(sql), silentLogger, FAST_KDF.kdfParams, 0);
      await keys.unseal(ADMIN_PASSWORD);
      const noSigner = { sign: (): never => { throw new Error("unsealed: nothing is signed"); } };
      const store = new FlakyStore(sql);
      const log = new AuditLog(store, keys, noSigner, silentLogger, new GrantEpochs(keys), "given-up-replica");
      const call = () => log.begin({ requestId: "r", rpc: "/spike.nexus.v1.SecretService/GetSecret", time: new Date() });

      await call().finish("error", "NOT_FOUND"); // 1
      store.failNext = true;
      const lost = call(); // 2: its read's fate is unknown
      expect(await lost.recordRead({ path: "nothing/here", version: 0 }).catch((e: unknown) => e)).to.be.instanceOf(NexusError);
      await lost.finish("error", "UNAVAILABLE"); // 3: the follow-up
      await call().finish("error", "NOT_FOUND"); // 4
      await log.checkpoint(true);

      const [cp] = await (sql as unknown as ReturnType<typeof openDatabase>)`SELECT last_sequence::int AS last, given_up FROM audit_checkpoints WHERE replica_id = 'given-up-replica'`;
      expect({ last: cp.last, givenUp: cp.given_up.map(Number) }).to.deep.equal({ last: 4, givenUp: [2, 2] });

      const other = new AuditLog(new AuditStore(sql), keys, noSigner, silentLogger, new GrantEpochs(keys), "another-replica");
      const verifier = new AuditVerifier(new AuditStore(sql), keys, other, () => ({ serverId: NEXUS_ID, bundle: TrustBundleSet.single(TRUST_DOMAIN, caPem) }), new GrantEpochs(keys));
      const report = await verifier.verify();
      expect(report.problems.filter((p) => p.replicaId === "given-up-replica")).to.deep.equal([]);
    } finally {
      await sql.end();
    }
  });
});
