// The admin password, never from the command line (shell history, `ps`):
// prompted without echo on a terminal, else read from --password-file or, with
// --password-stdin, from standard input. One trailing newline is dropped, as
// `docker login --password-stdin` does.

import { readFile } from "node:fs/promises";
import password from "@inquirer/password";
import { CliError } from "./cli-error.js";

export interface PasswordOptions {
  readonly passwordFile?: string;
  readonly passwordStdin?: boolean;
}

export interface PasswordRequest {
  readonly prompt: string;
  /** Ask twice on a terminal and insist both match (for a new password). */
  readonly confirm?: boolean;
}

export async function readPassword(options: PasswordOptions, request: PasswordRequest): Promise<string> {
  if (options.passwordFile !== undefined && options.passwordStdin) throw CliError.usage("give --password-file or --password-stdin, not both");
  let value: string;
  if (options.passwordFile !== undefined) {
    try {
      value = dropNewline(await readFile(options.passwordFile, "utf8"));
    } catch (err) {
      throw CliError.usage(`cannot read --password-file ${options.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  } else if (options.passwordStdin) {
    value = dropNewline(await readStdin());
  } else if (process.stdin.isTTY) {
    value = await prompt(request);
  } else {
    throw CliError.usage("no terminal to prompt for the password on: use --password-file FILE or --password-stdin");
  }
  if (value === "") throw CliError.usage("the password is empty");
  return value;
}

/** Prompts on the terminal without echo; stderr, so that stdout carries only data. */
export async function prompt(request: PasswordRequest): Promise<string> {
  // No mask and no reveal key: nothing of the password is shown, not even its length.
  const context = { output: process.stderr, clearPromptOnDone: false };
  const first = await password({ message: request.prompt, mask: false, toggleMask: false }, context);
  if (request.confirm) {
    const second = await password({ message: "Repeat it:", mask: false, toggleMask: false }, context);
    if (first !== second) throw CliError.usage("the two passwords differ");
  }
  return first;
}

/** All of standard input as UTF-8. */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

function dropNewline(text: string): string {
  return text.replace(/\r?\n$/, "");
}
