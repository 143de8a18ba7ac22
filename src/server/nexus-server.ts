// The composition root: the one place that builds the object graph (identity,
// authorization, services, stores, transports) from a configuration, starts the
// listeners, and takes everything down again in order. Tests build servers
// through here too, each with its own configuration and database.

import { AuditLog } from "../audit/audit-log.js";
import { AuditVerifier } from "../audit/audit-verifier.js";
import { AccessController } from "../authorization/access-policy.js";
import { AdminCredentials } from "../authorization/admin-credentials.js";
import { PasswordAttempts } from "../authorization/password-attempts.js";
import { PolicyEngine } from "../authorization/policy-engine.js";
import { PolicySync } from "../authorization/policy-sync.js";
import type { NexusConfig } from "../config/config.js";
import { PeerAuthenticator } from "../identity/peer-authenticator.js";
import type { Logger } from "../log/logger.js";
import { KeyManager } from "../keys/key-manager.js";
import type { KdfParams } from "../keys/password-kdf.js";
import { SecretCipher } from "../keys/secret-cipher.js";
import { operatorService } from "../services/operator-service.js";
import { policyService } from "../services/policy-service.js";
import { AuditStore } from "../store/audit-store.js";
import { CredentialStore } from "../store/credential-store.js";
import { PolicyStore } from "../store/policy-store.js";
import { startMaintenance } from "./maintenance.js";
import { secretService } from "../services/secret-service.js";
import { SecretStore } from "../store/secret-store.js";
import { unsealAtStart } from "./unseal-at-start.js";
import { connectDatabase } from "../store/database.js";
import { DatabaseMonitor } from "../store/database-monitor.js";
import { startEmbeddedPostgres, type EmbeddedPostgres } from "../store/embedded-postgres.js";
import { loadMigrations, Migrator } from "../store/migrations.js";
import { RootKeyStore } from "../store/root-key-store.js";
import { CertificateSource } from "../transport/certificate-source.js";
import type { HealthReporter } from "../transport/health.js";

export interface RunningNexus {
  readonly grpcPort: number;
  readonly connectPort: number;
  readonly healthPort: number;
  readonly databaseUrl: string;
  readonly certificates: CertificateSource;
  readonly health: HealthReporter;
  readonly keys: KeyManager;
  /** Stops accepting, lets in-flight calls finish up to the grace period, then closes everything. */
  shutdown(): Promise<void>;
}

export interface StartOptions {
  /** Overrides for tests: how often the database is pinged, the certificate debounce. */
  readonly databaseCheckIntervalMs?: number;
  readonly certificateDebounceMs?: number;
  /** Tests lower the scrypt cost; production always uses the default. */
  readonly kdfParams?: KdfParams;
  readonly failedUnsealDelayMs?: number;
}

export async function startNexus(config: NexusConfig, logger: Logger, options: StartOptions = {}): Promise<RunningNexus> {
  const cleanup: Array<() => Promise<void> | void> = [];
  const undo = async () => {
    for (const step of cleanup.reverse()) await Promise.resolve(step()).catch(() => {});
  };
  try {
    const certificates = new CertificateSource(
      { certFile: config.certFile, keyFile: config.keyFile, bundleFile: config.trustBundleFile },
      config.trustDomain,
      logger,
      options.certificateDebounceMs,
    );
    certificates.watch();
    cleanup.push(() => certificates.close());

    let embedded: EmbeddedPostgres | undefined;
    let databaseUrl = config.databaseUrl;
    if (databaseUrl === undefined) {
      embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
      cleanup.push(() => embedded?.stop());
      databaseUrl = embedded.url;
    }
    const sql = connectDatabase({ url: databaseUrl, caFile: config.databaseCaFile, poolMax: config.dbPoolMax, logger });
    cleanup.push(() => sql.end({ timeout: 5 }));
    const applied = await new Migrator(sql, await loadMigrations(), logger).up();
    if (applied > 0) logger.info("schema migrated", { applied });

    const rootKeys = new RootKeyStore(sql);
    const keys = new KeyManager(rootKeys, logger, options.kdfParams, options.failedUnsealDelayMs);
    cleanup.push(() => keys.seal("shutdown"));
    const secrets = new SecretStore(sql);
    const policyStore = new PolicyStore(sql);
    const credentialStore = new CredentialStore(sql);
    const auditStore = new AuditStore(sql);
    const auditLog = new AuditLog(auditStore, keys, logger);
    cleanup.push(() => auditLog.checkpoint(true).catch((err) => logger.warn("final audit checkpoint not written", { err })));
    const engine = new PolicyEngine();
    const policySync = new PolicySync(policyStore, engine, keys, logger);
    await policySync.start();
    cleanup.push(() => policySync.stop());
    const credentials = new AdminCredentials(credentialStore, keys);

    const services = [
      operatorService({
        trustDomain: config.trustDomain,
        keys,
        initialized: () => rootKeys.isInitialized(),
        credentials,
        credentialStore,
        attempts: new PasswordAttempts(credentialStore),
        auditStore,
        auditLog,
        verifier: new AuditVerifier(auditStore, keys, auditLog),
      }),
      secretService({ keys, cipher: new SecretCipher(keys), store: secrets, maxSecretBytes: config.maxSecretBytes }),
      policyService({ store: policyStore, keys, sync: policySync }),
    ];
    // Seal changes before the listeners exist still reach the health status.
    let updateHealth = () => {};
    keys.onSealChange(() => updateHealth());
    // Unsealing from a password file (scrypt, in libuv's thread pool) runs while
    // the listeners load and start; startNexus returns once it is done.
    const unsealing = unsealAtStart(config, keys, rootKeys, logger);
    unsealing.catch(() => {}); // awaited below
    // grpc-js, connect-node and reflection take ~250 ms to load; loading them
    // only now keeps that off the database's start-up path and overlaps it
    // with the scrypt of the password file.
    const listenersModule = import("./listeners.js");

    cleanup.push(
      startMaintenance({
        secrets,
        credentials: credentialStore,
        auditStore,
        auditLog,
        keys,
        logger,
        cleanupIntervalMs: config.cleanupIntervalMs,
        auditRetentionMs: config.auditRetentionMs,
      }),
    );

    const { startListeners } = await listenersModule;
    const listeners = await startListeners({
      config,
      logger,
      services,
      certificates,
      authenticator: new PeerAuthenticator({ trustDomains: [config.trustDomain] }),
      access: new AccessController(config.superuserId, engine, credentials, keys),
      auditLog,
      cleanup,
    });
    const { health, grpcPort, connectPort, healthPort } = listeners;
    // Serving means the database answers and this replica holds its keys.
    const monitor = new DatabaseMonitor(sql, () => updateHealth(), logger, options.databaseCheckIntervalMs);
    updateHealth = () => health.set(monitor.isHealthy && !keys.sealed ? "SERVING" : "NOT_SERVING");
    await monitor.check();
    monitor.start();
    cleanup.push(() => monitor.stop());
    await unsealing;
    updateHealth();

    logger.info("nexus serving", { grpcPort, connectPort, healthPort, trustDomain: config.trustDomain, mode: config.mode });

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

    return { grpcPort, connectPort, healthPort, databaseUrl, certificates, health, keys, shutdown };
  } catch (err) {
    await undo();
    throw err;
  }
}
