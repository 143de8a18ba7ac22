// Everything a server runs once its database and keys exist: certificates,
// stores, audit, authorization, services, maintenance, listeners and the
// database monitor. nexus-server.ts loads this module only after unsealing
// has started, so its ~0.5 s of module loading and set-up on the main thread
// overlaps the scrypt of the password file on libuv's thread pool.

import { X509Certificate } from "node:crypto";
import { randomUUID } from "node:crypto";
import { AuditLog, type CallRecord } from "../audit/audit-log.js";
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
import { DEFAULT_ROTATION_OPTIONS, grantSetParticipants, KeyRotation, SCHEDULE_CHECK_MS } from "../services/key-rotation.js";
import { operatorService } from "../services/operator-service.js";
import { policyService } from "../services/policy-service.js";
import { secretService } from "../services/secret-service.js";
import { AuditStore } from "../store/audit-store.js";
import { CredentialStore } from "../store/credential-store.js";
import type { Sql } from "../store/database.js";
import { DatabaseMonitor } from "../store/database-monitor.js";
import { GrantEpochStore } from "../store/grant-epoch-store.js";
import { KeyRotationStore } from "../store/key-rotation-store.js";
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
  readonly rootKeys: RootKeyStore;
  readonly keys: KeyManager;
  readonly databaseCheckIntervalMs?: number;
  readonly certificateDebounceMs?: number;
  /** How often this replica checks whether a scheduled key rotation is due (tests shorten it). */
  readonly keyRotationCheckMs?: number;
  /** Teardown steps, run in reverse order. */
  readonly cleanup: Array<() => Promise<void> | void>;
}

export interface Components {
  readonly certificates: CertificateSource;
  readonly listeners: Listeners;
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
  // Events recorded while sealed are signed with this server's own SVID key,
  // and verified against its SPIFFE ID and the trust bundle, as they are now.
  const auditLog = new AuditLog(auditStore, keys, new SvidSigner(() => certificates.material), logger);
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
  const cipher = new SecretCipher(keys);
  const rotation = new KeyRotation(new KeyRotationStore(sql), keys, cipher, grantSetParticipants(epochs, policyStore, credentialStore), auditLog.replicaId, logger, {
    ...DEFAULT_ROTATION_OPTIONS,
    batchSize: config.keyRotationBatch,
    pauseMs: config.keyRotationPauseMs,
  });
  // Keys another replica creates (a rotation) are taken up within a moment;
  // a rotation left unfinished (a crash) is resumed after an unseal, or when
  // its driver's lease runs out.
  const keyringListener = await rootKeys.listen(() => void keys.refreshKeyring().catch((err) => logger.warn("keyring refresh failed", { err })));
  cleanup.push(() => keyringListener.unlisten().catch(() => {}));
  keys.onSealChange((sealed) => sealed || rotation.resume());
  if (!keys.sealed) rotation.resume();
  const rotationCheck = setInterval(() => rotation.resume(), 5000);
  rotationCheck.unref();
  // The schedule: every replica checks, the database lets one start it.
  const schedule = { intervalMs: config.keyRotationIntervalMs, maxEncryptions: config.keyRotationMaxEncryptions };
  const scheduleCheck = setInterval(() => void scheduledRotation(), deps.keyRotationCheckMs ?? SCHEDULE_CHECK_MS);
  scheduleCheck.unref();
  const scheduledRotation = async () => {
    let record: CallRecord | undefined;
    try {
      const started = await rotation.startIfDue(schedule, () => {
        record = auditLog.begin({ requestId: randomUUID(), rpc: "/spike.nexus.v1.OperatorService/RotateEncryptionKey", time: new Date() });
        record.identify("schedule");
        return record.prepare({ scheduled: true, ...schedule });
      });
      if (started) record?.markWritten();
      else if (record !== undefined) await record.finish("error", "ABORTED");
    } catch (err) {
      logger.warn("scheduled key rotation check failed", { err });
      if (record !== undefined && !record.isWritten) await record.finish("error", "INTERNAL").catch(() => {});
    }
  };
  cleanup.push(async () => {
    clearInterval(rotationCheck);
    clearInterval(scheduleCheck);
    await rotation.stop();
  });

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
      rotation,
      rootKeys,
      rotationStore: new KeyRotationStore(sql),
    }),
    secretService({ keys, cipher, store: secrets, maxSecretBytes: config.maxSecretBytes }),
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
    cleanup,
  });
  // Serving means the database answers, this replica holds its keys and it
  // has loaded the policies it decides by.
  const monitor = new DatabaseMonitor(sql, () => updateHealth(), logger, deps.databaseCheckIntervalMs);
  const updateHealth = () => listeners.health.set(monitor.isHealthy && policySync.loaded ? "SERVING" : "NOT_SERVING");
  keys.onSealChange((sealed) => (sealed ? updateHealth() : void policySync.ensureLoaded().then(updateHealth)));
  await monitor.check();
  monitor.start();
  cleanup.push(() => monitor.stop());
  updateHealth();

  return {
    certificates,
    listeners,
    policiesLoaded: () => policySync.ensureLoaded(),
    updateHealth,
  };
}
