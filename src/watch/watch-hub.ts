// The per-replica hub of WatchSecrets: one LISTEN and one poller per replica
// read each new event once and hand it to every local stream, so a thousand
// watchers cost one query per batch of events, not a thousand. A stream that
// resumes from a cursor reads its backlog itself (up to where the hub was when
// it joined) while live events wait in its buffer, then follows the hub.
//
// The poller reads on every NOTIFY; when a notified event is not readable yet
// (an older transaction is still running, see secret-event-store.ts) it polls
// again soon, backing off; and it polls every second regardless, in case a
// notification was lost while the listener reconnected.

import type { Logger } from "../log/logger.js";
import { comparePositions, type EventPosition, type SecretEventStore } from "../store/secret-event-store.js";
import { NexusError } from "../errors/nexus-error.js";
import { checkCursorAge, type WatchCursor } from "./watch-cursor.js";
import { WatchStream, type WatchStreamOptions } from "./watch-stream.js";

/** Events read per query. */
const PAGE = 500;
/** First re-poll after a NOTIFY that brought nothing readable yet; doubles up to the steady interval. */
const FIRST_RETRY_MS = 10;
/** How long a NOTIFY that brought nothing keeps the poller retrying fast. */
const RETRY_WINDOW_MS = 5_000;

export interface WatchHubOptions {
  readonly store: SecretEventStore;
  readonly logger: Logger;
  /** How long cursors stay valid (events are kept a little longer). */
  readonly retentionMs: number;
  /** The steady poll, in case a NOTIFY was lost (default 1 s). */
  readonly pollIntervalMs?: number;
}

export interface OpenWatch extends Omit<WatchStreamOptions, "endAt"> {
  /** Where to resume; undefined starts now. */
  readonly cursor: WatchCursor | undefined;
  readonly endAt: number;
}

export class WatchHub {
  private position: EventPosition | undefined;
  private readonly streams = new Set<WatchStream>();
  private listener: { unlisten(): Promise<void> } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private polling = false;
  private again = false;
  /** Until when a NOTIFY that has not produced events keeps fast re-polls going. */
  private owedUntil = 0;
  private retryMs = FIRST_RETRY_MS;
  private stopped = false;

  constructor(private readonly o: WatchHubOptions) {}

  /** Starts at "now" and begins listening. */
  async start(): Promise<void> {
    this.position = await this.o.store.now();
    this.listener = await this.o.store.listen(() => {
      this.owedUntil = Date.now() + RETRY_WINDOW_MS;
      this.retryMs = FIRST_RETRY_MS;
      void this.poll();
    });
    this.timer = setInterval(() => void this.poll(), this.o.pollIntervalMs ?? 1000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    await this.listener?.unlisten().catch(() => {});
    this.endAll(new NexusError("unavailable", "the server is shutting down; resume the watch with your last cursor", { reason: "SHUTTING_DOWN" }));
  }

  /** How many streams this replica serves. */
  get size(): number {
    return this.streams.size;
  }

  /** Ends every stream (a seal, a shutdown). */
  endAll(error: NexusError): void {
    for (const s of [...this.streams]) s.end(error);
    this.streams.clear();
  }

  /**
   * Opens a stream: OUT_OF_RANGE CURSOR_EXPIRED for a cursor older than the
   * retention, INVALID_ARGUMENT for one this database never handed out.
   */
  async open(w: OpenWatch): Promise<WatchStream> {
    if (this.position === undefined || this.stopped) throw new NexusError("unavailable", "watching is not available yet; retry", { reason: "WATCH_UNAVAILABLE" });
    if (w.cursor !== undefined) {
      checkCursorAge(w.cursor, this.o.retentionMs);
      if (!(await this.o.store.isKnown(w.cursor.position))) {
        throw NexusError.invalidArgument("cursor", "the cursor is ahead of this database (from another installation?); watch again without a cursor", "MALFORMED_CURSOR");
      }
    }
    // "Now" is the database's horizon, not the hub's position, which lags it
    // by a poll: events the hub has yet to read but that ended before this
    // call are not sent to a stream that starts now.
    const from = w.cursor?.position ?? (await this.o.store.now());
    const live = this.position;
    const behind = w.cursor !== undefined && comparePositions(from, live) < 0;
    const stream = new WatchStream(behind || comparePositions(from, live) > 0 ? from : live, w, behind);
    this.streams.add(stream);
    stream.onClose(() => this.streams.delete(stream));
    if (behind) void this.catchUp(stream, from, live);
    return stream;
  }

  /** Reads a resumed stream's backlog, (cursor, live], then lets it follow the hub. */
  private async catchUp(stream: WatchStream, from: EventPosition, upTo: EventPosition): Promise<void> {
    try {
      let after = from;
      while (!stream.ended) {
        const readAt = Date.now();
        const page = await this.o.store.readAfter(after, PAGE, upTo);
        stream.backlog(page.events, page.next, readAt);
        after = page.next;
        if (page.events.length < PAGE) break;
      }
      stream.caughtUp();
    } catch (err) {
      this.o.logger.warn("watch backlog not read", { err });
      stream.end(err instanceof NexusError ? err : new NexusError("unavailable", "the watch backlog could not be read; resume with your cursor", { reason: "WATCH_UNAVAILABLE" }));
    }
  }

  private async poll(): Promise<void> {
    if (this.stopped || this.position === undefined) return;
    if (this.polling) {
      this.again = true;
      return;
    }
    this.polling = true;
    let delivered = 0;
    try {
      do {
        this.again = false;
        for (;;) {
          const readAt = Date.now();
          const page = await this.o.store.readAfter(this.position, PAGE);
          delivered += page.events.length;
          for (const s of this.streams) {
            if (s.ended) continue;
            for (const e of page.events) s.offer(e, readAt);
            s.advance(page.next);
          }
          this.position = page.next;
          if (page.events.length < PAGE) break;
        }
      } while (this.again && !this.stopped);
    } catch (err) {
      this.o.logger.warn("watch events not read; retrying", { err });
    } finally {
      this.polling = false;
    }
    this.scheduleRetry(delivered);
  }

  // A NOTIFY arrives at commit, but its events become readable only once every
  // older transaction has ended too: poll again soon until they show up.
  private scheduleRetry(delivered: number): void {
    if (delivered > 0) this.owedUntil = 0;
    if (this.stopped || Date.now() >= this.owedUntil || this.retry !== undefined) return;
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.o.pollIntervalMs ?? 1000);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.poll();
    }, wait);
    this.retry.unref();
  }
}
