// The import graph runs one way (ADR 0013): the listeners (src/transport) above
// the handlers (src/services), above what both share about a call (src/calls)
// and the watch hub, above authorization, audit, keys and the store. A module
// may import its own layer or any lower one, never a higher one; the
// foundations (errors, identity, log, timing) import none of these layers.
// Type-only imports count too: they are what drew the graph both ways before.

import { expect } from "chai";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const srcRoot = fileURLToPath(new URL("../../../src/", import.meta.url));

/** Rank of each layered folder: lower number = higher layer. */
const LAYERS: Readonly<Record<string, number>> = {
  transport: 0,
  services: 1,
  calls: 2,
  watch: 2,
  authorization: 3,
  audit: 4,
  keys: 5,
  store: 6,
};
const FOUNDATIONS = new Set(["errors", "identity", "log", "timing"]);

/** Every module specifier a TypeScript source imports or re-exports, static or dynamic. */
export function importSpecifiers(source: string): string[] {
  const specs: string[] = [];
  for (const m of source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^"]+)"/gm)) specs.push(m[1]);
  return specs;
}

/** "from → to" for each import of `file` (a path under src/) that runs against the layering. */
export function violations(file: string, source: string): string[] {
  const fromFolder = file.split("/")[0];
  const out: string[] = [];
  for (const spec of importSpecifiers(source)) {
    if (!spec.startsWith(".")) continue;
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
    const toFolder = target.split("/")[0];
    if (toFolder === fromFolder || target.startsWith("..")) continue;
    const from = LAYERS[fromFolder];
    const to = LAYERS[toFolder];
    if (to === undefined) continue;
    if (FOUNDATIONS.has(fromFolder) || (from !== undefined && to < from)) out.push(`${file} -> ${target}`);
  }
  return out;
}

function sourceFiles(dir: string, prefix = ""): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) return sourceFiles(path.join(dir, entry.name), rel);
    return entry.name.endsWith(".ts") ? [rel] : [];
  });
}

describe("layering: a lower layer never imports a higher one", () => {
  it("no module under src/ imports a higher layer, type-only imports included", () => {
    const files = sourceFiles(srcRoot);
    expect(files.length).to.be.greaterThan(50);
    const found = files.flatMap((file) => violations(file, readFileSync(path.join(srcRoot, file), "utf8")));
    expect(found).to.deep.equal([]);
  });

  it("the check sees type-only, re-exported and dynamic imports of a higher layer", () => {
    expect(violations("services/x.ts", 'import type { CallContext } from "../transport/call-context.js";')).to.have.length(1);
    expect(violations("store/x.ts", 'export type { AuditRow } from "../audit/audit-event.js";')).to.have.length(1);
    expect(violations("store/x.ts", 'const m = await import("../authorization/policy.js");')).to.have.length(1);
    expect(violations("identity/x.ts", 'import { Keys } from "../keys/key-hierarchy.js";')).to.have.length(1);
    expect(violations("transport/x.ts", 'import { registerService } from "../calls/call-context.js";')).to.deep.equal([]);
    expect(violations("services/x.ts", 'import { SecretStore } from "../store/secret-store.js";')).to.deep.equal([]);
  });
});
