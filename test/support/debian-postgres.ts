// A throwaway PostgreSQL cluster from Debian's packages (postgresql-15), for
// tests that need Debian's own tools: pg_dump/pg_restore (they refuse the
// embedded PostgreSQL 18) or a cluster to stop and promote. Installs the
// packages when missing (root, apt-get: a fresh CI machine), runs initdb and
// the server as the `postgres` user when the tests run as root (initdb refuses
// root), on 127.0.0.1 and a free port, with trust authentication.

import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chown, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export const DEBIAN_PG_VERSION = 15;
export const DEBIAN_PG_BIN = `/usr/lib/postgresql/${DEBIAN_PG_VERSION}/bin`;

export interface DebianCluster {
  readonly port: number;
  readonly dataDir: string;
  /** postgres://postgres@127.0.0.1:<port>/<database> */
  url(database?: string): string;
  /** Runs one of the cluster's tools (pg_dump, pg_restore, psql, createdb …) as the invoking user. */
  tool(name: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

/** Installs Debian's postgresql-15 if its binaries are missing. */
export function ensureDebianPostgres(): void {
  if (existsSync(path.join(DEBIAN_PG_BIN, "initdb"))) return;
  if (process.getuid?.() !== 0) throw new Error(`${DEBIAN_PG_BIN}/initdb is missing: run \`make system-deps\` as root (installs postgresql-${DEBIAN_PG_VERSION})`);
  for (const args of [["update", "-qq"], ["install", "-y", "-qq", `postgresql-${DEBIAN_PG_VERSION}`]]) {
    const r = spawnSync("apt-get", args, { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    if (r.status !== 0) throw new Error(`apt-get ${args.join(" ")} failed (${r.status})`);
  }
}

export async function startDebianCluster(): Promise<DebianCluster> {
  ensureDebianPostgres();
  const asRoot = process.getuid?.() === 0;
  const dataDir = await mkdtemp(path.join(tmpdir(), "nexus-debian-pg-"));
  if (asRoot) {
    const { uid, gid } = postgresUser();
    await chown(dataDir, uid, gid);
  }
  // As root, the server runs as `postgres`; the tools connect over TCP and need no user switch.
  const server = (bin: string, args: readonly string[]) =>
    asRoot ? run("runuser", ["-u", "postgres", "--", path.join(DEBIAN_PG_BIN, bin), ...args]) : run(path.join(DEBIAN_PG_BIN, bin), [...args]);
  await server("initdb", ["-D", dataDir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"]);
  const port = await freePort();
  await server("pg_ctl", [
    "-D", dataDir, "-w", "-t", "60", "-l", path.join(dataDir, "server.log"),
    "-o", `-p ${port} -c listen_addresses=127.0.0.1 -k ${dataDir} -c fsync=off -c max_connections=50`,
    "start",
  ]);
  const url = (database = "postgres") => `postgres://postgres@127.0.0.1:${port}/${database}`;
  return {
    port,
    dataDir,
    url,
    tool: (name, args) => run(path.join(DEBIAN_PG_BIN, name), [...args], { maxBuffer: 512 * 1024 * 1024 }),
    async stop() {
      await server("pg_ctl", ["-D", dataDir, "-w", "-m", "immediate", "stop"]).catch(() => {});
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

function postgresUser(): { uid: number; gid: number } {
  const r = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const g = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (r.status !== 0 || g.status !== 0) throw new Error("the `postgres` user is missing; Debian's postgresql package creates it");
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}
