// Configuration: every setting has one NEXUS_* environment variable and one
// matching --flag (flags win). A missing or malformed value stops the start with
// a message that names the variable. Nothing here reads secrets; files that hold
// secrets (database URL, admin password) are read where they are used.

import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import path from "node:path";
import { isLogLevel, type LogLevel } from "../log/logger.js";
import { parseSpiffeId, parseTrustDomain } from "../identity/spiffe-id.js";
import { parseEndpointSocket } from "../workload-api/endpoint-socket.js";

export type Mode = "serve" | "dev";

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface NexusConfig {
  readonly mode: Mode;
  readonly listen: ListenAddress;
  readonly connectListen: ListenAddress;
  readonly healthListen: ListenAddress;
  /** Undefined: no metrics listener. */
  readonly metricsListen: ListenAddress | undefined;
  /** A file to append committed audit events to as JSON lines, "-" for stdout; undefined: no export. */
  readonly auditExport: string | undefined;
  readonly trustDomain: string;
  /** The three SVID files; undefined when the SVID comes from the Workload API. */
  readonly trustBundleFile: string | undefined;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
  /** The SPIFFE Workload API address (unix:///path or tcp://IP:port), when the SVID comes from there. */
  readonly spiffeEndpointSocket: string | undefined;
  /** Which of the Workload API's SVIDs to use; undefined = the first. */
  readonly spiffeId: string | undefined;
  readonly superuserId: string;
  /** Undefined: start the embedded PostgreSQL in dataDir. */
  readonly databaseUrl: string | undefined;
  readonly databaseCaFile: string | undefined;
  readonly dbPoolMax: number;
  readonly dataDir: string;
  readonly logLevel: LogLevel;
  readonly shutdownGraceMs: number;
  readonly maxMessageBytes: number;
  readonly maxConcurrentStreams: number;
  readonly keepaliveTimeMs: number;
  readonly adminPasswordFile: string | undefined;
  readonly maxSecretBytes: number;
  readonly cleanupIntervalMs: number;
  readonly auditRetentionMs: number;
  /** Scheduled RotateEncryptionKey every this long; 0: off. */
  readonly keyRotationIntervalMs: number;
  /** Scheduled RotateEncryptionKey once the active wrapping key has wrapped this many data keys. */
  readonly keyRotationMaxEncryptions: number;
  /** Data keys per re-wrap transaction. */
  readonly keyRotationBatch: number;
  /** Pause between re-wrap batches (throttle). */
  readonly keyRotationPauseMs: number;
  /** How long one WatchSecrets stream may stay open before it ends (the client resumes). */
  readonly watchMaxLifetimeMs: number;
  /** How long watch events are kept, and so how old a resumable cursor may be. */
  readonly watchRetentionMs: number;
  /** Per-caller token buckets (transport/rate-limits.ts); a rate of 0 turns one off. */
  readonly rateLimits: {
    readonly calls: { readonly perSecond: number; readonly burst: number };
    readonly authFailures: { readonly perSecond: number; readonly burst: number };
    /** How often replicas exchange their callers' usage through the database; 0: never (per-replica limits). */
    readonly syncIntervalMs: number;
  };
  /** The SPIFFE ID every replica of this Nexus serves with; only it may call ReplicaService. */
  readonly serverId: string;
  /** The host:port other replicas dial for peer unseal; undefined: this replica is not advertised. */
  readonly advertiseAddress: ListenAddress | undefined;
  /** Whether sealed replicas take the keys from an unsealed peer, and unsealed ones hand them out (ADR 0012). */
  readonly peerUnseal: boolean;
  /**
   * durable: every audit event is committed durably before its call answers.
   * relaxed: a batch of events only of methods that change nothing (reads)
   * commits without waiting for the WAL flush (see docs/threat-model.md).
   */
  readonly auditReadDurability: AuditReadDurability;
}

export type AuditReadDurability = "durable" | "relaxed";

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

type Source = Readonly<Record<string, string | undefined>>;

interface Setting<T> {
  readonly env: string;
  readonly help: string;
  readonly parse: (raw: string) => T;
  readonly serveDefault?: string;
  readonly devDefault?: string;
}

const text = (raw: string): string => raw;

export const SETTINGS = {
  listen: { env: "NEXUS_LISTEN", help: "gRPC mTLS listener", parse: parseListen, serveDefault: "0.0.0.0:8553", devDefault: "127.0.0.1:8553" },
  connectListen: { env: "NEXUS_CONNECT_LISTEN", help: "Connect/gRPC-Web mTLS listener", parse: parseListen, serveDefault: "0.0.0.0:8554", devDefault: "127.0.0.1:8554" },
  healthListen: { env: "NEXUS_HEALTH_LISTEN", help: "plaintext gRPC health listener", parse: parseListen, serveDefault: "0.0.0.0:8555", devDefault: "127.0.0.1:8555" },
  metricsListen: { env: "NEXUS_METRICS_LISTEN", help: "plain-HTTP Prometheus /metrics listener (serve: off unless set)", parse: parseListen, devDefault: "127.0.0.1:9553" },
  auditExport: { env: "NEXUS_AUDIT_EXPORT", help: "append every committed audit event as a JSON line to this file (- = stdout)", parse: text },
  trustDomain: { env: "NEXUS_TRUST_DOMAIN", help: "SPIFFE trust domain", parse: parseTrustDomainSetting, serveDefault: "spike.ist", devDefault: "spike.ist" },
  trustBundleFile: { env: "NEXUS_TRUST_BUNDLE", help: "PEM bundle of the trust domain's X.509 authorities", parse: text, devDefault: "certs-dev/ca.pem" },
  certFile: { env: "NEXUS_TLS_CERT", help: "this server's X.509-SVID (PEM chain)", parse: text, devDefault: "certs-dev/nexus.pem" },
  keyFile: { env: "NEXUS_TLS_KEY", help: "private key of the SVID (PEM)", parse: text, devDefault: "certs-dev/nexus-key.pem" },
  spiffeEndpointSocket: { env: "NEXUS_SPIFFE_ENDPOINT_SOCKET", help: "take the SVID and bundle from the SPIFFE Workload API at this address (unix:///path or tcp://IP:port; SPIFFE_ENDPOINT_SOCKET also works) instead of files", parse: parseEndpointSocketSetting },
  spiffeId: { env: "NEXUS_SPIFFE_ID", help: "which of the Workload API's SVIDs to serve with (default: the first)", parse: parseSpiffeIdSetting },
  superuserId: { env: "NEXUS_SUPERUSER_ID", help: "SPIFFE ID of the superuser (default spiffe://<trust domain>/spike/pilot/role/superuser)", parse: parseSpiffeIdSetting },
  databaseUrl: { env: "NEXUS_DATABASE_URL", help: "postgres:// URL; unset = embedded PostgreSQL", parse: text },
  databaseUrlFile: { env: "NEXUS_DATABASE_URL_FILE", help: "file holding the database URL (mounted secret)", parse: text },
  databaseCaFile: { env: "NEXUS_DATABASE_CA_FILE", help: "CA bundle for TLS to PostgreSQL (verify-full)", parse: text },
  dbPoolMax: { env: "NEXUS_DB_POOL_MAX", help: "maximum PostgreSQL connections", parse: positiveInt, serveDefault: String(Math.max(4, availableParallelism() * 4)), devDefault: "8" },
  dataDir: { env: "NEXUS_DATA_DIR", help: "folder for the embedded PostgreSQL and dev files", parse: text, serveDefault: ".nexus/data", devDefault: ".nexus/dev" },
  logLevel: { env: "NEXUS_LOG_LEVEL", help: "debug, info, warn or error", parse: parseLogLevel, serveDefault: "info", devDefault: "info" },
  shutdownGrace: { env: "NEXUS_SHUTDOWN_GRACE", help: "time in-flight calls get on shutdown (e.g. 10s)", parse: parseDuration, serveDefault: "10s", devDefault: "2s" },
  maxMessageBytes: { env: "NEXUS_MAX_MESSAGE_BYTES", help: "largest request or response message", parse: positiveInt, serveDefault: String(4 * 1024 * 1024), devDefault: String(4 * 1024 * 1024) },
  maxConcurrentStreams: { env: "NEXUS_MAX_CONCURRENT_STREAMS", help: "HTTP/2 streams per connection", parse: positiveInt, serveDefault: "256", devDefault: "256" },
  keepaliveTime: { env: "NEXUS_KEEPALIVE_TIME", help: "HTTP/2 keepalive ping interval", parse: parseDuration, serveDefault: "60s", devDefault: "60s" },
  adminPasswordFile: { env: "NEXUS_ADMIN_PASSWORD_FILE", help: "unseal at start with the password in this file (automation; see docs)", parse: text },
  maxSecretBytes: { env: "NEXUS_MAX_SECRET_BYTES", help: "largest encoded secret version", parse: positiveInt, serveDefault: String(64 * 1024), devDefault: String(64 * 1024) },
  cleanupInterval: { env: "NEXUS_CLEANUP_INTERVAL", help: "how often expired rows are removed", parse: parseDuration, serveDefault: "60s", devDefault: "60s" },
  auditRetention: { env: "NEXUS_AUDIT_RETENTION", help: "how long audit events are kept", parse: parseDuration, serveDefault: "365d", devDefault: "30d" },
  keyRotationInterval: { env: "NEXUS_KEY_ROTATION_INTERVAL", help: "rotate the encryption keys every this long (e.g. 90d); off by default", parse: parseDurationOrOff, serveDefault: "off", devDefault: "off" },
  keyRotationMaxEncryptions: {
    env: "NEXUS_KEY_ROTATION_MAX_ENCRYPTIONS",
    help: "rotate once the active wrapping key has wrapped this many data keys (AES-GCM random nonces: far below 2^32)",
    parse: positiveInt,
    serveDefault: String(2 ** 30),
    devDefault: String(2 ** 30),
  },
  keyRotationBatch: { env: "NEXUS_KEY_ROTATION_BATCH", help: "data keys re-wrapped per transaction during a rotation", parse: positiveInt, serveDefault: "500", devDefault: "500" },
  keyRotationPause: { env: "NEXUS_KEY_ROTATION_PAUSE", help: "pause between re-wrap batches (throttles a rotation)", parse: parseDuration, serveDefault: "0ms", devDefault: "0ms" },
  watchMaxLifetime: { env: "NEXUS_WATCH_MAX_LIFETIME", help: "longest a WatchSecrets stream stays open (the client resumes)", parse: parseDuration, serveDefault: "1h", devDefault: "1h" },
  rateLimitRps: { env: "NEXUS_RATE_LIMIT_RPS", help: "calls per second each caller (SPIFFE ID) may make, across replicas (0 = no limit)", parse: nonNegativeNumber, serveDefault: "1000", devDefault: "1000" },
  rateLimitBurst: { env: "NEXUS_RATE_LIMIT_BURST", help: "calls a caller may make at once above its rate", parse: positiveInt, serveDefault: "2000", devDefault: "2000" },
  authFailureRateLimitRps: {
    env: "NEXUS_AUTH_FAILURE_RATE_LIMIT_RPS",
    help: "failed authentications per second one identity (SPIFFE ID, or a rejected certificate) may make, across replicas (0 = no limit)",
    parse: nonNegativeNumber,
    serveDefault: "10",
    devDefault: "10",
  },
  authFailureRateLimitBurst: { env: "NEXUS_AUTH_FAILURE_RATE_LIMIT_BURST", help: "failed authentications one identity may make at once", parse: positiveInt, serveDefault: "100", devDefault: "100" },
  rateLimitSyncInterval: {
    env: "NEXUS_RATE_LIMIT_SYNC_INTERVAL",
    help: "how often replicas share their callers' rate-limit usage through the database (100ms to 1h; off = each replica limits alone)",
    parse: parseSyncInterval,
    serveDefault: "1s",
    devDefault: "1s",
  },
  watchRetention: { env: "NEXUS_WATCH_RETENTION", help: "how long watch events are kept (oldest resumable cursor)", parse: parseDuration, serveDefault: "24h", devDefault: "24h" },
  serverId: { env: "NEXUS_SERVER_ID", help: "SPIFFE ID of the Nexus replicas, the only caller of ReplicaService (default spiffe://<trust domain>/spike/nexus)", parse: parseSpiffeIdSetting },
  advertiseAddress: { env: "NEXUS_ADVERTISE_ADDRESS", help: "host:port of this replica's gRPC listener as other replicas dial it (peer unseal); default: NEXUS_LISTEN unless its host is 0.0.0.0 or ::", parse: parseListen },
  peerUnseal: { env: "NEXUS_PEER_UNSEAL", help: "on: a sealed replica takes the keys from an unsealed peer (mTLS, server SPIFFE ID only); off: it waits for Unseal", parse: parseOnOff, serveDefault: "on", devDefault: "on" },
  auditReadDurability: {
    env: "NEXUS_AUDIT_READ_DURABILITY",
    help: "durable: every audit event is flushed to disk before its call answers; relaxed: events of reads only (GetSecret, ListSecrets, …) commit without waiting for the flush, and a PostgreSQL crash can lose the last ones (docs/threat-model.md)",
    parse: parseAuditReadDurability,
    serveDefault: "durable",
    devDefault: "durable",
  },
} satisfies Record<string, Setting<unknown>>;

export type SettingName = keyof typeof SETTINGS;

/** The flag spelling of a setting: NEXUS_DB_POOL_MAX -> --db-pool-max. */
export function flagName(env: string): string {
  return "--" + env.replace(/^NEXUS_/, "").toLowerCase().replace(/_/g, "-");
}

/**
 * Reads the configuration for a mode from flags (["--listen=…", "--db-pool-max", "8"])
 * and the environment. `cwd` resolves relative file paths.
 */
export function loadConfig(mode: Mode, flags: readonly string[], env: Source = process.env, cwd = process.cwd()): NexusConfig {
  const { get, required, file, explicit } = settingsReader(mode, flags, env, cwd);
  const database = loadDatabaseConfig(mode, flags, env, cwd);
  const trustDomain = required<string>("trustDomain");
  const superuserId = get<string>("superuserId") ?? `spiffe://${trustDomain}/spike/pilot/role/superuser`;
  const svid = svidSettings(mode, env, cwd, { get, required, explicit });
  const listen = required<ListenAddress>("listen");
  const auditExport = auditExportTarget(get<string>("auditExport"), cwd);
  const auditReadDurability = required<AuditReadDurability>("auditReadDurability");
  // A relaxed commit can lose the audit id sequence's advance in a PostgreSQL
  // crash; the ids are then handed out again, and an export that already
  // passed them would skip the new events (writes included). Fail closed.
  if (auditReadDurability === "relaxed" && auditExport !== undefined) {
    throw new ConfigError(
      `${SETTINGS.auditReadDurability.env}=relaxed and ${SETTINGS.auditExport.env} are both set: the export follows event ids that a relaxed commit lost in a database crash can reuse; keep reads durable to export`,
    );
  }
  return {
    ...database,
    listen,
    connectListen: required("connectListen"),
    healthListen: required("healthListen"),
    metricsListen: get<ListenAddress>("metricsListen"),
    auditExport,
    trustDomain,
    ...svid,
    superuserId,
    dbPoolMax: required("dbPoolMax"),
    shutdownGraceMs: required("shutdownGrace"),
    maxMessageBytes: required("maxMessageBytes"),
    maxConcurrentStreams: required("maxConcurrentStreams"),
    keepaliveTimeMs: required("keepaliveTime"),
    adminPasswordFile: file("adminPasswordFile"),
    maxSecretBytes: required("maxSecretBytes"),
    cleanupIntervalMs: required("cleanupInterval"),
    auditRetentionMs: required("auditRetention"),
    keyRotationIntervalMs: required("keyRotationInterval"),
    keyRotationMaxEncryptions: required("keyRotationMaxEncryptions"),
    keyRotationBatch: required("keyRotationBatch"),
    keyRotationPauseMs: required("keyRotationPause"),
    watchMaxLifetimeMs: required("watchMaxLifetime"),
    watchRetentionMs: required("watchRetention"),
    rateLimits: {
      calls: { perSecond: required("rateLimitRps"), burst: required("rateLimitBurst") },
      authFailures: { perSecond: required("authFailureRateLimitRps"), burst: required("authFailureRateLimitBurst") },
      syncIntervalMs: required("rateLimitSyncInterval"),
    },
    serverId: get<string>("serverId") ?? `spiffe://${trustDomain}/spike/nexus`,
    advertiseAddress: get<ListenAddress>("advertiseAddress") ?? (WILDCARD_HOSTS.has(listen.host) || listen.port === 0 ? undefined : listen),
    peerUnseal: required("peerUnseal"),
    auditReadDurability,
  };
}

/** Listen hosts that name no address a peer could dial. */
const WILDCARD_HOSTS: ReadonlySet<string> = new Set(["0.0.0.0", "::", ""]);

/** What `nexus migrate` needs: the database and the log level, no TLS files or listeners. */
export type DatabaseConfig = Pick<NexusConfig, "mode" | "databaseUrl" | "databaseCaFile" | "dataDir" | "logLevel">;

/**
 * Reads only the database settings. Every other setting may still be given
 * (the same environment serves `nexus serve` and `nexus migrate`) and is not
 * checked; an unknown flag is still refused.
 */
export function loadDatabaseConfig(mode: Mode, flags: readonly string[], env: Source = process.env, cwd = process.cwd()): DatabaseConfig {
  const { get, required, file } = settingsReader(mode, flags, env, cwd);
  return {
    mode,
    databaseUrl: readDatabaseUrl(get<string>("databaseUrl"), file("databaseUrlFile")),
    databaseCaFile: file("databaseCaFile"),
    dataDir: path.resolve(cwd, required<string>("dataDir")),
    logLevel: required("logLevel"),
  };
}

/**
 * Where the server's SVID comes from: the Workload API when a socket is set
 * (NEXUS_SPIFFE_ENDPOINT_SOCKET, or the standard SPIFFE_ENDPOINT_SOCKET outside
 * dev mode), otherwise the three files. A socket and explicitly set files
 * together are refused, naming both: which one would win is not obvious.
 */
function svidSettings(mode: Mode, env: Source, cwd: string, reader: Pick<ReturnType<typeof settingsReader>, "get" | "required" | "explicit">) {
  const { get, required, explicit } = reader;
  let socket = get<string>("spiffeEndpointSocket");
  let socketName = `${SETTINGS.spiffeEndpointSocket.env} (${flagName(SETTINGS.spiffeEndpointSocket.env)})`;
  const standard = env.SPIFFE_ENDPOINT_SOCKET;
  // Dev mode serves its own dev certificates even in a shell that has a SPIRE agent's variable.
  if (socket === undefined && mode === "serve" && standard !== undefined && standard !== "") {
    try {
      socket = parseEndpointSocketSetting(standard);
    } catch (err) {
      throw new ConfigError(`SPIFFE_ENDPOINT_SOCKET: ${(err as Error).message}`);
    }
    socketName = "SPIFFE_ENDPOINT_SOCKET";
  }
  const spiffeId = get<string>("spiffeId");
  if (socket === undefined) {
    if (spiffeId !== undefined) throw new ConfigError(`${SETTINGS.spiffeId.env} (${flagName(SETTINGS.spiffeId.env)}) picks a Workload API SVID: set NEXUS_SPIFFE_ENDPOINT_SOCKET too`);
    return {
      trustBundleFile: path.resolve(cwd, required<string>("trustBundleFile")),
      certFile: path.resolve(cwd, required<string>("certFile")),
      keyFile: path.resolve(cwd, required<string>("keyFile")),
      spiffeEndpointSocket: undefined,
      spiffeId: undefined,
    };
  }
  const files = (["certFile", "keyFile", "trustBundleFile"] as const).filter((n) => explicit(n)).map((n) => `${SETTINGS[n].env} (${flagName(SETTINGS[n].env)})`);
  if (files.length > 0) {
    throw new ConfigError(`${socketName} and ${files.join(", ")} are both set: take the SVID from the Workload API or from files, not both`);
  }
  return { trustBundleFile: undefined, certFile: undefined, keyFile: undefined, spiffeEndpointSocket: socket, spiffeId };
}

function settingsReader(mode: Mode, flags: readonly string[], env: Source, cwd: string) {
  const given = { ...pickEnv(env), ...parseFlags(flags) };
  /** Whether the setting was given (not a default). */
  const explicit = (name: SettingName): boolean => {
    const v = given[SETTINGS[name].env];
    return v !== undefined && v !== "";
  };
  const get = <T>(name: SettingName): T | undefined => {
    const setting = SETTINGS[name] as Setting<T>;
    // An empty variable (common in manifests) means "not set": use the default.
    const explicit = given[setting.env];
    const raw = explicit !== undefined && explicit !== "" ? explicit : mode === "dev" ? setting.devDefault : setting.serveDefault;
    if (raw === undefined || raw === "") return undefined;
    try {
      return setting.parse(raw);
    } catch (err) {
      throw new ConfigError(`${setting.env} (${flagName(setting.env)}): ${(err as Error).message}`);
    }
  };
  const required = <T>(name: SettingName): T => {
    const value = get<T>(name);
    if (value === undefined) {
      const s = SETTINGS[name];
      throw new ConfigError(`${s.env} (${flagName(s.env)}) is required: ${s.help}`);
    }
    return value;
  };
  const file = (name: SettingName): string | undefined => {
    const value = get<string>(name);
    return value === undefined ? undefined : path.resolve(cwd, value);
  };
  return { get, required, file, explicit };
}

/** "-" stays stdout; a path is resolved against the working folder. */
function auditExportTarget(raw: string | undefined, cwd: string): string | undefined {
  if (raw === undefined) return undefined;
  return raw === "-" ? "-" : path.resolve(cwd, raw);
}

function readDatabaseUrl(url: string | undefined, urlFile: string | undefined): string | undefined {
  if (url !== undefined && urlFile !== undefined) {
    throw new ConfigError("NEXUS_DATABASE_URL and NEXUS_DATABASE_URL_FILE are both set: choose one");
  }
  if (urlFile === undefined) return url;
  let content: string;
  try {
    content = readFileSync(urlFile, "utf8").trim();
  } catch (err) {
    throw new ConfigError(`NEXUS_DATABASE_URL_FILE: cannot read ${urlFile}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
  }
  if (content === "") throw new ConfigError(`NEXUS_DATABASE_URL_FILE: ${urlFile} is empty`);
  return content;
}

function pickEnv(env: Source): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of Object.values(SETTINGS)) {
    const v = env[s.env];
    if (v !== undefined) out[s.env] = v;
  }
  return out;
}

function parseFlags(flags: readonly string[]): Record<string, string> {
  const byFlag = new Map(Object.values(SETTINGS).map((s) => [flagName(s.env), s.env]));
  const out: Record<string, string> = {};
  for (let i = 0; i < flags.length; i++) {
    const arg = flags[i];
    const eq = arg.indexOf("=");
    const name = eq === -1 ? arg : arg.slice(0, eq);
    const env = byFlag.get(name);
    if (env === undefined) throw new ConfigError(`unknown flag ${name} (see nexus --help)`);
    let value: string | undefined = eq === -1 ? flags[++i] : arg.slice(eq + 1);
    if (value === undefined) throw new ConfigError(`${name} needs a value`);
    value = value.trim();
    out[env] = value;
  }
  return out;
}

export function parseListen(raw: string): ListenAddress {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw.trim());
  if (!m) throw new Error(`"${raw}" is not host:port`);
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`port ${port} is out of range`);
  return { host: m[1].replace(/^\[|\]$/g, ""), port };
}

export function parseDuration(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(raw.trim());
  if (!m) throw new Error(`"${raw}" is not a duration like 500ms, 10s, 5m, 1h or 30d`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "ms" | "s" | "m" | "h" | "d"];
  return Math.round(Number(m[1]) * unit);
}

function parseDurationOrOff(raw: string): number {
  return raw.trim() === "off" || raw.trim() === "0" ? 0 : parseDuration(raw);
}

/**
 * A duration from 100 ms to 1 h, or off (0): shorter would be a database write
 * per replica many times a second; longer shares nothing useful, and past
 * 24.8 days a timer fires after 1 ms, which would exchange continuously.
 */
function parseSyncInterval(raw: string): number {
  const ms = parseDurationOrOff(raw);
  if (ms !== 0 && ms < 100) throw new Error(`"${raw}" is shorter than 100ms (use off to turn sharing off)`);
  if (ms > 3_600_000) throw new Error(`"${raw}" is longer than 1h (use off to turn sharing off)`);
  return ms;
}

function nonNegativeNumber(raw: string): number {
  if (!/^\d+(\.\d+)?$/.test(raw.trim())) throw new Error(`"${raw}" is not a number of 0 or more`);
  return Number(raw);
}

function parseOnOff(raw: string): boolean {
  const v = raw.trim().toLowerCase();
  if (v === "on" || v === "true" || v === "1") return true;
  if (v === "off" || v === "false" || v === "0") return false;
  throw new Error(`"${raw}" is not on or off`);
}

function parseAuditReadDurability(raw: string): AuditReadDurability {
  const v = raw.trim().toLowerCase();
  if (v === "durable" || v === "relaxed") return v;
  throw new Error(`"${raw}" is not durable or relaxed`);
}

function positiveInt(raw: string): number {
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1) throw new Error(`"${raw}" is not a positive integer`);
  return Number(raw);
}

function parseLogLevel(raw: string): LogLevel {
  if (!isLogLevel(raw)) throw new Error(`"${raw}" is not one of debug, info, warn, error`);
  return raw;
}

function parseTrustDomainSetting(raw: string): string {
  return parseTrustDomain(raw);
}

function parseEndpointSocketSetting(raw: string): string {
  return parseEndpointSocket(raw).address;
}

function parseSpiffeIdSetting(raw: string): string {
  return parseSpiffeId(raw).toString();
}

/** Help text for `nexus --help`, generated from the settings table. */
export function settingsHelp(): string {
  return Object.values(SETTINGS)
    .map((s: Setting<unknown>) => {
      const def = s.serveDefault ? ` [default ${s.serveDefault}]` : "";
      return `  ${flagName(s.env).padEnd(26)} ${s.env.padEnd(28)} ${s.help}${def}`;
    })
    .join("\n");
}
