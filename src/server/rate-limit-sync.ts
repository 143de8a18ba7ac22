// Shares the per-caller rate limits across replicas (issue 17 §6,
// docs/operations.md#rate-limits). Every interval this replica publishes the
// tokens its significant callers took here and, in the same statement, reads
// the batches the other replicas published since; their usage is taken from
// the local buckets. Calls never wait for this: they are checked against the
// local buckets only. When the database does not answer, the limits simply
// stay per replica (logged once per outage); nothing is refused for it.

import type { Logger } from "../log/logger.js";
import type { RateLimitUsageStore, UsageRow } from "../store/rate-limit-usage-store.js";
import type { RateLimits, RateLimitUsage } from "../transport/rate-limits.js";

/** Callers published per batch at most (the heaviest first): bounds a batch under a flood of identities. */
const MAX_PUBLISHED = 10_000;
/** Batches older than this many intervals are not applied (a reader that was away applies little history). */
const FRESH_INTERVALS = 3;
/** Rows older than this many intervals are deleted. */
const KEEP_INTERVALS = 10;
/** How long stop() waits for an exchange in flight: one stalled on a lock a database writer holds must not hold up shutdown. */
const STOP_WAIT_MS = 2000;

export interface RateLimitSyncOptions {
  readonly limits: RateLimits;
  readonly store: RateLimitUsageStore;
  /** This replica's instance ID (the audit log's replica ID): unique per process. */
  readonly instanceId: string;
  readonly intervalMs: number;
  readonly logger: Logger;
}

export class RateLimitSync {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private seq = 0;
  /** The last batch applied per other replica, and when it was seen (to forget replicas gone quiet). */
  private readonly applied = new Map<string, { seq: number; seenMs: number }>();
  /** The first exchange only notes where each replica is: applying its history would charge callers twice as a replica starts. */
  private first = true;
  private failing = false;

  constructor(private readonly o: RateLimitSyncOptions) {}

  start(): void {
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.running === undefined) return;
    // Its result no longer matters; closing the pool afterwards ends its query.
    let waited: NodeJS.Timeout | undefined;
    await Promise.race([this.running, new Promise<void>((resolve) => (waited = setTimeout(resolve, STOP_WAIT_MS)))]);
    clearTimeout(waited);
  }

  /** One exchange: publish this replica's usage, apply the others'. Never throws. */
  async exchange(): Promise<void> {
    const { limits, store, intervalMs, logger } = this.o;
    const usage = heaviest(limits.takeUsage(intervalMs), MAX_PUBLISHED);
    const freshMs = FRESH_INTERVALS * intervalMs;
    let rows: UsageRow[];
    try {
      rows = await store.exchange({
        instanceId: this.o.instanceId,
        seq: ++this.seq,
        usage,
        applied: new Map([...this.applied].map(([id, a]) => [id, a.seq])),
        freshMs,
        keepMs: KEEP_INTERVALS * intervalMs,
      });
    } catch (err) {
      // The usage taken for this batch is dropped: once the database is back,
      // usage from the outage would charge callers for time each replica already limited alone.
      if (!this.failing) logger.warn("rate-limit usage is not shared: each replica limits on its own until the database answers", { err });
      this.failing = true;
      return;
    }
    if (this.failing) logger.info("rate-limit usage is shared again");
    this.failing = false;
    const now = Date.now();
    // A seq no replica numbers up to (this.seq counts from 1) is a database
    // writer's: kept in `applied`, 2^63 - 1 comes back as 2^63, which the next
    // exchange's bigint[] parameter refuses, failing every exchange until a restart.
    const fresh = rows.filter((r) => Number.isSafeInteger(r.seq) && r.seq > (this.applied.get(r.instanceId)?.seq ?? 0));
    for (const r of fresh) {
      const a = this.applied.get(r.instanceId);
      if (a === undefined || r.seq > a.seq) this.applied.set(r.instanceId, { seq: r.seq, seenMs: now });
    }
    if (!this.first) limits.applyRemoteUsage(fresh);
    this.first = false;
    // A replica with nothing newer for this long has no fresh rows left to apply twice.
    for (const [id, a] of this.applied) if (now - a.seenMs > 2 * freshMs) this.applied.delete(id);
  }

  private schedule(): void {
    if (this.stopped) return;
    // A timeout after each exchange, not an interval: a slow database never stacks exchanges.
    this.timer = setTimeout(() => {
      this.running = this.exchange().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.o.intervalMs);
    this.timer.unref();
  }
}

function heaviest(usage: RateLimitUsage[], max: number): RateLimitUsage[] {
  return usage.length <= max ? usage : usage.sort((a, b) => b.tokens - a.tokens).slice(0, max);
}
