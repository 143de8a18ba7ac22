// Everything a server runs once its database and keys exist: certificates,
// stores, audit, authorization, services, maintenance, listeners, the
// database monitor, and the optional metrics listener and audit export.
// nexus-server.ts loads this module only after unsealing has started, so its
// ~0.5 s of module loading and set-up on the main thread overlaps the scrypt
// of the password file on libuv's thread pool.

import { X509Certificate } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { AuditExporter, exportTarget } from "../audit/audit-export.js";
import { AuditLog } from "../audit/audit-log.js";
import { AuditRetention } from "../audit/audit-retention.js";
import { AuditVerifier } from "../audit/audit-verifier.js";
import type { SignatureTrust } from "../audit/event-authenticator.js";
import { AccessController } from "../authorization/access-policy.js";
import { AdminCredentials } from "../authorization/admin-credentials.js";
import { GrantEpochs } from "../authorization/grant-epochs.js";
import { PasswordAttempts } from "../authorization/password-attempts.js";
import { PolicyEngine } from "../authorization/policy-engine.js";
import { PolicySync } from "../authorization/policy-sync.js";
import type { NexusConfig } from "../config/config.js";
import { PeerAuthenticator } from "../identity/peer-authenticator.js";
import { SvidSigner } from "../identity/svid-signature.js";
import { inspectSvid } from "../identity/x509-svid.js";
import type { KeyManager } from "../keys/key-manager.js";
import { SecretCipher } from "../keys/secret-cipher.js";
import type { Logger } from "../log/logger.js";
import { startMetricsListener } from "../metrics/metrics-listener.js";
import { NexusMetrics } from "../metrics/nexus-metrics.js";
import { operatorService } from "../services/operator-service.js";
import { policyService } from "../services/policy-service.js";
import { secretService } from "../services/secret-service.js";
import { AuditStore } from "../store/audit-store.js";
import { CredentialStore } from "../store/credential-store.js";
import type { Sql } from "../store/database.js";
import { DatabaseMonitor } from "../store/database-monitor.js";
import { poolActivity } from "../store/pool-activity.js";
import { GrantEpochStore } from "../store/grant-epoch-store.js";
import { PolicyStore } from "../store/policy-store.js";
import type { RootKeyStore } from "../store/root-key-store.js";
import { SecretStore } from "../store/secret-store.js";
import { CertificateSource } from "../transport/certificate-source.js";
import { startListeners, type Listeners } from "./listeners.js";
import { startMaintenance } from "./maintenance.js";

export interface ComponentDeps {
  readonly config: NexusConfig;
  readonly logger: Logger;
  readonly sql: Sql;
  /** The application_name this replica's pool connects with (pool metrics read pg_stat_activity by it). */
  readonly databaseApplicationName?: string;
  readonly rootKeys: RootKeyStore;
  readonly keys: KeyManager;
  readonly databaseCheckIntervalMs?: number;
  readonly certificateDebounceMs?: number;
  /** Teardown steps, run in reverse order. */
  readonly cleanup: Array<() => Promise<void> | void>;
}

export interface Components {
  readonly certificates: CertificateSource;
  readonly listeners: Listeners;
  /** The port of the Prometheus /metrics listener; undefined when NEXUS_METRICS_LISTEN is not set. */
  readonly metricsPort: number | undefined;
  /** Resolves once the policies are loaded, if unsealed. */
  policiesLoaded(): Promise<void>;
  /** Sets the health status from the database monitor, the seal and the policies. */
  updateHealth(): void;
}

export async function startComponents(deps: ComponentDeps): Promise<Components> {
  const { config, logger, sql, rootKeys, keys, cleanup } = deps;
  const certificates = new CertificateSource(
    { certFile: config.certFile, keyFile: config.keyFile, bundleFile: config.trustBundleFile },
    config.trustDomain,
    logger,
    deps.certificateDebounceMs,
  );
  certificates.watch();
  cleanup.push(() => certificates.close());

  const secrets = new SecretStore(sql);
  const policyStore = new PolicyStore(sql);
  const credentialStore = new CredentialStore(sql);
  const auditStore = new AuditStore(sql);
  // Built only when someone scrapes it: off, nothing observes a call.
  const metrics: NexusMetrics | undefined =
    config.metricsListen === undefined
      ? undefined
      : new NexusMetrics(
          [OperatorService, SecretService, PolicyService].flatMap((s) => s.methods.map((m) => `/${s.typeName}/${m.name}`)),
          {
            sealed: () => keys.sealed,
            keyringKeys: () => keys.keyringSize,
            activeKeyringKeyId: () => keys.activeKeyringKeyId,
            databaseUp: () => monitor.isHealthy,
            databasePoolMax: config.dbPoolMax,
            databasePool: deps.databaseApplicationName === undefined ? undefined : () => poolActivity(sql, deps.databaseApplicationName!),
            auditEventsWaiting: (): number => auditLog.eventsWaiting,
            svidNotAfterMs: () => new Date(new X509Certificate(certificates.material.cert).validTo).getTime(),
          },
        );
  // Events recorded while sealed are signed with this server's own SVID key,
  // and verified against its SPIFFE ID and the trust bundle, as they are now.
  const auditLog = new AuditLog(auditStore, keys, new SvidSigner(() => certificates.material), logger, undefined, undefined, metrics?.audit);
  const signatureTrust = (): SignatureTrust => {
    const { cert, bundle } = certificates.material;
    return { serverId: inspectSvid(new X509Certificate(cert).raw).id.toString(), bundle };
  };
  cleanup.push(() => auditLog.checkpoint(true).catch((err) => logger.warn("final audit checkpoint not written", { err })));
  const engine = new PolicyEngine();
  const epochs = new GrantEpochs(keys);
  const policySync = new PolicySync(policyStore, engine, keys, epochs, logger);
  await policySync.start();
  cleanup.push(() => policySync.stop());
  const credentials = new AdminCredentials(credentialStore, keys, epochs);

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
      verifier: new AuditVerifier(auditStore, keys, auditLog, signatureTrust),
      epochs,
      grantStore: new GrantEpochStore(sql),
      policyStore,
      policySync,
    }),
    secretService({ keys, cipher: new SecretCipher(keys), store: secrets, maxSecretBytes: config.maxSecretBytes }),
    policyService({ store: policyStore, keys, sync: policySync, epochs }),
  ];

  cleanup.push(
    startMaintenance({
      secrets,
      credentials,
      auditLog,
      keys,
      auditRetention: new AuditRetention(auditStore, keys, auditLog, signatureTrust, logger),
      logger,
      cleanupIntervalMs: config.cleanupIntervalMs,
      auditRetentionMs: config.auditRetentionMs,
    }),
  );

  const listeners = await startListeners({
    config,
    logger,
    services,
    certificates,
    authenticator: new PeerAuthenticator({ trustDomains: [config.trustDomain] }),
    access: new AccessController(config.superuserId, engine, credentials, keys, () => policySync.loaded),
    auditLog,
    callObserver: metrics?.calls,
    cleanup,
  });
  // Serving means the database answers, this replica holds its keys and it
  // has loaded the policies it decides by.
  const monitor = new DatabaseMonitor(sql, () => updateHealth(), logger, deps.databaseCheckIntervalMs, (s) => metrics?.databasePinged(s));
  const updateHealth = () => listeners.health.set(monitor.isHealthy && policySync.loaded ? "SERVING" : "NOT_SERVING");
  keys.onSealChange((sealed) => (sealed ? updateHealth() : void policySync.ensureLoaded().then(updateHealth)));
  await monitor.check();
  monitor.start();
  cleanup.push(() => monitor.stop());
  updateHealth();

  if (config.auditExport !== undefined) {
    if (config.auditExport === "-") await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    const exporter = new AuditExporter(auditStore, exportTarget(config.auditExport, config.dataDir), logger);
    await exporter.start();
    cleanup.push(() => exporter.stop());
  }

  let metricsPort: number | undefined;
  if (metrics !== undefined && config.metricsListen !== undefined) {
    const metricsListener = await startMetricsListener(metrics, config.metricsListen, logger);
    cleanup.push(() => metricsListener.close());
    metricsPort = metricsListener.port;
  }

  return {
    certificates,
    listeners,
    metricsPort,
    policiesLoaded: () => policySync.ensureLoaded(),
    updateHealth,
  };
}
