// Writes an output file so that a reader only ever sees the complete old or
// the complete new content, and the new content survives a crash: a temporary
// file in the destination's own folder (rename is atomic only within one
// file system), written, fsynced, given its mode and owner, renamed over the
// destination, and the folder fsynced so the rename itself is durable.

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { chown, open, readFile, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";

export interface FileOwnership {
  readonly mode: number;
  readonly uid?: number;
  readonly gid?: number;
}

export async function writeFileAtomically(file: string, content: string, ownership: FileOwnership): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString("hex")}.tmp`);
  // O_EXCL: never write through a file (or symlink) someone else put there.
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, ownership.mode);
  try {
    try {
      await handle.writeFile(content, "utf8");
      await handle.chmod(ownership.mode); // the mode given to open() is narrowed by the umask
      if (ownership.uid !== undefined || ownership.gid !== undefined) await chown(temp, ownership.uid ?? -1, ownership.gid ?? -1);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, file);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  const dirHandle = await open(dir, constants.O_RDONLY);
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

/** Whether `file` already holds exactly `content` with `mode` (then nothing is written and nothing is signalled). */
export async function fileHolds(file: string, content: string, mode: number): Promise<boolean> {
  try {
    const [current, info] = await Promise.all([readFile(file, "utf8"), stat(file)]);
    return current === content && (info.mode & 0o7777) === mode;
  } catch {
    return false;
  }
}
