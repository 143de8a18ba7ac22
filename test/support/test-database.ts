// A real PostgreSQL for the tests: NEXUS_TEST_DATABASE_URL when set, otherwise
// one embedded cluster for the whole run (started by database-hooks.ts). Each
// suite gets a database of its own, so suites never see each other's rows.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import postgres from "postgres";
import { silentLogger } from "../../src/log/logger.js";
import { startEmbeddedPostgres, type EmbeddedPostgres } from "../../src/store/embedded-postgres.js";

interface Cluster {
  urlFor(database: string): string;
  stop(): Promise<void>;
}

let cluster: Cluster | undefined;
let counter = 0;

export async function startTestCluster(): Promise<void> {
  if (cluster) return;
  const external = process.env.NEXUS_TEST_DATABASE_URL;
  if (external) {
    cluster = {
      urlFor: (db) => {
        const u = new URL(external);
        u.pathname = "/" + db;
        return u.toString();
      },
      stop: async () => {},
    };
    return;
  }
  const dir = await mkdtemp(path.join(tmpdir(), "nexus-test-pg-"));
  const embedded = await startEmbeddedPostgres({ dataDir: dir, logger: silentLogger, settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" } });
  cluster = {
    urlFor: embedded.urlFor,
    stop: async () => {
      await embedded.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function stopTestCluster(): Promise<void> {
  await cluster?.stop();
  cluster = undefined;
}

/** Creates an empty database for one suite and returns its URL. */
export async function createTestDatabase(prefix = "t"): Promise<string> {
  if (!cluster) throw new Error("the test cluster is not running: run mocha with --require dist/test/support/database-hooks.js");
  const name = `nexus_${prefix}_${process.pid}_${++counter}`;
  const admin = postgres(cluster.urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name}`);
    await admin.unsafe(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return cluster.urlFor(name);
}

/** A private embedded cluster, for tests that stop and restart the database. */
export async function startPrivateCluster(): Promise<EmbeddedPostgres & { remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), "nexus-test-pg-"));
  const embedded = await startEmbeddedPostgres({ dataDir: dir, logger: silentLogger, settings: { fsync: "off" } });
  return {
    ...embedded,
    remove: async () => {
      await embedded.stop().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}
