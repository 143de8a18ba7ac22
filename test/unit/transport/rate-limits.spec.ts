// Token buckets of the per-caller rate limits, on a clock the test moves:
// a burst, then one call per 1/rate seconds, a wait that says when the next
// token comes, independent callers, failed authentications counted apart,
// and a bounded number of remembered callers (never forgetting one that is not
// full; newcomers to a full map share an overflow bucket).

import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { RateLimits, TokenBuckets } from "../../../src/transport/rate-limits.js";

describe("TokenBuckets", () => {
  let now = 0;
  const clock = () => now;
  beforeEach(() => (now = 1_000_000));

  it("lets a burst through, then refuses with the time until the next token", () => {
    const b = new TokenBuckets({ perSecond: 10, burst: 3 }, 100, clock);
    expect([b.take("a"), b.take("a"), b.take("a")]).to.deep.equal([0, 0, 0]);
    expect(b.take("a")).to.equal(100);
    now += 40;
    expect(b.take("a")).to.equal(60);
    now += 60;
    expect(b.take("a")).to.equal(0);
    expect(b.take("a")).to.equal(100);
  });

  it("keeps callers apart: one caller's empty bucket leaves another's full", () => {
    const b = new TokenBuckets({ perSecond: 1, burst: 1 }, 100, clock);
    expect(b.take("noisy")).to.equal(0);
    expect(b.take("noisy")).to.be.greaterThan(0);
    expect(b.take("quiet")).to.equal(0);
  });

  it("never holds more than its burst after a quiet spell", () => {
    const b = new TokenBuckets({ perSecond: 100, burst: 2 }, 100, clock);
    b.take("a");
    now += 3_600_000;
    expect([b.take("a"), b.take("a"), b.take("a")].map((w) => w > 0)).to.deep.equal([false, false, true]);
  });

  it("a rate of 0 is no limit", () => {
    const b = new TokenBuckets({ perSecond: 0, burst: 1 }, 100, clock);
    for (let i = 0; i < 1000; i++) expect(b.take("a")).to.equal(0);
  });

  it("peek tells the wait without taking a token", () => {
    const b = new TokenBuckets({ perSecond: 10, burst: 1 }, 100, clock);
    expect(b.peek("a")).to.equal(0);
    b.take("a");
    expect(b.peek("a")).to.equal(100);
    expect(b.peek("a")).to.equal(100);
  });

  it("remembers a bounded number of callers: refilled buckets are dropped first", () => {
    const b = new TokenBuckets({ perSecond: 1, burst: 1 }, 4, clock);
    for (const k of ["a", "b", "c"]) b.take(k);
    now += 5_000; // a, b, c have refilled
    b.take("d");
    b.take("e"); // the sweep drops a, b and c
    // "d" is still empty: it was not swept.
    expect(b.take("d")).to.be.greaterThan(0);
  });

  it("a full map never forgets a caller whose bucket is empty: new callers do not hand the noisy one a fresh burst", () => {
    const b = new TokenBuckets({ perSecond: 1, burst: 1 }, 4, clock);
    expect(b.take("noisy")).to.equal(0);
    expect(b.take("noisy")).to.be.greaterThan(0); // empty
    for (const k of ["a", "b", "c", "d"]) b.take(k); // the map fills; nothing has refilled
    now += 10;
    expect(b.take("noisy"), "noisy got a fresh bucket after the sweep").to.be.greaterThan(0);
  });

  it("a full map with no refilled bucket sends newcomers to one shared overflow bucket, not a fresh burst each", () => {
    const b = new TokenBuckets({ perSecond: 1, burst: 2 }, 2, clock);
    for (const k of ["a", "b"]) b.take(k); // the map is full; neither has refilled
    // Newcomers share the overflow bucket's burst of 2, then wait together.
    expect(["x", "y", "z"].map((k) => b.take(k) > 0)).to.deep.equal([false, false, true]);
    expect(b.peek("w"), "a newcomer is told the overflow bucket's wait").to.be.greaterThan(0);
    expect(b.take("a"), "a remembered caller keeps its own bucket").to.equal(0);
  });

  it("once a bucket refills, the sweep frees its place for a newcomer's own bucket", () => {
    const b = new TokenBuckets({ perSecond: 1, burst: 1 }, 2, clock);
    b.take("a");
    now += 500;
    b.take("b");
    b.take("x"); // overflow: nothing has refilled
    expect(b.take("y"), "the overflow bucket is empty").to.be.greaterThan(0);
    now += 600; // "a" (only) has refilled
    expect(b.take("y"), "y got a's place and a full bucket").to.equal(0);
    expect(b.take("b"), "b was not forgotten").to.be.greaterThan(0);
  });
});

describe("RateLimits", () => {
  let now = 0;
  const clock = () => now;
  beforeEach(() => (now = 1_000_000));

  it("refuses an over-limit caller RESOURCE_EXHAUSTED RATE_LIMITED with a retry delay, and counts it by kind", () => {
    const counted: string[] = [];
    const limits = new RateLimits({ calls: { perSecond: 2, burst: 1 }, authFailures: { perSecond: 1, burst: 1 } }, { limited: (k) => counted.push(k) }, clock);
    limits.admit("spiffe://x/a");
    let err: unknown;
    try {
      limits.admit("spiffe://x/a");
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(NexusError);
    expect((err as NexusError).code).to.equal("resource_exhausted");
    expect((err as NexusError).reason).to.equal("RATE_LIMITED");
    expect((err as NexusError).retryDelayMs).to.equal(500);
    expect(counted).to.deep.equal(["calls"]);
  });

  it("refuses an identity whose failed authentications used up its bucket, before it is authenticated again", () => {
    const limits = new RateLimits({ calls: { perSecond: 100, burst: 100 }, authFailures: { perSecond: 1, burst: 2 } }, undefined, clock);
    limits.checkFailures(() => "cert-1");
    limits.authenticationFailed("cert-1");
    limits.checkFailures(() => "cert-1");
    limits.authenticationFailed("cert-1");
    expect(() => limits.checkFailures(() => "cert-1")).to.throw(NexusError, /failed authentications/);
    limits.checkFailures(() => "cert-2");
    now += 1000;
    limits.checkFailures(() => "cert-1");
  });
});

// Sharing across replicas (server/rate-limit-sync.ts): each replica reports
// the tokens its callers took and takes what they took elsewhere.
describe("RateLimits shared across replicas: usage out, remote usage in", () => {
  let now = 0;
  const clock = () => now;
  beforeEach(() => (now = 1_000_000));
  const shared = (calls = { perSecond: 100, burst: 10 }, authFailures = { perSecond: 10, burst: 10 }) =>
    new RateLimits({ calls, authFailures, shareUsage: true }, undefined, clock);
  const admitted = (limits: RateLimits, caller: string, n: number) => {
    let ok = 0;
    for (let i = 0; i < n; i++) {
      try {
        limits.admit(caller);
        ok++;
      } catch {
        // refused
      }
    }
    return ok;
  };

  it("reports the tokens each caller took since the last report, then starts afresh", () => {
    const limits = shared();
    admitted(limits, "a", 7);
    limits.authenticationFailed("cert-1");
    limits.authenticationFailed("cert-1");
    expect(limits.takeUsage(1000)).to.have.deep.members([
      { kind: "calls", key: "a", tokens: 7 },
      { kind: "auth_failures", key: "cert-1", tokens: 2 },
    ]);
    expect(limits.takeUsage(1000), "nothing new").to.deep.equal([]);
    now += 1000;
    admitted(limits, "a", 6);
    expect(limits.takeUsage(1000)).to.deep.equal([{ kind: "calls", key: "a", tokens: 6 }]);
  });

  it("counts only tokens taken, not refused calls", () => {
    const limits = shared({ perSecond: 1, burst: 3 });
    expect(admitted(limits, "a", 10)).to.equal(3);
    expect(limits.takeUsage(1000)).to.deep.equal([{ kind: "calls", key: "a", tokens: 3 }]);
  });

  it("does not report quiet callers: below 5 % of rate × interval (and one token) a caller costs nothing to share", () => {
    const limits = shared({ perSecond: 100, burst: 100 });
    admitted(limits, "quiet", 4); // 5 % of 100/s × 1 s = 5
    admitted(limits, "busy", 5);
    expect(limits.takeUsage(1000)).to.deep.equal([{ kind: "calls", key: "busy", tokens: 5 }]);
    // The quiet caller's count is dropped with the report, not carried over.
    admitted(limits, "quiet", 1);
    expect(limits.takeUsage(1000)).to.deep.equal([]);
  });

  it("reports nothing when sharing is off", () => {
    const limits = new RateLimits({ calls: { perSecond: 100, burst: 10 }, authFailures: { perSecond: 10, burst: 10 } }, undefined, clock);
    admitted(limits, "a", 10);
    expect(limits.takeUsage(1000)).to.deep.equal([]);
  });

  it("a caller's usage on other replicas is taken from its bucket here: it waits as if it had called here", () => {
    const limits = shared({ perSecond: 10, burst: 10 });
    limits.applyRemoteUsage([{ kind: "calls", key: "a", tokens: 8 }]);
    expect(admitted(limits, "a", 10)).to.equal(2);
    expect(admitted(limits, "b", 10), "another caller is untouched").to.equal(10);
    // Remote usage is not reported again as this replica's own.
    expect(limits.takeUsage(1000)).to.have.deep.members([
      { kind: "calls", key: "a", tokens: 2 },
      { kind: "calls", key: "b", tokens: 10 },
    ]);
  });

  it("a caller that overdrew elsewhere goes below zero here, down to -burst: it waits up to 2 × burst / rate", () => {
    const limits = shared({ perSecond: 10, burst: 10 });
    limits.applyRemoteUsage([{ kind: "calls", key: "a", tokens: 1_000_000 }]);
    let err: NexusError | undefined;
    try {
      limits.admit("a");
    } catch (e) {
      err = e as NexusError;
    }
    // From -10 to 1 token at 10 per second: 1.1 s.
    expect(err?.retryDelayMs).to.equal(1100);
    now += 1100;
    expect(admitted(limits, "a", 2)).to.equal(1);
  });

  it("remote usage never adds tokens: a negative, zero or non-number count changes nothing", () => {
    const limits = shared({ perSecond: 10, burst: 3 });
    expect(admitted(limits, "a", 3)).to.equal(3);
    limits.applyRemoteUsage([
      { kind: "calls", key: "a", tokens: -1000 },
      { kind: "calls", key: "a", tokens: 0 },
      { kind: "calls", key: "a", tokens: Number.NaN },
      { kind: "other", key: "a", tokens: 5 },
    ]);
    expect(admitted(limits, "a", 1)).to.equal(0);
  });

  it("failed authentications elsewhere count here: an identity that failed on other replicas is refused before authentication", () => {
    const limits = shared(undefined, { perSecond: 1, burst: 3 });
    limits.checkFailures(() => "cert-1");
    limits.applyRemoteUsage([{ kind: "auth_failures", key: "cert-1", tokens: 3 }]);
    expect(() => limits.checkFailures(() => "cert-1")).to.throw(NexusError, /failed authentications/);
    limits.checkFailures(() => "cert-2");
  });

  it("a full map charges no one's usage to the shared overflow bucket", () => {
    const limits = new RateLimits({ calls: { perSecond: 1, burst: 2 }, authFailures: { perSecond: 1, burst: 1 }, maxKeys: 1, shareUsage: true }, undefined, clock);
    admitted(limits, "a", 1); // the map is full; a has not refilled
    limits.applyRemoteUsage([{ kind: "calls", key: "x", tokens: 100 }]);
    expect(admitted(limits, "y", 2), "newcomers still share the overflow bucket's burst").to.equal(2);
  });
});
