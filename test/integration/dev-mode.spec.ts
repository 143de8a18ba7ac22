// Dev mode as `make run` uses it: the real `nexus dev` in child processes, each
// with a data folder and ports of its own (never the 8553-8555 a developer's
// dev server may hold). A second start next to a running one is refused before
// it touches anything (it used to stop the first one's PostgreSQL), a taken
// port stops a start before the database, a SIGKILLed server's leftovers are
// cleaned up on the next start, and files in the data folder are never
// followed through symlinks or used to initialize an empty database.

import { expect } from "chai";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient, type NexusClient } from "../../src/client/nexus-client.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { healthClient, insecureCredentials } from "../support/health-client.js";
import { cleanEnv, startNexusProcess, type NexusProcess } from "../support/nexus-process.js";
import { createTestPki, NEXUS_ID, type TestPki } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

interface DevSetup {
  readonly dataDir: string;
  readonly ports: { grpc: number; connect: number; health: number };
  readonly env: NodeJS.ProcessEnv;
}

describe("dev mode (`nexus dev`, what `make run` starts)", function () {
  this.timeout(120_000);
  let pki: TestPki;
  const folders: string[] = [];
  const processes: NexusProcess[] = [];

  async function devSetup(ports?: DevSetup["ports"]): Promise<DevSetup> {
    // The data folder itself is made traversable for the postgres OS user; its parent must be too.
    const dataDir = await mkdtemp(path.join(tmpdir(), "nexus-test-dev-"));
    folders.push(dataDir);
    const p = ports ?? { grpc: await freePort(), connect: await freePort(), health: await freePort() };
    const env = cleanEnv({
      NEXUS_DATA_DIR: dataDir,
      NEXUS_LISTEN: `127.0.0.1:${p.grpc}`,
      NEXUS_CONNECT_LISTEN: `127.0.0.1:${p.connect}`,
      NEXUS_HEALTH_LISTEN: `127.0.0.1:${p.health}`,
      // Dev mode would scrape on 127.0.0.1:9553; a test must not take a developer's port.
      NEXUS_METRICS_LISTEN: "127.0.0.1:0",
      NEXUS_TLS_CERT: pki.files.cert,
      NEXUS_TLS_KEY: pki.files.key,
      NEXUS_TRUST_BUNDLE: pki.files.ca,
      NEXUS_LOG_LEVEL: "info",
    });
    return { dataDir, ports: p, env };
  }

  /** Fresh ports on an existing data folder. */
  async function devSetupSharing(dataDir: string): Promise<DevSetup> {
    const setup = await devSetup();
    return { ...setup, dataDir, env: { ...setup.env, NEXUS_DATA_DIR: dataDir } };
  }

  function nexus(args: readonly string[], setup: DevSetup): NexusProcess {
    const p = startNexusProcess(args, setup.env);
    processes.push(p);
    return p;
  }

  function client(setup: DevSetup): NexusClient {
    return grpcNexusClient(`127.0.0.1:${setup.ports.grpc}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID });
  }

  async function health(setup: DevSetup): Promise<unknown> {
    const h = healthClient(`127.0.0.1:${setup.ports.health}`, insecureCredentials());
    try {
      return await h.check();
    } finally {
      h.close();
    }
  }

  before(async () => {
    pki = await createTestPki();
  });

  after(async () => {
    for (const p of processes) await p.kill();
    for (const dir of folders) await rm(dir, { recursive: true, force: true });
    await pki?.remove();
  });

  describe("one dev server and what may start beside it (these run in order)", () => {
    let first: DevSetup;
    let server: NexusProcess;
    let operator: NexusClient;
    const path1 = "apps/dev/first";

    before(async () => {
      first = await devSetup();
      server = nexus(["dev"], first);
      await server.waitForLog("nexus serving");
      operator = client(first);
      const put = await operator.call(SecretService.method.putSecret, { path: path1, data: { k: "v1" } }, { deadlineMs: 10_000 });
      expect(put.code, put.message).to.equal("OK");
    });

    after(() => operator?.close());

    /** The first server still serves, from its own database. */
    async function expectFirstServerIntact(): Promise<void> {
      await sleep(1000); // a database stopped underneath would show by now
      expect(await health(first)).to.deep.equal({ status: "SERVING" });
      const got = await operator.call(SecretService.method.getSecret, { path: path1 }, { deadlineMs: 10_000 });
      expect(got.code, got.message).to.equal("OK");
      expect(server.logMessages()).not.to.include("stopping a PostgreSQL left running by an earlier run");
    }

    it("initializes a fresh dev database with a random password it prints once and keeps in the data folder (0600)", async () => {
      const file = path.join(first.dataDir, "admin-password");
      expect((await stat(file)).mode & 0o777).to.equal(0o600);
      const kept = (await readFile(file, "utf8")).trim();
      expect(kept).to.have.length.greaterThan(20);
      expect(server.stdout()).to.include(kept);
      const status = await operator.call(OperatorService.method.getStatus, {});
      expect(status.response).to.include({ initialized: true, sealed: false });
      expect(await health(first)).to.deep.equal({ status: "SERVING" });
    });

    it("a second `nexus dev` on the same data folder and ports exits with code 3, naming the running one's pid, and the first keeps serving", async () => {
      const second = nexus(["dev"], first);
      expect(await second.exited()).to.equal(3);
      expect(second.stderr()).to.include(`a Nexus dev server is already running, pid ${server.pid}`);
      await expectFirstServerIntact();
    });

    it("`nexus migrate status --dev` beside the running dev server exits with code 3 and leaves its database alone", async () => {
      const migrate = nexus(["migrate", "status", "--dev"], first);
      expect(await migrate.exited()).to.equal(3);
      expect(migrate.stderr()).to.include(`a Nexus dev server is already running, pid ${server.pid}`);
      await expectFirstServerIntact();
    });

    it("a dev server on another data folder but the same ports exits with code 3 naming NEXUS_LISTEN, before starting a database", async () => {
      const other = await devSetup(first.ports);
      const second = nexus(["dev"], other);
      expect(await second.exited()).to.equal(3);
      expect(second.stderr()).to.include(`NEXUS_LISTEN 127.0.0.1:${first.ports.grpc} is not available`);
      expect(existsSync(path.join(other.dataDir, "pg")), "no PostgreSQL cluster was created").to.equal(false);
      expect(existsSync(path.join(other.dataDir, "admin-password"))).to.equal(false);
      await expectFirstServerIntact();
    });

    it("even with the lock file gone, a second `nexus dev` on the same folder never stops the PostgreSQL the running one started (exit 3)", async () => {
      const lockFile = path.join(first.dataDir, "nexus.lock");
      const held = await readFile(lockFile, "utf8");
      await rm(lockFile);
      try {
        const second = nexus(["dev"], await devSetupSharing(first.dataDir));
        expect(await second.exited()).to.equal(3);
        expect(second.stderr()).to.include(`belongs to process ${server.pid}, which is still running`);
        await expectFirstServerIntact();
      } finally {
        await writeFile(lockFile, held, { mode: 0o600 });
      }
    });

    it("after a SIGKILL, the next start stops the orphaned PostgreSQL, takes over the stale lock and unseals with the kept password", async () => {
      operator.close();
      await server.kill();
      expect(existsSync(path.join(first.dataDir, "nexus.lock")), "a SIGKILL leaves the lock behind").to.equal(true);
      server = nexus(["dev"], first);
      await server.waitForLog("nexus serving");
      expect(server.logMessages()).to.include("stopping a PostgreSQL left running by an earlier run");
      operator = client(first);
      const got = await operator.call(SecretService.method.getSecret, { path: path1 }, { deadlineMs: 10_000 });
      expect(got.code, got.message).to.equal("OK");
      expect(await health(first)).to.deep.equal({ status: "SERVING" });
    });

    it("a graceful stop (SIGTERM) exits 0 and removes the lock, so `nexus migrate status --dev` then runs", async () => {
      operator.close();
      expect(await server.stop()).to.equal(0);
      expect(existsSync(path.join(first.dataDir, "nexus.lock"))).to.equal(false);
      const migrate = nexus(["migrate", "status", "--dev"], first);
      expect(await migrate.exited(), migrate.stderr()).to.equal(0);
      expect(migrate.stdout()).to.match(/^schema version \d+ of \d+, up to date\n$/);
    });
  });

  it("an admin-password file found next to an empty dev database is not used to initialize it: the server stays uninitialized and says what to do", async () => {
    const setup = await devSetup();
    await writeFile(path.join(setup.dataDir, "admin-password"), "a-password-someone-else-chose\n", { mode: 0o600 });
    const server = nexus(["dev"], setup);
    await server.waitForLog("nexus serving");
    const operator = client(setup);
    try {
      const status = await operator.call(OperatorService.method.getStatus, {});
      expect(status.response).to.include({ initialized: false, sealed: true });
      expect(server.stderr()).to.include("it is not used to initialize").and.include("Remove the file");
      expect(await health(setup)).to.deep.equal({ status: "NOT_SERVING" });
    } finally {
      operator.close();
      await server.stop();
    }
  });

  it("a symlink planted as the data folder's PostgreSQL password file is refused, and nothing is written where it points", async () => {
    const setup = await devSetup();
    const elsewhere = await mkdtemp(path.join(tmpdir(), "nexus-test-elsewhere-"));
    folders.push(elsewhere);
    await symlink(path.join(elsewhere, "written-through-the-link"), path.join(setup.dataDir, "pg-password"));
    const server = nexus(["dev"], setup);
    expect(await server.exited()).to.equal(1);
    expect(server.stderr()).to.include("pg-password is a symlink");
    expect(existsSync(path.join(elsewhere, "written-through-the-link"))).to.equal(false);
  });

  it("a symlink planted as the dev admin-password file is refused, even when it leads to a password", async () => {
    const setup = await devSetup();
    const elsewhere = await mkdtemp(path.join(tmpdir(), "nexus-test-elsewhere-"));
    folders.push(elsewhere);
    await writeFile(path.join(elsewhere, "chosen-password"), "a-password-someone-else-chose\n");
    await symlink(path.join(elsewhere, "chosen-password"), path.join(setup.dataDir, "admin-password"));
    const server = nexus(["dev"], setup);
    expect(await server.exited()).to.equal(1);
    expect(server.stderr()).to.include("admin-password is a symlink");
  });
});
