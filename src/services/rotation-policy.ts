// Rotation policies (issue 12): the rules a policy must meet, its stored form
// (canonical JSON, MAC'd under the integrity key over the secret id, path and
// policy), its wire form, and the generators that make new values from the
// CSPRNG (node:crypto). Generated values are returned to the caller only;
// nothing here logs them.

import { randomBytes, randomInt } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import {
  ByteEncoding,
  CharacterClass,
  type RandomBytesGenerator,
  type RandomPasswordGenerator,
  type RotationPolicy,
  type RotationPolicySchema,
} from "../../gen/spike/nexus/v1/secret_pb.js";
import { NexusError } from "../errors/nexus-error.js";
import { keyedMac, keyedMacMatches, type IntegrityKeyLookup, type IntegrityKeyRef } from "../keys/keyed-mac.js";
import { isStorableText } from "../store/storable-text.js";

const ROTATION_MAC_LABEL = "nexus/v1/rotation-policy";
export const MIN_PERIOD_MS = 60_000;
/** Ten years, leap days included. */
export const MAX_PERIOD_MS = 3653 * 86_400_000;
export const MIN_PASSWORD_LENGTH = 8;
export const MAX_PASSWORD_LENGTH = 1024;
export const MIN_BYTES_LENGTH = 8;
export const MAX_BYTES_LENGTH = 1024;
const MAX_DATA_KEY_LENGTH = 128;
const MAX_EXCLUDED_LENGTH = 256;

const CLASSES = {
  lowercase: "abcdefghijklmnopqrstuvwxyz",
  uppercase: "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
  digits: "0123456789",
  symbols: "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
} as const;
type ClassName = keyof typeof CLASSES;
const CLASS_BY_ENUM: ReadonlyMap<CharacterClass, ClassName> = new Map([
  [CharacterClass.LOWERCASE, "lowercase"],
  [CharacterClass.UPPERCASE, "uppercase"],
  [CharacterClass.DIGITS, "digits"],
  [CharacterClass.SYMBOLS, "symbols"],
]);
type EncodingName = "hex" | "base64" | "base64url";
const ENCODING_BY_ENUM: ReadonlyMap<ByteEncoding, EncodingName> = new Map([
  [ByteEncoding.UNSPECIFIED, "hex"],
  [ByteEncoding.HEX, "hex"],
  [ByteEncoding.BASE64, "base64"],
  [ByteEncoding.BASE64URL, "base64url"],
]);

export type Generator =
  | { readonly kind: "random_password"; readonly length: number; readonly classes: ClassName[]; readonly excluded: string }
  | { readonly kind: "random_bytes"; readonly length: number; readonly encoding: EncodingName }
  | { readonly kind: "external" };

/** A policy as stored (jsonb) and MAC'd. */
export interface StoredPolicy {
  readonly period_ms: number;
  readonly generator: Generator;
  readonly data_key: string;
  readonly promote: boolean;
}

/** A wire policy checked and in its stored form; INVALID_ARGUMENT naming the field otherwise. */
export function validatePolicy(p: RotationPolicy, field = "rotation"): StoredPolicy {
  const period = validatePeriod(p.period, `${field}.period`);
  const g = p.generator;
  let generator: Generator;
  switch (g.case) {
    case "randomPassword":
      generator = validatePasswordGenerator(g.value, `${field}.random_password`);
      break;
    case "randomBytes":
      generator = validateBytesGenerator(g.value, `${field}.random_bytes`);
      break;
    case "external":
      generator = { kind: "external" };
      break;
    default:
      throw NexusError.invalidArgument(field, "set one generator: random_password, random_bytes or external", "MISSING_GENERATOR");
  }
  const dataKey = generator.kind === "external" ? p.dataKey : validateDataKey(p.dataKey, `${field}.data_key`);
  if (dataKey.length > MAX_DATA_KEY_LENGTH || !isStorableText(dataKey)) {
    throw NexusError.invalidArgument(`${field}.data_key`, `must be at most ${MAX_DATA_KEY_LENGTH} characters of storable text`, "INVALID_DATA_KEY");
  }
  return { period_ms: period, generator, data_key: dataKey, promote: p.promote };
}

function validatePeriod(d: Duration | undefined, field: string): number {
  if (d === undefined) throw NexusError.invalidArgument(field, "is required: between 1 minute and 10 years", "INVALID_ROTATION_PERIOD");
  if (d.nanos % 1_000_000 !== 0 || d.nanos < 0 || d.nanos > 999_999_999) {
    throw NexusError.invalidArgument(field, "must be whole milliseconds", "INVALID_ROTATION_PERIOD");
  }
  const ms = Number(d.seconds) * 1000 + d.nanos / 1_000_000;
  if (!(ms >= MIN_PERIOD_MS && ms <= MAX_PERIOD_MS)) {
    throw NexusError.invalidArgument(field, "must be between 1 minute and 10 years", "INVALID_ROTATION_PERIOD");
  }
  return ms;
}

export function validateDataKey(key: string, field: string): string {
  if (key.length === 0) throw NexusError.invalidArgument(field, "name the data key the generated value is written to", "INVALID_DATA_KEY");
  if (key.length > MAX_DATA_KEY_LENGTH || !isStorableText(key)) {
    throw NexusError.invalidArgument(field, `must be at most ${MAX_DATA_KEY_LENGTH} characters of storable text`, "INVALID_DATA_KEY");
  }
  return key;
}

export function validatePasswordGenerator(g: RandomPasswordGenerator, field: string): Generator {
  if (g.length < MIN_PASSWORD_LENGTH || g.length > MAX_PASSWORD_LENGTH) {
    throw NexusError.invalidArgument(`${field}.length`, `must be between ${MIN_PASSWORD_LENGTH} and ${MAX_PASSWORD_LENGTH}`, "INVALID_GENERATOR_LENGTH");
  }
  const classes = new Set<ClassName>();
  for (const c of g.characterClasses) {
    const name = CLASS_BY_ENUM.get(c);
    if (name === undefined) throw NexusError.invalidArgument(`${field}.character_classes`, "use LOWERCASE, UPPERCASE, DIGITS or SYMBOLS", "INVALID_CHARACTER_CLASS");
    classes.add(name);
  }
  const chosen = classes.size === 0 ? (Object.keys(CLASSES) as ClassName[]) : [...CLASSES_IN_ORDER].filter((c) => classes.has(c));
  if (g.excludedCharacters.length > MAX_EXCLUDED_LENGTH || !isStorableText(g.excludedCharacters)) {
    throw NexusError.invalidArgument(`${field}.excluded_characters`, `must be at most ${MAX_EXCLUDED_LENGTH} characters`, "INVALID_EXCLUDED_CHARACTERS");
  }
  for (const c of chosen) {
    if (usable(c, g.excludedCharacters).length === 0) {
      throw NexusError.invalidArgument(`${field}.excluded_characters`, `exclude fewer characters: class ${c} would have none left`, "INVALID_EXCLUDED_CHARACTERS");
    }
  }
  // Canonical: the excluded characters sorted and unique, so equal policies MAC alike.
  const excluded = [...new Set(g.excludedCharacters)].sort().join("");
  return { kind: "random_password", length: g.length, classes: chosen, excluded };
}

const CLASSES_IN_ORDER: readonly ClassName[] = ["lowercase", "uppercase", "digits", "symbols"];

export function validateBytesGenerator(g: RandomBytesGenerator, field: string): Generator {
  if (g.length < MIN_BYTES_LENGTH || g.length > MAX_BYTES_LENGTH) {
    throw NexusError.invalidArgument(`${field}.length`, `must be between ${MIN_BYTES_LENGTH} and ${MAX_BYTES_LENGTH}`, "INVALID_GENERATOR_LENGTH");
  }
  const encoding = ENCODING_BY_ENUM.get(g.encoding);
  if (encoding === undefined) throw NexusError.invalidArgument(`${field}.encoding`, "use HEX, BASE64 or BASE64URL", "INVALID_BYTE_ENCODING");
  return { kind: "random_bytes", length: g.length, encoding };
}

function usable(c: ClassName, excluded: string): string {
  return [...CLASSES[c]].filter((ch) => !excluded.includes(ch)).join("");
}

/**
 * A new value from the CSPRNG. A password holds at least one character of
 * each chosen class: one of each is placed first, the rest drawn from the
 * union, then all are shuffled (Fisher-Yates with randomInt).
 */
export function generateValue(g: Exclude<Generator, { kind: "external" }>): string {
  if (g.kind === "random_bytes") {
    const bytes = randomBytes(g.length);
    try {
      return bytes.toString(g.encoding);
    } finally {
      bytes.fill(0);
    }
  }
  const sets = g.classes.map((c) => usable(c, g.excluded));
  const all = sets.join("");
  const chars = sets.map((set) => set[randomInt(set.length)]);
  while (chars.length < g.length) chars.push(all[randomInt(all.length)]);
  for (let i = chars.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [chars[i], chars[j]] = [chars[j], chars[i]];
  }
  return chars.join("");
}

function macInput(secretId: string, path: string, policy: StoredPolicy | Record<string, unknown>): unknown {
  return [secretId, path, policy];
}

/** The MAC of a stored policy, naming its key (keyed-mac.ts); take the integrity key synchronously where this is called. */
export function rotationMac(integrityKey: IntegrityKeyRef, secretId: string, path: string, policy: StoredPolicy | Record<string, unknown>): Buffer {
  return keyedMac(integrityKey, ROTATION_MAC_LABEL, macInput(secretId, path, policy));
}

/**
 * A stored policy if its MAC verifies under the key it names, as `keyFor`
 * allows (jsonb reorders keys; the MAC input is canonical JSON).
 */
export function verifiedPolicy(keyFor: IntegrityKeyLookup, secretId: string, path: string, policy: Record<string, unknown>, stored: Buffer | null): StoredPolicy | undefined {
  return keyedMacMatches(keyFor, ROTATION_MAC_LABEL, macInput(secretId, path, policy), stored) ? (policy as unknown as StoredPolicy) : undefined;
}

export function rotationPolicyAltered(path: string): NexusError {
  return new NexusError("internal", `the rotation policy of secret "${path}" failed its integrity check; set it again with UpdateSecretMetadata`, {
    reason: "ROTATION_POLICY_ALTERED",
  });
}

/** A stored policy in its wire form. */
export function policyToProto(p: StoredPolicy): MessageInitShape<typeof RotationPolicySchema> {
  const seconds = Math.floor(p.period_ms / 1000);
  const period = { seconds: BigInt(seconds), nanos: (p.period_ms - seconds * 1000) * 1_000_000 };
  const g = p.generator;
  const generator: MessageInitShape<typeof RotationPolicySchema>["generator"] =
    g.kind === "random_password"
      ? {
          case: "randomPassword" as const,
          value: { length: g.length, characterClasses: g.classes.map((c) => [...CLASS_BY_ENUM].find(([, n]) => n === c)![0]), excludedCharacters: g.excluded },
        }
      : g.kind === "random_bytes"
        ? { case: "randomBytes" as const, value: { length: g.length, encoding: { hex: ByteEncoding.HEX, base64: ByteEncoding.BASE64, base64url: ByteEncoding.BASE64URL }[g.encoding] } }
        : { case: "external" as const, value: {} };
  return { period, generator, dataKey: p.data_key, promote: p.promote };
}
