// Where `spike operator login` keeps the session token: one file per server
// address and SPIFFE ID, in $XDG_RUNTIME_DIR/spike/ (a per-user tmpfs) or else
// ~/.spike/, the folder 0700 and the file 0600, written atomically. The token
// alone is useless: the server accepts it only with the SVID it was issued to.

import { createHash } from "node:crypto";
import { chmod, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { homedir } from "node:os";
import path from "node:path";

export interface StoredSession {
  readonly address: string;
  readonly spiffeId: string;
  readonly token: string;
  /** ISO 8601. */
  readonly expiresAt: string;
}

export interface SessionStore {
  readonly dir: string;
  fileFor(address: string, spiffeId: string): string;
  read(address: string, spiffeId: string): Promise<StoredSession | undefined>;
  write(session: StoredSession): Promise<string>;
  remove(address: string, spiffeId: string): Promise<void>;
}

/** The folder for sessions under this environment. */
export function sessionDir(env: NodeJS.ProcessEnv): string {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime) return path.join(runtime, "spike");
  return path.join(env.HOME || homedir(), ".spike");
}

export function sessionStore(dir: string): SessionStore {
  // A hash keeps the name a safe file name; the file itself says which server and ID it is for.
  const fileFor = (address: string, spiffeId: string) =>
    path.join(dir, `session-${createHash("sha256").update(`${address}\n${spiffeId}`).digest("hex").slice(0, 32)}.json`);
  return {
    dir,
    fileFor,
    async read(address, spiffeId) {
      let text: string;
      try {
        text = await readFile(fileFor(address, spiffeId), "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
      const session = JSON.parse(text) as StoredSession;
      return session.address === address && session.spiffeId === spiffeId ? session : undefined;
    },
    async write(session) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700); // mkdir's mode does not apply to a folder that exists
      const file = fileFor(session.address, session.spiffeId);
      const temp = `${file}.${process.pid}.tmp`;
      const handle = await open(temp, "w", 0o600);
      try {
        await handle.writeFile(JSON.stringify(session) + "\n");
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, file);
      return file;
    },
    async remove(address, spiffeId) {
      await rm(fileFor(address, spiffeId), { force: true });
    },
  };
}
