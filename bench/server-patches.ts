// Bench-only emulations of proposed src/ changes, preloaded into a second
// server process (NODE_OPTIONS="--import …/server-patches.js", BENCH_PATCHES=
// a,b) so an A/B run can measure a change before anyone writes it. Never
// loaded by the product. Each patch reproduces the effect of a fix, not its
// code:
//   peer-certificate  the peer certificate is parsed once per TLS connection,
//                     not once per call (grpc-js getAuthContext() calls
//                     TLSSocket.getPeerCertificate() on every call)
//   abort-reason      no DOMException (with its stack trace) per call: grpc-js
//                     emits "cancelled" when every stream closes, so
//                     grpc-server.ts aborts every call's AbortController
//   postgres-queue    postgres.js's pool queue stops growing by one slot per
//                     query while every connection is busy (postgres-queue-hook.ts)
//   postgres-fifo     the pool as before the LIFO patch: one call at a time
//                     rotates through every idle connection (B = "before";
//                     postgres-fifo-hook.ts)
//   buffer-pool-off   no small Buffer is a slice of a shared 8 KiB slab, so a
//                     cached key or wrapped key pins only its own bytes (an
//                     over-approximation of copying cached buffers out of the
//                     pool: every small Buffer pays for its own allocation)
//   v8-flags          V8 flags that NODE_OPTIONS refuses (BENCH_V8_FLAGS, e.g.
//                     "--heap-growing-percent=50"), set before the server loads
//   audit-two-batches the audit group commit runs up to two batches at once
//                     (an event that arrives while one is in flight starts
//                     the next at once instead of waiting for it); the put
//                     group commit (keyed) stays one at a time
//   channelz-off      grpc-js's channelz bookkeeping off (grpc.enable_channelz
//                     0: no per-call timestamps and counters; Nexus serves no
//                     channelz service, so nothing reads them)
//   tail-probe        observes only: event-loop delay, GC pauses and the group
//                     commits' batches, one JSON line a second (tail-probe.ts)

import { register } from "node:module";
import { TLSSocket, type PeerCertificate, type DetailedPeerCertificate } from "node:tls";

const patches = new Set((process.env.BENCH_PATCHES ?? "").split(",").filter(Boolean));

if (patches.has("v8-flags")) {
  const { setFlagsFromString } = await import("node:v8");
  for (const flag of (process.env.BENCH_V8_FLAGS ?? "").split(/\s+/).filter(Boolean)) setFlagsFromString(flag);
}

if (patches.has("peer-certificate")) {
  const original = TLSSocket.prototype.getPeerCertificate;
  const memo = new WeakMap<TLSSocket, PeerCertificate | DetailedPeerCertificate>();
  TLSSocket.prototype.getPeerCertificate = function (this: TLSSocket, detailed?: boolean) {
    if (detailed) return original.call(this, true);
    let cert = memo.get(this);
    if (cert === undefined) {
      cert = original.call(this, false);
      // Only a completed handshake's certificate is final.
      if (cert && Object.keys(cert).length > 0) memo.set(this, cert);
    }
    return cert as PeerCertificate;
  } as typeof TLSSocket.prototype.getPeerCertificate;
}

if (patches.has("abort-reason")) {
  const original = AbortController.prototype.abort;
  const reason = new DOMException("This operation was aborted", "AbortError");
  AbortController.prototype.abort = function (this: AbortController, why?: unknown) {
    original.call(this, why === undefined ? reason : why);
  };
}

if (patches.has("postgres-queue")) {
  register(new URL("./postgres-queue-hook.js", import.meta.url));
}

if (patches.has("postgres-fifo")) {
  register(new URL("./postgres-fifo-hook.js", import.meta.url));
}

if (patches.has("buffer-pool-off")) {
  Buffer.poolSize = 0;
}

if (patches.has("audit-two-batches")) {
  const { GroupCommit } = await import("../src/store/group-commit.js");
  type Internals = { options: { key?: unknown }; running: boolean; queue: unknown[]; second?: boolean; take(): Array<{ item: unknown; resolve(r: unknown): void; reject(e: unknown): void }>; run(b: unknown[]): Promise<unknown[]> };
  const proto = GroupCommit.prototype as unknown as { submit(item: unknown): Promise<unknown> };
  const submit = proto.submit;
  const second = async (g: Internals) => {
    while (g.queue.length > 0) {
      const batch = g.take();
      try {
        const results = await g.run(batch.map((w) => w.item));
        batch.forEach((w, i) => w.resolve(results[i]));
      } catch (err) {
        for (const w of batch) w.reject(err);
      }
    }
    g.second = false;
  };
  proto.submit = function (this: Internals, item: unknown) {
    const p = submit.call(this, item);
    if (this.options.key === undefined && this.running && !this.second) {
      this.second = true;
      setImmediate(() => void second(this));
    }
    return p;
  };
}

if (patches.has("channelz-off")) {
  // grpc-js's index re-exports Server through a getter over this module's
  // (writable) export; the server modules import grpc-js after this preload.
  const { createRequire } = await import("node:module");
  const serverModule = createRequire(import.meta.url)("@grpc/grpc-js/build/src/server.js") as { Server: typeof import("@grpc/grpc-js").Server };
  const Original = serverModule.Server;
  serverModule.Server = class extends Original {
    constructor(options?: import("@grpc/grpc-js").ServerOptions) {
      super({ ...options, "grpc.enable_channelz": 0 });
    }
  };
}

if (patches.has("tail-probe")) {
  await import("./tail-probe.js");
}

for (const p of patches) {
  if (!["audit-two-batches", "channelz-off", "tail-probe", "peer-certificate", "abort-reason", "buffer-pool-off", "postgres-queue", "postgres-fifo", "v8-flags"].includes(p)) throw new Error(`server-patches: unknown patch "${p}"`);
}
