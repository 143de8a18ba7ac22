#!/usr/bin/env node
// Entry point of the `nexus` command; the code lives in src/cli/main.ts (built into dist/).
import { main } from "../dist/src/cli/main.js";

const code = await main(process.argv.slice(2));
process.exitCode = code;
// A library timer must not keep a stopped server alive.
setTimeout(() => process.exit(code), 2000).unref();
