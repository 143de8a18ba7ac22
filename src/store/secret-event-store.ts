// SQL for the watch event log (migration 008): triggers on secrets and
// secret_versions write the events, so this layer only reads them in delivery
// order, LISTENs for new ones and removes old ones. Delivery order is
// (xid, id) and only events of transactions that have ended are read (xid
// below the snapshot's xmin), so a position once passed never gains an event
// behind it, whatever order transactions commit in.

import { guarded, type Sql } from "./database.js";

const CHANNEL = "nexus_secret_events";

/** A place in the event log: everything up to and including (xid, id) has been read. */
export interface EventPosition {
  /** The writing transaction's id (xid8), as decimal text. */
  readonly xid: string;
  readonly id: string;
}

export type SecretEventType =
  | "VERSION_CREATED"
  | "PROMOTED"
  | "DELETED"
  | "UNDELETED"
  | "DESTROYED"
  | "PURGED"
  | "EXPIRED"
  | "METADATA_UPDATED"
  | "ROTATION_DUE";

export interface SecretEventRow {
  readonly position: EventPosition;
  readonly type: SecretEventType;
  readonly path: string;
  readonly versions: readonly number[];
  /** "CURRENT", "PENDING", "PREVIOUS": the labels versions[0] carries. */
  readonly labels: readonly string[];
  readonly time: Date;
}

export interface EventPage {
  readonly events: readonly SecretEventRow[];
  /**
   * Where the next read starts: the last event's position, or — when the page
   * was not full — the first position no ended transaction can still fill.
   */
  readonly next: EventPosition;
}

export class SecretEventStore {
  constructor(private readonly sql: Sql) {}

  /** Where a watch that starts now begins: after every event of every transaction that has ended. */
  async now(): Promise<EventPosition> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xid`;
      return { xid: row.xid as string, id: "0" };
    });
  }

  /**
   * Up to `limit` events after `after` whose transactions have ended, in
   * delivery order; with `upTo`, only events at or before it (a catch-up that
   * stops where live delivery took over).
   */
  async readAfter(after: EventPosition, limit: number, upTo?: EventPosition): Promise<EventPage> {
    return guarded(async () => {
      const bound = upTo === undefined ? this.sql`` : this.sql`AND (e.xid, e.id) <= (${upTo.xid}::xid8, ${upTo.id}::bigint)`;
      const rows = await this.sql`
        WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
        SELECT e.xid::text AS xid, e.id::text AS id, e.type, e.path, e.versions, e.labels, e.time, h.xmin::text AS xmin
        FROM horizon h LEFT JOIN LATERAL (
          SELECT * FROM secret_events e
          WHERE (e.xid, e.id) > (${after.xid}::xid8, ${after.id}::bigint) AND e.xid < h.xmin ${bound}
          ORDER BY e.xid, e.id LIMIT ${limit}
        ) e ON true`;
      const events = rows.filter((r) => r.id !== null).map(eventRow);
      if (events.length === limit) return { events, next: events[events.length - 1].position };
      // Every event of an ended transaction after `after` has been read.
      const horizon: EventPosition = upTo ?? { xid: rows[0].xmin as string, id: "0" };
      return { events, next: later(horizon, after) };
    });
  }

  /** Whether `position` could have been handed out by this database (its xid is not in the future). */
  async isKnown(position: EventPosition): Promise<boolean> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT ${position.xid}::xid8 <= pg_snapshot_xmax(pg_current_snapshot()) AS known`;
      return row.known as boolean;
    });
  }

  /** Calls `onEvent` on every NOTIFY and after every (re)connection of the listener. */
  async listen(onEvent: () => void): Promise<{ unlisten(): Promise<void> }> {
    const meta = await guarded(() => this.sql.listen(CHANNEL, () => onEvent(), () => onEvent()));
    return { unlisten: () => meta.unlisten() };
  }

  /** Deletes events older than `before`, a batch at a time; returns how many. */
  async deleteOlderThan(before: Date, batch = 5000): Promise<number> {
    return guarded(async () => {
      let total = 0;
      for (;;) {
        const rows = await this.sql`
          DELETE FROM secret_events WHERE (xid, id) IN (
            SELECT xid, id FROM secret_events WHERE time < ${before} LIMIT ${batch}
          ) RETURNING id`;
        total += rows.length;
        if (rows.length < batch) return total;
      }
    });
  }
}

/** Orders positions: negative if a is before b. */
export function comparePositions(a: EventPosition, b: EventPosition): number {
  const x = BigInt(a.xid) - BigInt(b.xid);
  if (x !== 0n) return x < 0n ? -1 : 1;
  const i = BigInt(a.id) - BigInt(b.id);
  return i === 0n ? 0 : i < 0n ? -1 : 1;
}

function later(a: EventPosition, b: EventPosition): EventPosition {
  return comparePositions(a, b) >= 0 ? a : b;
}

function eventRow(r: Record<string, unknown>): SecretEventRow {
  return {
    position: { xid: r.xid as string, id: r.id as string },
    type: r.type as SecretEventType,
    path: r.path as string,
    versions: r.versions as number[],
    labels: r.labels as string[],
    time: r.time as Date,
  };
}
