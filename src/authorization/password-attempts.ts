// Failed admin-password attempts (Login, Unseal) slow the caller down with
// exponential backoff up to a lockout window. The state is in PostgreSQL, so
// every replica enforces the same limit.

import { NexusError } from "../errors/nexus-error.js";
import type { SpiffeId } from "../identity/spiffe-id.js";
import type { CredentialStore } from "../store/credential-store.js";

export class PasswordAttempts {
  /** The last attempt of each caller on this replica: the next one starts after it. */
  private readonly latest = new Map<string, Promise<unknown>>();

  constructor(
    private readonly store: CredentialStore,
    private readonly freeAttempts = 3,
    private readonly maxLockSeconds = 15 * 60,
  ) {}

  /**
   * Runs a password check for `caller`, refusing it while the caller is locked
   * out. One caller's attempts run one after another on a replica, each
   * checking the lockout only once the one before has recorded its outcome:
   * parallel attempts cannot all pass the check before the first failure lands.
   */
  guard<T>(caller: SpiffeId, attempt: () => Promise<T>): Promise<T> {
    const id = caller.toString();
    const previous = this.latest.get(id) ?? Promise.resolve();
    const run = previous.then(
      () => this.checked(id, attempt),
      () => this.checked(id, attempt),
    );
    const settled = run.catch(() => {});
    this.latest.set(id, settled);
    void settled.then(() => {
      if (this.latest.get(id) === settled) this.latest.delete(id);
    });
    return run;
  }

  private async checked<T>(id: string, attempt: () => Promise<T>): Promise<T> {
    const until = await this.store.lockedUntil(id);
    if (until !== undefined) {
      const seconds = Math.ceil((until.getTime() - Date.now()) / 1000);
      throw new NexusError("resource_exhausted", `too many wrong passwords: try again in ${Math.max(seconds, 1)} s`, { reason: "PASSWORD_ATTEMPTS_EXCEEDED" });
    }
    try {
      const result = await attempt();
      await this.store.clearFailures(id);
      return result;
    } catch (err) {
      if (err instanceof NexusError && err.reason === "WRONG_PASSWORD") await this.store.recordFailure(id, this.freeAttempts, this.maxLockSeconds);
      throw err;
    }
  }
}
