// What `npm ci` in a checkout and `npm install nexus-x.y.z.tgz` leave behind: the
// `nexus` and `spike` bins import from dist/, so a checkout must build on install
// (`prepare`) and the tarball must ship dist/, the migrations and the patched
// postgres.js (bundled: a dependency's postinstall needs the consumer's approval
// under npm 11, so patch-package cannot be relied on there). `make install-check`
// does the real clone + npm ci + npm pack + install; this spec is the cheap guard.

import { expect } from "chai";
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const manifest = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as {
  bin: Record<string, string>;
  scripts: Record<string, string>;
  bundleDependencies?: string[];
};

interface PackFile { path: string }

/** The files `npm pack` would put in the tarball, without running `prepare` again. */
function packedFiles(): Set<string> {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const [report] = JSON.parse(out) as [{ files: PackFile[] }];
  return new Set(report.files.map((f) => f.path));
}

describe("package manifest: runnable bins after npm ci and from a packed tarball", () => {
  let files: Set<string>;
  before(function () {
    this.timeout(60_000);
    files = packedFiles();
  });

  it("builds dist/ on npm ci / npm install in a checkout and before npm pack (prepare runs tsc)", () => {
    expect(manifest.scripts.prepare).to.match(/\btsc\b/);
  });

  it("ships every bin and every module a bin imports relatively", () => {
    for (const bin of Object.values(manifest.bin)) {
      expect(files, bin).to.include(bin);
      const source = readFileSync(path.join(root, bin), "utf8");
      const imports = [...source.matchAll(/from\s+"(\.\.?\/[^"]+)"/g)].map((m) => m[1]);
      expect(imports.length, `${bin} imports`).to.be.greaterThan(0);
      for (const spec of imports) {
        const target = path.posix.normalize(path.posix.join(path.posix.dirname(bin), spec));
        expect(files, `${bin} -> ${spec}`).to.include(target);
      }
    }
  });

  it("ships the generated protobuf code and every migration the server applies", () => {
    expect([...files].some((f) => f.startsWith("dist/gen/"))).to.equal(true);
    for (const migration of readdirSync(path.join(root, "sql"))) {
      expect(files, migration).to.include(`sql/${migration}`);
    }
  });

  it("bundles the patched postgres.js, so an install without install scripts still runs with the fixes", () => {
    expect(manifest.bundleDependencies).to.include("postgres");
    expect(files).to.include("node_modules/postgres/src/queue.js");
  });

  it("ships no tests, bench code or dev certificates' private keys", () => {
    for (const f of files) {
      expect(f, f).to.not.match(/^(dist\/)?(test|bench)\//);
      expect(f, f).to.not.match(/-key\.pem$|^certs-dev\/.*\.pem$/);
    }
  });
});
