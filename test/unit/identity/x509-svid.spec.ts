import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { inspectSvid, spiffeIdFromSvid } from "../../../src/identity/x509-svid.js";
import { type CertOptions, EC, generateKeys, KeyUsageFlags, makeLeafDer, RSA } from "./svid-fixtures.js";

type KeyPair = Awaited<ReturnType<typeof generateKeys>>;

describe("X.509-SVID leaf validation", () => {
  const keys: Record<"RSA" | "EC", KeyPair> = {} as Record<"RSA" | "EC", KeyPair>;

  before(async () => {
    keys.RSA = await generateKeys(RSA);
    keys.EC = await generateKeys(EC);
  });

  for (const alg of ["RSA", "EC"] as const) {
    it(`returns the SPIFFE ID of a valid ${alg} SVID`, async () => {
      const der = await makeLeafDer(keys[alg], { uris: ["spiffe://example.org/ns/prod/sa/api"] });
      expect(spiffeIdFromSvid(der).toString()).to.equal("spiffe://example.org/ns/prod/sa/api");
    });
  }

  it("reports notAfter in epoch milliseconds", async () => {
    const notAfter = new Date("2031-02-03T04:05:06Z");
    const info = inspectSvid(await makeLeafDer(keys.EC, { notAfter }));
    expect(info.notAfterMs).to.equal(notAfter.getTime());
    expect(info.id.toString()).to.equal("spiffe://example.org/workload");
  });

  it("accepts DNS SANs alongside the one URI SAN", async () => {
    const der = await makeLeafDer(keys.EC, { uris: ["spiffe://example.org/web"], dnsNames: ["web.example.org"] });
    expect(spiffeIdFromSvid(der).path).to.equal("/web");
  });

  it("accepts basicConstraints cA false with digitalSignature and keyEncipherment", async () => {
    const der = await makeLeafDer(keys.RSA, {
      ca: false,
      keyUsage: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyEncipherment,
    });
    expect(spiffeIdFromSvid(der).trustDomain).to.equal("example.org");
  });

  it("reads DER from a Buffer that is a view into a larger allocation", async () => {
    const der = await makeLeafDer(keys.EC);
    const pooled = Buffer.concat([Buffer.from("junk"), der]).subarray(4);
    expect(spiffeIdFromSvid(pooled).toString()).to.equal("spiffe://example.org/workload");
  });

  const invalid: Array<[string, "RSA" | "EC", CertOptions, string]> = [
    ["has no URI SAN", "EC", { uris: [], dnsNames: ["web.example.org"] }, "exactly one URI SAN (found 0)"],
    ["has no SAN extension at all", "RSA", { uris: [] }, "exactly one URI SAN (found 0)"],
    [
      "has two URI SANs",
      "EC",
      { uris: ["spiffe://example.org/a", "spiffe://example.org/b"] },
      "exactly one URI SAN (found 2)",
    ],
    ["is a CA (cA true)", "RSA", { ca: true }, "must not be a CA"],
    [
      "sets keyCertSign with cA false",
      "EC",
      { ca: false, keyUsage: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign },
      "must not include keyCertSign",
    ],
    [
      "sets cRLSign",
      "RSA",
      { keyUsage: KeyUsageFlags.digitalSignature | KeyUsageFlags.cRLSign },
      "must not include cRLSign",
    ],
    ["lacks digitalSignature", "RSA", { keyUsage: KeyUsageFlags.keyEncipherment }, "must include digitalSignature"],
    ["has no keyUsage extension", "EC", { keyUsage: null }, "must have a keyUsage extension"],
    ["has an upper-case trust domain", "EC", { uris: ["spiffe://Example.org/workload"] }, "must be lowercase"],
    ["has a port in its ID", "RSA", { uris: ["spiffe://example.org:8443/workload"] }, "must not contain a port"],
    ["has a .. segment in its ID", "EC", { uris: ["spiffe://example.org/a/../admin"] }, ". or .. segments"],
    [
      "has an ID over 2048 bytes",
      "EC",
      { uris: ["spiffe://example.org/" + "a".repeat(2100)] },
      "must be at most 2048 bytes",
    ],
    ["has a non-SPIFFE URI SAN", "RSA", { uris: ["https://example.org/workload"] }, "must start with spiffe://"],
  ];
  for (const [what, alg, opts, rule] of invalid) {
    it(`rejects an ${alg} leaf that ${what} as UNAUTHENTICATED INVALID_SVID`, async () => {
      const der = await makeLeafDer(keys[alg], opts);
      const err = caught(() => spiffeIdFromSvid(der));
      expect(err.code).to.equal("unauthenticated");
      expect(err.reason).to.equal("INVALID_SVID");
      expect(err.message).to.contain(rule);
    });
  }

  it("rejects bytes that are not a DER certificate as INVALID_SVID", () => {
    const err = caught(() => spiffeIdFromSvid(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01])));
    expect(err.reason).to.equal("INVALID_SVID");
    expect(err.message).to.contain("not valid DER");
  });
});

function caught(fn: () => unknown): NexusError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(NexusError);
    return err as NexusError;
  }
  expect.fail("expected a NexusError");
}
