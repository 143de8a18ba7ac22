// admin password -> scrypt -> key-encryption key (KEK) and password-check key.
// scrypt runs on the libuv pool (never on the event loop); its salt and
// parameters are stored with the root key so they can be raised later. The
// stored check is an HMAC under a key derived with the KEK, never a fast hash of
// the password itself.

import { createHmac, randomBytes, scrypt, timingSafeEqual } from "node:crypto";

export interface KdfParams {
  readonly alg: "scrypt";
  readonly N: number;
  readonly r: number;
  readonly p: number;
}

export const DEFAULT_KDF_PARAMS: KdfParams = { alg: "scrypt", N: 2 ** 17, r: 8, p: 1 };
const CHECK_LABEL = Buffer.from("nexus/v1/admin-password-check");

export interface DerivedKeys {
  /** Seals the root key. Zero it after use. */
  readonly kek: Buffer;
  /** Keys the password-check HMAC. Zero it after use. */
  readonly checkKey: Buffer;
}

export function newSalt(): Buffer {
  return randomBytes(16);
}

export async function derivePasswordKeys(password: string, salt: Buffer, params: KdfParams): Promise<DerivedKeys> {
  if (params.alg !== "scrypt") throw new Error(`unsupported KDF ${String(params.alg)}`);
  const maxmem = Math.max(256 * 1024 * 1024, 256 * params.N * params.r);
  const out = await new Promise<Buffer>((resolve, reject) =>
    scrypt(password.normalize("NFC"), salt, 64, { N: params.N, r: params.r, p: params.p, maxmem }, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
  const keys = { kek: Buffer.from(out.subarray(0, 32)), checkKey: Buffer.from(out.subarray(32, 64)) };
  out.fill(0);
  return keys;
}

export function passwordCheck(checkKey: Buffer, salt: Buffer): Buffer {
  return createHmac("sha256", checkKey).update(CHECK_LABEL).update(salt).digest();
}

export function passwordCheckMatches(checkKey: Buffer, salt: Buffer, stored: Buffer): boolean {
  const computed = passwordCheck(checkKey, salt);
  return computed.length === stored.length && timingSafeEqual(computed, stored);
}
