// Output files are replaced atomically: a reader looping over the file while
// it is rewritten many times only ever sees the complete old or the complete
// new content, never a partial or empty file; mode is as configured.

import { expect } from "chai";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { writeFileAtomically } from "../../../src/agent/atomic-file.js";

describe("atomic output files", function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "agent-atomic-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("a reader looping over the file during 200 rewrites sees only complete contents", async () => {
    const file = path.join(dir, "db.env");
    // Large enough that a plain write takes several syscalls a reader can fall between.
    const contents = ["A", "B"].map((c) => `PASSWORD="${c.repeat(512 * 1024)}"\n`);
    await writeFileAtomically(file, contents[0], { mode: 0o600 });
    let writing = true;
    const seen = { reads: 0, bad: 0 };
    const reader = (async () => {
      while (writing) {
        const text = await readFile(file, "utf8");
        seen.reads++;
        if (!contents.includes(text)) seen.bad++;
      }
    })();
    for (let i = 1; i <= 200; i++) await writeFileAtomically(file, contents[i % 2], { mode: 0o600 });
    writing = false;
    await reader;
    expect(seen.reads, "the reader ran alongside the writes").to.be.greaterThan(20);
    expect(seen.bad, `partial or empty reads out of ${seen.reads}`).to.equal(0);
    expect(await readdir(dir), "no temporary file left behind").to.deep.equal(["db.env"]);
  });

  it("the file gets the configured mode whatever the umask", async () => {
    const file = path.join(dir, "key");
    const previous = process.umask(0o077);
    try {
      await writeFileAtomically(file, "x", { mode: 0o640 });
    } finally {
      process.umask(previous);
    }
    expect((await stat(file)).mode & 0o777).to.equal(0o640);
  });
});
