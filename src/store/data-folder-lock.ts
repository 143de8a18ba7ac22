// One Nexus process at a time per data folder (NEXUS_DATA_DIR): the embedded
// PostgreSQL cluster and the dev admin password in it belong to whoever holds
// `nexus.lock`. A second `make run`, or `nexus migrate status --dev` next to a
// running dev server, is refused here before it touches the cluster; it used
// to stop the running server's PostgreSQL on its way to finding the port taken.
//
// The lock file is created with O_EXCL and holds the holder's pid and role. A
// lock whose pid is dead was left by a killed process and is taken over; so is
// one holding our own pid (in a container Nexus is pid 1 again after a restart).

import { unlinkSync } from "node:fs";
import { mkdir, unlink } from "node:fs/promises";
import path from "node:path";
import { NexusError } from "../errors/nexus-error.js";
import { createPrivateFile, readPrivateFile } from "./private-file.js";

export const LOCK_FILE = "nexus.lock";

/** Who holds a lock, in the words of the refusal: "dev server", "server", "migrate". */
export type LockHolder = "dev server" | "server" | "migrate";

export interface DataFolderLock {
  readonly file: string;
  release(): Promise<void>;
}

/**
 * Takes the data folder's lock (creating the folder if needed) or fails with a
 * FAILED_PRECONDITION NexusError, reason DATA_FOLDER_IN_USE, that names the
 * process holding it.
 */
export async function lockDataFolder(dataDir: string, holder: LockHolder): Promise<DataFolderLock> {
  // Traversable (not readable) by the postgres OS user that owns the cluster folder.
  await mkdir(dataDir, { recursive: true, mode: 0o711 });
  const file = path.join(dataDir, LOCK_FILE);
  const content = `${process.pid}\n${holder}\n`;
  for (let attempt = 0; ; attempt++) {
    try {
      await createPrivateFile(file, content);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= 2) throw err;
    }
    const existing = parseLock(await readPrivateFile(file));
    if (existing !== undefined && existing.pid !== process.pid && isAlive(existing.pid)) {
      throw new NexusError(
        "failed_precondition",
        `a Nexus ${existing.holder} is already running, pid ${existing.pid} (it holds ${dataDir}); stop it first, or give this one another NEXUS_DATA_DIR (if pid ${existing.pid} is not Nexus, remove ${file})`,
        { reason: "DATA_FOLDER_IN_USE" },
      );
    }
    // Left by a process that is gone (or unreadable garbage): take it over.
    await unlink(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
  }

  // A process that exits without release() (an uncaught error) leaves no lock behind.
  const releaseOnExit = () => {
    try {
      unlinkSync(file);
    } catch {
      // already gone
    }
  };
  process.on("exit", releaseOnExit);
  return {
    file,
    release: async () => {
      process.off("exit", releaseOnExit);
      // Only our own lock: never one a later process took over.
      if (parseLock(await readPrivateFile(file).catch(() => undefined))?.pid === process.pid) await unlink(file).catch(() => {});
    },
  };
}

function parseLock(content: string | undefined): { pid: number; holder: string } | undefined {
  if (content === undefined) return undefined;
  const [pidLine, holder] = content.split("\n");
  const pid = Number(pidLine);
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  return { pid, holder: holder || "server" };
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: alive, but another user's.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
