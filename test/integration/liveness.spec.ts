// The two probes Kubernetes runs on the plaintext health port (deploy/kubernetes):
// readiness checks the overall status (""), SERVING only when the replica can
// serve; liveness checks "liveness", SERVING whenever the process answers —
// sealed, uninitialized or with the database gone — so a sealed pod is not
// restarted in a loop.

import { expect } from "chai";
import { LIVENESS_SERVICE } from "../../src/transport/health.js";
import { healthClient, insecureCredentials, type HealthClient } from "../support/health-client.js";
import { ADMIN_PASSWORD, ok, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { eventually } from "../support/wait.js";

describe("liveness and readiness on the health port", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let health: HealthClient;
  before(async () => {
    server = await startSecretServer({ initialize: false });
    health = healthClient(`127.0.0.1:${server.nexus.healthPort}`, insecureCredentials());
  });
  after(async () => {
    health?.close();
    await server?.stop();
  });

  it('"liveness" is SERVING while uninitialized, unsealed and sealed; readiness ("") follows the seal', async () => {
    expect(LIVENESS_SERVICE).to.equal("liveness");
    expect(await health.check("")).to.deep.equal({ status: "NOT_SERVING" });
    expect(await health.check(LIVENESS_SERVICE)).to.deep.equal({ status: "SERVING" });
    ok(await server.client("grpc").call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }));
    // SERVING once the unsealed replica has loaded its policies, a moment after Initialize answers.
    await eventually(async () => expect(await health.check("")).to.deep.equal({ status: "SERVING" }), { timeoutMs: 5000 });
    expect(await health.check(LIVENESS_SERVICE)).to.deep.equal({ status: "SERVING" });
    await seal(server.client("grpc"));
    expect(await health.check("")).to.deep.equal({ status: "NOT_SERVING" });
    expect(await health.check(LIVENESS_SERVICE)).to.deep.equal({ status: "SERVING" });
  });
});
