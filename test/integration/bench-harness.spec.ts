// Keeps the benchmark harness (bench/) working: its smallest scenario —
// Health/Check over mTLS from a forked load worker, 2 calls in flight — runs
// for a couple of seconds against a test server. No speed is asserted here;
// speed is `make bench`'s business.

import { expect } from "chai";
import { runScenario, type Target } from "../../bench/scenario-runner.js";
import { NEXUS_ID, startTestServer, type TestServer } from "../support/test-server.js";

describe("the benchmark harness", function () {
  this.timeout(60_000);
  let server: TestServer;

  before(async () => {
    server = await startTestServer();
  });

  after(async () => {
    await server?.stop();
  });

  const workload = () => ({ cert: server.pki.workload.certPem, key: server.pki.workload.keyPem });
  const target = (): Target => ({
    address: `127.0.0.1:${server.nexus.grpcPort}`,
    serverId: NEXUS_ID,
    ca: server.pki.ca.certPem,
    data: { readSecrets: 0, writeSecrets: 0, valueBytes: 1024, listPageSize: 100 },
    serverPid: process.pid,
  });

  it("runs the health scenario from a load worker and counts completed calls without errors", async () => {
    const result = await runScenario(
      {
        name: "health@2",
        kind: "health",
        inFlight: 2,
        connections: 1,
        workers: 1,
        warmupMs: 300,
        durationMs: 2000,
        identity: workload(),
      },
      target(),
    );
    expect(result.errors, result.firstError).to.equal(0);
    expect(result.errorCodes).to.deep.equal({});
    expect(result.count).to.be.greaterThan(0);
    expect(result.rps).to.be.greaterThan(0);
    expect(result.p99).to.be.at.least(result.p50);
  });

  it("runs an open-loop scenario at the rate asked: the calls completed are the rate times the window, whatever the latency", async () => {
    const result = await runScenario(
      {
        name: "health@open",
        kind: "health",
        inFlight: 64,
        connections: 2,
        workers: 2,
        rate: 200,
        warmupMs: 300,
        durationMs: 2000,
        identity: workload(),
      },
      target(),
    );
    expect(result.errors, result.firstError).to.equal(0);
    // 200/s for 2 s, scheduled: a closed loop at 64 in flight would do many times more.
    expect(result.count).to.be.within(380, 401);
  });
});

describe("the key rotation bench", function () {
  this.timeout(120_000);

  it("seeds data keys, times a re-wrap, and measures GetSecret p99 without and during one, with no errors", async () => {
    const { startSecretServer, adminSession, ok } = await import("../support/secret-server.js");
    const { keyRotationBench } = await import("../../bench/key-rotation-bench.js");
    const { SecretService } = await import("../../gen/spike/nexus/v1/secret_pb.js");
    const { readPath, secretData } = await import("../../bench/load-protocol.js");
    const server = await startSecretServer();
    try {
      const client = server.client("grpc");
      for (let i = 0; i < 50; i++) ok(await client.call(SecretService.method.putSecret, { path: readPath(i), data: secretData(64, i) }));
      const token = await adminSession(client);
      const su = server.pki.superuser;
      const result = await keyRotationBench({
        address: `127.0.0.1:${server.nexus.grpcPort}`,
        pki: { ca: server.pki.ca.certPem, files: server.pki.files, superuser: { cert: su.certPem, key: su.keyPem }, callers: {} as never },
        operator: { clients: [client], token, close: () => {} },
        readSecrets: 50,
        dataKeys: 400,
        getMaxRps: 400,
        windowMs: 500,
        log: () => {},
      });
      expect(result.dataKeys).to.equal(400);
      expect(result.keysPerSecond).to.be.greaterThan(0);
      expect(result.getErrors).to.equal(0);
      expect(result.p99Ratio).to.be.greaterThan(0);
    } finally {
      await server.stop();
    }
  });
});
