// What a command's action gets: its options merged with the global ones, the
// output, and a connection that is closed when the action ends. Every verb is a
// commander Command registered by its group's file (secret-commands.ts, …), so
// a verb whose RPC lands later is one more `.command()` there: help and shell
// completion pick it up from the same tree.

import type { Command } from "commander";
import { connect, outputFor, type Connection, type GlobalOptions } from "./connection.js";
import type { Output } from "./output.js";

export interface CommandContext<O> {
  readonly opts: O & GlobalOptions;
  readonly out: Output;
  readonly conn: Connection;
}

/** Runs `fn` with a connection to Nexus made from the command's options. */
export async function withConnection<O>(command: Command, fn: (context: CommandContext<O>) => Promise<void>): Promise<void> {
  const opts = command.optsWithGlobals<O & GlobalOptions>();
  const out = outputFor(opts);
  const conn = await connect(opts);
  try {
    await fn({ opts, out, conn });
  } finally {
    conn.close();
  }
}

/** Appends an example section to a command's --help. */
export function example(command: Command, ...lines: string[]): Command {
  return command.addHelpText("after", `\nExample:\n${lines.map((l) => `  $ ${l}`).join("\n")}\n`);
}
