// Unsealing without a person at start-up. With NEXUS_ADMIN_PASSWORD_FILE the
// server unseals from that file (automation; the file is then as sensitive as
// the password, see docs/operations.md). In dev mode the first run initializes
// with a random password kept in the dev data folder (mode 0600), prints it
// once, and later runs unseal from it, so secrets survive `make run` restarts.
//
// A password file is only ever read to unseal, never to initialize: a file
// found next to an empty database (left from a deleted one, or put there by
// someone else) would otherwise set the admin password of the new one. The
// dev file is created with O_EXCL and read without following symlinks.

import { randomBytes } from "node:crypto";
import { readFile, unlink } from "node:fs/promises";
import path from "node:path";
import type { NexusConfig } from "../config/config.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import { createPrivateFile, readPrivateFile } from "../store/private-file.js";
import type { RootKeyStore } from "../store/root-key-store.js";

/** The dev data folder's admin password file, relative to NEXUS_DATA_DIR. */
export const DEV_ADMIN_PASSWORD_FILE = "admin-password";

export async function unsealAtStart(config: NexusConfig, keys: KeyManager, rootKeys: RootKeyStore, logger: Logger): Promise<void> {
  const devFile = config.adminPasswordFile === undefined && config.mode === "dev";
  const file = config.adminPasswordFile ?? (devFile ? path.join(config.dataDir, DEV_ADMIN_PASSWORD_FILE) : undefined);
  if (file === undefined) return;
  const initialized = await rootKeys.isInitialized();
  // A configured file may be a symlink (a Kubernetes secret volume); the dev one is ours alone.
  const content = devFile ? await readPrivateFile(file) : await readPassword(file);
  const password = normalize(content);

  if (!initialized && devFile && content === undefined) {
    const generated = randomBytes(24).toString("base64url");
    await createPrivateFile(file, generated + "\n");
    try {
      await keys.initialize(generated);
    } catch (err) {
      await unlink(file).catch(() => {}); // never keep a password that initialized nothing
      throw err;
    }
    process.stdout.write(
      `\nDev mode: initialized Nexus with a random admin password (shown once; kept in ${path.relative(process.cwd(), file)}, mode 0600):\n\n  ${generated}\n\n`,
    );
    return;
  }
  if (!initialized && devFile) {
    logger.warn(
      `the dev database is empty but ${file} is there from an earlier one; it is not used to initialize. ` +
        "Remove the file and start again for a new random password, or call OperatorService/Initialize; staying sealed",
      { file },
    );
    return;
  }
  if (password === undefined) {
    logger.warn("admin password file not found or empty; staying sealed", { file });
    return;
  }
  if (!initialized) {
    logger.warn("not initialized yet; call OperatorService/Initialize (the password file is used once initialized)", { file });
    return;
  }
  try {
    await keys.unseal(password);
  } catch (err) {
    logger.error("could not unseal from the admin password file; staying sealed", { file, reason: (err as Error).message });
  }
}

async function readPassword(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

function normalize(content: string | undefined): string | undefined {
  const password = content?.replace(/\r?\n$/, "");
  return password === "" ? undefined : password;
}
