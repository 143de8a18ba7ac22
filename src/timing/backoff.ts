// Exponential backoff with jitter, shared by everything that retries: the
// Workload API stream, the client's retries of idempotent calls and the
// agent's re-syncs. "Full jitter" (a random delay between half and all of the
// exponential step) keeps many clients that failed together from retrying
// together.

export interface BackoffPolicy {
  /** First delay, before jitter. */
  readonly initialMs: number;
  /** Largest delay, before jitter. */
  readonly maxMs: number;
  /** Growth per attempt (default 2). */
  readonly multiplier?: number;
}

/** The delay before retry number `attempt` (0 = the first retry). */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const step = Math.min(policy.maxMs, policy.initialMs * (policy.multiplier ?? 2) ** Math.max(0, attempt));
  return Math.round(step / 2 + random() * (step / 2));
}

/** A sleep that a closing owner can cut short. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
