// Secret labels (issue 12): which version is CURRENT, PENDING and PREVIOUS, the
// rules that move them, and their integrity. A secret's labels are one MAC'd
// state on its row — (secret id, path, current, pending, previous, epoch,
// latest_version) under the integrity key — and every change raises the epoch.
// A state that does not verify, or whose epoch is lower than one this process
// has already seen for the secret, is an integrity error (INTERNAL,
// LABELS_ALTERED), never a fallback. See docs/rotation.md and the threat model.

import { SecretLabel } from "../../gen/spike/nexus/v1/secret_pb.js";
import { NexusError } from "../errors/nexus-error.js";
import { keyedMac, keyedMacMatches, type IntegrityKeyLookup, type IntegrityKeyRef } from "../keys/keyed-mac.js";
import type { LabelRow } from "../store/secret-label-row.js";

const LABELS_MAC_LABEL = "nexus/v1/secret-labels";
/** Secrets whose highest seen epoch a replica remembers; beyond it the oldest are forgotten. */
const DEFAULT_MEMORY_LIMIT = 100_000;

/** The label assignments of one secret; null = the label names no version. */
export interface Labels {
  readonly current: number | null;
  readonly pending: number | null;
  readonly previous: number | null;
}

/** Labels as stored: with the epoch, the latest version they were sealed with, and the MAC. */
export interface LabelState extends Labels {
  readonly epoch: number;
  readonly latestVersion: number;
  readonly mac: Buffer | null;
}

/** A state this process sealed: it always has a MAC. */
export interface SealedLabels extends LabelState {
  readonly mac: Buffer;
}

export type LabelName = "current" | "pending" | "previous";

/** A label from the wire; UNSPECIFIED maps to undefined. */
export function labelName(label: SecretLabel, field: string): LabelName | undefined {
  switch (label) {
    case SecretLabel.UNSPECIFIED:
      return undefined;
    case SecretLabel.CURRENT:
      return "current";
    case SecretLabel.PENDING:
      return "pending";
    case SecretLabel.PREVIOUS:
      return "previous";
    default:
      throw NexusError.invalidArgument(field, `unknown label ${label}; use SECRET_LABEL_CURRENT, SECRET_LABEL_PENDING or SECRET_LABEL_PREVIOUS`, "UNKNOWN_LABEL");
  }
}

/** The labels `version` carries, in enum order. */
export function labelsOf(labels: Labels, version: number): SecretLabel[] {
  const out: SecretLabel[] = [];
  if (labels.current === version) out.push(SecretLabel.CURRENT);
  if (labels.pending === version) out.push(SecretLabel.PENDING);
  if (labels.previous === version) out.push(SecretLabel.PREVIOUS);
  return out;
}

/**
 * Labels after writing `version`: as CURRENT (the old CURRENT becomes
 * PREVIOUS, PENDING is left alone) or as PENDING (replacing an older PENDING).
 */
export function labelsAfterPut(before: Labels, version: number, stage: "current" | "pending"): Labels {
  if (stage === "pending") return { ...before, pending: version };
  return { current: version, pending: before.pending, previous: before.current ?? before.previous };
}

/** Labels after promoting `version`: the old CURRENT becomes PREVIOUS, a PENDING label on it goes away. */
export function labelsAfterPromote(before: Labels, version: number): Labels {
  if (before.current === version) return before;
  return { current: version, pending: before.pending === version ? null : before.pending, previous: before.current ?? before.previous };
}

function macInput(secretId: string, path: string, s: Omit<LabelState, "mac">): unknown {
  return [secretId, path, s.current, s.pending, s.previous, s.epoch, s.latestVersion];
}

/** The MAC of a label state, naming its key (keyed-mac.ts); take the integrity key synchronously where this is called. */
export function labelsMac(integrityKey: IntegrityKeyRef, secretId: string, path: string, s: Omit<LabelState, "mac">): Buffer {
  return keyedMac(integrityKey, LABELS_MAC_LABEL, macInput(secretId, path, s));
}

/** The next sealed state: `labels` at the next epoch, with `latestVersion`. */
export function sealLabels(integrityKey: IntegrityKeyRef, secretId: string, path: string, before: { epoch: number }, labels: Labels, latestVersion: number): SealedLabels {
  const s = { ...labels, epoch: before.epoch + 1, latestVersion };
  return { ...s, mac: labelsMac(integrityKey, secretId, path, s) };
}

/**
 * Whether a stored state is authentic: its MAC verifies, or it is the one
 * unbound shape migration 006 leaves on older rows (CURRENT = latest_version,
 * nothing else, epoch 0), which means what a read meant before labels existed.
 * The MAC is checked with the key it names, as `keyFor` allows (during a key
 * rotation's re-MAC, the retired key too; KeyManager.integrityKeyForRow).
 */
export function labelsVerify(keyFor: IntegrityKeyLookup, secretId: string, path: string, s: LabelState): boolean {
  if (s.mac === null) {
    return s.epoch === 0 && s.pending === null && s.previous === null && s.current === (s.latestVersion === 0 ? null : s.latestVersion);
  }
  return keyedMacMatches(keyFor, LABELS_MAC_LABEL, macInput(secretId, path, s), s.mac);
}

export function labelStateFromRow(row: LabelRow): LabelState {
  return { current: row.currentVersion, pending: row.pendingVersion, previous: row.previousVersion, epoch: row.labelEpoch, latestVersion: row.latestVersion, mac: row.labelsMac };
}

export function labelsAltered(path: string): NexusError {
  return new NexusError("internal", `the labels of secret "${path}" failed their integrity check; no data was returned. An operator must investigate the database`, {
    reason: "LABELS_ALTERED",
  });
}

/**
 * This process's memory of the highest label epoch seen per secret, so that a
 * running replica refuses an older (replayed) labels row. Statements overlap,
 * so an epoch is compared only with what statements that had *finished* before
 * this one started saw: a read that began before a promotion committed may
 * rightly return the older state. Bounded: past `limit` secrets the least
 * recently seen are forgotten (and so unprotected until seen again).
 */
export class LabelFreshness {
  private clock = 0;
  private readonly seen = new Map<string, { epoch: number; at: number }>();

  constructor(private readonly limit = DEFAULT_MEMORY_LIMIT) {}

  /** Call before sending a statement that reads labels; pass the result to accept(). */
  start(): number {
    return ++this.clock;
  }

  /** Records `epoch` for the secret; false if a statement finished before `started` saw a higher one. */
  accept(secretId: string, epoch: number, started: number): boolean {
    const now = ++this.clock;
    const known = this.seen.get(secretId);
    if (known !== undefined && known.epoch > epoch) return known.at > started;
    if (known === undefined || epoch > known.epoch) {
      this.seen.delete(secretId);
      this.seen.set(secretId, { epoch, at: now });
      if (this.seen.size > this.limit) this.seen.delete(this.seen.keys().next().value as string);
    }
    return true;
  }

  /** Forgets a purged secret. */
  forget(secretId: string): void {
    this.seen.delete(secretId);
  }
}

/**
 * Verifies a state read by a statement begun at `started` (MAC and freshness)
 * or throws LABELS_ALTERED after logging through `report`.
 */
export function checkLabels(
  keyFor: IntegrityKeyLookup,
  freshness: LabelFreshness,
  secretId: string,
  path: string,
  s: LabelState,
  started: number,
  report: (why: string) => void,
): void {
  if (!labelsVerify(keyFor, secretId, path, s)) {
    report("labels MAC does not verify");
    throw labelsAltered(path);
  }
  if (!freshness.accept(secretId, s.epoch, started)) {
    report("labels epoch is lower than one this replica has seen (a replayed row)");
    throw labelsAltered(path);
  }
}
