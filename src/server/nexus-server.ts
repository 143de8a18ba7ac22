// The composition root: the one place that builds the object graph (identity,
// authorization, services, stores, transports) from a configuration, starts the
// listeners, and takes everything down again in order. Tests build servers
// through here too, each with its own configuration and database.

import * as grpc from "@grpc/grpc-js";
import type http2 from "node:http2";
import type { Socket } from "node:net";
import { file_spike_nexus_v1_operator } from "../../gen/spike/nexus/v1/operator_pb.js";
import { file_spike_nexus_v1_secret } from "../../gen/spike/nexus/v1/secret_pb.js";
import { file_spike_nexus_v1_policy } from "../../gen/spike/nexus/v1/policy_pb.js";
import { file_grpc_health_v1_health } from "../../gen/grpc/health/v1/health_pb.js";
import { AuditLog } from "../audit/audit-log.js";
import { AuditVerifier } from "../audit/audit-verifier.js";
import { AccessController } from "../authorization/access-policy.js";
import { AdminCredentials } from "../authorization/admin-credentials.js";
import { PasswordAttempts } from "../authorization/password-attempts.js";
import { PolicyEngine } from "../authorization/policy-engine.js";
import { PolicySync } from "../authorization/policy-sync.js";
import type { ListenAddress, NexusConfig } from "../config/config.js";
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
import { CallPipeline } from "../transport/call-pipeline.js";
import { CertificateSource } from "../transport/certificate-source.js";
import { createConnectServer } from "../transport/connect-server.js";
import { addServicesToGrpcServer, grpcServerOptions, listenGrpcTls } from "../transport/grpc-server.js";
import { HealthReporter } from "../transport/health.js";
import { listen } from "../transport/listen.js";
import { createReflectionService } from "../transport/reflection.js";

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
    const pipeline = new CallPipeline(
      new PeerAuthenticator({ trustDomains: [config.trustDomain] }),
      new AccessController(config.superuserId, engine, credentials, keys),
      auditLog,
      logger,
    );

    const health = new HealthReporter(services.map((s) => s.desc.typeName));
    // Serving means the database answers and this replica holds its keys.
    const updateHealth = () => health.set(monitor.isHealthy && !keys.sealed ? "SERVING" : "NOT_SERVING");
    const monitor = new DatabaseMonitor(sql, updateHealth, logger, options.databaseCheckIntervalMs);
    keys.onSealChange(updateHealth);
    await monitor.check();
    monitor.start();
    cleanup.push(() => monitor.stop());
    await unsealAtStart(config, keys, rootKeys, logger);

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

    const grpcServer = new grpc.Server(grpcServerOptions(config));
    addServicesToGrpcServer(grpcServer, services, pipeline);
    health.implementation.addToServer(grpcServer);
    createReflectionService([file_spike_nexus_v1_operator, file_spike_nexus_v1_secret, file_spike_nexus_v1_policy, file_grpc_health_v1_health]).addToServer(grpcServer);
    const grpcListener = await listenGrpcTls(grpcServer, config.listen, certificates, logger);
    const grpcPort = grpcListener.port;
    cleanup.push(() => grpcServer.forceShutdown());
    cleanup.push(() => grpcListener.close());

    const healthServer = new grpc.Server(grpcServerOptions(config));
    health.implementation.addToServer(healthServer);
    const healthPort = await bind(healthServer, config.healthListen, grpc.ServerCredentials.createInsecure());
    cleanup.push(() => healthServer.forceShutdown());

    const connectServer = createConnectServer({
      services,
      pipeline,
      tls: certificates.material,
      maxMessageBytes: config.maxMessageBytes,
      maxConcurrentStreams: config.maxConcurrentStreams,
      logger,
    });
    certificates.onChange((m) => connectServer.setSecureContext({ cert: m.cert, key: m.key, ca: m.ca }));
    const connections = trackConnections(connectServer);
    const connectPort = await listen(connectServer, config.connectListen);
    cleanup.push(() => connections.destroyAll());

    logger.info("nexus serving", { grpcPort, connectPort, healthPort, trustDomain: config.trustDomain, mode: config.mode });

    let stopping: Promise<void> | undefined;
    const shutdown = () =>
      (stopping ??= (async () => {
        logger.info("shutting down", { graceMs: config.shutdownGraceMs });
        health.set("NOT_SERVING");
        const drained = Promise.all([
          grpcListener.close(),
          new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve())),
          new Promise<void>((resolve) => healthServer.tryShutdown(() => resolve())),
          new Promise<void>((resolve) => {
            connectServer.close(() => resolve());
            connections.closeGracefully();
          }),
        ]);
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

function bind(server: grpc.Server, address: ListenAddress, credentials: grpc.ServerCredentials): Promise<number> {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return new Promise((resolve, reject) =>
    server.bindAsync(`${host}:${address.port}`, credentials, (err, port) => (err ? reject(err) : resolve(port))),
  );
}

// http2 servers keep sessions (and HTTP/1.1 keep-alive sockets) open after
// close(); shutdown asks sessions to finish (GOAWAY) and later destroys the rest.
function trackConnections(server: http2.Http2SecureServer) {
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<Socket>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  server.on("secureConnection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  return {
    closeGracefully: () => sessions.forEach((s) => s.close()),
    destroyAll: () => {
      sessions.forEach((s) => s.destroy());
      sockets.forEach((s) => s.destroy());
    },
  };
}

