// End to end: the real `nexus` binary in its own process, configured only by
// NEXUS_* variables, called the ways the README shows: @grpc/grpc-js and
// `buf curl` (server reflection, no proto files) on both mTLS ports, curl on the
// Connect port, and gRPC health on the plaintext port. SIGTERM stops it cleanly.

import { expect } from "chai";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { grpcNexusClient } from "../../src/client/nexus-client.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { createTestDatabase } from "../support/test-database.js";
import { writePkiFiles } from "../support/test-pki.js";
import { createTestPki, NEXUS_ID, SUPERUSER_ID, TRUST_DOMAIN, type TestPki } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

const run = promisify(execFile);
const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const NEXUS_BIN = path.join(REPO, "bin/nexus.js");
const BUF = path.join(REPO, "node_modules/.bin/buf");
const COMMAND_TIMEOUT_MS = 30_000;

/** The environment minus any NEXUS_* setting of the machine running the tests. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NEXUS_")));
  return { ...env, ...extra };
}

/** Runs a command that is expected to fail; resolves with its exit code and output. */
async function runFailing(file: string, args: string[], env: NodeJS.ProcessEnv) {
  try {
    const { stdout, stderr } = await run(file, args, { cwd: REPO, env, timeout: COMMAND_TIMEOUT_MS });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** The JSON log lines a process has written to stderr so far. */
function logEntries(stderr: string): Array<Record<string, unknown>> {
  return stderr
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe("the nexus binary, end to end", function () {
  this.timeout(60_000);
  let pki: TestPki;
  let files: { ca: string; pilot: string; pilotKey: string };
  let env: NodeJS.ProcessEnv;
  let ports: { grpc: number; connect: number; health: number };
  let nexus: ChildProcess;
  let stderr = "";

  before(async () => {
    pki = await createTestPki("rsa");
    await writePkiFiles(pki.dir, { "pilot.pem": pki.superuser.certPem, "pilot-key.pem": pki.superuser.keyPem });
    files = { ca: pki.files.ca, pilot: path.join(pki.dir, "pilot.pem"), pilotKey: path.join(pki.dir, "pilot-key.pem") };
    ports = { grpc: await freePort(), connect: await freePort(), health: await freePort() };
    env = cleanEnv({
      NEXUS_LISTEN: `127.0.0.1:${ports.grpc}`,
      NEXUS_CONNECT_LISTEN: `127.0.0.1:${ports.connect}`,
      NEXUS_HEALTH_LISTEN: `127.0.0.1:${ports.health}`,
      NEXUS_TRUST_DOMAIN: TRUST_DOMAIN,
      NEXUS_TRUST_BUNDLE: pki.files.ca,
      NEXUS_TLS_CERT: pki.files.cert,
      NEXUS_TLS_KEY: pki.files.key,
      NEXUS_DATABASE_URL: await createTestDatabase("e2e"),
      NEXUS_DB_POOL_MAX: "4",
      NEXUS_SHUTDOWN_GRACE: "2s",
      NEXUS_LOG_LEVEL: "info",
    });

    nexus = spawn(process.execPath, [NEXUS_BIN, "serve"], { cwd: REPO, env, stdio: ["ignore", "ignore", "pipe"] });
    nexus.stderr!.setEncoding("utf8");
    nexus.stderr!.on("data", (chunk: string) => (stderr += chunk));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nexus did not log "nexus serving" within 30 s:\n${stderr}`)), 30_000);
      const onData = () => {
        if (logEntries(stderr.slice(0, stderr.lastIndexOf("\n") + 1)).some((e) => e.msg === "nexus serving")) {
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
  });

  after(async () => {
    if (nexus && nexus.exitCode === null && nexus.signalCode === null) {
      nexus.kill("SIGKILL");
      await once(nexus, "exit");
    }
    await pki?.remove();
  });

  const pilotTls = () => ["--cacert", files.ca, "--cert", files.pilot, "--key", files.pilotKey];

  it("answers GetStatus over @grpc/grpc-js, authorizing the server by its SPIFFE ID", async () => {
    const client = grpcNexusClient(`127.0.0.1:${ports.grpc}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID });
    try {
      const result = await client.call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
      expect(result.code, result.message).to.equal("OK");
      expect(result.response).to.include({ callerSpiffeId: SUPERUSER_ID, trustDomain: TRUST_DOMAIN, sealed: true });
    } finally {
      client.close();
    }
  });

  it("answers `buf curl` on the gRPC port through server reflection, without proto files", async () => {
    const url = `https://localhost:${ports.grpc}/spike.nexus.v1.OperatorService/GetStatus`;
    const { stdout } = await run(BUF, ["curl", "--protocol", "grpc", ...pilotTls(), url], { cwd: REPO, timeout: COMMAND_TIMEOUT_MS });
    expect(JSON.parse(stdout)).to.include({ callerSpiffeId: SUPERUSER_ID, trustDomain: TRUST_DOMAIN });
  });

  for (const protocol of ["grpc", "connect"]) {
    it(`answers \`buf curl --protocol ${protocol}\` on the Connect port through server reflection, without proto files`, async () => {
      const url = `https://localhost:${ports.connect}/spike.nexus.v1.OperatorService/GetStatus`;
      const { stdout } = await run(BUF, ["curl", "--protocol", protocol, ...pilotTls(), url], { cwd: REPO, timeout: COMMAND_TIMEOUT_MS });
      expect(JSON.parse(stdout)).to.include({ callerSpiffeId: SUPERUSER_ID, trustDomain: TRUST_DOMAIN });
    });
  }

  it("lists the Nexus methods to `buf curl --list-methods` on the Connect port", async () => {
    const { stdout } = await run(BUF, ["curl", "--list-methods", ...pilotTls(), `https://localhost:${ports.connect}`], { cwd: REPO, timeout: COMMAND_TIMEOUT_MS });
    expect(stdout.split("\n")).to.include.members(["spike.nexus.v1.SecretService/GetSecret", "spike.nexus.v1.PolicyService/UpdatePolicy", "spike.nexus.v1.OperatorService/GetStatus"]);
  });

  it("answers curl with Connect JSON on the Connect port", async () => {
    const url = `https://localhost:${ports.connect}/spike.nexus.v1.OperatorService/GetStatus`;
    const { stdout } = await run("curl", ["-sS", "--fail-with-body", ...pilotTls(), "-H", "content-type: application/json", "-d", "{}", url], {
      timeout: COMMAND_TIMEOUT_MS,
    });
    expect(JSON.parse(stdout)).to.include({ callerSpiffeId: SUPERUSER_ID, trustDomain: TRUST_DOMAIN });
  });

  const healthOverPlaintext = async () => {
    const url = `http://localhost:${ports.health}/grpc.health.v1.Health/Check`;
    const args = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--schema", path.join(REPO, "proto"), url];
    return JSON.parse((await run(BUF, args, { cwd: REPO, timeout: COMMAND_TIMEOUT_MS })).stdout) as unknown;
  };
  const healthOverMtls = async () => {
    const url = `https://localhost:${ports.grpc}/grpc.health.v1.Health/Check`;
    return JSON.parse((await run(BUF, ["curl", "--protocol", "grpc", ...pilotTls(), url], { cwd: REPO, timeout: COMMAND_TIMEOUT_MS })).stdout) as unknown;
  };

  it("while sealed (fresh, not initialized) reports NOT_SERVING to `buf curl` on the plaintext health port, without a client certificate", async () => {
    expect(await healthOverPlaintext()).to.deep.equal({ status: "NOT_SERVING" });
  });

  it("once initialized over gRPC, reports SERVING to `buf curl` on the plaintext health port and, through reflection, on the mTLS port", async () => {
    const client = grpcNexusClient(`127.0.0.1:${ports.grpc}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID });
    try {
      const result = await client.call(OperatorService.method.initialize, { adminPassword: "correct horse battery staple" }, { deadlineMs: 30_000 });
      expect(result.code, result.message).to.equal("OK");
    } finally {
      client.close();
    }
    await eventually(async () => expect(await healthOverPlaintext()).to.deep.equal({ status: "SERVING" }));
    expect(await healthOverMtls()).to.deep.equal({ status: "SERVING" });
  });

  it("on SIGTERM, shuts down, logs \"stopped\" and exits with code 0 within 15 s", async () => {
    const exited = once(nexus, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
    nexus.kill("SIGTERM");
    const deadline = new Promise<"deadline">((resolve) => setTimeout(() => resolve("deadline"), 15_000).unref());
    const outcome = await Promise.race([exited, deadline]);
    expect(outcome, `still running 15 s after SIGTERM:\n${stderr}`).to.not.equal("deadline");
    const [code, signal] = outcome as [number | null, NodeJS.Signals | null];
    expect({ code, signal }, stderr).to.deep.equal({ code: 0, signal: null });
    expect(logEntries(stderr).map((e) => e.msg)).to.include("stopped");
  });

  it("`nexus serve` without NEXUS_TLS_CERT exits with code 2, naming the variable", async () => {
    const { NEXUS_TLS_CERT: _unset, ...withoutCert } = env;
    const result = await runFailing(process.execPath, [NEXUS_BIN, "serve"], withoutCert);
    expect(result.code).to.equal(2);
    expect(result.stderr).to.include("NEXUS_TLS_CERT");
  });

  it("`nexus --help` exits with code 0 and lists the settings, NEXUS_DATABASE_URL among them", async () => {
    const { stdout } = await run(process.execPath, [NEXUS_BIN, "--help"], { cwd: REPO, env: cleanEnv({}), timeout: COMMAND_TIMEOUT_MS });
    expect(stdout).to.include("NEXUS_DATABASE_URL").and.include("nexus serve");
  });
});
