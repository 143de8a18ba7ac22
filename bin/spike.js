#!/usr/bin/env node
// Entry point of the `spike` command line; the code lives in src/spike-cli/main.ts (built into dist/).
import { main } from "../dist/src/spike-cli/main.js";

const code = await main(process.argv.slice(2));
process.exitCode = code;
// An open gRPC channel or prompt must not keep a finished command waiting.
setTimeout(() => process.exit(code), 500).unref();
