// Backup and restore (docs/operations.md), proven by a round trip on a Debian
// PostgreSQL 15 cluster (Debian's pg_dump refuses the embedded PostgreSQL 18):
// a server with secrets, policies, admin tokens and audit events → pg_dump →
// pg_restore into a fresh database → a new server unseals with the password,
// accepting the restored state (ADR 0006) → every secret version reads back,
// policies enforce, the audit log verifies, admin tokens of the old database
// are revoked. A dump taken while writes are in flight restores to a
// consistent state: pg_dump reads one snapshot, and every write commits its
// audit event in its own statement.

import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createAdminToken, createPolicy, exactly, issueSvid, login, spiffeId } from "../support/admin-fixtures.js";
import { createDebianDatabase, debianTool, startDebianPrimary, type DebianPostgres } from "../support/debian-postgres.js";
import { ADMIN_PASSWORD, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { createTestPki, type TestPki } from "../support/test-server.js";

const HOUR = 3_600_000;

describe("backup and restore (pg_dump / pg_restore of the encrypted store)", function () {
  this.timeout(240_000);
  let cluster: DebianPostgres;
  let pki: TestPki;
  let work: string;
  const servers: SecretTestServer[] = [];

  before(async () => {
    cluster = await startDebianPrimary({ settings: { fsync: "off" } });
    pki = await createTestPki();
    work = await mkdtemp(path.join(tmpdir(), "nexus-backup-"));
  });
  after(async () => {
    for (const s of servers) await s.stop().catch(() => {});
    await cluster?.remove();
    await pki?.remove();
    await rm(work, { recursive: true, force: true });
  });

  async function createDatabase(name: string): Promise<string> {
    return createDebianDatabase(cluster, name);
  }

  async function server(databaseUrl: string, initialize: boolean): Promise<SecretTestServer> {
    const s = await startSecretServer({ pki, databaseUrl, initialize: initialize ? ADMIN_PASSWORD : false });
    servers.push(s);
    return s;
  }

  /** pg_dump in PostgreSQL's custom format, then pg_restore into a new database. */
  async function dumpAndRestore(from: string, to: string): Promise<string> {
    const file = path.join(work, `${to}.dump`);
    await debianTool("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", "--file", file, "--dbname", from]);
    const url = await createDatabase(to);
    await debianTool("pg_restore", ["--no-owner", "--no-privileges", "--exit-on-error", "--dbname", url, file]);
    return url;
  }

  async function unsealRestored(client: NexusClient): Promise<void> {
    ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD, acceptRestoredState: true }), "Unseal accept_restored_state");
  }

  async function verifiedAuditLog(client: NexusClient): Promise<number> {
    const { token } = await login(client);
    const report = ok(await client.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
    expect(report.problems.map((p) => `${p.kind} ${p.description}`), "the restored audit log verifies").to.deep.equal([]);
    return Number(report.eventsChecked);
  }

  it("a restored dump serves every secret version, enforces its policies, verifies its audit log and revokes the old admin tokens", async () => {
    const sourceUrl = await createDatabase("nexus_source");
    const source = await server(sourceUrl, true);
    const admin = source.client("grpc");
    const { token } = await login(admin);
    const automation = await createAdminToken(admin, token, "automation", HOUR);

    const readerId = spiffeId("apps/reader");
    const reader = await issueSvid(source, readerId);
    await createPolicy(admin, token, { name: "reader", spiffeIdPattern: exactly(readerId), pathPattern: "apps/shared/.+", permissions: [Permission.READ] });

    const written = new Map<string, string[]>();
    for (const p of ["apps/shared/db", "apps/shared/api", "apps/private/key"]) {
      for (let v = 1; v <= 3; v++) {
        const value = `${p}#${v}-${randomUUID()}`;
        ok(await admin.call(SecretService.method.putSecret, { path: p, data: { value } }));
        written.set(p, [...(written.get(p) ?? []), value]);
      }
    }
    ok(await source.client("grpc", reader).call(SecretService.method.getSecret, { path: "apps/shared/db" }));
    expect((await source.client("grpc", reader).call(SecretService.method.getSecret, { path: "apps/private/key" })).code).to.equal("PERMISSION_DENIED");
    const eventsBefore = await verifiedAuditLog(admin);

    const restoredUrl = await dumpAndRestore(sourceUrl, "nexus_restored");
    const restored = await server(restoredUrl, false);
    const client = restored.client("grpc");
    await unsealRestored(client);

    for (const [p, values] of written) {
      for (const [i, value] of values.entries()) {
        const res = ok(await client.call(SecretService.method.getSecret, { path: p, version: i + 1 }), `${p} v${i + 1}`);
        expect(res.data).to.deep.equal({ value });
      }
    }
    const restoredReader = restored.client("grpc", reader);
    ok(await restoredReader.call(SecretService.method.getSecret, { path: "apps/shared/api" }), "the reader policy still grants");
    expect((await restoredReader.call(SecretService.method.getSecret, { path: "apps/private/key" })).code, "and still denies").to.equal("PERMISSION_DENIED");
    // Accepting a restored state revokes every admin credential it held.
    const old = await client.call(OperatorService.method.listAdminTokens, {}, { bearerToken: automation.token });
    expect(old.code).to.equal("UNAUTHENTICATED");
    expect(await verifiedAuditLog(client)).to.be.greaterThan(eventsBefore);

    // The restored server's events are the source's plus its own: nothing lost in between.
    const db = openDatabase(restoredUrl);
    try {
      const [{ accepted }] = await db`SELECT count(*)::int AS accepted FROM audit_events WHERE detail @> '{"acceptRestoredState": true}'`;
      expect(accepted).to.equal(1);
    } finally {
      await db.end();
    }
  });

  it("a dump taken while writes are in flight restores to a consistent state", async () => {
    const sourceUrl = await createDatabase("nexus_busy");
    const source = await server(sourceUrl, true);
    const admin = source.client("grpc");
    const paths = Array.from({ length: 6 }, (_, i) => `busy/${i}`);
    let writing = true;
    const acknowledged = new Map<string, number>();
    const writers = paths.map(async (p) => {
      for (let n = 1; writing; n++) {
        const res = await admin.call(SecretService.method.putSecret, { path: p, data: { n: String(n) } });
        if (res.code === "OK") acknowledged.set(p, res.response!.version);
      }
    });
    await new Promise((r) => setTimeout(r, 500));
    const ackedBeforeDump = new Map(acknowledged);
    const restoredUrl = await dumpAndRestore(sourceUrl, "nexus_busy_restored");
    writing = false;
    await Promise.all(writers);
    expect(paths.some((p) => (acknowledged.get(p) ?? 0) > (ackedBeforeDump.get(p) ?? 0)), "writes went on while pg_dump ran").to.equal(true);

    const restored = await server(restoredUrl, false);
    const client = restored.client("grpc");
    await unsealRestored(client);
    const db = openDatabase(restoredUrl);
    try {
      for (const p of paths) {
        const latest = ok(await client.call(SecretService.method.getSecret, { path: p }), p);
        expect(latest.version, `${p}: every write acknowledged before the dump began is in it`).to.be.at.least(ackedBeforeDump.get(p) ?? 1);
        // Every version kept (max_versions prunes the oldest) is there up to the latest, and decrypts to what was written.
        const kept = (await db`
          SELECT v.version FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ${p} ORDER BY v.version`).map((r) => Number(r.version));
        expect(kept.length).to.be.greaterThan(0);
        expect(kept, `${p}: the versions kept are consecutive and end at the latest`).to.deep.equal(
          Array.from({ length: kept.length }, (_, i) => latest.version - kept.length + 1 + i),
        );
        for (const v of kept) {
          const res = ok(await client.call(SecretService.method.getSecret, { path: p, version: v }), `${p} v${v}`);
          expect(res.data).to.deep.equal({ n: String(v) });
        }
      }
    } finally {
      await db.end();
    }
    await verifiedAuditLog(client);
    // Each restored version has the audit event its write committed with.
    const check = openDatabase(restoredUrl);
    try {
      const missing = await check`
        SELECT s.path, v.version FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
        WHERE NOT EXISTS (
          SELECT 1 FROM audit_events e
          WHERE e.rpc = '/spike.nexus.v1.SecretService/PutSecret' AND e.outcome = 'ok' AND e.path = s.path
            AND e.version = v.version)`;
      expect(missing.map((r) => `${r.path} v${r.version}`)).to.deep.equal([]);
    } finally {
      await check.end();
    }
  });
});
