// Shared fast-check settings for the property suites: a fixed seed so a run is
// reproducible (a failure prints the seed and path to replay it), and bounded
// runs so every suite finishes in well under a second. FC_SEED explores other
// seeds locally: FC_SEED=123 make unit.

import type { Parameters as FcParameters } from "fast-check";
import { NexusError } from "../../../src/errors/nexus-error.js";

const seed = process.env.FC_SEED === undefined ? 0x5eed_2026 : Number(process.env.FC_SEED);

export function runs<T>(numRuns = 300): FcParameters<T> {
  return { seed, numRuns };
}

/** Whether `fn` throws, and if it does, only a NexusError with this code and reason. */
export function throwsOnly(fn: () => unknown, code: string, reason: string): boolean {
  try {
    fn();
    return false;
  } catch (err) {
    if (err instanceof NexusError && err.code === code && err.reason === reason) return true;
    throw err;
  }
}
