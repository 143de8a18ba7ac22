// A Nexus replica as production runs it: the real `nexus serve` binary in a
// child process on free loopback ports, configured only by NEXUS_* variables,
// with mTLS clients for any SVID and a plaintext health client. The HA suites
// start several on one database (or one on a multi-host URL).

import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { grpcNexusClient, type NexusClient } from "../../src/client/nexus-client.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { healthClient, insecureCredentials, type HealthClient } from "./health-client.js";
import { cleanEnv, startNexusProcess, type NexusProcess } from "./nexus-process.js";
import { ok } from "./secret-server.js";
import type { IssuedCert } from "./test-pki.js";
import { NEXUS_ID, TRUST_DOMAIN, type TestPki } from "./test-server.js";

export interface NexusReplica {
  readonly name: string;
  readonly process: NexusProcess;
  readonly grpcPort: number;
  readonly healthPort: number;
  /** A grpc-js client on this replica (superuser SVID unless another is given); closed by stop(). */
  client(cert?: IssuedCert): NexusClient;
  readonly health: HealthClient;
  /** SIGTERM and wait; closes the clients. */
  stop(): Promise<void>;
}

export interface ReplicaOptions {
  readonly name: string;
  readonly pki: TestPki;
  readonly databaseUrl: string;
  readonly env?: Record<string, string>;
}

/** Starts `nexus serve` and resolves once it logs "nexus serving". */
export async function startReplica(opts: ReplicaOptions): Promise<NexusReplica> {
  const ports = { grpc: await freePort(), connect: await freePort(), health: await freePort() };
  const child = startNexusProcess(
    ["serve"],
    cleanEnv({
      NEXUS_LISTEN: `127.0.0.1:${ports.grpc}`,
      NEXUS_CONNECT_LISTEN: `127.0.0.1:${ports.connect}`,
      NEXUS_HEALTH_LISTEN: `127.0.0.1:${ports.health}`,
      NEXUS_TRUST_DOMAIN: TRUST_DOMAIN,
      NEXUS_TRUST_BUNDLE: opts.pki.files.ca,
      NEXUS_TLS_CERT: opts.pki.files.cert,
      NEXUS_TLS_KEY: opts.pki.files.key,
      NEXUS_DATABASE_URL: opts.databaseUrl,
      NEXUS_DB_POOL_MAX: "4",
      NEXUS_SHUTDOWN_GRACE: "2s",
      NEXUS_LOG_LEVEL: "info",
      ...opts.env,
    }),
  );
  try {
    await child.waitForLog("nexus serving");
  } catch (err) {
    await child.kill();
    throw err;
  }
  const clients: NexusClient[] = [];
  const health = healthClient(`127.0.0.1:${ports.health}`, insecureCredentials());
  return {
    name: opts.name,
    process: child,
    grpcPort: ports.grpc,
    healthPort: ports.health,
    client(cert = opts.pki.superuser) {
      const c = grpcNexusClient(`127.0.0.1:${ports.grpc}`, { cert: cert.certPem, key: cert.keyPem, ca: opts.pki.ca.certPem, serverId: NEXUS_ID });
      clients.push(c);
      return c;
    },
    health,
    async stop() {
      clients.forEach((c) => c.close());
      health.close();
      await child.stop();
    },
  };
}

/** Unseals a replica with the admin password (Initialize must have run on some replica). */
export async function unsealReplica(replica: NexusReplica, password: string): Promise<void> {
  ok(await replica.client().call(OperatorService.method.unseal, { adminPassword: password }, { deadlineMs: 20_000 }), `Unseal ${replica.name}`);
}
