// AES-256-GCM with the stored format every ciphertext in Nexus uses
// (after Vault's barrier): a format byte, the id of the key that sealed it, a
// fresh random 96-bit nonce, then ciphertext and tag. The associated data binds
// a ciphertext to where it belongs; callers build it with `associatedData` so
// that no two contexts can produce the same bytes.

import { createCipheriv, createDecipheriv, randomFillSync } from "node:crypto";
import { NexusError } from "../errors/nexus-error.js";

export const FORMAT_V1 = 1;
const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const HEADER_BYTES = 1 + 4 + NONCE_BYTES;

/** A fresh random key in memory of its own (so zeroing it leaves no copy behind). */
export function newKey(): Buffer {
  return randomFillSync(Buffer.allocUnsafeSlow(KEY_BYTES));
}

export function seal(key: Buffer, keyId: number, plaintext: Uint8Array, aad: Buffer): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + plaintext.byteLength + TAG_BYTES);
  out.writeUInt8(FORMAT_V1, 0);
  out.writeUInt32BE(keyId, 1);
  takeNonce(out, 5);
  const cipher = createCipheriv("aes-256-gcm", key, out.subarray(5, HEADER_BYTES));
  cipher.setAAD(Buffer.concat([out.subarray(0, 5), aad]));
  // GCM is a stream mode: update() returns all the ciphertext, final() nothing.
  const body = cipher.update(plaintext);
  cipher.final();
  body.copy(out, HEADER_BYTES);
  cipher.getAuthTag().copy(out, HEADER_BYTES + body.length);
  return out;
}

// Nonces are random 96-bit values (at most 2^32 seals per key keeps collisions
// negligible, NIST SP 800-38D 8.3), drawn from a pool refilled 4 KiB at a time:
// randomBytes(12) costs ~7 µs here, mostly per-call overhead. Nonces are
// public, and each pool byte is handed out once.
const noncePool = Buffer.allocUnsafeSlow(4096 - (4096 % NONCE_BYTES));
let noncePoolAt = noncePool.length;

function takeNonce(into: Buffer, at: number): void {
  if (noncePoolAt === noncePool.length) {
    randomFillSync(noncePool);
    noncePoolAt = 0;
  }
  noncePool.copy(into, at, noncePoolAt, noncePoolAt + NONCE_BYTES);
  noncePoolAt += NONCE_BYTES;
}

/**
 * A copy with its own memory. Small Buffers are slices of shared 8 KiB slabs (or
 * of a driver's receive buffer), so caching one pins the whole slab: measured,
 * 10,000 cached data keys held ~100 MB. Long-lived buffers are copied out.
 */
export function ownedCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.byteLength);
  copy.set(bytes);
  return copy;
}

/** `bytes` itself if it already is the whole of its memory, else an ownedCopy: for buffers that are kept. */
export function owned(bytes: Buffer): Buffer {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : ownedCopy(bytes);
}

/** The key id recorded in a sealed blob's header. */
export function sealedKeyId(blob: Uint8Array): number {
  if (blob.length < HEADER_BYTES + TAG_BYTES || blob[0] !== FORMAT_V1) throw undecryptable();
  return Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength).readUInt32BE(1);
}

export function open(key: Buffer, blob: Uint8Array, aad: Buffer): Buffer {
  const buf = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  if (buf.length < HEADER_BYTES + TAG_BYTES || buf[0] !== FORMAT_V1) throw undecryptable();
  const nonce = buf.subarray(5, HEADER_BYTES);
  const tag = buf.subarray(buf.length - TAG_BYTES);
  const decipher = createDecipheriv("aes-256-gcm", key, nonce);
  decipher.setAAD(Buffer.concat([buf.subarray(0, 5), aad]));
  decipher.setAuthTag(tag);
  try {
    // GCM is a stream mode: update() returns all the plaintext, final() only checks the tag.
    const plaintext = decipher.update(buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES));
    decipher.final();
    return plaintext;
  } catch {
    throw undecryptable();
  }
}

/**
 * Associated data from a context label and fields, each length-prefixed so that
 * ("ab","c") and ("a","bc") differ.
 */
export function associatedData(label: string, ...fields: Array<string | number | Uint8Array>): Buffer {
  // One allocation: sizes first, then each field after its 4-byte length.
  let size = 4 + Buffer.byteLength(label, "utf8");
  for (const field of fields) size += 4 + (typeof field === "number" ? 4 : typeof field === "string" ? Buffer.byteLength(field, "utf8") : field.byteLength);
  const out = Buffer.allocUnsafe(size);
  let at = writeText(out, 0, label);
  for (const field of fields) {
    if (typeof field === "number") {
      at = out.writeUInt32BE(4, at);
      at = out.writeUInt32BE(field, at);
    } else if (typeof field === "string") {
      at = writeText(out, at, field);
    } else {
      at = out.writeUInt32BE(field.byteLength, at);
      out.set(field, at);
      at += field.byteLength;
    }
  }
  return out;
}

function writeText(out: Buffer, at: number, text: string): number {
  const written = out.write(text, at + 4, "utf8");
  out.writeUInt32BE(written, at);
  return at + 4 + written;
}

// One message for every failure: which check failed is of no use to a caller
// and of some use to an attacker. Used for every integrity failure in keys/.
export function undecryptable(): NexusError {
  return new NexusError("internal", "stored data failed its integrity check", { reason: "INTEGRITY_CHECK_FAILED" });
}
