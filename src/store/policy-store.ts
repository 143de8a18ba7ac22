// SQL for policies. Writes carry the audit event of the change in the same
// transaction; the table's trigger NOTIFYs every replica on commit.

import type { Grant, PolicyRecord } from "../authorization/policy.js";
import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Sql } from "./database.js";

export interface StoredPolicy extends PolicyRecord {
  readonly mac: Buffer;
}

const POLICY_CHANNEL = "nexus_policies";

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

  async insert(p: StoredPolicy, audit: AuditRow): Promise<void> {
    await this.run(() =>
      this.sql.begin(async (tx) => {
        const inserted = await tx`
          INSERT INTO policies (id, name, spiffe_id_pattern, path_pattern, permissions, created_at, created_by, updated_at, mac)
          VALUES (${p.id}, ${p.name}, ${p.spiffeIdPattern}, ${p.pathPattern}, ${p.permissions as Grant[]}, ${p.createdAt}, ${p.createdBy}, ${p.updatedAt}, ${p.mac})
          ON CONFLICT ((lower(name))) DO NOTHING
          RETURNING id`;
        if (inserted.length === 0) {
          throw new NexusError("already_exists", `a policy named "${p.name}" already exists`, { reason: "POLICY_EXISTS" });
        }
        await insertAuditRow(tx, audit);
      }),
    );
  }

  /** Replaces the row with id `p.id` if it still has `expectedUpdatedAt`; false if it changed or vanished. */
  async update(p: StoredPolicy, expectedUpdatedAt: Date, audit: AuditRow): Promise<boolean> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const updated = await tx`
          UPDATE policies SET spiffe_id_pattern = ${p.spiffeIdPattern}, path_pattern = ${p.pathPattern},
            permissions = ${p.permissions as Grant[]}, updated_at = ${p.updatedAt}, mac = ${p.mac}
          WHERE id = ${p.id} AND updated_at = ${expectedUpdatedAt}
          RETURNING id`;
        if (updated.length === 0) return false;
        await insertAuditRow(tx, audit);
        return true;
      }),
    );
  }

  async delete(id: string, audit: AuditRow): Promise<boolean> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const deleted = await tx`DELETE FROM policies WHERE id = ${id} RETURNING id`;
        if (deleted.length === 0) return false;
        await insertAuditRow(tx, audit);
        return true;
      }),
    );
  }

  /** Calls `onChange` on every NOTIFY and after every (re)connection of the listener. */
  async listen(onChange: () => void): Promise<{ unlisten(): Promise<void> }> {
    const meta = await this.sql.listen(POLICY_CHANNEL, () => onChange(), () => onChange());
    return { unlisten: () => meta.unlisten() };
  }

  private readonly run = guarded;
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
