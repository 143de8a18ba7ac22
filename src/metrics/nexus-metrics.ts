// The Prometheus metrics of one server: a prom-client Registry of its own (never
// prom-client's global one, so two servers in one process never share counts),
// built by the composition root and handed to what it measures. Every metric
// is named nexus_*. Label values come only from fixed tables: a method label is
// a method this server serves or "unknown", a code a gRPC status name — never a
// secret path, a SPIFFE ID or anything else a caller chooses (cardinality and
// leakage).

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { AuditObserver } from "../audit/audit-log.js";
import type { CallObserver } from "../transport/call-pipeline.js";
import type { RateLimitObserver } from "../transport/rate-limits.js";

/** What the gauges read when Prometheus scrapes: functions, so nothing is copied or kept twice. */
export interface MetricSources {
  readonly sealed: () => boolean;
  readonly keyringKeys: () => number;
  readonly activeKeyringKeyId: () => number;
  readonly databaseUp: () => boolean;
  readonly databasePoolMax: number;
  /** This replica's connections as PostgreSQL sees them, sampled at scrape time. */
  readonly databasePool?: () => Promise<{ inUse: number; open: number }>;
  /** Queries and transactions waiting in the driver for a free connection, read at scrape time. */
  readonly databasePoolWaiting?: () => number;
  readonly auditEventsWaiting: () => number;
  /** The server's own X.509-SVID's notAfter, in ms since the epoch. */
  readonly svidNotAfterMs: () => number;
  /** Open WatchSecrets streams on this replica, sampled at scrape time. */
  readonly watchStreamsOpen?: () => number;
  /** Data keys the rotation this replica drives has still to re-wrap (0 when it drives none). */
  readonly keyRotationRemaining?: () => number;
}

const UNKNOWN = "unknown";
/** grpc status names (upper snake case); anything else is recorded as UNKNOWN. */
const STATUS_NAME = /^[A-Z_]{2,20}$/;

interface MethodMetrics {
  readonly service: string;
  readonly method: string;
  readonly inFlight: { inc(): void; dec(): void };
  readonly duration: { startTimer(): () => unknown };
  readonly requests: Map<string, { inc(): void }>;
}

export class NexusMetrics {
  readonly registry = new Registry();
  private readonly methods: ReadonlyMap<string, { service: string; method: string }>;
  private readonly perMethod = new Map<string, MethodMetrics>();
  private readonly rpcRequests: Counter<"service" | "method" | "code">;
  private readonly rpcDuration: Histogram<"service" | "method">;
  private readonly rpcInFlight: Gauge<"service" | "method">;
  private readonly databasePing: Histogram;
  private readonly auditBatchSize: Histogram;
  private readonly auditWriteDuration: Histogram;
  private readonly auditWriteFailures: Counter;
  private readonly rateLimited: Counter<"kind">;
  /** Sampled from sources.watchStreamsOpen at scrape time. */
  readonly watchStreamsOpen: Gauge;
  /** Sampled from sources.keyRotationRemaining at scrape time; 0 when no rotation runs here. */
  readonly keyRotationRemaining: Gauge;

  /** `servedMethods` are the full paths ("/spike.nexus.v1.SecretService/GetSecret") the method label may name. */
  constructor(servedMethods: readonly string[], sources: MetricSources) {
    const registers = [this.registry];
    this.methods = new Map(servedMethods.map((p) => [p, splitPath(p)]));
    collectDefaultMetrics({ register: this.registry, prefix: "nexus_" });

    this.rpcRequests = new Counter({
      name: "nexus_rpc_requests_total",
      help: "RPCs finished, by service, method and gRPC status code",
      labelNames: ["service", "method", "code"],
      registers,
    });
    this.rpcDuration = new Histogram({
      name: "nexus_rpc_duration_seconds",
      help: "RPC latency from authentication to the committed audit event",
      labelNames: ["service", "method"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.rateLimited = new Counter({
      name: "nexus_rate_limited_total",
      help: "Calls refused RESOURCE_EXHAUSTED by a per-caller rate limit, by kind (calls or auth_failures); never by caller",
      labelNames: ["kind"],
      registers,
    });
    this.rpcInFlight = new Gauge({ name: "nexus_rpc_in_flight", help: "RPCs running now", labelNames: ["service", "method"], registers });

    new Gauge({
      name: "nexus_database_up",
      help: "1 while PostgreSQL answers the health ping, else 0",
      registers,
      collect() {
        this.set(sources.databaseUp() ? 1 : 0);
      },
    });
    this.databasePing = new Histogram({
      name: "nexus_database_ping_duration_seconds",
      help: "Round trip of the database health ping (SELECT 1 through the pool): pool wait plus query latency",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3],
      registers,
    });
    const pool = sources.databasePool;
    if (pool !== undefined) {
      // One query per scrape, shared by both gauges; a failed sample leaves them as they were.
      let sample: Promise<{ inUse: number; open: number } | undefined> | undefined;
      const sampled = () => (sample ??= pool().then((s) => s, () => undefined).finally(() => setImmediate(() => (sample = undefined))));
      new Gauge({
        name: "nexus_database_pool_in_use",
        help: "This replica's database connections running a statement or in a transaction (pg_stat_activity, sampled at scrape)",
        registers,
        async collect() {
          const s = await sampled();
          if (s !== undefined) this.set(s.inUse);
        },
      });
      new Gauge({
        name: "nexus_database_pool_open",
        help: "This replica's open database connections (pg_stat_activity, sampled at scrape)",
        registers,
        async collect() {
          const s = await sampled();
          if (s !== undefined) this.set(s.open);
        },
      });
    }
    const waiting = sources.databasePoolWaiting;
    if (waiting !== undefined) {
      new Gauge({
        name: "nexus_database_pool_waiting",
        help: "Queries and transactions waiting for a free database connection in this replica's pool (read at scrape)",
        registers,
        collect() {
          this.set(waiting());
        },
      });
    }
    new Gauge({ name: "nexus_database_pool_max", help: "Most connections the pool opens (NEXUS_DB_POOL_MAX)", registers }).set(sources.databasePoolMax);

    this.auditBatchSize = new Histogram({
      name: "nexus_audit_batch_size",
      help: "Audit events per group commit",
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
      registers,
    });
    new Gauge({
      name: "nexus_audit_events_waiting",
      help: "Audit events queued for the next group commit",
      registers,
      collect() {
        this.set(sources.auditEventsWaiting());
      },
    });
    this.auditWriteDuration = new Histogram({
      name: "nexus_audit_write_duration_seconds",
      help: "Time to write and commit one audit batch",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3],
      registers,
    });
    this.auditWriteFailures = new Counter({
      name: "nexus_audit_write_failures_total",
      help: "Audit batches the database refused or could not take (their calls failed closed)",
      registers,
    });

    new Gauge({
      name: "nexus_sealed",
      help: "1 while this replica holds no keys (sealed), 0 while unsealed",
      registers,
      collect() {
        this.set(sources.sealed() ? 1 : 0);
      },
    });
    new Gauge({
      name: "nexus_keyring_keys",
      help: "Wrapping keys in the unsealed keyring (0 while sealed)",
      registers,
      collect() {
        this.set(sources.keyringKeys());
      },
    });
    new Gauge({
      name: "nexus_keyring_active_key_id",
      help: "Id of the wrapping key new secrets use (0 while sealed)",
      registers,
      collect() {
        this.set(sources.activeKeyringKeyId());
      },
    });
    this.keyRotationRemaining = new Gauge({
      name: "nexus_key_rotation_remaining",
      help: "Data keys a running key rotation has still to re-wrap (0 when none runs)",
      registers,
      collect() {
        if (sources.keyRotationRemaining) this.set(sources.keyRotationRemaining());
      },
    });
    this.watchStreamsOpen = new Gauge({
      name: "nexus_watch_streams_open",
      help: "Open WatchSecrets streams",
      registers,
      collect() {
        if (sources.watchStreamsOpen) this.set(sources.watchStreamsOpen());
      },
    });
    new Gauge({
      name: "nexus_svid_expiry_timestamp_seconds",
      help: "notAfter of this server's own X.509-SVID, in seconds since the epoch",
      registers,
      collect() {
        this.set(sources.svidNotAfterMs() / 1000);
      },
    });
  }

  /** The observer the call pipeline reports each call to. */
  readonly calls: CallObserver = {
    callStarted: (path) => {
      const m = this.methodMetrics(path);
      m.inFlight.inc();
      const end = m.duration.startTimer();
      let ended = false;
      return (code) => {
        if (ended) return;
        ended = true;
        end();
        m.inFlight.dec();
        const name = STATUS_NAME.test(code) ? code : "UNKNOWN";
        let requests = m.requests.get(name);
        if (requests === undefined) m.requests.set(name, (requests = this.rpcRequests.labels(m.service, m.method, name)));
        requests.inc();
      };
    },
  };

  /**
   * The labelled children of one method's metrics, made once: a call then
   * costs no label hashing (prom-client hashes a label object on every inc
   * and observe). Keyed by served method paths only, and UNKNOWN, so bounded.
   */
  private methodMetrics(path: string): MethodMetrics {
    const key = this.methods.has(path) ? path : UNKNOWN;
    let m = this.perMethod.get(key);
    if (m === undefined) {
      const { service, method } = this.methods.get(path) ?? { service: UNKNOWN, method: UNKNOWN };
      m = { service, method, inFlight: this.rpcInFlight.labels(service, method), duration: this.rpcDuration.labels(service, method), requests: new Map() };
      this.perMethod.set(key, m);
    }
    return m;
  }

  readonly rateLimits: RateLimitObserver = {
    limited: (kind) => this.rateLimited.inc({ kind }),
  };

  readonly audit: AuditObserver = {
    batchWritten: (events, seconds) => {
      this.auditBatchSize.observe(events);
      this.auditWriteDuration.observe(seconds);
    },
    batchFailed: () => this.auditWriteFailures.inc(),
  };

  /** Records one database health ping's round trip. */
  databasePinged(seconds: number): void {
    this.databasePing.observe(seconds);
  }

  /** The text exposition Prometheus scrapes. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}

function splitPath(path: string): { service: string; method: string } {
  const [, service = UNKNOWN, method = UNKNOWN] = /^\/([^/]+)\/([^/]+)$/.exec(path) ?? [];
  return { service, method };
}
