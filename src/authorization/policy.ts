// Access policies: what they grant, how their patterns compile (RE2 via re2js:
// linear time, so no pattern can stall a request), and what their MAC covers.
// Patterns must match the whole SPIFFE ID or path; SPIKE matches anywhere, so
// an imported SPIKE policy grants less here, never more.

import { RE2JS } from "re2js";
import { NexusError } from "../errors/nexus-error.js";
import type { Grant, PolicyRecord } from "../store/policy-row.js";
import { isStorableText } from "../store/storable-text.js";

// Grant and PolicyRecord are the policies table's row shape, owned by the store (ADR 0013).
export type { Grant, PolicyRecord };
export const GRANTS: readonly Grant[] = ["read", "write", "list", "super"];

export interface CompiledPolicy {
  readonly record: PolicyRecord;
  readonly spiffeId: RE2JS;
  readonly path: RE2JS;
  /** Bit per Grant, "super" implying all. */
  readonly grants: number;
}

export const GRANT_BIT: Record<Grant, number> = { read: 1, write: 2, list: 4, super: 7 };
const MAX_PATTERN_LENGTH = 1024;

export const POLICY_MAC_LABEL = "nexus/v1/policy";

/** What the MAC of a policy row covers: every column. */
export function policyMacInput(p: PolicyRecord): unknown {
  return {
    id: p.id,
    name: p.name,
    spiffeIdPattern: p.spiffeIdPattern,
    pathPattern: p.pathPattern,
    permissions: [...p.permissions].sort(),
    createdAt: p.createdAt.toISOString(),
    createdBy: p.createdBy,
    updatedAt: p.updatedAt.toISOString(),
  };
}

export function compilePattern(pattern: string, field: string): RE2JS {
  if (pattern.length === 0) throw NexusError.invalidArgument(field, "must not be empty", "INVALID_PATTERN");
  if (pattern.length > MAX_PATTERN_LENGTH) throw NexusError.invalidArgument(field, `must be at most ${MAX_PATTERN_LENGTH} characters`, "INVALID_PATTERN");
  if (!isStorableText(pattern)) throw NexusError.invalidArgument(field, "must not contain NUL or unpaired surrogate characters", "INVALID_PATTERN");
  try {
    return RE2JS.compile(pattern);
  } catch (err) {
    throw NexusError.invalidArgument(field, `is not a valid RE2 pattern: ${(err as Error).message}`, "INVALID_PATTERN");
  }
}

export function compilePolicy(record: PolicyRecord): CompiledPolicy {
  return {
    record,
    spiffeId: compilePattern(record.spiffeIdPattern, "spiffe_id_pattern"),
    path: compilePattern(record.pathPattern, "path_pattern"),
    grants: record.permissions.reduce((bits, g) => bits | GRANT_BIT[g], 0),
  };
}
