// Builds a Nexus server for a test: its own PKI (EC P-256 by default, as SPIRE
// issues), its own database, listeners on free loopback ports, and clients for
// the superuser, a workload, or any certificate a test makes.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { loadConfig, type NexusConfig } from "../../src/config/config.js";
import { connectNexusClient, grpcNexusClient, type NexusClient } from "../../src/client/nexus-client.js";
import { createLogger, silentLogger, type Logger } from "../../src/log/logger.js";
import { startNexus, type RunningNexus, type StartOptions } from "../../src/server/nexus-server.js";
import { createAuthority, writePkiFiles, type Authority, type IssuedCert, type KeyAlg } from "./test-pki.js";
import { createTestDatabase } from "./test-database.js";

export const TRUST_DOMAIN = "spike.ist";
export const NEXUS_ID = `spiffe://${TRUST_DOMAIN}/spike/nexus`;
export const SUPERUSER_ID = `spiffe://${TRUST_DOMAIN}/spike/pilot/role/superuser`;
export const WORKLOAD_ID = `spiffe://${TRUST_DOMAIN}/workload/demo`;

export interface TestPki {
  readonly dir: string;
  readonly ca: Authority;
  readonly nexus: IssuedCert;
  readonly superuser: IssuedCert;
  readonly workload: IssuedCert;
  readonly files: { readonly ca: string; readonly cert: string; readonly key: string };
  remove(): Promise<void>;
}

export async function createTestPki(alg: KeyAlg = "ec"): Promise<TestPki> {
  const dir = await mkdtemp(path.join(tmpdir(), "nexus-test-pki-"));
  const ca = await createAuthority({ alg, trustDomain: TRUST_DOMAIN });
  const nexus = await ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"], alg });
  const superuser = await ca.issue({ uris: [SUPERUSER_ID], alg });
  const workload = await ca.issue({ uris: [WORKLOAD_ID], alg });
  const files = { ca: path.join(dir, "ca.pem"), cert: path.join(dir, "svid.pem"), key: path.join(dir, "svid_key.pem") };
  await writePkiFiles(dir, { "ca.pem": ca.certPem, "svid.pem": nexus.certPem, "svid_key.pem": nexus.keyPem });
  return { dir, ca, nexus, superuser, workload, files, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface TestServer {
  readonly nexus: RunningNexus;
  readonly config: NexusConfig;
  readonly pki: TestPki;
  /** A client on one listener ("grpc" = grpc-js on the gRPC port, "connect" = Connect JSON on the Connect port). */
  client(listener: Listener, cert?: IssuedCert, serverId?: string): NexusClient;
  stop(): Promise<void>;
}

export type Listener = "grpc" | "connect";
export const LISTENERS: readonly Listener[] = ["grpc", "connect"];

export interface TestServerOptions {
  readonly pki?: TestPki;
  readonly databaseUrl?: string;
  readonly env?: Record<string, string>;
  readonly start?: StartOptions;
  readonly logger?: Logger;
}

export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const pki = opts.pki ?? (await createTestPki());
  const databaseUrl = opts.databaseUrl ?? (await createTestDatabase());
  const config = loadConfig("serve", [], {
    NEXUS_LISTEN: "127.0.0.1:0",
    NEXUS_CONNECT_LISTEN: "127.0.0.1:0",
    NEXUS_HEALTH_LISTEN: "127.0.0.1:0",
    NEXUS_TRUST_DOMAIN: TRUST_DOMAIN,
    NEXUS_TRUST_BUNDLE: pki.files.ca,
    NEXUS_TLS_CERT: pki.files.cert,
    NEXUS_TLS_KEY: pki.files.key,
    NEXUS_DATABASE_URL: databaseUrl,
    NEXUS_DB_POOL_MAX: "4",
    NEXUS_SHUTDOWN_GRACE: "2s",
    NEXUS_LOG_LEVEL: process.env.NEXUS_TEST_LOG_LEVEL ?? "error",
    ...opts.env,
  });
  const logger = opts.logger ?? (process.env.NEXUS_TEST_LOG_LEVEL ? createLogger(config.logLevel) : silentLogger);
  const nexus = await startNexus(config, logger, { databaseCheckIntervalMs: 200, certificateDebounceMs: 100, ...opts.start });
  const clients: NexusClient[] = [];
  return {
    nexus,
    config,
    pki,
    client(listener, cert = pki.superuser, serverId = NEXUS_ID) {
      const identity = { cert: cert.certPem, key: cert.keyPem, ca: pki.ca.certPem, serverId };
      const c =
        listener === "grpc"
          ? grpcNexusClient(`127.0.0.1:${nexus.grpcPort}`, identity)
          : connectNexusClient(`https://127.0.0.1:${nexus.connectPort}`, identity);
      clients.push(c);
      return c;
    },
    async stop() {
      clients.forEach((c) => c.close());
      await nexus.shutdown();
      if (!opts.pki) await pki.remove();
    },
  };
}
