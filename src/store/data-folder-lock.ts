// One Nexus process at a time per data folder (NEXUS_DATA_DIR): the embedded
// PostgreSQL cluster and the dev admin password in it belong to whoever holds
// `nexus.lock`. A second `make run`, or `nexus migrate status --dev` next to a
// running dev server, is refused here before it touches the cluster; it used
// to stop the running server's PostgreSQL on its way to finding the port taken.
//
// The lock file is published whole (written to a temporary file, then hard-
// linked into place, which fails if a lock is there), so no one ever reads a
// half-written lock. It holds the holder's pid and role. A lock whose pid is
// dead was left by a killed process and is taken over; so is one holding our
// own pid (in a container Nexus is pid 1 again after a restart). A takeover is
// atomic: the taker hard-links the stale lock to a name derived from its inode
// (`nexus.lock.stale-<inode>`); link fails when that name exists, so of two
// starters that both found the same stale lock only one removes it, and the
// other never removes a lock it did not judge stale.

import { randomBytes } from "node:crypto";
import { constants, unlinkSync } from "node:fs";
import { link, lstat, mkdir, open, unlink } from "node:fs/promises";
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

export interface LockOptions {
  /** Runs after a lock was judged stale, before it is taken over (tests interleave two takeovers with it). */
  readonly beforeTakeover?: () => Promise<void>;
}

/** Rounds of "publish, or read and take over a stale lock" before giving up on a folder others keep contending for. */
const MAX_ATTEMPTS = 5;

/**
 * Takes the data folder's lock (creating the folder if needed) or fails with a
 * FAILED_PRECONDITION NexusError, reason DATA_FOLDER_IN_USE, that names the
 * process holding it.
 */
export async function lockDataFolder(dataDir: string, holder: LockHolder, options: LockOptions = {}): Promise<DataFolderLock> {
  // Traversable (not readable) by the postgres OS user that owns the cluster folder.
  await mkdir(dataDir, { recursive: true, mode: 0o711 });
  const file = path.join(dataDir, LOCK_FILE);
  const content = `${process.pid}\n${holder}\n`;
  // The stale lock this process took over, kept (as a hard link) while we hold
  // the folder: its inode cannot be reused meanwhile, so a slower starter that
  // judged the same stale lock can never mistake our lock for it.
  let takenOver: string | undefined;
  for (let attempt = 1; ; attempt++) {
    if (await publishLock(file, content)) break;
    const existing = await readLock(file);
    if (existing === undefined) continue; // released meanwhile: publish again
    const parsed = parseLock(existing.content);
    if (parsed !== undefined && parsed.pid !== process.pid && isAlive(parsed.pid)) {
      await removeQuietly(takenOver);
      throw new NexusError(
        "failed_precondition",
        `a Nexus ${parsed.holder} is already running, pid ${parsed.pid} (it holds ${dataDir}); stop it first, or give this one another NEXUS_DATA_DIR (if pid ${parsed.pid} is not Nexus, remove ${file})`,
        { reason: "DATA_FOLDER_IN_USE" },
      );
    }
    if (attempt >= MAX_ATTEMPTS) {
      await removeQuietly(takenOver);
      throw new NexusError(
        "failed_precondition",
        `the stale lock ${file} is being taken over by another process; if no other Nexus is starting, remove ${file} and ${file}.stale-*`,
        { reason: "DATA_FOLDER_IN_USE" },
      );
    }
    // Left by a process that is gone (or unreadable garbage): take it over, unless another starter does first.
    await options.beforeTakeover?.();
    const mark = await takeOver(file, existing.inode);
    if (mark !== undefined) {
      await removeQuietly(takenOver);
      takenOver = mark;
    } else {
      await new Promise((resolve) => setTimeout(resolve, 10 * attempt));
    }
  }

  // A process that exits without release() (an uncaught error) leaves no lock behind.
  const releaseOnExit = () => {
    for (const f of [file, takenOver]) {
      try {
        if (f !== undefined) unlinkSync(f);
      } catch {
        // already gone
      }
    }
  };
  process.on("exit", releaseOnExit);
  return {
    file,
    release: async () => {
      process.off("exit", releaseOnExit);
      // Only our own lock: never one a later process took over.
      if (parseLock(await readPrivateFile(file).catch(() => undefined))?.pid === process.pid) await unlink(file).catch(() => {});
      await removeQuietly(takenOver);
    },
  };
}

/** Puts a complete lock in place; false if a lock (or anything else) is already there. */
async function publishLock(file: string, content: string): Promise<boolean> {
  const temporary = `${file}.${process.pid}.${randomBytes(6).toString("hex")}`;
  await createPrivateFile(temporary, content);
  try {
    await link(temporary, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  } finally {
    await unlink(temporary);
  }
}

/** The lock's content and inode; undefined if there is none. A symlink is refused. */
async function readLock(file: string): Promise<{ content: string; inode: bigint } | undefined> {
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    // Same refusal as every other file of the folder (a symlink: ELOOP).
    await readPrivateFile(file);
    throw err;
  }
  try {
    return { inode: (await handle.stat({ bigint: true })).ino, content: await handle.readFile("utf8") };
  } finally {
    await handle.close();
  }
}

/**
 * Removes the stale lock with inode `inode`, returning the takeover mark, or
 * undefined if another starter took it over first (or the lock changed since
 * it was read).
 */
async function takeOver(file: string, inode: bigint): Promise<string | undefined> {
  const mark = `${file}.stale-${inode}`;
  try {
    // link(2) does not follow a symlink, and fails if the mark exists: one taker per stale lock.
    await link(file, mark);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST" || code === "ENOENT") return undefined;
    throw err;
  }
  if ((await lstat(mark, { bigint: true })).ino !== inode) {
    // The lock was replaced after we read it: that one is not ours to judge.
    await unlink(mark);
    return undefined;
  }
  await unlink(file);
  return mark;
}

async function removeQuietly(file: string | undefined): Promise<void> {
  if (file !== undefined) await unlink(file).catch(() => {});
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
