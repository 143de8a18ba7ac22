#!/usr/bin/env node
// Entry point of the `spike` command line; the code lives in src/spike-cli/main.ts (built into dist/).
import { main } from "../dist/src/spike-cli/main.js";

// `spike secret list | head -1`: a reader that went away is not an error worth a stack trace.
process.stdout.on("error", (err) => process.exit(err.code === "EPIPE" ? 0 : 6));

const code = await main(process.argv.slice(2));
process.exitCode = code;
// An open gRPC channel or prompt must not keep a finished command waiting.
setTimeout(() => process.exit(code), 500).unref();
