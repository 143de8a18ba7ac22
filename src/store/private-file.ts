// Small files only this user may read, kept in a data folder: the embedded
// PostgreSQL's password, the dev admin password and the folder's lock. They
// are created with O_EXCL (never truncating or reusing a file someone put
// there first) and opened with O_NOFOLLOW, so a symlink planted in the folder
// can neither redirect a write nor feed us a value from elsewhere.

import { constants } from "node:fs";
import { open } from "node:fs/promises";

const { O_CREAT, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY } = constants;

/** Creates `file` (mode 0600) holding `content`; fails with EEXIST if anything is there, a symlink included. */
export async function createPrivateFile(file: string, content: string): Promise<void> {
  const handle = await open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    await handle.writeFile(content, "utf8");
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads `file`, refusing a symlink (ELOOP); undefined if there is none (ENOENT). */
export async function readPrivateFile(file: string): Promise<string | undefined> {
  let handle;
  try {
    handle = await open(file, O_RDONLY | O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ELOOP") throw new Error(`${file} is a symlink; Nexus reads its data folder's files only directly (remove the link)`, { cause: err });
    throw err;
  }
  try {
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}
