// Schema migrations on a real PostgreSQL: golang-migrate style pairs in sql/,
// applied up → down → up without leaving a trace, bookkept in golang-migrate's
// schema_migrations shape, and serialized by an advisory lock so that replicas
// starting together migrate once.

import { expect } from "chai";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { createLogger, silentLogger } from "../../src/log/logger.js";
import { connectDatabase, type Sql } from "../../src/store/database.js";
import { loadMigrations, Migrator, type Migration } from "../../src/store/migrations.js";
import { createTestDatabase } from "../support/test-database.js";
import { createTestPki, startTestServer } from "../support/test-server.js";

/** Everything a migration can leave in the public schema, as comparable text (bookkeeping excluded). */
async function schemaSnapshot(sql: Sql): Promise<string[]> {
  const rows = await sql<{ item: string }[]>`
    SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' (' || coalesce((
             SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum)
             FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')' AS item
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relname NOT LIKE 'schema_migrations%'
    UNION ALL
    SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
    UNION ALL
    SELECT 'constraint ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
      FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
     WHERE n.nspname = 'public' AND con.conname NOT LIKE 'schema_migrations%'
    UNION ALL
    SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')
    UNION ALL
    SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
    ORDER BY 1`;
  return rows.map((r) => r.item);
}

/** The brief's check: no relation in public but the bookkeeping table (and its index). */
async function relationsBesidesBookkeeping(sql: Sql): Promise<number> {
  const [row] = await sql<{ count: string }[]>`
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relname <> 'schema_migrations' AND c.relname NOT LIKE 'schema_migrations%'`;
  return Number(row.count);
}

describe("schema migrations", function () {
  this.timeout(60_000);
  let migrations: Migration[];
  const pools: Sql[] = [];

  /** A connection pool on a fresh, empty database. */
  async function freshDatabase(): Promise<{ url: string; sql: Sql }> {
    const url = await createTestDatabase("mig");
    return { url, sql: pool(url) };
  }
  function pool(url: string): Sql {
    const sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
    pools.push(sql);
    return sql;
  }

  before(async () => {
    migrations = await loadMigrations();
  });

  after(async () => {
    await Promise.all(pools.map((sql) => sql.end({ timeout: 5 })));
  });

  it("the sql/ folder holds at least one migration, numbered from 1 in order", () => {
    expect(migrations.length).to.be.greaterThan(0);
    expect(migrations.map((m) => m.version)).to.deep.equal(migrations.map((_m, i) => i + 1));
  });

  it("up applies every migration; status then shows the latest version and nothing pending", async () => {
    const { sql } = await freshDatabase();
    const migrator = new Migrator(sql, migrations, silentLogger);
    expect(await migrator.up()).to.equal(migrations.length);
    const status = await migrator.status();
    expect(status).to.include({ current: migrations.length, latest: migrations.length, dirty: false });
    expect(status.pending).to.deep.equal([]);
    expect(await migrator.up(), "a second up has nothing to do").to.equal(0);
  });

  it("down reverts one migration per step until version 0, leaving only schema_migrations", async () => {
    const { sql } = await freshDatabase();
    const migrator = new Migrator(sql, migrations, silentLogger);
    await migrator.up();
    for (let version = migrations.length; version > 0; version--) {
      expect(await migrator.down(), `down from ${version}`).to.equal(1);
      const status = await migrator.status();
      expect(status.current, `after down from ${version}`).to.equal(version - 1);
      expect(status.pending.map((m) => m.version)).to.deep.equal(migrations.slice(version - 1).map((m) => m.version));
    }
    expect(await migrator.down(), "nothing left to revert").to.equal(0);
    expect(await relationsBesidesBookkeeping(sql)).to.equal(0);
    expect(await schemaSnapshot(sql)).to.deep.equal([]);
  });

  it("up after a full down restores the same schema", async () => {
    const { sql } = await freshDatabase();
    const migrator = new Migrator(sql, migrations, silentLogger);
    await migrator.up();
    const first = await schemaSnapshot(sql);
    expect(first.length, "the migrated schema has tables").to.be.greaterThan(0);
    expect(await migrator.down(migrations.length)).to.equal(migrations.length);
    expect(await relationsBesidesBookkeeping(sql)).to.equal(0);
    expect(await migrator.up()).to.equal(migrations.length);
    expect(await schemaSnapshot(sql)).to.deep.equal(first);
    expect((await migrator.status()).current).to.equal(migrations.length);
  });

  it("each migration's down undoes exactly what its up did", async () => {
    const { sql } = await freshDatabase();
    // Going up one migration at a time: a migrator that knows only the first k.
    const afterUp: string[][] = [await schemaSnapshot(sql)];
    for (let k = 1; k <= migrations.length; k++) {
      expect(await new Migrator(sql, migrations.slice(0, k), silentLogger).up()).to.equal(1);
      afterUp.push(await schemaSnapshot(sql));
    }
    expect(afterUp[migrations.length].length, "the migrated schema has tables").to.be.greaterThan(0);
    const migrator = new Migrator(sql, migrations, silentLogger);
    for (let k = migrations.length; k > 0; k--) {
      await migrator.down();
      expect(await schemaSnapshot(sql), `down of ${k}_${migrations[k - 1].name}`).to.deep.equal(afterUp[k - 1]);
    }
  });

  it("bookkeeping has golang-migrate's shape: one schema_migrations row (version, dirty false), none at version 0", async () => {
    const { sql } = await freshDatabase();
    const migrator = new Migrator(sql, migrations, silentLogger);
    await migrator.up();
    const rows = await sql<{ version: string; dirty: boolean }[]>`SELECT version, dirty FROM schema_migrations`;
    expect(rows.map((r) => ({ version: Number(r.version), dirty: r.dirty }))).to.deep.equal([{ version: migrations.length, dirty: false }]);
    await migrator.down(migrations.length);
    expect(await sql`SELECT version FROM schema_migrations`).to.have.length(0);
  });

  it("two migrators on separate pools running up at once: one applies every migration, the other none", async () => {
    const { url } = await freshDatabase();
    const a = new Migrator(pool(url), migrations, silentLogger);
    const b = new Migrator(pool(url), migrations, silentLogger);
    const applied = await Promise.all([a.up(), b.up()]);
    expect([...applied].sort((x, y) => x - y)).to.deep.equal([0, migrations.length]);
    expect((await a.status()).current).to.equal(migrations.length);
  });

  it("two servers starting at once on a fresh database migrate it once, and both serve", async () => {
    const { url } = await freshDatabase();
    const pki = await createTestPki();
    const logs: string[] = [];
    const logger = createLogger("info", (line) => logs.push(line));
    const servers = await Promise.all([startTestServer({ pki, databaseUrl: url, logger }), startTestServer({ pki, databaseUrl: url, logger })]);
    try {
      const migrated = logs.map((line) => JSON.parse(line)).filter((entry) => entry.msg === "schema migrated");
      expect(migrated.map((entry) => entry.applied), "only one server reports applying migrations").to.deep.equal([migrations.length]);
      expect(logs.filter((line) => JSON.parse(line).msg === "migration up")).to.have.length(migrations.length);
      for (const server of servers) {
        const result = await server.client("grpc").call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
        expect(result.code, result.message).to.equal("OK");
      }
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
      await pki.remove();
    }
  });

  describe("a migration that fails", () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), "nexus-migrations-"));
      await writeFile(path.join(dir, "001_create_a.up.sql"), "CREATE TABLE a (id integer PRIMARY KEY);");
      await writeFile(path.join(dir, "001_create_a.down.sql"), "DROP TABLE a;");
      await writeFile(path.join(dir, "002_broken.up.sql"), "CREATE TABLE b (id integer);\nSELECT no_such_column FROM a;");
      await writeFile(path.join(dir, "002_broken.down.sql"), "DROP TABLE b;");
    });
    after(async () => rm(dir, { recursive: true, force: true }));

    it("is rolled back whole, and the version stays at the last one that succeeded", async () => {
      const { sql } = await freshDatabase();
      const migrator = new Migrator(sql, await loadMigrations(dir), silentLogger);
      let failure: Error | undefined;
      await migrator.up().catch((err: Error) => (failure = err));
      expect(failure?.message).to.include("migration 2_broken up failed");
      const status = await migrator.status();
      expect(status).to.include({ current: 1, dirty: false });
      const tables = await sql<{ relname: string }[]>`SELECT relname FROM pg_class WHERE relname IN ('a', 'b') AND relkind = 'r'`;
      expect(tables.map((t) => t.relname)).to.deep.equal(["a"]);
    });
  });

  describe("loadMigrations", () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(path.join(tmpdir(), "nexus-migrations-"));
    });
    afterEach(async () => rm(dir, { recursive: true, force: true }));

    it("refuses a folder where a migration has no .down.sql", async () => {
      await writeFile(path.join(dir, "001_first.up.sql"), "CREATE TABLE first ();");
      await writeFile(path.join(dir, "001_first.down.sql"), "DROP TABLE first;");
      await writeFile(path.join(dir, "002_second.up.sql"), "CREATE TABLE second ();");
      const err = await loadMigrations(dir).then(
        () => expect.fail("expected loadMigrations to refuse the folder"),
        (e: Error) => e,
      );
      expect(err.message).to.include("2_second").and.include(".down.sql");
    });

    it("refuses a gap in the numbering", async () => {
      for (const v of ["001", "003"]) {
        await writeFile(path.join(dir, `${v}_m.up.sql`), "SELECT 1;");
        await writeFile(path.join(dir, `${v}_m.down.sql`), "SELECT 1;");
      }
      const err = await loadMigrations(dir).then(
        () => expect.fail("expected loadMigrations to refuse the folder"),
        (e: Error) => e,
      );
      expect(err.message).to.include("numbered");
    });
  });
});
