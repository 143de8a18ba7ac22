// SQL for rate limits shared across replicas (sql/011_rate_limit_usage.up.sql):
// each replica's batches of per-caller token usage. Rows only: what usage
// does to a bucket is decided in transport/rate-limits.ts, and when batches
// are exchanged in server/rate-limit-sync.ts.

import { guarded, type Sql } from "./database.js";

/** Tokens one caller took from one kind of bucket. */
export interface UsageEntry {
  readonly kind: string;
  readonly key: string;
  readonly tokens: number;
}

/** One entry of another replica's batch. */
export interface UsageRow extends UsageEntry {
  readonly instanceId: string;
  readonly seq: number;
}

export interface UsageExchange {
  readonly instanceId: string;
  /** This batch's number: above every earlier batch of this instance. */
  readonly seq: number;
  readonly usage: readonly UsageEntry[];
  /** The highest batch already applied, per other instance: those and older are not returned. */
  readonly applied: ReadonlyMap<string, number>;
  /** Only batches published within this long are returned. */
  readonly freshMs: number;
  /** Rows older than this, or dated this far ahead, are deleted (at most a bounded number per call). */
  readonly keepMs: number;
}

/** Rows deleted per exchange at most, so one exchange after a long quiet spell stays short. */
const PRUNE_LIMIT = 10_000;

export class RateLimitUsageStore {
  constructor(private readonly sql: Sql) {}

  /**
   * Writes this replica's batch, deletes old rows and returns the other
   * replicas' fresh batches not yet applied: one statement, one round trip.
   * Stale rows are taken with SKIP LOCKED, so replicas pruning at the same
   * moment never wait for, nor deadlock with, one another.
   */
  async exchange(x: UsageExchange): Promise<UsageRow[]> {
    const seenIds = [...x.applied.keys()];
    const seenSeqs = seenIds.map((id) => x.applied.get(id)!);
    return guarded(async () => {
      const rows = await this.sql`
        WITH pruned AS (
          DELETE FROM rate_limit_usage WHERE (instance_id, seq, kind, key) IN (
            SELECT instance_id, seq, kind, key FROM rate_limit_usage
            WHERE published_at < now() - make_interval(secs => ${x.keepMs / 1000})
               OR published_at > now() + make_interval(secs => ${x.keepMs / 1000})
            LIMIT ${PRUNE_LIMIT} FOR UPDATE SKIP LOCKED)
        ), written AS (
          INSERT INTO rate_limit_usage (instance_id, seq, kind, key, tokens)
          SELECT ${x.instanceId}, ${x.seq}, u.kind, u.key, u.tokens
          FROM unnest(${x.usage.map((u) => u.kind)}::text[], ${x.usage.map((u) => u.key)}::text[], ${x.usage.map((u) => u.tokens)}::int[]) AS u(kind, key, tokens)
          -- A row already there under this instance's ID and seq is a database
          -- writer's (a process numbers its batches once): failing on it would
          -- roll back the whole exchange, and its pruning, for as many batches as were forged ahead.
          ON CONFLICT DO NOTHING
        )
        SELECT r.instance_id, r.seq, r.kind, r.key, r.tokens FROM rate_limit_usage r
        LEFT JOIN unnest(${seenIds}::text[], ${seenSeqs}::bigint[]) AS s(instance_id, seq) ON s.instance_id = r.instance_id
        WHERE r.instance_id <> ${x.instanceId}
          AND r.published_at > now() - make_interval(secs => ${x.freshMs / 1000})
          -- Rows are dated by the one database clock, so never later than now
          -- (give or take a transaction that began after this one and
          -- committed first: it is read next time). A later date is a
          -- database writer's, which would otherwise stay fresh, and unpruned,
          -- for as long as it chose: a row written once would drain a caller
          -- again every time its replica is forgotten.
          AND r.published_at <= now()
          AND (s.seq IS NULL OR r.seq > s.seq)`;
      return rows.map((r) => ({ instanceId: r.instance_id as string, seq: Number(r.seq), kind: r.kind as string, key: r.key as string, tokens: Number(r.tokens) }));
    });
  }
}
