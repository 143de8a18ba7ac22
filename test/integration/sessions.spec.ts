// Admin sessions (Login, Logout) and named admin tokens: wrong passwords slow
// the caller down to a lockout that every replica enforces; lifetimes are
// bounded; a token is shown once and never listed; the database keeps only an
// HMAC of each; and the cleanup job deletes what has expired.

import { expect } from "chai";
import { toBinary, toJsonString } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { createHash } from "node:crypto";
import { ListAdminTokensResponseSchema, OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createAdminToken, login } from "../support/admin-fixtures.js";
import { findLeaks } from "../support/leak-forms.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, SUPERUSER_ID, startTestServer, type TestServer } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

const SECOND = 1000;
const HOUR = 3600 * SECOND;
const WRONG_PASSWORD = "not-the-admin-password";

/** A call that needs a live admin credential and changes nothing. */
const listTokens = (client: NexusClient, bearerToken: string) => client.call(OperatorService.method.listAdminTokens, {}, { bearerToken });

describe("admin sessions and admin tokens", function () {
  this.timeout(60_000);

  describe("Login with a wrong password", () => {
    let server: SecretTestServer;
    let replica: TestServer;
    let db: ReturnType<typeof openDatabase>;

    before(async () => {
      server = await startSecretServer();
      replica = await startTestServer({ pki: server.pki, databaseUrl: server.nexus.databaseUrl, start: FAST_KDF });
      ok(await replica.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal the replica");
      db = openDatabase(server.nexus.databaseUrl);
    });

    after(async () => {
      await db?.end();
      await replica?.stop();
      await server?.stop();
    });

    it("is PERMISSION_DENIED; after three free attempts the caller is locked out (RESOURCE_EXHAUSTED) on every replica, Unseal included, until the lock ends", async () => {
      const [grpc, connect] = [server.client("grpc"), server.client("connect")];
      const attempt = (client: NexusClient, adminPassword: string) => client.call(OperatorService.method.login, { adminPassword });

      for (const [n, client] of [grpc, connect, grpc].entries()) {
        expect(fails(await attempt(client, WRONG_PASSWORD), "PERMISSION_DENIED", `free attempt ${n + 1}`)).to.include("not correct");
      }
      fails(await attempt(connect, WRONG_PASSWORD), "PERMISSION_DENIED", "the fourth wrong password (it starts the lock)");

      // The lock lasts 2 s after the fourth failure: check the other replica first.
      const lockedOut = /too many wrong passwords: try again in \d+ s/;
      expect(fails(await attempt(replica.client("connect"), ADMIN_PASSWORD), "RESOURCE_EXHAUSTED", "the right password on the other replica")).to.match(lockedOut);
      fails(await replica.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "RESOURCE_EXHAUSTED", "Unseal on the other replica");
      expect(fails(await attempt(grpc, ADMIN_PASSWORD), "RESOURCE_EXHAUSTED", "the right password on this replica")).to.match(lockedOut);
      const [failures] = await db`SELECT failures, locked_until > now() AS locked FROM auth_failures WHERE spiffe_id = ${SUPERUSER_ID}`;
      expect(failures).to.deep.equal({ failures: 4, locked: true });

      await eventually(async () => ok(await attempt(grpc, ADMIN_PASSWORD), "the right password once the lock ends"), { timeoutMs: 10_000, intervalMs: 250 });
      expect(await db`SELECT 1 FROM auth_failures WHERE spiffe_id = ${SUPERUSER_ID}`, "a success clears the count").to.have.length(0);
      fails(await attempt(connect, WRONG_PASSWORD), "PERMISSION_DENIED", "a wrong password after the count was cleared");
      ok(await attempt(replica.client("grpc"), ADMIN_PASSWORD), "the right password, one failure later, on the other replica");
    });

    it("an empty password is INVALID_ARGUMENT (EMPTY_PASSWORD) for Login and Unseal, and is not counted as a wrong one", async () => {
      await db`DELETE FROM auth_failures`;
      for (const method of [OperatorService.method.login, OperatorService.method.unseal] as const) {
        const res = await server.client("grpc").call(method, { adminPassword: "" });
        expect(res.code, method.name).to.equal("INVALID_ARGUMENT");
        expect(res.message, method.name).to.include("admin_password");
      }
      expect(await db`SELECT 1 FROM auth_failures`).to.have.length(0);
    });

    it("ten wrong passwords sent at once get no more tries than ten sent one by one: four refused, then locked out", async () => {
      await db`DELETE FROM auth_failures`;
      const client = server.client("connect");
      const results = await Promise.all(Array.from({ length: 10 }, () => client.call(OperatorService.method.login, { adminPassword: WRONG_PASSWORD })));
      const codes = results.map((r) => r.code).sort();
      expect(codes).to.deep.equal([...Array<string>(4).fill("PERMISSION_DENIED"), ...Array<string>(6).fill("RESOURCE_EXHAUSTED")]);
      const [failures] = await db`SELECT failures FROM auth_failures WHERE spiffe_id = ${SUPERUSER_ID}`;
      expect(failures.failures, "only the attempts that ran are counted").to.equal(4);
      await db`DELETE FROM auth_failures`;
    });
  });

  describe("sessions and tokens", () => {
    let server: SecretTestServer;
    let admin: NexusClient;
    let adminToken: string;
    let db: ReturnType<typeof openDatabase>;

    before(async () => {
      server = await startSecretServer();
      admin = server.client("grpc");
      adminToken = (await login(admin, 12 * HOUR)).token;
      db = openDatabase(server.nexus.databaseUrl);
    });

    after(async () => {
      await db?.end();
      await server?.stop();
    });

    for (const listener of LISTENERS) {
      describe(`on the ${listener} listener`, () => {
        let client: NexusClient;
        before(() => {
          client = server.client(listener);
        });

        it("Login's ttl is at most 12 h and more than zero (else INVALID_ARGUMENT); unset means 1 h", async () => {
          const TTLS = [
            { ttl: durationFromMs(12 * HOUR + 1), code: "INVALID_ARGUMENT" },
            { ttl: durationFromMs(13 * HOUR), code: "INVALID_ARGUMENT" },
            { ttl: durationFromMs(0), code: "INVALID_ARGUMENT" },
            { ttl: durationFromMs(-SECOND), code: "INVALID_ARGUMENT" },
            { ttl: durationFromMs(12 * HOUR), code: "OK", lifetime: 12 * HOUR },
            { ttl: durationFromMs(90 * SECOND), code: "OK", lifetime: 90 * SECOND },
            { ttl: undefined, code: "OK", lifetime: HOUR },
          ];
          for (const { ttl, code, lifetime } of TTLS) {
            const what = ttl === undefined ? "no ttl" : `a ttl of ${ttl.seconds} s ${ttl.nanos} ns`;
            const asked = Date.now();
            const res = await client.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD, ttl });
            expect(res.code, `${what}: ${res.message ?? ""}`).to.equal(code);
            if (res.code !== "OK") {
              expect(res.message, what).to.include("ttl");
              continue;
            }
            const session = res.response!;
            const expiresAt = timestampDate(session.expiresAt!).getTime();
            expect(expiresAt, `${what}: expires_at`).to.be.within(asked + lifetime! - 5 * SECOND, Date.now() + lifetime! + 5 * SECOND);
            expect(session.sessionToken, `${what}: 256 random bits, base64url`).to.match(/^nxs_[A-Za-z0-9_-]{43}$/);
            ok(await listTokens(client, session.sessionToken), `${what}: the session works`);
          }
        });

        it("Logout revokes the session it is called with, and only that one", async () => {
          const [ending, other] = [await login(client), await login(client)];
          expect(ending.token).to.not.equal(other.token);
          ok(await listTokens(client, ending.token), "before Logout");
          ok(await client.call(OperatorService.method.logout, {}, { bearerToken: ending.token }), "Logout");
          expect(fails(await listTokens(client, ending.token), "UNAUTHENTICATED", "after Logout")).to.include("invalid, expired or revoked");
          fails(await client.call(OperatorService.method.logout, {}, { bearerToken: ending.token }), "UNAUTHENTICATED", "a second Logout");
          ok(await listTokens(client, other.token), "another session is untouched");
        });

        it("Logout with an admin token is FAILED_PRECONDITION and the token keeps working", async () => {
          const { token } = await createAdminToken(client, adminToken, `logout-${listener}`, HOUR);
          fails(await client.call(OperatorService.method.logout, {}, { bearerToken: token }), "FAILED_PRECONDITION");
          ok(await listTokens(client, token));
        });

        it("CreateAdminToken shows the token once; ListAdminTokens describes it and never contains it", async () => {
          const name = `deploy-bot-${listener}`;
          const created = ok(await client.call(OperatorService.method.createAdminToken, { name, ttl: durationFromMs(48 * HOUR) }, { bearerToken: adminToken }));
          expect(created.token).to.match(/^nxt_[A-Za-z0-9_-]{43}$/);
          expect(created.adminToken).to.include({ name, createdBy: SUPERUSER_ID });
          const expiresAt = timestampDate(created.adminToken!.expiresAt!).getTime();
          expect(expiresAt).to.be.within(Date.now() + 47 * HOUR, Date.now() + 49 * HOUR);

          ok(await listTokens(client, created.token), "the token is an admin credential");
          const listed = ok(await listTokens(client, adminToken));
          const entry = listed.adminTokens.find((t) => t.name === name);
          expect(entry, "listed by name").to.not.equal(undefined);
          expect(entry).to.include({ createdBy: SUPERUSER_ID });
          expect(timestampDate(entry!.lastActivity!).getTime(), "last activity follows use").to.be.at.least(timestampDate(entry!.createdAt!).getTime());

          const secret = new Map<string, Buffer | string>([
            ["token", created.token],
            ["its random bytes", Buffer.from(created.token.slice(4), "base64url")],
          ]);
          const json = Buffer.from(toJsonString(ListAdminTokensResponseSchema, listed));
          const binary = Buffer.from(toBinary(ListAdminTokensResponseSchema, listed));
          expect(findLeaks(Buffer.concat([json, binary]), secret), "ListAdminTokens").to.deep.equal([]);
        });

        it("an admin token name already used, in any case, is ALREADY_EXISTS; a bad name or a ttl over a year is INVALID_ARGUMENT", async () => {
          const name = `Release-${listener}`;
          await createAdminToken(client, adminToken, name, HOUR);
          for (const dup of [name, name.toLowerCase(), name.toUpperCase()]) {
            fails(await client.call(OperatorService.method.createAdminToken, { name: dup }, { bearerToken: adminToken }), "ALREADY_EXISTS", dup);
          }
          for (const bad of ["", "has space", "slash/name", "x".repeat(65)]) {
            fails(await client.call(OperatorService.method.createAdminToken, { name: bad }, { bearerToken: adminToken }), "INVALID_ARGUMENT", JSON.stringify(bad));
          }
          fails(
            await client.call(OperatorService.method.createAdminToken, { name: `long-${listener}`, ttl: durationFromMs(366 * 24 * HOUR) }, { bearerToken: adminToken }),
            "INVALID_ARGUMENT",
            "366 days",
          );
        });

        it("RevokeAdminToken ends the token and unlists it; an unknown name is NOT_FOUND, a name no token can have INVALID_ARGUMENT", async () => {
          const name = `revoke-me-${listener}`;
          const { token } = await createAdminToken(client, adminToken, name, HOUR);
          ok(await client.call(OperatorService.method.revokeAdminToken, { name: name.toUpperCase() }, { bearerToken: adminToken }), "revoked by name, in any case");
          fails(await listTokens(client, token), "UNAUTHENTICATED", "the revoked token");
          const listed = ok(await listTokens(client, adminToken));
          expect(listed.adminTokens.map((t) => t.name)).to.not.include(name);
          fails(await client.call(OperatorService.method.revokeAdminToken, { name }, { bearerToken: adminToken }), "NOT_FOUND", "revoked twice");
          for (const bad of ["", "has space", "x".repeat(65), "nul\u0000"]) {
            expect(fails(await client.call(OperatorService.method.revokeAdminToken, { name: bad }, { bearerToken: adminToken }), "INVALID_ARGUMENT", JSON.stringify(bad))).to.include("name:");
          }
        });
      });
    }

    it("Login while sealed is FAILED_PRECONDITION", async () => {
      ok(await admin.call(OperatorService.method.seal, {}, { bearerToken: adminToken }), "Seal");
      try {
        fails(await admin.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD }), "FAILED_PRECONDITION");
      } finally {
        ok(await admin.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
      }
      ok(await listTokens(admin, adminToken), "sessions outlive a seal");
    });

    it("admin_credentials stores an HMAC of each session and token, never the token, bound to the SPIFFE ID that created it", async () => {
      const session = await login(admin);
      const token = await createAdminToken(admin, adminToken, "stored-as-hmac", HOUR);
      const columns = (await db`SELECT column_name FROM information_schema.columns WHERE table_name = 'admin_credentials' ORDER BY ordinal_position`).map((r) => r.column_name);
      expect(columns).to.deep.equal(["token_hmac", "kind", "name", "spiffe_id", "created_at", "expires_at", "last_activity", "mac"]);

      const rows = await db`SELECT c.*, c::text AS text FROM admin_credentials c`;
      expect(rows.length, "one row per live credential").to.be.at.least(2);
      for (const r of rows) {
        expect((r.token_hmac as Buffer).length, "HMAC-SHA256").to.equal(32);
        expect(r.spiffe_id).to.equal(SUPERUSER_ID);
      }
      const everything = Buffer.concat(rows.flatMap((r) => [Buffer.from(r.text as string), r.token_hmac as Buffer]));
      for (const [what, t] of [["session", session.token], ["admin token", token.token]] as const) {
        expect(findLeaks(everything, new Map<string, Buffer | string>([[what, t], [`${what} random bytes`, Buffer.from(t.slice(4), "base64url")]])), what).to.deep.equal([]);
        const unkeyed = [createHash("sha256").update(t).digest(), createHash("sha256").update(Buffer.from(t.slice(4), "base64url")).digest()];
        for (const digest of unkeyed) expect(everything.includes(digest), `${what}: an unkeyed SHA-256 would be a lookup table`).to.equal(false);
      }
      expect(rows.filter((r) => r.kind === "token" && r.name === "stored-as-hmac")).to.have.length(1);
    });
  });

  describe("the cleanup job", () => {
    let server: SecretTestServer;
    let db: ReturnType<typeof openDatabase>;

    before(async () => {
      server = await startSecretServer({ env: { NEXUS_CLEANUP_INTERVAL: "200ms" } });
      db = openDatabase(server.nexus.databaseUrl);
    });

    after(async () => {
      await db?.end();
      await server?.stop();
    });

    it("deletes expired sessions and admin tokens, and keeps live ones", async () => {
      const admin = server.client("grpc");
      const live = await login(admin, HOUR);
      const short = await login(admin, SECOND);
      await createAdminToken(admin, live.token, "short-lived", SECOND);
      const shortLived = () => db`SELECT kind FROM admin_credentials WHERE expires_at < now() + interval '1 minute' ORDER BY kind`;
      expect((await shortLived()).map((r) => r.kind), "both short-lived rows exist at first").to.deep.equal(["session", "token"]);

      await eventually(async () => expect(await shortLived(), "expired rows deleted").to.have.length(0), { timeoutMs: 10_000, intervalMs: 200 });
      fails(await listTokens(admin, short.token), "UNAUTHENTICATED", "the expired session");
      ok(await listTokens(admin, live.token), "the live session");
      expect((await db`SELECT kind FROM admin_credentials WHERE expires_at > now() + interval '30 minutes'`).map((r) => r.kind)).to.deep.equal(["session"]);
    });
  });
});
