// `spike completion bash|zsh`: a completion script generated from the command
// tree itself, so a verb added to a group completes without touching this file.
// zsh uses the bash script through bashcompinit, which ships with zsh.

import { Command } from "commander";
import { CliError } from "./cli-error.js";
import { example } from "./command-context.js";

interface Node {
  readonly path: string;
  readonly words: string[];
}

/** Every command path ("", "secret", "secret metadata", …) with the words that may follow it. */
function completionTable(root: Command): Node[] {
  const nodes: Node[] = [];
  const visit = (command: Command, path: string, inherited: string[]) => {
    const own = command.options.map((o) => o.long).filter((l): l is string => l !== undefined);
    const options = [...inherited, ...own, "--help"];
    nodes.push({ path, words: [...command.commands.map((c) => c.name()), ...options] });
    for (const child of command.commands) visit(child, path === "" ? child.name() : `${path} ${child.name()}`, path === "" ? own : inherited);
  };
  visit(root, "", []);
  return nodes;
}

export function bashCompletion(root: Command): string {
  const nodes = completionTable(root);
  const cases = nodes.map((n) => `    "${n.path}") words="${[...new Set(n.words)].join(" ")}" ;;`).join("\n");
  const known = nodes.filter((n) => n.path !== "").map((n) => `"${n.path}"`).join("|");
  return `# spike completion for bash; load with: source <(spike completion bash)
_spike() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w candidate words
  for w in "\${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    [[ $w == -* ]] && continue
    candidate="\${path:+$path }$w"
    case "$candidate" in
      ${known}) path="$candidate" ;;
    esac
  done
  case "$path" in
${cases}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _spike spike
`;
}

export function completionCommand(root: () => Command): Command {
  return example(
    new Command("completion")
      .description("print a shell completion script for bash or zsh")
      .argument("<shell>", "bash or zsh")
      .action((shell: string) => {
        const bash = bashCompletion(root());
        if (shell === "bash") process.stdout.write(bash);
        else if (shell === "zsh") process.stdout.write(`# spike completion for zsh; load with: source <(spike completion zsh)\nautoload -U +X bashcompinit && bashcompinit\n${bash}`);
        else throw CliError.usage(`completion ${shell}: say bash or zsh`);
      }),
    "spike completion zsh > ~/.zsh/spike-completion.zsh",
    "source <(spike completion bash)",
  );
}
