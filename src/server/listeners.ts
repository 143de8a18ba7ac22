// The listeners of a Nexus server: the mTLS gRPC port (services, health,
// reflection), the plaintext health-only port and the Connect/gRPC-Web port,
// all running the same call pipeline. Loaded by the composition root with a
// dynamic import, so that grpc-js, connect-node and reflection load while the
// database is reached and the keys are unsealed.

import * as grpc from "@grpc/grpc-js";
import type http2 from "node:http2";
import type { Socket } from "node:net";
import { file_spike_nexus_v1_operator } from "../../gen/spike/nexus/v1/operator_pb.js";
import { file_spike_nexus_v1_secret } from "../../gen/spike/nexus/v1/secret_pb.js";
import { file_spike_nexus_v1_policy } from "../../gen/spike/nexus/v1/policy_pb.js";
import { file_grpc_health_v1_health } from "../../gen/grpc/health/v1/health_pb.js";
import type { AuditLog } from "../audit/audit-log.js";
import type { AccessPolicy } from "../authorization/access-policy.js";
import type { ListenAddress, NexusConfig } from "../config/config.js";
import type { PeerAuthenticator } from "../identity/peer-authenticator.js";
import type { Logger } from "../log/logger.js";
import type { IdempotentWrites } from "../services/idempotency.js";
import type { ServiceRegistration } from "../calls/call-context.js";
import { CallPipeline, type CallObserver } from "../transport/call-pipeline.js";
import { secureContextOptions, type TlsMaterialSource } from "../transport/certificate-source.js";
import { createConnectServer } from "../transport/connect-server.js";
import { addServicesToGrpcServer, auditUnknownMethods, grpcServerOptions, listenGrpcTls } from "../transport/grpc-server.js";
import { HealthReporter } from "../transport/health.js";
import { listen } from "../transport/listen.js";
import type { RateLimits } from "../transport/rate-limits.js";
import { createReflectionService } from "../transport/reflection.js";

export interface ListenerDeps {
  readonly config: NexusConfig;
  readonly logger: Logger;
  readonly services: readonly ServiceRegistration[];
  readonly certificates: TlsMaterialSource;
  readonly authenticator: PeerAuthenticator;
  readonly access: AccessPolicy;
  readonly auditLog: AuditLog;
  /** Told of every call (metrics); none when metrics are off. */
  readonly callObserver?: CallObserver;
  /** Idempotency keys on writes (services/idempotency.ts); none, a key is refused. */
  readonly idempotency?: IdempotentWrites;
  /** The per-caller rate limits every call is checked against; none, no limit. */
  readonly rateLimits?: RateLimits;
  /** Where each listener registers how to take it down. */
  readonly cleanup: Array<() => Promise<void> | void>;
}

export interface Listeners {
  readonly grpcPort: number;
  readonly connectPort: number;
  readonly healthPort: number;
  readonly health: HealthReporter;
  /** Stops accepting and resolves once in-flight calls have finished. */
  drain(): Promise<void>;
}

export async function startListeners(deps: ListenerDeps): Promise<Listeners> {
  const { config, logger, services, certificates, cleanup } = deps;
  const pipeline = new CallPipeline(deps.authenticator, deps.access, deps.auditLog, logger, deps.callObserver, deps.idempotency, deps.rateLimits);
  const health = new HealthReporter(services.map((s) => s.desc.typeName));

  const grpcServer = new grpc.Server(grpcServerOptions(config));
  addServicesToGrpcServer(grpcServer, services, pipeline, config.maxMessageBytes);
  health.implementation.addToServer(grpcServer);
  createReflectionService([file_spike_nexus_v1_operator, file_spike_nexus_v1_secret, file_spike_nexus_v1_policy, file_grpc_health_v1_health]).addToServer(grpcServer);
  auditUnknownMethods(grpcServer, pipeline);
  const grpcListener = await listenGrpcTls(grpcServer, config.listen, certificates, logger);
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
  certificates.onChange((m) => connectServer.setSecureContext(secureContextOptions(m)));
  const connections = trackConnections(connectServer);
  const connectPort = await listen(connectServer, config.connectListen);
  cleanup.push(() => connections.destroyAll());

  const drain = async () => {
    await Promise.all([
      grpcListener.close(),
      new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve())),
      new Promise<void>((resolve) => healthServer.tryShutdown(() => resolve())),
      new Promise<void>((resolve) => {
        connectServer.close(() => resolve());
        connections.closeGracefully();
      }),
    ]);
  };
  return { grpcPort: grpcListener.port, connectPort, healthPort, health, drain };
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
