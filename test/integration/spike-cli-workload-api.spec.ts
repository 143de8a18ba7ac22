// `spike` with its SVID from the SPIFFE Workload API: --spiffe-endpoint-socket
// (or SPIFFE_ENDPOINT_SOCKET) instead of files, --spiffe-id to pick one of
// several SVIDs, a rotation between commands on both sides, several replicas
// in --addr, and a socket together with files refused naming both.

import { expect } from "chai";
import { startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { runSpike } from "../support/spike-cli.js";
import { createTestPki, NEXUS_ID, SUPERUSER_ID, WORKLOAD_ID, type TestPki } from "../support/test-server.js";
import { startTestWorkloadApi, workloadApiEnv, type TestWorkloadApi } from "../support/workload-api-server.js";

describe("spike with the SPIFFE Workload API", function () {
  this.timeout(60_000);
  let pki: TestPki;
  let serverApi: TestWorkloadApi;
  let callerApi: TestWorkloadApi;
  let server: SecretTestServer;
  let addr: string;

  before(async () => {
    pki = await createTestPki();
    serverApi = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [NEXUS_ID] });
    // The caller is entitled to two identities; the superuser is not the first.
    callerApi = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [WORKLOAD_ID, SUPERUSER_ID] });
    server = await startSecretServer({ pki, env: workloadApiEnv(serverApi.socket) });
    addr = `127.0.0.1:${server.nexus.grpcPort}`;
  });
  after(async () => {
    await server?.stop();
    await Promise.all([serverApi?.stop(), callerApi?.stop()]);
    await pki?.remove();
  });

  it("SPIFFE_ENDPOINT_SOCKET and --spiffe-id pick the SVID; both sides rotate between commands and calls keep succeeding", async () => {
    const env = { SPIFFE_ENDPOINT_SOCKET: callerApi.socket };
    const put = await runSpike(["--addr", addr, "--spiffe-id", SUPERUSER_ID, "secret", "put", "apps/wl/db", "password=p1"], { env });
    expect(put.code, put.stderr).to.equal(0);
    await Promise.all([serverApi.rotate(), callerApi.rotate()]);
    const get = await runSpike(["--addr", addr, "--spiffe-id", SUPERUSER_ID, "secret", "get", "apps/wl/db", "--field", "password"], { env });
    expect(get.code, get.stderr).to.equal(0);
    expect(get.stdout).to.equal("p1\n");
  });

  it("--spiffe-endpoint-socket takes the first SVID by default (here a workload the policies do not allow)", async () => {
    const get = await runSpike(["--addr", addr, "--spiffe-endpoint-socket", callerApi.socket, "secret", "get", "apps/wl/db"]);
    expect(get.code, get.stderr).to.equal(3);
    expect(get.stderr).to.include(WORKLOAD_ID);
  });

  it("--addr with several replicas: a read moves on past one that is away", async () => {
    const get = await runSpike(["--addr", `127.0.0.1:1,${addr}`, "--spiffe-endpoint-socket", callerApi.socket, "--spiffe-id", SUPERUSER_ID, "secret", "get", "apps/wl/db", "--field", "password"]);
    expect(get.code, get.stderr).to.equal(0);
    expect(get.stdout).to.equal("p1\n");
  });

  it("a socket together with SVID files is refused, naming both", async () => {
    const run = await runSpike(["--addr", addr, "--spiffe-endpoint-socket", callerApi.socket, "--svid-dir", "/tmp/svid", "secret", "get", "apps/wl/db"]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include("--spiffe-endpoint-socket").and.to.include("--svid-dir");
  });

  it("a Workload API that does not answer is exit 5 with one line naming the socket", async () => {
    const run = await runSpike(["--addr", addr, "--spiffe-endpoint-socket", "unix:///nonexistent/agent.sock", "secret", "get", "apps/wl/db"], {});
    expect(run.code, run.stderr).to.equal(5);
    expect(run.stderr).to.include("unix:///nonexistent/agent.sock");
  });
});
