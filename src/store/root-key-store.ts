// SQL for the key hierarchy's rows (root_keys, keyring_keys). Ciphertext only:
// sealing and unsealing happen in keys/, above this layer.

import type { AuditRow } from "./audit-row.js";
import { insertAuditRow } from "./audit-store.js";
import { guarded, type Sql } from "./database.js";

export interface RootKeyRow {
  readonly id: number;
  readonly encryptedKey: Buffer;
  readonly kdfSalt: Buffer;
  readonly kdfParams: unknown;
  readonly passwordCheck: Buffer;
}

export interface KeyringKeyRow {
  readonly id: number;
  readonly purpose: "wrapping" | "integrity";
  readonly rootKeyId: number;
  readonly wrappedKey: Buffer;
  readonly active: boolean;
}

export interface InitialKeys {
  readonly root: RootKeyRow;
  readonly keyring: readonly KeyringKeyRow[];
}

export class RootKeyStore {
  constructor(private readonly sql: Sql) {}

  async isInitialized(): Promise<boolean> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT EXISTS (SELECT 1 FROM root_keys) AS initialized`;
      return row.initialized as boolean;
    });
  }

  /** Writes the first root key and keyring in one transaction; false if already initialized. */
  async createInitial(keys: InitialKeys): Promise<boolean> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const inserted = await tx`
          INSERT INTO root_keys (id, encrypted_key, kdf_salt, kdf_params, password_check, active)
          SELECT ${keys.root.id}, ${keys.root.encryptedKey}, ${keys.root.kdfSalt}, ${tx.json(keys.root.kdfParams as never)}, ${keys.root.passwordCheck}, true
          WHERE NOT EXISTS (SELECT 1 FROM root_keys)
          ON CONFLICT DO NOTHING
          RETURNING id`;
        if (inserted.length === 0) return false;
        for (const k of keys.keyring) {
          await tx`
            INSERT INTO keyring_keys (id, purpose, root_key_id, wrapped_key, active)
            VALUES (${k.id}, ${k.purpose}, ${k.rootKeyId}, ${k.wrappedKey}, ${k.active})`;
        }
        return true;
      }),
    );
  }

  /** The keyring keys sealed under root key `rootKeyId`, by id. */
  async loadKeyring(rootKeyId: number): Promise<KeyringKeyRow[]> {
    return guarded(async () => {
      const ring = await this.sql`
        SELECT id, purpose, root_key_id, wrapped_key, active FROM keyring_keys WHERE root_key_id = ${rootKeyId} ORDER BY id`;
      return ring.map((k) => ({ id: k.id, purpose: k.purpose, rootKeyId: k.root_key_id, wrappedKey: k.wrapped_key, active: k.active }));
    });
  }

  /**
   * The running rotation's re-MAC window, if it is open: rows under the
   * integrity key it retired may still be read until its re-MAC is done. A
   * window is trusted only if its MAC verifies under the new key (keys/).
   */
  async integrityWindow(): Promise<{ oldIntegrityKeyId: number; newIntegrityKeyId: number; mac: Buffer } | undefined> {
    return guarded(async () => {
      const [row] = await this.sql`
        SELECT old_integrity_key_id, new_integrity_key_id, integrity_window_mac FROM key_rotations
        WHERE phase <> 'done' AND integrity_window_mac IS NOT NULL AND old_integrity_key_id IS NOT NULL`;
      if (!row) return undefined;
      return { oldIntegrityKeyId: row.old_integrity_key_id as number, newIntegrityKeyId: row.new_integrity_key_id as number, mac: row.integrity_window_mac as Buffer };
    });
  }

  /** The id of the active root key; undefined when not initialized. */
  async activeRootKeyId(): Promise<number | undefined> {
    return guarded(async () => {
      const [row] = await this.sql`SELECT id FROM root_keys WHERE active`;
      return row?.id as number | undefined;
    });
  }

  /**
   * ChangeAdminPassword: the active root key sealed again under a new KEK,
   * if the stored password check is still `expectedCheck` (a concurrent change
   * wins, this one is refused: false). With its audit event.
   */
  async resealRootKey(root: RootKeyRow, expectedCheck: Buffer, audit: AuditRow): Promise<boolean> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        const rows = await tx`
          UPDATE root_keys SET encrypted_key = ${root.encryptedKey}, kdf_salt = ${root.kdfSalt}, kdf_params = ${tx.json(root.kdfParams as never)},
                 password_check = ${root.passwordCheck}, last_rotated_at = now()
          WHERE id = ${root.id} AND active AND password_check = ${expectedCheck}
          RETURNING id`;
        if (rows.length === 0) return false;
        await insertAuditRow(tx, audit);
        return true;
      }),
    );
  }

  /**
   * RotateRootKey, in one transaction: the new root key becomes the active one,
   * every keyring key is stored wrapped under it, and the old root key row is
   * deleted. Refused (false) if the old root key is no longer the active one,
   * a key rotation is running, or the keyring changed meanwhile.
   */
  async replaceRootKey(oldId: number, root: RootKeyRow, keyring: readonly KeyringKeyRow[], audit: AuditRow): Promise<boolean> {
    return guarded(() =>
      this.sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(hashtext('nexus/key-rotation'))`;
        const [running] = await tx`SELECT 1 AS r FROM key_rotations WHERE phase <> 'done'`;
        if (running) return false;
        const [old] = await tx`SELECT id FROM root_keys WHERE id = ${oldId} AND active FOR UPDATE`;
        if (!old) return false;
        const stored = await tx`SELECT id FROM keyring_keys WHERE root_key_id = ${oldId} ORDER BY id`;
        const ids = new Set(keyring.map((k) => k.id));
        if (stored.length !== keyring.length || stored.some((r) => !ids.has(r.id as number))) return false;
        await tx`UPDATE root_keys SET active = false WHERE id = ${oldId}`;
        await tx`
          INSERT INTO root_keys (id, encrypted_key, kdf_salt, kdf_params, password_check, active)
          VALUES (${root.id}, ${root.encryptedKey}, ${root.kdfSalt}, ${tx.json(root.kdfParams as never)}, ${root.passwordCheck}, true)`;
        for (const k of keyring) {
          await tx`UPDATE keyring_keys SET root_key_id = ${root.id}, wrapped_key = ${k.wrappedKey} WHERE id = ${k.id}`;
        }
        await tx`DELETE FROM root_keys WHERE id = ${oldId}`;
        await insertAuditRow(tx, audit);
        return true;
      }),
    );
  }

  /** Calls `onChange` when keyring keys are added or deleted (by any replica), and after a reconnect. */
  async listen(onChange: () => void): Promise<{ unlisten(): Promise<void> }> {
    const meta = await this.sql.listen("nexus_keyring", () => onChange(), () => onChange());
    return { unlisten: () => meta.unlisten() };
  }

  /** The active root key and the keyring it wraps; undefined when not initialized. */
  async loadActive(): Promise<InitialKeys | undefined> {
    return guarded(async () => {
      const [root] = await this.sql`
        SELECT id, encrypted_key, kdf_salt, kdf_params, password_check FROM root_keys WHERE active`;
      if (!root) return undefined;
      const ring = await this.sql`
        SELECT id, purpose, root_key_id, wrapped_key, active FROM keyring_keys WHERE root_key_id = ${root.id} ORDER BY id`;
      return {
        root: {
          id: root.id,
          encryptedKey: root.encrypted_key,
          kdfSalt: root.kdf_salt,
          kdfParams: root.kdf_params,
          passwordCheck: root.password_check,
        },
        keyring: ring.map((k) => ({ id: k.id, purpose: k.purpose, rootKeyId: k.root_key_id, wrappedKey: k.wrapped_key, active: k.active })),
      };
    });
  }
}
