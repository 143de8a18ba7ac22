// Hot reload of the server's own X.509-SVID: spiffe-helper rewrites svid.pem and
// svid_key.pem in place; the server picks the new pair up on both mTLS
// listeners, refuses a key that does not match its certificate (the old pair
// keeps serving), and keeps connections and streams that are already open.

import { expect } from "chai";
import type http2 from "node:http2";
import { X509Certificate } from "node:crypto";
import tls from "node:tls";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { createLogger } from "../../src/log/logger.js";
import { connectJson, connectSession } from "../support/connect-json.js";
import { healthClient, mtlsCredentials } from "../support/health-client.js";
import { writePkiFiles, type IssuedCert } from "../support/test-pki.js";
import { LISTENERS, NEXUS_ID, SUPERUSER_ID, startTestServer, type Listener, type TestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

describe("certificate reload", function () {
  this.timeout(60_000);
  let server: TestServer;
  let serving: IssuedCert;
  const logs: string[] = [];

  const portOf = (listener: Listener) => (listener === "grpc" ? server.nexus.grpcPort : server.nexus.connectPort);
  const serialOf = (cert: IssuedCert) => new X509Certificate(cert.certPem).serialNumber;

  /** The serial number of the certificate a brand-new TLS connection to `port` is shown. */
  function presentedSerial(port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        ca: server.pki.ca.certPem,
        cert: server.pki.superuser.certPem,
        key: server.pki.superuser.keyPem,
        ALPNProtocols: ["h2"],
        rejectUnauthorized: true,
        checkServerIdentity: () => undefined,
      });
      socket.once("secureConnect", () => {
        const serial = socket.getPeerCertificate().serialNumber;
        socket.destroy();
        resolve(serial);
      });
      socket.once("error", reject);
    });
  }

  async function expectPresentedEverywhere(cert: IssuedCert): Promise<void> {
    for (const listener of LISTENERS) {
      await eventually(async () => expect(await presentedSerial(portOf(listener)), listener).to.equal(serialOf(cert)));
    }
  }

  function issueNexusLeaf(): Promise<IssuedCert> {
    return server.pki.ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
  }

  function pairFiles(cert: IssuedCert): Record<string, string> {
    return { "svid.pem": cert.certPem, "svid_key.pem": cert.keyPem };
  }

  /** Writes certificate then key, one after another, as spiffe-helper does. */
  async function install(cert: IssuedCert): Promise<void> {
    await writePkiFiles(server.pki.dir, pairFiles(cert));
  }

  async function expectGetStatusOk(listener: Listener): Promise<void> {
    const result = await server.client(listener).call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
    expect(result.code, `${listener}: ${result.message}`).to.equal("OK");
  }

  before(async () => {
    server = await startTestServer({
      logger: createLogger("debug", (line) => logs.push(line)),
      start: { kdfParams: { alg: "scrypt", N: 1024, r: 8, p: 1 } },
    });
    // Initialized and so unsealed: health is SERVING, as on a server in use.
    await server.nexus.keys.initialize("correct horse battery staple");
    serving = server.pki.nexus;
  });

  after(async () => server?.stop());

  it("new certificate files are picked up by new connections on both listeners", async () => {
    await expectPresentedEverywhere(serving);
    const next = await issueNexusLeaf();
    await install(next);
    await expectPresentedEverywhere(next);
    serving = next;
    for (const listener of LISTENERS) await expectGetStatusOk(listener);
  });

  const REFUSED_RELOADS: ReadonlyArray<{ what: string; files: () => Promise<Record<string, string>>; why: string }> = [
    {
      what: "a key that does not match the new certificate",
      // Only the certificate changes: svid_key.pem still holds the key of the serving pair.
      files: async () => ({ "svid.pem": (await issueNexusLeaf()).certPem }),
      why: "does not match",
    },
    {
      what: "a certificate with no SPIFFE ID (key matching)",
      files: async () => pairFiles(await server.pki.ca.issue({ uris: [], dns: ["localhost"], ips: ["127.0.0.1"] })),
      why: "is not an X.509-SVID",
    },
    {
      what: "an SVID of another trust domain (key matching)",
      files: async () => pairFiles(await server.pki.ca.issue({ uris: ["spiffe://elsewhere.example/spike/nexus"], dns: ["localhost"], ips: ["127.0.0.1"] })),
      why: "not of spike.ist",
    },
  ];
  for (const bad of REFUSED_RELOADS) {
    it(`${bad.what} is refused while the old pair keeps serving`, async () => {
      const before = logs.length;
      await writePkiFiles(server.pki.dir, await bad.files());
      await eventually(() => expect(logs.slice(before).join("\n")).to.include("certificate reload refused"));
      await sleep(1000); // well past the debounce: nothing else is coming
      for (const listener of LISTENERS) {
        expect(await presentedSerial(portOf(listener)), listener).to.equal(serialOf(serving));
        await expectGetStatusOk(listener);
      }
      const refusal = logs.slice(before).find((line) => line.includes("certificate reload refused"));
      expect(refusal, "the log says why").to.include(bad.why);
      expect(refusal, "the log holds no key material").not.to.include("PRIVATE KEY");

      await install(serving); // leave the files consistent for the next test
      await sleep(500);
    });
  }

  it("an open Health/Watch stream survives a reload and still receives status changes", async () => {
    const health = healthClient(`127.0.0.1:${server.nexus.grpcPort}`, mtlsCredentials(server.pki.ca.certPem, server.pki.superuser, NEXUS_ID));
    const watch = health.watch();
    try {
      expect(await watch.next()).to.equal("SERVING");

      const next = await issueNexusLeaf();
      await install(next);
      await expectPresentedEverywhere(next);
      serving = next;

      server.nexus.health.set("NOT_SERVING");
      expect(await watch.next(), "the same stream, opened before the reload").to.equal("NOT_SERVING");
      server.nexus.health.set("SERVING");
      expect(await watch.next()).to.equal("SERVING");
    } finally {
      server.nexus.health.set("SERVING");
      watch.cancel();
      health.close();
    }
  });

  it("a grpc-js channel and a Connect HTTP/2 session opened before a reload still complete GetStatus after it", async () => {
    const grpcClient = server.client("grpc");
    expect((await grpcClient.call(OperatorService.method.getStatus, {})).code).to.equal("OK");
    const session = connectSession(server);
    try {
      const oldSerial = serialOf(serving);
      expect(JSON.parse(await connectGetStatus(session))).to.include({ callerSpiffeId: SUPERUSER_ID });

      const next = await issueNexusLeaf();
      await install(next);
      await expectPresentedEverywhere(next);
      serving = next;

      const grpcResult = await grpcClient.call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
      expect(grpcResult.code, `grpc: ${grpcResult.message}`).to.equal("OK");
      expect(JSON.parse(await connectGetStatus(session))).to.include({ callerSpiffeId: SUPERUSER_ID });
      const sessionSerial = (session.socket as tls.TLSSocket).getPeerCertificate().serialNumber;
      expect(sessionSerial, "the session is the one opened with the old certificate").to.equal(oldSerial);
    } finally {
      session.close();
    }
  });
});

/** GetStatus over the Connect protocol (JSON) on an existing HTTP/2 session; resolves with the body. */
async function connectGetStatus(session: http2.ClientHttp2Session): Promise<string> {
  const { status, body } = await connectJson(session, "/spike.nexus.v1.OperatorService/GetStatus", "{}");
  if (status !== 200) throw new Error(`HTTP ${status}: ${body}`);
  return body;
}
