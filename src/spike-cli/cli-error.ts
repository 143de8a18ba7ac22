// The one error type of the command line: a line a person can act on and the
// exit code a script branches on. main.ts prints it; nothing else prints errors.

import { EXIT, type ExitCode } from "./exit-codes.js";

export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
  }

  static usage(message: string): CliError {
    return new CliError(message, EXIT.usage);
  }
}
