// With one query at a time, the pool hands each query to the connection that
// went idle last (patches/postgres+3.4.9.patch), so a lone call always meets
// a warm connection and PostgreSQL backend instead of rotating through all of
// them (issue 15: the lone-call read path).

import { expect } from "chai";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { poolWaiting } from "../../src/store/pool-activity.js";
import { createTestDatabase } from "../support/test-database.js";

describe("postgres.js pool: connection reuse", () => {
  it("serves sequential queries from the connection used last once several are open", async () => {
    const sql = connectDatabase({ url: await createTestDatabase("reuse"), poolMax: 4, logger: silentLogger });
    try {
      // Open all four: concurrent queries that hold their connection a moment.
      const opened = await Promise.all([1, 2, 3, 4].map(() => sql<Array<{ pid: number }>>`SELECT pg_backend_pid() AS pid, pg_sleep(0.05)`));
      expect(new Set(opened.map((rows) => rows[0].pid)).size).to.equal(4);
      const pids: number[] = [];
      for (let i = 0; i < 8; i++) pids.push((await sql<Array<{ pid: number }>>`SELECT pg_backend_pid() AS pid`)[0].pid);
      expect(new Set(pids).size, `backends used one call at a time: ${pids.join(", ")}`).to.equal(1);
      // Under concurrency the other connections are still used.
      const concurrent = await Promise.all([1, 2, 3, 4].map(() => sql<Array<{ pid: number }>>`SELECT pg_backend_pid() AS pid, pg_sleep(0.05)`));
      expect(new Set(concurrent.map((rows) => rows[0].pid)).size).to.equal(4);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("counts the queries waiting for a free connection (the pool-waiting metric reads it)", async () => {
    const sql = connectDatabase({ url: await createTestDatabase("waiting"), poolMax: 1, logger: silentLogger });
    try {
      expect(poolWaiting(sql)).to.equal(0);
      // A transaction holds the only connection; two queries behind it wait in the driver.
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      let began!: () => void;
      const inside = new Promise<void>((r) => (began = r));
      const tx = sql.begin(async (t) => {
        await t`SELECT 1`;
        began();
        await held;
      });
      await inside;
      // postgres.js queries are lazy: execute() hands them to the pool a microtask later.
      const queued = [sql`SELECT 1`.execute(), sql`SELECT 2`.execute()];
      await new Promise((r) => setImmediate(r));
      expect(poolWaiting(sql)).to.equal(2);
      release();
      await Promise.all([tx, ...queued]);
      expect(poolWaiting(sql)).to.equal(0);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});
