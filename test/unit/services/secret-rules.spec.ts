import { expect } from "chai";
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

  it("page tokens are tied to their prefix and refuse garbage", () => {
    const t = encodePageToken("apps/", "apps/x");
    expect(decodePageToken(t, "apps/")).to.equal("apps/x");
    expect(() => decodePageToken(t, "other/")).to.throw(NexusError);
    expect(() => decodePageToken("not-a-token!", "apps/")).to.throw(NexusError);
    expect(decodePageToken("", "apps/")).to.equal("");
  });
});
