// Keeps the benchmark harness (bench/) working: its smallest scenario —
// Health/Check over mTLS from a forked load worker, 2 calls in flight — runs
// for a couple of seconds against a test server. No speed is asserted here;
// speed is `make bench`'s business.

import { expect } from "chai";
import { runScenario } from "../../bench/scenario-runner.js";
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
        identity: { cert: server.pki.workload.certPem, key: server.pki.workload.keyPem },
      },
      {
        address: `127.0.0.1:${server.nexus.grpcPort}`,
        serverId: NEXUS_ID,
        ca: server.pki.ca.certPem,
        data: { readSecrets: 0, writeSecrets: 0, valueBytes: 1024, listPageSize: 100 },
        serverPid: process.pid,
      },
    );
    expect(result.errors, result.firstError).to.equal(0);
    expect(result.errorCodes).to.deep.equal({});
    expect(result.count).to.be.greaterThan(0);
    expect(result.rps).to.be.greaterThan(0);
    expect(result.p99).to.be.at.least(result.p50);
  });
});
