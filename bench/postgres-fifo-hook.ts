// A module-loader hook (registered by server-patches.ts for the A/B patch
// "postgres-fifo") that serves postgres.js's src/index.js as it was before
// patches/postgres+3.4.9.patch made the pool LIFO: an idle connection is
// taken from the front of the open queue, so one call at a time rotates
// through every pooled connection. Used as B = "before" against A = the build.

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

interface LoadResult {
  format?: string;
  source?: string | ArrayBuffer | Uint8Array;
  shortCircuit?: boolean;
}

export async function load(url: string, context: { format?: string }, nextLoad: (url: string, context: object) => Promise<LoadResult>): Promise<LoadResult> {
  if (url.endsWith("/node_modules/postgres/src/index.js")) {
    const source = await readFile(fileURLToPath(url), "utf8");
    if (!source.includes("return go(open.pop(), query)")) throw new Error("postgres-fifo: the LIFO patch is not in postgres/src/index.js");
    return { format: "module", source: source.replace("return go(open.pop(), query)", "return go(open.shift(), query)"), shortCircuit: true };
  }
  return nextLoad(url, context);
}
