// The rows behind rate limits shared across replicas (rate-limit-usage-store.ts):
// one exchange writes a replica's batch and returns the other replicas' fresh
// batches it has not applied — never its own, never one twice, never a stale
// one — and deletes old rows; the table refuses a count that would add tokens.

import { expect } from "chai";
import { silentLogger } from "../../src/log/logger.js";
import { RateLimitSync } from "../../src/server/rate-limit-sync.js";
import { connectDatabase, type Sql } from "../../src/store/database.js";
import { loadMigrations, Migrator } from "../../src/store/migrations.js";
import { RateLimitUsageStore, type UsageExchange } from "../../src/store/rate-limit-usage-store.js";
import { RateLimits } from "../../src/transport/rate-limits.js";
import { createTestDatabase } from "../support/test-database.js";

describe("rate-limit usage rows", function () {
  this.timeout(30_000);
  let sql: Sql;
  let store: RateLimitUsageStore;
  let url: string;

  before(async () => {
    url = await createTestDatabase("rlusage");
    sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
    await new Migrator(sql, await loadMigrations(), silentLogger).up();
    store = new RateLimitUsageStore(sql);
  });

  after(async () => sql?.end());

  const exchange = (instanceId: string, seq: number, usage: UsageExchange["usage"], applied: Array<[string, number]> = []) =>
    store.exchange({ instanceId, seq, usage, applied: new Map(applied), freshMs: 3000, keepMs: 10_000 });

  it("returns the other replicas' batches above what was applied, never this replica's own", async () => {
    expect(await exchange("a", 1, [{ kind: "calls", key: "spiffe://t/w", tokens: 5 }])).to.deep.equal([]);
    await exchange("b", 1, [
      { kind: "calls", key: "spiffe://t/w", tokens: 3 },
      { kind: "auth_failures", key: "ab".repeat(32), tokens: 2 },
    ]);
    const seen = await exchange("a", 2, []);
    expect(seen).to.have.deep.members([
      { instanceId: "b", seq: 1, kind: "calls", key: "spiffe://t/w", tokens: 3 },
      { instanceId: "b", seq: 1, kind: "auth_failures", key: "ab".repeat(32), tokens: 2 },
    ]);
    expect(await exchange("a", 3, [], [["b", 1]]), "b's batch 1 was applied").to.deep.equal([]);
    await exchange("b", 2, [{ kind: "calls", key: "spiffe://t/w", tokens: 4 }]);
    expect(await exchange("a", 4, [], [["b", 1]])).to.deep.equal([{ instanceId: "b", seq: 2, kind: "calls", key: "spiffe://t/w", tokens: 4 }]);
    expect((await exchange("b", 3, [], [["a", 0]])).map((r) => r.seq), "a's batch 1").to.deep.equal([1]);
  });

  it("skips batches older than the fresh window and deletes rows older than the keep window", async () => {
    await sql`DELETE FROM rate_limit_usage`;
    await exchange("c", 1, [{ kind: "calls", key: "k", tokens: 1 }]);
    await exchange("d", 1, [{ kind: "calls", key: "k", tokens: 1 }]);
    await sql`UPDATE rate_limit_usage SET published_at = now() - interval '5 seconds' WHERE instance_id = 'c'`;
    await sql`UPDATE rate_limit_usage SET published_at = now() - interval '1 minute' WHERE instance_id = 'd'`;
    expect(await exchange("e", 1, []), "stale batches are not applied").to.deep.equal([]);
    const left = await sql`SELECT instance_id FROM rate_limit_usage ORDER BY instance_id`;
    expect(left.map((r) => r.instance_id as string), "d's row was older than the keep window").to.deep.equal(["c"]);
  });

  /** A replica's limits and exchange on this database: 10 calls a second, burst 10. */
  const replica = (instanceId: string) => {
    const limits = new RateLimits({ calls: { perSecond: 10, burst: 10 }, authFailures: { perSecond: 1, burst: 1 }, shareUsage: true });
    return { limits, sync: new RateLimitSync({ limits, store, instanceId, intervalMs: 1000, logger: silentLogger }) };
  };
  const limited = (limits: RateLimits, caller: string) => {
    try {
      limits.admit(caller);
      return false;
    } catch (err) {
      return (err as { reason?: string }).reason === "RATE_LIMITED";
    }
  };

  // Threat model: a database writer can deny service through these rows or
  // make the limits per replica while it writes, never more. One row whose
  // seq is 2^63 - 1 must not stop the exchange for good.
  it("a batch numbered beyond what a replica numbers (a database writer's) does not stop the exchange: later usage is still published and applied", async () => {
    await sql`DELETE FROM rate_limit_usage`;
    const { limits, sync } = replica("seq-victim");
    await sync.exchange(); // the first exchange only notes where the others are
    await sql`INSERT INTO rate_limit_usage (instance_id, seq, kind, key, tokens) VALUES ('forged', 9223372036854775807, 'calls', 'spiffe://t/forged', 1)`;
    await sync.exchange();
    await exchange("b", 1, [{ kind: "calls", key: "spiffe://t/busy-elsewhere", tokens: 10 }]);
    limits.admit("spiffe://t/here");
    limits.admit("spiffe://t/here");
    await sync.exchange();
    const published = await sql`SELECT seq::int AS seq, tokens FROM rate_limit_usage WHERE instance_id = 'seq-victim'`;
    expect(published.map((r) => [r.seq, r.tokens]), "this replica's third batch").to.deep.equal([[3, 2]]);
    expect(limited(limits, "spiffe://t/busy-elsewhere"), "b's usage was taken from the caller's bucket here").to.equal(true);
  });

  it("rows written ahead under this replica's instance ID (a database writer's) do not stop it publishing and applying usage", async () => {
    await sql`DELETE FROM rate_limit_usage`;
    const { limits, sync } = replica("id-victim");
    await sync.exchange();
    await sql`INSERT INTO rate_limit_usage (instance_id, seq, kind, key, tokens) VALUES ('id-victim', 2, 'calls', 'spiffe://t/here', 1)`;
    await exchange("b", 1, [{ kind: "calls", key: "spiffe://t/busy-elsewhere", tokens: 10 }]);
    limits.admit("spiffe://t/here");
    limits.admit("spiffe://t/here");
    await sync.exchange();
    expect(limited(limits, "spiffe://t/busy-elsewhere"), "b's usage was taken from the caller's bucket here").to.equal(true);
  });

  it("a batch dated in the future (a database writer's) is never returned, and deleted once beyond the keep window", async () => {
    await sql`DELETE FROM rate_limit_usage`;
    await sql`INSERT INTO rate_limit_usage (instance_id, seq, kind, key, tokens, published_at) VALUES ('soon', 1, 'calls', 'k', 1, now() + interval '2 seconds'), ('later', 1, 'calls', 'k', 1, now() + interval '1 day')`;
    expect(await exchange("g", 1, [])).to.deep.equal([]);
    const left = await sql`SELECT instance_id FROM rate_limit_usage ORDER BY instance_id`;
    expect(left.map((r) => r.instance_id as string), "the one dated a day ahead is deleted").to.deep.equal(["soon"]);
  });

  it("refuses a count that is not positive: a row can only ever take tokens", async () => {
    let err: unknown;
    try {
      await exchange("f", 1, [{ kind: "calls", key: "k", tokens: -100 }]);
    } catch (e) {
      err = e;
    }
    expect(err, "a negative count is refused").to.not.equal(undefined);
    expect(await sql`SELECT 1 FROM rate_limit_usage WHERE instance_id = 'f'`).to.have.length(0);
  });

  it("stop() returns while an exchange is stalled on a lock a database writer holds (shutdown is not held up)", async () => {
    const limits = new RateLimits({ calls: { perSecond: 10, burst: 10 }, authFailures: { perSecond: 1, burst: 1 }, shareUsage: true });
    const sync = new RateLimitSync({ limits, store, instanceId: "stalled", intervalMs: 100, logger: silentLogger });
    const writer = connectDatabase({ url, poolMax: 1, logger: silentLogger });
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const lockTaken = new Promise<void>((r) => (locked = r));
    const lock = writer.begin(async (tx) => {
      await tx`LOCK TABLE rate_limit_usage IN ACCESS EXCLUSIVE MODE`;
      locked();
      await held;
    });
    try {
      await lockTaken;
      sync.start();
      await new Promise((r) => setTimeout(r, 400)); // the first exchange is now waiting for the lock
      const started = Date.now();
      await sync.stop();
      expect(Date.now() - started, "ms stop() took with the exchange stalled").to.be.below(5000);
    } finally {
      release();
      await lock;
      await writer.end();
    }
  });
});
