// What this replica remembers of the secrets it read or wrote lately (data-key
// reference, latest version, verified labels), so that a put takes one round
// trip. Bounded: past `limit` paths the oldest remembered goes. Every Buffer
// kept is memory of its own: the driver hands bytea columns out as slices of
// shared 8 KiB slabs, and one kept slice pins its slab. Under load 10,000
// remembered label MACs pinned ~60 MB that way (heap snapshot,
// bench/results/experiments/memory.md).

import { owned } from "../keys/aead.js";
import type { DataKeyRef } from "../keys/secret-cipher.js";
import type { LabelState } from "./secret-labels.js";

export interface KnownSecret extends Omit<DataKeyRef, "wrappedDataKey"> {
  wrappedDataKey: Buffer;
  latestVersion: number;
  /** The verified labels, as stored; a put writes only if they are still these. */
  labels: LabelState;
  /** The wrapping key active when its data key was made: older than the active one means a rotation since. */
  dataKeyOriginKeyId: number;
}

export class KnownSecrets {
  private readonly byPath = new Map<string, KnownSecret>();

  constructor(private readonly limit: number) {}

  get size(): number {
    return this.byPath.size;
  }

  get(path: string): KnownSecret | undefined {
    return this.byPath.get(path);
  }

  /**
   * Remembers `s` (the newest for its path) as an entry of its own, and
   * returns that entry: later changes to the secret go to the entry returned.
   */
  remember(s: KnownSecret): KnownSecret {
    const entry: KnownSecret = {
      secretId: s.secretId,
      path: s.path,
      dataKeyId: s.dataKeyId,
      keyringKeyId: s.keyringKeyId,
      wrappedDataKey: owned(s.wrappedDataKey),
      latestVersion: s.latestVersion,
      labels: ownedLabels(s.labels),
      dataKeyOriginKeyId: s.dataKeyOriginKeyId,
    };
    this.byPath.delete(s.path);
    this.byPath.set(s.path, entry);
    if (this.byPath.size > this.limit) this.byPath.delete(this.byPath.keys().next().value as string);
    return entry;
  }

  /** A successful write moved the secret on: its new version and labels. */
  wrote(entry: KnownSecret, latestVersion: number, labels: LabelState): void {
    entry.latestVersion = latestVersion;
    entry.labels = ownedLabels(labels);
  }

  delete(path: string): void {
    this.byPath.delete(path);
  }

  clear(): void {
    this.byPath.clear();
  }
}

/** The six fields of a label state, and nothing else the object carried (a row's other columns). */
function ownedLabels(labels: LabelState): LabelState {
  const { current, pending, previous, epoch, latestVersion, mac } = labels;
  return { current, pending, previous, epoch, latestVersion, mac: mac === null ? null : owned(mac) };
}
