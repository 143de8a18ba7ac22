import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { TrustBundleSet } from "../../../src/identity/trust-bundle.js";
import { EC, generateKeys, KeyUsageFlags, makeCert } from "./svid-fixtures.js";

describe("TrustBundleSet", () => {
  let caA: string;
  let caB: string;

  before(async () => {
    const ca = { uris: [], ca: true, keyUsage: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign };
    caA = (await makeCert(await generateKeys(EC), ca)).toString("pem");
    caB = (await makeCert(await generateKeys(EC), ca)).toString("pem");
  });

  it("returns the authorities of a single trust domain and nothing for others", () => {
    const set = TrustBundleSet.single("example.org", caA);
    expect(set.trustDomains).to.deep.equal(["example.org"]);
    expect(set.authoritiesFor("example.org")).to.contain(caA.trim());
    expect(set.authoritiesFor("other.org")).to.equal(undefined);
  });

  it("keeps every certificate of a concatenated bundle and drops text around them", () => {
    const set = TrustBundleSet.single("example.org", `# root 1\n${caA}\n# root 2\n${caB}`);
    const pem = set.authoritiesFor("example.org") ?? "";
    expect(pem.match(/BEGIN CERTIFICATE/g)).to.have.length(2);
    expect(pem).not.to.contain("# root");
  });

  it("concatenates the authorities of every trust domain for the TLS ca option", () => {
    const set = new TrustBundleSet(
      new Map([
        ["example.org", caA],
        ["partner.example", caB],
      ]),
    );
    expect(set.trustDomains).to.have.members(["example.org", "partner.example"]);
    const all = set.allAuthoritiesPem();
    expect(all).to.contain(caA.trim()).and.to.contain(caB.trim());
    expect(all.match(/BEGIN CERTIFICATE/g)).to.have.length(2);
  });

  it("is not changed by later changes to the map it was built from", () => {
    const map = new Map([["example.org", caA]]);
    const set = new TrustBundleSet(map);
    map.set("evil.org", caB);
    expect(set.trustDomains).to.deep.equal(["example.org"]);
  });

  const invalid: Array<[string, () => TrustBundleSet, string]> = [
    ["a bundle with no certificate", () => TrustBundleSet.single("example.org", "not a pem"), "example.org"],
    [
      "a bundle with an unparsable certificate",
      () =>
        TrustBundleSet.single("example.org", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
      "example.org",
    ],
    ["an invalid trust domain name", () => TrustBundleSet.single("Example.org", caA), "lowercase"],
    ["an empty set", () => new TrustBundleSet(new Map()), "at least one"],
  ];
  for (const [what, build, mention] of invalid) {
    it(`rejects ${what} as INVALID_ARGUMENT`, () => {
      let err: unknown;
      try {
        build();
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(NexusError);
      expect((err as NexusError).code).to.equal("invalid_argument");
      expect((err as NexusError).message).to.contain(mention);
    });
  }
});
