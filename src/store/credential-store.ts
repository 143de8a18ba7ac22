// SQL for admin sessions and admin tokens (admin_credentials) and for failed
// password attempts (auth_failures). Credentials are stored as HMACs; the
// tokens themselves never reach the database.

import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Sql } from "./database.js";

export interface CredentialRow {
  readonly kind: "session" | "token";
  readonly name: string | null;
  readonly spiffeId: string;
  readonly createdAt: Date;
  readonly expiresAt: Date;
  readonly lastActivity: Date;
}

export class CredentialStore {
  constructor(private readonly sql: Sql) {}

  async insert(c: { tokenHmac: Buffer; kind: "session" | "token"; name: string | null; spiffeId: string; expiresAt: Date }, audit: AuditRow): Promise<CredentialRow> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const [row] = await tx`
          INSERT INTO admin_credentials (token_hmac, kind, name, spiffe_id, expires_at)
          VALUES (${c.tokenHmac}, ${c.kind}, ${c.name}, ${c.spiffeId}, ${c.expiresAt})
          ON CONFLICT DO NOTHING
          RETURNING kind, name, spiffe_id, created_at, expires_at, last_activity`;
        if (!row) throw new NexusError("already_exists", `an admin token named "${c.name}" already exists`, { reason: "TOKEN_EXISTS" });
        await insertAuditRow(tx, audit);
        return toRow(row);
      }),
    );
  }

  /** The live credential with this HMAC, its last activity bumped; undefined if none. */
  async use(tokenHmac: Buffer): Promise<CredentialRow | undefined> {
    return this.run(async () => {
      const [row] = await this.sql`
        UPDATE admin_credentials SET last_activity = now()
        WHERE token_hmac = ${tokenHmac} AND expires_at > now()
        RETURNING kind, name, spiffe_id, created_at, expires_at, last_activity`;
      return row ? toRow(row) : undefined;
    });
  }

  async revokeByHmac(tokenHmac: Buffer, audit: AuditRow): Promise<boolean> {
    return this.revoke(this.sql`token_hmac = ${tokenHmac}`, audit);
  }

  async revokeToken(name: string, audit: AuditRow): Promise<boolean> {
    return this.revoke(this.sql`kind = 'token' AND lower(name) = lower(${name})`, audit);
  }

  async listTokens(): Promise<CredentialRow[]> {
    return this.run(async () => {
      const rows = await this.sql`
        SELECT kind, name, spiffe_id, created_at, expires_at, last_activity FROM admin_credentials
        WHERE kind = 'token' AND expires_at > now() ORDER BY lower(name)`;
      return rows.map(toRow);
    });
  }

  async deleteExpired(): Promise<number> {
    return this.run(async () => (await this.sql`DELETE FROM admin_credentials WHERE expires_at <= now() RETURNING 1`).length);
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

  private async revoke(condition: ReturnType<Sql>, audit: AuditRow): Promise<boolean> {
    return this.run(() =>
      this.sql.begin(async (tx) => {
        const rows = await tx`DELETE FROM admin_credentials WHERE ${condition} RETURNING 1`;
        if (rows.length === 0) return false;
        await insertAuditRow(tx, audit);
        return true;
      }),
    );
  }

  private readonly run = guarded;
}

function toRow(r: Record<string, unknown>): CredentialRow {
  return {
    kind: r.kind as "session" | "token",
    name: (r.name as string | null) ?? null,
    spiffeId: r.spiffe_id as string,
    createdAt: r.created_at as Date,
    expiresAt: r.expires_at as Date,
    lastActivity: r.last_activity as Date,
  };
}
