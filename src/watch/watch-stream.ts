// One WatchSecrets stream on this replica: the events the hub offers that
// match its prefix and that its caller may see (judged as each event is
// queued, by the policies in force then), in a bounded queue the transport
// drains. A client that stops reading fills the queue and the stream ends with
// RESOURCE_EXHAUSTED, so it costs bounded memory; it resumes from the cursor
// of the last event it received. Heartbeats carry the current cursor (one
// comes first, when the stream opens or has read its backlog); the
// stream ends by itself at its deadline (maximum lifetime or the caller's SVID
// expiry, whichever is first).

import { NexusError } from "../errors/nexus-error.js";
import { comparePositions, type EventPosition, type SecretEventRow, type SecretEventType } from "../store/secret-event-store.js";
import { encodeCursor } from "./watch-cursor.js";

export type WatchEventType = SecretEventType | "HEARTBEAT";

/** One response of the stream. */
export interface WatchEvent {
  readonly type: WatchEventType;
  readonly path: string;
  readonly versions: readonly number[];
  readonly labels: readonly string[];
  readonly time: Date;
  readonly cursor: string;
}

export interface WatchStreamOptions {
  /** Only paths that start with this. */
  readonly prefix: string;
  /** Whether the caller may see events of a path now (READ and LIST). */
  readonly visible: (path: string) => boolean;
  /** Events and heartbeats a stream may hold unsent before it ends with RESOURCE_EXHAUSTED. */
  readonly bufferLimit: number;
  readonly heartbeatMs: number;
  /** When the stream ends by itself (cleanly): lifetime or SVID expiry. */
  readonly endAt: number;
}

export class WatchStream implements AsyncIterable<WatchEvent> {
  private readonly queue: WatchEvent[] = [];
  /** Live events that arrived while the stream was still reading its backlog. */
  private held: Array<{ row: SecretEventRow; readAt: number }> | undefined;
  private wake: (() => void) | undefined;
  private ending: { error?: NexusError } | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly closed: Array<() => void> = [];

  constructor(
    private position: EventPosition,
    private readonly opts: WatchStreamOptions,
    catchingUp: boolean,
  ) {
    if (catchingUp) this.held = [];
    // The first response says the stream is open and where it starts, so a
    // client that leaves before anything happens still resumes without a gap.
    else this.heartbeat();
    const heartbeat = setInterval(() => this.heartbeat(), opts.heartbeatMs);
    const deadline = setTimeout(() => this.end(), Math.max(0, opts.endAt - Date.now()));
    heartbeat.unref();
    deadline.unref();
    this.timers.push(heartbeat, deadline);
  }

  get ended(): boolean {
    return this.ending !== undefined;
  }

  /** The position everything up to which has been queued or passed over. */
  get at(): EventPosition {
    return this.position;
  }

  /** Runs `fn` once the stream has ended (the hub forgets it). */
  onClose(fn: () => void): void {
    if (this.ending !== undefined && this.queue.length === 0) fn();
    else this.closed.push(fn);
  }

  /** A live event from the hub, read from the database at `readAt`. */
  offer(row: SecretEventRow, readAt: number): void {
    if (this.ending !== undefined) return;
    if (this.held !== undefined) {
      this.held.push({ row, readAt });
      if (this.held.length + this.queue.length > this.opts.bufferLimit) this.overflow();
      return;
    }
    this.deliver(row, readAt);
  }

  /** The hub has read everything up to `next` (live); the backlog reader calls it with its pages too. */
  advance(next: EventPosition): void {
    if (this.held === undefined && comparePositions(next, this.position) > 0) this.position = next;
  }

  /** A page of the backlog (catch-up), in order. */
  backlog(rows: readonly SecretEventRow[], next: EventPosition, readAt: number): void {
    for (const row of rows) this.deliver(row, readAt);
    if (comparePositions(next, this.position) > 0) this.position = next;
  }

  /** The backlog is read: live events held meanwhile follow, and later ones flow straight through. */
  caughtUp(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const h of held) this.deliver(h.row, h.readAt);
    this.heartbeat();
  }

  /** Ends the stream: cleanly (undefined) after what is queued, or with an error at once. */
  end(error?: NexusError): void {
    if (this.ending !== undefined) return;
    this.ending = error === undefined ? {} : { error };
    if (error !== undefined) this.queue.length = 0;
    this.held = undefined;
    this.timers.forEach((t) => clearTimeout(t));
    this.wakeUp();
    if (this.queue.length === 0) this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (this.ending !== undefined) {
          if (this.ending.error !== undefined) throw this.ending.error;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      // The client went away (or the stream ended): stop and let the hub forget it.
      this.end();
      this.queue.length = 0;
      this.close();
    }
  }

  private deliver(row: SecretEventRow, readAt: number): void {
    if (this.ending !== undefined || comparePositions(row.position, this.position) <= 0) return;
    this.position = row.position;
    if (!row.path.startsWith(this.opts.prefix) || !this.opts.visible(row.path)) return;
    this.push({ type: row.type, path: row.path, versions: row.versions, labels: row.labels, time: row.time, cursor: encodeCursor(row.position, readAt) });
  }

  private heartbeat(): void {
    if (this.ending !== undefined) return;
    // An unread heartbeat is not stacked on another: the newer one replaces it.
    const last = this.queue[this.queue.length - 1];
    const now = Date.now();
    const beat: WatchEvent = { type: "HEARTBEAT", path: "", versions: [], labels: [], time: new Date(now), cursor: encodeCursor(this.position, now) };
    if (last?.type === "HEARTBEAT" && this.held === undefined) this.queue[this.queue.length - 1] = beat;
    else if (this.held === undefined) this.push(beat);
  }

  private push(e: WatchEvent): void {
    this.queue.push(e);
    if (this.queue.length + (this.held?.length ?? 0) > this.opts.bufferLimit) {
      this.overflow();
      return;
    }
    this.wakeUp();
  }

  private overflow(): void {
    this.end(
      new NexusError("resource_exhausted", `the watch stream fell more than ${this.opts.bufferLimit} events behind; resume with the cursor of the last event received`, {
        reason: "WATCH_BUFFER_FULL",
      }),
    );
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private close(): void {
    const fns = this.closed.splice(0);
    fns.forEach((fn) => fn());
  }
}
