// Per-caller rate limits (issue 17 §6) through both listeners: a noisy
// workload hammering the server is refused RESOURCE_EXHAUSTED with a
// google.rpc.RetryInfo, while another workload's calls keep succeeding; a
// certificate that keeps failing authentication is refused before it is
// checked again, without touching anyone else.

import { expect } from "chai";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { CallResult } from "../../src/client/nexus-client.js";
import { login } from "../support/admin-fixtures.js";
import { ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, WORKLOAD_ID } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

const RATE = 20;
const BURST = 20;

describe("per-caller rate limits", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;

  before(async () => {
    server = await startSecretServer({
      env: {
        NEXUS_RATE_LIMIT_RPS: String(RATE),
        NEXUS_RATE_LIMIT_BURST: String(BURST),
        NEXUS_AUTH_FAILURE_RATE_LIMIT_RPS: "1",
        NEXUS_AUTH_FAILURE_RATE_LIMIT_BURST: "3",
        NEXUS_METRICS_LISTEN: "127.0.0.1:0",
      },
    });
    db = openDatabase(server.nexus.databaseUrl);
    const admin = server.client("grpc");
    const { token } = await login(admin, 3_600_000);
    ok(await admin.call(PolicyService.method.createPolicy, { policy: { name: "noisy", spiffeIdPattern: WORKLOAD_ID.replace(/\./g, "\\."), pathPattern: "rl/.*", permissions: [Permission.READ, Permission.WRITE] } }, { bearerToken: token }));
    ok(await admin.call(SecretService.method.putSecret, { path: "rl/shared", data: { v: "1" } }));
    await sleep(1000); // the superuser's bucket refills after the set-up calls
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  for (const listener of LISTENERS) {
    it(`${listener}: a noisy workload is refused RESOURCE_EXHAUSTED with RetryInfo while another workload's calls keep succeeding`, async () => {
      const noisy = server.client(listener, server.pki.workload);
      const quiet = server.client(listener); // the superuser: another SPIFFE ID
      let hammering = true;
      const noisyResults: Array<CallResult<typeof SecretService.method.getSecret>> = [];
      // 16 calls in flight from the noisy workload for as long as the quiet one works.
      const hammer = Promise.all(
        Array.from({ length: 16 }, async () => {
          while (hammering) noisyResults.push(await noisy.call(SecretService.method.getSecret, { path: "rl/shared" }));
        }),
      );
      const quietCodes: string[] = [];
      // Well under its own limit: 10 calls per second for 1.5 s.
      for (let i = 0; i < 15; i++) {
        quietCodes.push((await quiet.call(SecretService.method.getSecret, { path: "rl/shared" })).code);
        await sleep(100);
      }
      hammering = false;
      await hammer;
      expect(quietCodes).to.deep.equal(Array.from({ length: 15 }, () => "OK"));
      const limited = noisyResults.filter((r) => r.code === "RESOURCE_EXHAUSTED");
      const served = noisyResults.filter((r) => r.code === "OK");
      expect(limited.length, "noisy calls refused").to.be.greaterThan(served.length);
      // The burst, then about RATE per second (the hammer ran ~1.5 s).
      expect(served.length).to.be.within(BURST, BURST + RATE * 3);
      expect(noisyResults.every((r) => r.code === "OK" || r.code === "RESOURCE_EXHAUSTED"), "only OK or RESOURCE_EXHAUSTED").to.equal(true);
      for (const r of limited) {
        expect(r.reason).to.equal("RATE_LIMITED");
        expect(r.retryDelayMs, "RetryInfo.retry_delay").to.be.within(1, 1000 / RATE + 1);
      }
      await sleep(1000); // let the workload's bucket refill for the next listener
    });
  }

  it("a certificate that keeps failing authentication is refused RESOURCE_EXHAUSTED before being checked again; others are unaffected", async () => {
    // Chains to the trust bundle (so TLS accepts it) but is an SVID of another trust domain.
    const stranger = await server.pki.ca.issue({ uris: ["spiffe://elsewhere.example/x"] });
    const client = server.client("grpc", stranger);
    const codes: string[] = [];
    for (let i = 0; i < 6; i++) codes.push((await client.call(OperatorService.method.getStatus, {})).code);
    expect(codes.slice(0, 3)).to.deep.equal(["UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"]);
    expect(codes.slice(3)).to.deep.equal(["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]);
    const refused = await server.client("connect", stranger).call(OperatorService.method.getStatus, {});
    expect(refused.code).to.equal("RESOURCE_EXHAUSTED");
    expect(refused.retryDelayMs).to.be.within(1, 1000);
    ok(await server.client("grpc", server.pki.workload).call(SecretService.method.getSecret, { path: "rl/shared" }), "the workload");
  });

  it("refusals are counted by kind in nexus_rate_limited_total, never by caller", async () => {
    const text = await (await fetch(`http://127.0.0.1:${server.nexus.metricsPort}/metrics`)).text();
    const lines = text.split("\n").filter((l) => l.startsWith("nexus_rate_limited_total{"));
    const count = (kind: string) => Number(lines.find((l) => l.startsWith(`nexus_rate_limited_total{kind="${kind}"} `))?.split(" ")[1] ?? 0);
    expect(count("calls")).to.be.greaterThan(0);
    expect(count("auth_failures")).to.be.greaterThan(0);
    expect(lines.filter((l) => /spiffe:|workload|elsewhere/.test(l))).to.deep.equal([]);
  });

  it("a valid SVID whose bearer tokens keep failing is refused RESOURCE_EXHAUSTED", async () => {
    const client = server.client("connect"); // the superuser: admin methods take a bearer token
    const codes: string[] = [];
    for (let i = 0; i < 5; i++) codes.push((await client.call(OperatorService.method.listAdminTokens, {}, { bearerToken: "not-a-token" })).code);
    expect(codes).to.deep.equal(["UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]);
  });
});
