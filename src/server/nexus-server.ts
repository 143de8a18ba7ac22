// The composition root: the one place that builds a server from a
// configuration and takes it down again in order. Tests build servers through
// here too, each with its own configuration and database.
//
// Start-up is ordered for time to SERVING: the database and the keys first,
// then unsealing from a password file (scrypt, 0.4–0.8 s on libuv's thread
// pool) runs while the rest of the server (components.ts: ~0.5 s of module
// loading and set-up on the main thread) loads and starts.
//
// Before any of that, a start that cannot serve stops without side effects:
// the data folder's lock is taken (embedded PostgreSQL, dev files) and the
// listen ports are checked, so a second `make run` never touches the first
// one's database.

import { SETTINGS, type ListenAddress, type NexusConfig } from "../config/config.js";
import { NexusError } from "../errors/nexus-error.js";
import { KeyManager } from "../keys/key-manager.js";
import type { KdfParams } from "../keys/password-kdf.js";
import type { Logger } from "../log/logger.js";
import { lockDataFolder } from "../store/data-folder-lock.js";
import { connectDatabase } from "../store/database.js";
import { replicaApplicationName } from "../store/pool-activity.js";
import { startEmbeddedPostgres, type EmbeddedPostgres } from "../store/embedded-postgres.js";
import { loadMigrations, Migrator } from "../store/migrations.js";
import { RootKeyStore } from "../store/root-key-store.js";
import type { TlsMaterialSource } from "../transport/certificate-source.js";
import type { HealthReporter } from "../transport/health.js";
import { addressUnavailable } from "../transport/listen.js";
import { unsealAtStart } from "./unseal-at-start.js";

export interface RunningNexus {
  readonly grpcPort: number;
  readonly connectPort: number;
  readonly healthPort: number;
  /** Undefined unless NEXUS_METRICS_LISTEN is set (dev mode: 127.0.0.1:9553). */
  readonly metricsPort: number | undefined;
  readonly databaseUrl: string;
  readonly certificates: TlsMaterialSource;
  readonly health: HealthReporter;
  readonly keys: KeyManager;
  /** Stops accepting, lets in-flight calls finish up to the grace period, then closes everything. */
  shutdown(): Promise<void>;
}

export interface StartOptions {
  /** Overrides for tests: how often the database is pinged, the certificate debounce. */
  readonly databaseCheckIntervalMs?: number;
  readonly certificateDebounceMs?: number;
  /** How often this replica checks whether a scheduled key rotation is due (tests shorten it). */
  readonly keyRotationCheckMs?: number;
  /** Tests lower the scrypt cost; production always uses the default. */
  readonly kdfParams?: KdfParams;
  readonly failedUnsealDelayMs?: number;
  /** Tests shorten the WatchSecrets heartbeat (15 s) and its per-stream buffer (1024 events). */
  readonly watchHeartbeatMs?: number;
  readonly watchBufferLimit?: number;
}

export async function startNexus(config: NexusConfig, logger: Logger, options: StartOptions = {}): Promise<RunningNexus> {
  const cleanup: Array<() => Promise<void> | void> = [];
  const undo = async () => {
    for (const step of cleanup.reverse()) await Promise.resolve(step()).catch(() => {});
  };
  // A start that fails lets an unsealing in flight settle before it seals and
  // tears down, so no key is installed after the seal.
  let unsealing: Promise<void> | undefined;
  try {
    if (config.databaseUrl === undefined || config.mode === "dev") {
      const lock = await lockDataFolder(config.dataDir, config.mode === "dev" ? "dev server" : "server");
      cleanup.push(() => lock.release());
    }
    await checkListenAddresses(config);
    let embedded: EmbeddedPostgres | undefined;
    let databaseUrl = config.databaseUrl;
    if (databaseUrl === undefined) {
      embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
      cleanup.push(() => embedded?.stop());
      databaseUrl = embedded.url;
    }
    const applicationName = replicaApplicationName();
    const sql = connectDatabase({ url: databaseUrl, caFile: config.databaseCaFile, poolMax: config.dbPoolMax, logger, applicationName });
    cleanup.push(() => sql.end({ timeout: 5 }));
    const applied = await new Migrator(sql, await loadMigrations(), logger).up();
    if (applied > 0) logger.info("schema migrated", { applied });

    const rootKeys = new RootKeyStore(sql);
    const keys = new KeyManager(rootKeys, logger, options.kdfParams, options.failedUnsealDelayMs);
    cleanup.push(() => keys.seal("shutdown"));
    await keys.checkInitialized();
    unsealing = unsealAtStart(config, keys, rootKeys, logger);
    unsealing.catch(() => {}); // awaited below

    const { startComponents } = await import("./components.js");
    const components = await startComponents({
      config,
      logger,
      sql,
      databaseApplicationName: applicationName,
      rootKeys,
      keys,
      databaseCheckIntervalMs: options.databaseCheckIntervalMs,
      certificateDebounceMs: options.certificateDebounceMs,
      keyRotationCheckMs: options.keyRotationCheckMs,
      watchHeartbeatMs: options.watchHeartbeatMs,
      watchBufferLimit: options.watchBufferLimit,
      cleanup,
    });
    const { certificates, listeners, metricsPort } = components;
    const { health, grpcPort, connectPort, healthPort } = listeners;
    await unsealing;
    // SERVING promises the policies too, not only the keys.
    await components.policiesLoaded();
    components.updateHealth();

    logger.info("nexus serving", { grpcPort, connectPort, healthPort, metricsPort, trustDomain: config.trustDomain, mode: config.mode });

    let stopping: Promise<void> | undefined;
    const shutdown = () =>
      (stopping ??= (async () => {
        logger.info("shutting down", { graceMs: config.shutdownGraceMs });
        health.set("NOT_SERVING");
        const drained = listeners.drain();
        const timer = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), config.shutdownGraceMs).unref());
        if ((await Promise.race([drained, timer])) === "timeout") logger.warn("grace period over; cancelling remaining calls");
        await undo();
        logger.info("stopped");
      })());

    return { grpcPort, connectPort, healthPort, metricsPort, databaseUrl, certificates, health, keys, shutdown };
  } catch (err) {
    await unsealing?.catch(() => {});
    await undo();
    throw err;
  }
}

/** Fails, naming the setting, if a listener's fixed port is taken. */
async function checkListenAddresses(config: NexusConfig): Promise<void> {
  const listeners: ReadonlyArray<[ListenAddress, string]> = [
    [config.listen, SETTINGS.listen.env],
    [config.connectListen, SETTINGS.connectListen.env],
    [config.healthListen, SETTINGS.healthListen.env],
    ...(config.metricsListen === undefined ? [] : [[config.metricsListen, SETTINGS.metricsListen.env] as [ListenAddress, string]]),
  ];
  for (const [address, env] of listeners) {
    const code = await addressUnavailable(address);
    if (code === undefined) continue;
    const inUse = code === "EADDRINUSE";
    const why = inUse ? "another process listens there; stop it or choose another address" : code;
    throw new NexusError("failed_precondition", `${env} ${address.host}:${address.port} is not available (${why})`, {
      reason: inUse ? "ADDRESS_IN_USE" : "ADDRESS_UNAVAILABLE",
    });
  }
}
