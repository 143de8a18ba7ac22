// The real `nexus` command in a child process, for tests of what only a
// process shows: exit codes, messages on stderr, locks and ports held by
// another process, and what a SIGKILL leaves behind.

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const NEXUS_BIN = path.join(REPO, "bin/nexus.js");

/** The environment minus any NEXUS_* setting of the machine running the tests. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NEXUS_")));
  return { ...env, ...extra };
}

export interface NexusProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  stdout(): string;
  stderr(): string;
  /** The msg fields of the JSON log lines written so far. */
  logMessages(): string[];
  /** Resolves once a log line with this msg appears; rejects if the process exits first or after `timeoutMs`. */
  waitForLog(msg: string, timeoutMs?: number): Promise<void>;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited(timeoutMs?: number): Promise<number | string>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | string>;
  /** SIGKILL (nothing is cleaned up), then waits for the exit. */
  kill(): Promise<void>;
}

/** `stdout`: a file descriptor for the child's stdout instead of a pipe the test reads. */
export function startNexusProcess(args: readonly string[], env: NodeJS.ProcessEnv, opts: { stdout?: number } = {}): NexusProcess {
  const child = spawn(process.execPath, [NEXUS_BIN, ...args], { cwd: REPO, env, stdio: ["ignore", opts.stdout ?? "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (err += chunk));
  const exit = once(child, "exit").then(([code, signal]) => (code ?? signal) as number | string);
  const logMessages = () =>
    err
      .split("\n")
      .filter((line) => line.startsWith("{") && line.endsWith("}"))
      .map((line) => String((JSON.parse(line) as { msg?: unknown }).msg));
  const within = <T>(promise: Promise<T>, timeoutMs: number, what: string) =>
    Promise.race([
      promise,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} within ${timeoutMs} ms; stderr:\n${err}`)), timeoutMs).unref()),
    ]);
  return {
    child,
    pid: child.pid!,
    stdout: () => out,
    stderr: () => err,
    logMessages,
    waitForLog: (msg, timeoutMs = 45_000) =>
      within(
        new Promise<void>((resolve, reject) => {
          const check = () => {
            if (logMessages().includes(msg)) {
              child.stderr!.off("data", check);
              resolve();
            }
          };
          child.stderr!.on("data", check);
          check();
          void exit.then((code) => reject(new Error(`nexus exited (${code}) before logging "${msg}"; stderr:\n${err}`)));
        }),
        timeoutMs,
        `no "${msg}" log line`,
      ),
    exited: (timeoutMs = 45_000) => within(exit, timeoutMs, "nexus did not exit"),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return within(exit, 20_000, "nexus did not stop on SIGTERM");
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exit;
    },
  };
}
