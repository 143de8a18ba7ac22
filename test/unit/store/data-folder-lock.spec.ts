// The data folder's lock: one Nexus process per NEXUS_DATA_DIR, refusing a
// second with the first one's pid, taking over a lock whose process is gone,
// and never following a symlink planted in its place.

import { expect } from "chai";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { LOCK_FILE, lockDataFolder } from "../../../src/store/data-folder-lock.js";

describe("lockDataFolder", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "nexus-test-lock-"));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  async function refusal(): Promise<NexusError> {
    try {
      await lockDataFolder(dir, "dev server");
    } catch (err) {
      return err as NexusError;
    }
    throw new Error("the lock was taken");
  }

  it("refuses while a live process holds the lock, naming its pid and role (FAILED_PRECONDITION, DATA_FOLDER_IN_USE)", async () => {
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30000)"]);
    try {
      await writeFile(path.join(dir, LOCK_FILE), `${holder.pid}\ndev server\n`);
      const err = await refusal();
      expect(err).to.be.instanceOf(NexusError);
      expect(err).to.include({ code: "failed_precondition", reason: "DATA_FOLDER_IN_USE" });
      expect(err.message).to.include(`a Nexus dev server is already running, pid ${holder.pid}`);
    } finally {
      holder.kill("SIGKILL");
      await once(holder, "exit");
    }
  });

  it("takes over a lock whose process is gone, and release() removes it", async () => {
    const gone = spawn(process.execPath, ["-e", ""]);
    await once(gone, "exit");
    await writeFile(path.join(dir, LOCK_FILE), `${gone.pid}\ndev server\n`);
    const lock = await lockDataFolder(dir, "dev server");
    expect(await readFile(lock.file, "utf8")).to.equal(`${process.pid}\ndev server\n`);
    await lock.release();
    expect(existsSync(lock.file)).to.equal(false);
  });

  it("a lock holding this process's own pid is stale (a container's Nexus is pid 1 again after a restart)", async () => {
    await writeFile(path.join(dir, LOCK_FILE), `${process.pid}\nserver\n`);
    const lock = await lockDataFolder(dir, "server");
    await lock.release();
    expect(existsSync(path.join(dir, LOCK_FILE))).to.equal(false);
  });

  it("refuses a symlink planted as the lock file and writes nothing through it", async () => {
    const target = path.join(dir, "elsewhere");
    await symlink(target, path.join(dir, LOCK_FILE));
    const err = await refusal();
    expect(err.message).to.include("is a symlink");
    expect(existsSync(target)).to.equal(false);
  });

  it("the lock file is private (mode 0600)", async () => {
    const lock = await lockDataFolder(dir, "server");
    try {
      expect((await stat(lock.file)).mode & 0o777).to.equal(0o600);
    } finally {
      await lock.release();
    }
  });
});
