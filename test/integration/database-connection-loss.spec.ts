// A connection that dies inside a transaction (the primary crashed, a failover
// began): the transaction and its ROLLBACK must fail as retryable errors, not
// crash the process. postgres.js 3.4.9 wrote them to a
// socket that was gone, which threw in a timer (patches/postgres+3.4.9.patch).

import { expect } from "chai";
import postgres from "postgres";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase, databaseError } from "../../src/store/database.js";
import { createTestDatabase } from "../support/test-database.js";
import { sleep } from "../support/wait.js";

describe("a database connection lost inside a transaction", () => {
  it("fails the transaction UNAVAILABLE and leaves the pool usable, without an uncaught exception", async () => {
    const url = await createTestDatabase("connloss");
    const sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on("uncaughtException", onUncaught);
    try {
      const outcome = await sql
        .begin(async (tx) => {
          const [{ pid }] = await tx`SELECT pg_backend_pid() AS pid`;
          await admin`SELECT pg_terminate_backend(${pid})`;
          // Meets the dead connection and throws: begin() then sends ROLLBACK
          // on a connection whose socket is already gone.
          await tx`SELECT 1`;
        })
        .then(
          () => "committed",
          (err: unknown) => databaseError(err).code,
        );
      await sleep(200); // a write left in a timer would throw by now
      expect(uncaught, "uncaught exceptions").to.deep.equal([]);
      expect(outcome).to.equal("unavailable");
      const [{ one }] = await sql`SELECT 1 AS one`;
      expect(one).to.equal(1);
    } finally {
      process.off("uncaughtException", onUncaught);
      await admin.end();
      // With a timeout, as the server ends its pool: the driver can wait on
      // the dead session's state at end() (not what this spec is about).
      await sql.end({ timeout: 5 });
    }
  });
});
