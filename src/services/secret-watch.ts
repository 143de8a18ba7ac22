// WatchSecrets: guards the request (sealed? prefix and cursor valid?), opens a
// stream on this replica's hub (watch/watch-hub.ts) and turns its events into
// responses. Which events the caller sees is decided per event by
// ctx.access.mayWatch (READ and LIST on the path, by the policies in force
// when it is sent). The stream ends by itself at the earlier of its maximum
// lifetime and the caller's SVID expiry, and with UNAVAILABLE on a seal.

import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { SecretLabel, WatchEventType, type SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { ServerStreamHandler } from "../calls/call-context.js";
import { decodeCursor } from "../watch/watch-cursor.js";
import type { WatchHub } from "../watch/watch-hub.js";
import type { WatchEvent } from "../watch/watch-stream.js";
import { validatePrefix } from "./secret-rules.js";

export interface SecretWatchDeps {
  readonly hub: WatchHub;
  readonly keys: KeyManager;
  readonly maxLifetimeMs: number;
  readonly heartbeatMs: number;
  readonly bufferLimit: number;
}

/** The HEARTBEAT interval the issue promises proxies. */
export const WATCH_HEARTBEAT_MS = 15_000;
/** Events one stream may hold unsent (about 200 bytes each). */
export const WATCH_BUFFER_LIMIT = 1024;

const TYPES: Record<WatchEvent["type"], WatchEventType> = {
  VERSION_CREATED: WatchEventType.VERSION_CREATED,
  PROMOTED: WatchEventType.PROMOTED,
  DELETED: WatchEventType.DELETED,
  UNDELETED: WatchEventType.UNDELETED,
  DESTROYED: WatchEventType.DESTROYED,
  PURGED: WatchEventType.PURGED,
  EXPIRED: WatchEventType.EXPIRED,
  METADATA_UPDATED: WatchEventType.METADATA_UPDATED,
  ROTATION_DUE: WatchEventType.ROTATION_DUE,
  HEARTBEAT: WatchEventType.HEARTBEAT,
};

const LABELS: Record<string, SecretLabel> = { CURRENT: SecretLabel.CURRENT, PENDING: SecretLabel.PENDING, PREVIOUS: SecretLabel.PREVIOUS };

export function watchSecrets(d: SecretWatchDeps): ServerStreamHandler<typeof SecretService.method.watchSecrets> {
  return async function* (req, ctx) {
    if (d.keys.sealed) throw d.keys.sealedError();
    const prefix = validatePrefix(req.prefix);
    const cursor = decodeCursor(req.cursor);
    const stream = await d.hub.open({
      cursor,
      prefix,
      visible: ctx.access.mayWatch ?? (() => false),
      bufferLimit: d.bufferLimit,
      heartbeatMs: d.heartbeatMs,
      endAt: Math.min(Date.now() + d.maxLifetimeMs, ctx.svidNotAfterMs ?? Infinity),
    });
    // A client that leaves while the stream waits for events ends it at once.
    const leave = () => stream.end();
    ctx.signal?.addEventListener("abort", leave);
    try {
      for await (const e of stream) {
        yield {
          type: TYPES[e.type],
          path: e.path,
          versions: [...e.versions],
          labels: e.labels.map((l) => LABELS[l]).filter((l) => l !== undefined),
          time: timestampFromDate(e.time),
          cursor: e.cursor,
        };
      }
    } finally {
      ctx.signal?.removeEventListener("abort", leave);
      stream.end();
    }
  };
}
