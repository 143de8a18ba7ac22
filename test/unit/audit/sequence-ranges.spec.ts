// The given-up sequence numbers a checkpoint carries: added in any order,
// kept as few inclusive ranges, and read back from the stored pairs.

import { expect } from "chai";
import fc from "fast-check";
import { SequenceRanges } from "../../../src/audit/sequence-ranges.js";

describe("SequenceRanges", () => {
  it("merges neighbours into ranges whatever the order they arrive in", () => {
    const r = new SequenceRanges();
    for (const n of [5, 3, 4, 10, 12, 11, 1, 4]) r.add(n);
    expect(r.pairs()).to.deep.equal([1, 1, 3, 5, 10, 12]);
    expect(r.pairs(4, 11), "clipped to a window").to.deep.equal([4, 5, 10, 11]);
  });

  it("holds exactly the numbers added, and survives its stored pairs (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 200 }), { maxLength: 100 }), (numbers) => {
        const r = new SequenceRanges();
        numbers.forEach((n) => r.add(n));
        const back = SequenceRanges.fromPairs(r.pairs());
        for (let n = 0; n <= 201; n++) {
          expect(r.has(n), `${n}`).to.equal(numbers.includes(n));
          expect(back.has(n), `${n} after fromPairs`).to.equal(numbers.includes(n));
        }
      }),
    );
  });
});
