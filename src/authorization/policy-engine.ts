// Evaluates policies without touching the database: the compiled set is swapped
// whole on reload (LISTEN/NOTIFY, or a full reload after a reconnect), and the
// policies that apply to a caller are remembered per SPIFFE ID until the next
// reload, so a request does one RE2 match per applicable policy on its path.

import type { SpiffeId } from "../identity/spiffe-id.js";
import { GRANT_BIT, type CompiledPolicy, type Grant } from "./policy.js";

const CALLER_CACHE_LIMIT = 10_000;
const EMPTY: readonly CompiledPolicy[] = [];

export class PolicyEngine {
  private policies: readonly CompiledPolicy[] = EMPTY;
  private byCaller = new Map<string, readonly CompiledPolicy[]>();

  /** Replaces the whole policy set. */
  replace(policies: readonly CompiledPolicy[]): void {
    this.policies = policies;
    this.byCaller = new Map();
  }

  clear(): void {
    this.replace(EMPTY);
  }

  /** Whether any policy gives `caller` the grant on `path`. */
  allows(caller: SpiffeId, grant: Grant, path: string): boolean {
    const bit = GRANT_BIT[grant];
    for (const p of this.applicable(caller)) {
      if ((p.grants & bit) === bit && p.path.matches(path)) return true;
    }
    return false;
  }

  /**
   * A test of paths against the policies that give `caller` the grant, looked
   * up once (ListSecrets tests every row it scans); undefined if no policy gives
   * the grant anywhere.
   */
  pathTest(caller: SpiffeId, grant: Grant): ((path: string) => boolean) | undefined {
    const bit = GRANT_BIT[grant];
    const granting = this.applicable(caller).filter((p) => (p.grants & bit) === bit);
    if (granting.length === 0) return undefined;
    return (path) => granting.some((p) => p.path.matches(path));
  }

  private applicable(caller: SpiffeId): readonly CompiledPolicy[] {
    const id = caller.toString();
    let found = this.byCaller.get(id);
    if (found === undefined) {
      found = this.policies.filter((p) => p.spiffeId.matches(id));
      if (this.byCaller.size >= CALLER_CACHE_LIMIT) this.byCaller.clear();
      this.byCaller.set(id, found);
    }
    return found;
  }
}
