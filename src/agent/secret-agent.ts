// The agent's work: fetch every output's secret version, render it, write the
// file atomically when its content changed (or, under `spike agent exec`,
// hand env outputs to the child), and run the output's on_change action.
// A failed output keeps its last good file and is retried with backoff and
// jitter; the others carry on. Logs name the output, path, version and file,
// never a value.
//
// Changes are found by polling every poll_interval. WatchSecrets (server
// streaming) will replace the wait between polls with a stream and keep
// polling as the safety-net resync.

import { SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../client/nexus-client.js";
import type { Logger } from "../log/logger.js";
import { backoffDelay, sleep } from "../timing/backoff.js";
import type { AgentConfig, OutputConfig } from "./agent-config.js";
import { fileHolds, writeFileAtomically } from "./atomic-file.js";
import type { ChangeActions } from "./change-action.js";
import { resolveGroup, resolveUser } from "./file-owner.js";
import { envVariables, render, type RenderSpec, type SecretVersion } from "./output-format.js";

export interface OutputStatus {
  readonly name: string;
  readonly path: string;
  readonly file: string | undefined;
  /** The version now in the file (or the child's environment). */
  readonly version: number | undefined;
  /** Whether the last attempt succeeded. */
  readonly current: boolean;
  readonly error: string | undefined;
  readonly lastSyncAt: Date | undefined;
}

export interface SecretAgentOptions {
  /** `spike agent exec`: env outputs without a file go to the child's environment. */
  readonly exec?: boolean;
  /** Called when the variables of the env outputs changed (exec mode). */
  readonly onEnvironmentChange?: (env: Record<string, string>) => void;
}

// The server resolves labels once it knows them (secret labels issue); until
// then only the current version can be asked for by label.

export class SecretAgent {
  private readonly statuses = new Map<string, OutputStatus>();
  private readonly environments = new Map<string, Record<string, string>>();
  private readonly stopping = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(
    private readonly config: AgentConfig,
    private readonly client: NexusClient,
    private readonly logger: Logger,
    private readonly actions: ChangeActions,
    private readonly options: SecretAgentOptions = {},
  ) {
    for (const o of config.outputs) {
      this.statuses.set(o.name, { name: o.name, path: o.path, file: o.file, version: undefined, current: false, error: "not synced yet", lastSyncAt: undefined });
    }
  }

  get outputs(): OutputStatus[] {
    return [...this.statuses.values()];
  }

  /** Every output rendered from its newest version at the last attempt. */
  get healthy(): boolean {
    return this.outputs.every((s) => s.current);
  }

  /** The variables of all env outputs, for the child of `spike agent exec`. */
  get environment(): Record<string, string> {
    return Object.assign({}, ...this.environments.values()) as Record<string, string>;
  }

  /** Renders every output once; resolves with their statuses. */
  async syncOnce(): Promise<OutputStatus[]> {
    const before = JSON.stringify(this.environment);
    await Promise.all(this.config.outputs.map((o) => this.syncOutput(o)));
    const env = this.environment;
    if (this.options.onEnvironmentChange && JSON.stringify(env) !== before && this.environments.size > 0) this.options.onEnvironmentChange(env);
    return this.outputs;
  }

  /** Syncs now, then every poll interval; failing outputs are retried sooner, with backoff and jitter. */
  start(): void {
    this.loop ??= (async () => {
      let failures = 0;
      while (!this.stopping.signal.aborted) {
        await this.syncOnce();
        failures = this.healthy ? 0 : failures + 1;
        const wait = failures === 0 ? this.config.pollIntervalMs : Math.min(this.config.pollIntervalMs, backoffDelay({ initialMs: 500, maxMs: 30_000 }, failures - 1));
        await sleep(wait, this.stopping.signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.loop;
  }

  private async syncOutput(o: OutputConfig): Promise<void> {
    const previous = this.statuses.get(o.name)!;
    const fail = (error: string) => {
      if (previous.error !== error) this.logger.warn("output not rendered; keeping the last good content", { output: o.name, path: o.path, file: o.file, reason: error });
      this.statuses.set(o.name, { ...previous, current: false, error });
    };
    let secret: SecretVersion;
    try {
      secret = await this.fetch(o);
    } catch (err) {
      return fail((err as Error).message);
    }
    let changed: boolean;
    try {
      changed = await this.deliver(o, secret);
    } catch (err) {
      return fail((err as Error).message);
    }
    if (previous.error !== undefined && previous.lastSyncAt !== undefined) this.logger.info("output recovered", { output: o.name, path: o.path });
    this.statuses.set(o.name, { ...previous, version: secret.version, current: true, error: undefined, lastSyncAt: new Date() });
    if (changed) {
      this.logger.info("output updated", { output: o.name, path: o.path, version: secret.version, file: o.file ?? "(environment)" });
      if (o.onChange) this.actions.trigger(o.onChange, o.name);
    }
  }

  private async fetch(o: OutputConfig): Promise<SecretVersion> {
    const label = o.label === "pending" ? SecretLabel.PENDING : o.label === "previous" ? SecretLabel.PREVIOUS : SecretLabel.UNSPECIFIED;
    const result = await this.client.call(SecretService.method.getSecret, { path: o.path, version: o.version ?? 0, label });
    if (result.code !== "OK") throw new Error(`GetSecret ${o.path}: ${result.code}${result.reason ? ` (${result.reason})` : ""}: ${result.message}`);
    const response = result.response!;
    return { path: o.path, version: response.version, data: response.data };
  }

  /** Writes the file (or takes the environment); returns whether anything changed. */
  private async deliver(o: OutputConfig, secret: SecretVersion): Promise<boolean> {
    if (o.file === undefined) {
      const env = envVariables(secret.data);
      const changed = JSON.stringify(this.environments.get(o.name)) !== JSON.stringify(env);
      this.environments.set(o.name, env);
      return changed;
    }
    const content = render(renderSpec(o), secret);
    if (await fileHolds(o.file, content, o.mode)) return false;
    const uid = o.owner === undefined ? undefined : await resolveUser(o.owner);
    const gid = o.group === undefined ? undefined : await resolveGroup(o.group);
    await writeFileAtomically(o.file, content, { mode: o.mode, uid, gid });
    return true;
  }
}

function renderSpec(o: OutputConfig): RenderSpec {
  switch (o.format) {
    case "value":
      return { format: "value", key: o.key! };
    case "template":
      return { format: "template", template: o.template! };
    default:
      return { format: o.format };
  }
}
