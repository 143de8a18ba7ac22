// SQL for policies. Writes carry the audit event of the change in the same
// transaction; the table's trigger NOTIFYs every replica on commit.

import type { Grant, PolicyRecord } from "./policy-row.js";
import type { AuditRow } from "./audit-row.js";
import { NexusError } from "../errors/nexus-error.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Queryable, type Sql } from "./database.js";
import { lockEpoch, readEpoch, writeEpoch, type EpochRow, type EpochSeal } from "./grant-epoch-store.js";

export interface StoredPolicy extends PolicyRecord {
  readonly mac: Buffer;
}

const POLICY_CHANNEL = "nexus_policies";

/** A change to the policies: the new or updated row carries its MAC already. */
export type PolicyChange =
  | { readonly kind: "insert"; readonly policy: StoredPolicy }
  | { readonly kind: "update"; readonly policy: StoredPolicy; readonly expectedUpdatedAt: Date }
  | { readonly kind: "delete"; readonly id: string };

/** Checks a set as it was and seals it as it will be; throws to refuse the change. */
export type SealEpoch<R> = (epoch: EpochRow | undefined, before: R[], after: R[]) => EpochSeal;

export class PolicyStore {
  constructor(private readonly sql: Sql) {}

  async all(): Promise<StoredPolicy[]> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac
        FROM policies ORDER BY lower(name)`;
      return rows.map(toPolicy);
    });
  }

  async byName(name: string): Promise<StoredPolicy | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac
        FROM policies WHERE lower(name) = lower(${name})`;
      return row ? toPolicy(row) : undefined;
    });
  }

  async page(afterName: string, limit: number): Promise<StoredPolicy[]> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac
        FROM policies WHERE lower(name) > lower(${afterName}) ORDER BY lower(name) LIMIT ${limit}`;
      return rows.map(toPolicy);
    });
  }

  /** Every row and the set's epoch row, read in one snapshot (what a replica decides by). */
  async snapshot(): Promise<{ epoch: EpochRow | undefined; rows: StoredPolicy[] }> {
    return this.run(() =>
      this.sql.begin("ISOLATION LEVEL REPEATABLE READ READ ONLY", async (tx) => {
        const epoch = await readEpoch(tx, "policies");
        const rows = await tx`
          SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac FROM policies`;
        return { epoch, rows: rows.map(toPolicy) };
      }),
    );
  }

  /**
   * Applies one change with its audit event and the set's next epoch, in one
   * transaction that holds the epoch row's lock: `sealEpoch` sees the set as it
   * was and as it will be, checks the first and seals the second (it throws if
   * the stored set was tampered with, and nothing is written). Resolves with the
   * new epoch, or false when the change found nothing to change (a concurrent
   * update, a row already gone).
   */
  async write(change: PolicyChange, audit: AuditRow, sealEpoch: SealEpoch<StoredPolicy>): Promise<number | false> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const epoch = await lockEpoch(tx, "policies");
        const before = (await tx`
          SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac FROM policies`).map(toPolicy);
        const after = applyChange(before, change);
        if (after === false) return false;
        if (after === "exists") throw new NexusError("already_exists", `a policy named "${(change as { policy: StoredPolicy }).policy.name}" already exists`, { reason: "POLICY_EXISTS" });
        const seal = sealEpoch(epoch, before, after);
        const p = change.kind === "delete" ? undefined : change.policy;
        if (change.kind === "insert") {
          await tx`
            INSERT INTO policies (id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac)
            VALUES (${p!.id}, ${p!.name}, ${p!.spiffeIdPattern}, ${p!.pathPattern}, ${p!.permissions as Grant[]}, ${p!.createdAt}, ${p!.createdBy}, ${p!.updatedAt}, ${p!.mac})`;
        } else if (change.kind === "update") {
          await tx`
            UPDATE policies SET spiffe_id_pattern = ${p!.spiffeIdPattern}, path_pattern = ${p!.pathPattern},
              permissions = ${p!.permissions as Grant[]}, updated_at = ${p!.updatedAt}, mac = ${p!.mac}
            WHERE id = ${p!.id}`;
        } else {
          await tx`DELETE FROM policies WHERE id = ${change.id}`;
        }
        await writeEpoch(tx, "policies", seal);
        await insertAuditRow(tx, audit);
        return seal.epoch;
      }),
    );
  }

  /**
   * Key rotation, inside the rotation's transaction: every policy MAC'd again
   * and the set's epoch re-sealed under the new integrity key (`reseal` checks
   * the set under the old one first). Policies whose own MAC failed are deleted:
   * they granted nothing, and left in place they would break the new digest.
   */
  async remac(tx: Queryable, reseal: (epoch: EpochRow | undefined, rows: StoredPolicy[]) => { rows: StoredPolicy[]; seal: EpochSeal }): Promise<void> {
    const epoch = await lockEpoch(tx, "policies");
    const rows = (await tx`
      SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac FROM policies`).map(toPolicy);
    const { rows: remacd, seal } = reseal(epoch, rows);
    const kept = new Set(remacd.map((p) => p.id));
    for (const p of rows) if (!kept.has(p.id)) await tx`DELETE FROM policies WHERE id = ${p.id}`;
    for (const p of remacd) await tx`UPDATE policies SET mac = ${p.mac} WHERE id = ${p.id}`;
    await writeEpoch(tx, "policies", seal);
  }

  /**
   * The operator's acceptance of the stored policies (Unseal with
   * accept_restored_state): the set is sealed as it is, at a new epoch.
   */
  async adopt(sealEpoch: (epoch: EpochRow | undefined, rows: StoredPolicy[]) => EpochSeal, tx: Queryable): Promise<number> {
    const epoch = await lockEpoch(tx, "policies");
    const rows = (await tx`
      SELECT id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac FROM policies`).map(toPolicy);
    const seal = sealEpoch(epoch, rows);
    await writeEpoch(tx, "policies", seal);
    return seal.epoch;
  }

  /** Calls `onChange` on every NOTIFY and after every (re)connection of the listener. */
  async listen(onChange: () => void): Promise<{ unlisten(): Promise<void> }> {
    const meta = await this.sql.listen(POLICY_CHANNEL, () => onChange(), () => onChange());
    return { unlisten: () => meta.unlisten() };
  }

  private readonly run = guarded;
}

/** The set after `change`; false if it changes nothing, "exists" for a name taken (names are unique regardless of case). */
function applyChange(before: StoredPolicy[], change: PolicyChange): StoredPolicy[] | false | "exists" {
  switch (change.kind) {
    case "insert":
      if (before.some((p) => p.name.toLowerCase() === change.policy.name.toLowerCase())) return "exists";
      return [...before, change.policy];
    case "update": {
      const i = before.findIndex((p) => p.id === change.policy.id && p.updatedAt.getTime() === change.expectedUpdatedAt.getTime());
      if (i < 0) return false;
      return before.map((p, j) => (j === i ? change.policy : p));
    }
    case "delete":
      if (!before.some((p) => p.id === change.id)) return false;
      return before.filter((p) => p.id !== change.id);
  }
}

function toPolicy(row: Record<string, unknown>): StoredPolicy {
  return {
    id: row.id as string,
    name: row.name as string,
    spiffeIdPattern: row.spiffe_id_pattern as string,
    pathPattern: row.path_pattern as string,
    permissions: row.permissions as Grant[],
    createdAt: row.created_at as Date,
    createdBy: row.created_by as string,
    updatedAt: row.updated_at as Date,
    mac: row.mac as Buffer,
  };
}
