// The label columns of a secrets row (migration 006) as the store reads them,
// shared by the secret store and the audited read of GetSecret. Verifying them
// is the service's job (services/secret-labels.ts): this layer holds no key.

/** A secret's label columns as stored. */
export interface LabelRow {
  readonly latestVersion: number;
  readonly currentVersion: number | null;
  readonly pendingVersion: number | null;
  readonly previousVersion: number | null;
  readonly labelEpoch: number;
  readonly labelsMac: Buffer | null;
}

export function labelRow(row: Record<string, unknown>): LabelRow {
  return {
    latestVersion: row.latest_version as number,
    currentVersion: (row.current_version as number | null) ?? null,
    pendingVersion: (row.pending_version as number | null) ?? null,
    previousVersion: (row.previous_version as number | null) ?? null,
    // bigint arrives as text
    labelEpoch: Number(row.label_epoch),
    labelsMac: (row.labels_mac as Buffer | null) ?? null,
  };
}
