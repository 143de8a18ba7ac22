// Waiting for things that must happen eventually (a reload, a recovery), with a
// generous deadline rather than a timed assertion about speed.

export interface EventuallyOptions {
  /** Give up after this long (default 10 s). */
  readonly timeoutMs?: number;
  /** Pause between attempts (default 100 ms). */
  readonly intervalMs?: number;
}

/**
 * Runs `attempt` until it returns without throwing, and returns its result.
 * Chai assertions inside `attempt` make good conditions: the last failure is
 * rethrown when the deadline passes, so the test reports what it was waiting for.
 */
export async function eventually<T>(attempt: () => T | Promise<T>, opts: EventuallyOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() >= deadline) throw err;
    }
    await sleep(opts.intervalMs ?? 100);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
