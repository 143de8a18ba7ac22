// The rules a secret request must meet before anything is read or written:
// path syntax, data size, version lists, metadata limits and page tokens. Each
// failure is an INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for size) naming the
// field and the rule it broke, and never echoing a secret value. Page tokens
// are sealed here under a key derived from the integrity key.

import { NexusError } from "../errors/nexus-error.js";
import { associatedData, open, seal } from "../keys/aead.js";
import { deriveKey } from "../keys/integrity.js";
import { isStorableText } from "../store/storable-text.js";

const MAX_PATH_LENGTH = 255;
/** Versions are PostgreSQL integers. */
export const MAX_VERSION = 2_147_483_646;
/** timestamptz and google.protobuf.Timestamp agree up to the end of year 9999. */
const MAX_TIME_MS = Date.UTC(9999, 11, 31, 23, 59, 59);
export const MAX_VERSIONS_LIMIT = 1000;
export const DEFAULT_MAX_VERSIONS = 10;
const MAX_CUSTOM_METADATA_KEYS = 64;
const MAX_METADATA_KEY_LENGTH = 128;
const MAX_METADATA_VALUE_LENGTH = 512;
const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;
const SEGMENT = /^[A-Za-z0-9._-]+$/;
const PREFIX = /^[A-Za-z0-9._/-]*$/;

export function validatePath(path: string, field = "path"): string {
  if (path.length === 0) throw NexusError.invalidArgument(field, "must not be empty", "INVALID_PATH");
  if (path.length > MAX_PATH_LENGTH) throw NexusError.invalidArgument(field, `must be at most ${MAX_PATH_LENGTH} characters`, "INVALID_PATH");
  if (path.startsWith("/") || path.endsWith("/")) throw NexusError.invalidArgument(field, 'must not start or end with "/"', "INVALID_PATH");
  for (const segment of path.split("/")) {
    if (segment === "") throw NexusError.invalidArgument(field, 'must not contain an empty segment ("//")', "INVALID_PATH");
    if (segment === "." || segment === "..") throw NexusError.invalidArgument(field, 'must not contain a "." or ".." segment', "INVALID_PATH");
    if (!SEGMENT.test(segment)) throw NexusError.invalidArgument(field, "segments may contain only A-Z, a-z, 0-9, '.', '_' and '-'", "INVALID_PATH");
  }
  return path;
}

export function validatePrefix(prefix: string): string {
  if (prefix.length > MAX_PATH_LENGTH) throw NexusError.invalidArgument("prefix", `must be at most ${MAX_PATH_LENGTH} characters`, "INVALID_PREFIX");
  if (!PREFIX.test(prefix)) throw NexusError.invalidArgument("prefix", "may contain only the characters of a path: A-Z, a-z, 0-9, '.', '_', '-' and '/'", "INVALID_PREFIX");
  return prefix;
}

/** The encoded form of a version's data, checked for size. */
export function encodeData(data: Record<string, string>, maxBytes: number): Buffer {
  const keys = Object.keys(data);
  if (keys.length === 0) throw NexusError.invalidArgument("data", "must hold at least one key", "EMPTY_DATA");
  if (keys.some((k) => k.length === 0)) throw NexusError.invalidArgument("data", "keys must not be empty", "INVALID_DATA");
  const encoded = Buffer.from(JSON.stringify(data), "utf8");
  if (encoded.length > maxBytes) {
    encoded.fill(0);
    throw new NexusError("resource_exhausted", `data: ${encoded.length} bytes encoded exceeds the limit of ${maxBytes}`, { reason: "SECRET_TOO_LARGE" });
  }
  return encoded;
}

export function validateVersions(versions: readonly number[], required: boolean): number[] {
  if (required && versions.length === 0) throw NexusError.invalidArgument("versions", "name at least one version", "NO_VERSIONS");
  if (versions.length > MAX_VERSIONS_LIMIT) throw NexusError.invalidArgument("versions", `at most ${MAX_VERSIONS_LIMIT} versions per call`, "TOO_MANY_VERSIONS");
  if (versions.some((v) => v < 1)) throw NexusError.invalidArgument("versions", "versions are numbered from 1", "INVALID_VERSION");
  // Numbers beyond what can be stored match no version, as any unknown number.
  return [...new Set(versions)].filter((v) => v <= MAX_VERSION);
}

export function validateMaxVersions(n: number): number {
  if (n < 1 || n > MAX_VERSIONS_LIMIT) throw NexusError.invalidArgument("max_versions", `must be between 1 and ${MAX_VERSIONS_LIMIT}`, "INVALID_MAX_VERSIONS");
  return n;
}

export function validateCustomMetadata(metadata: Record<string, string>): Record<string, string> {
  const entries = Object.entries(metadata);
  if (entries.length > MAX_CUSTOM_METADATA_KEYS) {
    throw NexusError.invalidArgument("custom_metadata", `at most ${MAX_CUSTOM_METADATA_KEYS} keys`, "TOO_MANY_METADATA_KEYS");
  }
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > MAX_METADATA_KEY_LENGTH) throw NexusError.invalidArgument("custom_metadata", `keys must be 1-${MAX_METADATA_KEY_LENGTH} characters`, "INVALID_METADATA");
    if (v.length > MAX_METADATA_VALUE_LENGTH) throw NexusError.invalidArgument("custom_metadata", `values must be at most ${MAX_METADATA_VALUE_LENGTH} characters`, "INVALID_METADATA");
    if (!isStorableText(k) || !isStorableText(v)) {
      throw NexusError.invalidArgument("custom_metadata", "keys and values must not contain NUL or unpaired surrogate characters", "INVALID_METADATA");
    }
  }
  return metadata;
}

export function validateFutureTime(ts: { seconds: bigint; nanos: number }, field: string, now = Date.now()): Date {
  const date = validateTime(ts, field);
  if (date.getTime() <= now) throw NexusError.invalidArgument(field, "must be in the future", "TIME_IN_PAST");
  return date;
}

/** A protobuf Timestamp as a Date, refused if its nanos or its range are out of bounds. */
export function validateTime(ts: { seconds: bigint; nanos: number }, field: string): Date {
  if (ts.nanos < 0 || ts.nanos > 999_999_999) throw NexusError.invalidArgument(field, "nanos must be between 0 and 999,999,999", "INVALID_TIME");
  const date = new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1_000_000));
  if (Number.isNaN(date.getTime()) || date.getTime() < 0 || date.getTime() > MAX_TIME_MS) {
    throw NexusError.invalidArgument(field, "must be a time between 1970 and the year 10000", "INVALID_TIME");
  }
  return date;
}

export function pageSize(requested: number): number {
  if (requested < 0) throw NexusError.invalidArgument("page_size", "must not be negative", "INVALID_PAGE_SIZE");
  if (requested > MAX_PAGE_SIZE) throw NexusError.invalidArgument("page_size", `must be at most ${MAX_PAGE_SIZE}`, "INVALID_PAGE_SIZE");
  return requested === 0 ? DEFAULT_PAGE_SIZE : requested;
}

// ListSecrets page tokens. The resume point is the last row the bounded scan
// examined, which may be a path the caller may not list: resuming after the last
// *visible* path instead would rescan the same hidden rows forever once 5,000 of
// them follow it. So the token is sealed, not signed: AES-256-GCM under a key
// derived from the integrity key, with the caller's SPIFFE ID and the prefix as
// associated data. The caller can neither read the resume point (it is padded
// to the longest path, so not even its length shows) nor forge, alter or hand on
// a token, nor reuse it with another prefix: each is INVALID_PAGE_TOKEN. Every
// replica shares the integrity key, so any replica continues a listing.
const PAGE_TOKEN_KEY_PURPOSE = "nexus/v1/list-page-token";
const PAGE_TOKEN_KEY_ID = 0; // a derived key has no keyring id
const PAGE_TOKEN_PADDED_BYTES = 1 + MAX_PATH_LENGTH; // a length byte, then the path padded with zeros

/** Who a page token was issued to, and for which listing. */
export interface PageTokenBinding {
  readonly caller: string;
  readonly prefix: string;
}

/** A token to resume a listing after `resumeAfter`; fetch the integrity key synchronously where this is called. */
export function encodePageToken(integrityKey: Buffer, binding: PageTokenBinding, resumeAfter: string): string {
  const plaintext = Buffer.alloc(PAGE_TOKEN_PADDED_BYTES);
  const length = plaintext.write(resumeAfter, 1, "utf8");
  // Stored paths passed validatePath (ASCII, at most 255); anything else is a bug, not a token.
  if (length !== Buffer.byteLength(resumeAfter, "utf8")) throw new Error("a resume point longer than a path");
  plaintext.writeUInt8(length, 0);
  const key = deriveKey(integrityKey, PAGE_TOKEN_KEY_PURPOSE);
  try {
    return seal(key, PAGE_TOKEN_KEY_ID, plaintext, pageTokenAad(binding)).toString("base64url");
  } finally {
    key.fill(0);
  }
}

/** The resume point of a token this server issued to this caller for this prefix ("" for no token). */
export function decodePageToken(integrityKey: Buffer, token: string, binding: PageTokenBinding): string {
  if (token === "") return "";
  const key = deriveKey(integrityKey, PAGE_TOKEN_KEY_PURPOSE);
  let plaintext: Buffer;
  try {
    plaintext = open(key, Buffer.from(token, "base64url"), pageTokenAad(binding));
  } catch {
    throw invalidPageToken();
  } finally {
    key.fill(0);
  }
  const length = plaintext[0];
  if (plaintext.length !== PAGE_TOKEN_PADDED_BYTES || length === 0) throw invalidPageToken();
  return validatePath(plaintext.toString("utf8", 1, 1 + length), "page_token");
}

function pageTokenAad(binding: PageTokenBinding): Buffer {
  return associatedData(PAGE_TOKEN_KEY_PURPOSE, binding.caller, binding.prefix);
}

// One message for every refusal: which check failed would tell a prober whether
// it guessed the caller, the prefix or the bytes wrong.
function invalidPageToken(): NexusError {
  return NexusError.invalidArgument("page_token", "is not a token this server issued to this caller for this prefix; start again with an empty page_token", "INVALID_PAGE_TOKEN");
}
