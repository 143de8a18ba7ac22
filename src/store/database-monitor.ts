// Watches whether PostgreSQL answers, so health can say NOT_SERVING while it is
// gone and SERVING again when it returns, without a restart. The driver
// reconnects by itself; this only observes.
//
// A ping that does not answer in time counts as a failure: during a failover
// the driver keeps a query waiting while it tries every host of a multi-host
// URL (the old primary refuses, the standby is not yet read-write), so a ping
// can hang rather than fail. It stays in flight and reports when it settles,
// unless it is still hanging after twice the timeout: then it is cancelled and
// a fresh ping goes (after a restart, one hung ping kept health NOT_SERVING).

import type { Logger } from "../log/logger.js";
import type { Sql } from "./database.js";

export class DatabaseMonitor {
  private timer: NodeJS.Timeout | undefined;
  private healthy: boolean | undefined;
  private ping: Promise<boolean> | undefined;
  private pingQuery: { cancel(): void } | undefined;
  private pingStarted = 0;

  constructor(
    private readonly sql: Sql,
    private readonly onChange: (healthy: boolean) => void,
    private readonly logger: Logger,
    private readonly intervalMs = 1000,
    private readonly timeoutMs = Math.max(2000, intervalMs),
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
    const started = performance.now();
    // A ping stuck past twice the timeout (a connection the driver keeps
    // waiting on after the database came back) is given up: a fresh one goes.
    if (this.ping !== undefined && started - this.pingStarted > 2 * this.timeoutMs) {
      this.pingQuery?.cancel();
      this.ping = undefined;
    }
    if (this.ping === undefined) {
      const query = this.sql`SELECT 1`;
      this.pingQuery = query;
      this.pingStarted = started;
      const ping: Promise<boolean> = query
        .execute()
        .then(
          () => {
            this.onPing?.((performance.now() - started) / 1000);
            return true;
          },
          () => false,
        )
        .then((ok) => {
          if (this.ping !== ping) return ok; // given up meanwhile
          this.ping = undefined;
          this.report(ok);
          return ok;
        });
      this.ping = ping;
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), this.timeoutMs)));
    const ok = await Promise.race([this.ping, late]);
    clearTimeout(timer);
    if (!ok) this.report(false);
    return ok;
  }

  private report(ok: boolean): void {
    if (ok === this.healthy) return;
    this.healthy = ok;
    if (ok) this.logger.info("database reachable");
    else this.logger.warn("database unreachable");
    this.onChange(ok);
  }
}
