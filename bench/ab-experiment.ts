// A/B runs: the same scenarios against two server processes on one database,
// alternating A B B A A B …, so that machine drift (other jobs on a shared
// 2-core box) hits both alike. B differs by what BENCH_AB_* says: bench-only
// patches emulating a proposed src/ change (server-patches.ts), another pool
// size, other Node flags. Each server gets its own half of the write secrets,
// so neither sees its cached latest versions go stale under the other's puts.
//
// The metrics cost (issue 17: within 5 % server CPU per GetSecret) is one such
// experiment: BENCH_AB_METRICS=1 gives B a metrics listener (NEXUS_METRICS_LISTEN)
// scraped every BENCH_AB_SCRAPE_MS (default 1000, far more often than the usual
// 15 s, so the rendering cost shows), and A none — `make bench-ab-metrics`.

import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { BenchPki } from "./bench-pki.js";
import type { BenchConfig } from "./bench-config.js";
import { LatencyHistogram } from "./latency-histogram.js";
import { operatorClients, seedSecrets } from "./nexus-setup.js";
import { writePath } from "./load-protocol.js";
import { medianOf } from "./report.js";
import { runScenario, type ScenarioResult, type ScenarioSpec, type Target } from "./scenario-runner.js";
import { readProbe, spawnServer, waitForHealth, type ServerOptions } from "./server-process.js";
import { freePort } from "../src/store/embedded-postgres.js";

export interface AbSettings {
  readonly label: string;
  readonly patches: string[];
  readonly poolMax?: number;
  readonly nodeOptions?: string;
  /** Query parameters for B's NEXUS_DATABASE_URL; postgres.js sends unknown ones as PostgreSQL startup settings. */
  readonly databaseParams?: string;
  /** Extra environment for B, e.g. MALLOC_ARENA_MAX=2. */
  readonly env: Record<string, string>;
  readonly scenarios: string[];
  /** B runs with a metrics listener, scraped every this many ms; undefined: no metrics on either side. */
  readonly metricsScrapeMs?: number;
}

export function abSettings(env: NodeJS.ProcessEnv = process.env): AbSettings {
  const patches = (env.BENCH_AB_PATCHES ?? "").split(",").filter(Boolean);
  const poolMax = env.BENCH_AB_POOL_MAX ? Number(env.BENCH_AB_POOL_MAX) : undefined;
  const nodeOptions = env.BENCH_AB_NODE_OPTIONS || undefined;
  const databaseParams = env.BENCH_AB_DATABASE_PARAMS || undefined;
  const extra = Object.fromEntries((env.BENCH_AB_ENV ?? "").split(",").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
  const metricsScrapeMs = env.BENCH_AB_METRICS === "1" ? Number(env.BENCH_AB_SCRAPE_MS ?? 1000) : undefined;
  const label =
    env.BENCH_AB_LABEL ||
    (metricsScrapeMs !== undefined ? "metrics" : "") ||
    [...patches, poolMax ? `pool${poolMax}` : "", nodeOptions ? "node-options" : "", databaseParams ?? "", ...Object.keys(extra)].filter(Boolean).join("+") ||
    "same";
  return { label, patches, poolMax, nodeOptions, databaseParams, env: extra, scenarios: (env.BENCH_AB_SCENARIOS ?? (metricsScrapeMs !== undefined ? "get@64" : "health@64,get@64,put@64")).split(","), metricsScrapeMs };
}

export interface AbContext {
  readonly config: BenchConfig;
  readonly pki: BenchPki;
  readonly base: ServerOptions;
  /** The target as seeded; A and B get their own address, pid and write paths. */
  readonly target: Target;
  readonly work: string;
  readonly passwordFile: string;
  readonly specs: ScenarioSpec[];
  readonly resultsDir: string;
  readonly log: (line: string) => void;
}

export async function abExperiment(ctx: AbContext, ab: AbSettings): Promise<string> {
  const preload = pathToFileURL(fileURLToPath(new URL("./server-patches.js", import.meta.url))).href;
  const nodeOptions = [ab.patches.length ? `--import ${preload}` : "", ab.nodeOptions ?? ""].filter(Boolean).join(" ") || undefined;
  // Both fresh, both unsealed from the password file, both warmed the same way.
  const metricsPort = ab.metricsScrapeMs === undefined ? undefined : await freePort();
  const metricsEnv: Record<string, string> = metricsPort === undefined ? {} : { NEXUS_METRICS_LISTEN: `127.0.0.1:${metricsPort}` };
  const a = await spawnServer({ ...ctx.base, adminPasswordFile: ctx.passwordFile, probeFile: path.join(ctx.work, "ab-a.json") });
  const b = await spawnServer({
    ...ctx.base,
    poolMax: ab.poolMax ?? ctx.base.poolMax,
    adminPasswordFile: ctx.passwordFile,
    probeFile: path.join(ctx.work, "ab-b.json"),
    nodeOptions,
    databaseUrl: ab.databaseParams ? `${ctx.base.databaseUrl}${ctx.base.databaseUrl.includes("?") ? "&" : "?"}${ab.databaseParams}` : ctx.base.databaseUrl,
    extraEnv: { ...ab.env, ...metricsEnv, ...(ab.patches.length ? { BENCH_PATCHES: ab.patches.join(",") } : {}) },
  });
  // Prometheus, for B: the scrape's own CPU lands on B's server process, as in production.
  let scrapes = 0;
  const scraper =
    metricsPort === undefined
      ? undefined
      : setInterval(() => {
          void fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text()).then(() => scrapes++, () => {});
        }, ab.metricsScrapeMs);
  try {
    await waitForHealth(a, "SERVING");
    await waitForHealth(b, "SERVING");
    const half = Math.floor(ctx.config.writeSecrets / 2);
    const targetA: Target = { ...ctx.target, address: a.address, serverPid: a.pid, data: { ...ctx.target.data, writeSecrets: half, writeOffset: 0 } };
    const targetB: Target = { ...targetA, address: b.address, serverPid: b.pid, data: { ...targetA.data, writeOffset: half } };
    // Each learns its half of the write secrets (latest versions, data keys) with one put per path.
    for (const [name, server, offset] of [["A", a, 0], ["B", b, half]] as const) {
      ctx.log(`${name}: warming ${half} write secrets`);
      const clients = operatorClients(server.address, ctx.pki);
      await seedSecrets({ clients, token: "", close: () => {} }, half, (i) => writePath(offset + i), ctx.config.valueBytes);
      clients.forEach((c) => c.close());
    }

    const results: Record<"A" | "B", ScenarioResult[]> = { A: [], B: [] };
    const specs = ab.scenarios.map((name) => {
      const spec = ctx.specs.find((s) => s.name === name);
      if (!spec) throw new Error(`BENCH_AB_SCENARIOS: no scenario "${name}" (have ${ctx.specs.map((s) => s.name).join(", ")})`);
      return spec;
    });
    for (let round = 0; round < ctx.config.rounds; round++) {
      for (const spec of specs) {
        const order: Array<"A" | "B"> = round % 2 === 0 ? ["A", "B"] : ["B", "A"];
        for (const side of order) {
          const r = await runScenario(spec, side === "A" ? targetA : targetB);
          results[side].push(r);
          ctx.log(`round ${round + 1} ${side} ${spec.name.padEnd(9)} ${r.rps.toFixed(0).padStart(6)} req/s  p99 ${r.p99.toFixed(2)} ms  server ${((1000 * r.serverCpuSeconds) / Math.max(1, r.count)).toFixed(3)} s/1k  rss ${r.maxRssMb.toFixed(0)} MB  errors ${r.errors}`);
        }
      }
    }
    const memory = (file: string) => {
      const m = readProbe(file)?.max;
      return m ? `max RSS ${m.rss} MB, V8 heap ${m.heapTotal} MB (${m.heapUsed} MB used), external ${m.external} MB (array buffers ${m.arrayBuffers} MB)` : "not sampled";
    };
    const md =
      abMarkdown(ctx, ab, specs, results) +
      `Memory over the whole run (process.memoryUsage() maxima): A ${memory(path.join(ctx.work, "ab-a.json"))}; B ${memory(path.join(ctx.work, "ab-b.json"))}.\n`;
    await mkdir(ctx.resultsDir, { recursive: true });
    await writeFile(path.join(ctx.resultsDir, `ab-${ab.label.replace(/[^A-Za-z0-9+._-]/g, "_")}.md`), md);
    return md;
  } finally {
    clearInterval(scraper);
    if (scraper !== undefined) ctx.log(`B's /metrics scraped ${scrapes} times`);
    await Promise.all([a.stop(), b.stop()]);
  }
}

function abMarkdown(ctx: AbContext, ab: AbSettings, specs: ScenarioSpec[], results: Record<"A" | "B", ScenarioResult[]>): string {
  const f = (v: number, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : "–");
  const pct = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && a !== 0 ? `${b >= a ? "+" : ""}${((100 * (b - a)) / a).toFixed(1)} %` : "–");
  const lines = [
    `## A/B: ${ab.label}`,
    "",
    `A = the server as built (pool ${ctx.base.poolMax}); B = the same build with ${[
      ab.patches.length ? `bench/server-patches.ts: ${ab.patches.join(", ")}` : "",
      ab.poolMax ? `NEXUS_DB_POOL_MAX=${ab.poolMax}` : "",
      ab.nodeOptions ? `NODE_OPTIONS="${ab.nodeOptions}"` : "",
      ab.databaseParams ? `NEXUS_DATABASE_URL=…?${ab.databaseParams}` : "",
      ...Object.entries(ab.env).map(([k, v]) => `${k}=${v}`),
      ab.metricsScrapeMs !== undefined ? `NEXUS_METRICS_LISTEN, scraped every ${ab.metricsScrapeMs} ms (A: metrics off)` : "",
    ]
      .filter(Boolean)
      .join("; ") || "nothing changed (A/A: the noise floor)"}. Same database, alternating A B / B A for ${ctx.config.rounds} rounds × ${ctx.config.durationMs / 1000} s per scenario (${ctx.config.warmupMs / 1000} s warm-up). Throughput is the median of rounds; CPU per 1k requests and p99 are pooled.`,
    "",
    "| scenario | A req/s | B req/s | Δ req/s | A server CPU s / 1k | B server CPU s / 1k | Δ CPU | A p99 ms | B p99 ms | A max RSS | B max RSS |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const spec of specs) {
    const side = (s: "A" | "B") => {
      const rs = results[s].filter((r) => r.name === spec.name);
      const h = new LatencyHistogram();
      rs.forEach((r) => h.add(r.histogram));
      const count = rs.reduce((a, r) => a + r.count, 0);
      return {
        rps: medianOf(rs.map((r) => r.rps)),
        cpu: (1000 * rs.reduce((a, r) => a + r.serverCpuSeconds, 0)) / Math.max(1, count),
        p99: h.percentile(99),
        rss: Math.max(...rs.map((r) => r.maxRssMb)),
        perRound: rs.map((r) => r.rps.toFixed(0)).join("/"),
      };
    };
    const a = side("A");
    const b = side("B");
    lines.push(
      `| ${spec.name} | ${f(a.rps, 0)} (${a.perRound}) | ${f(b.rps, 0)} (${b.perRound}) | ${pct(a.rps, b.rps)} | ${f(a.cpu, 3)} | ${f(b.cpu, 3)} | ${pct(a.cpu, b.cpu)} | ${f(a.p99)} | ${f(b.p99)} | ${f(a.rss, 0)} | ${f(b.rss, 0)} |`,
    );
  }
  lines.push("");
  return lines.join("\n");
}
