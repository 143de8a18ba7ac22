// A log-linear latency histogram (HdrHistogram's layout, simplified): values in
// microseconds, exact below 128 µs, then every power of two split into 64
// linear buckets, so a percentile is within 1.6 % of the true value. Fixed
// size, allocation-free on record, and mergeable: worker processes send their
// bucket counts and the parent adds them up before reading percentiles.

const LINEAR_LIMIT = 128; // values below are their own bucket
const SUB_BUCKETS = 64; // buckets per power of two above that
const FIRST_EXPONENT = 7; // 2^7 = LINEAR_LIMIT
const LAST_EXPONENT = 36; // 2^37 µs is about 38 hours
export const HISTOGRAM_BUCKETS = LINEAR_LIMIT + SUB_BUCKETS * (LAST_EXPONENT - FIRST_EXPONENT + 1);
const MAX_MICROS = 2 ** (LAST_EXPONENT + 1) - 1;

export class LatencyHistogram {
  readonly counts = new Float64Array(HISTOGRAM_BUCKETS);
  private total = 0;
  private maxMicros = 0;

  constructor(counts?: ArrayLike<number>) {
    if (counts) this.add(counts);
  }

  get count(): number {
    return this.total;
  }

  /** Records one latency given in milliseconds. */
  record(ms: number): void {
    const us = Math.min(MAX_MICROS, Math.max(0, Math.round(ms * 1000)));
    this.counts[bucketOf(us)]++;
    this.total++;
    if (us > this.maxMicros) this.maxMicros = us;
  }

  /** Adds another histogram's bucket counts. */
  add(counts: ArrayLike<number>): void {
    for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
      const c = counts[i] ?? 0;
      if (c === 0) continue;
      this.counts[i] += c;
      this.total += c;
      this.maxMicros = Math.max(this.maxMicros, bucketUpperMicros(i));
    }
  }

  /** The latency in ms at percentile p (0-100): the upper edge of the bucket that holds it. */
  percentile(p: number): number {
    if (this.total === 0) return NaN;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(bucketUpperMicros(i), this.maxMicros) / 1000;
    }
    return this.maxMicros / 1000;
  }

  /** Mean in ms, from bucket midpoints. */
  mean(): number {
    if (this.total === 0) return NaN;
    let sum = 0;
    for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
      if (this.counts[i] !== 0) sum += this.counts[i] * ((bucketLowerMicros(i) + bucketUpperMicros(i)) / 2);
    }
    return sum / this.total / 1000;
  }

  toArray(): number[] {
    return Array.from(this.counts);
  }
}

export function bucketOf(us: number): number {
  if (us < LINEAR_LIMIT) return us;
  const exponent = Math.floor(Math.log2(us));
  const shift = 2 ** (exponent - (FIRST_EXPONENT - 1));
  // log2 can be off by one at exact powers of two; the clamp keeps sub in range.
  const sub = Math.min(2 * SUB_BUCKETS - 1, Math.max(SUB_BUCKETS, Math.floor(us / shift)));
  return LINEAR_LIMIT + (exponent - FIRST_EXPONENT) * SUB_BUCKETS + (sub - SUB_BUCKETS);
}

export function bucketLowerMicros(index: number): number {
  if (index < LINEAR_LIMIT) return index;
  const exponent = FIRST_EXPONENT + Math.floor((index - LINEAR_LIMIT) / SUB_BUCKETS);
  const sub = SUB_BUCKETS + ((index - LINEAR_LIMIT) % SUB_BUCKETS);
  return sub * 2 ** (exponent - (FIRST_EXPONENT - 1));
}

export function bucketUpperMicros(index: number): number {
  if (index < LINEAR_LIMIT) return index;
  const exponent = FIRST_EXPONENT + Math.floor((index - LINEAR_LIMIT) / SUB_BUCKETS);
  return bucketLowerMicros(index) + 2 ** (exponent - (FIRST_EXPONENT - 1)) - 1;
}
