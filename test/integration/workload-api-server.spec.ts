// The server with its SVID from the SPIFFE Workload API (a test API on a unix
// socket, rotating short-lived SVIDs): new connections get a rotated SVID
// without a restart while open connections keep working, a failed stream is
// retried with the last SVID serving meanwhile, and health turns NOT_SERVING
// once the SVID in use has expired.

import { expect } from "chai";
import { X509Certificate } from "node:crypto";
import tls from "node:tls";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { healthClient, insecureCredentials } from "../support/health-client.js";
import type { IssuedCert } from "../support/test-pki.js";
import { startSecretServer } from "../support/secret-server.js";
import { createTestPki, NEXUS_ID, type TestPki, type TestServer } from "../support/test-server.js";
import { eventually } from "../support/wait.js";
import { startTestWorkloadApi, workloadApiEnv, type TestWorkloadApi } from "../support/workload-api-server.js";

describe("server SVID from the Workload API", function () {
  this.timeout(60_000);
  let pki: TestPki;
  let api: TestWorkloadApi;
  let server: TestServer;

  const serialOf = (cert: IssuedCert) => new X509Certificate(cert.certPem).serialNumber;

  function presentedSerial(port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        ca: pki.ca.certPem,
        cert: pki.superuser.certPem,
        key: pki.superuser.keyPem,
        ALPNProtocols: ["h2"],
        checkServerIdentity: () => undefined,
      });
      socket.once("secureConnect", () => {
        resolve(socket.getPeerCertificate().serialNumber);
        socket.destroy();
      });
      socket.once("error", reject);
    });
  }

  before(async () => {
    pki = await createTestPki();
    api = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [NEXUS_ID] });
    server = await startSecretServer({ pki, env: workloadApiEnv(api.socket) });
  });
  after(async () => {
    await server?.stop();
    await api?.stop();
    await pki?.remove();
  });

  it("serves with the API's SVID, sent with the workload.spiffe.io header", async () => {
    expect(await presentedSerial(server.nexus.grpcPort)).to.equal(serialOf(api.current[0]));
    expect(await presentedSerial(server.nexus.connectPort)).to.equal(serialOf(api.current[0]));
    expect(api.refusedWithoutHeader).to.equal(0);
  });

  it("a rotated SVID serves new connections without a restart, and an open connection keeps working", async () => {
    const client = server.client("grpc");
    expect((await client.call(OperatorService.method.getStatus, {})).code).to.equal("OK");
    const [rotated] = await api.rotate();
    for (const port of [server.nexus.grpcPort, server.nexus.connectPort]) {
      await eventually(async () => expect(await presentedSerial(port)).to.equal(serialOf(rotated)));
    }
    expect((await client.call(OperatorService.method.getStatus, {})).code, "the connection opened before the rotation").to.equal("OK");
    expect((await server.client("grpc").call(OperatorService.method.getStatus, {})).code, "a new connection").to.equal("OK");
  });

  it("a failed stream (agent restart) is reopened; the last SVID serves meanwhile", async () => {
    const before = serialOf(api.current[0]);
    api.dropStreams();
    expect(await presentedSerial(server.nexus.grpcPort)).to.equal(before);
    expect((await server.client("grpc").call(OperatorService.method.getStatus, {})).code).to.equal("OK");
    // The reopened stream delivers the next rotation.
    await eventually(async () => {
      const [rotated] = await api.rotate();
      await eventually(async () => expect(await presentedSerial(server.nexus.grpcPort)).to.equal(serialOf(rotated)), { timeoutMs: 3000 });
    });
  });

  it("health is NOT_SERVING once the SVID in use has expired, and SERVING again with the next one", async () => {
    const health = healthClient(`127.0.0.1:${server.nexus.healthPort}`, insecureCredentials());
    try {
      expect(await health.check()).to.deep.equal({ status: "SERVING" });
      await api.rotate(2500);
      await eventually(async () => expect(await presentedSerial(server.nexus.grpcPort)).to.equal(serialOf(api.current[0])));
      api.pause(); // a stuck agent: no further rotation, the short-lived SVID runs out
      await eventually(async () => expect(await health.check()).to.deep.equal({ status: "NOT_SERVING" }), { timeoutMs: 10_000 });
      await api.resume();
      await eventually(async () => expect(await health.check()).to.deep.equal({ status: "SERVING" }), { timeoutMs: 10_000 });
    } finally {
      health.close();
    }
  });
});
