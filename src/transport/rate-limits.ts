// Per-caller rate limits (issue 17 §6): token buckets in this process's memory,
// checked by the call pipeline before the call's own database work, so a noisy
// workload is refused cheaply (a Map lookup and arithmetic; the refusal's one
// audit row is group-committed) while others keep being served. Two kinds:
// - calls, per authenticated caller (SPIFFE ID): every unary call and every
//   stream start takes a token, also one refused before it runs (undecodable,
//   unknown method...), as that refusal is an audit write too;
// - failed authentications, per presented identity: the caller's SPIFFE ID
//   when its SVID was valid (a bad bearer token), else the SHA-256 fingerprint
//   of the certificate it presented (the TLS layer has already checked it
//   chains to the trust bundle, so fingerprints are not free to mint). While a
//   key's failure bucket is empty its calls are refused before authentication.
// Each replica keeps its own buckets: with N replicas behind a load balancer a
// caller gets at most N times the configured rate (docs/operations.md).
// A refusal is RESOURCE_EXHAUSTED (reason RATE_LIMITED) with a RetryInfo.

import { NexusError } from "../errors/nexus-error.js";

export interface BucketSettings {
  /** Tokens added per second; 0 turns the limit off. */
  readonly perSecond: number;
  /** The bucket's size: how many calls may come at once after a quiet spell. */
  readonly burst: number;
}

export interface RateLimitSettings {
  readonly calls: BucketSettings;
  readonly authFailures: BucketSettings;
  /** Buckets kept per kind before idle (full) ones are dropped. */
  readonly maxKeys?: number;
}

/** Counts refusals (metrics); `kind` is "calls" or "auth_failures", never a caller. */
export interface RateLimitObserver {
  limited(kind: "calls" | "auth_failures"): void;
}

interface Bucket {
  tokens: number;
  updatedMs: number;
}

const DEFAULT_MAX_KEYS = 100_000;

/**
 * One kind of token bucket, keyed by caller, remembering at most `maxKeys`
 * callers. When the map is full only buckets that have refilled to capacity
 * are forgotten (forgetting one changes nothing): a bucket that is not full,
 * above all an emptied one, is never dropped, or a noisy caller could get a
 * fresh burst by making new identities arrive. If none has refilled, callers
 * not in the map share one overflow bucket (same rate and burst) until some
 * bucket refills: newcomers are then limited together, never admitted free.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, Bucket>();
  private readonly overflow: Bucket;
  /** No bucket can have refilled before this time: a full map is not swept again until then. */
  private nextSweepMs = 0;

  constructor(
    private readonly settings: BucketSettings,
    private readonly maxKeys = DEFAULT_MAX_KEYS,
    private readonly now: () => number = Date.now,
  ) {
    this.overflow = { tokens: settings.burst, updatedMs: now() };
  }

  get enabled(): boolean {
    return this.settings.perSecond > 0;
  }

  get empty(): boolean {
    return this.buckets.size === 0;
  }

  /** Takes a token: 0 if there was one, else how many ms until there is. */
  take(key: string): number {
    if (!this.enabled) return 0;
    const b = this.refilled(key);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return this.waitMs(b);
  }

  /** How many ms until `key` has a token (0: it has one now); takes nothing. */
  peek(key: string): number {
    if (!this.enabled) return 0;
    // A caller not remembered has a full bucket, unless it would be sent to the overflow one.
    const b = this.buckets.get(key) ?? (this.buckets.size >= this.maxKeys ? this.overflow : undefined);
    if (b === undefined) return 0;
    const tokens = this.tokensAt(b, this.now());
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) * 1000) / this.settings.perSecond);
  }

  private waitMs(b: Bucket): number {
    return Math.max(1, Math.ceil(((1 - b.tokens) * 1000) / this.settings.perSecond));
  }

  private tokensAt(b: Bucket, now: number): number {
    return Math.min(this.settings.burst, b.tokens + ((now - b.updatedMs) * this.settings.perSecond) / 1000);
  }

  private refilled(key: string): Bucket {
    const now = this.now();
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= this.maxKeys) this.sweep(now);
      if (this.buckets.size >= this.maxKeys) b = this.overflow;
      else {
        b = { tokens: this.settings.burst, updatedMs: now };
        this.buckets.set(key, b);
        return b;
      }
    }
    b.tokens = this.tokensAt(b, now);
    b.updatedMs = now;
    return b;
  }

  /**
   * Drops the buckets that have refilled to capacity, and no other. Scans at
   * most once per time a bucket can next be full (the earliest seen), so a
   * stream of newcomers to a full map costs a comparison each, not a scan.
   */
  private sweep(now: number): void {
    if (now < this.nextSweepMs) return;
    let next = Infinity;
    for (const [k, b] of this.buckets) {
      const fullAt = b.updatedMs + ((this.settings.burst - b.tokens) * 1000) / this.settings.perSecond;
      if (fullAt <= now) this.buckets.delete(k);
      else next = Math.min(next, fullAt);
    }
    // Later takes only delay a bucket's fullAt, so none is full before `next`.
    this.nextSweepMs = this.buckets.size >= this.maxKeys ? next : 0;
  }
}

/** The pipeline's limits: calls per caller, failed authentications per presented identity. */
export class RateLimits {
  private readonly calls: TokenBuckets;
  private readonly failures: TokenBuckets;

  constructor(settings: RateLimitSettings, private readonly observer?: RateLimitObserver, now: () => number = Date.now) {
    this.calls = new TokenBuckets(settings.calls, settings.maxKeys, now);
    this.failures = new TokenBuckets(settings.authFailures, settings.maxKeys, now);
  }

  /** Before authentication: refuses a presented certificate (or caller) whose failed authentications used up its bucket. */
  checkFailures(key: () => string): void {
    // No failure since the process started (or since they were swept): nothing to look up.
    if (this.failures.empty) return;
    const wait = this.failures.peek(key());
    if (wait > 0) throw this.refusal("auth_failures", wait, "too many failed authentications from this identity");
  }

  /** After authentication: takes a call token from the caller's bucket, or refuses the call. */
  admit(caller: string): void {
    const wait = this.calls.take(caller);
    if (wait > 0) throw this.refusal("calls", wait, "this caller is over its call rate limit");
  }

  /** Records a failed authentication against `key` (the caller, or the certificate presented). */
  authenticationFailed(key: string | undefined): void {
    if (key !== undefined) this.failures.take(key);
  }

  private refusal(kind: "calls" | "auth_failures", waitMs: number, why: string): NexusError {
    this.observer?.limited(kind);
    return new NexusError("resource_exhausted", `${why}; retry in ${Math.ceil(waitMs)} ms`, { reason: "RATE_LIMITED", retryDelayMs: waitMs });
  }
}
