// The agent's /healthz on health.listen (plain HTTP, meant for the kubelet on
// loopback or the pod network): 200 with the last sync time when every output
// is current, 503 naming the outputs that are not. Paths and reasons only: a
// status never carries a value.

import http from "node:http";
import type { AddressInfo } from "node:net";
import type { SecretAgent } from "./secret-agent.js";

export interface HealthEndpoint {
  readonly port: number;
  close(): Promise<void>;
}

export async function startHealthEndpoint(listen: string, agent: SecretAgent): Promise<HealthEndpoint> {
  const colon = listen.lastIndexOf(":");
  const host = listen.slice(0, colon).replace(/^\[|\]$/g, "");
  const port = Number(listen.slice(colon + 1));
  const server = http.createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/healthz") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    const outputs = agent.outputs;
    const syncs = outputs.map((o) => o.lastSyncAt?.getTime()).filter((t): t is number => t !== undefined);
    const body = {
      status: agent.healthy ? "ok" : "unhealthy",
      // The oldest of the outputs' last successful syncs: everything is at least this fresh.
      last_sync: syncs.length === outputs.length && syncs.length > 0 ? new Date(Math.min(...syncs)).toISOString() : null,
      outputs: outputs.map((o) => ({ output: o.name, path: o.path, version: o.version ?? null, current: o.current, ...(o.error ? { error: o.error } : {}) })),
    };
    res.writeHead(agent.healthy ? 200 : 503, { "content-type": "application/json" }).end(JSON.stringify(body) + "\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
