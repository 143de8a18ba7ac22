// The audit export (NEXUS_AUDIT_EXPORT): every committed event once, as a JSON
// line with its MAC (signature and signer for sealed-time events), in order per
// replica; a restart resumes without gaps or repeats, also after a crash tore
// the last line; an event whose transaction is still open holds the export at
// its id until it commits (never skipped), and an id whose transaction rolled
// back is passed once no transaction that could hold it is left.

import { expect } from "chai";
import { execFileSync } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm, truncate, appendFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type postgres from "postgres";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { AuditExporter, FileExportTarget } from "../../src/audit/audit-export.js";
import { silentLogger } from "../../src/log/logger.js";
import { AuditStore } from "../../src/store/audit-store.js";
import { connectDatabase } from "../../src/store/database.js";
import { createTestDatabase } from "../support/test-database.js";
import { grpcNexusClient } from "../../src/client/nexus-client.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { cleanEnv, startNexusProcess } from "../support/nexus-process.js";
import { createTestPki, NEXUS_ID } from "../support/test-server.js";
import { ADMIN_PASSWORD, ok, openDatabase, seal, startSecretServer } from "../support/secret-server.js";

interface Line {
  id: number;
  replica_id: string;
  sequence: number;
  rpc: string;
  outcome: string;
  mac: string | null;
  signature: string | null;
  signer: string | null;
}

async function exported(file: string): Promise<Line[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  expect(text === "" || text.endsWith("\n"), "the export ends with a complete line").to.equal(true);
  return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Line);
}

/** Waits until the export holds every event in the table. */
async function exportCatchesUp(file: string, db: postgres.Sql): Promise<Line[]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const [{ n }] = await db`SELECT count(*)::int AS n FROM audit_events`;
    const lines = await exported(file);
    if (lines.length >= n || Date.now() > deadline) return lines;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The export holds each event of the table exactly once, with its MAC, signature and signer. */
async function expectExactlyTheTable(lines: readonly Line[], db: postgres.Sql): Promise<void> {
  const rows = await db`SELECT id, replica_id, sequence, mac, signature, signer FROM audit_events ORDER BY id`;
  expect(lines.map((l) => l.id), "each event once, in id order").to.deep.equal(rows.map((r) => Number(r.id)));
  const hex = (b: Buffer | null) => (b === null ? null : b.toString("hex"));
  for (const [i, r] of rows.entries()) {
    expect([lines[i].replica_id, lines[i].sequence, lines[i].mac, lines[i].signature, lines[i].signer]).to.deep.equal([
      r.replica_id,
      Number(r.sequence),
      hex(r.mac),
      hex(r.signature),
      hex(r.signer),
    ]);
  }
}

function inOrderPerReplica(lines: readonly Line[]): void {
  const last = new Map<string, number>();
  for (const l of lines) {
    expect(l.sequence, `${l.replica_id} ${l.sequence} after ${last.get(l.replica_id)}`).to.be.greaterThan(last.get(l.replica_id) ?? 0);
    last.set(l.replica_id, l.sequence);
  }
}

describe("audit export (NEXUS_AUDIT_EXPORT)", function () {
  this.timeout(90_000);
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "nexus-audit-export-"));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it("exports every committed event once, in order per replica, with its MAC, and signed events with signature and signer", async () => {
    const file = path.join(dir, "audit.jsonl");
    const server = await startSecretServer({ env: { NEXUS_AUDIT_EXPORT: file } });
    const db = openDatabase(server.nexus.databaseUrl);
    try {
      const client = server.client("grpc");
      const p = `export/${randomUUID()}`;
      for (let i = 0; i < 5; i++) ok(await client.call(SecretService.method.putSecret, { path: p, data: { n: String(i) } }));
      ok(await client.call(SecretService.method.getSecret, { path: p }));
      expect((await server.client("grpc", server.pki.workload).call(SecretService.method.getSecret, { path: p })).code).to.equal("PERMISSION_DENIED");
      await seal(client);
      // Sealed: this refusal is recorded signed with the server's SVID key.
      expect((await client.call(SecretService.method.getSecret, { path: p })).code).to.equal("FAILED_PRECONDITION");
      const lines = await exportCatchesUp(file, db);
      await expectExactlyTheTable(lines, db);
      inOrderPerReplica(lines);
      expect(lines.some((l) => l.signature !== null && l.signer !== null && l.mac === null), "a signed sealed-time event").to.equal(true);
      expect(lines.filter((l) => l.mac !== null).length).to.be.at.least(7);
    } finally {
      await db.end();
      await server.stop();
    }
  });

  it("a restarted server resumes the file without gaps or repeats, also after a crash tore its last line", async () => {
    const file = path.join(dir, "audit.jsonl");
    const pki = await createTestPki();
    let server = await startSecretServer({ pki, env: { NEXUS_AUDIT_EXPORT: file } });
    const databaseUrl = server.nexus.databaseUrl;
    const db = openDatabase(databaseUrl);
    try {
      const p = `resume/${randomUUID()}`;
      for (let i = 0; i < 4; i++) ok(await server.client("grpc").call(SecretService.method.putSecret, { path: p, data: { n: String(i) } }));
      await exportCatchesUp(file, db);
      server = await server.restart({ env: { NEXUS_AUDIT_EXPORT: file } });
      ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
      for (let i = 0; i < 3; i++) ok(await server.client("connect").call(SecretService.method.getSecret, { path: p }));
      let lines = await exportCatchesUp(file, db);
      await expectExactlyTheTable(lines, db);
      expect(new Set(lines.map((l) => l.replica_id)).size, "events of both runs").to.equal(2);

      // A crash: the last two lines never reached the disk and the third is torn.
      await server.stop();
      const text = await readFile(file, "utf8");
      const keep = text.split("\n").slice(0, -3).join("\n").length + 1;
      await truncate(file, keep);
      await appendFile(file, '{"id":99999,"replica_i');
      server = await startSecretServer({ pki, databaseUrl, initialize: false, env: { NEXUS_AUDIT_EXPORT: file } });
      ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
      ok(await server.client("grpc").call(SecretService.method.getSecret, { path: p }));
      lines = await exportCatchesUp(file, db);
      await expectExactlyTheTable(lines, db);
      inOrderPerReplica(lines);
    } finally {
      await db.end();
      await server.stop();
      await pki.remove();
    }
  });

  it("a named pipe or other non-regular file is refused at start, naming the setting (a write nobody reads would block a thread for good)", async () => {
    const fifo = path.join(dir, "export.pipe");
    execFileSync("mkfifo", [fifo]);
    let failure: unknown;
    await startSecretServer({ initialize: false, env: { NEXUS_AUDIT_EXPORT: fifo } }).then((s) => s.stop(), (err: unknown) => (failure = err));
    expect(String((failure as Error | undefined)?.message)).to.include("NEXUS_AUDIT_EXPORT").and.include("not a regular file");
  });

  /** A `nexus serve` process exporting to stdout, initialized, with one secret written and read. */
  async function stdoutExporter(stdout?: number) {
    const pki = await createTestPki();
    const ports = { grpc: await freePort(), connect: await freePort(), health: await freePort() };
    const nexus = startNexusProcess(
      ["serve"],
      cleanEnv({
        NEXUS_LISTEN: `127.0.0.1:${ports.grpc}`,
        NEXUS_CONNECT_LISTEN: `127.0.0.1:${ports.connect}`,
        NEXUS_HEALTH_LISTEN: `127.0.0.1:${ports.health}`,
        NEXUS_TRUST_BUNDLE: pki.files.ca,
        NEXUS_TLS_CERT: pki.files.cert,
        NEXUS_TLS_KEY: pki.files.key,
        NEXUS_DATABASE_URL: await createTestDatabase("stdout"),
        NEXUS_DATA_DIR: dir,
        NEXUS_AUDIT_EXPORT: "-",
        NEXUS_SHUTDOWN_GRACE: "2s",
        NEXUS_LOG_LEVEL: "info",
      }),
      { stdout },
    );
    const client = grpcNexusClient(`127.0.0.1:${ports.grpc}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID });
    const p = `stdout/${randomUUID()}`;
    const close = async () => {
      client.close();
      if (nexus.child.exitCode === null) await nexus.kill();
      await pki.remove();
    };
    try {
      await nexus.waitForLog("nexus serving");
      ok(await client.call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }));
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { k: "v" } }));
      ok(await client.call(SecretService.method.getSecret, { path: p }));
    } catch (err) {
      await close();
      throw err;
    }
    /** 800 reads, far more than a pipe's 64 KiB of export lines; resolves with how long they took. */
    const manyReads = async () => {
      const started = Date.now();
      for (let i = 0; i < 40; i++) {
        await Promise.all(Array.from({ length: 20 }, () => client.call(SecretService.method.getSecret, { path: p }).then((r) => ok(r))));
      }
      return Date.now() - started;
    };
    const stopTakes = async () => {
      const stopping = Date.now();
      expect(await nexus.stop()).to.equal(0);
      return Date.now() - stopping;
    };
    return { nexus, manyReads, stopTakes, close };
  }

  it("`-` streams the lines to stdout, each with its MAC", async () => {
    const s = await stdoutExporter();
    try {
      const deadline = Date.now() + 10_000;
      while (s.nexus.stdout().split("\n").filter(Boolean).length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      const lines = s.nexus.stdout().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Line);
      expect(lines.map((l) => l.rpc)).to.deep.equal(["/spike.nexus.v1.OperatorService/Initialize", "/spike.nexus.v1.SecretService/PutSecret", "/spike.nexus.v1.SecretService/GetSecret"]);
      expect(lines.every((l) => typeof l.mac === "string")).to.equal(true);
      expect(await s.stopTakes()).to.be.below(15_000);
      const position = JSON.parse(await readFile(path.join(dir, "audit-export.position"), "utf8")) as { after: number };
      expect(position.after).to.equal(lines[lines.length - 1].id);
    } finally {
      await s.close();
    }
  });

  it("`-` into a pipe nobody reads (a stalled log collector) holds back no call and no shutdown", async () => {
    const fifo = path.join(dir, "stdout.pipe");
    execFileSync("mkfifo", [fifo]);
    // Opened read-write, so the child's writes find a reader that never reads.
    const fd = openSync(fifo, "r+");
    try {
      const s = await stdoutExporter(fd);
      try {
        expect(await s.manyReads(), "800 reads while the pipe is full").to.be.below(30_000);
        expect(await s.stopTakes(), "the shutdown does not wait for the pipe").to.be.below(15_000);
      } finally {
        await s.close();
      }
    } finally {
      closeSync(fd);
    }
  });

  it("a server whose export has passed the end of its database's log (a restored backup) refuses to start, naming the setting", async () => {
    const file = path.join(dir, "ahead.jsonl");
    const databaseUrl = await createTestDatabase("ahead");
    const first = await startSecretServer({ databaseUrl, env: { NEXUS_AUDIT_EXPORT: file } });
    const db = openDatabase(databaseUrl);
    try {
      await exportCatchesUp(file, db);
    } finally {
      await db.end();
      await first.stop();
    }
    const lines = await exported(file);
    // The file claims more than the database holds, as after restoring an older dump.
    await appendFile(file, JSON.stringify({ ...lines[lines.length - 1], id: lines[lines.length - 1].id + 1000 }) + "\n");
    let failure: unknown;
    await startSecretServer({ databaseUrl, initialize: false, env: { NEXUS_AUDIT_EXPORT: file } }).then((s) => s.stop(), (err: unknown) => (failure = err));
    expect(String((failure as Error | undefined)?.message)).to.include("NEXUS_AUDIT_EXPORT").and.include("restored from a backup");
  });

  describe("ids committed out of order", () => {
    let url: string;
    let db: postgres.Sql;
    let sql: ReturnType<typeof connectDatabase>;
    before(async () => {
      url = await createTestDatabase("export");
      // A server migrates the schema; it is not needed after.
      const server = await startSecretServer({ databaseUrl: url, initialize: false });
      await server.stop();
      db = openDatabase(url);
      sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
    });
    after(async () => {
      await db?.end();
      await sql?.end();
    });

    const insert = (q: postgres.Sql | postgres.TransactionSql, sequence: number) => q`
      INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, outcome, code)
      VALUES ('hand', ${sequence}, now(), ${randomUUID()}, 'spiffe://spike.ist/x', '/t/T', 'ok', 'OK') RETURNING id`;

    it("an event whose transaction is still open holds the export at its id until it commits, and is then exported, not skipped", async () => {
      const file = path.join(dir, "held.jsonl");
      const exporter = new AuditExporter(new AuditStore(sql), new FileExportTarget(file), silentLogger, { pollIntervalMs: 60_000 });
      await exporter.start();
      await exporter.exportAvailable();
      const before = (await exported(file)).length;

      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let heldId = 0;
      let inserted!: () => void;
      const insertedHeld = new Promise<void>((resolve) => (inserted = resolve));
      const tx = db.begin(async (t) => {
        heldId = Number((await insert(t, 1))[0].id);
        inserted();
        await held;
      });
      await insertedHeld;
      let later: number;
      try {
        later = Number((await insert(db, 2))[0].id);
        expect(later).to.be.greaterThan(heldId);
        for (let i = 0; i < 4; i++) await exporter.exportAvailable();
        expect((await exported(file)).map((l) => l.id), "nothing past the open transaction's id").to.not.include(later);
        expect((await exported(file)).length).to.equal(before);
      } finally {
        release();
        await tx;
      }
      await exporter.exportAvailable();
      const ids = (await exported(file)).map((l) => l.id);
      expect(ids.slice(before)).to.deep.equal([heldId, later]);
      await exporter.stop();
    });

    it("an id whose transaction rolled back is passed once no transaction that could hold it is left", async () => {
      const file = path.join(dir, "rolled-back.jsonl");
      const exporter = new AuditExporter(new AuditStore(sql), new FileExportTarget(file), silentLogger, { pollIntervalMs: 60_000 });
      await exporter.start();
      await exporter.exportAvailable();
      await db
        .begin(async (t) => {
          await insert(t, 3);
          throw new Error("roll back");
        })
        .catch(() => {});
      const after = Number((await insert(db, 4))[0].id);
      // First sight of the hole, then the horizon is noted, then passed.
      for (let i = 0; i < 3; i++) await exporter.exportAvailable();
      const lines = await exported(file);
      expect(lines[lines.length - 1].id).to.equal(after);
      await expectExactlyTheTable(lines, db);
      await exporter.stop();
    });
  });
});
