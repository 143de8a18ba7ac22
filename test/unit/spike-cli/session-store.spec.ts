// The session store keeps tokens where only their owner can read them, one
// file per server address and SPIFFE ID.

import { expect } from "chai";
import { chmod, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { sessionDir, sessionStore } from "../../../src/spike-cli/session-store.js";

describe("spike session store", () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), "spike-sessions-"));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("lives in $XDG_RUNTIME_DIR/spike, or ~/.spike without it", () => {
    expect(sessionDir({ XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/a" })).to.equal("/run/user/1000/spike");
    expect(sessionDir({ HOME: "/home/a" })).to.equal("/home/a/.spike");
  });

  it("tightens a folder that already exists to 0700 and writes the file 0600", async () => {
    const dir = path.join(root, "spike");
    await mkdir(dir, { mode: 0o755 });
    await chmod(dir, 0o755);
    const store = sessionStore(dir);
    const file = await store.write({ address: "a:1", spiffeId: "spiffe://td/x", token: "nxs_t", expiresAt: new Date().toISOString() });
    expect((await stat(dir)).mode & 0o777).to.equal(0o700);
    expect((await stat(file)).mode & 0o777).to.equal(0o600);
    expect(await readdir(dir), "no temporary file left behind").to.deep.equal([path.basename(file)]);
  });

  it("keeps one session per server address and SPIFFE ID", async () => {
    const store = sessionStore(path.join(root, "spike"));
    const expiresAt = new Date().toISOString();
    await store.write({ address: "a:1", spiffeId: "spiffe://td/x", token: "one", expiresAt });
    await store.write({ address: "b:1", spiffeId: "spiffe://td/x", token: "two", expiresAt });
    await store.write({ address: "a:1", spiffeId: "spiffe://td/y", token: "three", expiresAt });
    expect((await store.read("a:1", "spiffe://td/x"))?.token).to.equal("one");
    expect((await store.read("b:1", "spiffe://td/x"))?.token).to.equal("two");
    expect((await store.read("a:1", "spiffe://td/y"))?.token).to.equal("three");
    expect(await store.read("c:1", "spiffe://td/x")).to.equal(undefined);
    await store.remove("a:1", "spiffe://td/x");
    expect(await store.read("a:1", "spiffe://td/x")).to.equal(undefined);
    expect((await store.read("b:1", "spiffe://td/x"))?.token).to.equal("two");
  });
});
