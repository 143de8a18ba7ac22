// Keeps this replica's PolicyEngine equal to the policies table: a full reload
// on unseal, on every NOTIFY from a policy change, and after the listener
// reconnects. Rows whose MAC fails are ignored and reported, and the set as a
// whole must match its MAC'd epoch (grant-epochs.ts): writing the database,
// or writing back an old row, must not be enough to grant access. A set that
// fails that check grants nothing until an operator accepts it.

import { mac, macMatches } from "../keys/integrity.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import type { PolicyStore, StoredPolicy } from "../store/policy-store.js";
import type { GrantEpochs, GrantSetRules } from "../keys/grant-epochs.js";
import { compilePolicy, POLICY_MAC_LABEL, policyMacInput, type CompiledPolicy } from "./policy.js";
import type { PolicyEngine } from "./policy-engine.js";

/** How the policy set is ordered and authenticated for its epoch digest. */
export const POLICY_SET: GrantSetRules<StoredPolicy> = {
  name: "policies",
  orderKey: (p) => p.id,
  rowVerifies: (key, p) => macMatches(key, POLICY_MAC_LABEL, policyMacInput(p), p.mac),
  remac: (key, p) => ({ ...p, mac: mac(key, POLICY_MAC_LABEL, policyMacInput(p)) }),
  storedMac: (p) => p.mac,
};

export class PolicySync {
  private listener: { unlisten(): Promise<void> } | undefined;
  private reloading: Promise<void> | undefined;
  private again = false;
  private loadedSinceUnseal = false;

  constructor(
    private readonly store: PolicyStore,
    private readonly engine: PolicyEngine,
    private readonly keys: KeyManager,
    private readonly epochs: GrantEpochs,
    private readonly logger: Logger,
  ) {
    keys.onSealChange((sealed) => {
      if (!sealed) return void this.reload();
      this.loadedSinceUnseal = false;
      engine.clear();
    });
  }

  async start(): Promise<void> {
    this.listener = await this.store.listen(() => void this.reload());
  }

  async stop(): Promise<void> {
    await this.listener?.unlisten().catch(() => {});
  }

  /**
   * Whether a load has finished since the last unseal: the replica decides by
   * the stored policies, not by an empty set. (A load that failed is logged and
   * keeps the previous set, which after an unseal is empty: it fails closed.)
   */
  get loaded(): boolean {
    return this.loadedSinceUnseal && !this.keys.sealed;
  }

  /**
   * Resolves once `loaded`, if unsealed: at start-up the server may have
   * unsealed before this sync existed to hear of it.
   */
  ensureLoaded(): Promise<void> {
    if (this.keys.sealed) return Promise.resolve();
    return this.reloading ?? (this.loadedSinceUnseal ? Promise.resolve() : this.reload());
  }

  /** Reloads now; concurrent requests coalesce into one extra reload. */
  reload(): Promise<void> {
    if (this.reloading) {
      this.again = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      do {
        this.again = false;
        await this.loadOnce();
      } while (this.again);
    })().finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  private async loadOnce(): Promise<void> {
    if (this.keys.sealed) return;
    const generation = this.keys.generation;
    let snapshot;
    let seenBefore: number | undefined;
    try {
      seenBefore = this.epochs.seenEpoch("policies");
      snapshot = await this.store.snapshot();
      // A set re-MAC'd by a rotation on another replica: take up the new key first.
      await this.epochs.ensureKeyOf(snapshot.epoch);
    } catch (err) {
      this.logger.warn("policy reload failed; keeping the previous set", { err });
      this.loadedSinceUnseal = !this.keys.sealed;
      return;
    }
    // Sealed (or sealed and unsealed) while reading: the key that would check
    // these rows may have been zeroed in place. The unseal asked for a reload
    // of its own; this one's result is dropped.
    if (this.keys.generation !== generation) return;
    let verified: StoredPolicy[];
    try {
      verified = this.epochs.verify(POLICY_SET, snapshot.epoch, snapshot.rows, seenBefore).rows;
    } catch (err) {
      this.logger.error("policies refused: the stored set fails its integrity check; every policy-based call is denied until an operator acts", {
        reason: (err as Error).message,
      });
      this.engine.replace([]);
      this.loadedSinceUnseal = true;
      return;
    }
    const valid = new Set(verified);
    const compiled: CompiledPolicy[] = [];
    for (const row of snapshot.rows) {
      if (!valid.has(row)) {
        this.logger.error("policy ignored: its MAC does not verify (written outside Nexus?)", { policy: row.name, id: row.id });
        continue;
      }
      try {
        compiled.push(compilePolicy(row));
      } catch (err) {
        this.logger.error("policy ignored: it does not compile", { policy: row.name, reason: (err as Error).message });
      }
    }
    this.engine.replace(compiled);
    this.logger.debug("policies loaded", { count: compiled.length });
    this.loadedSinceUnseal = true;
  }
}
