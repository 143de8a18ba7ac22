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

/**
 * The parameters are stored beside the root key, where a database writer can
 * change them. No MAC can protect them: any key to check one would come from
 * scrypt run with these very parameters. Other parameters derive other keys
 * and fail the password check, so a writer gains nothing but the cost of
 * that scrypt; the bounds cap it before scrypt runs: memory (128 * N * r) at
 * twice the default's 128 MiB, and work (N * r * p) at four times the
 * default's, whatever the row says.
 */
const KDF_BOUNDS = {
  minLogN: 10,
  maxLogN: 20,
  maxR: 16,
  maxP: 4,
  maxMemoryBytes: 2 * 128 * DEFAULT_KDF_PARAMS.N * DEFAULT_KDF_PARAMS.r,
  maxWork: 4 * DEFAULT_KDF_PARAMS.N * DEFAULT_KDF_PARAMS.r * DEFAULT_KDF_PARAMS.p,
} as const;
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

/** The stored parameters, if they are scrypt within bounds; undefined otherwise. */
export function boundedKdfParams(raw: unknown): KdfParams | undefined {
  if (raw === null || typeof raw !== "object") return undefined;
  const { alg, N, r, p } = raw as Record<string, unknown>;
  const int = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);
  if (alg !== "scrypt" || !int(N) || !int(r) || !int(p)) return undefined;
  const logN = Math.log2(N);
  if (!Number.isInteger(logN) || logN < KDF_BOUNDS.minLogN || logN > KDF_BOUNDS.maxLogN) return undefined;
  if (r < 1 || r > KDF_BOUNDS.maxR || p < 1 || p > KDF_BOUNDS.maxP) return undefined;
  if (128 * N * r > KDF_BOUNDS.maxMemoryBytes || N * r * p > KDF_BOUNDS.maxWork) return undefined;
  return { alg, N, r, p };
}

export async function derivePasswordKeys(password: string, salt: Buffer, params: KdfParams): Promise<DerivedKeys> {
  const bounded = boundedKdfParams(params);
  if (bounded === undefined) throw new Error("scrypt parameters out of bounds");
  // scrypt needs 128 * N * r bytes; the bounds above cap that at 256 MiB.
  const maxmem = 128 * bounded.N * bounded.r + 1024 * 1024;
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
