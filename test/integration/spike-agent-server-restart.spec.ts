// The agent outlives its server: `nexus serve` in a child process is killed
// with SIGKILL; the agent keeps the last good file, reports 503 on /healthz,
// retries with backoff, and once the server is back (same ports, unsealed
// from its password file) catches up with the version written meanwhile; its
// WatchSecrets stream resumes from its cursor and re-renders within 1 s again.

import { expect } from "chai";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { createNexusClient, staticSvid, type ReplicatedNexusClient } from "../../src/client/index.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { cleanEnv, startNexusProcess, type NexusProcess } from "../support/nexus-process.js";
import { ADMIN_PASSWORD, ok } from "../support/secret-server.js";
import { startAgentProcess, writeAgentConfig, type AgentProcess } from "../support/spike-agent.js";
import { createTestDatabase } from "../support/test-database.js";
import { writePkiFiles } from "../support/test-pki.js";
import { createTestPki, TRUST_DOMAIN, type TestPki } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

describe("spike agent across a server crash", function () {
  this.timeout(120_000);
  let pki: TestPki;
  let dir: string;
  let nexus: NexusProcess | undefined;
  let agent: AgentProcess | undefined;
  let client: ReplicatedNexusClient;
  let env: NodeJS.ProcessEnv;
  let grpcPort: number;

  const startServer = async () => {
    nexus = startNexusProcess(["serve"], env);
    await nexus.waitForLog("nexus serving");
  };

  before(async () => {
    pki = await createTestPki();
    dir = await mkdtemp(path.join(tmpdir(), "agent-crash-"));
    const passwordFile = path.join(dir, "admin-password");
    await writeFile(passwordFile, ADMIN_PASSWORD, { mode: 0o600 });
    grpcPort = await freePort();
    env = cleanEnv({
      NEXUS_LISTEN: `127.0.0.1:${grpcPort}`,
      NEXUS_CONNECT_LISTEN: `127.0.0.1:${await freePort()}`,
      NEXUS_HEALTH_LISTEN: `127.0.0.1:${await freePort()}`,
      NEXUS_TRUST_DOMAIN: TRUST_DOMAIN,
      NEXUS_TRUST_BUNDLE: pki.files.ca,
      NEXUS_TLS_CERT: pki.files.cert,
      NEXUS_TLS_KEY: pki.files.key,
      NEXUS_DATABASE_URL: await createTestDatabase("agent"),
      NEXUS_DB_POOL_MAX: "4",
      NEXUS_LOG_LEVEL: "info",
      NEXUS_ADMIN_PASSWORD_FILE: passwordFile,
    });
    await startServer();
    client = createNexusClient({
      addresses: `127.0.0.1:${grpcPort}`,
      svid: staticSvid({ certPem: pki.superuser.certPem, keyPem: pki.superuser.keyPem, bundlePem: pki.ca.certPem }),
      retry: { maxAttempts: 20, initialMs: 100, maxMs: 1000 },
    });
    ok(await client.call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }), "Initialize");
  });
  after(async () => {
    await agent?.stop();
    client?.close();
    await nexus?.kill();
    await pki?.remove();
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the last good file and reports 503 while the server is gone, then catches up after it restarts", async () => {
    ok(await client.call(SecretService.method.putSecret, { path: "apps/crash/db", data: { password: "before-crash" } }), "put v1");
    const svidDir = path.join(dir, "svid");
    await writePkiFiles(svidDir, { "svid.pem": pki.superuser.certPem, "svid_key.pem": pki.superuser.keyPem, "bundle.pem": pki.ca.certPem });
    const file = path.join(dir, "db.env");
    const config = await writeAgentConfig(path.join(dir, "agent.yaml"), {
      nexus: { addr: `127.0.0.1:${grpcPort}` },
      svid: { cert: `${svidDir}/svid.pem`, key: `${svidDir}/svid_key.pem`, bundle: `${svidDir}/bundle.pem` },
      health: { listen: "127.0.0.1:0" },
      // Watching only: polling and the safety-net resync are an hour away, so catching up is the watch's and the retries' doing.
      poll_interval: "1h",
      resync_interval: "1h",
      outputs: [{ path: "apps/crash/db", file, format: "env" }],
    });
    agent = startAgentProcess(["--config", config]);
    await eventually(async () => expect(await readFile(file, "utf8")).to.equal('password="before-crash"\n'));
    const port = await eventually(() => agent!.logs().find((l) => l.msg === "health endpoint listening")!.port as number);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).to.equal(200);

    await nexus!.kill(); // SIGKILL: nothing cleaned up
    await eventually(async () => expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).to.equal(503), { timeoutMs: 10_000 });
    expect(await readFile(file, "utf8"), "the last good file is kept").to.equal('password="before-crash"\n');

    await startServer();
    ok(await client.call(SecretService.method.putSecret, { path: "apps/crash/db", data: { password: "after-crash" } }), "put v2");
    await eventually(async () => expect(await readFile(file, "utf8")).to.equal('password="after-crash"\n'), { timeoutMs: 20_000 });
    await eventually(async () => expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).to.equal(200));

    // The watch came back from its cursor, and follows the new server within 1 s.
    await eventually(() => expect(agent!.logs().some((l) => l.msg === "watch connected" && l.resumed === true)).to.equal(true), { timeoutMs: 15_000 });
    const written = client.call(SecretService.method.putSecret, { path: "apps/crash/db", data: { password: "after-crash-2" } });
    const started = Date.now();
    await eventually(async () => expect(await readFile(file, "utf8")).to.equal('password="after-crash-2"\n'), { timeoutMs: 5000, intervalMs: 10 });
    expect(Date.now() - started, "ms from PutSecret to the file after the restart").to.be.below(1000);
    ok(await written, "put v3");
    expect(agent.stderr()).to.not.include("before-crash").and.to.not.include("after-crash");
  });
});
