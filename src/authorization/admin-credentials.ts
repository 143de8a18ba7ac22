// Admin credentials: sessions from Login and named admin tokens. A credential is
// 256 random bits shown once; the database keeps only its HMAC under the
// integrity key, bound to the SPIFFE ID that created it, so a token presented
// by any other identity is refused.

import { randomBytes } from "node:crypto";
import type { AuditRow } from "../audit/audit-event.js";
import { NexusError } from "../errors/nexus-error.js";
import type { SpiffeId } from "../identity/spiffe-id.js";
import { tokenDigest } from "../keys/integrity.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { CredentialRow, CredentialStore } from "../store/credential-store.js";

const TOKEN_PREFIX = { session: "nxs_", token: "nxt_" } as const;

export interface IssuedCredential {
  readonly token: string;
  readonly record: CredentialRow;
}

export class AdminCredentials {
  constructor(
    private readonly store: CredentialStore,
    private readonly keys: KeyManager,
  ) {}

  async issue(kind: "session" | "token", owner: SpiffeId, ttlMs: number, name: string | null, audit: AuditRow): Promise<IssuedCredential> {
    const token = TOKEN_PREFIX[kind] + randomBytes(32).toString("base64url");
    const record = await this.store.insert(
      { tokenHmac: tokenDigest(this.keys.integrityKey(), token), kind, name, spiffeId: owner.toString(), expiresAt: new Date(Date.now() + ttlMs) },
      audit,
    );
    return { token, record };
  }

  /** Throws UNAUTHENTICATED unless `token` is a live credential of `caller`. */
  async verify(token: string | undefined, caller: SpiffeId): Promise<CredentialRow> {
    if (token === undefined) {
      throw new NexusError("unauthenticated", "admin RPCs need an admin credential: send `authorization: Bearer <token>` from Login or CreateAdminToken", { reason: "NO_ADMIN_CREDENTIAL" });
    }
    const row = await this.store.use(tokenDigest(this.keys.integrityKey(), token));
    if (row === undefined) throw new NexusError("unauthenticated", "the admin credential is invalid, expired or revoked", { reason: "INVALID_ADMIN_CREDENTIAL" });
    if (row.spiffeId !== caller.toString()) {
      throw new NexusError("unauthenticated", "the admin credential belongs to another identity", { reason: "CREDENTIAL_OF_ANOTHER_IDENTITY" });
    }
    return row;
  }

  async revokeSession(token: string, audit: AuditRow): Promise<boolean> {
    return this.store.revokeByHmac(tokenDigest(this.keys.integrityKey(), token), audit);
  }
}
