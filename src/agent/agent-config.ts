// The agent's declarative configuration (agent.yaml), read with the `yaml`
// library and validated entirely at start: every error names the file, the
// line and the field (`agent.yaml:7: outputs[0].format: …`), unknown keys are
// refused (a typo must not silently do nothing), and nothing is fetched or
// written until the whole file is valid.

import { readFile } from "node:fs/promises";
import { isMap, LineCounter, parseDocument, type Document } from "yaml";
import { parseDuration } from "../config/config.js";
import { parseSpiffeId } from "../identity/spiffe-id.js";
import { parseEndpointSocket } from "../workload-api/endpoint-socket.js";
import { parseTemplate } from "./output-format.js";

/** The labels an output may follow (SecretLabel without UNSPECIFIED). */
const AGENT_LABELS = ["current", "pending", "previous"];

export type OutputFormat = "env" | "json" | "value" | "template";
export const OUTPUT_FORMATS: readonly OutputFormat[] = ["env", "json", "value", "template"];

export type ChangeAction =
  | { readonly kind: "signal"; readonly signal: NodeJS.Signals; readonly pidFile: string | undefined }
  | { readonly kind: "command"; readonly command: readonly string[]; readonly timeoutMs: number };

export interface OutputConfig {
  /** "outputs[0]", for messages. */
  readonly name: string;
  readonly path: string;
  /** Which version: a label ("current" when neither is given) or a number. */
  readonly label: string | undefined;
  readonly version: number | undefined;
  /** Undefined only for env outputs under `spike agent exec`. */
  readonly file: string | undefined;
  readonly format: OutputFormat;
  readonly key: string | undefined;
  readonly template: string | undefined;
  readonly mode: number;
  readonly owner: string | undefined;
  readonly group: string | undefined;
  readonly onChange: ChangeAction | undefined;
}

export interface AgentConfig {
  readonly addresses: readonly string[];
  readonly serverId: string | undefined;
  readonly svid: { readonly socket: string; readonly spiffeId: string | undefined } | { readonly cert: string; readonly key: string; readonly bundle: string };
  readonly healthListen: string | undefined;
  /** Follow WatchSecrets (default); false polls every pollIntervalMs. */
  readonly watch: boolean;
  /** Polling mode, or when the server refuses the watch: how often every output is re-read. */
  readonly pollIntervalMs: number;
  /** Watch mode: the safety-net full resync. */
  readonly resyncIntervalMs: number;
  readonly debounceMs: number;
  readonly outputs: readonly OutputConfig[];
}

export class AgentConfigError extends Error {
  override readonly name = "AgentConfigError";
}

const SIGNALS = ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT", "SIGWINCH"] as const;

export interface LoadOptions {
  /** `spike agent exec`: env outputs go to the child's environment and need no file. */
  readonly exec?: boolean;
  /** SPIFFE_ENDPOINT_SOCKET, used when the file has no svid section. */
  readonly defaultSocket?: string;
}

export async function loadAgentConfig(file: string, options: LoadOptions = {}): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new AgentConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseAgentConfig(text, file, options);
}

export function parseAgentConfig(text: string, file: string, options: LoadOptions = {}): AgentConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    throw new AgentConfigError(`${file}:${lines.linePos(e.pos[0]).line}: ${e.message.split("\n")[0]}`);
  }
  return new Reader(doc, lines, file).agent(options);
}

type Path = readonly (string | number)[];

/** Reads typed values out of the document, failing with the line and dotted field name. */
class Reader {
  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
    private readonly file: string,
  ) {}

  agent(options: LoadOptions): AgentConfig {
    this.keys([], ["nexus", "svid", "health", "watch", "poll_interval", "resync_interval", "debounce", "outputs"], ["nexus", "outputs"]);
    this.keys(["nexus"], ["addr", "server_id"], ["addr"]);
    const addr = this.value(["nexus", "addr"]);
    const addresses = (Array.isArray(addr) ? addr : [addr]).map((a, i) => {
      if (typeof a !== "string" || !/^[^\s,]+:\d{1,5}$/.test(a.trim())) this.fail(Array.isArray(addr) ? ["nexus", "addr", i] : ["nexus", "addr"], `"${String(a)}" is not host:port`);
      return a.trim();
    });
    const serverId = this.optionalString(["nexus", "server_id"]);
    if (serverId !== undefined) this.check(["nexus", "server_id"], () => parseSpiffeId(serverId));
    const healthListen = this.has(["health"]) ? (this.keys(["health"], ["listen"], ["listen"]), this.string(["health", "listen"])) : undefined;
    if (healthListen !== undefined && !/^[^\s]+:\d{1,5}$/.test(healthListen)) this.fail(["health", "listen"], `"${healthListen}" is not host:port`);
    const outputsValue = this.value(["outputs"]);
    if (!Array.isArray(outputsValue) || outputsValue.length === 0) this.fail(["outputs"], "needs at least one output");
    const outputs = outputsValue.map((_, i) => this.output(i, options));
    const files = new Map<string, string>();
    for (const o of outputs) {
      if (o.file === undefined) continue;
      const other = files.get(o.file);
      if (other !== undefined) this.fail(["outputs", Number(o.name.slice(8, -1)), "file"], `${o.file} is also the file of ${other}`);
      files.set(o.file, o.name);
    }
    return {
      addresses,
      serverId,
      svid: this.svid(options.defaultSocket),
      healthListen,
      watch: this.boolean(["watch"], true),
      pollIntervalMs: this.duration(["poll_interval"], "10s"),
      resyncIntervalMs: this.duration(["resync_interval"], "5m"),
      debounceMs: this.duration(["debounce"], "500ms"),
      outputs,
    };
  }

  private svid(defaultSocket: string | undefined): AgentConfig["svid"] {
    if (!this.has(["svid"])) {
      if (defaultSocket) return { socket: this.checkSocket(["svid"], defaultSocket), spiffeId: undefined };
      this.fail([], "svid is required: { socket: unix:///… } or { cert, key, bundle } (or set SPIFFE_ENDPOINT_SOCKET)");
    }
    this.keys(["svid"], ["socket", "spiffe_id", "cert", "key", "bundle"], []);
    const socket = this.optionalString(["svid", "socket"]);
    const files = (["cert", "key", "bundle"] as const).filter((k) => this.has(["svid", k]));
    if (socket !== undefined) {
      if (files.length > 0) this.fail(["svid", files[0]], `svid.socket and svid.${files.join(", svid.")} are both set: take the SVID from the Workload API or from files, not both`);
      const spiffeId = this.optionalString(["svid", "spiffe_id"]);
      if (spiffeId !== undefined) this.check(["svid", "spiffe_id"], () => parseSpiffeId(spiffeId));
      return { socket: this.checkSocket(["svid", "socket"], socket), spiffeId };
    }
    if (files.length !== 3) this.fail(["svid"], "needs socket, or all three of cert, key and bundle");
    return { cert: this.string(["svid", "cert"]), key: this.string(["svid", "key"]), bundle: this.string(["svid", "bundle"]) };
  }

  private output(i: number, options: LoadOptions): OutputConfig {
    const at = (k: string): Path => ["outputs", i, k];
    this.keys(["outputs", i], ["path", "label", "version", "file", "format", "key", "template", "mode", "owner", "group", "on_change"], ["path", "format"]);
    const path = this.string(at("path"));
    if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(path)) this.fail(at("path"), `"${path}" is not a secret path like apps/demo/db`);
    const format = this.string(at("format")) as OutputFormat;
    if (!OUTPUT_FORMATS.includes(format)) this.fail(at("format"), `"${format}" is not one of ${OUTPUT_FORMATS.join(", ")}`);
    const label = this.optionalString(at("label"))?.toLowerCase();
    if (label !== undefined && !AGENT_LABELS.includes(label)) this.fail(at("label"), `"${label}" is not one of ${AGENT_LABELS.join(", ")}`);
    let version: number | undefined;
    if (this.has(at("version"))) {
      const v = this.value(at("version"));
      if (typeof v !== "number" || !Number.isInteger(v) || v < 1) this.fail(at("version"), "is a version number (1, 2, …)");
      if (label !== undefined) this.fail(at("version"), "give label or version, not both");
      version = v as number;
    }
    const file = this.optionalString(at("file"));
    if (file === undefined && !(options.exec && format === "env")) {
      this.fail(["outputs", i], options.exec ? "file is required (only env outputs go to the environment)" : "file is required (env outputs without a file need `spike agent exec`)");
    }
    if (file !== undefined && !file.startsWith("/")) this.fail(at("file"), `"${file}" must be an absolute path`);
    const key = this.optionalString(at("key"));
    if (format === "value" && key === undefined) this.fail(["outputs", i], "key is required for format value: which key's value to write");
    if (format !== "value" && key !== undefined) this.fail(at("key"), "only format value takes a key");
    const template = this.optionalString(at("template"));
    if (format === "template") {
      if (template === undefined) this.fail(["outputs", i], "template is required for format template");
      this.check(at("template"), () => parseTemplate(template!));
    } else if (template !== undefined) this.fail(at("template"), "only format template takes a template");
    const modeText = this.has(at("mode")) ? String(this.value(at("mode"))) : "0600";
    if (!/^0?[0-7]{3}$/.test(modeText)) this.fail(at("mode"), `"${modeText}" is not an octal file mode like "0600"`);
    return {
      name: `outputs[${i}]`,
      path,
      label: version === undefined ? (label ?? "current") : undefined,
      version,
      file,
      format,
      key,
      template,
      mode: parseInt(modeText, 8),
      owner: this.optionalIdentity(at("owner")),
      group: this.optionalIdentity(at("group")),
      onChange: this.has(at("on_change")) ? this.onChange(["outputs", i, "on_change"]) : undefined,
    };
  }

  private onChange(at: Path): ChangeAction {
    this.keys(at, ["signal", "pid_file", "command", "timeout"], []);
    if (this.has([...at, "command"])) {
      if (this.has([...at, "signal"]) || this.has([...at, "pid_file"])) this.fail([...at, "command"], "give signal (with pid_file) or command, not both");
      const command = this.value([...at, "command"]);
      if (!Array.isArray(command) || command.length === 0 || command.some((c) => typeof c !== "string")) {
        this.fail([...at, "command"], 'is a list of strings, e.g. ["/usr/local/bin/reload", "--graceful"]');
      }
      return { kind: "command", command: command as string[], timeoutMs: this.duration([...at, "timeout"], "10s") };
    }
    if (this.has([...at, "timeout"])) this.fail([...at, "timeout"], "only a command takes a timeout");
    const signal = (this.optionalString([...at, "signal"]) ?? "SIGHUP") as NodeJS.Signals;
    if (!(SIGNALS as readonly string[]).includes(signal)) this.fail([...at, "signal"], `"${signal}" is not one of ${SIGNALS.join(", ")}`);
    return { kind: "signal", signal, pidFile: this.optionalString([...at, "pid_file"]) };
  }

  private optionalIdentity(at: Path): string | undefined {
    if (!this.has(at)) return undefined;
    const v = this.value(at);
    if (typeof v === "number" && Number.isInteger(v) && v >= 0) return String(v);
    if (typeof v === "string" && /^[a-z_][a-z0-9_-]*$|^\d+$/i.test(v)) return v;
    return this.fail(at, "is a user or group name, or a numeric id");
  }

  private checkSocket(at: Path, socket: string): string {
    return this.check(at, () => parseEndpointSocket(socket)).address;
  }

  private duration(at: Path, fallback: string): number {
    const raw = this.has(at) ? this.value(at) : fallback;
    if (typeof raw !== "string") this.fail(at, "is a duration like 500ms, 10s or 5m");
    const ms = this.check(at, () => parseDuration(raw as string));
    if (ms <= 0) this.fail(at, "must be more than zero");
    return ms;
  }

  private boolean(at: Path, fallback: boolean): boolean {
    if (!this.has(at)) return fallback;
    const v = this.value(at);
    if (typeof v !== "boolean") this.fail(at, `"${String(v)}" is not true or false`);
    return v as boolean;
  }

  private keys(at: Path, allowed: readonly string[], required: readonly string[]): void {
    const node = at.length === 0 ? this.doc.contents : this.doc.getIn(at, true);
    if (!isMap(node)) this.fail(at, "must be a mapping (key: value)");
    for (const item of node.items as Array<{ key: { value?: unknown; range?: [number, number, number] } | null }>) {
      const key = String(item.key?.value);
      if (!allowed.includes(key)) {
        const line = item.key?.range ? this.lines.linePos(item.key.range[0]).line : this.lineOf(at);
        throw new AgentConfigError(`${this.file}:${line}: ${fieldName([...at, key])}: unknown field (allowed here: ${allowed.join(", ")})`);
      }
    }
    for (const key of required) if (!this.has([...at, key])) this.fail(at, `${key} is required`);
  }

  private has(at: Path): boolean {
    return this.doc.hasIn(at) && this.doc.getIn(at) !== null;
  }

  private value(at: Path): unknown {
    const v = this.doc.getIn(at);
    return v !== null && typeof v === "object" && "toJSON" in v ? (v as { toJSON(): unknown }).toJSON() : v;
  }

  private string(at: Path): string {
    const v = this.value(at);
    if (typeof v !== "string" || v.trim() === "") this.fail(at, v === undefined ? "is required" : "must be a non-empty string");
    return (v as string).trim();
  }

  private optionalString(at: Path): string | undefined {
    return this.has(at) ? this.string(at) : undefined;
  }

  private check<T>(at: Path, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      return this.fail(at, (err as Error).message);
    }
  }

  private lineOf(at: Path): number {
    for (let n = at.length; n >= 0; n--) {
      const node = n === 0 ? this.doc.contents : this.doc.getIn(at.slice(0, n), true);
      const range = (node as { range?: [number, number, number] } | null)?.range;
      if (range) return this.lines.linePos(range[0]).line;
    }
    return 1;
  }

  private fail(at: Path, message: string): never {
    const field = fieldName(at);
    throw new AgentConfigError(`${this.file}:${this.lineOf(at)}: ${field === "" ? "" : `${field}: `}${message}`);
  }
}

/** ["outputs", 0, "format"] -> "outputs[0].format". */
function fieldName(at: Path): string {
  return at.reduce<string>((s, p) => (typeof p === "number" ? `${s}[${p}]` : s === "" ? p : `${s}.${p}`), "");
}
