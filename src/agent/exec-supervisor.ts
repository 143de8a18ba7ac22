// `spike agent exec`: the workload as the agent's child, started with the env
// outputs in its environment (as Vault Agent's exec mode and envconsul do).
// An environment cannot change under a running process, so a change restarts
// the child: SIGTERM, up to a grace period, then SIGKILL, then the same
// command with the new environment. When the child exits on its own, the
// agent exits with its code; SIGTERM and SIGINT to the agent go to the child.

import { spawn, type ChildProcess } from "node:child_process";
import type { Logger } from "../log/logger.js";

export class ExecSupervisor {
  private child: ChildProcess | undefined;
  private restarting = false;
  private exitResolve!: (code: number) => void;
  /** Resolves with the exit code the agent should exit with. */
  readonly exited = new Promise<number>((resolve) => (this.exitResolve = resolve));

  constructor(
    private readonly command: readonly string[],
    private readonly logger: Logger,
    private readonly graceMs = 10_000,
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(env: Record<string, string>): void {
    const child = spawn(this.command[0], this.command.slice(1), { stdio: "inherit", env: { ...process.env, ...env } });
    this.child = child;
    child.once("error", (err) => {
      this.logger.error("cannot start the command", { command: this.command[0], reason: err.message });
      this.exitResolve(127);
    });
    child.once("exit", (code, signal) => {
      if (this.restarting || this.child !== child) return;
      this.logger.info("command exited", { command: this.command[0], code, signal });
      this.exitResolve(code ?? 128 + (signal ? signalNumber(signal) : 0));
    });
    this.logger.info("command started", { command: this.command[0], pid: child.pid });
  }

  /** Stops the child and starts it again with `env`. */
  async restart(env: Record<string, string>): Promise<void> {
    this.restarting = true;
    try {
      await this.stopChild();
    } finally {
      this.restarting = false;
    }
    this.logger.info("restarting the command with the new environment", { command: this.command[0] });
    this.start(env);
  }

  /** Forwards a signal to the child (SIGTERM/SIGINT to the agent). */
  forward(signal: NodeJS.Signals): void {
    this.child?.kill(signal);
  }

  private async stopChild(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), this.graceMs);
    await gone;
    clearTimeout(timer);
  }
}

function signalNumber(signal: NodeJS.Signals): number {
  return ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[signal] ?? 0;
}
