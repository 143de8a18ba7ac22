// SQL for the key hierarchy's rows (root_keys, keyring_keys). Ciphertext only:
// sealing and unsealing happen in keys/, above this layer.

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
