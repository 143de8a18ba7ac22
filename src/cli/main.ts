// The `nexus` command: serve (production), dev (what `make run` uses), migrate,
// and help. Configuration comes from NEXUS_* variables and matching flags.
// Exit codes (stable, for scripts): 0 done, 1 failed, 2 usage or configuration,
// 3 in use: another process holds the data folder or a listen port.

import path from "node:path";
import { ConfigError, loadConfig, loadDatabaseConfig, settingsHelp, type DatabaseConfig, type Mode, type NexusConfig } from "../config/config.js";
import { NexusError } from "../errors/nexus-error.js";
import { createLogger, type Logger } from "../log/logger.js";
import { startNexus } from "../server/nexus-server.js";
import { lockDataFolder } from "../store/data-folder-lock.js";
import { connectDatabase } from "../store/database.js";
import { startEmbeddedPostgres } from "../store/embedded-postgres.js";
import { loadMigrations, Migrator } from "../store/migrations.js";
import { NEXUS_VERSION } from "../version.js";

const USAGE = `nexus ${NEXUS_VERSION}: a secrets store for SPIFFE workloads

Usage:
  nexus serve [flags]            serve in production mode (TLS files and settings from NEXUS_* / flags)
  nexus dev [flags]              serve with dev certificates (certs-dev/) and an embedded PostgreSQL
  nexus migrate up|down|status [--dev] [flags]
                                 apply, revert (one step) or show schema migrations; needs only
                                 the database settings (--dev: the dev data folder's embedded one)
  nexus --help | --version

Exit codes: 0 done, 1 failed, 2 usage or configuration, 3 in use (another process holds the data
folder or a listen port).

Settings (flag, environment variable, meaning):
${settingsHelp()}
`;

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version") {
    process.stdout.write(NEXUS_VERSION + "\n");
    return 0;
  }
  try {
    switch (command) {
      case "serve":
      case "dev":
        return await serve(command, rest);
      case "migrate":
        return await migrate(rest);
      default:
        process.stderr.write(`nexus: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nexus: configuration: ${err.message}\n`);
      return 2;
    }
    if (err instanceof NexusError && IN_USE_REASONS.has(err.reason)) {
      process.stderr.write(`nexus: ${err.message}\n`);
      return 3;
    }
    process.stderr.write(`nexus: ${(err as Error).message}\n`);
    return 1;
  }
}

const IN_USE_REASONS = new Set(["DATA_FOLDER_IN_USE", "ADDRESS_IN_USE"]);

async function serve(mode: Mode, flags: readonly string[]): Promise<number> {
  const config = loadConfig(mode, flags);
  const logger = createLogger(config.logLevel);
  const server = await startNexus(config, logger);
  if (mode === "dev") printDevHelp(config, server.grpcPort, server.connectPort, server.healthPort);
  await new Promise<void>((resolve) => {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      if (++signals > 1) {
        logger.warn("second signal; exiting now", { signal });
        process.exit(1);
      }
      logger.info("signal received", { signal });
      server.shutdown().then(resolve, resolve);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  return 0;
}

async function migrate(args: readonly string[]): Promise<number> {
  const [action, ...flags] = args;
  if (action !== "up" && action !== "down" && action !== "status") {
    process.stderr.write("nexus migrate: say up, down or status\n");
    return 2;
  }
  const config = loadDatabaseConfig(flags.includes("--dev") ? "dev" : "serve", flags.filter((f) => f !== "--dev"));
  const logger = createLogger(config.logLevel);
  await withDatabase(config, logger, async (url) => {
    const sql = connectDatabase({ url, caFile: config.databaseCaFile, poolMax: 2, logger });
    try {
      const migrator = new Migrator(sql, await loadMigrations(), logger);
      if (action === "up") process.stdout.write(`applied ${await migrator.up()} migration(s)\n`);
      if (action === "down") process.stdout.write(`reverted ${await migrator.down()} migration(s)\n`);
      const status = await migrator.status();
      process.stdout.write(`schema version ${status.current} of ${status.latest}${status.pending.length ? `, pending: ${status.pending.map((m) => `${m.version}_${m.name}`).join(", ")}` : ", up to date"}\n`);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
  return 0;
}

// The embedded database is the data folder's: taken under its lock, so a
// migrate next to a running server is refused instead of stopping its cluster.
async function withDatabase(config: DatabaseConfig, logger: Logger, fn: (url: string) => Promise<void>): Promise<void> {
  if (config.databaseUrl !== undefined) return fn(config.databaseUrl);
  const lock = await lockDataFolder(config.dataDir, "migrate");
  try {
    const embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
    try {
      await fn(embedded.url);
    } finally {
      await embedded.stop();
    }
  } finally {
    await lock.release();
  }
}

function printDevHelp(config: NexusConfig, grpcPort: number, connectPort: number, healthPort: number): void {
  const rel = (p: string) => path.relative(process.cwd(), p) || p;
  const certs = path.dirname(rel(config.certFile ?? "certs-dev/nexus.pem"));
  const pilot = `--cert ${certs}/pilot.pem --key ${certs}/pilot-key.pem --cacert ${rel(config.trustBundleFile ?? "certs-dev/ca.pem")}`;
  const bundle = rel(config.trustBundleFile ?? "certs-dev/ca.pem");
  const spike = `npx spike --cert ${certs}/pilot.pem --key ${certs}/pilot-key.pem --bundle ${bundle}${grpcPort === 8553 ? "" : ` --addr localhost:${grpcPort}`}`;
  const lines = [
    "",
    "Nexus is serving (dev mode). Try, from this folder, with the spike CLI (docs/cli.md):",
    "",
    `  ${spike} operator status`,
    `  printf 's3cret' | ${spike} secret put apps/demo/db username=demo password=-`,
    `  ${spike} secret get apps/demo/db --field password`,
    "",
    "or with buf curl and curl:",
    "",
    `  npx buf curl --protocol grpc ${pilot} https://localhost:${grpcPort}/spike.nexus.v1.OperatorService/GetStatus`,
    "",
    `  curl ${pilot} -H 'content-type: application/json' -d '{}' https://localhost:${connectPort}/spike.nexus.v1.OperatorService/GetStatus`,
    "",
    `  npx buf curl --protocol grpc ${pilot} -d '{"path":"apps/demo/db","data":{"username":"demo","password":"s3cret"}}' https://localhost:${grpcPort}/spike.nexus.v1.SecretService/PutSecret`,
    "",
    `  npx buf curl --protocol grpc ${pilot} -d '{"path":"apps/demo/db"}' https://localhost:${grpcPort}/spike.nexus.v1.SecretService/GetSecret`,
    "",
    `  npx buf curl --protocol grpc --http2-prior-knowledge --schema proto http://localhost:${healthPort}/grpc.health.v1.Health/Check`,
    "",
    "Stop with Ctrl-C.",
    "",
  ];
  process.stdout.write(lines.join("\n"));
}
