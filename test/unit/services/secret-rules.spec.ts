import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { decodePageToken, encodeData, encodePageToken, pageSize, validatePath, validatePrefix } from "../../../src/services/secret-rules.js";

describe("secret request rules", () => {
  const validPaths = ["a", "apps/billing/db", "A-Z_0.9/x", "a".repeat(255)];
  for (const p of validPaths) it(`accepts the path ${p.slice(0, 40)}`, () => expect(validatePath(p)).to.equal(p));

  const badPaths: Array<[string, string]> = [
    ["", "empty"],
    ["a".repeat(256), "at most 255"],
    ["/a", 'start or end with "/"'],
    ["a/", 'start or end with "/"'],
    ["a//b", "empty segment"],
    ["a/./b", '"." or ".."'],
    ["a/../b", '"." or ".."'],
    ["a b", "segments may contain only"],
    ["ä", "segments may contain only"],
  ];
  for (const [p, rule] of badPaths) {
    it(`refuses ${JSON.stringify(p.slice(0, 20))} as INVALID_ARGUMENT naming the rule (${rule})`, () => {
      expect(() => validatePath(p)).to.throw(NexusError).that.satisfies((e: NexusError) => e.code === "invalid_argument" && e.message.includes(rule));
    });
  }

  it("refuses a prefix with characters no path can hold", () => {
    expect(() => validatePrefix("a b")).to.throw(NexusError);
    expect(validatePrefix("apps/bil")).to.equal("apps/bil");
  });

  it("refuses empty data and data over the limit without echoing it", () => {
    expect(() => encodeData({}, 100)).to.throw(NexusError).with.property("code", "invalid_argument");
    const err = (() => {
      try {
        encodeData({ k: "s3cret-".repeat(50) }, 100);
      } catch (e) {
        return e as NexusError;
      }
    })();
    expect(err?.code).to.equal("resource_exhausted");
    expect(err?.message).not.to.include("s3cret");
  });

  it("page sizes default to 100 and stop at 1000", () => {
    expect(pageSize(0)).to.equal(100);
    expect(pageSize(1000)).to.equal(1000);
    expect(() => pageSize(1001)).to.throw(NexusError);
    expect(() => pageSize(-1)).to.throw(NexusError);
  });

  describe("ListSecrets page tokens", () => {
    const key = randomBytes(32);
    const alice = { caller: "spiffe://spike.ist/workload/alice", prefix: "apps/" };
    const refused = (fn: () => unknown) =>
      expect(fn).to.throw(NexusError).that.satisfies((e: NexusError) => e.code === "invalid_argument" && e.reason === "INVALID_PAGE_TOKEN");

    it("round-trips the resume point for the caller and prefix it was issued to; an empty token is the first page", () => {
      expect(decodePageToken(key, encodePageToken(key, alice, "apps/payroll/db"), alice)).to.equal("apps/payroll/db");
      expect(decodePageToken(key, "", alice)).to.equal("");
    });

    it("shows neither the resume point nor its length", () => {
      const short = encodePageToken(key, alice, "apps/payroll/a");
      const long = encodePageToken(key, alice, `apps/payroll/${"x".repeat(240)}`);
      expect(short.length).to.equal(long.length);
      for (const t of [short, long]) {
        expect(Buffer.from(t, "base64url").toString("latin1")).not.to.include("payroll");
      }
    });

    it("is refused as INVALID_PAGE_TOKEN with another prefix, for another caller, under another key, altered, or forged in the old clear format", () => {
      const token = encodePageToken(key, alice, "apps/payroll/db");
      refused(() => decodePageToken(key, token, { ...alice, prefix: "apps/p" }));
      refused(() => decodePageToken(key, token, { ...alice, caller: "spiffe://spike.ist/workload/bob" }));
      refused(() => decodePageToken(randomBytes(32), token, alice));
      const bytes = Buffer.from(token, "base64url");
      bytes[bytes.length - 20] ^= 1;
      refused(() => decodePageToken(key, bytes.toString("base64url"), alice));
      refused(() => decodePageToken(key, Buffer.from(JSON.stringify({ v: 1, p: "apps/", a: "apps/payroll/m" })).toString("base64url"), alice));
      refused(() => decodePageToken(key, "not-a-token!", alice));
    });
  });
});
