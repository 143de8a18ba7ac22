// Per-caller rate limits shared across replicas (issue 17 §6): two servers on
// one database exchange their callers' usage every sync interval, so a caller
// that spreads its calls over both is held to about the configured rate, not
// twice it, while another caller on the same replicas is served. Without the
// exchange (NEXUS_RATE_LIMIT_SYNC_INTERVAL=off) the same caller gets about
// twice as many calls: the control that shows the measurement can tell. When
// the exchange fails (its table dropped) calls are still served and limited
// per replica, and the failure is logged once.

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createLogger } from "../../src/log/logger.js";
import { openDatabase } from "../support/secret-server.js";
import { startTestServer, type TestServer } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

const RATE = 20;
const BURST = 10;
const HAMMER_MS = 3000;
const env = (sync: string): Record<string, string> => ({
  NEXUS_RATE_LIMIT_RPS: String(RATE),
  NEXUS_RATE_LIMIT_BURST: String(BURST),
  NEXUS_RATE_LIMIT_SYNC_INTERVAL: sync,
});

interface Replicas {
  readonly servers: readonly TestServer[];
  readonly logs: string[];
  stop(): Promise<void>;
}

/** Two servers on one database; the first one's log lines (warn and up) are kept. */
async function startReplicas(sync: string): Promise<Replicas> {
  const logs: string[] = [];
  const a = await startTestServer({ env: env(sync), logger: createLogger("warn", (line) => logs.push(line)) });
  const b = await startTestServer({ env: env(sync), pki: a.pki, databaseUrl: a.nexus.databaseUrl });
  // Each replica's first exchange only notes where the other one is.
  await sleep(1000);
  return {
    servers: [a, b],
    logs,
    async stop() {
      await b.stop();
      await a.stop();
    },
  };
}

interface Hammered {
  readonly ok: number;
  readonly limited: number;
  readonly other: string[];
  readonly elapsedMs: number;
}

/** Four loops of GetStatus for `ms`, each call to the next client in turn (one per replica). */
async function hammer(clients: readonly NexusClient[], ms: number): Promise<Hammered> {
  const started = Date.now();
  let ok = 0;
  let limited = 0;
  const other: string[] = [];
  let n = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (Date.now() - started < ms) {
        const r = await clients[n++ % clients.length].call(OperatorService.method.getStatus, {});
        if (r.code === "OK") ok++;
        else if (r.code === "RESOURCE_EXHAUSTED" && r.reason === "RATE_LIMITED") limited++;
        else other.push(`${r.code} ${r.message ?? ""}`);
      }
    }),
  );
  return { ok, limited, other, elapsedMs: Date.now() - started };
}

/** What one replica admits from a caller hammering it for `ms`: its burst, then its rate. */
const oneReplica = (ms: number) => BURST + (RATE * ms) / 1000;

/** A caller well under its limit on both replicas: one GetStatus every 200 ms, alternating. */
async function quietly(clients: readonly NexusClient[], ms: number): Promise<string[]> {
  const codes: string[] = [];
  for (let i = 0; (i + 1) * 200 <= ms; i++) {
    codes.push((await clients[i % clients.length].call(OperatorService.method.getStatus, {})).code);
    await sleep(200);
  }
  return codes;
}

describe("per-caller rate limits shared across two replicas", function () {
  this.timeout(90_000);

  describe("with the usage exchanged every 200 ms", () => {
    let replicas: Replicas;
    before(async () => (replicas = await startReplicas("200ms")));
    after(async () => replicas?.stop());

    it("a caller spreading its calls over both replicas is held to about one replica's rate, and another caller is still served", async () => {
      const noisy = replicas.servers.map((s) => s.client("grpc", s.pki.workload));
      const quiet = replicas.servers.map((s) => s.client("grpc"));
      const [result, quietCodes] = await Promise.all([hammer(noisy, HAMMER_MS), quietly(quiet, HAMMER_MS)]);
      expect(result.other, "only OK or RATE_LIMITED").to.deep.equal([]);
      const single = oneReplica(result.elapsedMs);
      // Both replicas' bursts, the rate, and about one interval's lag: well under 2 × single.
      expect(result.ok, `admitted ${result.ok} in ${result.elapsedMs} ms (one replica alone: ${single}, two unshared: ${2 * single})`).to.be.within(
        0.8 * (single - BURST),
        1.4 * single,
      );
      expect(result.limited, "the caller was refused").to.be.greaterThan(0);
      expect(quietCodes.every((c) => c === "OK"), `the quiet caller: ${quietCodes.join(",")}`).to.equal(true);
    });

    it("when the exchange fails (its table dropped) calls are still served and limited per replica, and the failure is logged once", async () => {
      const db = openDatabase(replicas.servers[0].nexus.databaseUrl);
      try {
        await db`DROP TABLE rate_limit_usage`;
      } finally {
        await db.end();
      }
      await sleep(2000); // refill, and ten failed exchanges
      const noisy = replicas.servers.map((s) => s.client("grpc", s.pki.workload));
      const quiet = replicas.servers.map((s) => s.client("grpc"));
      const [result, quietCodes] = await Promise.all([hammer(noisy, 1500), quietly(quiet, 1500)]);
      expect(result.other, "only OK or RATE_LIMITED").to.deep.equal([]);
      expect(result.ok, "the caller is served").to.be.at.least(2 * BURST);
      expect(result.limited, "and still limited, per replica").to.be.greaterThan(0);
      expect(quietCodes.every((c) => c === "OK"), `the quiet caller: ${quietCodes.join(",")}`).to.equal(true);
      const warnings = replicas.logs.map((l) => JSON.parse(l) as { msg: string }).filter((e) => /rate-limit usage/.test(e.msg));
      expect(warnings.map((w) => w.msg)).to.deep.equal(["rate-limit usage is not shared: each replica limits on its own until the database answers"]);
    });
  });

  describe("control: without the exchange (NEXUS_RATE_LIMIT_SYNC_INTERVAL=off)", () => {
    let replicas: Replicas;
    before(async () => (replicas = await startReplicas("off")));
    after(async () => replicas?.stop());

    it("the same caller gets about twice one replica's rate, which the shared limit above refuses", async () => {
      const noisy = replicas.servers.map((s) => s.client("grpc", s.pki.workload));
      const result = await hammer(noisy, HAMMER_MS);
      const single = oneReplica(result.elapsedMs);
      expect(result.ok, `admitted ${result.ok} in ${result.elapsedMs} ms (one replica alone: ${single})`).to.be.above(1.4 * single);
    });
  });
});
