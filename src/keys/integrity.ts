// MACs under the integrity key: HMAC-SHA256 over a canonical encoding, so a row
// read back from PostgreSQL (jsonb reorders keys) verifies exactly as written.
// Used for policies, admin credentials and audit events. Also derives subkeys
// of the integrity key for one purpose each (page tokens), so that no two uses
// ever share a key.

import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";

/** JSON with object keys sorted at every level: one byte string per value. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value instanceof Date) return value.toISOString();
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value as object)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

export function mac(key: Buffer, label: string, value: unknown): Buffer {
  return createHmac("sha256", key).update(label).update("\0").update(canonicalJson(value)).digest();
}

export function macMatches(key: Buffer, label: string, value: unknown, stored: Uint8Array | null | undefined): boolean {
  if (!stored || stored.length !== 32) return false;
  return timingSafeEqual(mac(key, label, value), stored);
}

/** The stored form of a bearer token: an HMAC, never the token. */
export function tokenDigest(key: Buffer, token: string): Buffer {
  return createHmac("sha256", key).update("nexus/v1/admin-credential\0").update(token).digest();
}

/**
 * A 256-bit key for one purpose, derived from the integrity key with
 * HKDF-SHA256 (RFC 5869; `purpose` is the info). The caller zeroes it after
 * use: derive it where it is used, never across an await.
 */
export function deriveKey(integrityKey: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync("sha256", integrityKey, Buffer.alloc(0), purpose, 32));
}
