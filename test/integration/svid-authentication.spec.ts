// Who may connect: every client certificate is checked on both mTLS listeners.
// Bad SVIDs fail the handshake (wrong CA, expired) or are UNAUTHENTICATED (the
// chain is fine but the leaf is not a valid SVID of our trust domain).

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { createAuthority, type Authority, type IssuedCert } from "../support/test-pki.js";
import { LISTENERS, NEXUS_ID, SUPERUSER_ID, TRUST_DOMAIN, WORKLOAD_ID, startTestServer, type TestServer } from "../support/test-server.js";

// How each client library reports a connection the TLS handshake refused.
const HANDSHAKE_FAILED = ["UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"];
const DAY = 86_400_000;

describe("SVID authentication on the mTLS listeners", function () {
  this.timeout(60_000);
  let server: TestServer;
  let foreignCa: Authority;
  const bad: Array<{ name: string; make: () => Promise<IssuedCert>; expect: "handshake" | "UNAUTHENTICATED" }> = [];
  const good: Array<{ name: string; make: () => Promise<IssuedCert>; id: string }> = [];

  before(async () => {
    server = await startTestServer();
    foreignCa = await createAuthority({ trustDomain: "other.org" });
    const ca = server.pki.ca;
    const id = (p: string) => `spiffe://${TRUST_DOMAIN}${p}`;
    bad.push(
      { name: "another CA", make: () => foreignCa.issue({ uris: ["spiffe://other.org/workload/a"] }), expect: "handshake" },
      { name: "a spike.ist ID signed by another CA", make: () => foreignCa.issue({ uris: [SUPERUSER_ID] }), expect: "handshake" },
      { name: "no URI SAN", make: () => ca.issue({ uris: [], dns: ["workload.local"] }), expect: "UNAUTHENTICATED" },
      { name: "two URI SANs", make: () => ca.issue({ uris: [id("/a"), id("/b")] }), expect: "UNAUTHENTICATED" },
      { name: "a CA certificate as client", make: () => ca.issue({ uris: [id("/a")], ca: true, keyUsage: ["digitalSignature", "keyCertSign"] }), expect: "UNAUTHENTICATED" },
      { name: "CA:false but keyCertSign set", make: () => ca.issue({ uris: [id("/a")], keyUsage: ["digitalSignature", "keyCertSign"] }), expect: "UNAUTHENTICATED" },
      { name: "an uppercase trust domain", make: () => ca.issue({ uris: ["spiffe://SPIKE.ist/workload/a"] }), expect: "UNAUTHENTICATED" },
      { name: "a port in the ID", make: () => ca.issue({ uris: ["spiffe://spike.ist:8443/workload/a"] }), expect: "UNAUTHENTICATED" },
      { name: 'a ".." segment', make: () => ca.issue({ uris: [id("/workload/../superuser")] }), expect: "UNAUTHENTICATED" },
      { name: "an ID over 2,048 bytes", make: () => ca.issue({ uris: [id("/" + "a".repeat(2100))] }), expect: "UNAUTHENTICATED" },
      { name: "an ID in another trust domain", make: () => ca.issue({ uris: ["spiffe://other.org/workload/a"] }), expect: "UNAUTHENTICATED" },
      { name: "an expired certificate", make: () => ca.issue({ uris: [id("/a")], notBefore: new Date(Date.now() - 3 * DAY), notAfter: new Date(Date.now() - DAY) }), expect: "handshake" },
      { name: "a certificate not yet valid", make: () => ca.issue({ uris: [id("/a")], notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 3 * DAY) }), expect: "handshake" },
    );
    good.push(
      { name: "an EC P-256 SVID", make: () => ca.issue({ uris: [WORKLOAD_ID], alg: "ec" }), id: WORKLOAD_ID },
      { name: "an RSA SVID", make: () => ca.issue({ uris: [SUPERUSER_ID], alg: "rsa" }), id: SUPERUSER_ID },
      {
        name: "a leaf issued through an intermediate CA",
        make: async () => {
          const intermediate = await ca.intermediate({ alg: "ec" });
          const leaf = await intermediate.issue({ uris: [id("/workload/chained")] });
          return { ...leaf, certPem: leaf.certPem + intermediate.certPem };
        },
        id: id("/workload/chained"),
      },
    );
  });

  after(async () => server?.stop());

  for (const listener of LISTENERS) {
    describe(`on the ${listener} listener`, () => {
      it("refuses each bad client certificate", async () => {
        for (const c of bad) {
          const client = server.client(listener, await c.make());
          const result = await client.call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
          const allowed = c.expect === "handshake" ? HANDSHAKE_FAILED : ["UNAUTHENTICATED"];
          expect(allowed, `${c.name}: got ${result.code}`).to.include(result.code);
          client.close();
        }
      });

      it("accepts RSA, EC P-256 and intermediate-issued SVIDs and reports the caller's ID", async () => {
        for (const c of good) {
          const client = server.client(listener, await c.make());
          const result = await client.call(OperatorService.method.getStatus, {});
          expect(result.code, c.name).to.equal("OK");
          expect(result.response?.callerSpiffeId, c.name).to.equal(c.id);
          client.close();
        }
      });

      it("GetStatus reports version, seal state and trust domain", async () => {
        const result = await server.client(listener).call(OperatorService.method.getStatus, {});
        expect(result.code).to.equal("OK");
        expect(result.response).to.include({ trustDomain: TRUST_DOMAIN, initialized: false, sealed: true, callerSpiffeId: SUPERUSER_ID });
        expect(result.response?.version).to.match(/^\d+\.\d+\.\d+/);
      });

      it("our client refuses a server that presents a workload SVID instead of the nexus one", async () => {
        const client = server.client(listener, server.pki.superuser, WORKLOAD_ID);
        const result = await client.call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
        expect(result.code).to.be.oneOf(HANDSHAKE_FAILED);
        const ok = await server.client(listener, server.pki.superuser, NEXUS_ID).call(OperatorService.method.getStatus, {});
        expect(ok.code).to.equal("OK");
      });
    });
  }
});

describe("a server whose own certificate is a workload SVID", function () {
  this.timeout(30_000);
  it("is refused by our clients on both listeners", async () => {
    const { createTestPki } = await import("../support/test-server.js");
    const { writePkiFiles } = await import("../support/test-pki.js");
    const pki = await createTestPki();
    await writePkiFiles(pki.dir, { "svid.pem": pki.workload.certPem, "svid_key.pem": pki.workload.keyPem });
    const server = await startTestServer({ pki });
    try {
      for (const listener of LISTENERS) {
        const result = await server.client(listener).call(OperatorService.method.getStatus, {}, { deadlineMs: 5000 });
        expect(result.code, listener).to.be.oneOf(HANDSHAKE_FAILED);
        expect(result.message, listener).to.include(WORKLOAD_ID);
      }
    } finally {
      await server.stop();
      await pki.remove();
    }
  });
});
