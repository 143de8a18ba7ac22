// MACs that name the integrity key that made them, for per-secret rows (label
// states, rotation policies) that a key rotation re-MACs in batches while
// requests go on: the stored form is the key id (4 bytes, big-endian) then the
// HMAC. A replica verifies a row with the key it names, and a key other than
// the active one only while the rotation that retired it is still re-MACing
// (KeyManager.integrityKeyForRow). 32-byte MACs, written before key rotation
// existed, were all made under the first integrity key.

import { mac, macMatches } from "./integrity.js";

/** The integrity key the first Initialize creates; stored MACs without a key id are under it. */
export const FIRST_INTEGRITY_KEY_ID = 2;

export interface IntegrityKeyRef {
  readonly id: number;
  readonly key: Buffer;
}

/** The key a row MAC'd under key `id` verifies with, or undefined if such a row is not to be accepted. */
export type IntegrityKeyLookup = (id: number) => Buffer | undefined;

export function keyedMac(k: IntegrityKeyRef, label: string, value: unknown): Buffer {
  const id = Buffer.alloc(4);
  id.writeUInt32BE(k.id);
  return Buffer.concat([id, mac(k.key, label, value)]);
}

/** The integrity key id a stored MAC names (undefined for one of neither form). */
export function keyedMacKeyId(stored: Uint8Array | null | undefined): number | undefined {
  if (!stored) return undefined;
  if (stored.length === 32) return FIRST_INTEGRITY_KEY_ID;
  if (stored.length !== 36) return undefined;
  return Buffer.from(stored.buffer, stored.byteOffset, 4).readUInt32BE(0);
}

/** Whether `stored` is the MAC of `value` under the key it names, as `lookup` allows it (constant-time compare). */
export function keyedMacMatches(lookup: IntegrityKeyLookup, label: string, value: unknown, stored: Uint8Array | null | undefined): boolean {
  const id = keyedMacKeyId(stored);
  if (id === undefined) return false;
  const key = lookup(id);
  if (key === undefined) return false;
  return macMatches(key, label, value, stored!.length === 32 ? stored : stored!.subarray(4));
}
