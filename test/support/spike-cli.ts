// The `spike` command line as users run it: `node bin/spike.js …` in its own
// process, against a `nexus serve` child process on free ports with its own
// database and PKI. SVIDs are written as spiffe-helper writes them (svid.pem,
// svid_key.pem, svid_bundle.pem), one folder per identity.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../../src/store/embedded-postgres.js";
import { createTestDatabase } from "./test-database.js";
import { writePkiFiles, type IssuedCert } from "./test-pki.js";
import { createTestPki, TRUST_DOMAIN, type TestPki } from "./test-server.js";

export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const SPIKE_BIN = path.join(REPO, "bin/spike.js");
const NEXUS_BIN = path.join(REPO, "bin/nexus.js");

export interface SpikeRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface SpikeRunOptions {
  readonly env?: Record<string, string | undefined>;
  readonly input?: string;
}

/** The environment minus NEXUS_* and SPIKE_* settings of the machine running the tests. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NEXUS_") && !k.startsWith("SPIKE_") && k !== "XDG_RUNTIME_DIR" && k !== "SPIFFE_ENDPOINT_SOCKET"));
  return { ...env, ...extra };
}

/** Runs `node bin/spike.js args…`; resolves with the exit code and output whatever the code. */
export function runSpike(args: readonly string[], options: SpikeRunOptions = {}): Promise<SpikeRun> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [SPIKE_BIN, ...args], { cwd: REPO, env: cleanEnv(options.env), timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: number | string }).code : 0;
      if (typeof code !== "number") return reject(new Error(`spike ${args.join(" ")} did not exit normally: ${String(err)}\n${stderr}`));
      resolve({ code, stdout, stderr });
    });
    child.stdin!.end(options.input ?? "");
  });
}

/** A folder with an identity's svid.pem, svid_key.pem and svid_bundle.pem. */
export async function writeSvidDir(dir: string, svid: IssuedCert, bundlePem: string): Promise<string> {
  await writePkiFiles(dir, { "svid.pem": svid.certPem, "svid_key.pem": svid.keyPem, "svid_bundle.pem": bundlePem });
  return dir;
}

export interface ChildNexus {
  readonly pki: TestPki;
  readonly address: string;
  readonly databaseUrl: string;
  /** A scratch folder for the test (SVID folders, session folders, files). */
  readonly dir: string;
  readonly log: () => string;
  stop(): Promise<void>;
}

/** `nexus serve` in a child process, configured by NEXUS_* variables only, serving once it logs "nexus serving". */
export async function startChildNexus(): Promise<ChildNexus> {
  const pki = await createTestPki();
  const dir = await mkdtemp(path.join(tmpdir(), "spike-cli-"));
  const ports = { grpc: await freePort(), connect: await freePort(), health: await freePort() };
  const databaseUrl = await createTestDatabase("cli");
  const env = cleanEnv({
    NEXUS_LISTEN: `127.0.0.1:${ports.grpc}`,
    NEXUS_CONNECT_LISTEN: `127.0.0.1:${ports.connect}`,
    NEXUS_HEALTH_LISTEN: `127.0.0.1:${ports.health}`,
    NEXUS_TRUST_DOMAIN: TRUST_DOMAIN,
    NEXUS_TRUST_BUNDLE: pki.files.ca,
    NEXUS_TLS_CERT: pki.files.cert,
    NEXUS_TLS_KEY: pki.files.key,
    NEXUS_DATABASE_URL: databaseUrl,
    NEXUS_DB_POOL_MAX: "4",
    NEXUS_SHUTDOWN_GRACE: "1s",
    NEXUS_LOG_LEVEL: "info",
  });
  const nexus: ChildProcess = spawn(process.execPath, [NEXUS_BIN, "serve"], { cwd: REPO, env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  nexus.stderr!.setEncoding("utf8");
  nexus.stderr!.on("data", (chunk: string) => (stderr += chunk));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nexus did not log "nexus serving" within 30 s:\n${stderr}`)), 30_000);
    const onData = () => {
      if (stderr.includes('"msg":"nexus serving"')) {
        clearTimeout(timer);
        nexus.stderr!.off("data", onData);
        nexus.off("exit", onExit);
        resolve();
      }
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`nexus exited with ${code} before serving:\n${stderr}`));
    };
    nexus.stderr!.on("data", onData);
    nexus.once("exit", onExit);
  });
  return {
    pki,
    address: `127.0.0.1:${ports.grpc}`,
    databaseUrl,
    dir,
    log: () => stderr,
    async stop() {
      if (nexus.exitCode === null && nexus.signalCode === null) {
        nexus.kill("SIGTERM");
        await once(nexus, "exit");
      }
      await pki.remove();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
