// PostgreSQL stopped and started again under a running server: RPCs that need the
// database answer UNAVAILABLE (retryable) quickly, health says NOT_SERVING, and
// the same server recovers by itself when the database returns.

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { healthClient, insecureCredentials, type HealthClient } from "../support/health-client.js";
import { startPrivateCluster } from "../support/test-database.js";
import { LISTENERS, startTestServer, type TestServer } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

// A call that is not answered within this deadline fails DEADLINE_EXCEEDED,
// so an UNAVAILABLE answer is also a quick one.
const DEADLINE_MS = 5000;

describe("database outage under a running server", function () {
  this.timeout(60_000);
  let cluster: Awaited<ReturnType<typeof startPrivateCluster>>;
  let server: TestServer;
  let health: HealthClient;

  const getStatus = (listener: (typeof LISTENERS)[number]) =>
    server.client(listener).call(OperatorService.method.getStatus, {}, { deadlineMs: DEADLINE_MS });

  before(async () => {
    cluster = await startPrivateCluster();
    server = await startTestServer({ databaseUrl: cluster.url, start: { kdfParams: { alg: "scrypt", N: 1024, r: 8, p: 1 } } });
    // Health is SERVING only while the database answers and the keys are unsealed.
    await server.nexus.keys.initialize("correct horse battery staple");
    health = healthClient(`127.0.0.1:${server.nexus.healthPort}`, insecureCredentials());
  });

  after(async () => {
    health?.close();
    await server?.stop();
    await cluster?.remove();
  });

  it("with the database up, GetStatus is OK on both listeners and health is SERVING", async () => {
    for (const listener of LISTENERS) {
      const result = await getStatus(listener);
      expect(result.code, `${listener}: ${result.message}`).to.equal("OK");
    }
    expect(await health.check()).to.deep.equal({ status: "SERVING" });
  });

  it("with the database stopped, GetStatus answers UNAVAILABLE within its deadline on both listeners", async () => {
    await cluster.stop();
    for (const listener of LISTENERS) {
      const result = await getStatus(listener);
      expect(result.code, `${listener}: ${result.message}`).to.equal("UNAVAILABLE");
      expect(result.message, "a safe message: no driver or SQL detail").to.equal("the database is unavailable; retry later");
    }
  });

  it("with the database stopped, health on the plaintext port turns NOT_SERVING", async () => {
    await eventually(async () => expect(await health.check()).to.deep.equal({ status: "NOT_SERVING" }));
  });

  it("with the database back, the same server recovers without a restart: GetStatus OK and health SERVING", async () => {
    const ports = [server.nexus.grpcPort, server.nexus.connectPort, server.nexus.healthPort];
    await cluster.restart();
    await eventually(
      async () => {
        for (const listener of LISTENERS) {
          const result = await getStatus(listener);
          expect(result.code, `${listener}: ${result.message}`).to.equal("OK");
        }
      },
      { timeoutMs: 20_000, intervalMs: 250 },
    );
    await eventually(async () => expect(await health.check()).to.deep.equal({ status: "SERVING" }));
    expect([server.nexus.grpcPort, server.nexus.connectPort, server.nexus.healthPort]).to.deep.equal(ports);
  });
});
