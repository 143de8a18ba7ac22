// Expiry: a secret past its expires_at reads as NOT_FOUND everywhere at once
// (GetSecret, GetSecretMetadata, ListSecrets), whether or not the cleanup job has
// run yet; the job then removes its rows; and the path starts over at version 1.

import { expect } from "chai";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type postgres from "postgres";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

const LIFETIME_MS = 1500;
const inFuture = (ms: number) => timestampFromDate(new Date(Date.now() + ms));

async function waitUntilExpired(client: NexusClient, path: string): Promise<void> {
  await eventually(async () => fails(await client.call(SecretService.method.getSecret, { path }), "NOT_FOUND", `${path} after expiry`), {
    timeoutMs: LIFETIME_MS + 10_000,
    intervalMs: 100,
  });
}

describe("secret expiry", function () {
  this.timeout(60_000);

  describe("reads, with a cleanup job that does not run during the test", () => {
    let server: SecretTestServer;
    let sql: postgres.Sql;

    before(async () => {
      server = await startSecretServer({ env: { NEXUS_CLEANUP_INTERVAL: "1h" } });
      sql = openDatabase(server.nexus.databaseUrl);
    });

    after(async () => {
      await sql?.end();
      await server?.stop();
    });

    it("a secret reads normally until expires_at, then GetSecret, GetSecretMetadata and ListSecrets treat it as gone", async () => {
      // Both listeners' secrets expire in the same window, so the test waits once.
      const expiresAt = inFuture(LIFETIME_MS);
      const setup = server.client("grpc");
      for (const listener of LISTENERS) {
        const path = `${listener}/expiring/db`;
        ok(await setup.call(SecretService.method.putSecret, { path, data: { n: "1" } }));
        ok(await setup.call(SecretService.method.putSecret, { path, data: { n: "2" }, expiresAt }));
        ok(await setup.call(SecretService.method.putSecret, { path: `${listener}/expiring/keeper`, data: { n: "1" } }));
      }

      for (const listener of LISTENERS) {
        const client = server.client(listener);
        const path = `${listener}/expiring/db`;
        expect(ok(await client.call(SecretService.method.getSecret, { path }), `${listener} before expiry`).data).to.deep.equal({ n: "2" });
        const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(timestampDate(meta.expiresAt!).getTime()).to.be.closeTo(timestampDate(expiresAt).getTime(), 1);
        expect(ok(await client.call(SecretService.method.listSecrets, { prefix: `${listener}/expiring/` })).paths).to.deep.equal([path, `${listener}/expiring/keeper`]);
      }

      // Wait by the database's clock, then check the rows are still there: the
      // answers below come from the read path, not from the cleanup job.
      await eventually(
        async () => {
          const [row] = await sql`SELECT bool_and(expires_at <= now()) AS expired, count(*)::int AS n FROM secrets WHERE path LIKE '%/expiring/db'`;
          expect(row).to.deep.equal({ expired: true, n: 2 });
        },
        { timeoutMs: LIFETIME_MS + 10_000 },
      );
      for (const listener of LISTENERS) {
        const client = server.client(listener);
        const path = `${listener}/expiring/db`;
        for (const version of [0, 1, 2]) fails(await client.call(SecretService.method.getSecret, { path, version }), "NOT_FOUND", `${listener} v${version}`);
        fails(await client.call(SecretService.method.getSecretMetadata, { path }), "NOT_FOUND", `${listener} metadata`);
        expect(ok(await client.call(SecretService.method.listSecrets, { prefix: `${listener}/expiring/` })).paths).to.deep.equal([`${listener}/expiring/keeper`]);
        fails(await client.call(SecretService.method.deleteSecret, { path }), "NOT_FOUND", `${listener} delete`);
        fails(await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 3, updateMask: { paths: ["max_versions"] } }), "NOT_FOUND", `${listener} update`);
        expect(ok(await client.call(SecretService.method.getSecret, { path: `${listener}/expiring/keeper` })).data).to.deep.equal({ n: "1" });
      }
    });

    it("expires_at set through UpdateSecretMetadata expires the secret too, and clearing it keeps the secret", async () => {
      const client = server.client("connect");
      for (const path of ["meta-expiry/goes", "meta-expiry/stays"]) {
        ok(await client.call(SecretService.method.putSecret, { path, data: { k: "v" } }));
        ok(await client.call(SecretService.method.updateSecretMetadata, { path, expiresAt: inFuture(LIFETIME_MS), updateMask: { paths: ["expires_at"] } }));
      }
      const cleared = ok(await client.call(SecretService.method.updateSecretMetadata, { path: "meta-expiry/stays", updateMask: { paths: ["expires_at"] } }));
      expect(cleared.metadata?.expiresAt).to.equal(undefined);

      await waitUntilExpired(client, "meta-expiry/goes");
      expect(ok(await client.call(SecretService.method.getSecret, { path: "meta-expiry/stays" })).data).to.deep.equal({ k: "v" });
    });

    it("a later put without expires_at leaves the expiry as it was", async () => {
      const client = server.client("grpc");
      const path = "keep-expiry/db";
      const expiresAt = inFuture(3_600_000);
      ok(await client.call(SecretService.method.putSecret, { path, data: { n: "1" }, expiresAt }));
      ok(await client.call(SecretService.method.putSecret, { path, data: { n: "2" } }));
      const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path })).metadata!;
      expect(timestampDate(meta.expiresAt!).getTime()).to.be.closeTo(timestampDate(expiresAt).getTime(), 1);
    });

    it("a put to an expired path starts again at version 1, without the old expiry or versions", async () => {
      const path = "reuse/db";
      for (const listener of LISTENERS) {
        const client = server.client(listener);
        const p = `${listener}/${path}`;
        ok(await client.call(SecretService.method.putSecret, { path: p, data: { n: "1" } }));
        ok(await client.call(SecretService.method.putSecret, { path: p, data: { n: "2" }, expiresAt: inFuture(LIFETIME_MS) }));
      }
      await waitUntilExpired(server.client("grpc"), `grpc/${path}`);
      await waitUntilExpired(server.client("connect"), `connect/${path}`);

      for (const listener of LISTENERS) {
        const client = server.client(listener);
        const p = `${listener}/${path}`;
        expect(ok(await client.call(SecretService.method.putSecret, { path: p, data: { n: "fresh" } }), listener).version).to.equal(1);
        const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path: p })).metadata!;
        expect(meta.versions.map((v) => v.version)).to.deep.equal([1]);
        expect(meta.expiresAt).to.equal(undefined);
        expect(ok(await client.call(SecretService.method.getSecret, { path: p })).data).to.deep.equal({ n: "fresh" });
      }
    });

    it("a put with cas to an expired path counts it as new: cas 0 writes version 1", async () => {
      const client = server.client("grpc");
      const path = "reuse/cas";
      ok(await client.call(SecretService.method.putSecret, { path, data: { n: "1" }, expiresAt: inFuture(LIFETIME_MS) }));
      await waitUntilExpired(client, path);
      fails(await client.call(SecretService.method.putSecret, { path, data: { n: "x" }, cas: 1 }), "ABORTED", "cas 1 on an expired path");
      expect(ok(await client.call(SecretService.method.putSecret, { path, data: { n: "new" }, cas: 0 })).version).to.equal(1);
    });

    for (const listener of LISTENERS) {
      it(`on the ${listener} listener, expires_at now or in the past is INVALID_ARGUMENT and writes nothing`, async () => {
        const client = server.client(listener);
        const path = `${listener}/past/db`;
        for (const expiresAt of [timestampFromDate(new Date(Date.now() - 60_000)), timestampFromDate(new Date(Date.now() - 1)), { seconds: 0n, nanos: 0 }]) {
          const message = fails(await client.call(SecretService.method.putSecret, { path, data: { k: "v" }, expiresAt }), "INVALID_ARGUMENT");
          expect(message).to.include("expires_at");
        }
        fails(await client.call(SecretService.method.getSecretMetadata, { path }), "NOT_FOUND");
      });
    }
    it("expires_at beyond the Timestamp range (after 9999-12-31) is INVALID_ARGUMENT, not INTERNAL", async () => {
      const result = await server.client("grpc").call(SecretService.method.putSecret, { path: "far/future", data: { k: "v" }, expiresAt: { seconds: 253402300800n } });
      fails(result, "INVALID_ARGUMENT");
    });
  });

  describe("the cleanup job", () => {
    let server: SecretTestServer;
    let sql: postgres.Sql;

    before(async () => {
      server = await startSecretServer({ env: { NEXUS_CLEANUP_INTERVAL: "200ms" } });
      sql = openDatabase(server.nexus.databaseUrl);
    });

    after(async () => {
      await sql?.end();
      await server?.stop();
    });

    it("removes an expired secret's row and versions, and leaves the others", async () => {
      const client = server.client("grpc");
      ok(await client.call(SecretService.method.putSecret, { path: "job/expiring", data: { n: "1" } }));
      ok(await client.call(SecretService.method.putSecret, { path: "job/expiring", data: { n: "2" }, expiresAt: inFuture(LIFETIME_MS) }));
      ok(await client.call(SecretService.method.putSecret, { path: "job/later", data: { n: "1" }, expiresAt: inFuture(3_600_000) }));
      ok(await client.call(SecretService.method.putSecret, { path: "job/forever", data: { n: "1" } }));
      const [{ id }] = await sql`SELECT id FROM secrets WHERE path = 'job/expiring'`;

      await eventually(
        async () => {
          const [secret] = await sql`SELECT count(*)::int AS n FROM secrets WHERE id = ${id as string}`;
          const [versions] = await sql`SELECT count(*)::int AS n FROM secret_versions WHERE secret_id = ${id as string}`;
          expect({ secret: secret.n, versions: versions.n }).to.deep.equal({ secret: 0, versions: 0 });
        },
        { timeoutMs: LIFETIME_MS + 15_000, intervalMs: 100 },
      );
      const rest = await sql`SELECT path FROM secrets ORDER BY path`;
      expect(rest.map((r) => r.path)).to.deep.equal(["job/forever", "job/later"]);
      fails(await client.call(SecretService.method.getSecret, { path: "job/expiring" }), "NOT_FOUND");
      expect(ok(await client.call(SecretService.method.putSecret, { path: "job/expiring", data: { n: "again" } })).version).to.equal(1);
    });
  });
});
