// The `spike` command line without a Nexus behind it: every command's --help
// (with an example) exits 0, the exit codes are documented in `spike --help`,
// shell completion comes from the command tree, a server presenting a workload
// SVID is refused by SPIFFE ID (exit 3, naming both IDs), and an unreachable
// server exits 5.

import { expect } from "chai";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import type { Command } from "commander";
import { buildProgram } from "../../src/spike-cli/main.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { forEachConcurrently } from "../support/admin-fixtures.js";
import { runSpike, writeSvidDir, type SpikeRun } from "../support/spike-cli.js";
import { createTestPki, NEXUS_ID, WORKLOAD_ID, type TestPki } from "../support/test-server.js";

const exec = promisify(execFile);

function commandPaths(command: Command, prefix: string[] = []): string[][] {
  return command.commands.filter((c) => c.name() !== "help").flatMap((c) => [[...prefix, c.name()], ...commandPaths(c, [...prefix, c.name()])]);
}

describe("spike, the command line, without a Nexus: help, completion and server identity", function () {
  this.timeout(120_000);
  let pki: TestPki;
  let dir: string;
  let superuserDir: string;

  before(async () => {
    pki = await createTestPki();
    dir = await mkdtemp(path.join(tmpdir(), "spike-cli-offline-"));
    superuserDir = await writeSvidDir(path.join(dir, "superuser"), pki.superuser, pki.ca.certPem);
  });

  after(async () => {
    await pki?.remove();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("--help of every command exits 0 and shows an example", async () => {
    const paths = commandPaths(buildProgram());
    expect(paths.map((p) => p.join(" "))).to.include.members(["secret put", "secret metadata set", "policy apply", "operator token create", "operator audit verify", "completion"]);
    const failures: string[] = [];
    await forEachConcurrently(paths, 4, async (p) => {
      const run = await runSpike([...p, "--help"]);
      if (run.code !== 0) failures.push(`${p.join(" ")}: exit ${run.code}`);
      if (!run.stdout.includes("Example:\n  $ spike ")) failures.push(`${p.join(" ")}: no example`);
    });
    expect(failures).to.deep.equal([]);
  });

  it("spike --help exits 0 and documents every exit code", async () => {
    const run = await runSpike(["--help"]);
    expect(run.code).to.equal(0);
    for (const line of [
      "0  ok",
      "1  usage error or INVALID_ARGUMENT",
      "2  NOT_FOUND",
      "3  PERMISSION_DENIED, UNAUTHENTICATED or a wrong server identity",
      "4  ABORTED, ALREADY_EXISTS or FAILED_PRECONDITION (other than sealed)",
      "5  UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or sealed",
      "6  anything else",
    ]) {
      expect(run.stdout).to.include(line);
    }
  });

  it("an unknown command or option is a usage error (exit 1)", async () => {
    expect((await runSpike(["secret", "frobnicate"])).code).to.equal(1);
    expect((await runSpike(["secret", "get", "x", "--no-such-flag"])).code).to.equal(1);
  });

  it("without an SVID, says how to give one and exits 1", async () => {
    const run = await runSpike(["secret", "get", "x"]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include("--svid-dir");
  });

  it("completion bash is valid bash that completes verbs from the command tree", async () => {
    const run = await runSpike(["completion", "bash"]);
    expect(run.code).to.equal(0);
    const script = path.join(dir, "spike.bash");
    const { writeFile } = await import("node:fs/promises");
    await writeFile(script, run.stdout);
    const complete = async (...words: string[]) => {
      const line = `source ${script}; COMP_WORDS=(spike ${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length}; _spike; echo "\${COMPREPLY[*]}"`;
      return (await exec("bash", ["-c", line])).stdout.trim().split(" ");
    };
    expect(await complete("sec")).to.deep.equal(["secret"]);
    expect(await complete("secret", "")).to.include.members(["put", "get", "list", "patch", "metadata", "purge"]);
    expect(await complete("secret", "metadata", "")).to.include.members(["get", "set"]);
    expect(await complete("secret", "get", "apps/x", "--f")).to.deep.equal(["--field"]);
    expect(await complete("operator", "token", "")).to.include.members(["create", "list", "revoke"]);
    const zsh = await runSpike(["completion", "zsh"]);
    expect(zsh.code).to.equal(0);
    expect(zsh.stdout).to.include("bashcompinit");
    expect((await runSpike(["completion", "fish"])).code).to.equal(1);
  });

  it("a server presenting a workload SVID is refused before any request, naming both IDs, with exit 3", async () => {
    // A TLS server with a perfectly valid SVID of the same trust domain, just not Nexus's.
    const fake = await pki.ca.issue({ uris: [WORKLOAD_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
    let requests = 0;
    const server = http2.createSecureServer({ cert: fake.certPem, key: fake.keyPem, ca: pki.ca.certPem, requestCert: true, allowHTTP1: false }, (_req, res) => {
      requests++;
      res.end();
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const { port } = server.address() as AddressInfo;
      const run: SpikeRun = await runSpike(["operator", "status"], { env: { SPIKE_NEXUS_ADDR: `127.0.0.1:${port}`, SPIKE_SVID_DIR: superuserDir } });
      expect(run.code, run.stderr).to.equal(3);
      expect(run.stderr.trim().split("\n")).to.have.length(1);
      expect(run.stderr).to.include(NEXUS_ID).and.to.include(WORKLOAD_ID);
      expect(requests, "no request was sent to the impostor").to.equal(0);

      // Asking for that ID explicitly is the only way to talk to it.
      const asked = await runSpike(["operator", "status", "--server-id", WORKLOAD_ID], { env: { SPIKE_NEXUS_ADDR: `127.0.0.1:${port}`, SPIKE_SVID_DIR: superuserDir } });
      expect(asked.stderr).to.not.include("wrong server identity");
    } finally {
      server.close();
    }
  });

  it("an unreachable server exits 5 with one line naming the address", async () => {
    const port = await freePort();
    const run = await runSpike(["operator", "status"], { env: { SPIKE_NEXUS_ADDR: `127.0.0.1:${port}`, SPIKE_SVID_DIR: superuserDir } });
    expect(run.code, run.stderr).to.equal(5);
    expect(run.stderr.trim().split("\n")).to.have.length(1);
    expect(run.stderr).to.include(`127.0.0.1:${port}`);
  });

  it("--cert, --key and --bundle (or SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE) must come together", async () => {
    const run = await runSpike(["operator", "status", "--cert", path.join(superuserDir, "svid.pem")]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include("all three");
  });
});
