// `nexus migrate up|down|status` needs only the database: no TLS files, no
// listeners. Run as a real process, configured only by NEXUS_* variables, as
// a deployment's migration job would run it.

import { expect } from "chai";
import { createTestDatabase } from "../support/test-database.js";
import { cleanEnv, startNexusProcess } from "../support/nexus-process.js";

describe("`nexus migrate` (a real process)", function () {
  this.timeout(60_000);
  let env: NodeJS.ProcessEnv;

  before(async () => {
    // Nothing but the database: no NEXUS_TLS_CERT, NEXUS_TLS_KEY or NEXUS_TRUST_BUNDLE.
    env = cleanEnv({ NEXUS_DATABASE_URL: await createTestDatabase("migrate_cli"), NEXUS_LOG_LEVEL: "warn" });
  });

  async function migrate(...args: string[]) {
    const p = startNexusProcess(["migrate", ...args], env);
    const code = await p.exited();
    return { code, stdout: p.stdout(), stderr: p.stderr() };
  }

  it("status, up and down run with only NEXUS_DATABASE_URL set, and exit 0", async () => {
    const before = await migrate("status");
    expect(before.code, before.stderr).to.equal(0);
    expect(before.stdout).to.match(/^schema version 0 of (\d+), pending: /);
    const latest = Number(/of (\d+)/.exec(before.stdout)![1]);

    const up = await migrate("up");
    expect(up.code, up.stderr).to.equal(0);
    expect(up.stdout).to.equal(`applied ${latest} migration(s)\nschema version ${latest} of ${latest}, up to date\n`);

    const down = await migrate("down");
    expect(down.code, down.stderr).to.equal(0);
    expect(down.stdout).to.match(new RegExp(`^reverted 1 migration\\(s\\)\\nschema version ${latest - 1} of ${latest}, pending: `));
  });

  it("the TLS settings of the same environment may be there and are not read (a missing file is no error)", async () => {
    const withServeSettings = { ...env, NEXUS_TLS_CERT: "/nonexistent/svid.pem", NEXUS_TLS_KEY: "/nonexistent/svid_key.pem", NEXUS_TRUST_BUNDLE: "/nonexistent/bundle.pem" };
    const p = startNexusProcess(["migrate", "status"], withServeSettings);
    expect(await p.exited(), p.stderr()).to.equal(0);
  });

  it("a malformed database setting still stops it with exit code 2, naming the variable", async () => {
    const p = startNexusProcess(["migrate", "status"], { ...env, NEXUS_DATABASE_URL: "", NEXUS_DATABASE_URL_FILE: "/nonexistent/url" });
    expect(await p.exited()).to.equal(2);
    expect(p.stderr()).to.include("NEXUS_DATABASE_URL_FILE");
  });

  it("an unknown flag is refused with exit code 2", async () => {
    const p = startNexusProcess(["migrate", "status", "--no-such-flag=1"], env);
    expect(await p.exited()).to.equal(2);
    expect(p.stderr()).to.include("unknown flag --no-such-flag");
  });
});
