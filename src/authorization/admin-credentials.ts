// Admin credentials: sessions from Login and named admin tokens. A credential is
// 256 random bits shown once; the database keeps only its HMAC under the
// integrity key, bound to the SPIFFE ID that created it, so a token presented
// by any other identity is refused. Each row carries a MAC over everything
// that grants (owner, kind, name, expiry), and the set as a whole is bound by
// its epoch (grant-epochs.ts), so a revoked credential written back, or one
// given a later expiry, is refused.

import { randomBytes } from "node:crypto";
import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import type { SpiffeId } from "../identity/spiffe-id.js";
import { mac, macMatches, tokenDigest } from "../keys/integrity.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { CredentialRow, CredentialStore } from "../store/credential-store.js";
import type { GrantEpochs, GrantSetRules } from "../keys/grant-epochs.js";

const TOKEN_PREFIX = { session: "nxs_", token: "nxt_" } as const;
const CREDENTIAL_MAC_LABEL = "nexus/v1/admin-credential-row";

export interface IssuedCredential {
  readonly token: string;
  readonly record: CredentialRow;
}

type Unsigned = Omit<CredentialRow, "mac">;

function credentialMacInput(c: Unsigned): unknown {
  return [c.tokenHmac.toString("hex"), c.kind, c.name, c.spiffeId, c.createdAt.toISOString(), c.expiresAt.toISOString()];
}

/** How the credential set is ordered and authenticated for its epoch digest. */
export const CREDENTIAL_SET: GrantSetRules<CredentialRow> = {
  name: "admin_credentials",
  orderKey: (c) => c.tokenHmac.toString("hex"),
  rowVerifies: (key, c) => macMatches(key, CREDENTIAL_MAC_LABEL, credentialMacInput(c), c.mac),
  storedMac: (c) => c.mac,
  remac: (key, c) => ({ ...c, mac: mac(key, CREDENTIAL_MAC_LABEL, credentialMacInput(c)) }),
};

export class AdminCredentials {
  constructor(
    private readonly store: CredentialStore,
    private readonly keys: KeyManager,
    private readonly epochs: GrantEpochs,
  ) {}

  async issue(kind: "session" | "token", owner: SpiffeId, ttlMs: number, name: string | null, audit: AuditRow): Promise<IssuedCredential> {
    const token = TOKEN_PREFIX[kind] + randomBytes(32).toString("base64url");
    const now = new Date();
    return this.epochs.acrossRotation(async () => {
      const key = this.keys.integrityKey();
      const unsigned: Unsigned = { tokenHmac: tokenDigest(key, token), kind, name, spiffeId: owner.toString(), createdAt: now, expiresAt: new Date(now.getTime() + ttlMs), lastActivity: now };
      const record: CredentialRow = { ...unsigned, mac: mac(key, CREDENTIAL_MAC_LABEL, credentialMacInput(unsigned)) };
      const epoch = await this.store.insert(record, audit, this.sealer());
      this.epochs.advance("admin_credentials", epoch);
      return { token, record };
    });
  }

  /** Throws UNAUTHENTICATED unless `token` is a live credential of `caller` in a set that verifies. */
  async verify(token: string | undefined, caller: SpiffeId): Promise<CredentialRow> {
    if (token === undefined) {
      throw new NexusError("unauthenticated", "admin RPCs need an admin credential: send `authorization: Bearer <token>` from Login or CreateAdminToken", { reason: "NO_ADMIN_CREDENTIAL" });
    }
    // A credential keeps the digest it was issued with; its row is re-MAC'd by a
    // key rotation, but the token is not known then. So look it up under every
    // integrity key held (the row's own MAC and its set's epoch are still
    // checked under the active key only).
    const digests = this.keys.integrityKeys().map((k) => tokenDigest(k.key, token));
    const seen = this.epochs.seenEpoch("admin_credentials");
    const rows = await this.verifiedSet(await this.store.snapshotForUse(digests), seen);
    const row = rows.find((c) => digests.some((d) => c.tokenHmac.equals(d)));
    if (row === undefined || row.expiresAt.getTime() <= Date.now()) {
      throw new NexusError("unauthenticated", "the admin credential is invalid, expired or revoked", { reason: "INVALID_ADMIN_CREDENTIAL" });
    }
    if (row.spiffeId !== caller.toString()) {
      throw new NexusError("unauthenticated", "the admin credential belongs to another identity", { reason: "CREDENTIAL_OF_ANOTHER_IDENTITY" });
    }
    return row;
  }

  /** The live admin tokens of a set that verifies. */
  async listTokens(): Promise<CredentialRow[]> {
    const now = Date.now();
    const seen = this.epochs.seenEpoch("admin_credentials");
    const rows = await this.verifiedSet(await this.store.snapshot(), seen);
    return rows.filter((c) => c.kind === "token" && c.expiresAt.getTime() > now).sort((a, b) => (a.name!.toLowerCase() < b.name!.toLowerCase() ? -1 : 1));
  }

  async revokeSession(token: string, audit: AuditRow): Promise<boolean> {
    const digests = this.keys.integrityKeys().map((k) => tokenDigest(k.key, token));
    return this.remove((c) => digests.some((d) => c.tokenHmac.equals(d)), audit);
  }

  /** Ends every admin session (ChangeAdminPassword); admin tokens stay. Returns how many. */
  async revokeAllSessions(): Promise<number> {
    const ended = new Set<string>();
    await this.remove((c) => {
      if (c.kind === "session") ended.add(c.tokenHmac.toString("hex"));
      return c.kind === "session";
    });
    return ended.size;
  }

  async revokeToken(name: string, audit: AuditRow): Promise<boolean> {
    return this.remove((c) => c.kind === "token" && c.name?.toLowerCase() === name.toLowerCase(), audit);
  }

  /** Removes expired credentials (maintenance); returns how many. */
  async deleteExpired(): Promise<number> {
    const now = Date.now();
    // The store calls `pick` more than once per row: count rows, not calls.
    const expired = new Set<string>();
    await this.remove((c) => {
      const isExpired = c.expiresAt.getTime() <= now;
      if (isExpired) expired.add(c.tokenHmac.toString("hex"));
      return isExpired;
    });
    return expired.size;
  }

  private async remove(pick: (c: CredentialRow) => boolean, audit?: AuditRow): Promise<boolean> {
    const epoch = await this.epochs.acrossRotation(() => this.store.remove(pick, audit, this.sealer()));
    if (epoch === false) return false;
    this.epochs.advance("admin_credentials", epoch);
    return true;
  }

  private sealer() {
    return (epoch: Parameters<GrantEpochs["next"]>[1], before: CredentialRow[], after: CredentialRow[]) => this.epochs.next(CREDENTIAL_SET, epoch, before, after);
  }

  private async verifiedSet(snapshot: Awaited<ReturnType<CredentialStore["snapshot"]>>, seenBefore: number): Promise<CredentialRow[]> {
    await this.epochs.ensureKeyOf(snapshot.epoch);
    try {
      return this.epochs.verify(CREDENTIAL_SET, snapshot.epoch, snapshot.rows, seenBefore).rows;
    } catch (err) {
      if (err instanceof NexusError && err.reason === "GRANT_SET_ALTERED") {
        throw new NexusError("unauthenticated", `no admin credential is accepted: ${err.message}`, { reason: "CREDENTIAL_SET_ALTERED", cause: err });
      }
      throw err;
    }
  }
}
