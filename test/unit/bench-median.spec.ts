// bench/median-of-runs.ts: the median across whole runs decides pass or fail,
// not any single run.

import { expect } from "chai";
import { medianMarkdown, meets } from "../../bench/median-of-runs.js";

type Run = Parameters<typeof medianMarkdown>[0][number];

function run(commit: string, getRatio: number, rssMb: number, getRps: number): Run {
  return {
    generatedAt: "2026-12-02T17:00:00.000Z",
    source: { commit, srcModified: false },
    ratios: [{ name: "GetSecret / Health throughput @64", perRound: [getRatio], median: getRatio }],
    targets: [
      { name: "GetSecret throughput ÷ Health @64", goal: "≥ 0.8", value: getRatio, unit: "×", pass: getRatio >= 0.8 },
      { name: "Server RSS under load (max)", goal: "≤ 150 MB", value: rssMb, unit: "MB", pass: rssMb <= 150 },
    ],
    scenarios: [{ name: "get@64", rps: getRps, p50: 10, p99: 50, serverCpuPer1k: 0.2 }],
  } as unknown as Run;
}

describe("bench: the median of several runs", () => {
  it("reads goals written as ≥ / ≤ a number, with or without a unit", () => {
    expect(meets("≥ 0.8", 0.8)).to.equal(true);
    expect(meets("≥ 0.8", 0.79)).to.equal(false);
    expect(meets("≤ 20 ms", 19.9)).to.equal(true);
    expect(meets("≤ 150 MB", 151)).to.equal(false);
    expect(meets("≤ 150 MB", NaN)).to.equal(undefined);
  });

  it("judges each target on the median of the runs, so one lucky or unlucky run decides nothing", () => {
    const md = medianMarkdown([run("a", 0.9, 400, 3000), run("b", 0.5, 140, 2000), run("c", 0.6, 145, 2100)], ["run-1.json", "run-2.json", "run-3.json"]);
    expect(md).to.contain("| GetSecret throughput ÷ Health @64 | 5 | ≥ 0.8 | 0.90, 0.50, 0.60 | 0.60 × | **FAIL** |");
    expect(md).to.contain("| Server RSS under load (max) | 5 | ≤ 150 MB | 400, 140, 145 | 145 MB | pass |");
    expect(md).to.contain("| GetSecret / Health throughput @64 | 0.90, 0.50, 0.60 | 0.60 |");
    expect(md).to.contain("| get@64 | 3,000, 2,000, 2,100 | 2,100 |");
  });
});
