// The `spike` command line end to end: `node bin/spike.js` in its own process
// against `nexus serve` in another, over gRPC with mTLS and the caller's SVID.
// Every verb runs for real, JSON output is parsed and checked, each exit code
// comes from a real failure, the session file's modes and its binding to the
// SVID are checked, and the password prompt is driven through a pseudo-terminal.

import { expect } from "chai";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import postgres from "postgres";
import { REPO, runSpike, SPIKE_BIN, startChildNexus, writeSvidDir, cleanEnv, type ChildNexus, type SpikeRun } from "../support/spike-cli.js";
import { SUPERUSER_ID, WORKLOAD_ID } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

const ADMIN_PASSWORD = "correct horse battery staple 13";

// Drives a command through a pseudo-terminal: waits for the password prompt,
// types the password, and reports everything the terminal showed and the exit code.
const PTY_DRIVER = `
import json, os, pty, select, sys, time
password, argv = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
seen, sent, deadline = b"", False, time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if not sent and b"password" in seen.lower():
        time.sleep(0.2)
        os.write(fd, password.encode() + b"\\r")
        sent = True
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "terminal": seen.decode("utf8", "replace"), "sent": sent}))
`;

const exec = promisify(execFile);

describe("spike, the command line, end to end against a nexus child process", function () {
  this.timeout(120_000);
  let nexus: ChildNexus;
  let superuserDir: string;
  let workloadDir: string;
  let sessionsRoot: string;
  let sessionDir: string;

  // The superuser with its own session folder ($XDG_RUNTIME_DIR/spike).
  const spike = (args: string[], input?: string, env: Record<string, string> = {}): Promise<SpikeRun> =>
    runSpike(args, { input, env: { SPIKE_NEXUS_ADDR: nexus.address, SPIKE_SVID_DIR: superuserDir, XDG_RUNTIME_DIR: sessionsRoot, ...env } });
  const workload = (args: string[], env: Record<string, string> = {}): Promise<SpikeRun> =>
    runSpike(args, { env: { SPIKE_NEXUS_ADDR: nexus.address, SPIKE_SVID_DIR: workloadDir, XDG_RUNTIME_DIR: path.join(nexus.dir, "workload-runtime"), ...env } });
  const json = (run: SpikeRun): Record<string, unknown> => {
    expect(run.code, `exit ${run.code}: ${run.stderr}`).to.equal(0);
    return JSON.parse(run.stdout) as Record<string, unknown>;
  };
  const failed = (run: SpikeRun, code: number): string => {
    expect(run.code, `expected exit ${code}, got ${run.code}: ${run.stderr}${run.stdout}`).to.equal(code);
    const lines = run.stderr.trim().split("\n");
    expect(lines, "one line on stderr, no stack trace").to.have.length(1);
    expect(run.stderr).to.not.match(/\n\s+at /);
    return lines[0];
  };

  before(async () => {
    nexus = await startChildNexus();
    superuserDir = await writeSvidDir(path.join(nexus.dir, "superuser"), nexus.pki.superuser, nexus.pki.ca.certPem);
    workloadDir = await writeSvidDir(path.join(nexus.dir, "workload"), nexus.pki.workload, nexus.pki.ca.certPem);
    sessionsRoot = path.join(nexus.dir, "runtime");
    sessionDir = path.join(sessionsRoot, "spike");
    await mkdir(sessionsRoot, { recursive: true });
  });

  after(async () => {
    await nexus?.stop();
  });

  it("operator status -o json reports an uninitialized server and who the caller is, before init", async () => {
    const status = json(await spike(["operator", "status", "-o", "json"]));
    expect(status).to.include({ initialized: false, sealed: true, trustDomain: "spike.ist", callerSpiffeId: SUPERUSER_ID });
  });

  it("a secret call while sealed exits 5 with the server's reason in one line", async () => {
    const line = failed(await spike(["secret", "get", "apps/billing/db"]), 5);
    expect(line).to.match(/^spike: failed precondition: .*sealed/i);
  });

  it("operator init reads the new password from --password-stdin and leaves the server unsealed", async () => {
    const res = json(await spike(["operator", "init", "--password-stdin", "-o", "json"], ADMIN_PASSWORD + "\n"));
    expect(res.rootKeyId).to.be.a("number").above(0);
    expect(json(await spike(["operator", "status", "-o", "json"]))).to.include({ initialized: true, sealed: false });
  });

  it("operator init a second time exits 4 (FAILED_PRECONDITION, not sealed)", async () => {
    failed(await spike(["operator", "init", "--password-stdin"], ADMIN_PASSWORD), 4);
  });

  it("operator login prompts for the password on a terminal without echoing it, and keeps the token 0600 in a 0700 folder", async () => {
    const { stdout } = await exec("python3", ["-c", PTY_DRIVER, ADMIN_PASSWORD, process.execPath, SPIKE_BIN, "operator", "login"], {
      cwd: REPO,
      env: cleanEnv({ SPIKE_NEXUS_ADDR: nexus.address, SPIKE_SVID_DIR: superuserDir, XDG_RUNTIME_DIR: sessionsRoot, TERM: "xterm" }),
      timeout: 90_000,
    });
    const result = JSON.parse(stdout) as { code: number; terminal: string; sent: boolean };
    expect(result.sent, `no prompt seen:\n${result.terminal}`).to.equal(true);
    expect(result.code, result.terminal).to.equal(0);
    expect(result.terminal).to.match(/password/i);
    expect(result.terminal).to.include("logged in as " + SUPERUSER_ID);
    expect(result.terminal, "the password is never shown").to.not.include(ADMIN_PASSWORD);
    expect(result.terminal, "not even a piece of it").to.not.include(ADMIN_PASSWORD.slice(0, 8));

    expect((await stat(sessionDir)).mode & 0o777).to.equal(0o700);
    const files = await readdir(sessionDir);
    expect(files).to.have.length(1);
    expect((await stat(path.join(sessionDir, files[0]))).mode & 0o777).to.equal(0o600);
    const session = JSON.parse(await readFile(path.join(sessionDir, files[0]), "utf8")) as Record<string, string>;
    expect(session).to.include({ address: nexus.address, spiffeId: SUPERUSER_ID });
    expect(session.token).to.match(/^nxs_/);
  });

  it("secret put key=- on a terminal prompts for the value without echoing it", async () => {
    const value = "typed-on-the-terminal-42";
    const { stdout } = await exec("python3", ["-c", PTY_DRIVER, value, process.execPath, SPIKE_BIN, "secret", "put", "apps/billing/typed", "password=-"], {
      cwd: REPO,
      env: cleanEnv({ SPIKE_NEXUS_ADDR: nexus.address, SPIKE_SVID_DIR: superuserDir, XDG_RUNTIME_DIR: sessionsRoot, TERM: "xterm" }),
      timeout: 90_000,
    });
    const result = JSON.parse(stdout) as { code: number; terminal: string; sent: boolean };
    expect(result.sent, `no prompt seen:\n${result.terminal}`).to.equal(true);
    expect(result.code, result.terminal).to.equal(0);
    expect(result.terminal).to.not.include(value.slice(0, 8));
    expect((await spike(["secret", "get", "apps/billing/typed", "--field", "password"])).stdout).to.equal(value + "\n");
    json(await spike(["secret", "purge", "apps/billing/typed", "-o", "json"]));
  });

  it("the session token is useless with another SVID: the workload presenting it is refused with exit 3", async () => {
    const [file] = await readdir(sessionDir);
    const token = (JSON.parse(await readFile(path.join(sessionDir, file), "utf8")) as { token: string }).token;
    const tokenFile = path.join(nexus.dir, "stolen-token");
    await writeFile(tokenFile, token, { mode: 0o600 });
    failed(await workload(["policy", "list", "--token-file", tokenFile]), 3);
    // The same token with the SVID it was issued to works: the refusal was the identity.
    expect((await spike(["policy", "list", "--token-file", tokenFile])).code).to.equal(0);
  });

  it("secret put takes key=value, key=@file and key=- (stdin); get -o json returns the data in proto3 JSON", async () => {
    const certFile = path.join(nexus.dir, "cert.pem");
    await writeFile(certFile, "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n");
    const put = json(await spike(["secret", "put", "apps/billing/db", "username=billing", `cert=@${certFile}`, "password=-", "-o", "json"], "s3cret-from-stdin\n"));
    expect(put.version).to.equal(1);
    expect(put.createdAt).to.be.a("string");
    const got = json(await spike(["secret", "get", "apps/billing/db", "-o", "json"]));
    expect(got).to.deep.include({ path: "apps/billing/db", version: 1 });
    expect(got.data).to.deep.equal({ username: "billing", password: "s3cret-from-stdin", cert: "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n" });
  });

  it("secret put --expires-at takes a duration from now and sets the secret's expiry", async () => {
    json(await spike(["secret", "put", "apps/expiring", "k=v", "--expires-at", "30d", "-o", "json"]));
    const metadata = json(await spike(["secret", "metadata", "get", "apps/expiring", "-o", "json"])).metadata as { expiresAt: string };
    expect(Date.parse(metadata.expiresAt) - Date.now()).to.be.closeTo(30 * 86_400_000, 120_000);
    json(await spike(["secret", "purge", "apps/expiring", "-o", "json"]));
  });

  it("secret get --field prints the bare value and one newline", async () => {
    const run = await spike(["secret", "get", "apps/billing/db", "--field", "password"]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.equal("s3cret-from-stdin\n");
  });

  it("secret get without -o prints an aligned KEY/VALUE table", async () => {
    const run = await spike(["secret", "get", "apps/billing/db"]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout.split("\n")[0]).to.match(/^KEY\s+VALUE$/);
    expect(run.stdout).to.match(/^username\s+billing$/m);
  });

  it("secret patch writes a new version from the current one with only the given keys changed", async () => {
    const res = json(await spike(["secret", "patch", "apps/billing/db", "password=rotated", "-o", "json"]));
    expect(res.version).to.equal(2);
    const got = json(await spike(["secret", "get", "apps/billing/db", "-o", "json"]));
    expect(got.data).to.include({ username: "billing", password: "rotated" });
    const old = await spike(["secret", "get", "apps/billing/db", "--version", "1", "--field", "password"]);
    expect(old.stdout).to.equal("s3cret-from-stdin\n");
  });

  it("secret put with a stale --cas exits 4 (ABORTED) and writes nothing", async () => {
    failed(await spike(["secret", "put", "apps/billing/db", "password=x", "--cas", "1"]), 4);
    expect(json(await spike(["secret", "metadata", "get", "apps/billing/db", "-o", "json"])).metadata).to.include({ latestVersion: 2 });
  });

  it("secret get of a missing path exits 2 (NOT_FOUND)", async () => {
    expect(failed(await spike(["secret", "get", "apps/none"]), 2)).to.match(/^spike: not found: /);
  });

  it("a path the server rejects exits 1 (INVALID_ARGUMENT) naming the field", async () => {
    expect(failed(await spike(["secret", "put", "apps//bad", "k=v"]), 1)).to.match(/^spike: invalid argument: path/);
  });

  it("a usage error (missing argument) exits 1", async () => {
    expect((await spike(["secret", "put", "apps/x"])).code).to.equal(1);
  });

  it("a workload without a policy is refused with exit 3 and a line naming who may not do what where", async () => {
    const line = failed(await workload(["secret", "get", "apps/billing/db"]), 3);
    expect(line).to.equal(`spike: permission denied: ${WORKLOAD_ID} may not READ apps/billing/db`);
  });

  it("secret list follows pages and -o json lists every path", async () => {
    await spike(["secret", "put", "apps/billing/api", "token=t"]);
    await spike(["secret", "put", "apps/other/x", "k=v"]);
    const res = json(await spike(["secret", "list", "apps/billing/", "-o", "json"]));
    expect(res).to.deep.equal({ paths: ["apps/billing/api", "apps/billing/db"], nextPageToken: "" });
    // One path per page: three pages, followed to the end.
    const text = await spike(["secret", "list", "--page-size", "1"]);
    expect(text.stdout).to.equal("apps/billing/api\napps/billing/db\napps/other/x\n");
  });

  it("secret metadata set merges custom metadata (k= removes k) and sets max versions", async () => {
    const first = await spike(["secret", "metadata", "set", "apps/billing/db", "--custom", "owner=billing", "--custom", "ticket=T-1"]);
    expect(first.code, first.stderr).to.equal(0);
    const res = json(await spike(["secret", "metadata", "set", "apps/billing/db", "--custom", "ticket=", "--custom", "tier=1", "--max-versions", "5", "-o", "json"]));
    expect((res.metadata as Record<string, unknown>).customMetadata).to.deep.equal({ owner: "billing", tier: "1" });
    expect((res.metadata as Record<string, unknown>).maxVersions).to.equal(5);
    const text = await spike(["secret", "metadata", "get", "apps/billing/db"]);
    expect(text.stdout).to.match(/^max versions\s+5$/m);
    expect(text.stdout).to.match(/^VERSION\s+LABELS\s+CREATED\s+BY\s+STATE$/m);
  });

  it("secret put --stage pending, get --label, promote --expect-current: the zero-downtime rotation steps, with their exit codes", async () => {
    const p = "apps/rotation/db";
    json(await spike(["secret", "put", p, "password=v1", "-o", "json"]));
    expect(json(await spike(["secret", "put", p, "password=v2", "--stage", "pending", "-o", "json"])).version).to.equal(2);
    expect((await spike(["secret", "get", p, "--field", "password"])).stdout, "CURRENT is still version 1").to.equal("v1\n");
    expect((await spike(["secret", "get", p, "--label", "pending", "--field", "password"])).stdout).to.equal("v2\n");
    expect(failed(await spike(["secret", "promote", p, "2", "--expect-current", "7"]), 4)).to.match(/current/i);
    expect(json(await spike(["secret", "promote", p, "2", "--expect-current", "1", "-o", "json"]))).to.include({ currentVersion: 2, previousVersion: 1 });
    expect((await spike(["secret", "get", p, "--label", "previous", "--field", "password"])).stdout).to.equal("v1\n");
    failed(await spike(["secret", "put", p, "password=x", "--stage", "previous"]), 1);
    failed(await spike(["secret", "get", p, "--label", "pending", "--version", "1"]), 1);
    failed(await spike(["secret", "promote", "apps/rotation/missing", "1"]), 2);
  });

  it("secret metadata set --rotation-period --generator sets a rotation policy; secret rotate stages a generated value PENDING", async () => {
    const p = "apps/rotation/generated";
    json(await spike(["secret", "put", p, "username=app", "password=initial", "-o", "json"]));
    const set = json(await spike(["secret", "metadata", "set", p, "--rotation-period", "30d", "--generator", "password:24:lower,digits", "-o", "json"]));
    const rotation = (set.metadata as Record<string, Record<string, unknown>>).rotation;
    expect(rotation).to.deep.include({ period: "2592000s", dataKey: "password" });
    expect(rotation.randomPassword).to.deep.include({ length: 24, characterClasses: ["CHARACTER_CLASS_LOWERCASE", "CHARACTER_CLASS_DIGITS"] });
    const rotated = json(await spike(["secret", "rotate", p, "-o", "json"]));
    expect(rotated).to.deep.include({ version: 2, labels: ["SECRET_LABEL_PENDING"] });
    const pending = JSON.parse((await spike(["secret", "get", p, "--label", "pending", "-o", "json"])).stdout) as { data: Record<string, string> };
    expect(pending.data.username, "other keys are copied from CURRENT").to.equal("app");
    expect(pending.data.password).to.match(/^[a-z0-9]{24}$/);
    expect((await spike(["secret", "get", p, "--field", "password"])).stdout, "CURRENT untouched").to.equal("initial\n");
    failed(await spike(["secret", "metadata", "set", p, "--rotation-period", "30d", "--generator", "password:4"]), 1);
    failed(await spike(["secret", "metadata", "set", p, "--generator", "nonsense:1"]), 1);
    json(await spike(["secret", "metadata", "set", p, "--rotation-period", "off", "-o", "json"]));
    failed(await spike(["secret", "rotate", p]), 4);
  });

  it("secret watch prints one JSON line per event (no values) until interrupted, and --cursor resumes after the last one", async () => {
    const env = cleanEnv({ SPIKE_NEXUS_ADDR: nexus.address, SPIKE_SVID_DIR: superuserDir, XDG_RUNTIME_DIR: sessionsRoot });
    const events: Array<{ type: string; path?: string; cursor: string; versions?: number[] }> = [];
    let text = "";
    const watcher = spawn(process.execPath, [SPIKE_BIN, "secret", "watch", "apps/watched/", "-o", "json"], { cwd: REPO, env });
    watcher.stdout.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n")) {
        events.push(JSON.parse(text.slice(0, nl)));
        text = text.slice(nl + 1);
      }
    });
    try {
      await eventually(() => expect(events.length, "the first heartbeat carries the starting cursor").to.be.above(0), { timeoutMs: 20_000 });
      json(await spike(["secret", "put", "apps/watched/db", "password=never-printed", "-o", "json"]));
      await eventually(() => expect(events.map((e) => e.type)).to.include("WATCH_EVENT_TYPE_VERSION_CREATED"), { timeoutMs: 20_000 });
    } finally {
      if (watcher.exitCode === null && watcher.signalCode === null) {
        watcher.kill("SIGINT");
        await once(watcher, "exit");
      }
    }
    const created = events.find((e) => e.type === "WATCH_EVENT_TYPE_VERSION_CREATED")!;
    expect(created).to.deep.include({ path: "apps/watched/db", versions: [1] });
    expect(JSON.stringify(events)).to.not.include("never-printed");
    // Resume after the event: only what came later.
    json(await spike(["secret", "put", "apps/watched/db", "password=again", "-o", "json"]));
    const resumed = spawn(process.execPath, [SPIKE_BIN, "secret", "watch", "apps/watched/", "--cursor", created.cursor], { cwd: REPO, env });
    let lines = "";
    resumed.stdout.on("data", (chunk: Buffer) => (lines += chunk.toString()));
    try {
      await eventually(() => expect(lines).to.match(/version_created apps\/watched\/db versions 2/), { timeoutMs: 20_000 });
    } finally {
      if (resumed.exitCode === null && resumed.signalCode === null) {
        resumed.kill("SIGINT");
        await once(resumed, "exit");
      }
    }
    expect(lines).to.not.match(/versions 1\b/);
    failed(await spike(["secret", "watch", "apps/watched/", "--cursor", "not-a-cursor"]), 1);
  });

  it("secret delete, undelete and destroy change the named versions; purge removes the secret", async () => {
    expect(json(await spike(["secret", "delete", "apps/billing/db", "--versions", "2", "-o", "json"]))).to.deep.equal({ versions: [2] });
    // The current version deleted: a read of it is NOT_FOUND, never the version before (read by number).
    expect(failed(await spike(["secret", "get", "apps/billing/db", "--field", "password"]), 2)).to.match(/current version \(2\) .* is deleted/);
    expect((await spike(["secret", "get", "apps/billing/db", "--version", "1", "--field", "password"])).stdout).to.equal("s3cret-from-stdin\n");
    expect(json(await spike(["secret", "undelete", "apps/billing/db", "--versions", "2", "-o", "json"]))).to.deep.equal({ versions: [2] });
    expect(json(await spike(["secret", "destroy", "apps/billing/db", "--versions", "1", "-o", "json"]))).to.deep.equal({ versions: [1] });
    failed(await spike(["secret", "get", "apps/billing/db", "--version", "1"]), 2);
    expect(json(await spike(["secret", "purge", "apps/other/x", "-o", "json"]))).to.deep.equal({});
    failed(await spike(["secret", "metadata", "get", "apps/other/x"]), 2);
  });

  it("policy create, get, update, list and delete, with -o json parsed", async () => {
    const created = json(
      await spike(["policy", "create", "demo-read", "--spiffe-id-pattern", "^spiffe://spike\\.ist/workload/demo$", "--path-pattern", "^apps/billing/.*$", "--permissions", "read,list", "-o", "json"]),
    );
    expect(created.policy).to.deep.include({ name: "demo-read", permissions: ["PERMISSION_READ", "PERMISSION_LIST"], createdBy: SUPERUSER_ID });
    failed(await spike(["policy", "create", "demo-read", "--spiffe-id-pattern", "x", "--path-pattern", "y", "--permissions", "read"]), 4);
    expect((json(await spike(["policy", "get", "demo-read", "-o", "json"])).policy as Record<string, unknown>).pathPattern).to.equal("^apps/billing/.*$");

    // The workload can now read, as the policy says, and still not write.
    expect((await workload(["secret", "get", "apps/billing/db", "--field", "username"])).stdout).to.equal("billing\n");
    expect(failed(await workload(["secret", "put", "apps/billing/db", "k=v"]), 3)).to.equal(`spike: permission denied: ${WORKLOAD_ID} may not WRITE apps/billing/db`);

    const updated = json(await spike(["policy", "update", "demo-read", "--permissions", "read", "-o", "json"]));
    expect((updated.policy as Record<string, unknown>).permissions).to.deep.equal(["PERMISSION_READ"]);
    await spike(["policy", "create", "other", "--spiffe-id-pattern", "^x$", "--path-pattern", "^y$", "--permissions", "read"]);
    const all = json(await spike(["policy", "list", "--page-size", "1", "-o", "json"]));
    expect((all.policies as Array<{ name: string }>).map((p) => p.name)).to.deep.equal(["demo-read", "other"]);
    expect(json(await spike(["policy", "delete", "other", "-o", "json"]))).to.deep.equal({});
    const listed = json(await spike(["policy", "list", "--path-pattern", "^apps/billing/.*$", "-o", "json"]));
    expect((listed.policies as Array<{ name: string }>).map((p) => p.name)).to.deep.equal(["demo-read"]);
    expect(json(await spike(["policy", "list", "--path-pattern", "^nothing$", "-o", "json"])).policies).to.deep.equal([]);
    expect(json(await spike(["policy", "delete", "demo-read", "-o", "json"]))).to.deep.equal({});
    failed(await spike(["policy", "get", "demo-read"]), 2);
  });

  it("policy apply creates and updates from YAML, leaves others alone, and deletes them only with --prune", async () => {
    await spike(["policy", "create", "stray", "--spiffe-id-pattern", "^x$", "--path-pattern", "^y$", "--permissions", "read"]);
    const yamlFile = path.join(nexus.dir, "policies.yaml");
    await writeFile(
      yamlFile,
      ["policies:", "  - name: billing", "    spiffeIdPattern: '^spiffe://spike\\.ist/workload/billing$'", "    pathPattern: '^apps/billing/.*$'", "    permissions: [read, list]", ""].join("\n"),
    );
    expect(json(await spike(["policy", "apply", "-f", yamlFile, "-o", "json"]))).to.deep.equal({ created: ["billing"], updated: [], unchanged: [], deleted: [] });
    const jsonFile = path.join(nexus.dir, "policies.json");
    await writeFile(jsonFile, JSON.stringify([{ name: "billing", spiffe_id_pattern: "^spiffe://spike\\.ist/workload/billing$", path_pattern: "^apps/billing/.*$", permissions: ["read"] }]));
    expect(json(await spike(["policy", "apply", "-f", jsonFile, "-o", "json", "--prune"]))).to.deep.equal({ created: [], updated: ["billing"], unchanged: [], deleted: ["stray"] });
    expect(json(await spike(["policy", "apply", "-f", jsonFile, "-o", "json"]))).to.deep.equal({ created: [], updated: [], unchanged: ["billing"], deleted: [] });
    const bad = path.join(nexus.dir, "bad.yaml");
    await writeFile(bad, "- name: x\n  pathPattern: y\n  permissions: [read]\n");
    expect(failed(await spike(["policy", "apply", "-f", bad]), 1)).to.include("spiffeIdPattern is missing");
  });

  it("operator token create prints the token once; list shows it; revoke removes it; the token works as --token-file", async () => {
    const created = json(await spike(["operator", "token", "create", "ci-deploy", "--ttl", "1d", "-o", "json"]));
    expect(created.token).to.match(/^nxt_/);
    const tokenFile = path.join(nexus.dir, "ci-token");
    await writeFile(tokenFile, String(created.token) + "\n", { mode: 0o600 });
    const listed = json(await spike(["operator", "token", "list", "-o", "json"], undefined, { SPIKE_TOKEN_FILE: tokenFile }));
    expect((listed.adminTokens as Array<{ name: string }>).map((t) => t.name)).to.deep.equal(["ci-deploy"]);
    expect(json(await spike(["operator", "token", "revoke", "ci-deploy", "-o", "json"]))).to.deep.equal({});
    failed(await spike(["operator", "token", "list"], undefined, { SPIKE_TOKEN_FILE: tokenFile }), 3);
    failed(await spike(["operator", "token", "revoke", "ci-deploy"]), 2);
  });

  it("operator audit list filters by --since and --caller; audit verify reports a clean log", async () => {
    const res = json(await spike(["operator", "audit", "list", "--since", "1h", "--caller", WORKLOAD_ID, "-o", "json"]));
    const events = res.events as Array<Record<string, unknown>>;
    expect(events.length).to.be.above(0);
    expect(events.every((e) => e.callerSpiffeId === WORKLOAD_ID)).to.equal(true);
    expect(events.some((e) => e.code === "PERMISSION_DENIED" && e.path === "apps/billing/db")).to.equal(true);
    const verified = json(await spike(["operator", "audit", "verify", "-o", "json"]));
    expect(verified.problems).to.deep.equal([]);
    expect(Number(verified.eventsChecked)).to.be.above(0);
  });

  it("operator audit verify exits 6 when an event was altered behind the server's back", async () => {
    const db = postgres(nexus.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      await db`UPDATE audit_events SET path = 'forged' WHERE id = (SELECT min(id) FROM audit_events WHERE mac IS NOT NULL)`;
    } finally {
      await db.end();
    }
    const run = await spike(["operator", "audit", "verify"]);
    expect(run.code, run.stderr).to.equal(6);
    expect(run.stdout).to.match(/^altered /m);
  });

  it("operator seal makes secret calls exit 5; unseal with --password-file brings them back", async () => {
    expect((await spike(["operator", "seal"])).code).to.equal(0);
    const line = failed(await spike(["secret", "get", "apps/billing/api"]), 5);
    expect(line).to.match(/sealed/i);
    const passwordFile = path.join(nexus.dir, "admin-password");
    await writeFile(passwordFile, ADMIN_PASSWORD + "\n", { mode: 0o600 });
    const unsealed = json(await spike(["operator", "unseal", "--password-file", passwordFile, "-o", "json"]));
    expect(unsealed.activeKeyringKeyId).to.be.a("number");
    expect((await spike(["secret", "get", "apps/billing/api", "--field", "token"])).stdout).to.equal("t\n");
  });

  it("a login without a terminal and without --password-file or --password-stdin is a usage error (exit 1)", async () => {
    expect(failed(await spike(["operator", "login"]), 1)).to.include("--password-stdin");
  });

  it("an expired session says 'session expired: run spike operator login' with exit 3", async () => {
    const otherRuntime = path.join(nexus.dir, "expired-runtime");
    await mkdir(path.join(otherRuntime, "spike"), { recursive: true, mode: 0o700 });
    const [file] = await readdir(sessionDir);
    const session = JSON.parse(await readFile(path.join(sessionDir, file), "utf8")) as Record<string, string>;
    await writeFile(path.join(otherRuntime, "spike", file), JSON.stringify({ ...session, expiresAt: new Date(Date.now() - 1000).toISOString() }), { mode: 0o600 });
    expect(failed(await spike(["policy", "list"], undefined, { XDG_RUNTIME_DIR: otherRuntime }), 3)).to.equal("spike: session expired: run spike operator login");
  });

  it("operator logout revokes the session on the server and deletes the file", async () => {
    const [file] = await readdir(sessionDir);
    const kept = path.join(nexus.dir, "session-copy.json");
    await copyFile(path.join(sessionDir, file), kept);
    const run = await spike(["operator", "logout"]);
    expect(run.code, run.stderr).to.equal(0);
    expect(await readdir(sessionDir)).to.deep.equal([]);
    // The token kept from before logout is dead on the server, not just forgotten here.
    const tokenFile = path.join(nexus.dir, "old-session-token");
    await writeFile(tokenFile, (JSON.parse(await readFile(kept, "utf8")) as { token: string }).token, { mode: 0o600 });
    failed(await spike(["policy", "list", "--token-file", tokenFile]), 3);
    expect(failed(await spike(["policy", "list"]), 3)).to.include("run spike operator login");
  });

  it("operator login with --password-stdin -o json reports the expiry but never prints the token", async () => {
    const res = json(await spike(["operator", "login", "--password-stdin", "--ttl", "15m", "-o", "json"], ADMIN_PASSWORD));
    expect(res.sessionToken).to.equal("");
    const expires = Date.parse(String(res.expiresAt));
    expect(expires - Date.now()).to.be.within(14 * 60_000, 16 * 60_000);
  });

  it("operator rotate-encryption-key prints one line per phase without a terminal and ends with DONE; -o json prints each report", async () => {
    expect((await spike(["operator", "login", "--password-stdin"], ADMIN_PASSWORD)).code).to.equal(0);
    const run = await spike(["operator", "rotate-encryption-key"]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.equal("");
    expect(run.stderr).to.match(/rotation \d+: re-wrapping/);
    expect(run.stderr).to.match(/rotation \d+ done: wrapping key \d+ -> \d+/);
    const reports = (await spike(["operator", "rotate-encryption-key", "--reencrypt", "-o", "json"])).stdout.trim().split("\n").map((l) => JSON.parse(l) as { phase: string });
    expect(reports[reports.length - 1].phase).to.equal("ROTATION_PHASE_DONE");
  });

  it("operator change-password reads both passwords from --password-stdin, ends the session, and the old password stops working", async () => {
    const NEW = "the-new-admin-password-99";
    expect((await spike(["operator", "login", "--password-stdin"], ADMIN_PASSWORD)).code).to.equal(0);
    failed(await spike(["operator", "change-password", "--password-stdin"], `${ADMIN_PASSWORD}\nshort\n`), 1);
    const run = await spike(["operator", "change-password", "--password-stdin"], `${ADMIN_PASSWORD}\n${NEW}\n`);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stderr).to.include("log in again");
    failed(await spike(["operator", "login", "--password-stdin"], ADMIN_PASSWORD), 3);
    expect((await spike(["operator", "login", "--password-stdin"], NEW)).code).to.equal(0);
    const file = path.join(nexus.dir, "new-password");
    await writeFile(file, NEW + "\n", { mode: 0o600 });
    const rotated = await spike(["operator", "rotate-root-key", "--password-file", file, "-o", "json"]);
    expect(json(rotated).rootKeyId).to.equal(2);
    // Put the password back for any test after this one.
    expect((await spike(["operator", "change-password", "--password-stdin"], `${NEW}\n${ADMIN_PASSWORD}\n`)).code).to.equal(0);
    expect((await spike(["operator", "login", "--password-stdin"], ADMIN_PASSWORD)).code).to.equal(0);
  });
});
