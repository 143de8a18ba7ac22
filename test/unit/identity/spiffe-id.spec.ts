import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { SpiffeId, parseSpiffeId, parseTrustDomain } from "../../../src/identity/spiffe-id.js";

function caught(fn: () => unknown): NexusError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(NexusError);
    return err as NexusError;
  }
  expect.fail("expected a NexusError");
}

describe("parseSpiffeId", () => {
  const valid: Array<[string, string, string]> = [
    ["spiffe://example.org/workload", "example.org", "/workload"],
    ["spiffe://example.org/ns/prod/sa/api", "example.org", "/ns/prod/sa/api"],
    ["spiffe://my-td_1.example.org/A-b_c.d/..x/x..", "my-td_1.example.org", "/A-b_c.d/..x/x.."],
    ["spiffe://td/" + "a".repeat(2048 - "spiffe://td/".length), "td", "/" + "a".repeat(2048 - "spiffe://td/".length)],
  ];
  for (const [uri, trustDomain, path] of valid) {
    it(`accepts ${uri.length > 80 ? `a ${uri.length}-byte ID` : uri}`, () => {
      const id = parseSpiffeId(uri);
      expect(id.trustDomain).to.equal(trustDomain);
      expect(id.path).to.equal(path);
      expect(id.toString()).to.equal(uri);
    });
  }

  const invalid: Array<[string, string, string]> = [
    ["an empty string", "", "must start with spiffe://"],
    ["another scheme", "https://example.org/workload", "must start with spiffe://"],
    ["an upper-case scheme", "SPIFFE://example.org/workload", "must start with spiffe://"],
    ["a scheme with one slash", "spiffe:/example.org/workload", "must start with spiffe://"],
    ["an empty trust domain", "spiffe:///workload", "trust domain must not be empty"],
    ["an upper-case trust domain", "spiffe://Example.org/workload", "trust domain must be lowercase [a-z0-9.-_]"],
    ["a port", "spiffe://example.org:8443/workload", "trust domain must not contain a port"],
    ["userinfo", "spiffe://admin@example.org/workload", "trust domain must not contain userinfo"],
    ["a trust domain with other characters", "spiffe://exa+mple.org/workload", "trust domain must be lowercase"],
    ["no path", "spiffe://example.org", "must have a path"],
    ["a root path", "spiffe://example.org/", "must not contain empty segments"],
    ["an empty segment", "spiffe://example.org/a//b", "must not contain empty segments"],
    ["a trailing slash", "spiffe://example.org/a/", "must not contain empty segments"],
    ["a . segment", "spiffe://example.org/a/./b", "must not contain . or .. segments"],
    ["a .. segment", "spiffe://example.org/a/../b", "must not contain . or .. segments"],
    ["a query", "spiffe://example.org/workload?x=1", "must not contain a query"],
    ["a fragment", "spiffe://example.org/workload#x", "must not contain a fragment"],
    ["percent-encoding", "spiffe://example.org/work%6Coad", "must not contain percent-encoding"],
    ["a space in a segment", "spiffe://example.org/work load", "path segments may only contain [A-Za-z0-9.-_]"],
    ["non-ASCII in a segment", "spiffe://example.org/wörkload", "path segments may only contain"],
    ["more than 2048 bytes", "spiffe://example.org/" + "a".repeat(2048), "must be at most 2048 bytes"],
  ];
  for (const [what, uri, rule] of invalid) {
    it(`rejects ${what} as UNAUTHENTICATED INVALID_SPIFFE_ID naming the rule`, () => {
      const err = caught(() => parseSpiffeId(uri));
      expect(err.code).to.equal("unauthenticated");
      expect(err.reason).to.equal("INVALID_SPIFFE_ID");
      expect(err.message).to.contain(rule);
    });
  }

  it("counts the 2048-byte limit in UTF-8 bytes, not characters", () => {
    const uri = "spiffe://example.org/" + "é".repeat(1100);
    expect(caught(() => parseSpiffeId(uri)).message).to.contain("at most 2048 bytes");
  });

  it("does not echo an oversized ID in the error message", () => {
    const err = caught(() => parseSpiffeId("spiffe://example.org/" + "x".repeat(5000)));
    expect(err.message).not.to.contain("xxxxxxxx");
    expect(err.message.length).to.be.below(200);
  });
});

describe("SpiffeId", () => {
  it("is a member of its own trust domain only", () => {
    const id = parseSpiffeId("spiffe://example.org/workload");
    expect(id.memberOf("example.org")).to.equal(true);
    expect(id.memberOf("other.org")).to.equal(false);
    expect(id.memberOf("sub.example.org")).to.equal(false);
  });

  it("is immutable", () => {
    const id = parseSpiffeId("spiffe://example.org/workload");
    expect(() => ((id as { path: string }).path = "/admin")).to.throw(TypeError);
    expect(id.path).to.equal("/workload");
  });

  it("cannot be constructed without the parser", () => {
    const Ctor = SpiffeId as unknown as new (token: symbol, td: string, path: string) => SpiffeId;
    expect(() => new Ctor(Symbol("parsed SPIFFE ID"), "Example.org", "//")).to.throw(TypeError);
  });
});

describe("parseTrustDomain", () => {
  it("accepts a bare lowercase name", () => {
    expect(parseTrustDomain("prod.example-1_a.org")).to.equal("prod.example-1_a.org");
  });

  const invalid: Array<[string, string, string]> = [
    ["an empty name", "", "must not be empty"],
    ["an upper-case name", "Example.org", "must be lowercase"],
    ["a SPIFFE ID", "spiffe://example.org", "not a SPIFFE ID"],
    ["a port", "example.org:443", "must not contain a port"],
    ["a path", "example.org/workload", "must be lowercase [a-z0-9.-_]"],
  ];
  for (const [what, name, rule] of invalid) {
    it(`rejects ${what} as INVALID_ARGUMENT`, () => {
      const err = caught(() => parseTrustDomain(name));
      expect(err.code).to.equal("invalid_argument");
      expect(err.reason).to.equal("INVALID_TRUST_DOMAIN");
      expect(err.message).to.contain(rule);
    });
  }
});
