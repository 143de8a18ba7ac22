// `spike agent` against a real server, with its SVID from a test Workload API:
// every format rendered, --once exit codes, a re-render within 1 s of a
// PutSecret and of a promotion by following WatchSecrets (polling an hour
// away), a full re-read when the watch cursor expired, polling as an option,
// /healthz, a debounced signal reaching a process by its pid file, exec mode
// restarting its child with the new environment, an SVID rotation in the
// middle of a session, and no secret value in any log line.

import { expect } from "chai";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createPolicy, exactly } from "../support/admin-fixtures.js";
import { ADMIN_PASSWORD, adminSession, FAST_KDF, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { startAgentProcess, writeAgentConfig, type AgentProcess } from "../support/spike-agent.js";
import { createTestPki, startTestServer, SUPERUSER_ID, WORKLOAD_ID, type TestPki } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";
import { startTestWorkloadApi, type TestWorkloadApi } from "../support/workload-api-server.js";

const PASSWORD = `s3cret"$\`\\v1`;

describe("spike agent", function () {
  this.timeout(60_000);
  let pki: TestPki;
  let api: TestWorkloadApi;
  let server: SecretTestServer;
  let client: NexusClient;
  let dir: string;
  const agents: AgentProcess[] = [];

  const nexus = () => ({ addr: `127.0.0.1:${server.nexus.grpcPort}` });
  const svid = () => ({ socket: api.socket });
  const put = async (p: string, data: Record<string, string>) => ok(await client.call(SecretService.method.putSecret, { path: p, data }), `put ${p}`).version;
  const agent = (args: string[]) => {
    const a = startAgentProcess(args);
    agents.push(a);
    return a;
  };
  /** Every value this suite ever stored must stay out of the agent's logs. */
  const expectNoValueLogged = (a: AgentProcess, values: string[]) => {
    for (const v of values) expect(a.stderr(), "a secret value in the agent's log").to.not.include(v);
  };

  before(async () => {
    pki = await createTestPki();
    api = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [SUPERUSER_ID] });
    server = await startSecretServer({ pki });
    client = server.client("grpc");
    dir = await mkdtemp(path.join(tmpdir(), "spike-agent-"));
    await put("apps/demo/db", { username: "demo", password: PASSWORD });
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.stop()));
  });
  after(async () => {
    await server?.stop();
    await api?.stop();
    await pki?.remove();
    await rm(dir, { recursive: true, force: true });
  });

  it("--once renders every format with mode 0600 and exits 0", async () => {
    const config = await writeAgentConfig(path.join(dir, "formats.yaml"), {
      nexus: nexus(),
      svid: svid(),
      outputs: [
        { path: "apps/demo/db", file: `${dir}/db.env`, format: "env" },
        { path: "apps/demo/db", file: `${dir}/db.json`, format: "json" },
        { path: "apps/demo/db", file: `${dir}/password`, format: "value", key: "password" },
        { path: "apps/demo/db", file: `${dir}/db.url`, format: "template", template: "postgres://{{ data.username }}:{{ data.password }}@db/demo?v={{ version }}&x=<1>" },
      ],
    });
    const run = agent(["--config", config, "--once"]);
    expect(await run.exited(), run.stderr()).to.equal(0);
    expect(await readFile(`${dir}/db.env`, "utf8")).to.equal(`username="demo"\npassword="s3cret\\"\\$\\\`\\\\v1"\n`);
    expect(JSON.parse(await readFile(`${dir}/db.json`, "utf8"))).to.deep.equal({ username: "demo", password: PASSWORD });
    expect(await readFile(`${dir}/password`, "utf8")).to.equal(PASSWORD);
    expect(await readFile(`${dir}/db.url`, "utf8")).to.equal(`postgres://demo:${PASSWORD}@db/demo?v=1&x=<1>`);
    for (const f of ["db.env", "db.json", "password", "db.url"]) expect((await stat(`${dir}/${f}`)).mode & 0o777, f).to.equal(0o600);
    expectNoValueLogged(run, [PASSWORD]);
  });

  it("--once renders the version a label names: pending and previous as well as current", async () => {
    const p = "apps/demo/staged";
    await put(p, { password: "first" });
    await put(p, { password: "second" });
    ok(await client.call(SecretService.method.putSecret, { path: p, data: { password: "staged" }, stage: SecretLabel.PENDING }), "stage PENDING");
    const config = await writeAgentConfig(path.join(dir, "labels.yaml"), {
      nexus: nexus(),
      svid: svid(),
      outputs: ["current", "pending", "previous"].map((label) => ({ path: p, label, file: `${dir}/${label}`, format: "value", key: "password" })),
    });
    const run = agent(["--config", config, "--once"]);
    expect(await run.exited(), run.stderr()).to.equal(0);
    for (const [label, value] of [["current", "second"], ["pending", "staged"], ["previous", "first"]]) {
      expect(await readFile(`${dir}/${label}`, "utf8"), label).to.equal(value);
    }
  });

  it("--once exits 2 on an invalid config naming the field, and 3 naming each output it could not render", async () => {
    const invalid = await writeAgentConfig(path.join(dir, "invalid.yaml"), { nexus: nexus(), svid: svid(), outputs: [{ path: "apps/demo/db", file: `${dir}/x`, format: "xml" }] });
    const bad = agent(["--config", invalid, "--once"]);
    expect(await bad.exited()).to.equal(2);
    expect(bad.stderr()).to.include("outputs[0].format");

    const missing = await writeAgentConfig(path.join(dir, "missing.yaml"), {
      nexus: nexus(),
      svid: svid(),
      outputs: [
        { path: "apps/demo/db", file: `${dir}/ok.env`, format: "env" },
        { path: "apps/none/here", file: `${dir}/none.env`, format: "env" },
        { path: "apps/demo/db", file: `${dir}/nokey`, format: "value", key: "nokey" },
      ],
    });
    const partial = agent(["--config", missing, "--once"]);
    expect(await partial.exited()).to.equal(3);
    expect(partial.stderr()).to.include("not rendered: outputs[1] (apps/none/here").and.to.include("NOT_FOUND");
    expect(partial.stderr()).to.include("not rendered: outputs[2]").and.to.include('no key "nokey"');
    expect(partial.stderr()).to.not.include("not rendered: outputs[0]");
  });

  it("with watch: false, re-renders after a PutSecret within the poll interval, logs path and version only, and /healthz reports it", async () => {
    await put("apps/poll/db", { password: "poll-v1" });
    const config = await writeAgentConfig(path.join(dir, "poll.yaml"), {
      nexus: nexus(),
      svid: svid(),
      health: { listen: "127.0.0.1:0" },
      watch: false,
      poll_interval: "300ms",
      outputs: [{ path: "apps/poll/db", file: `${dir}/poll.env`, format: "env" }],
    });
    const run = agent(["--config", config]);
    await eventually(async () => expect(await readFile(`${dir}/poll.env`, "utf8")).to.equal('password="poll-v1"\n'));
    const port = await eventually(() => {
      const line = run.logs().find((l) => l.msg === "health endpoint listening");
      expect(line).to.not.equal(undefined);
      return line!.port as number;
    });
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).to.equal(200);
    expect(((await health.json()) as { last_sync: string }).last_sync).to.be.a("string");

    const started = Date.now();
    await put("apps/poll/db", { password: "poll-v2" });
    await eventually(async () => expect(await readFile(`${dir}/poll.env`, "utf8")).to.equal('password="poll-v2"\n'), { timeoutMs: 5000, intervalMs: 20 });
    expect(Date.now() - started, "within the poll interval and a write").to.be.lessThan(1500);
    await eventually(() => expect(run.logs().some((l) => l.msg === "output updated" && l.path === "apps/poll/db" && l.version === 2)).to.equal(true));
    expectNoValueLogged(run, ["poll-v1", "poll-v2"]);
  });

  describe("following WatchSecrets, with polling and the safety-net resync an hour away", () => {
    const watchConfig = (name: string, outputs: Array<Record<string, unknown>>, addr = nexus()) =>
      writeAgentConfig(path.join(dir, `${name}.yaml`), { nexus: addr, svid: svid(), poll_interval: "1h", resync_interval: "1h", outputs });
    /** Milliseconds from now until `file` holds `content` (polled every 10 ms). */
    const timeUntil = async (file: string, content: string) => {
      const started = Date.now();
      await eventually(async () => expect(await readFile(file, "utf8")).to.equal(content), { timeoutMs: 5000, intervalMs: 10 });
      return Date.now() - started;
    };

    it("re-renders within 1 s of a PutSecret and of a promotion (a label move without a new version)", async () => {
      const p = "apps/watch/db";
      const file = `${dir}/watch.value`;
      await put(p, { password: "w-v1" });
      const run = agent(["--config", await watchConfig("watch", [{ path: p, file, format: "value", key: "password" }])]);
      await eventually(() => expect(run.logs().some((l) => l.msg === "watch connected")).to.equal(true));
      await timeUntil(file, "w-v1");

      const written = put(p, { password: "w-v2" });
      const afterPut = await timeUntil(file, "w-v2");
      await written;
      expect(afterPut, "ms from PutSecret to the new file").to.be.below(1000);

      ok(await client.call(SecretService.method.putSecret, { path: p, data: { password: "w-v3" }, stage: SecretLabel.PENDING }), "stage v3");
      await sleep(300);
      expect(await readFile(file, "utf8"), "a PENDING version is not CURRENT").to.equal("w-v2");
      const promoted = client.call(SecretService.method.promoteSecretVersion, { path: p, version: 3 });
      const afterPromotion = await timeUntil(file, "w-v3");
      ok(await promoted, "promote v3");
      expect(afterPromotion, "ms from PromoteSecretVersion to the new file").to.be.below(1000);
      // The log line follows the rename: wait for it rather than race it.
      await eventually(() => expect(run.logs().filter((l) => l.msg === "output updated").map((l) => l.version)).to.deep.equal([1, 2, 3]));
      expectNoValueLogged(run, ["w-v1", "w-v2", "w-v3"]);
    });

    it("an output that fails after an event (its folder is gone) is retried with backoff, not left until the next resync", async () => {
      const p = "apps/watch-retry/db";
      const folder = `${dir}/retry-folder`;
      await mkdir(folder);
      await put(p, { password: "r-v1" });
      const run = agent(["--config", await watchConfig("watch-retry", [{ path: p, file: `${folder}/db.value`, format: "value", key: "password" }])]);
      await eventually(() => expect(run.logs().some((l) => l.msg === "watch connected")).to.equal(true));
      await timeUntil(`${folder}/db.value`, "r-v1");

      // Gone at once, by a rename: rm alone could meet a file the agent creates meanwhile (ENOTEMPTY).
      await rename(folder, `${folder}-gone`);
      await rm(`${folder}-gone`, { recursive: true, force: true, maxRetries: 5 });
      await put(p, { password: "r-v2" });
      await eventually(() => expect(run.logs().some((l) => l.msg === "output not rendered; keeping the last good content")).to.equal(true));
      await mkdir(folder);
      // No event comes now: only the agent's own retry can write the file.
      await eventually(async () => expect(await readFile(`${folder}/db.value`, "utf8")).to.equal("r-v2"), { timeoutMs: 10_000 });
    });

    it("re-reads every output when its watch cursor expired", async () => {
      // A replica that keeps cursors 2 s and ends streams after 3 s: the agent resumes with a cursor (its stream's opening heartbeat) that has expired.
      const replica = await startTestServer({ pki, databaseUrl: server.nexus.databaseUrl, env: { NEXUS_WATCH_RETENTION: "2s", NEXUS_WATCH_MAX_LIFETIME: "3s" }, start: FAST_KDF });
      const db = openDatabase(server.nexus.databaseUrl);
      try {
        ok(await replica.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal the replica");
        const p = "apps/expiry/db";
        await put(p, { password: "e-v1" });
        const reads = async () => (await db`SELECT count(*)::int AS n FROM audit_events WHERE rpc = '/spike.nexus.v1.SecretService/GetSecret' AND path = ${p}`)[0].n as number;
        const run = agent(["--config", await watchConfig("expiry", [{ path: p, file: `${dir}/expiry.env`, format: "env" }], { addr: `127.0.0.1:${replica.nexus.grpcPort}` })]);
        await eventually(() => expect(run.logs().some((l) => l.msg === "watch connected")).to.equal(true));
        await sleep(500);
        const before = await reads();
        await eventually(() => expect(run.logs().some((l) => l.msg === "watch cursor expired; re-reading every output")).to.equal(true), { timeoutMs: 10_000 });
        await eventually(async () => expect(await reads(), "GetSecret after the expiry").to.be.above(before));
        // And it follows the new stream: a put is on disk within 1 s.
        const started = Date.now();
        await put(p, { password: "e-v2" });
        await eventually(async () => expect(await readFile(`${dir}/expiry.env`, "utf8")).to.equal('password="e-v2"\n'), { timeoutMs: 5000, intervalMs: 10 });
        expect(Date.now() - started).to.be.below(1000);
      } finally {
        await db.end();
        await replica.stop();
      }
    });
  });

  it("on_change signals the process in the pid file once for a burst of versions", async () => {
    const pidFile = path.join(dir, "app.pid");
    const hupFile = path.join(dir, "hups");
    const app: ChildProcess = spawn(process.execPath, ["-e", `let n=0;process.on("SIGHUP",()=>require("fs").writeFileSync(${JSON.stringify(hupFile)},String(++n)));setInterval(()=>{},1000)`], { stdio: "ignore" });
    try {
      await writeFile(pidFile, `${app.pid}\n`);
      await put("apps/signal/db", { password: "sig-v1" });
      const config = await writeAgentConfig(path.join(dir, "signal.yaml"), {
        nexus: nexus(),
        svid: svid(),
        poll_interval: "200ms",
        debounce: "1s",
        outputs: [{ path: "apps/signal/db", file: `${dir}/signal.env`, format: "env", on_change: { signal: "SIGHUP", pid_file: pidFile } }],
      });
      const run = agent(["--config", config]);
      await eventually(async () => expect(await readFile(hupFile, "utf8")).to.equal("1"), { timeoutMs: 10_000 });
      // Three versions in quick succession: the agent sees at least two of them, and signals once.
      for (const v of ["sig-v2", "sig-v3", "sig-v4"]) {
        await put("apps/signal/db", { password: v });
        await sleep(250);
      }
      await eventually(async () => expect(await readFile(`${dir}/signal.env`, "utf8")).to.equal('password="sig-v4"\n'));
      await sleep(1500);
      expect(await readFile(hupFile, "utf8"), "one SIGHUP for the burst").to.equal("2");
      expect(run.logs().filter((l) => l.msg === "signal sent")).to.have.length(2);
    } finally {
      app.kill("SIGKILL");
    }
  });

  it("exec mode starts the command with the env outputs and restarts it with the new environment", async () => {
    await put("apps/exec/db", { DB_PASSWORD: "exec-v1" });
    const seenFile = path.join(dir, "exec-seen");
    const config = await writeAgentConfig(path.join(dir, "exec.yaml"), {
      nexus: nexus(),
      svid: svid(),
      poll_interval: "200ms",
      debounce: "100ms",
      outputs: [{ path: "apps/exec/db", format: "env" }],
    });
    const script = `require("fs").appendFileSync(${JSON.stringify(seenFile)}, process.pid + " " + process.env.DB_PASSWORD + "\\n"); setInterval(() => {}, 1000)`;
    const run = agent(["exec", "--config", config, "--", process.execPath, "-e", script]);
    await eventually(async () => expect(await readFile(seenFile, "utf8")).to.match(/^\d+ exec-v1\n$/));
    await put("apps/exec/db", { DB_PASSWORD: "exec-v2" });
    await eventually(async () => {
      const lines = (await readFile(seenFile, "utf8")).trim().split("\n");
      expect(lines).to.have.length(2);
      expect(lines[1]).to.match(/ exec-v2$/);
      expect(lines[1].split(" ")[0], "a new process").to.not.equal(lines[0].split(" ")[0]);
    });
    expectNoValueLogged(run, ["exec-v1", "exec-v2"]);
  });

  it("a workload whose read is denied midway keeps its last good file and turns /healthz 503, then recovers", async () => {
    const workloadApi = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [WORKLOAD_ID] });
    try {
      await put("apps/denied/db", { password: "den-v1" });
      const token = await adminSession(client);
      await createPolicy(client, token, { name: "agent-denied-read", spiffeIdPattern: exactly(WORKLOAD_ID), pathPattern: "apps/denied/.+", permissions: [Permission.READ] });
      const file = `${dir}/denied.env`;
      const config = await writeAgentConfig(path.join(dir, "denied.yaml"), {
        nexus: nexus(),
        svid: { socket: workloadApi.socket },
        health: { listen: "127.0.0.1:0" },
        poll_interval: "200ms",
        outputs: [{ path: "apps/denied/db", file, format: "env" }],
      });
      const run = agent(["--config", config]);
      await eventually(async () => expect(await readFile(file, "utf8")).to.equal('password="den-v1"\n'));
      const port = await eventually(() => run.logs().find((l) => l.msg === "health endpoint listening")!.port as number);

      ok(await client.call(PolicyService.method.deletePolicy, { name: "agent-denied-read" }, { bearerToken: token }), "DeletePolicy");
      await put("apps/denied/db", { password: "den-v2" });
      await eventually(async () => {
        const health = await fetch(`http://127.0.0.1:${port}/healthz`);
        expect(health.status).to.equal(503);
        expect(JSON.stringify(await health.json())).to.include("PERMISSION_DENIED");
      });
      expect(await readFile(file, "utf8"), "the last good file is kept").to.equal('password="den-v1"\n');

      await createPolicy(client, token, { name: "agent-denied-read", spiffeIdPattern: exactly(WORKLOAD_ID), pathPattern: "apps/denied/.+", permissions: [Permission.READ] });
      await eventually(async () => expect(await readFile(file, "utf8")).to.equal('password="den-v2"\n'), { timeoutMs: 15_000 });
      await eventually(async () => expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).to.equal(200));
      expectNoValueLogged(run, ["den-v1", "den-v2"]);
    } finally {
      await workloadApi.stop();
    }
  });

  it("follows an SVID rotation of the Workload API in the middle of a session", async () => {
    await put("apps/rotate/db", { password: "rot-v1" });
    const config = await writeAgentConfig(path.join(dir, "rotate.yaml"), {
      nexus: nexus(),
      svid: svid(),
      poll_interval: "200ms",
      outputs: [{ path: "apps/rotate/db", file: `${dir}/rotate.env`, format: "env" }],
    });
    const run = agent(["--config", config]);
    await eventually(async () => expect(await readFile(`${dir}/rotate.env`, "utf8")).to.equal('password="rot-v1"\n'));
    await api.rotate();
    await put("apps/rotate/db", { password: "rot-v2" });
    await eventually(async () => expect(await readFile(`${dir}/rotate.env`, "utf8")).to.equal('password="rot-v2"\n'));
    expect(run.logs().filter((l) => l.msg === "SVID received from the Workload API").length, "the rotated SVID arrived").to.be.at.least(2);
  });
});
