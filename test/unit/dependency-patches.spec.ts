// patches/ holds fixes to dependencies that patch-package applies on install;
// a silent install without them would bring back their bugs.

import { expect } from "chai";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

describe("dependency patches", () => {
  it("postgres.js's pool queue searches only its live part and compacts (patches/postgres+3.4.9.patch)", () => {
    // The package's "exports" hide its files; find the folder from its resolved entry point.
    const entry = fileURLToPath(import.meta.resolve("postgres"));
    const root = path.join(entry.slice(0, entry.lastIndexOf(`${path.sep}node_modules${path.sep}postgres${path.sep}`)), "node_modules", "postgres");
    for (const file of ["src/queue.js", "cjs/src/queue.js"]) {
      const source = readFileSync(path.join(root, file), "utf8");
      expect(source, file).to.include("xs.indexOf(x, index)");
      expect(source, file).to.include("xs = xs.slice(index)");
    }
  });

  it("postgres.js treats a hot standby as never read-write and survives a connection lost mid-transaction (patches/postgres+3.4.9.patch)", () => {
    const entry = fileURLToPath(import.meta.resolve("postgres"));
    const root = path.join(entry.slice(0, entry.lastIndexOf(`${path.sep}node_modules${path.sep}postgres${path.sep}`)), "node_modules", "postgres");
    for (const file of ["src/connection.js", "cjs/src/connection.js"]) {
      const source = readFileSync(path.join(root, file), "utf8");
      expect(source, file).to.include("(x === 'read-write' && (xs.default_transaction_read_only === 'on' || xs.in_hot_standby === 'on'))");
      // A connection lost mid-transaction fails its queries instead of crashing the process.
      expect(source, file).to.include("return queryError(q, Errors.connection('CONNECTION_CLOSED', options)), true");
      expect(source, file).to.include("chunk = nextWriteTimer = null");
    }
  });

  it("postgres.js hands a query to the connection that went idle last, so one call at a time meets a warm backend (patches/postgres+3.4.9.patch)", () => {
    const entry = fileURLToPath(import.meta.resolve("postgres"));
    const root = path.join(entry.slice(0, entry.lastIndexOf(`${path.sep}node_modules${path.sep}postgres${path.sep}`)), "node_modules", "postgres");
    for (const file of ["src/index.js", "cjs/src/index.js"]) {
      expect(readFileSync(path.join(root, file), "utf8"), file).to.include("return go(open.pop(), query)");
    }
  });
});
