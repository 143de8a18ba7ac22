// A full dump of a test database, to search for what must never be stored in
// the clear. pg_dump when the installed one can talk to the server (pg_dump
// refuses a server of a newer major version); otherwise every table of the
// public schema through COPY ... TO STDOUT, which holds the same row data.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import postgres from "postgres";

const run = promisify(execFile);

export interface DatabaseDump {
  /** "pg_dump <version>" or "COPY of <n> tables" — tests name it in their report. */
  readonly tool: string;
  readonly content: Buffer;
}

const PG_DUMP_CANDIDATES = ["pg_dump", "/usr/bin/pg_dump", "/usr/lib/postgresql/18/bin/pg_dump"];

export async function dumpDatabase(url: string): Promise<DatabaseDump> {
  for (const bin of PG_DUMP_CANDIDATES) {
    try {
      const { stdout } = await run(bin, ["--dbname", url, "--no-owner", "--no-privileges"], { encoding: "buffer", maxBuffer: 256 * 1024 * 1024 });
      const { stdout: version } = await run(bin, ["--version"]);
      return { tool: version.trim(), content: stdout };
    } catch {
      // Not installed, or too old for the server: try the next one, then COPY.
    }
  }
  return copyEveryTable(url);
}

async function copyEveryTable(url: string): Promise<DatabaseDump> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const tables = await sql`SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`;
    const chunks: Buffer[] = [];
    for (const { tablename } of tables) {
      chunks.push(Buffer.from(`-- table ${tablename as string}\n`));
      const quoted = `"${(tablename as string).replace(/"/g, '""')}"`;
      const stream = await sql.unsafe(`COPY (SELECT * FROM public.${quoted}) TO STDOUT`).readable();
      for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
    }
    return { tool: `COPY of ${tables.length} tables in the public schema`, content: Buffer.concat(chunks) };
  } finally {
    await sql.end();
  }
}
