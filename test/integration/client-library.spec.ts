// The client library workloads import as `nexus/client`: idempotent calls
// retried across replicas when one goes away, writes not retried (the next
// call goes to the next replica), a hung replica skipped within the call's
// deadline, the caller's SVID from SPIFFE_ENDPOINT_SOCKET when no source is
// given, and from the Workload API followed through rotations on both sides while calls keep succeeding.

import { expect } from "chai";
import { X509Certificate } from "node:crypto";
import net from "node:net";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { createNexusClient, openNexusClient, staticSvid, svidFromWorkloadApi, type ReplicatedNexusClient } from "../../src/client/index.js";
import { ADMIN_PASSWORD, FAST_KDF, ok, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { startTcpProxy } from "../support/tcp-proxy.js";
import { createTestPki, NEXUS_ID, startTestServer, SUPERUSER_ID, type TestPki, type TestServer } from "../support/test-server.js";
import { sleep } from "../support/wait.js";
import { startTestWorkloadApi, workloadApiEnv } from "../support/workload-api-server.js";

describe("the nexus/client library", function () {
  this.timeout(60_000);

  it("is the package's `nexus/client` export", async () => {
    const library = (await import("nexus/client")) as Record<string, unknown>;
    for (const name of ["createNexusClient", "openNexusClient", "openSvid", "svidFromFiles", "svidFromWorkloadApi", "staticSvid", "SecretService", "WatchEventType", "StreamFailure"]) {
      expect(library[name], name).to.not.equal(undefined);
    }
  });

  describe("two replicas on one database", () => {
    let pki: TestPki;
    let first: SecretTestServer;
    let second: TestServer;
    let client: ReplicatedNexusClient;

    before(async () => {
      pki = await createTestPki();
      first = await startSecretServer({ pki });
      second = await startTestServer({ pki, databaseUrl: first.nexus.databaseUrl, start: FAST_KDF });
      ok(await second.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
      client = createNexusClient({
        addresses: [`127.0.0.1:${first.nexus.grpcPort}`, `127.0.0.1:${second.nexus.grpcPort}`],
        svid: staticSvid({ certPem: pki.superuser.certPem, keyPem: pki.superuser.keyPem, bundlePem: pki.ca.certPem }),
        retry: { initialMs: 20, maxMs: 200 },
      });
    });
    after(async () => {
      client?.close();
      await second?.stop();
      await first?.stop();
      await pki?.remove();
    });

    it("a GetSecret is retried on the other replica when the first goes away", async () => {
      ok(await client.call(SecretService.method.putSecret, { path: "apps/ha/db", data: { password: "v1" } }), "first put");
      expect(ok(await client.call(SecretService.method.getSecret, { path: "apps/ha/db" })).data.password).to.equal("v1");
      await first.stop();
      // The read costs a retry, not an outage.
      expect(ok(await client.call(SecretService.method.getSecret, { path: "apps/ha/db" }), "read after the replica left").data.password).to.equal("v1");
    });

    it("a write that meets an away replica comes back UNAVAILABLE, untried elsewhere; the next write goes to the other replica", async () => {
      const lonely = createNexusClient({
        addresses: [`127.0.0.1:${first.nexus.grpcPort}`, `127.0.0.1:${second.nexus.grpcPort}`],
        svid: staticSvid({ certPem: pki.superuser.certPem, keyPem: pki.superuser.keyPem, bundlePem: pki.ca.certPem }),
      });
      try {
        const failed = await lonely.call(SecretService.method.putSecret, { path: "apps/ha/db", data: { password: "v2" } });
        expect(failed.code).to.equal("UNAVAILABLE");
        ok(await lonely.call(SecretService.method.putSecret, { path: "apps/ha/db", data: { password: "v2" } }), "the next put");
        expect(ok(await lonely.call(SecretService.method.getSecret, { path: "apps/ha/db" })).version).to.equal(2);
      } finally {
        lonely.close();
      }
    });
  });

  it("a replica that answers sealed is passed over for the next one, for reads and writes alike", async () => {
    const pki = await createTestPki();
    const unsealed = await startSecretServer({ pki });
    const sealed = await startTestServer({ pki, databaseUrl: unsealed.nexus.databaseUrl, start: FAST_KDF });
    const client = createNexusClient({
      addresses: [`127.0.0.1:${sealed.nexus.grpcPort}`, `127.0.0.1:${unsealed.nexus.grpcPort}`],
      svid: staticSvid({ certPem: pki.superuser.certPem, keyPem: pki.superuser.keyPem, bundlePem: pki.ca.certPem }),
    });
    const alone = createNexusClient({
      addresses: `127.0.0.1:${sealed.nexus.grpcPort}`,
      svid: staticSvid({ certPem: pki.superuser.certPem, keyPem: pki.superuser.keyPem, bundlePem: pki.ca.certPem }),
    });
    try {
      ok(await client.call(SecretService.method.putSecret, { path: "apps/sealed/db", data: { password: "x" } }), "put past the sealed replica");
      expect(ok(await client.call(SecretService.method.getSecret, { path: "apps/sealed/db" })).version).to.equal(1);
      const refused = await alone.call(SecretService.method.getSecret, { path: "apps/sealed/db" });
      expect([refused.code, refused.reason], "with no other replica, the refusal comes back").to.deep.equal(["FAILED_PRECONDITION", "SEALED"]);
    } finally {
      client.close();
      alone.close();
      await sealed.stop();
      await unsealed.stop();
      await pki.remove();
    }
  });

  it("a hung replica listed first (accepts TCP, never answers) costs one attempt: a read is answered by the next replica within the call's deadline", async () => {
    const server = await startSecretServer();
    const sockets = new Set<net.Socket>();
    const hung = net.createServer((socket) => sockets.add(socket.on("error", () => {})));
    await new Promise<void>((resolve) => hung.listen(0, "127.0.0.1", resolve));
    const addresses = [`127.0.0.1:${(hung.address() as net.AddressInfo).port}`, `127.0.0.1:${server.nexus.grpcPort}`];
    const svid = () => staticSvid({ certPem: server.pki.superuser.certPem, keyPem: server.pki.superuser.keyPem, bundlePem: server.pki.ca.certPem });
    const withDeadline = createNexusClient({ addresses, svid: svid() });
    const withAttemptTimeout = createNexusClient({ addresses, svid: svid(), retry: { attemptTimeoutMs: 500 } });
    try {
      ok(await server.client("grpc").call(SecretService.method.putSecret, { path: "apps/hung/db", data: { password: "p" } }), "put");
      let started = Date.now();
      const read = await withDeadline.call(SecretService.method.getSecret, { path: "apps/hung/db" }, { deadlineMs: 3000 });
      expect(ok(read, "read past the hung replica").data.password).to.equal("p");
      expect(Date.now() - started, "ms, within the deadline").to.be.below(3000);
      expect(sockets.size, "the hung replica was asked first").to.be.at.least(1);

      // Without a deadline the attempt timeout bounds the wait on the hung replica.
      started = Date.now();
      expect(ok(await withAttemptTimeout.call(SecretService.method.getSecret, { path: "apps/hung/db" }), "read without a deadline").data.password).to.equal("p");
      expect(Date.now() - started).to.be.below(2500);
    } finally {
      withDeadline.close();
      withAttemptTimeout.close();
      sockets.forEach((s) => s.destroy());
      await new Promise((resolve) => hung.close(resolve));
      await server.stop();
    }
  });

  it("with no SVID source given, openNexusClient takes the Workload API at SPIFFE_ENDPOINT_SOCKET", async () => {
    const pki = await createTestPki();
    const api = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [SUPERUSER_ID] });
    const server = await startSecretServer({ pki });
    const saved = process.env.SPIFFE_ENDPOINT_SOCKET;
    let client: ReplicatedNexusClient | undefined;
    try {
      process.env.SPIFFE_ENDPOINT_SOCKET = api.socket;
      client = await openNexusClient({ addresses: `127.0.0.1:${server.nexus.grpcPort}` });
      expect(client.spiffeId).to.equal(SUPERUSER_ID);
      ok(await client.call(OperatorService.method.getStatus, {}), "GetStatus with the Workload API's SVID");
    } finally {
      if (saved === undefined) delete process.env.SPIFFE_ENDPOINT_SOCKET;
      else process.env.SPIFFE_ENDPOINT_SOCKET = saved;
      client?.close();
      await server.stop();
      await api.stop();
      await pki.remove();
    }
  });

  it("openNexusClient refuses a socket and files together naming both, and no source at all naming SPIFFE_ENDPOINT_SOCKET", async () => {
    const files = { cert: "/run/svid/svid.pem", key: "/run/svid/svid_key.pem", bundle: "/run/svid/bundle.pem" };
    const failure = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (err) {
        return (err as Error).message;
      }
      return expect.fail("expected openNexusClient to fail");
    };
    expect(await failure(openNexusClient({ addresses: "127.0.0.1:1", source: { socket: "unix:///run/spire/agent.sock", files } })))
      .to.include("socket (unix:///run/spire/agent.sock)")
      .and.to.include("files (/run/svid/svid.pem")
      .and.to.include("not both");
    expect(await failure(openNexusClient({ addresses: "127.0.0.1:1", source: { env: {} } }))).to.include("set SPIFFE_ENDPOINT_SOCKET");
  });

  it("with SVIDs from the Workload API, server and client both rotate mid-session and calls keep succeeding", async () => {
    const pki = await createTestPki();
    const serverApi = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [NEXUS_ID] });
    // The client's first SVID lives 2 s: after that only a rotated one can open a connection.
    const clientApi = await startTestWorkloadApi({ ca: pki.ca, spiffeIds: [SUPERUSER_ID], ttlMs: 2000 });
    const server = await startSecretServer({ pki, env: workloadApiEnv(serverApi.socket) });
    const proxy = await startTcpProxy(server.nexus.grpcPort);
    const client = createNexusClient({ addresses: `127.0.0.1:${proxy.port}`, svid: await svidFromWorkloadApi(clientApi.socket), retry: { initialMs: 20, maxMs: 200 } });
    try {
      const firstClientSvid = clientApi.current[0];
      ok(await client.call(SecretService.method.putSecret, { path: "apps/rotating/db", data: { password: "p" } }), "put");
      await Promise.all([clientApi.rotate(60_000), serverApi.rotate()]);
      await sleep(300); // the rotations reach both sides
      ok(await client.call(OperatorService.method.getStatus, {}), "status after the rotation");
      // Wait until the first client SVID has expired, then cut every connection:
      // the client must reconnect with its rotated SVID.
      await sleep(Math.max(0, Date.parse(new X509Certificate(firstClientSvid.certPem).validTo) - Date.now() + 1100));
      proxy.dropAll();
      expect(ok(await client.call(SecretService.method.getSecret, { path: "apps/rotating/db" }), "read after reconnecting").data.password).to.equal("p");
      expect(client.spiffeId).to.equal(SUPERUSER_ID);
    } finally {
      client.close();
      await proxy.close();
      await server.stop();
      await Promise.all([serverApi.stop(), clientApi.stop()]);
      await pki.remove();
    }
  });
});
