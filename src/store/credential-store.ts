// SQL for admin sessions and admin tokens (admin_credentials) and for failed
// password attempts (auth_failures). Credentials are stored as HMACs; the
// tokens themselves never reach the database. Every change to the set runs in
// one transaction holding its grant_epochs row, so the set's next epoch is
// sealed with it (keys/grant-epochs.ts checks and seals; this layer
// only moves rows).

import type { AuditRow } from "./audit-row.js";
import { NexusError } from "../errors/nexus-error.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Queryable, type Sql } from "./database.js";
import { lockEpoch, readEpoch, writeEpoch, type EpochRow, type EpochSeal } from "./grant-epoch-store.js";

export interface CredentialRow {
  readonly tokenHmac: Buffer;
  readonly kind: "session" | "token";
  readonly name: string | null;
  readonly spiffeId: string;
  readonly createdAt: Date;
  readonly expiresAt: Date;
  readonly lastActivity: Date;
  /** HMAC under the integrity key over every column but last_activity. */
  readonly mac: Buffer;
}

/** The set as one snapshot: its epoch row and every row. */
export interface CredentialSnapshot {
  readonly epoch: EpochRow | undefined;
  readonly rows: CredentialRow[];
}

/** Checks the set as it was and seals it as it will be; throws to refuse the change. */
export type SealCredentials = (epoch: EpochRow | undefined, before: CredentialRow[], after: CredentialRow[]) => EpochSeal;

const COLUMNS = "token_hmac, kind, name, spiffe_id, created_at, expires_at, last_activity, mac";

export class CredentialStore {
  constructor(private readonly sql: Sql) {}

  /** Adds a credential; ALREADY_EXISTS for a token name taken (regardless of case). Resolves with the new epoch. */
  async insert(c: CredentialRow, audit: AuditRow, seal: SealCredentials): Promise<number> {
    return this.change(audit, seal, async (tx, before) => {
      if (c.name !== null && before.some((r) => r.kind === "token" && r.name?.toLowerCase() === c.name!.toLowerCase())) {
        throw new NexusError("already_exists", `an admin token named "${c.name}" already exists`, { reason: "TOKEN_EXISTS" });
      }
      await tx`
        INSERT INTO admin_credentials (token_hmac, kind, name, spiffe_id, created_at, expires_at, last_activity, mac)
        VALUES (${c.tokenHmac}, ${c.kind}, ${c.name}, ${c.spiffeId}, ${c.createdAt}, ${c.expiresAt}, ${c.createdAt}, ${c.mac})`;
      return [...before, c];
    });
  }

  /**
   * The whole set and its epoch in one snapshot, with the last activity of the
   * credential `tokenHmac` (if it is there and unexpired) bumped in passing.
   */
  async snapshotForUse(tokenHmacs: readonly Buffer[]): Promise<CredentialSnapshot> {
    // Two uses of one credential at once: the second's UPDATE meets the first's
    // commit under REPEATABLE READ and fails to serialize; it goes again.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.snapshotForUseOnce(tokenHmacs);
      } catch (err) {
        if (attempt >= 4 || !(err instanceof NexusError) || err.reason !== "CONCURRENT_UPDATE") throw err;
      }
    }
  }

  private async snapshotForUseOnce(tokenHmacs: readonly Buffer[]): Promise<CredentialSnapshot> {
    const hex = tokenHmacs.map((h) => h.toString("hex"));
    return this.run(() =>
      this.sql.begin("ISOLATION LEVEL REPEATABLE READ", async (tx) => {
        await tx`UPDATE admin_credentials SET last_activity = now() WHERE encode(token_hmac, 'hex') = ANY(${hex}::text[]) AND expires_at > now()`;
        return this.snapshotOn(tx);
      }),
    );
  }

  async snapshot(): Promise<CredentialSnapshot> {
    return this.run(() => this.sql.begin("ISOLATION LEVEL REPEATABLE READ READ ONLY", (tx) => this.snapshotOn(tx)));
  }

  /** Removes the credentials `pick` chooses from the set; resolves with the new epoch, or false if it chose none. */
  async remove(pick: (row: CredentialRow) => boolean, audit: AuditRow | undefined, seal: SealCredentials): Promise<number | false> {
    let removed = 0;
    const epoch = await this.change(audit, seal, async (tx, before) => {
      const gone = before.filter(pick);
      removed = gone.length;
      if (gone.length === 0) return false;
      await tx`DELETE FROM admin_credentials WHERE encode(token_hmac, 'hex') = ANY(${gone.map((r) => r.tokenHmac.toString("hex"))}::text[])`;
      return before.filter((r) => !pick(r));
    });
    return removed === 0 ? false : epoch;
  }

  /** Every credential revoked, the empty set sealed (an operator accepting a restored database). */
  async adopt(seal: (epoch: EpochRow | undefined) => EpochSeal, tx: Queryable): Promise<number> {
    const epoch = await lockEpoch(tx, "admin_credentials");
    await tx`DELETE FROM admin_credentials`;
    const sealed = seal(epoch);
    await writeEpoch(tx, "admin_credentials", sealed);
    return sealed.epoch;
  }

  /** When the caller may try a password again; undefined if now. */
  async lockedUntil(spiffeId: string): Promise<Date | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`SELECT locked_until FROM auth_failures WHERE spiffe_id = ${spiffeId} AND locked_until > now()`;
      return row?.locked_until as Date | undefined;
    });
  }

  /**
   * Counts a failure; after `freeAttempts` failures each further one locks the
   * caller out for 2^(n - freeAttempts) seconds, at most `maxLockSeconds`.
   */
  async recordFailure(spiffeId: string, freeAttempts: number, maxLockSeconds: number): Promise<void> {
    await this.run(
      () => this.sql`
        INSERT INTO auth_failures AS f (spiffe_id, failures, last_failure_at, locked_until)
        VALUES (${spiffeId}, 1, now(), now())
        ON CONFLICT (spiffe_id) DO UPDATE SET
          failures = f.failures + 1,
          last_failure_at = now(),
          locked_until = now() + make_interval(secs => CASE WHEN f.failures + 1 <= ${freeAttempts} THEN 0
                                 ELSE least(power(2, f.failures + 1 - ${freeAttempts}), ${maxLockSeconds}) END)`,
    );
  }

  async clearFailures(spiffeId: string): Promise<void> {
    await this.run(() => this.sql`DELETE FROM auth_failures WHERE spiffe_id = ${spiffeId}`);
  }

  /**
   * One change to the set: lock its epoch row, read the set, let `apply` write
   * the change and say what the set becomes (false: nothing to change), seal
   * that, and record the audit event — all or nothing.
   */
  private async change(
    audit: AuditRow | undefined,
    seal: SealCredentials,
    apply: (tx: Queryable, before: CredentialRow[]) => Promise<CredentialRow[] | false>,
  ): Promise<number> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const epoch = await lockEpoch(tx, "admin_credentials");
        const before = (await tx.unsafe(`SELECT ${COLUMNS} FROM admin_credentials`)).map(toRow);
        const after = await apply(tx, before);
        if (after === false) return epoch?.epoch ?? 0;
        const sealed = seal(epoch, before, after);
        await writeEpoch(tx, "admin_credentials", sealed);
        if (audit !== undefined) await insertAuditRow(tx, audit);
        return sealed.epoch;
      }),
    );
  }

  /**
   * Key rotation, inside the rotation's transaction: every credential row
   * MAC'd again and the set's epoch re-sealed under the new integrity key
   * (token digests stay: the tokens are not known here). Rows whose own MAC
   * failed are deleted.
   */
  async remac(tx: Queryable, reseal: (epoch: EpochRow | undefined, rows: CredentialRow[]) => { rows: CredentialRow[]; seal: EpochSeal }): Promise<void> {
    const epoch = await lockEpoch(tx, "admin_credentials");
    const rows = (await tx.unsafe(`SELECT ${COLUMNS} FROM admin_credentials`)).map(toRow);
    const { rows: remacd, seal } = reseal(epoch, rows);
    const kept = new Set(remacd.map((c) => c.tokenHmac.toString("hex")));
    for (const c of rows) if (!kept.has(c.tokenHmac.toString("hex"))) await tx`DELETE FROM admin_credentials WHERE token_hmac = ${c.tokenHmac}`;
    for (const c of remacd) await tx`UPDATE admin_credentials SET mac = ${c.mac} WHERE token_hmac = ${c.tokenHmac}`;
    await writeEpoch(tx, "admin_credentials", seal);
  }

  private async snapshotOn(tx: Queryable): Promise<CredentialSnapshot> {
    const epoch = await readEpoch(tx, "admin_credentials");
    const rows = (await tx.unsafe(`SELECT ${COLUMNS} FROM admin_credentials`)).map(toRow);
    return { epoch, rows };
  }

  private readonly run = guarded;
}

function toRow(r: Record<string, unknown>): CredentialRow {
  return {
    tokenHmac: r.token_hmac as Buffer,
    kind: r.kind as "session" | "token",
    name: (r.name as string | null) ?? null,
    spiffeId: r.spiffe_id as string,
    createdAt: r.created_at as Date,
    expiresAt: r.expires_at as Date,
    lastActivity: r.last_activity as Date,
    mac: r.mac as Buffer,
  };
}
