// The plain-HTTP listener Prometheus scrapes (NEXUS_METRICS_LISTEN): GET
// /metrics and nothing else. It carries no secrets and no caller strings, so
// it needs no TLS; keep it on a private address or behind a NetworkPolicy.

import http from "node:http";
import type { Socket } from "node:net";
import type { ListenAddress } from "../config/config.js";
import type { Logger } from "../log/logger.js";
import { listen } from "../transport/listen.js";
import type { NexusMetrics } from "./nexus-metrics.js";

export interface MetricsListener {
  readonly port: number;
  close(): Promise<void>;
}

export async function startMetricsListener(metrics: NexusMetrics, address: ListenAddress, logger: Logger): Promise<MetricsListener> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: metrics are at /metrics\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("use GET\n");
      return;
    }
    metrics.render().then(
      (body) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(req.method === "HEAD" ? undefined : body),
      (err: unknown) => {
        logger.warn("metrics not rendered", { err });
        res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n");
      },
    );
  });
  server.keepAliveTimeout = 65_000;
  const connections = new Set<Socket>();
  server.on("connection", (s) => {
    connections.add(s);
    s.once("close", () => connections.delete(s));
  });
  const port = await listen(server, address);
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        connections.forEach((s) => s.destroy());
      }),
  };
}
