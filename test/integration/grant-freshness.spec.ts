// Freshness of the rows that grant something (hardening, issue 10): a database
// writer who kept a copy of a deleted policy's row or a revoked admin token's
// row, and writes it back, gets nothing; a whole older copy of the policies
// written back under a running replica is refused; an operator accepts a
// restored state only through Unseal with accept_restored_state, audited.
// And the race of item 4: a policy reload that awaited across a seal drops
// what it read instead of checking it with a zeroed key.

import { expect } from "chai";
import { createHash } from "node:crypto";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { GrantEpochs } from "../../src/keys/grant-epochs.js";
import { PolicyEngine } from "../../src/authorization/policy-engine.js";
import { PolicySync } from "../../src/authorization/policy-sync.js";
import { policyMacInput, POLICY_MAC_LABEL } from "../../src/authorization/policy.js";
import { parseSpiffeId } from "../../src/identity/spiffe-id.js";
import { mac } from "../../src/keys/integrity.js";
import { KeyManager } from "../../src/keys/key-manager.js";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { loadMigrations, Migrator } from "../../src/store/migrations.js";
import { PolicyStore } from "../../src/store/policy-store.js";
import { RootKeyStore } from "../../src/store/root-key-store.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createAdminToken, createPolicy, exactly, issueSvid, login, spiffeId } from "../support/admin-fixtures.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";
import { startTestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

const HOUR = 3_600_000;

describe("freshness of policies and admin credentials", function () {
  this.timeout(60_000);

  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let admin: NexusClient;
  let adminToken: string;
  const readerId = spiffeId("workload/fresh-reader");
  const sentinelId = spiffeId("workload/fresh-sentinel");
  let reader: NexusClient;
  let sentinel: NexusClient;

  const reads = async (client: NexusClient, path: string) => (await client.call(SecretService.method.getSecret, { path })).code;
  const notifyReload = async () => void (await db`SELECT pg_notify('nexus_policies', '')`);

  before(async () => {
    server = await startSecretServer();
    db = openDatabase(server.nexus.databaseUrl);
    admin = server.client("grpc");
    adminToken = (await createAdminToken(admin, (await login(admin)).token, "freshness-admin", HOUR)).token;
    reader = server.client("grpc", await issueSvid(server, readerId));
    sentinel = server.client("grpc", await issueSvid(server, sentinelId));
    for (const path of ["fresh/reader", "fresh/sentinel"]) ok(await admin.call(SecretService.method.putSecret, { path, data: { v: path } }));
    await createPolicy(admin, adminToken, { name: "fresh-sentinel", spiffeIdPattern: exactly(sentinelId), pathPattern: "fresh/sentinel", permissions: [Permission.READ] });
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  describe("a deleted policy's row written back", () => {
    it("grants nothing: the replica refuses the whole set (its epoch bound it without that row), and a policy change is refused too", async () => {
      await createPolicy(admin, adminToken, { name: "fresh-reader", spiffeIdPattern: exactly(readerId), pathPattern: "fresh/reader", permissions: [Permission.READ] });
      expect(await reads(reader, "fresh/reader"), "while the policy exists").to.equal("OK");
      const [saved] = await db`SELECT * FROM policies WHERE name = 'fresh-reader'`;
      ok(await admin.call(PolicyService.method.deletePolicy, { name: "fresh-reader" }, { bearerToken: adminToken }), "DeletePolicy");
      expect(await reads(reader, "fresh/reader"), "after DeletePolicy").to.equal("PERMISSION_DENIED");

      await db`INSERT INTO policies ${db(saved)}`;
      await notifyReload();
      // The sentinel's policy is valid and untouched: once it stops granting, the
      // replica has reloaded and refused the set as a whole.
      await eventually(async () => expect(await reads(sentinel, "fresh/sentinel"), "the set is refused").to.equal("PERMISSION_DENIED"));
      expect(await reads(reader, "fresh/reader"), "the written-back policy").to.equal("PERMISSION_DENIED");
      const change = await admin.call(PolicyService.method.createPolicy, { policy: { name: "on-a-replayed-set", spiffeIdPattern: exactly(readerId), pathPattern: "x", permissions: [Permission.READ] } }, { bearerToken: adminToken });
      expect(fails(change, "INTERNAL", "CreatePolicy on a replayed set")).to.match(/integrity check/);

      await db`DELETE FROM policies WHERE name = 'fresh-reader'`;
      await notifyReload();
      await eventually(async () => expect(await reads(sentinel, "fresh/sentinel"), "the set as its epoch bound it").to.equal("OK"));
      expect(await reads(reader, "fresh/reader")).to.equal("PERMISSION_DENIED");
    });
  });

  describe("a whole older copy of the policies written back under a running replica", () => {
    it("is refused: the epoch went back", async () => {
      const older = { policies: await db`SELECT * FROM policies`, epoch: (await db`SELECT * FROM grant_epochs WHERE name = 'policies'`)[0] };
      await createPolicy(admin, adminToken, { name: "fresh-newer", spiffeIdPattern: exactly(readerId), pathPattern: "fresh/newer", permissions: [Permission.READ] });
      ok(await admin.call(PolicyService.method.deletePolicy, { name: "fresh-newer" }, { bearerToken: adminToken }));
      await db.begin(async (tx) => {
        await tx`DELETE FROM policies`;
        for (const row of older.policies) await tx`INSERT INTO policies ${tx(row)}`;
        await tx`UPDATE grant_epochs SET epoch = ${older.epoch.epoch}, digest = ${older.epoch.digest}, mac = ${older.epoch.mac} WHERE name = 'policies'`;
      });
      await notifyReload();
      await eventually(async () => expect(await reads(sentinel, "fresh/sentinel"), "an older epoch is refused").to.equal("PERMISSION_DENIED"));
    });

    it("Unseal with accept_restored_state accepts the stored policies (the valid ones), revokes every admin credential, and is audited", async () => {
      const superuserToken = (await login(admin)).token;
      const unsealed = await admin.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD, acceptRestoredState: true });
      ok(unsealed, "Unseal accept_restored_state");
      await eventually(async () => expect(await reads(sentinel, "fresh/sentinel"), "the accepted set grants again").to.equal("OK"));
      fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "UNAUTHENTICATED", "an admin token from before");
      fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: superuserToken }), "UNAUTHENTICATED", "a session from before");
      expect((await db`SELECT count(*)::int AS n FROM admin_credentials`)[0].n).to.equal(0);
      const [event] = await db`SELECT outcome, detail FROM audit_events WHERE rpc LIKE '%/Unseal' AND detail ? 'acceptRestoredState'`;
      expect(event, "the acceptance is in the audit log").to.deep.include({ outcome: "ok", detail: { acceptRestoredState: true } });
      adminToken = (await login(admin)).token;
      ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "a new session works");
    });

    it("a wrong password with accept_restored_state is PERMISSION_DENIED and accepts nothing", async () => {
      const before = (await db`SELECT epoch FROM grant_epochs ORDER BY name`).map((r) => Number(r.epoch));
      fails(await admin.call(OperatorService.method.unseal, { adminPassword: "not-the-admin-password", acceptRestoredState: true }), "PERMISSION_DENIED");
      expect((await db`SELECT epoch FROM grant_epochs ORDER BY name`).map((r) => Number(r.epoch))).to.deep.equal(before);
      ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "credentials untouched");
    });
  });

  describe("a revoked admin token's row written back", () => {
    // As it was, the row's own MAC verifies: the set's epoch is what refuses it
    // (and with it every credential, until the row is gone). With a later
    // expiry its own MAC fails: it is ignored, and the set still verifies.
    for (const variant of ["as it was", "with a later expiry"] as const) {
      const wholeSet = variant === "as it was";
      it(`${variant}: the token is refused${wholeSet ? ", and so is every credential until the row is gone again" : "; other credentials keep working"}`, async () => {
        const name = `fresh-revoked-${variant === "as it was" ? "same" : "later"}`;
        const revoked = await createAdminToken(admin, adminToken, name, HOUR);
        ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: revoked.token }), "the token works");
        const [saved] = await db`SELECT * FROM admin_credentials WHERE name = ${name}`;
        ok(await admin.call(OperatorService.method.revokeAdminToken, { name }, { bearerToken: adminToken }), "RevokeAdminToken");
        fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: revoked.token }), "UNAUTHENTICATED", "revoked");

        if (variant === "as it was") await db`INSERT INTO admin_credentials ${db(saved)}`;
        else await db`INSERT INTO admin_credentials ${db({ ...saved, expires_at: new Date(Date.now() + 365 * 24 * HOUR) })}`;
        const refused = fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: revoked.token }), "UNAUTHENTICATED", "written back");
        expect(refused).to.not.include(revoked.token);
        if (wholeSet) {
          fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "UNAUTHENTICATED", "a live credential, while the set is altered");
          fails(await admin.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD }), "INTERNAL", "Login does not seal an altered set");
        } else {
          ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "a live credential");
        }

        await db`DELETE FROM admin_credentials WHERE name = ${name}`;
        ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: adminToken }), "the set as its epoch bound it");
      });
    }

    it("a live credential's row given a later expiry stops verifying", async () => {
      const session = await login(admin, HOUR);
      await db`UPDATE admin_credentials SET expires_at = expires_at + interval '30 days' WHERE kind = 'session' AND expires_at = ${session.expiresAt}`;
      fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: session.token }), "UNAUTHENTICATED", "the extended session");
      await db`UPDATE admin_credentials SET expires_at = expires_at - interval '30 days' WHERE kind = 'session' AND expires_at = ${new Date(session.expiresAt.getTime() + 30 * 24 * HOUR)}`;
      ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: session.token }), "as it was");
    });
  });

  describe("a revoked admin token written back under a second running replica", () => {
    it("is refused there too: every replica hears of each new epoch as it is stored, not only the one that stored it", async () => {
      const replica = await startTestServer({ pki: server.pki, databaseUrl: server.nexus.databaseUrl, start: FAST_KDF });
      try {
        ok(await replica.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal the replica");
        const onReplica = replica.client("grpc");
        const name = "fresh-second-replica";
        const token = await createAdminToken(admin, adminToken, name, HOUR);
        ok(await onReplica.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token.token }), "the replica has read the set with the token");
        const saved = { rows: await db`SELECT * FROM admin_credentials`, epoch: (await db`SELECT * FROM grant_epochs WHERE name = 'admin_credentials'`)[0] };
        ok(await admin.call(OperatorService.method.revokeAdminToken, { name }, { bearerToken: adminToken }), "revoked through the first server");
        await sleep(500); // the NOTIFY of the new epoch reaches the replica
        await db.begin(async (tx) => {
          await tx`DELETE FROM admin_credentials`;
          for (const row of saved.rows) await tx`INSERT INTO admin_credentials ${tx(row)}`;
          await tx`UPDATE grant_epochs SET epoch = ${saved.epoch.epoch}, digest = ${saved.epoch.digest}, mac = ${saved.epoch.mac} WHERE name = 'admin_credentials'`;
        });
        expect(fails(await onReplica.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token.token }), "UNAUTHENTICATED", "the written-back token on the replica")).to.match(/went back/);
        fails(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: token.token }), "UNAUTHENTICATED", "and on the first server");
      } finally {
        await replica.stop();
      }
    });
  });
});

describe("a policy reload that awaits across a seal (the real modules, a controllable delay)", function () {
  this.timeout(60_000);

  it("drops what it read: rows MAC'd under an all-zero key (what a zeroed key buffer would accept) grant nothing", async () => {
    const url = await createTestDatabase("race");
    const sql = connectDatabase({ url, poolMax: 4, logger: silentLogger });
    try {
      await new Migrator(sql, await loadMigrations(), silentLogger).up();
      const keys = new KeyManager(new RootKeyStore(sql), silentLogger, FAST_KDF.kdfParams, 1);
      await keys.initialize(ADMIN_PASSWORD);

      // A policy and its set's epoch, MAC'd under 32 zero bytes: what any
      // database writer can compute.
      const zero = Buffer.alloc(32);
      const caller = "spiffe://spike.ist/workload/racer";
      const record = { id: "00000000-0000-4000-8000-000000000001", name: "zero-key", spiffeIdPattern: exactly(caller), pathPattern: ".+", permissions: ["super" as const], createdAt: new Date(), createdBy: caller, updatedAt: new Date() };
      const rowMac = mac(zero, POLICY_MAC_LABEL, policyMacInput(record));
      const digest = policySetDigest([rowMac]);
      await sql`INSERT INTO policies (id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac)
                VALUES (${record.id}, ${record.name}, ${record.spiffeIdPattern}, ${record.pathPattern}, ${["super"]}, ${record.createdAt}, ${record.createdBy}, ${record.updatedAt}, ${rowMac})`;
      await sql`UPDATE grant_epochs SET epoch = 1, digest = ${digest}, mac = ${mac(zero, "nexus/v1/grant-epoch", ["policies", 1, digest.toString("hex")])} WHERE name = 'policies'`;

      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      let reading!: () => void;
      const started = new Promise<void>((resolve) => (reading = resolve));
      class DelayedPolicyStore extends PolicyStore {
        override async snapshot() {
          const snapshot = await super.snapshot();
          reading();
          await gate;
          return snapshot;
        }
      }
      const engine = new PolicyEngine();
      const sync = new PolicySync(new DelayedPolicyStore(sql), engine, keys, new GrantEpochs(keys), silentLogger);
      const reload = sync.reload();
      await started;
      keys.seal("test: seal while the reload awaits");
      open();
      await reload;
      expect(engine.allows(parseSpiffeId(caller), "read", "any/path"), "a policy checked with a zeroed key").to.equal(false);
      expect(sync.loaded, "a reload cut short by a seal does not count as loaded").to.equal(false);
    } finally {
      await sql.end();
    }
  });
});

/** The set digest as grant-epochs.ts computes it: SHA-256 over a label, the set's name and its rows' MACs. */
function policySetDigest(macs: Buffer[]): Buffer {
  const hash = createHash("sha256").update("nexus/v1/grant-set").update("\0").update("policies").update("\0");
  for (const m of macs) hash.update(m);
  return hash.digest();
}
