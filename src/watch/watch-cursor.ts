// The WatchSecrets cursor: an opaque string that names a place in the event
// log — the (xid, id) of the last event a stream delivered or passed over —
// and when it was handed out, so that a cursor older than the retention
// window is refused instead of silently skipping events that were removed.
// It grants nothing (every event is filtered again when it is sent), so it
// carries no MAC; a malformed one is INVALID_ARGUMENT.

import { NexusError } from "../errors/nexus-error.js";
import type { EventPosition } from "../store/secret-event-store.js";

const VERSION = "w1";
const FORM = /^w1\.(\d{1,20})\.(\d{1,19})\.(\d{1,15})$/;

export interface WatchCursor {
  readonly position: EventPosition;
  /** When the cursor was handed out (ms since the epoch). */
  readonly issuedAt: number;
}

export function encodeCursor(position: EventPosition, issuedAt: number): string {
  return Buffer.from(`${VERSION}.${position.xid}.${position.id}.${Math.floor(issuedAt)}`, "utf8").toString("base64url");
}

/** The cursor a request names, or undefined for "" (start now); INVALID_ARGUMENT if it is not one of ours. */
export function decodeCursor(cursor: string): WatchCursor | undefined {
  if (cursor === "") return undefined;
  const m = /^[A-Za-z0-9_-]{1,128}$/.test(cursor) ? FORM.exec(Buffer.from(cursor, "base64url").toString("utf8")) : null;
  if (m === null || BigInt(m[1]) >= 2n ** 64n || BigInt(m[2]) >= 2n ** 63n) {
    throw NexusError.invalidArgument("cursor", "the cursor is not one WatchSecrets handed out; pass the cursor of the last event received, or none to start now", "MALFORMED_CURSOR");
  }
  return { position: { xid: m[1], id: m[2] }, issuedAt: Number(m[3]) };
}

/** OUT_OF_RANGE CURSOR_EXPIRED for a cursor older than the retention window. */
export function checkCursorAge(cursor: WatchCursor, retentionMs: number, now = Date.now()): void {
  if (cursor.issuedAt < now - retentionMs) {
    throw new NexusError("out_of_range", `the cursor is older than the event retention (${Math.round(retentionMs / 1000)} s); events since may be gone: re-read the secrets you follow, then watch again without a cursor`, {
      reason: "CURSOR_EXPIRED",
    });
  }
}
