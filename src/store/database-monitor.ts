// Watches whether PostgreSQL answers, so health can say NOT_SERVING while it is
// gone and SERVING again when it returns, without a restart. The driver
// reconnects by itself; this only observes.

import type { Logger } from "../log/logger.js";
import type { Sql } from "./database.js";

export class DatabaseMonitor {
  private timer: NodeJS.Timeout | undefined;
  private healthy: boolean | undefined;
  private checking = false;

  constructor(
    private readonly sql: Sql,
    private readonly onChange: (healthy: boolean) => void,
    private readonly logger: Logger,
    private readonly intervalMs = 1000,
    /** Told each successful ping's round trip in seconds (metrics). */
    private readonly onPing?: (seconds: number) => void,
  ) {}

  get isHealthy(): boolean {
    return this.healthy === true;
  }

  start(): void {
    this.timer = setInterval(() => void this.check(), this.intervalMs);
    this.timer.unref();
    void this.check();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Pings now; callers that just saw the database fail use it to report sooner. */
  async check(): Promise<boolean> {
    if (this.checking) return this.isHealthy;
    this.checking = true;
    let ok: boolean;
    try {
      const started = performance.now();
      await this.sql`SELECT 1`.execute();
      this.onPing?.((performance.now() - started) / 1000);
      ok = true;
    } catch {
      ok = false;
    } finally {
      this.checking = false;
    }
    if (ok !== this.healthy) {
      this.healthy = ok;
      if (ok) this.logger.info("database reachable");
      else this.logger.warn("database unreachable");
      this.onChange(ok);
    }
    return ok;
  }
}
