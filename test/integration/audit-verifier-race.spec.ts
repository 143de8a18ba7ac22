// The audit verifier never holds the integrity key across an await. A Seal
// zeroes the key buffer in place; had the verifier taken the key before
// reading the log, a Seal during the read would leave it checking MACs with
// an all-zero key, and a row a database writer MAC'd with zeros would verify.
// Real modules on a real database; only the store's read is held open until
// the test has sealed.

import { expect } from "chai";
import { GrantEpochs } from "../../src/keys/grant-epochs.js";
import { macAuditEvent, type AuditFields } from "../../src/audit/audit-event.js";
import { AuditLog } from "../../src/audit/audit-log.js";
import { AuditVerifier, type VerificationReport } from "../../src/audit/audit-verifier.js";
import { NexusError } from "../../src/errors/nexus-error.js";
import { TrustBundleSet } from "../../src/identity/trust-bundle.js";
import { KeyManager } from "../../src/keys/key-manager.js";
import { silentLogger } from "../../src/log/logger.js";
import { AuditStore, insertAuditRow, type StoredAuditRow } from "../../src/store/audit-store.js";
import type { Sql } from "../../src/store/database.js";
import { RootKeyStore } from "../../src/store/root-key-store.js";
import { ADMIN_PASSWORD, FAST_KDF, openDatabase, startSecretServer } from "../support/secret-server.js";
import { NEXUS_ID, TRUST_DOMAIN } from "../support/test-server.js";

/** An AuditStore whose verification read completes only when the test says so. */
class HeldStore extends AuditStore {
  reading = false;
  private release: () => void = () => {};
  private readonly held = new Promise<void>((resolve) => (this.release = resolve));

  override async allForVerification(): Promise<StoredAuditRow[]> {
    this.reading = true;
    const rows = await super.allForVerification();
    await this.held;
    return rows;
  }

  letGo(): void {
    this.release();
  }
}

describe("the audit verifier and a Seal during its read", function () {
  this.timeout(60_000);

  it("a row MAC'd under an all-zero key does not verify when the key is sealed (zeroed) while the log is being read", async () => {
    // A migrated, initialized database; the server itself is not needed.
    const server = await startSecretServer();
    const caPem = server.pki.ca.certPem;
    const url = server.nexus.databaseUrl;
    await server.stop();
    const sql = openDatabase(url) as unknown as Sql;
    try {
      const keys = new KeyManager(new RootKeyStore(sql), silentLogger, FAST_KDF.kdfParams, 0);
      await keys.unseal(ADMIN_PASSWORD);
      const store = new HeldStore(sql);
      const log = new AuditLog(store, keys, { sign: () => { throw new Error("nothing is signed here"); } }, silentLogger, new GrantEpochs(keys), "race-replica");
      const verifier = new AuditVerifier(store, keys, log, () => ({ serverId: NEXUS_ID, bundle: TrustBundleSet.single(TRUST_DOMAIN, caPem) }), new GrantEpochs(keys));

      const fields: AuditFields = {
        replicaId: "zero-key-replica", sequence: 1, time: new Date(), requestId: "zero", caller: "spiffe://spike.ist/workload/forger",
        rpc: "/spike.nexus.v1.SecretService/GetSecret", path: "a/b", version: 1, outcome: "ok", code: "OK", detail: {},
      };
      await insertAuditRow(sql, { ...fields, mac: macAuditEvent(Buffer.alloc(32), fields), signature: null, signer: null });

      const verifying = verifier.verify().then(
        (report): VerificationReport | Error => report,
        (err: Error) => err,
      );
      while (!store.reading) await new Promise((r) => setImmediate(r));
      keys.seal("test: sealed while the verifier reads");
      store.letGo();
      const outcome = await verifying;

      // Refusing (sealed) is right; so would be reporting the row. Finding it valid is not.
      if (outcome instanceof Error) {
        expect(outcome).to.be.instanceOf(NexusError);
        expect((outcome as NexusError).reason).to.equal("SEALED");
      } else {
        const problems = outcome.problems.map((p) => `${p.kind} ${p.replicaId} ${p.sequence}`);
        expect(problems, "the all-zero-key row is a problem").to.include("inserted zero-key-replica 1");
      }
    } finally {
      await sql.end();
    }
  });
});
