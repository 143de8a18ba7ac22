// Mocha root hooks: start the shared test PostgreSQL once per run.
import { startTestCluster, stopTestCluster } from "./test-database.js";

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(120_000);
    await startTestCluster();
  },
  async afterAll(this: Mocha.Context) {
    this.timeout(30_000);
    await stopTestCluster();
  },
};
