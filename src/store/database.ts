// The PostgreSQL connection pool (porsager/postgres: tagged templates, prepared
// statements) and the classification of driver errors into NexusErrors. Only the
// store layer imports this module.

import { readFileSync } from "node:fs";
import postgres from "postgres";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";

export type Sql = postgres.Sql<Record<string, never>>;
export type Tx = postgres.TransactionSql<Record<string, never>>;
/** Anything a tagged-template query can run on: the pool or a transaction. */
export type Queryable = Sql | Tx;

export interface DatabaseOptions {
  readonly url: string;
  readonly caFile?: string;
  readonly poolMax: number;
  readonly logger: Logger;
  readonly applicationName?: string;
}

export function connectDatabase(opts: DatabaseOptions): Sql {
  const ssl = opts.caFile === undefined ? undefined : { ca: readFileSync(opts.caFile, "utf8"), rejectUnauthorized: true };
  return postgres(opts.url, {
    max: opts.poolMax,
    prepare: true,
    // Fail fast when the database is down: callers get UNAVAILABLE and retry.
    connect_timeout: 3,
    idle_timeout: 300,
    max_lifetime: 60 * 60,
    ...(ssl === undefined ? {} : { ssl }),
    onnotice: (notice) => opts.logger.debug("postgres notice", { severity: notice.severity, message: notice.message }),
    // Generic plans: with custom plans PostgreSQL misestimates prefix ranges and
    // ListSecrets reads and sorts a whole prefix instead of stopping after a page
    // (bench: 118 -> 464 req/s, p99 20 -> 7.7 ms; GetSecret/PutSecret unchanged).
    connection: { application_name: opts.applicationName ?? "nexus", plan_cache_mode: "force_generic_plan" },
  }) as unknown as Sql;
}

// SQLSTATE classes and driver codes that mean "the database is not there right
// now" rather than "the request is wrong": connection exceptions (08), operator
// intervention (57: shutdown, cannot connect now), insufficient resources (53),
// and a server that is read-only for now (25006: a standby, or a primary an
// operator or failover manager made read-only; writes succeed once it is not).
const UNAVAILABLE_DRIVER_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENOTFOUND",
  "EPIPE",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
]);

export function isDatabaseUnavailable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  if (UNAVAILABLE_DRIVER_CODES.has(code)) return true;
  if (code === "25006") return true; // read_only_sql_transaction
  return /^(08|57|53)/.test(code) && code !== "57014"; // 57014 = query_canceled
}

/**
 * Converts an error thrown by the driver into a NexusError whose message is safe
 * to send: never the SQL, its parameters or the server's detail text.
 */
export function databaseError(err: unknown): NexusError {
  if (err instanceof NexusError) return err;
  if (isDatabaseUnavailable(err)) {
    return new NexusError("unavailable", "the database is unavailable; retry later", { reason: "DATABASE_UNAVAILABLE", cause: err });
  }
  const code = (err as { code?: unknown } | null)?.code;
  // A duplicate of an idempotent write that ran while the first did: its
  // insert waited for the first call's row and met it once that committed.
  if (code === "23505" && (err as { constraint_name?: unknown }).constraint_name === "idempotency_keys_pkey") {
    return new NexusError("aborted", "a call with this idempotency key was running; retry", { reason: "IDEMPOTENCY_KEY_IN_USE", cause: err });
  }
  if (code === "40001" || code === "40P01") {
    return new NexusError("aborted", "the write conflicted with a concurrent one; retry", { reason: "CONCURRENT_UPDATE", cause: err });
  }
  return new NexusError("internal", "internal database error", { reason: "DATABASE_ERROR", cause: err });
}

/** Runs store code so that any driver error leaves as a safe NexusError. */
export async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw databaseError(err);
  }
}

