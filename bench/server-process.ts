// The server under test is the real binary, `node bin/nexus.js serve`, in its
// own process and in production mode, configured only by NEXUS_* variables —
// so its CPU time and RSS can be read from /proc without the harness in them.
// Also: waiting for the plaintext health listener to answer or to say SERVING.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { HealthCheckRequestSchema, HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from "../gen/grpc/health/v1/health_pb.js";
import { freePort } from "../src/store/embedded-postgres.js";
import type { ProbeFile } from "./server-probe.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
export const NEXUS_BIN = path.join(REPO, "bin", "nexus.js");
const PROBE = pathToFileURL(fileURLToPath(new URL("./server-probe.js", import.meta.url))).href;

export interface ServerPorts {
  readonly grpc: number;
  readonly connect: number;
  readonly health: number;
}

export interface ServerOptions {
  readonly databaseUrl: string;
  readonly files: { readonly ca: string; readonly cert: string; readonly key: string };
  readonly dataDir: string;
  readonly poolMax: number;
  /** Unseal at start from this file (NEXUS_ADMIN_PASSWORD_FILE). */
  readonly adminPasswordFile?: string;
  /** Extra NODE_OPTIONS for the server only. */
  readonly nodeOptions?: string;
  /** Preload bench/server-probe.ts: memory samples to this file (and the profiler, if BENCH_PROFILE_DIR is in extraEnv). */
  readonly probeFile?: string;
  readonly extraEnv?: Record<string, string>;
}

export interface ServerProcess {
  readonly pid: number;
  readonly ports: ServerPorts;
  readonly address: string;
  /** performance.now() just before the process was spawned. */
  readonly spawnedAt: number;
  readonly process: ChildProcess;
  stderr(): string;
  /** SIGTERM, then waits for the exit (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<void>;
}

export async function spawnServer(opts: ServerOptions): Promise<ServerProcess> {
  const ports = await distinctFreePorts();
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NEXUS_") && k !== "NODE_OPTIONS"));
  Object.assign(env, {
    NEXUS_LISTEN: `127.0.0.1:${ports.grpc}`,
    NEXUS_CONNECT_LISTEN: `127.0.0.1:${ports.connect}`,
    NEXUS_HEALTH_LISTEN: `127.0.0.1:${ports.health}`,
    NEXUS_TRUST_DOMAIN: "spike.ist",
    NEXUS_TRUST_BUNDLE: opts.files.ca,
    NEXUS_TLS_CERT: opts.files.cert,
    NEXUS_TLS_KEY: opts.files.key,
    NEXUS_DATABASE_URL: opts.databaseUrl,
    NEXUS_DB_POOL_MAX: String(opts.poolMax),
    NEXUS_DATA_DIR: opts.dataDir,
    NEXUS_LOG_LEVEL: "warn",
    NEXUS_SHUTDOWN_GRACE: "2s",
    // The bench drives 64 calls in flight from one identity: no per-caller limit may shape what it measures.
    NEXUS_RATE_LIMIT_RPS: "0",
    ...(opts.adminPasswordFile ? { NEXUS_ADMIN_PASSWORD_FILE: opts.adminPasswordFile } : {}),
    ...opts.extraEnv,
  });
  const nodeOptions = [opts.probeFile || opts.extraEnv?.BENCH_PROFILE_DIR ? `--import ${PROBE}` : "", opts.nodeOptions ?? ""].filter(Boolean).join(" ");
  if (nodeOptions) env.NODE_OPTIONS = nodeOptions;
  if (opts.probeFile) env.BENCH_PROBE_FILE = opts.probeFile;
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, [NEXUS_BIN, "serve"], { cwd: REPO, env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    pid: child.pid!,
    ports,
    address: `127.0.0.1:${ports.grpc}`,
    spawnedAt,
    process: child,
    stderr: () => stderr,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

export type HealthWant = "answer" | "SERVING";

/**
 * Polls the plaintext health port until Health/Check answers at all ("answer":
 * the listener is up, sealed or not) or answers SERVING. Resolves with the
 * performance.now() of that answer.
 */
export async function waitForHealth(server: ServerProcess, want: HealthWant, timeoutMs = 60_000): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let client: grpc.Client | undefined;
  try {
    while (performance.now() < deadline) {
      if (server.process.exitCode !== null) throw new Error(`nexus exited (${server.process.exitCode}): ${server.stderr().slice(-2000)}`);
      if (client === undefined) {
        if (!(await portOpen(server.ports.health))) {
          await sleep(5);
          continue;
        }
        client = new grpc.Client(`127.0.0.1:${server.ports.health}`, grpc.credentials.createInsecure(), {
          "grpc.initial_reconnect_backoff_ms": 10,
          "grpc.max_reconnect_backoff_ms": 50,
        });
      }
      const status = await check(client);
      if (status !== undefined && (want === "answer" || status === HealthCheckResponse_ServingStatus.SERVING)) return performance.now();
      await sleep(want === "answer" ? 5 : 10);
    }
    throw new Error(`nexus health port ${server.ports.health}: no ${want} within ${timeoutMs} ms`);
  } finally {
    client?.close();
  }
}

function check(client: grpc.Client): Promise<HealthCheckResponse_ServingStatus | undefined> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (m: ReturnType<typeof create<typeof HealthCheckRequestSchema>>) => Buffer.from(toBinary(HealthCheckRequestSchema, m)),
      (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
      create(HealthCheckRequestSchema, { service: "" }),
      new grpc.Metadata(),
      { deadline: Date.now() + 2000 },
      (err, response) => resolve(err || !response ? undefined : response.status),
    );
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The latest memory sample the probe wrote, if any. */
export function readProbe(file: string | undefined): ProbeFile | undefined {
  if (file === undefined) return undefined;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as ProbeFile;
  } catch {
    return undefined;
  }
}

/** Three different free ports (a port just released can come back from the next bind to port 0). */
async function distinctFreePorts(): Promise<ServerPorts> {
  const picked = new Set<number>();
  while (picked.size < 3) picked.add(await freePort());
  const [grpc, connect, health] = [...picked];
  return { grpc, connect, health };
}

/**
 * Runs `attempt` (spawn a server and wait for it) again when the server lost
 * its port to another process between the harness picking it and the server
 * binding it (EADDRINUSE); ports are picked free, not reserved.
 */
export async function retryOnPortClash<T>(attempt: () => Promise<T>, tries = 3): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (err) {
      if (i >= tries || !/EADDRINUSE/.test((err as Error).message)) throw err;
    }
  }
}
