// bench/report.ts: the ratios the targets are stated in, computed per
// round and taken as the median of rounds; pass/fail against each target; and
// the report a run writes (JSON) as median-of-runs reads it back. All from
// synthetic runs, so each figure is known in advance.

import { expect } from "chai";
import type { BenchConfig } from "../../bench/bench-config.js";
import type { PgbenchResult } from "../../bench/database-floor.js";
import { LatencyHistogram } from "../../bench/latency-histogram.js";
import { medianMarkdown } from "../../bench/median-of-runs.js";
import { buildReport, markdown, medianOf, pool, ratios, targets, type BenchRun, type Report, type Round } from "../../bench/report.js";
import type { ScenarioResult } from "../../bench/scenario-runner.js";

const CONFIG = { mode: "full", inFlight: 64, listPaths: 1_000_000, rounds: 3, durationMs: 1000, warmupMs: 0, poolMax: 16 } as BenchConfig;

interface Figures {
  readonly rps: number;
  readonly p50?: number;
  readonly p99?: number;
  readonly durationMs?: number;
  readonly maxRssMb?: number;
}

function scenario(name: string, { rps, p50 = 1, p99 = 2, durationMs = 1000, maxRssMb = 100 }: Figures): ScenarioResult {
  const [kind, at] = name.split("@");
  // Pooled percentiles come from the histograms: 98 calls at p50, 2 at p99.
  const h = new LatencyHistogram();
  for (let i = 0; i < 100; i++) h.record(i < 98 ? p50 : p99);
  return {
    name, kind: kind as ScenarioResult["kind"], inFlight: Number(at), connections: 1, durationMs,
    count: (rps * durationMs) / 1000, errors: 0, rps, p50, p99, p999: p99, mean: p50,
    histogram: Array.from(h.counts), operations: {}, errorCodes: {},
    serverCpuSeconds: 1, postgresCpuSeconds: 1, clientCpuSeconds: 1, machineBusyPercent: 50, maxRssMb, shortPages: 0,
  };
}

function pgbench(name: string, tps: number, p50 = 0.1, failed?: string): PgbenchResult {
  return { name, command: "pgbench", clients: 16, durationS: 1, tps, transactions: tps, p50, p99: p50, p999: p50, extra: {}, failed };
}

/** A round where every throughput ratio and latency ratio is the given one. */
function round(r: { get?: number; put?: number; p99?: number; p50At1?: number; listP99?: number; healthRps?: number; rssMb?: number; floor?: PgbenchResult[] }): Round {
  const health = r.healthRps ?? 1000;
  const scenarios = [
    scenario("health@64", { rps: health, p99: 10 }),
    scenario("health@1", { rps: 500, p50: 0.2 }),
    scenario("get@1", { rps: 300, p50: 0.2 * (r.p50At1 ?? 1.5) }),
    scenario("list@1", { rps: 100, p99: r.listP99 ?? 10 }),
    scenario("mix@64", { rps: 800, maxRssMb: r.rssMb ?? 100 }),
  ];
  if (r.get !== undefined) scenarios.push(scenario("get@64", { rps: 1000 * r.get, p99: 10 * (r.p99 ?? 1) }));
  if (r.put !== undefined) scenarios.push(scenario("put@64", { rps: 1000 * r.put }));
  return { scenarios, pgbench: r.floor ?? [pgbench("get@1", 0, 0.1), pgbench("get", 2000), pgbench("put", 1000)] };
}

function run(rounds: Round[], extra: Partial<BenchRun> = {}): BenchRun {
  return {
    startedAt: "2026-12-03T00:00:00.000Z", config: CONFIG, database: {}, statementsCaptured: false, setupSeconds: {}, idleRssMb: 80,
    rounds, captures: [], plans: [], floorMatch: {}, notes: [], totalSeconds: 60,
    startup: { listening: { samples: [100], p50: 100, p99: 100, max: 100 }, servingAfterUnsealRpc: { samples: [500], p50: 500, p99: 500, max: 500 }, servingWithPasswordFile: { samples: [600], p50: 600, p99: 600, max: 600 } },
    propagation: { samples: [50], p50: 50, p99: 80, max: 90 },
    ...extra,
  } as BenchRun;
}

const ratio = (rs: ReturnType<typeof ratios>, prefix: string) => rs.find((r) => r.name.startsWith(prefix))!;
const target = (run: BenchRun, prefix: string) => {
  const rs = ratios(run, run.config.inFlight);
  return targets(run, pool(run), rs).find((t) => t.name.startsWith(prefix))!;
};

describe("bench: the report's ratios and targets", () => {
  it("computes each ratio per round and reports the median of the rounds, so one outlying round decides nothing", () => {
    const rs = ratios(run([round({ get: 0.9, put: 0.7 }), round({ get: 0.5, put: 0.2 }), round({ get: 0.85, put: 0.65 })]), 64);
    expect(ratio(rs, "GetSecret / Health throughput").perRound).to.deep.equal([0.9, 0.5, 0.85]);
    expect(ratio(rs, "GetSecret / Health throughput").median).to.equal(0.85);
    expect(ratio(rs, "PutSecret / Health throughput").median).to.be.closeTo(0.65, 1e-9);
    expect(ratio(rs, "PutSecret / pgbench-put").perRound).to.deep.equal([0.7, 0.2, 0.65]);
    expect(ratio(rs, "GetSecret / pgbench-get").perRound).to.deep.equal([0.45, 0.25, 0.425]);
  });

  it("divides the right way round: GetSecret over Health, for throughput and for latency", () => {
    const rs = ratios(run([round({ get: 0.5, p99: 3, p50At1: 4 })]), 64);
    expect(ratio(rs, "GetSecret / Health throughput").median).to.equal(0.5);
    expect(ratio(rs, "GetSecret p99 / Health p99").median).to.equal(3);
    expect(ratio(rs, "GetSecret p50 / Health p50 @1").median).to.be.closeTo(4, 1e-9);
  });

  it("states the floor as (Health p50 + pgbench get@1 p50) / Health p50 @1", () => {
    const rs = ratios(run([round({ get: 1, floor: [pgbench("get@1", 0, 0.1)] })]), 64);
    expect(ratio(rs, "(Health p50 + pgbench-get@1 p50)").median).to.be.closeTo((0.2 + 0.1) / 0.2, 1e-9);
  });

  it("leaves out a round that lacks a scenario, a failed pgbench run, or a zero denominator, instead of counting it as 0", () => {
    const rs = ratios(
      run([
        round({ get: 0.9, put: 0.7, floor: [pgbench("get", 1800), pgbench("put", 1000, 0.1, "pgbench exited 1")] }),
        round({ put: 0.6 }), // no get@64 this round
        round({ get: 0.7, put: 0.5, healthRps: 0 }),
      ]),
      64,
    );
    expect(ratio(rs, "GetSecret / Health throughput").perRound).to.deep.equal([0.9]);
    expect(ratio(rs, "PutSecret / Health throughput").perRound).to.deep.equal([0.7, 0.6]);
    expect(ratio(rs, "PutSecret / pgbench-put").perRound, "the failed floor run").to.deep.equal([0.6, 0.5]);
    expect(ratio(rs, "GetSecret / pgbench-get").perRound).to.deep.equal([0.5, 0.35]);
  });

  it("takes the median of an even number of values as the mean of the middle two, and of none as NaN", () => {
    expect(medianOf([4, 1, 3, 2])).to.equal(2.5);
    expect(medianOf([3, NaN, 1])).to.equal(2);
    expect(Number.isNaN(medianOf([])), "the median of no values").to.equal(true);
  });

  const BOUNDS: Array<{ target: string; at: Round; past: Round }> = [
    { target: "GetSecret throughput ÷ Health", at: round({ get: 0.8 }), past: round({ get: 0.79 }) },
    { target: "PutSecret throughput ÷ Health", at: round({ get: 1, put: 0.6 }), past: round({ get: 1, put: 0.59 }) },
    { target: "GetSecret p99 ÷ Health p99", at: round({ get: 1, p99: 1.5 }), past: round({ get: 1, p99: 1.51 }) },
    { target: "GetSecret p50 ÷ Health p50 @1", at: round({ get: 1, p50At1: 2 }), past: round({ get: 1, p50At1: 2.01 }) },
    // Pooled latencies are histogram bucket edges (1.6 % apart near 20 ms).
    { target: "ListSecrets p99 @1", at: round({ get: 1, listP99: 19.9 }), past: round({ get: 1, listP99: 20.3 }) },
    { target: "Server RSS under load", at: round({ get: 1, rssMb: 150 }), past: round({ get: 1, rssMb: 151 }) },
  ];
  for (const { target: name, at, past } of BOUNDS) {
    it(`${name}: passes at (or, for a pooled latency, just within) its bound and fails just past it`, () => {
      expect(target(run([at]), name).pass, "at the bound").to.equal(true);
      expect(target(run([past]), name).pass, "past the bound").to.equal(false);
    });
  }

  it("issue 15's figures: server CPU per call from the window's CPU over its calls, and the ratios to Health and to the database floor", () => {
    // Each scenario window below used 1 s of server CPU; get@1 made 300 calls, health@64 1000, get@64 500.
    const rs = ratios(run([round({ get: 0.5, put: 0.25, p50At1: 2 })]), 64);
    expect(ratio(rs, "Server CPU ms per GetSecret @1").median).to.be.closeTo(1000 / 300, 1e-9);
    expect(ratio(rs, "Server CPU per GetSecret / per Health @64").median).to.be.closeTo(2, 1e-9);
    expect(ratio(rs, "Server CPU per PutSecret / per Health @64").median).to.be.closeTo(4, 1e-9);
    // get@1 p50 0.4 ms over (Health 0.2 + pgbench get@1 0.1).
    expect(ratio(rs, "GetSecret p50 @1 / (Health p50").median).to.be.closeTo(0.4 / 0.3, 0.02);
    expect(target(run([round({ get: 0.5, p50At1: 2 })]), "Server CPU per GetSecret ÷ per Health").pass).to.equal(true);
    expect(target(run([round({ get: 0.39, p50At1: 2 })]), "Server CPU per GetSecret ÷ per Health").pass, "1/0.39 = 2.56 × Health").to.equal(false);
    expect(target(run([round({ get: 1, p50At1: 2 })]), "GetSecret p50 @1 ÷ (Health").pass).to.equal(true);
    expect(target(run([round({ get: 1, p50At1: 3 })]), "GetSecret p50 @1 ÷ (Health").pass, "0.6 / 0.3 = 2").to.equal(false);
    expect(target(run([round({ get: 1 })], { heap: { heapUsedMb: 64, rssMb: 150, scenario: "mix@64" } }), "Live heap").pass).to.equal(true);
    expect(target(run([round({ get: 1 })], { heap: { heapUsedMb: 64.5, rssMb: 150, scenario: "mix@64" } }), "Live heap").pass).to.equal(false);
    expect(target(run([round({ get: 1 })]), "Live heap").pass, "not measured").to.equal(undefined);
  });

  it("start-up and propagation pass at 1,000 ms and fail past it", () => {
    const ms = (p50: number) => ({ samples: [p50], p50, p99: p50, max: p50 });
    const startup = (p50: number) => ({ listening: ms(10), servingAfterUnsealRpc: ms(10), servingWithPasswordFile: ms(p50) });
    expect(target(run([round({ get: 1 })], { startup: startup(1000) }), "Start to SERVING").pass).to.equal(true);
    expect(target(run([round({ get: 1 })], { startup: startup(1001) }), "Start to SERVING").pass).to.equal(false);
    expect(target(run([round({ get: 1 })], { propagation: { samples: [], p50: 1, p99: 1000, max: 1 } }), "Policy propagation").pass).to.equal(true);
    expect(target(run([round({ get: 1 })], { propagation: { samples: [], p50: 1, p99: 1000.5, max: 1 } }), "Policy propagation").pass).to.equal(false);
  });

  it("a target with nothing measured is neither pass nor fail, and the table says so", () => {
    const r = run([round({})], { startup: undefined, propagation: undefined });
    for (const name of ["GetSecret throughput ÷ Health", "Start to SERVING", "Policy propagation"]) expect(target(r, name).pass, name).to.equal(undefined);
    const md = markdown(buildReport(r));
    expect(md).to.match(/\| GetSecret throughput ÷ Health @64 \| 5 \| ≥ 0\.8 \| – × \| not measured \|/);
  });

  it("pools throughput as all requests over all measured time, not the mean of the rounds' rates", () => {
    const slow = { ...round({ get: 1 }), scenarios: [scenario("get@64", { rps: 1000, durationMs: 1000 })] };
    const fast = { ...round({ get: 1 }), scenarios: [scenario("get@64", { rps: 3000, durationMs: 3000 })] };
    const [get] = pool(run([slow, fast]));
    expect(get.rps).to.equal(2500);
    expect(get.rpsPerRound).to.deep.equal([1000, 3000]);
  });

  it("writes a report whose JSON median-of-runs reads back, failing targets in bold", () => {
    const written = (r: BenchRun) => JSON.parse(JSON.stringify(buildReport(r))) as Report;
    const reports = [written(run([round({ get: 0.9 })])), written(run([round({ get: 0.7 })])), written(run([round({ get: 0.75 })]))];
    expect(markdown(reports[0])).to.contain("| GetSecret throughput ÷ Health @64 | 5 | ≥ 0.8 | 0.90 × | pass |");
    expect(markdown(reports[1])).to.contain("| GetSecret throughput ÷ Health @64 | 5 | ≥ 0.8 | 0.70 × | **FAIL** |");
    const md = medianMarkdown(reports, ["run-1.json", "run-2.json", "run-3.json"]);
    expect(md).to.contain("| GetSecret throughput ÷ Health @64 | 5 | ≥ 0.8 | 0.90, 0.70, 0.75 | 0.75 × | **FAIL** |");
    expect(md).to.contain("| GetSecret / Health throughput @64 | 0.90, 0.70, 0.75 | 0.75 |");
  });
});
