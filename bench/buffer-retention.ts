// How much memory the server's per-secret caches pin, and why: Node serves
// Buffers under 4 KiB (Buffer.from(hex), Buffer.concat, Buffer.from(buffer))
// as slices of shared 8 KiB slabs, and one live slice keeps its whole slab.
// The caches keep three such slices per secret (SecretCipher: the copied
// wrapped key and the unwrapped key; secretService's `known`: the wrapped key
// as postgres.js parsed it), each allocated between a request's other small
// buffers, so each can pin its own slab. Measured here in a fresh process,
// pooled as today versus copied into their own small ArrayBuffers.
//   node --expose-gc dist/bench/buffer-retention.js [entries]

import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

export interface Retention {
  readonly entries: number;
  readonly pooledMb: number;
  readonly unpooledMb: number;
}

function arrayBuffersMb(): number {
  (globalThis as { gc?: () => void }).gc?.();
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().arrayBuffers / 1024 / 1024;
}

/** Fills caches the way a request path does: small garbage buffers between the cached ones. */
function fill(entries: number, keep: (b: Buffer) => Buffer): Buffer[] {
  const cache: Buffer[] = [];
  const hex = randomBytes(65).toString("hex");
  for (let i = 0; i < entries; i++) {
    // What one request allocates around its cached buffers (headers, AAD, rows…): short-lived.
    for (let j = 0; j < 24; j++) Buffer.from(`x-request-garbage-${i}-${j}`.repeat(4));
    cache.push(keep(Buffer.from(hex, "hex"))); // postgres.js: bytea text → Buffer (pooled)
    for (let j = 0; j < 24; j++) Buffer.from(`y-request-garbage-${i}-${j}`.repeat(4));
    cache.push(keep(Buffer.from(cache[cache.length - 1]))); // SecretCipher.remember: Buffer.from(wrapped)
    for (let j = 0; j < 24; j++) Buffer.from(`z-request-garbage-${i}-${j}`.repeat(4));
    cache.push(keep(Buffer.concat([Buffer.from(hex.slice(0, 32), "hex"), Buffer.from(hex.slice(32, 64), "hex")]))); // aead.open → data key
  }
  return cache;
}

/** A copy in memory of its own: what a cache should keep. */
export function unpooledCopy(b: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(b.byteLength);
  copy.set(b);
  return copy;
}

/** ArrayBuffer memory still held while `cache` is alive, in MB. */
function retainedBy(build: () => Buffer[]): number {
  const base = arrayBuffersMb();
  const cache = build();
  const held = arrayBuffersMb() - base;
  return cache.length > 0 ? held : 0;
}

export function measureRetention(entries: number): Retention {
  const pooledMb = retainedBy(() => fill(entries, (b) => b));
  const unpooledMb = retainedBy(() => fill(entries, unpooledCopy));
  return { entries, pooledMb, unpooledMb };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const entries = Number(process.argv[2] ?? 10_000);
  if (!(globalThis as { gc?: () => void }).gc) process.stderr.write("run with node --expose-gc for exact numbers\n");
  const r = measureRetention(entries);
  process.stdout.write(
    `${r.entries} cached secrets × 3 small buffers: pooled (as today) ${r.pooledMb.toFixed(1)} MB of ArrayBuffers, ` +
      `unpooled copies ${r.unpooledMb.toFixed(1)} MB\n`,
  );
}
