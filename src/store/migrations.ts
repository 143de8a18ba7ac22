// Schema migrations: numbered golang-migrate style pairs in sql/
// (NNN_name.up.sql / NNN_name.down.sql). The bookkeeping table has golang-migrate's
// shape (schema_migrations: version, dirty), so its CLI can read our state too.
// Every run holds a PostgreSQL advisory lock on one reserved connection, so
// replicas starting together migrate once. No library fits both the driver and
// this file convention, so the runner stays this small.

import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "../log/logger.js";
import type { Sql } from "./database.js";

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly up: string;
  readonly down: string;
}

export interface MigrationStatus {
  readonly current: number;
  readonly dirty: boolean;
  readonly latest: number;
  readonly pending: readonly Migration[];
}

/** Arbitrary, fixed: "nexus" in ASCII. Every replica takes the same lock. */
const MIGRATION_LOCK_ID = 0x6e65787573;

export const DEFAULT_MIGRATIONS_DIR = fileURLToPath(new URL("../../../sql/", import.meta.url));

export async function loadMigrations(dir = DEFAULT_MIGRATIONS_DIR): Promise<Migration[]> {
  const files = await readdir(dir);
  const byVersion = new Map<number, { name: string; up?: string; down?: string }>();
  for (const file of files) {
    const m = /^(\d+)_([a-z0-9_]+)\.(up|down)\.sql$/.exec(file);
    if (!m) continue;
    const version = Number(m[1]);
    const entry = byVersion.get(version) ?? { name: m[2] };
    if (entry.name !== m[2]) throw new Error(`migration ${version} has two names: ${entry.name} and ${m[2]}`);
    entry[m[3] as "up" | "down"] = await readFile(path.join(dir, file), "utf8");
    byVersion.set(version, entry);
  }
  const migrations = [...byVersion.entries()]
    .sort(([a], [b]) => a - b)
    .map(([version, e]) => {
      if (e.up === undefined || e.down === undefined) throw new Error(`migration ${version}_${e.name} needs both .up.sql and .down.sql`);
      return { version, name: e.name, up: e.up, down: e.down };
    });
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migrations must be numbered 1, 2, 3…; found ${m.version} at position ${i + 1}`);
  });
  return migrations;
}

export class Migrator {
  constructor(
    private readonly sql: Sql,
    private readonly migrations: readonly Migration[],
    private readonly logger: Logger,
  ) {}

  async status(): Promise<MigrationStatus> {
    return this.locked(async (conn) => this.statusOn(conn));
  }

  /** Applies every pending migration, each in its own transaction. Returns the count applied. */
  async up(): Promise<number> {
    return this.locked(async (conn) => {
      const status = await this.statusOn(conn);
      for (const m of status.pending) await this.apply(conn, m, "up");
      return status.pending.length;
    });
  }

  /** Reverts the latest `steps` applied migrations (default one). */
  async down(steps = 1): Promise<number> {
    return this.locked(async (conn) => {
      const { current } = await this.statusOn(conn);
      const toRevert = this.migrations.filter((m) => m.version <= current).reverse().slice(0, steps);
      for (const m of toRevert) await this.apply(conn, m, "down");
      return toRevert.length;
    });
  }

  private async apply(conn: Reserved, m: Migration, direction: "up" | "down"): Promise<void> {
    const target = direction === "up" ? m.version : m.version - 1;
    this.logger.info(`migration ${direction}`, { version: m.version, name: m.name });
    await conn.unsafe("BEGIN");
    try {
      await conn.unsafe(direction === "up" ? m.up : m.down);
      await conn`DELETE FROM schema_migrations`;
      if (target > 0) await conn`INSERT INTO schema_migrations (version, dirty) VALUES (${target}, false)`;
      await conn.unsafe("COMMIT");
    } catch (err) {
      await conn.unsafe("ROLLBACK").catch(() => {});
      throw new Error(`migration ${m.version}_${m.name} ${direction} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  private async statusOn(conn: Reserved): Promise<MigrationStatus> {
    // Create the bookkeeping table only if missing: a runtime role without
    // CREATE on the schema must still be able to read the state.
    const [{ exists }] = await conn`SELECT to_regclass('schema_migrations') IS NOT NULL AS exists`;
    if (!exists) await conn`CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)`;
    const [row] = await conn<{ version: string; dirty: boolean }[]>`SELECT version, dirty FROM schema_migrations LIMIT 1`;
    const current = row ? Number(row.version) : 0;
    const latest = this.migrations.length;
    if (current > latest) {
      throw new Error(`the database is at schema version ${current}, newer than this build knows (${latest}): upgrade Nexus`);
    }
    if (row?.dirty) throw new Error(`schema version ${current} is marked dirty: repair it by hand, then clear schema_migrations.dirty`);
    return { current, dirty: row?.dirty ?? false, latest, pending: this.migrations.filter((m) => m.version > current) };
  }

  private async locked<T>(fn: (conn: Reserved) => Promise<T>): Promise<T> {
    const conn = await this.sql.reserve();
    try {
      await conn`SELECT pg_advisory_lock(${MIGRATION_LOCK_ID})`;
      try {
        return await fn(conn);
      } finally {
        await conn`SELECT pg_advisory_unlock(${MIGRATION_LOCK_ID})`;
      }
    } finally {
      conn.release();
    }
  }
}

type Reserved = Awaited<ReturnType<Sql["reserve"]>>;
