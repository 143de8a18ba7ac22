// Unsealing without a person at start-up. With NEXUS_ADMIN_PASSWORD_FILE the
// server unseals from that file (automation; the file is then as sensitive as
// the password, see docs/operations.md). In dev mode the first run initializes
// with a random password kept in the dev data folder (mode 0600), prints it
// once, and later runs unseal from it, so secrets survive `make run` restarts.

import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import type { NexusConfig } from "../config/config.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import type { RootKeyStore } from "../store/root-key-store.js";

export async function unsealAtStart(config: NexusConfig, keys: KeyManager, rootKeys: RootKeyStore, logger: Logger): Promise<void> {
  const file = config.adminPasswordFile ?? (config.mode === "dev" ? path.join(config.dataDir, "admin-password") : undefined);
  if (file === undefined) return;
  const initialized = await rootKeys.isInitialized();
  const password = await readPassword(file);

  if (!initialized && config.mode === "dev" && password === undefined) {
    const generated = randomBytes(24).toString("base64url");
    await writeFile(file, generated + "\n", { mode: 0o600, flag: "wx" });
    await keys.initialize(generated);
    process.stdout.write(
      `\nDev mode: initialized Nexus with a random admin password (shown once; kept in ${path.relative(process.cwd(), file)}, mode 0600):\n\n  ${generated}\n\n`,
    );
    return;
  }
  if (password === undefined) {
    logger.warn("admin password file not found; staying sealed", { file });
    return;
  }
  if (!initialized && config.mode === "dev") {
    // A fresh dev database next to a kept password file: initialize with it.
    await keys.initialize(password);
    return;
  }
  if (!initialized) {
    logger.warn("not initialized yet; call OperatorService/Initialize (the password file is used once initialized)");
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
    const content = (await readFile(file, "utf8")).replace(/\r?\n$/, "");
    return content === "" ? undefined : content;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}
