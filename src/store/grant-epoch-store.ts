// SQL for grant_epochs: the one row per granting set (policies, admin
// credentials) that binds the set as a whole. Writers lock it first, so
// changes to one set are serialized across replicas; readers take it in the
// same snapshot as the set's rows. MACs are made and checked above this layer.

import type { AuditRow } from "./audit-row.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Queryable, type Sql } from "./database.js";

export type GrantSetName = "policies" | "admin_credentials" | "audit_checkpoints";
export const GRANT_SET_NAMES: readonly GrantSetName[] = ["policies", "admin_credentials", "audit_checkpoints"];

function isGrantSetName(name: string): name is GrantSetName {
  return (GRANT_SET_NAMES as readonly string[]).includes(name);
}

/** The stored epoch row; `mac` and `digest` are null before the set's first change. */
export interface EpochRow {
  readonly epoch: number;
  /** The integrity key the set's rows and this row are MAC'd under. */
  readonly integrityKeyId: number;
  readonly digest: Buffer | null;
  readonly mac: Buffer | null;
}

/** What a change stores: the next epoch and its MAC over the new set's digest. */
export interface EpochSeal {
  readonly epoch: number;
  readonly integrityKeyId: number;
  readonly digest: Buffer;
  readonly mac: Buffer;
}

/** The set's epoch row, locked for the rest of the transaction; undefined if the row is gone. */
export async function lockEpoch(tx: Queryable, name: GrantSetName): Promise<EpochRow | undefined> {
  const [row] = await tx`SELECT epoch, digest, mac, integrity_key_id FROM grant_epochs WHERE name = ${name} FOR UPDATE`;
  return row ? toEpoch(row) : undefined;
}

export async function readEpoch(q: Queryable, name: GrantSetName): Promise<EpochRow | undefined> {
  const [row] = await q`SELECT epoch, digest, mac, integrity_key_id FROM grant_epochs WHERE name = ${name}`;
  return row ? toEpoch(row) : undefined;
}

export async function writeEpoch(tx: Queryable, name: GrantSetName, seal: EpochSeal): Promise<void> {
  await tx`UPDATE grant_epochs SET epoch = ${seal.epoch}, digest = ${seal.digest}, mac = ${seal.mac}, integrity_key_id = ${seal.integrityKeyId} WHERE name = ${name}`;
}

function toEpoch(row: Record<string, unknown>): EpochRow {
  return { epoch: Number(row.epoch), integrityKeyId: Number(row.integrity_key_id), digest: (row.digest as Buffer | null) ?? null, mac: (row.mac as Buffer | null) ?? null };
}

/**
 * The operator's acceptance of the stored grant sets (Unseal with
 * accept_restored_state), in one transaction with its audit event: the
 * policies and the audit checkpoints are sealed as they are, every admin
 * credential is revoked.
 */
const EPOCH_CHANNEL = "nexus_grant_epochs";

export class GrantEpochStore {
  constructor(private readonly sql: Sql) {}

  async read(name: GrantSetName): Promise<EpochRow | undefined> {
    return guarded(() => readEpoch(this.sql, name));
  }

  /** Calls `onChange` with the set's name whenever a replica stores a new epoch, and for every set after a reconnection. */
  async listen(onChange: (name: GrantSetName) => void): Promise<{ unlisten(): Promise<void> }> {
    const everySet = () => GRANT_SET_NAMES.forEach(onChange);
    const meta = await this.sql.listen(EPOCH_CHANNEL, (name) => (isGrantSetName(name) ? onChange(name) : everySet()), everySet);
    return { unlisten: () => meta.unlisten() };
  }

  async acceptStored(
    policies: { adopt(tx: Queryable): Promise<number> },
    credentials: { adopt(tx: Queryable): Promise<number> },
    checkpoints: { adopt(tx: Queryable): Promise<number> },
    audit: AuditRow,
  ): Promise<{ policies: number; credentials: number; checkpoints: number }> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const result = { policies: await policies.adopt(tx), credentials: await credentials.adopt(tx), checkpoints: await checkpoints.adopt(tx) };
        await insertAuditRow(tx, audit);
        return result;
      }),
    );
  }
}
