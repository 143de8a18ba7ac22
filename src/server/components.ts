// Everything a server runs once its database and keys exist: certificates,
// stores, audit, authorization, services, maintenance, listeners, the
// database monitor, and the optional metrics listener and audit export.
// nexus-server.ts loads this module only after unsealing has started, so its
// ~0.5 s of module loading and set-up on the main thread overlaps the scrypt
// of the password file on libuv's thread pool.

import { randomUUID, X509Certificate } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { ReplicaService } from "../../gen/spike/nexus/v1/replica_pb.js";
import { AuditExporter, exportTarget } from "../audit/audit-export.js";
import { AuditLog, type CallRecord } from "../audit/audit-log.js";
import { AuditRetention } from "../audit/audit-retention.js";
import { AuditVerifier } from "../audit/audit-verifier.js";
import type { SignatureTrust } from "../audit/event-authenticator.js";
import { AccessController } from "../authorization/access-policy.js";
import { AdminCredentials } from "../authorization/admin-credentials.js";
import { GrantEpochFollower, GrantEpochs } from "../keys/grant-epochs.js";
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
import { DEFAULT_ROTATION_OPTIONS, grantSetParticipants, KeyRotation, SCHEDULE_CHECK_MS } from "../services/key-rotation.js";
import { operatorService } from "../services/operator-service.js";
import { policyService } from "../services/policy-service.js";
import { replicaService } from "../services/replica-service.js";
import { PeerUnsealStore } from "../store/peer-unseal-store.js";
import { dialAddress, PeerUnseal } from "./peer-unseal.js";
import { LabelFreshness } from "../services/secret-labels.js";
import { SecretRotator } from "../services/secret-rotation.js";
import { secretService } from "../services/secret-service.js";
import { WATCH_BUFFER_LIMIT, WATCH_HEARTBEAT_MS } from "../services/secret-watch.js";
import { SecretEventStore } from "../store/secret-event-store.js";
import { WatchHub } from "../watch/watch-hub.js";
import { AuditStore } from "../store/audit-store.js";
import { CredentialStore } from "../store/credential-store.js";
import type { Sql } from "../store/database.js";
import { DatabaseMonitor } from "../store/database-monitor.js";
import { poolActivity, poolWaiting } from "../store/pool-activity.js";
import { GrantEpochStore } from "../store/grant-epoch-store.js";
import { KeyRotationStore } from "../store/key-rotation-store.js";
import { PolicyStore } from "../store/policy-store.js";
import type { RootKeyStore } from "../store/root-key-store.js";
import { SecretStore } from "../store/secret-store.js";
import { CertificateSource, type TlsMaterialSource } from "../transport/certificate-source.js";
import { WorkloadApiCertificateSource } from "../transport/workload-api-certificate-source.js";
import { WorkloadApiSource } from "../workload-api/workload-api-source.js";
import { IdempotentWrites } from "../services/idempotency.js";
import { IdempotencyStore } from "../store/idempotency-store.js";
import { RateLimitUsageStore } from "../store/rate-limit-usage-store.js";
import { RateLimits } from "../transport/rate-limits.js";
import { startListeners, type Listeners } from "./listeners.js";
import { startMaintenance } from "./maintenance.js";
import { RateLimitSync } from "./rate-limit-sync.js";

/** How often a replica looks for due rotations: well inside the 30 s the scheduler promises. */
const ROTATION_CHECK_INTERVAL_MS = 5_000;

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
  /** How often this replica checks whether a scheduled key rotation is due (tests shorten it). */
  readonly keyRotationCheckMs?: number;
  readonly watchHeartbeatMs?: number;
  readonly watchBufferLimit?: number;
  /** Teardown steps, run in reverse order. */
  readonly cleanup: Array<() => Promise<void> | void>;
}

export interface Components {
  readonly certificates: TlsMaterialSource;
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
  const certificates = await serverIdentity(config, logger, deps.certificateDebounceMs);
  cleanup.push(() => certificates.close());

  const secrets = new SecretStore(sql);
  const policyStore = new PolicyStore(sql);
  const credentialStore = new CredentialStore(sql);
  const auditStore = new AuditStore(sql);
  const epochs = new GrantEpochs(keys);
  // Built only when someone scrapes it: off, nothing observes a call.
  const metrics: NexusMetrics | undefined =
    config.metricsListen === undefined
      ? undefined
      : new NexusMetrics(
          [OperatorService, SecretService, PolicyService, ReplicaService].flatMap((s) => s.methods.map((m) => `/${s.typeName}/${m.name}`)),
          {
            sealed: () => keys.sealed,
            keyringKeys: () => keys.keyringSize,
            activeKeyringKeyId: () => keys.activeKeyringKeyId,
            databaseUp: () => monitor.isHealthy,
            databasePoolMax: config.dbPoolMax,
            databasePool: deps.databaseApplicationName === undefined ? undefined : () => poolActivity(sql, deps.databaseApplicationName!),
            databasePoolWaiting: () => poolWaiting(sql),
            auditEventsWaiting: (): number => auditLog.eventsWaiting,
            svidNotAfterMs: () => new Date(new X509Certificate(certificates.material.cert).validTo).getTime(),
            watchStreamsOpen: () => watchHub.size,
            keyRotationRemaining: () => rotation.remainingKeys,
          },
        );
  // Events recorded while sealed are signed with this server's own SVID key,
  // and verified against its SPIFFE ID and the trust bundle, as they are now.
  const auditLog = new AuditLog(auditStore, keys, new SvidSigner(() => certificates.material), logger, epochs, undefined, undefined, metrics?.audit, relaxedAuditMethods(config));
  if (config.auditReadDurability === "relaxed") {
    logger.warn("NEXUS_AUDIT_READ_DURABILITY=relaxed: audit events of reads commit without waiting for the WAL flush; a PostgreSQL crash can lose the last ones (docs/threat-model.md)");
  }
  const signatureTrust = (): SignatureTrust => {
    const { cert, bundle } = certificates.material;
    return { serverId: inspectSvid(new X509Certificate(cert).raw).id.toString(), bundle };
  };
  cleanup.push(() => auditLog.checkpoint(true).catch((err) => logger.warn("final audit checkpoint not written", { err })));
  const engine = new PolicyEngine();
  const grantStore = new GrantEpochStore(sql);
  const epochFollower = new GrantEpochFollower(grantStore, epochs, keys, logger);
  await epochFollower.start();
  cleanup.push(() => epochFollower.stop());
  const policySync = new PolicySync(policyStore, engine, keys, epochs, logger);
  await policySync.start();
  cleanup.push(() => policySync.stop());
  const credentials = new AdminCredentials(credentialStore, keys, epochs);
  const cipher = new SecretCipher(keys);
  const rotation = new KeyRotation(new KeyRotationStore(sql), keys, cipher, grantSetParticipants(epochs, policyStore, credentialStore, auditStore), auditLog.replicaId, logger, {
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

  const freshness = new LabelFreshness();
  // WatchSecrets: one LISTEN and poller for every stream of this replica; a seal ends them all.
  const secretEvents = new SecretEventStore(sql);
  const watchHub = new WatchHub({ store: secretEvents, logger, retentionMs: config.watchRetentionMs });
  await watchHub.start();
  cleanup.push(() => watchHub.stop());
  keys.onSealChange((sealed) => sealed && watchHub.endAll(keys.sealedError()));
  const peerUnseal = new PeerUnseal({
    serverId: config.serverId,
    enabled: config.peerUnseal,
    advertiseAddress: config.advertiseAddress === undefined ? undefined : dialAddress(config.advertiseAddress),
    instanceId: auditLog.replicaId,
    keys,
    store: new PeerUnsealStore(sql),
    certificates,
    auditLog,
    logger,
  });
  const rotator = new SecretRotator({ keys, cipher, store: secrets, freshness, logger, maxSecretBytes: config.maxSecretBytes });
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
      verifier: new AuditVerifier(auditStore, keys, auditLog, signatureTrust, epochs),
      epochs,
      grantStore,
      policyStore,
      policySync,
      rotation,
      rootKeys,
      rotationStore: new KeyRotationStore(sql),
      sealing: peerUnseal,
    }),
    secretService({
      keys, cipher, store: secrets, maxSecretBytes: config.maxSecretBytes, freshness, rotator, logger,
      watch: {
        hub: watchHub, keys, maxLifetimeMs: config.watchMaxLifetimeMs,
        heartbeatMs: deps.watchHeartbeatMs ?? WATCH_HEARTBEAT_MS, bufferLimit: deps.watchBufferLimit ?? WATCH_BUFFER_LIMIT,
      },
    }),
    policyService({ store: policyStore, keys, sync: policySync, epochs }),
    replicaService(peerUnseal),
  ];

  const idempotency = new IdempotentWrites({ store: new IdempotencyStore(sql), keys, logger });

  cleanup.push(
    startMaintenance({
      secrets,
      credentials,
      auditLog,
      keys,
      auditRetention: new AuditRetention(auditStore, keys, auditLog, signatureTrust, logger, epochs),
      logger,
      cleanupIntervalMs: config.cleanupIntervalMs,
      auditRetentionMs: config.auditRetentionMs,
      watchEvents: { store: secretEvents, retentionMs: config.watchRetentionMs },
      rotation: { store: secrets, rotator, auditLog, keys, logger, intervalMs: ROTATION_CHECK_INTERVAL_MS },
      idempotency,
    }),
  );

  // Per-caller limits, shared with the other replicas through the database every sync interval.
  const { syncIntervalMs } = config.rateLimits;
  const sharing = syncIntervalMs > 0 && (config.rateLimits.calls.perSecond > 0 || config.rateLimits.authFailures.perSecond > 0);
  const rateLimits = new RateLimits({ ...config.rateLimits, shareUsage: sharing }, metrics?.rateLimits);
  if (sharing) {
    const sync = new RateLimitSync({ limits: rateLimits, store: new RateLimitUsageStore(sql), instanceId: auditLog.replicaId, intervalMs: syncIntervalMs, logger });
    sync.start();
    cleanup.push(() => sync.stop());
  }

  const listeners = await startListeners({
    config,
    logger,
    services,
    certificates,
    authenticator: new PeerAuthenticator({ trustDomains: [config.trustDomain] }),
    access: new AccessController(config.superuserId, engine, credentials, keys, () => policySync.loaded, config.serverId),
    auditLog,
    callObserver: metrics?.calls,
    rateLimits,
    idempotency,
    cleanup,
  });
  // Serving means the database answers, this replica holds its keys and it
  // has loaded the policies it decides by.
  const monitor = new DatabaseMonitor(sql, () => updateHealth(), logger, deps.databaseCheckIntervalMs, undefined, (s) => metrics?.databasePinged(s));
  // An expired SVID is refused by every client, so the replica is not serving
  // even though its process is fine (the Workload API stream may be failing).
  const svidExpiry = new SvidExpiry(certificates, () => updateHealth());
  cleanup.push(() => svidExpiry.stop());
  const updateHealth = () => listeners.health.set(monitor.isHealthy && policySync.loaded && !svidExpiry.expired ? "SERVING" : "NOT_SERVING");
  keys.onSealChange((sealed) => (sealed ? updateHealth() : void policySync.ensureLoaded().then(updateHealth)));
  // After the listeners: the advert names a port that answers.
  await peerUnseal.start();
  cleanup.push(() => peerUnseal.stop());
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

/** This server's SVID: from the Workload API when a socket is configured, otherwise from the files. */
async function serverIdentity(config: NexusConfig, logger: Logger, debounceMs: number | undefined): Promise<TlsMaterialSource> {
  if (config.spiffeEndpointSocket !== undefined) {
    const source = await WorkloadApiSource.start(config.spiffeEndpointSocket, { spiffeId: config.spiffeId, logger });
    try {
      return new WorkloadApiCertificateSource(source, config.trustDomain, logger);
    } catch (err) {
      source.close();
      throw err;
    }
  }
  const files = new CertificateSource(
    { certFile: config.certFile!, keyFile: config.keyFile!, bundleFile: config.trustBundleFile! },
    config.trustDomain,
    logger,
    debounceMs,
  );
  files.watch();
  return files;
}

/** Tracks when the SVID in use expires and calls back at that moment (and whenever a new one arrives). */
class SvidExpiry {
  private timer: NodeJS.Timeout | undefined;
  private notAfterMs = 0;

  constructor(
    certificates: TlsMaterialSource,
    private readonly changed: () => void,
  ) {
    this.track(certificates.material.cert);
    // A new SVID matters to health only when it ends an expiry.
    certificates.onChange((m) => {
      const wasExpired = this.expired;
      this.track(m.cert);
      if (wasExpired) this.changed();
    });
  }

  get expired(): boolean {
    return Date.now() >= this.notAfterMs;
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private track(cert: Buffer): void {
    this.notAfterMs = Date.parse(new X509Certificate(cert).validTo);
    this.arm();
  }

  private arm(): void {
    clearTimeout(this.timer);
    if (this.expired) return;
    // setTimeout holds at most ~24.8 days: a longer wait is taken in steps.
    const delay = Math.min(this.notAfterMs - Date.now() + 1, 2 ** 31 - 1);
    this.timer = setTimeout(() => {
      this.arm();
      if (this.expired) this.changed();
    }, delay);
    this.timer.unref();
  }
}

/**
 * NEXUS_AUDIT_READ_DURABILITY=relaxed: the methods whose audit events may
 * commit without waiting for the WAL flush — those the API declares free of
 * side effects (idempotency_level = NO_SIDE_EFFECTS in proto/: GetSecret,
 * ListSecrets, GetSecretMetadata, GetPolicy, ListPolicies, GetStatus, …).
 * A method added without that option stays durable. Durable: none.
 */
export function relaxedAuditMethods(config: Pick<NexusConfig, "auditReadDurability">): ReadonlySet<string> {
  if (config.auditReadDurability !== "relaxed") return new Set();
  return new Set(
    [OperatorService, SecretService, PolicyService, ReplicaService].flatMap((s) =>
      s.methods.filter((m) => m.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS).map((m) => `/${s.typeName}/${m.name}`),
    ),
  );
}
