import { X509Certificate } from "node:crypto";
import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { PeerAuthenticator } from "../../../src/identity/peer-authenticator.js";
import { EC, generateKeys, KeyUsageFlags, makeLeafDer } from "./svid-fixtures.js";

// Not a certificate: if the authenticator parses this, the cache was bypassed.
const GARBAGE = new Uint8Array([1, 2, 3]);
const NOT_AFTER = Date.parse("2030-01-01T00:00:00Z");

describe("PeerAuthenticator", () => {
  let workload: Uint8Array;
  let other: Uint8Array;
  let third: Uint8Array;
  let foreign: Uint8Array;
  let ca: Uint8Array;

  before(async () => {
    const keys = await generateKeys(EC);
    const notAfter = new Date(NOT_AFTER);
    workload = await makeLeafDer(keys, { uris: ["spiffe://example.org/workload"], notAfter });
    other = await makeLeafDer(keys, { uris: ["spiffe://example.org/other"], notAfter });
    third = await makeLeafDer(keys, { uris: ["spiffe://example.org/third"], notAfter });
    foreign = await makeLeafDer(keys, { uris: ["spiffe://evil.org/workload"], notAfter });
    ca = await makeLeafDer(keys, { ca: true, keyUsage: KeyUsageFlags.keyCertSign, notAfter });
  });

  const before2030 = () => NOT_AFTER - 1;
  const authenticator = (cacheSize?: number, now = before2030) =>
    new PeerAuthenticator({ trustDomains: ["example.org"], cacheSize, now });

  it("returns the SPIFFE ID of a valid SVID from a trusted trust domain", () => {
    expect(authenticator().authenticate({ raw: workload }).toString()).to.equal("spiffe://example.org/workload");
  });

  it("serves a second call with the same fingerprint from the cache without re-parsing", () => {
    const auth = authenticator();
    auth.authenticate({ raw: workload, fingerprint256: "AA:BB" });
    expect(auth.authenticate({ raw: GARBAGE, fingerprint256: "AA:BB" }).path).to.equal("/workload");
  });

  it("keys the cache by the SHA-256 of raw, in node's fingerprint256 format, when no fingerprint is given", () => {
    const auth = authenticator();
    auth.authenticate({ raw: workload });
    const fingerprint256 = new X509Certificate(workload).fingerprint256;
    expect(auth.authenticate({ raw: GARBAGE, fingerprint256 }).path).to.equal("/workload");
  });

  it("caches a failure too", () => {
    const auth = authenticator();
    expect(() => auth.authenticate({ raw: GARBAGE, fingerprint256: "AA:BB" })).to.throw(NexusError);
    expect(() => auth.authenticate({ raw: workload, fingerprint256: "AA:BB" })).to.throw(/not valid DER/);
  });

  it("evicts the least recently used certificate when the cache is full", () => {
    const auth = authenticator(2);
    auth.authenticate({ raw: workload, fingerprint256: "01" });
    auth.authenticate({ raw: other, fingerprint256: "02" });
    auth.authenticate({ raw: GARBAGE, fingerprint256: "01" }); // hit: 01 is now the most recent
    auth.authenticate({ raw: third, fingerprint256: "03" }); // evicts 02
    expect(auth.authenticate({ raw: GARBAGE, fingerprint256: "01" }).path).to.equal("/workload");
    expect(() => auth.authenticate({ raw: GARBAGE, fingerprint256: "02" })).to.throw(/not valid DER/);
  });

  it("rejects an SVID that has expired since it was cached as SVID_EXPIRED", () => {
    let now = NOT_AFTER - 1;
    const auth = authenticator(undefined, () => now);
    auth.authenticate({ raw: workload, fingerprint256: "AA" });
    now = NOT_AFTER;
    expectUnauthenticated(() => auth.authenticate({ raw: workload, fingerprint256: "AA" }), "SVID_EXPIRED");
  });

  it("rejects an ID from a trust domain it does not trust as FOREIGN_TRUST_DOMAIN", () => {
    const err = expectUnauthenticated(() => authenticator().authenticate({ raw: foreign }), "FOREIGN_TRUST_DOMAIN");
    expect(err.message).to.equal(
      "SPIFFE ID spiffe://evil.org/workload is not in a trust domain this server trusts",
    );
  });

  it("rejects a certificate that is not an SVID as INVALID_SVID", () => {
    expectUnauthenticated(() => authenticator().authenticate({ raw: ca }), "INVALID_SVID");
  });

  it("rejects a missing client certificate as NO_CLIENT_CERTIFICATE", () => {
    expectUnauthenticated(() => authenticator().authenticate({ raw: new Uint8Array() }), "NO_CLIENT_CERTIFICATE");
  });

  it("refuses a misconfigured trust domain or cache size", () => {
    expect(() => new PeerAuthenticator({ trustDomains: ["Example.org"] })).to.throw(/lowercase/);
    expect(() => new PeerAuthenticator({ trustDomains: ["example.org"], cacheSize: 0 })).to.throw(/cacheSize/);
  });
});

function expectUnauthenticated(fn: () => unknown, reason: string): NexusError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(NexusError);
    expect((err as NexusError).code).to.equal("unauthenticated");
    expect((err as NexusError).reason).to.equal(reason);
    return err as NexusError;
  }
  expect.fail(`expected UNAUTHENTICATED ${reason}`);
}
