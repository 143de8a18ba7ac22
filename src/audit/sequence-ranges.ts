// A set of sequence numbers kept as sorted, disjoint, inclusive ranges: the
// numbers a replica gave up. During a database outage every call gives up its
// number, mostly one after another, so ranges stay few where a Set would hold
// one entry per failed call. Stored in a checkpoint as flat pairs
// [first, last, first, last, …].

export class SequenceRanges {
  private readonly ranges: Array<[number, number]> = [];

  static fromPairs(pairs: readonly number[]): SequenceRanges {
    // Written by pairs() (sorted, disjoint) under a MAC; anything else is skipped.
    const out = new SequenceRanges();
    for (let i = 0; i + 1 < pairs.length; i += 2) {
      const [a, b] = [pairs[i], pairs[i + 1]];
      const last = out.ranges[out.ranges.length - 1];
      if (a <= b && (last === undefined || a > last[1] + 1)) out.ranges.push([a, b]);
    }
    return out;
  }

  add(n: number): void {
    const i = this.indexAfter(n); // first range starting above n
    const before = this.ranges[i - 1];
    if (before !== undefined && n <= before[1]) return;
    const after = this.ranges[i];
    const joinsBefore = before !== undefined && before[1] === n - 1;
    const joinsAfter = after !== undefined && after[0] === n + 1;
    if (joinsBefore && joinsAfter) this.ranges.splice(i - 1, 2, [before[0], after[1]]);
    else if (joinsBefore) before[1] = n;
    else if (joinsAfter) after[0] = n;
    else this.ranges.splice(i, 0, [n, n]);
  }

  has(n: number): boolean {
    const before = this.ranges[this.indexAfter(n) - 1];
    return before !== undefined && n <= before[1];
  }

  /** Flat pairs of the numbers from `from` on, at most `through`. */
  pairs(from = 1, through = Number.MAX_SAFE_INTEGER): number[] {
    return this.ranges.filter(([a, b]) => b >= from && a <= through).flatMap(([a, b]) => [Math.max(a, from), Math.min(b, through)]);
  }

  private indexAfter(n: number): number {
    let lo = 0;
    let hi = this.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ranges[mid][0] <= n) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
