// The database monitor behind health: a database that stops answering without
// refusing (a failover in progress on a multi-host URL, a host whose packets
// vanish) must turn health NOT_SERVING too, not only one that refuses.

import { expect } from "chai";
import net from "node:net";
import { once } from "node:events";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { DatabaseMonitor } from "../../src/store/database-monitor.js";
import { createTestDatabase } from "../support/test-database.js";
import { eventually } from "../support/wait.js";

describe("database monitor", () => {
  it("reports the database unreachable when a ping hangs, before the driver gives up on it", async () => {
    // A listener that accepts and never answers: the driver's query waits
    // for its connect timeout (3 s), far longer than the monitor may.
    const silent = net.createServer(() => {});
    const sockets: net.Socket[] = [];
    silent.on("connection", (s) => sockets.push(s));
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    const port = (silent.address() as net.AddressInfo).port;
    const sql = connectDatabase({ url: `postgres://nexus@127.0.0.1:${port}/nexus`, poolMax: 1, logger: silentLogger });
    const changes: Array<{ healthy: boolean; afterMs: number }> = [];
    const started = Date.now();
    const monitor = new DatabaseMonitor(sql, (healthy) => changes.push({ healthy, afterMs: Date.now() - started }), silentLogger, 100, 300);
    try {
      expect(await monitor.check()).to.equal(false);
      expect(changes).to.have.length(1);
      expect(changes[0].healthy).to.equal(false);
      expect(changes[0].afterMs, "ms until NOT_SERVING").to.be.below(2000);
    } finally {
      monitor.stop();
      sockets.forEach((s) => s.destroy());
      silent.close();
      await sql.end({ timeout: 0 });
    }
  });

  it("reports a database that answers as reachable", async () => {
    const sql = connectDatabase({ url: await createTestDatabase("monitor"), poolMax: 1, logger: silentLogger });
    const changes: boolean[] = [];
    const monitor = new DatabaseMonitor(sql, (healthy) => changes.push(healthy), silentLogger, 100, 300);
    try {
      monitor.start();
      await eventually(() => expect(changes).to.deep.equal([true]));
      expect(monitor.isHealthy).to.equal(true);
    } finally {
      monitor.stop();
      await sql.end();
    }
  });
});
