// The agent's work: fetch every output's secret version, render it, write the
// file atomically when its content changed (or, under `spike agent exec`,
// hand env outputs to the child), and run the output's on_change action.
// A failed output keeps its last good file and is retried with backoff and
// jitter; the others carry on. Logs name the output, path, version and file,
// never a value.
//
// Changes are found by following WatchSecrets (client.watch(): reconnects
// and resumes from its cursor by itself): an event on an output's path
// re-reads that output at once. A full resync runs when the watch opens (so a
// change between the first sync and the stream is not missed), when its
// cursor expired, when the stream breaks (so a server that went away shows as
// unhealthy) and every resync_interval as the safety net. With `watch: false`,
// or when the server refuses the watch for good (it needs LIST as well as
// READ), the agent polls every poll_interval instead.

import { SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { StreamFailure, type CallFailure, type NexusClient } from "../client/nexus-client.js";
import { WatchEventType, type WatchItem, type WatchOptions } from "../client/secret-watch.js";
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

/** The client the agent needs: calls, and watch() when it follows WatchSecrets. */
export interface AgentClient extends NexusClient {
  watch(prefix: string, options?: WatchOptions): AsyncIterable<WatchItem>;
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
  private following: Promise<void> | undefined;
  /** Outputs an event asked to re-read before the next full resync ("all": a full resync now). */
  private readonly dirty = new Set<string>();
  private wake: (() => void) | undefined;
  /** Whether WatchSecrets drives the syncs (false: polling every poll_interval). */
  private watching: boolean;

  constructor(
    private readonly config: AgentConfig,
    private readonly client: AgentClient,
    private readonly logger: Logger,
    private readonly actions: ChangeActions,
    private readonly options: SecretAgentOptions = {},
  ) {
    this.watching = config.watch;
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
    return this.syncOutputs(this.config.outputs);
  }

  private async syncOutputs(outputs: readonly OutputConfig[]): Promise<OutputStatus[]> {
    const before = JSON.stringify(this.environment);
    await Promise.all(outputs.map((o) => this.syncOutput(o)));
    const env = this.environment;
    if (this.options.onEnvironmentChange && JSON.stringify(env) !== before && this.environments.size > 0) this.options.onEnvironmentChange(env);
    return this.outputs;
  }

  /**
   * Syncs now, then follows WatchSecrets (or polls), with a full resync every
   * resync_interval (poll_interval when polling); failing outputs are retried
   * sooner, with backoff and jitter.
   */
  start(): void {
    if (this.loop) return;
    if (this.watching) this.following = this.follow();
    this.loop = (async () => {
      let failures = 0;
      let full = true;
      let fullAt = 0;
      while (!this.stopping.signal.aborted) {
        const interval = this.watching ? this.config.resyncIntervalMs : this.config.pollIntervalMs;
        if (full) {
          this.dirty.clear();
          await this.syncOnce();
          fullAt = Date.now() + interval;
        } else {
          const names = new Set(this.dirty);
          this.dirty.clear();
          await this.syncOutputs(this.config.outputs.filter((o) => names.has(o.name)));
        }
        // A failed output (after a full sync or an event's) is retried by a full sync soon, not at the next interval.
        failures = this.healthy ? 0 : failures + 1;
        if (failures > 0) fullAt = Math.min(fullAt, Date.now() + Math.min(interval, backoffDelay({ initialMs: 500, maxMs: 30_000 }, failures - 1)));
        full = await this.waitForWork(fullAt);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.wake?.();
    await this.loop;
    await this.following;
  }

  /** Asks the sync loop to re-read these outputs now ("all": a full resync). */
  private request(names: "all" | readonly string[]): void {
    if (names === "all") this.dirty.add("all");
    else names.forEach((n) => this.dirty.add(n));
    this.wake?.();
  }

  /** Waits for a request or until `fullAt`; true when a full resync is due. */
  private async waitForWork(fullAt: number): Promise<boolean> {
    if (this.dirty.size === 0 && !this.stopping.signal.aborted) {
      // A wake-up (a request or stop) cuts the sleep short and clears its timer.
      const woken = new AbortController();
      this.wake = () => woken.abort();
      await sleep(Math.max(0, fullAt - Date.now()), woken.signal);
      this.wake = undefined;
    }
    return this.dirty.has("all") || Date.now() >= fullAt;
  }

  /** Follows WatchSecrets under the outputs' common prefix until stopped; falls back to polling if the server refuses it for good. */
  private async follow(): Promise<void> {
    const byPath = new Map<string, string[]>();
    for (const o of this.config.outputs) byPath.set(o.path, [...(byPath.get(o.path) ?? []), o.name]);
    const prefix = commonPrefix([...byPath.keys()]);
    const onDisconnect = (failure: CallFailure, retryInMs: number) => {
      if (failure.code === "OK") return; // the stream's lifetime: it resumes at once
      this.logger.warn("watch interrupted; resuming from its cursor", { code: failure.code, reason: failure.reason, retryInMs });
      // A server that went away must show as unhealthy, and the resync's backoff brings the files back when it returns.
      if (this.healthy) this.request("all");
    };
    const onConnect = (resumed: boolean) => {
      this.logger.info("watch connected", { prefix, resumed });
      // A fresh stream: re-read everything once, so a change from before it opened is not missed.
      if (!resumed) this.request("all");
    };
    try {
      for await (const item of this.client.watch(prefix, { signal: this.stopping.signal, onDisconnect, onConnect })) {
        if (item.kind === "cursor_expired") {
          this.logger.warn("watch cursor expired; re-reading every output", { reason: item.message });
          this.request("all");
          continue;
        }
        const names = item.event.type === WatchEventType.HEARTBEAT ? undefined : byPath.get(item.event.path);
        if (names === undefined) continue;
        this.logger.debug("watch event", { path: item.event.path, type: WatchEventType[item.event.type], versions: item.event.versions });
        this.request(names);
      }
    } catch (err) {
      // Whatever ended the watch, the files must stay fresh: fall back to polling rather than crash.
      const detail = err instanceof StreamFailure ? { code: err.code, reason: err.reason, message: err.message } : { message: (err as Error).message };
      this.logger.warn("WatchSecrets refused; polling instead", { ...detail, pollIntervalMs: this.config.pollIntervalMs });
      this.watching = false;
      this.request("all");
    }
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

/** The longest prefix all paths share: one stream covers every output. */
function commonPrefix(paths: readonly string[]): string {
  let prefix = paths[0] ?? "";
  for (const p of paths) while (!p.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix;
}
