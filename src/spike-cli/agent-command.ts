// `spike agent`: the sidecar that keeps secrets in files (or, with `exec`, in
// a child's environment) fresh. The work lives in src/agent/; this file only
// maps the command line onto it. Its exit codes are the agent's own
// (0, 2 invalid config, 3 not rendered), documented in docs/sidecar.md.

import { Command, Option } from "commander";
import { createLogger, isLogLevel } from "../log/logger.js";
import { runAgent } from "../agent/run-agent.js";
import { CliError } from "./cli-error.js";
import type { ExitCode } from "./exit-codes.js";
import { example } from "./command-context.js";

/** Carries the agent's exit code through main(): 0 is success, anything else an exit without a message. */
class AgentExit extends CliError {}

function logLevel(): ReturnType<typeof createLogger> {
  const level = process.env.SPIKE_AGENT_LOG_LEVEL ?? "info";
  return createLogger(isLogLevel(level) ? level : "info");
}

async function run(options: { config: string; once?: boolean }, exec?: readonly string[]): Promise<void> {
  const code = await runAgent({
    configFile: options.config,
    once: options.once,
    exec,
    logger: logLevel(),
    report: (line) => process.stderr.write(`spike agent: ${line}\n`),
  });
  if (code !== 0) throw new AgentExit("", code as ExitCode);
}

export function agentCommand(): Command {
  const agent = new Command("agent")
    .description("keep secrets in files fresh for a workload (a sidecar, or --once in an init container)")
    // Not commander-mandatory: that would also demand it before `exec`, which takes its own.
    .addOption(new Option("--config <file>", "the agent's YAML configuration (required)"))
    .option("--once", "render every output once and exit (0 rendered, 2 invalid config, 3 some output not rendered)")
    .action((options: { config?: string; once?: boolean }) => {
      if (!options.config) throw CliError.usage("spike agent needs --config <file> (see spike agent --help)");
      return run({ config: options.config, once: options.once });
    });
  example(agent, "spike agent --config /etc/spike/agent.yaml", "spike agent --config agent.yaml --once");

  // --config is the parent's option (commander lets it stand after `exec` too).
  const exec = new Command("exec")
    .description("run a command with the env outputs in its environment, restarting it when they change (--config as for spike agent)")
    .argument("<command...>", "the command and its arguments, after --")
    .action((command: string[], _options: unknown, self: Command) => {
      const { config } = self.optsWithGlobals<{ config?: string }>();
      if (!config) throw CliError.usage("spike agent exec needs --config <file> (see spike agent exec --help)");
      return run({ config }, command);
    });
  example(exec, "spike agent exec --config agent.yaml -- node server.js");
  agent.addCommand(exec);
  return agent;
}

export { AgentExit };
