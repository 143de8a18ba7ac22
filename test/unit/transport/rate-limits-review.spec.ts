// Review of issue 17 §6 (adversarial): when the bucket map is full and no
// bucket has refilled, the sweep drops "the oldest half" in insertion order,
// which is where a long-running noisy caller's (empty) bucket sits. New
// identities arriving fast enough reset the noisy caller to a full burst.

import { expect } from "chai";
import { TokenBuckets } from "../../../src/transport/rate-limits.js";

describe("TokenBuckets sweep (review)", () => {
  it("a full map never forgets a caller whose bucket is empty: new callers do not hand the noisy one a fresh burst", () => {
    let now = 1_000_000;
    const b = new TokenBuckets({ perSecond: 1, burst: 1 }, 4, () => now);
    expect(b.take("noisy")).to.equal(0);
    expect(b.take("noisy")).to.be.greaterThan(0); // empty
    for (const k of ["a", "b", "c", "d"]) b.take(k); // the map fills; nothing has refilled
    now += 10;
    expect(b.take("noisy"), "noisy got a fresh bucket after the sweep").to.be.greaterThan(0);
  });
});
