// PostgreSQL clusters built from Debian's server packages, for the tests the
// embedded PostgreSQL cannot serve: it ships no pg_basebackup, so no standby and
// no physical backup. A primary, a synchronous standby streaming from it, an
// immediate (crash) stop and a promotion, each in a temp folder of its own on a
// free loopback port. The packages are installed when missing (CI starts from a
// fresh machine). initdb refuses to run as root, so when the tests run as root
// every cluster command runs as the `postgres` system user the package creates.

import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { appendFile, chown, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import postgres from "postgres";
import { freePort } from "../../src/store/embedded-postgres.js";

const run = promisify(execFile);
const PG_ROOT = "/usr/lib/postgresql";
const COMMAND_TIMEOUT_MS = 120_000;

/** The bin folder of the newest Debian PostgreSQL installed, or undefined. */
function installedBinDir(): string | undefined {
  if (!existsSync(PG_ROOT)) return undefined;
  const versions = readdirSync(PG_ROOT)
    .filter((v) => /^\d+$/.test(v) && existsSync(path.join(PG_ROOT, v, "bin", "pg_basebackup")))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length === 0 ? undefined : path.join(PG_ROOT, versions[0], "bin");
}

/**
 * The bin folder of Debian's PostgreSQL server (initdb, pg_ctl, pg_basebackup),
 * installing the `postgresql` package first when it is missing.
 */
export async function debianPostgresBinDir(): Promise<string> {
  const found = installedBinDir();
  if (found !== undefined) return found;
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  await run("apt-get", ["update", "-qq"], { env, timeout: 10 * 60_000 });
  await run("apt-get", ["install", "-y", "-qq", "postgresql"], { env, timeout: 10 * 60_000 });
  const installed = installedBinDir();
  if (installed === undefined) throw new Error(`apt-get installed postgresql but no ${PG_ROOT}/<version>/bin/pg_basebackup exists`);
  return installed;
}

const asRoot = process.getuid?.() === 0;

/** Runs a PostgreSQL program, as the `postgres` user when we are root. */
async function runPg(bin: string, program: string, args: readonly string[]): Promise<string> {
  const file = path.join(bin, program);
  const [cmd, argv] = asRoot ? ["runuser", ["-u", "postgres", "--", file, ...args]] : [file, [...args]];
  try {
    const { stdout } = await run(cmd, argv, { timeout: COMMAND_TIMEOUT_MS, cwd: "/" });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${program} ${args.join(" ")} failed: ${e.stderr || e.message}`, { cause: err });
  }
}

/** A temp folder the cluster's user can write. */
async function clusterFolder(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  if (asRoot) {
    const ids = async (flag: string) => Number((await run("id", [flag, "postgres"])).stdout.trim());
    await chown(dir, await ids("-u"), await ids("-g"));
  }
  return dir;
}

export interface DebianPostgres {
  readonly port: number;
  readonly dataDir: string;
  /** "primary" or "standby", as built; promote() turns a standby into a primary. */
  readonly role: "primary" | "standby";
  /** postgres://postgres@127.0.0.1:<port>/<database> (trust authentication on loopback). */
  urlFor(database: string): string;
  /** Starts the stopped cluster and waits until it accepts connections. */
  start(): Promise<void>;
  /** Stops it: "fast" (clean) or "immediate" (like a crash: no checkpoint, clients cut off). */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Promotes a standby to primary and waits until it accepts writes. */
  promote(): Promise<void>;
  /** The server log so far, for failure messages. */
  log(): Promise<string>;
  /** Stops it (immediate) if running and deletes its folder. */
  remove(): Promise<void>;
}

export interface PrimaryOptions {
  /** Extra postgresql.conf lines, e.g. { fsync: "off" }. */
  readonly settings?: Record<string, string>;
}

/** initdb + start: a primary ready for streaming replication, on a free loopback port. */
export async function startDebianPrimary(opts: PrimaryOptions = {}): Promise<DebianPostgres> {
  const bin = await debianPostgresBinDir();
  const dataDir = path.join(await clusterFolder("nexus-debian-pg-"), "data");
  await runPg(bin, "initdb", ["-D", dataDir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
  const port = await freePort();
  await appendSettings(dataDir, {
    port: String(port),
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: `'${path.dirname(dataDir)}'`,
    wal_level: "replica",
    max_wal_senders: "5",
    wal_keep_size: "'256MB'",
    synchronous_commit: "on",
    ...opts.settings,
  });
  const cluster = debianCluster(bin, dataDir, port, "primary");
  await cluster.start();
  return cluster;
}

export interface StandbyOptions {
  /** Name the primary knows it by in synchronous_standby_names (default nexus_standby). */
  readonly name?: string;
  /** Make it the primary's synchronous standby (default true). */
  readonly synchronous?: boolean;
}

/**
 * pg_basebackup of a running primary into a new folder, started as a hot standby
 * that streams from it; by default the primary then waits for it on every commit
 * (synchronous_standby_names, synchronous_commit = on), and this resolves once
 * pg_stat_replication shows it as sync.
 */
export async function addStandby(primary: DebianPostgres, opts: StandbyOptions = {}): Promise<DebianPostgres> {
  const name = opts.name ?? "nexus_standby";
  const bin = await debianPostgresBinDir();
  const dataDir = path.join(await clusterFolder("nexus-debian-pg-standby-"), "data");
  await runPg(bin, "pg_basebackup", ["-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres", "-D", dataDir, "-X", "stream", "-c", "fast", "--no-sync"]);
  const port = await freePort();
  // The base backup carries the primary's postgresql.conf; these lines come later and win.
  await appendSettings(dataDir, {
    port: String(port),
    unix_socket_directories: `'${path.dirname(dataDir)}'`,
    hot_standby: "on",
    primary_conninfo: `'host=127.0.0.1 port=${primary.port} user=postgres application_name=${name}'`,
  });
  await touchAsCluster(path.join(dataDir, "standby.signal"));
  const standby = debianCluster(bin, dataDir, port, "standby");
  await standby.start();
  if (opts.synchronous ?? true) {
    const sql = postgres(primary.urlFor("postgres"), { max: 1, onnotice: () => {} });
    try {
      await sql.unsafe(`ALTER SYSTEM SET synchronous_standby_names = '${name}'`);
      await sql`SELECT pg_reload_conf()`;
      await waitFor(async () => {
        const rows = await sql`SELECT sync_state FROM pg_stat_replication WHERE application_name = ${name}`;
        return rows[0]?.sync_state === "sync";
      }, `standby ${name} to stream synchronously`);
    } finally {
      await sql.end();
    }
  }
  return standby;
}

function debianCluster(bin: string, dataDir: string, port: number, builtAs: "primary" | "standby"): DebianPostgres {
  const logFile = path.join(path.dirname(dataDir), "server.log");
  let role = builtAs;
  let running = false;
  return {
    port,
    dataDir,
    get role() {
      return role;
    },
    urlFor: (database) => `postgres://postgres@127.0.0.1:${port}/${database}`,
    async start() {
      await runPg(bin, "pg_ctl", ["-D", dataDir, "-l", logFile, "-w", "-t", "60", "start"]);
      running = true;
    },
    async stop(mode = "fast") {
      await runPg(bin, "pg_ctl", ["-D", dataDir, "-m", mode, "-w", "-t", "60", "stop"]);
      running = false;
    },
    async promote() {
      await runPg(bin, "pg_ctl", ["-D", dataDir, "-w", "-t", "60", "promote"]);
      role = "primary";
    },
    log: () => readFile(logFile, "utf8").catch(() => ""),
    async remove() {
      if (running) await this.stop("immediate").catch(() => {});
      await rm(path.dirname(dataDir), { recursive: true, force: true });
    },
  };
}

async function appendSettings(dataDir: string, settings: Record<string, string>): Promise<void> {
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${v}`);
  // Appending keeps the file's owner (the cluster's user).
  await appendFile(path.join(dataDir, "postgresql.conf"), `\n# nexus test settings\n${lines.join("\n")}\n`);
}

/** Creates an empty file owned by the cluster's user. */
async function touchAsCluster(file: string): Promise<void> {
  await (asRoot ? run("runuser", ["-u", "postgres", "--", "touch", file]) : run("touch", [file]));
}

async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Creates a database on a primary (the standby follows by replication). */
export async function createDebianDatabase(primary: DebianPostgres, name: string): Promise<string> {
  const sql = postgres(primary.urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    await sql.unsafe(`CREATE DATABASE ${name}`);
  } finally {
    await sql.end();
  }
  return primary.urlFor(name);
}

/** Runs one of the cluster's client tools (pg_dump, pg_restore, psql …) as the invoking user; they connect over TCP. */
export async function debianTool(name: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  const bin = await debianPostgresBinDir();
  return run(path.join(bin, name), [...args], { maxBuffer: 512 * 1024 * 1024 });
}
