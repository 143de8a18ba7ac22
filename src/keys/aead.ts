// AES-256-GCM with the stored format every ciphertext in Nexus uses
// (after Vault's barrier): a format byte, the id of the key that sealed it, a
// fresh random 96-bit nonce, then ciphertext and tag. The associated data binds
// a ciphertext to where it belongs; callers build it with `associatedData` so
// that no two contexts can produce the same bytes.

import { createCipheriv, createDecipheriv, randomBytes, randomFillSync } from "node:crypto";
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
  const nonce = randomBytes(NONCE_BYTES);
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header.writeUInt8(FORMAT_V1, 0);
  header.writeUInt32BE(keyId, 1);
  nonce.copy(header, 5);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.concat([header.subarray(0, 5), aad]));
  const body = cipher.update(plaintext);
  const final = cipher.final();
  return Buffer.concat([header, body, final, cipher.getAuthTag()]);
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
    return Buffer.concat([decipher.update(buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES)), decipher.final()]);
  } catch {
    throw undecryptable();
  }
}

/**
 * Associated data from a context label and fields, each length-prefixed so that
 * ("ab","c") and ("a","bc") differ.
 */
export function associatedData(label: string, ...fields: Array<string | number | Uint8Array>): Buffer {
  const parts: Buffer[] = [];
  for (const field of [label, ...fields]) {
    let bytes: Buffer;
    if (typeof field === "number") {
      bytes = Buffer.allocUnsafe(4);
      bytes.writeUInt32BE(field, 0);
    } else {
      bytes = typeof field === "string" ? Buffer.from(field, "utf8") : Buffer.from(field);
    }
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(bytes.length, 0);
    parts.push(len, bytes);
  }
  return Buffer.concat(parts);
}

// One message for every failure: which check failed is of no use to a caller
// and of some use to an attacker. Used for every integrity failure in keys/.
export function undecryptable(): NexusError {
  return new NexusError("internal", "stored data failed its integrity check", { reason: "INTEGRITY_CHECK_FAILED" });
}
