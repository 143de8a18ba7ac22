// `spike agent` as users run it: `node bin/spike.js agent …` in its own
// process, with its JSON log lines on stderr collected for the test, and a
// YAML configuration written from an object.

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { stringify } from "yaml";
import { cleanEnv, REPO, SPIKE_BIN } from "./spike-cli.js";

export interface AgentProcess {
  readonly child: ChildProcess;
  stderr(): string;
  stdout(): string;
  /** The parsed JSON log lines so far. */
  logs(): Array<Record<string, unknown>>;
  exited(timeoutMs?: number): Promise<number | string>;
  stop(): Promise<number | string>;
}

export function startAgentProcess(args: readonly string[], env: Record<string, string | undefined> = {}): AgentProcess {
  const child = spawn(process.execPath, [SPIKE_BIN, "agent", ...args], { cwd: REPO, env: cleanEnv({ SPIKE_AGENT_LOG_LEVEL: "debug", ...env }), stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (c: string) => (out += c));
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (err += c));
  const exit = once(child, "exit").then(([code, signal]) => (code ?? signal) as number | string);
  const within = <T>(p: Promise<T>, ms: number) =>
    Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`spike agent did not exit within ${ms} ms; stderr:\n${err}`)), ms).unref())]);
  return {
    child,
    stderr: () => err,
    stdout: () => out,
    logs: () =>
      err
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    exited: (ms = 45_000) => within(exit, ms),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return within(exit, 20_000);
    },
  };
}

/** Writes an agent.yaml from an object; returns its path. */
export async function writeAgentConfig(file: string, config: Record<string, unknown>): Promise<string> {
  await writeFile(file, stringify(config));
  return file;
}
