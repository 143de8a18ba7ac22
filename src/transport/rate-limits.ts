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
// Buckets live in each replica's memory; they are shared across replicas by
// exchanging usage, never by a database round trip per call: when sharing is
// on, a bucket counts the tokens its caller took here, the composition root
// (server/rate-limit-sync.ts) periodically takes those counts (takeUsage) to
// publish them, and applies what the other replicas took (applyRemoteUsage).
// Remote usage only ever takes tokens, down to a floor of -burst, so a caller
// that overdrew elsewhere waits here too, and no usage row can raise a rate.
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
  /** Count each caller's tokens for takeUsage (replicas share their usage); off, nothing is counted. */
  readonly shareUsage?: boolean;
}

export type RateLimitKind = "calls" | "auth_failures";

/** Counts refusals (metrics); `kind` is "calls" or "auth_failures", never a caller. */
export interface RateLimitObserver {
  limited(kind: RateLimitKind): void;
}

/** Tokens one caller (key) took from one kind of bucket. */
export interface RateLimitUsage {
  readonly kind: RateLimitKind;
  readonly key: string;
  readonly tokens: number;
}

/** Usage reported per interval is only worth sharing from this share of rate × interval (and at least one token). */
export const SIGNIFICANT_USAGE_SHARE = 0.05;

interface Bucket {
  tokens: number;
  updatedMs: number;
  /** Undefined for the overflow bucket: its tokens are no one caller's. */
  readonly key: string | undefined;
  /** Tokens taken here since the last takeUsage (only counted when sharing). */
  taken: number;
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
  /** Buckets with tokens taken since the last takeUsage; undefined when usage is not counted. */
  private readonly used: Bucket[] | undefined;

  constructor(
    private readonly settings: BucketSettings,
    private readonly maxKeys = DEFAULT_MAX_KEYS,
    private readonly now: () => number = Date.now,
    countUsage = false,
  ) {
    this.overflow = { tokens: settings.burst, updatedMs: now(), key: undefined, taken: 0 };
    this.used = countUsage ? [] : undefined;
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
      // A list of the buckets used, not a Map of counts: one push per caller per interval, no hashing per call.
      if (this.used !== undefined && b.key !== undefined && b.taken++ === 0) this.used.push(b);
      return 0;
    }
    return this.waitMs(b);
  }

  /**
   * The tokens each caller took here since the last call, for those that took
   * at least `minTokens`; starts counting afresh. Callers below it are not
   * reported (and their count is dropped): quiet callers cost nothing to share.
   */
  takeUsage(minTokens: number): Array<{ key: string; tokens: number }> {
    if (this.used === undefined) return [];
    // A key can have two buckets here: one swept (refilled) and its successor.
    const byKey = new Map<string, number>();
    for (const b of this.used) {
      byKey.set(b.key!, (byKey.get(b.key!) ?? 0) + b.taken);
      b.taken = 0;
    }
    this.used.length = 0;
    return [...byKey].filter(([, tokens]) => tokens >= minTokens).map(([key, tokens]) => ({ key, tokens }));
  }

  /**
   * Takes `tokens` another replica's caller `key` used from its bucket here,
   * down to -burst at most (it then waits up to 2 × burst / rate). A count that
   * is not a positive number changes nothing: usage never adds tokens. A
   * caller not remembered gets a bucket, unless the map is full of buckets
   * that have not refilled: the shared overflow bucket is never charged for
   * one caller.
   */
  applyRemoteUsage(key: string, tokens: number): void {
    if (!this.enabled || !(tokens > 0)) return;
    const now = this.now();
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= this.maxKeys) this.sweep(now);
      if (this.buckets.size >= this.maxKeys) return;
      b = { tokens: this.settings.burst, updatedMs: now, key, taken: 0 };
      this.buckets.set(key, b);
    } else {
      b.tokens = this.tokensAt(b, now);
      b.updatedMs = now;
    }
    b.tokens = Math.max(-this.settings.burst, b.tokens - tokens);
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
        b = { tokens: this.settings.burst, updatedMs: now, key, taken: 0 };
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

  constructor(
    private readonly settings: RateLimitSettings,
    private readonly observer?: RateLimitObserver,
    now: () => number = Date.now,
  ) {
    this.calls = new TokenBuckets(settings.calls, settings.maxKeys, now, settings.shareUsage);
    this.failures = new TokenBuckets(settings.authFailures, settings.maxKeys, now, settings.shareUsage);
  }

  /**
   * The tokens each caller took on this replica since the last call, for
   * callers whose usage is significant over `intervalMs`: at least
   * SIGNIFICANT_USAGE_SHARE of what the rate allows in it, and one token.
   */
  takeUsage(intervalMs: number): RateLimitUsage[] {
    const significant = (s: BucketSettings) => Math.max(1, (SIGNIFICANT_USAGE_SHARE * s.perSecond * intervalMs) / 1000);
    return [
      ...this.calls.takeUsage(significant(this.settings.calls)).map((u) => ({ kind: "calls" as const, ...u })),
      ...this.failures.takeUsage(significant(this.settings.authFailures)).map((u) => ({ kind: "auth_failures" as const, ...u })),
    ];
  }

  /** Takes from the local buckets what callers used on other replicas; unknown kinds are ignored. */
  applyRemoteUsage(usage: Iterable<{ readonly kind: string; readonly key: string; readonly tokens: number }>): void {
    for (const u of usage) {
      if (u.kind === "calls") this.calls.applyRemoteUsage(u.key, u.tokens);
      else if (u.kind === "auth_failures") this.failures.applyRemoteUsage(u.key, u.tokens);
    }
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

  private refusal(kind: RateLimitKind, waitMs: number, why: string): NexusError {
    this.observer?.limited(kind);
    return new NexusError("resource_exhausted", `${why}; retry in ${Math.ceil(waitMs)} ms`, { reason: "RATE_LIMITED", retryDelayMs: waitMs });
  }
}
