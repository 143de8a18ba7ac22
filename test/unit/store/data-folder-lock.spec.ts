// The data folder's lock: one Nexus process per NEXUS_DATA_DIR, refusing a
// second with the first one's pid, taking over a lock whose process is gone,
// and never following a symlink planted in its place.

import { expect } from "chai";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { LOCK_FILE, lockDataFolder } from "../../../src/store/data-folder-lock.js";

const LOCK_MODULE = new URL("../../../src/store/data-folder-lock.js", import.meta.url).href;

/**
 * Another process starting on the folder: it takes the lock, pausing after it
 * has judged a lock stale until told "go", reports "won" or "refused <reason>",
 * and holds what it got until its stdin closes.
 */
class Starter {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private waiter: (() => void) | undefined;

  constructor(dir: string) {
    const script = `
      import readline from "node:readline";
      import { lockDataFolder } from ${JSON.stringify(LOCK_MODULE)};
      const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
      try {
        await lockDataFolder(${JSON.stringify(dir)}, "dev server", { beforeTakeover: async () => { console.log("stale"); await input.next(); } });
        console.log("won");
      } catch (err) {
        console.log("refused " + (err.reason ?? err.message));
      }
      await input.next();
      process.exit(0);`;
    this.child = spawn(process.execPath, ["--input-type=module", "-e", script]);
    readlineOf(this.child, (line) => {
      this.lines.push(line);
      this.waiter?.();
    });
  }

  async next(): Promise<string> {
    while (this.lines.length === 0) await new Promise<void>((resolve) => (this.waiter = resolve));
    return this.lines.shift() as string;
  }

  go(): void {
    this.child.stdin.write("go\n");
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    this.child.stdin.end();
    await once(this.child, "exit");
  }
}

function readlineOf(child: ChildProcessWithoutNullStreams, onLine: (line: string) => void): void {
  let buffered = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    buffered += chunk;
    for (let i = buffered.indexOf("\n"); i >= 0; i = buffered.indexOf("\n")) {
      onLine(buffered.slice(0, i));
      buffered = buffered.slice(i + 1);
    }
  });
}

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

  it("two starters that both found the same stale lock: exactly one takes it over, the other is refused naming the winner", async function () {
    this.timeout(30_000);
    const gone = spawn(process.execPath, ["-e", ""]);
    await once(gone, "exit");
    await writeFile(path.join(dir, LOCK_FILE), `${gone.pid}\ndev server\n`);
    const [first, second] = [new Starter(dir), new Starter(dir)];
    try {
      // Both have read the dead pid before either takes the lock over.
      expect(await first.next()).to.equal("stale");
      expect(await second.next()).to.equal("stale");
      first.go();
      expect(await first.next()).to.equal("won");
      second.go();
      expect(await second.next()).to.equal("refused DATA_FOLDER_IN_USE");
      expect(await readFile(path.join(dir, LOCK_FILE), "utf8")).to.equal(`${first.child.pid}\ndev server\n`);
    } finally {
      await Promise.all([first.stop(), second.stop()]);
    }
    // The winner, exiting, leaves the folder empty: no lock, no takeover mark, no temporary file.
    expect(await readdir(dir)).to.deep.equal([]);
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
