// What happens when an output changed: a signal to the process named by a pid
// file (default SIGHUP), or a command run with a timeout. Debounced per
// action: a burst of changes (a rotation touching several outputs, or several
// versions in a row) triggers the action once, after the burst is over.

import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import type { Logger } from "../log/logger.js";
import type { ChangeAction } from "./agent-config.js";

export class ChangeActions {
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; action: ChangeAction; outputs: Set<string> }>();

  constructor(
    private readonly logger: Logger,
    private readonly debounceMs: number,
    /** Signals without a pid file go here (`spike agent exec`: the child). */
    private readonly defaultTarget: () => number | undefined = () => undefined,
  ) {}

  /** Schedules the action; triggers within the debounce window are merged into one run. */
  trigger(action: ChangeAction, output: string): void {
    const id = JSON.stringify(action);
    const entry = this.pending.get(id);
    if (entry) {
      clearTimeout(entry.timer);
      entry.outputs.add(output);
    }
    const outputs = entry?.outputs ?? new Set([output]);
    const timer = setTimeout(() => {
      this.pending.delete(id);
      void this.run(action, [...outputs]);
    }, this.debounceMs);
    this.pending.set(id, { timer, action, outputs });
  }

  /** Runs what is pending now (used before --once exits and on shutdown). */
  async flush(): Promise<void> {
    const entries = [...this.pending.values()];
    this.pending.clear();
    for (const e of entries) clearTimeout(e.timer);
    await Promise.all(entries.map((e) => this.run(e.action, [...e.outputs])));
  }

  cancel(): void {
    for (const e of this.pending.values()) clearTimeout(e.timer);
    this.pending.clear();
  }

  private async run(action: ChangeAction, outputs: string[]): Promise<void> {
    try {
      if (action.kind === "signal") await this.signal(action.signal, action.pidFile, outputs);
      else await this.command(action.command, action.timeoutMs, outputs);
    } catch (err) {
      this.logger.warn("on_change action failed", { outputs, reason: (err as Error).message });
    }
  }

  private async signal(signal: NodeJS.Signals, pidFile: string | undefined, outputs: string[]): Promise<void> {
    let pid: number | undefined;
    if (pidFile !== undefined) {
      const text = (await readFile(pidFile, "utf8")).trim();
      if (!/^\d+$/.test(text)) throw new Error(`${pidFile} does not hold a process id`);
      pid = Number(text);
    } else pid = this.defaultTarget();
    if (pid === undefined) throw new Error("no pid_file and no child process to signal");
    process.kill(pid, signal);
    this.logger.info("signal sent", { signal, pid, outputs });
  }

  private command(command: readonly string[], timeoutMs: number, outputs: string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      // The command gets the agent's environment, never secret values; what it
      // prints is its own and goes to the agent's stdout and stderr, not into our log lines.
      const child = spawn(command[0], command.slice(1), { stdio: ["ignore", "inherit", "inherit"] });
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      child.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        if (code === 0) {
          this.logger.info("on_change command ran", { command: command[0], outputs });
          resolve();
        } else reject(new Error(`${command[0]} ${signal ? `was killed (${signal}, timeout ${timeoutMs} ms)` : `exited with ${code}`}`));
      });
    });
  }
}
