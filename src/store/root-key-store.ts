// SQL for the key hierarchy's rows (root_keys, keyring_keys). Ciphertext only:
// sealing and unsealing happen in keys/, above this layer.

import { databaseError, type Sql } from "./database.js";

export class RootKeyStore {
  constructor(private readonly sql: Sql) {}

  async isInitialized(): Promise<boolean> {
    try {
      const [row] = await this.sql`SELECT EXISTS (SELECT 1 FROM root_keys) AS initialized`;
      return row.initialized as boolean;
    } catch (err) {
      throw databaseError(err);
    }
  }
}
