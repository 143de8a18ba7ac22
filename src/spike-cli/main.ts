// The `spike` command: every Nexus operation for people and scripts, over gRPC
// with mTLS and the caller's own SVID. Builds the command tree from the group
// files, parses, runs, and turns every failure into one line on stderr and a
// documented exit code (exit-codes.ts).

import { Command, CommanderError, Option } from "commander";
import { NEXUS_VERSION } from "../version.js";
import { CliError } from "./cli-error.js";
import { agentCommand, AgentExit } from "./agent-command.js";
import { completionCommand } from "./completion-command.js";
import { DEFAULT_ADDRESS } from "./connection.js";
import { EXIT, EXIT_CODES_HELP } from "./exit-codes.js";
import { operatorCommands } from "./operator-commands.js";
import { policyCommands } from "./policy-commands.js";
import { secretCommands } from "./secret-commands.js";

const ENVIRONMENT_HELP = `Connection (flag, or environment variable):
  --addr SPIKE_NEXUS_ADDR            Nexus gRPC address (default ${DEFAULT_ADDRESS})
  --server-id SPIKE_NEXUS_SERVER_ID  the server's SPIFFE ID (default spiffe://<your trust domain>/spike/nexus);
                                     any other server is refused, whatever its host name
  --svid-dir SPIKE_SVID_DIR          folder with svid.pem, svid_key.pem, svid_bundle.pem (spiffe-helper)
  --cert/--key/--bundle              SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE: your SVID, its key, the trust bundle
  --spiffe-endpoint-socket SPIFFE_ENDPOINT_SOCKET
                                     take your SVID from the SPIFFE Workload API (unix:///path or tcp://IP:port)
  --spiffe-id                        which of the Workload API's SVIDs to use (default: the first)
  --addr accepts several replicas, comma-separated: reads move on to the next when one is away`;

export function buildProgram(): Command {
  const program = new Command("spike")
    .description("the Nexus command line: secrets, policies and operations over gRPC with your SPIFFE SVID")
    // Only -V: "--version" belongs to `secret get --version N`, and program options are recognised after subcommands too.
    .version(NEXUS_VERSION, "-V", "print the version")
    .exitOverride()
    .showHelpAfterError("(add --help for usage)")
    .addOption(new Option("--addr <host:port>", "Nexus gRPC address").env("SPIKE_NEXUS_ADDR"))
    .addOption(new Option("--server-id <spiffe-id>", "the SPIFFE ID the server must present").env("SPIKE_NEXUS_SERVER_ID"))
    .addOption(new Option("--cert <file>", "your X.509-SVID (PEM chain)").env("SPIKE_CERT"))
    .addOption(new Option("--key <file>", "your SVID's private key (PEM)").env("SPIKE_KEY"))
    .addOption(new Option("--bundle <file>", "the trust bundle (PEM)").env("SPIKE_BUNDLE"))
    .addOption(new Option("--svid-dir <dir>", "folder with spiffe-helper's svid.pem, svid_key.pem, svid_bundle.pem").env("SPIKE_SVID_DIR"))
    .addOption(new Option("--spiffe-endpoint-socket <address>", "take your SVID from the SPIFFE Workload API (unix:///path or tcp://IP:port)").env("SPIFFE_ENDPOINT_SOCKET"))
    .addOption(new Option("--spiffe-id <spiffe-id>", "which of the Workload API's SVIDs to use (default: the first)"))
    .addOption(new Option("--token-file <file>", "admin token (spike operator token create) instead of the login session").env("SPIKE_TOKEN_FILE"))
    .addOption(new Option("-o, --output <format>", "text or json (proto3 JSON, one document per command)").choices(["text", "json"]).default("text"))
    .addHelpText("after", `\n${ENVIRONMENT_HELP}\n\n${EXIT_CODES_HELP}\n\nExample:\n  $ spike --svid-dir /run/spire/svid secret get apps/billing/db --field password\n`);
  program.addCommand(secretCommands());
  program.addCommand(policyCommands());
  program.addCommand(operatorCommands());
  program.addCommand(agentCommand());
  program.addCommand(completionCommand(() => program));
  // Subcommands inherit exitOverride only when created after it was set; set it everywhere.
  const everywhere = (c: Command) => {
    c.exitOverride();
    c.showHelpAfterError("(add --help for usage)");
    c.commands.forEach(everywhere);
  };
  everywhere(program);
  return program;
}

/** Runs `spike` with these arguments (without node and the script) and returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  if (argv.length === 1 && argv[0] === "--version") {
    process.stdout.write(NEXUS_VERSION + "\n");
    return EXIT.ok;
  }
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed the help, version or usage error itself.
      return err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    // The agent has reported its failures itself, one line each.
    if (err instanceof AgentExit) return err.exitCode;
    if (err instanceof CliError) {
      process.stderr.write(`spike: ${err.message}\n`);
      return err.exitCode;
    }
    // A prompt cancelled with Ctrl-C.
    if (err instanceof Error && err.name === "ExitPromptError") {
      process.stderr.write("spike: cancelled\n");
      return EXIT.usage;
    }
    process.stderr.write(`spike: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}\n`);
    return EXIT.other;
  }
}
