// `watch()`: WatchSecrets as one long-lived async iterator. It keeps the
// cursor of the last response it yielded and, when the stream breaks
// (UNAVAILABLE: a replica went away; SEALED; WATCH_BUFFER_FULL; or a clean
// end at the stream's lifetime), opens a new one from that cursor — on the
// next replica, with backoff and jitter — so the caller sees every event once,
// in order, across reconnects. A cursor the server no longer knows
// (OUT_OF_RANGE, CURSOR_EXPIRED) cannot be resumed: events were lost, so the
// caller is told with a `cursor_expired` item and must re-read what it
// follows. Other failures (PERMISSION_DENIED, a malformed cursor, a server
// refused for its identity) end the iteration with a StreamFailure: retrying
// would not change them. Leaving the loop (break, return, throw) or aborting
// the signal cancels the open stream and any pending backoff. A stream that
// stays silent past idleTimeoutMs (no heartbeat) counts as UNAVAILABLE.

import type { MessageShape } from "@bufbuild/protobuf";
import { SecretService, WatchEventType, type WatchSecretsResponse } from "../../gen/spike/nexus/v1/secret_pb.js";
import { backoffDelay, sleep, type BackoffPolicy } from "../timing/backoff.js";
import { SERVER_IDENTITY_REJECTED, StreamFailure, type CallFailure, type CallOptions } from "./nexus-client.js";

export { WatchEventType, type WatchSecretsResponse };

export interface WatchOptions {
  /** Resume after this cursor (from an earlier watch); absent starts now. */
  readonly cursor?: string;
  /** Ends the iteration (cleanly, without an error) and cancels the stream. */
  readonly signal?: AbortSignal;
  readonly bearerToken?: string;
  /** Waits between reconnects (default 200 ms doubling to 10 s, with jitter). */
  readonly backoff?: BackoffPolicy;
  /**
   * A stream that sends nothing for this long (default 45 s: three of the
   * server's 15 s heartbeats) is taken for a dead connection or a hung replica
   * and replaced, from the cursor, on the next replica.
   */
  readonly idleTimeoutMs?: number;
  /** Called when a stream broke and another is about to be opened (for logs and health). */
  readonly onDisconnect?: (failure: CallFailure, retryInMs: number) => void;
  /** Called with each stream's first response (its opening heartbeat): the watch is live again. */
  readonly onConnect?: (resumed: boolean) => void;
}

/** What watch() yields: an event (heartbeats included) or word that events were lost. */
export type WatchItem =
  | { readonly kind: "event"; readonly event: WatchSecretsResponse }
  /**
   * The cursor was older than the server's retention: events after it are gone.
   * The iteration goes on from a new stream that was already open when this was
   * yielded, so re-reading everything now misses nothing.
   */
  | { readonly kind: "cursor_expired"; readonly message: string };

export const DEFAULT_WATCH_BACKOFF: BackoffPolicy = { initialMs: 200, maxMs: 10_000 };
export const DEFAULT_WATCH_IDLE_TIMEOUT_MS = 45_000;

/** Opens one WatchSecrets stream (on whichever replica the client prefers now). */
export type OpenWatchStream = (request: { prefix: string; cursor: string }, options: CallOptions) => AsyncIterable<MessageShape<typeof SecretService.method.watchSecrets.output>>;

export async function* watchSecrets(open: OpenWatchStream, prefix: string, options: WatchOptions = {}): AsyncGenerator<WatchItem, void, undefined> {
  const policy = options.backoff ?? DEFAULT_WATCH_BACKOFF;
  const idleMs = options.idleTimeoutMs ?? DEFAULT_WATCH_IDLE_TIMEOUT_MS;
  // Our own signal, so that leaving the loop also cuts a pending backoff short.
  const stop = new AbortController();
  const forward = () => stop.abort();
  options.signal?.addEventListener("abort", forward, { once: true });
  if (options.signal?.aborted) stop.abort();
  let cursor = options.cursor ?? "";
  let failures = 0;
  let expired: string | undefined;
  try {
    while (!stop.signal.aborted) {
      let received = 0;
      const openedAt = Date.now();
      let failure: CallFailure;
      // This stream's own signal: stopping ends it, and so does silence (the abort's reason says which).
      const attempt = new AbortController();
      const endAttempt = () => attempt.abort();
      stop.signal.addEventListener("abort", endAttempt, { once: true });
      let idle: NodeJS.Timeout | undefined;
      const watchIdle = () => {
        idle = setTimeout(() => attempt.abort(new StreamFailure("UNAVAILABLE", `no message from the server within ${idleMs} ms`)), idleMs);
      };
      try {
        watchIdle();
        for await (const event of open({ prefix, cursor }, { bearerToken: options.bearerToken, signal: attempt.signal })) {
          // The caller's pace is not the server's silence: the clock stops while the caller holds an item.
          clearTimeout(idle);
          if (received++ === 0) {
            failures = 0;
            options.onConnect?.(cursor !== "");
          }
          cursor = event.cursor;
          if (expired !== undefined) {
            // The new stream is open (this is its first heartbeat): whatever the caller re-reads now, later changes come as events.
            const message = expired;
            expired = undefined;
            yield { kind: "cursor_expired", message };
          }
          yield { kind: "event", event };
          watchIdle();
        }
        // A clean end: the stream's lifetime or the caller's SVID expiry. Resume at once if it served anything.
        failure = { code: "OK", message: "the stream ended" };
      } catch (err) {
        if (stop.signal.aborted) return;
        const silence: unknown = attempt.signal.reason;
        if (silence instanceof StreamFailure) failure = silence;
        else if (err instanceof StreamFailure) failure = err;
        else throw err;
      } finally {
        clearTimeout(idle);
        stop.signal.removeEventListener("abort", endAttempt);
      }
      if (stop.signal.aborted) return;
      if (failure.code === "OUT_OF_RANGE" && failure.reason === "CURSOR_EXPIRED") {
        expired = failure.message;
        cursor = "";
        continue;
      }
      if (!resumable(failure)) throw failure instanceof StreamFailure ? failure : new StreamFailure(failure.code, failure.message, failure.reason);
      // A stream that ended cleanly after a while resumes at once; one that ends as soon as it opens (a server
      // ending streams at the caller's SVID expiry, say) must not be reopened in a tight loop.
      const delay = failure.code === "OK" && received > 0 && Date.now() - openedAt >= 1000 ? 0 : backoffDelay(policy, failures++);
      options.onDisconnect?.(failure, delay);
      await sleep(delay, stop.signal);
    }
  } finally {
    options.signal?.removeEventListener("abort", forward);
    stop.abort();
  }
}

/** The ends a new stream from the same cursor can mend. */
function resumable(f: CallFailure): boolean {
  if (f.code === "OK") return true;
  if (f.code === "UNAVAILABLE") return f.reason !== SERVER_IDENTITY_REJECTED;
  if (f.code === "FAILED_PRECONDITION") return f.reason === "SEALED";
  if (f.code === "RESOURCE_EXHAUSTED") return f.reason === "WATCH_BUFFER_FULL";
  return false;
}
