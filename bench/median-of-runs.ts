// The issue's targets are judged on the median of several whole runs (the
// machines are shared and noisy): `make bench-3` runs `make bench` three
// times, keeps each report in results/runs/, and this writes the median of
// every ratio, target and scenario figure across them.
//
//   node dist/bench/median-of-runs.js OUT.md RUN1.json RUN2.json …

import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { medianOf, type Report } from "./report.js";

type Summary = Pick<Report, "generatedAt" | "source" | "ratios" | "targets" | "scenarios">;

/** Whether `value` meets a goal written as "≥ 0.8", "≤ 20 ms", "≤ 150 MB". */
export function meets(goal: string, value: number): boolean | undefined {
  const m = /^([≥≤])\s*([\d.]+)/.exec(goal);
  if (!m || !Number.isFinite(value)) return undefined;
  const bound = Number(m[2]);
  return m[1] === "≥" ? value >= bound : value <= bound;
}

export function medianMarkdown(runs: readonly Summary[], names: readonly string[]): string {
  const f = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : "–");
  const lines: string[] = [];
  lines.push(`## Median of ${runs.length} runs of \`make bench\``, "");
  lines.push(
    `Runs: ${runs.map((r, i) => `${names[i]} (${r.generatedAt.slice(0, 16).replace("T", " ")} UTC, source ${r.source.commit}${r.source.srcModified ? " + uncommitted src/" : ""})`).join("; ")}. ` +
      "Each run is three interleaved rounds; a run's figure is the median of its rounds, and the value below is the median of the runs' figures.",
    "",
  );
  lines.push("| target | issue | goal | per run | median | result |", "|---|---:|---|---|---:|---|");
  for (const t of runs[0].targets) {
    const values = runs.map((r) => r.targets.find((x) => x.name === t.name)?.value ?? NaN);
    const median = medianOf(values);
    const digits = t.unit === "×" || t.unit === "ms" ? 2 : t.unit === "MB" ? 0 : 1;
    const pass = meets(t.goal, median);
    lines.push(`| ${t.name} | ${t.issue ?? 5} | ${t.goal} | ${values.map((v) => f(v, digits)).join(", ")} | ${f(median, digits)} ${t.unit} | ${pass === undefined ? "not measured" : pass ? "pass" : "**FAIL**"} |`);
  }
  lines.push("", "| ratio | per run | median |", "|---|---|---:|");
  for (const r of runs[0].ratios) {
    const values = runs.map((run) => run.ratios.find((x) => x.name === r.name)?.median ?? NaN);
    lines.push(`| ${r.name} | ${values.map((v) => f(v)).join(", ")} | ${f(medianOf(values))} |`);
  }
  lines.push("", "| scenario | req/s per run | median req/s | median p50 ms | median p99 ms | median server CPU s / 1k |", "|---|---|---:|---:|---:|---:|");
  for (const s of runs[0].scenarios) {
    const all = runs.map((run) => run.scenarios.find((x) => x.name === s.name)).filter((x) => x !== undefined);
    const med = (pick: (x: (typeof all)[number]) => number) => medianOf(all.map(pick));
    lines.push(
      `| ${s.name} | ${all.map((x) => Math.round(x.rps).toLocaleString("en-US")).join(", ")} | ${Math.round(med((x) => x.rps)).toLocaleString("en-US")} | ${f(med((x) => x.p50))} | ${f(med((x) => x.p99))} | ${f(med((x) => x.serverCpuPer1k), 3)} |`,
    );
  }
  return lines.join("\n") + "\n";
}

async function main(): Promise<void> {
  const [out, ...files] = process.argv.slice(2);
  if (out === undefined || files.length === 0) {
    process.stderr.write("usage: node dist/bench/median-of-runs.js OUT.md RUN.json…\n");
    process.exitCode = 2;
    return;
  }
  const runs = await Promise.all(files.map(async (f) => JSON.parse(await readFile(f, "utf8")) as Summary));
  const md = medianMarkdown(runs, files.map((f) => path.basename(f)));
  await writeFile(out, md);
  process.stdout.write(md);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
