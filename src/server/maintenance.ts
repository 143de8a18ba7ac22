// Periodic housekeeping (seed 002's cleanup of expired rows): expired secrets
// and admin credentials, audit checkpoints, audit retention, watch event
// retention, expired idempotency records, and the rotation scheduler (rotation-scheduler.ts). Each job runs
// on its own timer, never overlaps itself, and logs rather than throws.

import type { AuditLog } from "../audit/audit-log.js";
import type { AuditRetention } from "../audit/audit-retention.js";
import type { AdminCredentials } from "../authorization/admin-credentials.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { Logger } from "../log/logger.js";
import type { IdempotentWrites } from "../services/idempotency.js";
import type { SecretEventStore } from "../store/secret-event-store.js";
import type { SecretStore } from "../store/secret-store.js";
import { runDueRotations, type RotationSchedulerDeps } from "./rotation-scheduler.js";

export interface MaintenanceDeps {
  readonly secrets: SecretStore;
  readonly credentials: AdminCredentials;
  readonly auditLog: AuditLog;
  readonly keys: KeyManager;
  readonly auditRetention: AuditRetention;
  readonly logger: Logger;
  readonly cleanupIntervalMs: number;
  readonly auditRetentionMs: number;
  readonly checkpointIntervalMs?: number;
  /** Watch events older than the retention (plus a margin, see below) are removed; omitted, none are. */
  readonly watchEvents?: { readonly store: SecretEventStore; readonly retentionMs: number };
  /** Idempotency records past their 24 h (services/idempotency.ts); omitted, none are removed. */
  readonly idempotency?: Pick<IdempotentWrites, "deleteExpired">;
  /** The rotation scheduler; omitted, nothing is rotated by schedule. */
  readonly rotation?: RotationSchedulerDeps & { readonly intervalMs: number };
}

/** How much longer than the cursor retention watch events are kept. */
const WATCH_EVENT_MARGIN_MS = 3_600_000;

export function startMaintenance(d: MaintenanceDeps): () => void {
  const timers = [
    every(d.cleanupIntervalMs, "expiry", d.logger, async () => {
      const secrets = await d.secrets.purgeExpired();
      // Removing credentials seals a new epoch of their set: only while unsealed.
      const credentials = d.keys.sealed ? 0 : await d.credentials.deleteExpired();
      if (secrets + credentials > 0) d.logger.info("expired rows removed", { secrets, credentials });
    }),
    every(d.checkpointIntervalMs ?? 10_000, "audit checkpoint", d.logger, () => d.auditLog.checkpoint()),
    every(Math.min(d.cleanupIntervalMs * 10, 3_600_000), "audit retention", d.logger, async () => {
      // Pruning checks every event it deletes and records the new floors itself (ADR 0003).
      const pruned = await d.auditRetention.prune(new Date(Date.now() - d.auditRetentionMs));
      if (pruned.length > 0) d.logger.info("audit events pruned", { replicas: pruned.length, events: pruned.reduce((n, r) => n + r.pruned, 0) });
    }),
  ];
  const watch = d.watchEvents;
  // Every replica runs it; a plain DELETE by time is safe to repeat. Events
  // are kept an hour past the cursor retention: an event's time is when its
  // transaction began, so one that committed late must outlive the cursors
  // handed out before it was readable.
  if (watch) {
    timers.push(
      every(d.cleanupIntervalMs, "watch event retention", d.logger, async () => {
        const removed = await watch.store.deleteOlderThan(new Date(Date.now() - watch.retentionMs - WATCH_EVENT_MARGIN_MS));
        if (removed > 0) d.logger.info("watch events removed", { events: removed });
      }),
    );
  }
  const idem = d.idempotency;
  // One replica at a time (the store's advisory lock); the others skip the run.
  if (idem) {
    timers.push(
      every(d.cleanupIntervalMs, "idempotency expiry", d.logger, async () => {
        const removed = await idem.deleteExpired();
        if (removed > 0) d.logger.info("expired idempotency records removed", { records: removed });
      }),
    );
  }
  const rotation = d.rotation;
  if (rotation) timers.push(every(rotation.intervalMs, "rotation scheduler", d.logger, () => runDueRotations(rotation)));
  return () => timers.forEach((t) => clearInterval(t));
}

function every(ms: number, name: string, logger: Logger, job: () => Promise<unknown>): NodeJS.Timeout {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    job()
      .catch((err) => logger.warn(`${name} job failed`, { err }))
      .finally(() => (running = false));
  }, ms);
  timer.unref();
  return timer;
}
