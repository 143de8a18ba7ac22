// Hot reload of the server's own X.509-SVID: spiffe-helper rewrites svid.pem and
// svid_key.pem in place, and a Kubernetes volume swaps a `..data` symlink; the
// server picks the new pair up on both mTLS listeners, refuses a key that does
// not match its certificate (the old pair keeps serving), keeps its TLS 1.2
// floor, and keeps connections and streams that are already open.

import { expect } from "chai";
import type http2 from "node:http2";
import { X509Certificate } from "node:crypto";
import { mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { createLogger } from "../../src/log/logger.js";
import { connectJson, connectSession } from "../support/connect-json.js";
import { healthClient, mtlsCredentials } from "../support/health-client.js";
import { writePkiFiles, type IssuedCert } from "../support/test-pki.js";
import { createTestPki, LISTENERS, NEXUS_ID, SUPERUSER_ID, startTestServer, type Listener, type TestPki, type TestServer } from "../support/test-server.js";
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

  it("after a reload both listeners still refuse TLS 1.1, even where the process default was lowered (node --tls-min-v1.0)", async () => {
    const defaults = { minVersion: tls.DEFAULT_MIN_VERSION, ciphers: tls.DEFAULT_CIPHERS };
    // What `node --tls-min-v1.0 --tls-cipher-list=DEFAULT@SECLEVEL=0` does:
    // a context built without an explicit floor would accept TLS 1.0 and 1.1.
    tls.DEFAULT_MIN_VERSION = "TLSv1";
    tls.DEFAULT_CIPHERS = "DEFAULT@SECLEVEL=0";
    try {
      for (const listener of LISTENERS) expect(await legacyTlsHandshake(portOf(listener), server.pki), `${listener}, before the reload`).to.match(PROTOCOL_REFUSED);
      const next = await issueNexusLeaf();
      await install(next);
      await expectPresentedEverywhere(next);
      serving = next;
      for (const listener of LISTENERS) expect(await legacyTlsHandshake(portOf(listener), server.pki), `${listener}, after the reload`).to.match(PROTOCOL_REFUSED);
    } finally {
      tls.DEFAULT_MIN_VERSION = defaults.minVersion;
      tls.DEFAULT_CIPHERS = defaults.ciphers;
    }
  });

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

describe("certificate reload from a Kubernetes volume (kubelet / SPIFFE CSI driver layout)", function () {
  this.timeout(60_000);
  let pki: TestPki;
  let volume: string;
  let server: TestServer;
  let generation = 0;
  const volumeLogs: string[] = [];

  /**
   * Publishes one generation of files the way the kubelet's atomic writer does:
   * a fresh `..<timestamp>` folder, a `..data_tmp` symlink to it renamed over
   * `..data`, then the old folder removed. The user-visible names
   * (svid.pem -> ..data/svid.pem) never change, so no event names them.
   */
  async function publish(files: Record<string, string>): Promise<void> {
    const previous = generation > 0 ? `..2026_12_03_00_00_0${generation}` : undefined;
    const next = `..2026_12_03_00_00_0${++generation}`;
    await writePkiFiles(path.join(volume, next), files);
    await symlink(next, path.join(volume, "..data_tmp"));
    await rename(path.join(volume, "..data_tmp"), path.join(volume, "..data"));
    if (previous) await rm(path.join(volume, previous), { recursive: true });
  }

  before(async () => {
    pki = await createTestPki();
    volume = await mkdtemp(path.join(tmpdir(), "nexus-test-volume-"));
    await publish({ "svid.pem": pki.nexus.certPem, "svid_key.pem": pki.nexus.keyPem, "bundle.pem": pki.ca.certPem });
    for (const name of ["svid.pem", "svid_key.pem", "bundle.pem"]) await symlink(`..data/${name}`, path.join(volume, name));
    server = await startTestServer({
      pki,
      logger: createLogger("debug", (line) => volumeLogs.push(line)),
      env: {
        NEXUS_TLS_CERT: path.join(volume, "svid.pem"),
        NEXUS_TLS_KEY: path.join(volume, "svid_key.pem"),
        NEXUS_TRUST_BUNDLE: path.join(volume, "bundle.pem"),
      },
    });
  });

  after(async () => {
    await server?.stop();
    await pki?.remove();
    if (volume) await rm(volume, { recursive: true, force: true });
  });

  it("a `..data` symlink swap to a new SVID is picked up by new connections on both listeners", async () => {
    const next = await pki.ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
    await publish({ "svid.pem": next.certPem, "svid_key.pem": next.keyPem, "bundle.pem": pki.ca.certPem });
    const expected = new X509Certificate(next.certPem).serialNumber;
    for (const port of [server.nexus.grpcPort, server.nexus.connectPort]) {
      await eventually(async () => expect(await presentedSerialTo(port, pki)).to.equal(expected));
    }
    const result = await server.client("grpc").call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
    expect(result.code, result.message).to.equal("OK");
  });

  it("a folder that never stops changing does not hold a new SVID back (the debounce waits at most ten periods)", async () => {
    let writes = 0;
    const churn = setInterval(() => void writeFile(path.join(volume, "unrelated.log"), `${++writes}\n`), 20);
    try {
      const next = await pki.ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
      await publish({ "svid.pem": next.certPem, "svid_key.pem": next.keyPem, "bundle.pem": pki.ca.certPem });
      const expected = new X509Certificate(next.certPem).serialNumber;
      // Debounce 100 ms in tests: at most 1 s, so 5 s is generous; a timer reset by every event never fires.
      await eventually(async () => expect(await presentedSerialTo(server.nexus.grpcPort, pki)).to.equal(expected), { timeoutMs: 5000 });
    } finally {
      clearInterval(churn);
    }
  });

  it("a refused generation is logged once, not again at every unrelated change in the folder", async () => {
    const before = volumeLogs.length;
    const current = await pki.ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
    const other = await pki.ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
    await publish({ "svid.pem": current.certPem, "svid_key.pem": other.keyPem, "bundle.pem": pki.ca.certPem });
    let writes = 0;
    const churn = setInterval(() => void writeFile(path.join(volume, "unrelated.log"), `${++writes}\n`), 20);
    try {
      await sleep(2500); // two and more forced re-reads at the 1 s maximum wait
    } finally {
      clearInterval(churn);
    }
    const refusals = volumeLogs.slice(before).filter((line) => line.includes("certificate reload refused"));
    expect(refusals).to.have.length(1);
    expect(refusals[0]).to.include("does not match");
  });
});

/** The serial number of the certificate a new mTLS connection to `port` is shown. */
function presentedSerialTo(port: number, pki: TestPki): Promise<string> {
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
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.once("error", reject);
  });
}

/** The server's answer to a client that offers no version it accepts. */
const PROTOCOL_REFUSED = /^refused ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION$/;

/**
 * An mTLS handshake (superuser certificate, so only the version can fail it)
 * offering at most TLS 1.1 with the ciphers it needs allowed: resolves
 * "accepted TLSv1.1" or "refused <code>".
 */
function legacyTlsHandshake(port: number, pki: TestPki): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      cert: pki.superuser.certPem,
      key: pki.superuser.keyPem,
      minVersion: "TLSv1",
      maxVersion: "TLSv1.1",
      ciphers: "DEFAULT@SECLEVEL=0",
      rejectUnauthorized: false,
    });
    socket.once("secureConnect", () => {
      resolve(`accepted ${socket.getProtocol()}`);
      socket.destroy();
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(`refused ${err.code ?? err.message}`));
  });
}

/** GetStatus over the Connect protocol (JSON) on an existing HTTP/2 session; resolves with the body. */
async function connectGetStatus(session: http2.ClientHttp2Session): Promise<string> {
  const { status, body } = await connectJson(session, "/spike.nexus.v1.OperatorService/GetStatus", "{}");
  if (status !== 200) throw new Error(`HTTP ${status}: ${body}`);
  return body;
}
