// The three ways the agent runs, wired together: as a sidecar (sync, then
// follow WatchSecrets or poll until SIGTERM, /healthz), once (render everything and exit: the
// init-container mode) and exec (the workload as a child with the env outputs
// in its environment). Exit codes are a contract: 0 rendered, 2 invalid
// configuration, 3 some output could not be rendered (each one named).

import { createNexusClient, type ReplicatedNexusClient } from "../client/replicated-client.js";
import { svidFromFiles, svidFromWorkloadApi, type SvidProvider } from "../client/svid-provider.js";
import type { Logger } from "../log/logger.js";
import { AgentConfigError, loadAgentConfig, type AgentConfig } from "./agent-config.js";
import { ChangeActions } from "./change-action.js";
import { ExecSupervisor } from "./exec-supervisor.js";
import { startHealthEndpoint } from "./health-endpoint.js";
import { SecretAgent } from "./secret-agent.js";

export const AGENT_EXIT = { ok: 0, invalidConfig: 2, notRendered: 3 } as const;

export interface AgentRun {
  readonly configFile: string;
  readonly once?: boolean;
  /** `spike agent exec -- command args…`. */
  readonly exec?: readonly string[];
  readonly logger: Logger;
  /** Where one-line failures go (stderr). */
  readonly report: (line: string) => void;
  readonly env?: NodeJS.ProcessEnv;
}

export async function runAgent(run: AgentRun): Promise<number> {
  const { logger, report } = run;
  let config: AgentConfig;
  try {
    config = await loadAgentConfig(run.configFile, { exec: run.exec !== undefined, defaultSocket: (run.env ?? process.env).SPIFFE_ENDPOINT_SOCKET });
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err;
    report(`invalid configuration: ${err.message}`);
    return AGENT_EXIT.invalidConfig;
  }

  let client: ReplicatedNexusClient;
  try {
    client = createNexusClient({ addresses: config.addresses, serverId: config.serverId, svid: await openSvid(config, logger) });
  } catch (err) {
    report(`no SVID: ${(err as Error).message}; not rendered: ${config.outputs.map((o) => o.name).join(", ")}`);
    return AGENT_EXIT.notRendered;
  }

  let supervisor: ExecSupervisor | undefined;
  const actions = new ChangeActions(logger, config.debounceMs, () => supervisor?.pid);
  let restartTimer: NodeJS.Timeout | undefined;
  const agent = new SecretAgent(config, client, logger, actions, {
    exec: run.exec !== undefined,
    onEnvironmentChange: (env) => {
      if (!supervisor) return;
      // Debounced like every other action: a burst of versions costs one restart.
      clearTimeout(restartTimer);
      restartTimer = setTimeout(() => void supervisor!.restart(env), config.debounceMs);
    },
  });

  try {
    const first = await agent.syncOnce();
    const failed = first.filter((s) => !s.current);
    if (run.once) {
      await actions.flush();
      for (const s of failed) report(`not rendered: ${s.name} (${s.path}${s.file ? ` -> ${s.file}` : ""}): ${s.error}`);
      return failed.length === 0 ? AGENT_EXIT.ok : AGENT_EXIT.notRendered;
    }
    if (run.exec !== undefined && failed.some((s) => s.file === undefined)) {
      // The workload must not start without the environment it was promised.
      for (const s of failed) report(`not rendered: ${s.name} (${s.path}): ${s.error}`);
      return AGENT_EXIT.notRendered;
    }
    const health = config.healthListen ? await startHealthEndpoint(config.healthListen, agent) : undefined;
    if (health) logger.info("health endpoint listening", { listen: config.healthListen, port: health.port });
    if (run.exec !== undefined) {
      supervisor = new ExecSupervisor(run.exec, logger);
      supervisor.start(agent.environment);
    }
    agent.start();
    logger.info("agent running", config.watch ? { outputs: config.outputs.length, watch: true, resyncIntervalMs: config.resyncIntervalMs } : { outputs: config.outputs.length, watch: false, pollIntervalMs: config.pollIntervalMs });

    const signalled = new Promise<number>((resolve) => {
      const onSignal = (signal: NodeJS.Signals) => {
        if (supervisor) supervisor.forward(signal);
        else resolve(AGENT_EXIT.ok);
      };
      process.once("SIGTERM", onSignal);
      process.once("SIGINT", onSignal);
    });
    const code = await Promise.race([signalled, supervisor?.exited ?? new Promise<number>(() => {})]);
    clearTimeout(restartTimer);
    actions.cancel();
    await agent.stop();
    await health?.close();
    return code;
  } finally {
    client.close();
  }
}

function openSvid(config: AgentConfig, logger: Logger): Promise<SvidProvider> {
  if ("socket" in config.svid) return svidFromWorkloadApi(config.svid.socket, { spiffeId: config.svid.spiffeId, logger });
  return Promise.resolve(svidFromFiles(config.svid));
}
