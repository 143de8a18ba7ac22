// The database floor: Debian's pgbench running the very statements a PutSecret
// and a GetSecret make the server run (the put group commit, appendMany in
// src/store/secret-store.ts; the audit group commit of src/store/audit-store.ts
// insertBatch, which carries GetSecret's reads), prepared, with as many
// connections as the server's pool. No gRPC, no TLS, no crypto, no Node: what
// is left is PostgreSQL's cost, which Nexus cannot go below.
//
// pgbench variables are numbers or fixed strings, so two adaptations keep the
// statements identical: GetSecret reads copies of the read secrets (same rows,
// same sizes) stored at the paths "0".."N-1" (a fixed random batch of them);
// each client appends to its own write secrets, a bookkeeping SELECT building
// each batch with their next version numbers (a version is only written if it
// is latest + 1) and expires_at NULL.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import type postgres from "postgres";
import { LatencyHistogram } from "./latency-histogram.js";
import { writePath } from "./load-protocol.js";

export interface PgbenchBinary {
  readonly path: string;
  readonly version: string;
  /** How it got here, when the harness installed it. */
  readonly installed?: string;
}

/** Finds pgbench, installing Debian's postgresql-contrib (apt-get, as root) if it is missing. */
export function findPgbench(log: (line: string) => void): PgbenchBinary | undefined {
  const found = locate();
  if (found) return { path: found, version: version(found) };
  if (process.getuid?.() !== 0) {
    log("pgbench not found and not root: skipping the database floor (apt-get install postgresql-contrib)");
    return undefined;
  }
  for (const pkg of ["postgresql-contrib", "postgresql-client"]) {
    try {
      log(`pgbench not found: apt-get install -y ${pkg}`);
      execFileSync("apt-get", ["update", "-qq"], { stdio: "ignore", timeout: 180_000 });
      execFileSync("apt-get", ["install", "-y", "-qq", pkg], { stdio: "ignore", timeout: 300_000, env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
      const now = locate();
      if (now) return { path: now, version: version(now), installed: `apt-get install -y ${pkg}` };
    } catch (err) {
      log(`apt-get install ${pkg} failed: ${(err as Error).message}`);
    }
  }
  return undefined;
}

function locate(): string | undefined {
  if (existsSync("/usr/bin/pgbench")) return "/usr/bin/pgbench";
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  for (const v of readdirSync(root).sort().reverse()) {
    const p = path.join(root, v, "bin", "pgbench");
    if (existsSync(p)) return p;
  }
  return undefined;
}

function version(bin: string): string {
  try {
    return execFileSync(bin, ["--version"], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

/** readVersion(path, 0), as in src/store/secret-store.ts: GetSecret's second read, when the first found nothing to serve. */
export const GET_SQL = `
SELECT s.id, s.path, s.latest_version, s.data_key_id, s.wrapped_data_key, s.keyring_key_id,
       (s.expires_at IS NOT NULL AND s.expires_at <= now()) AS expired,
       v.version, v.ciphertext, v.created_at, v.deleted_at
FROM secrets s
LEFT JOIN LATERAL (
  SELECT version, ciphertext, created_at, deleted_at FROM secret_versions
  WHERE secret_id = s.id AND deleted_at IS NULL AND ciphertext IS NOT NULL
  ORDER BY version DESC LIMIT 1
) v ON true
WHERE s.path = :path`;

/**
 * AuditStore.insertBatch, as in src/store/audit-store.ts: the audit group
 * commit, in which each GetSecret's read rides with its "ok" event.
 */
export const AUDIT_BATCH_SQL = `
WITH t AS MATERIALIZED (
  SELECT * FROM json_to_recordset(:batch::text::json) AS t(
    replica_id text, sequence bigint, time timestamptz, request_id text, caller text, rpc text, path text, version int,
    outcome text, code text, detail jsonb, mac_hex text, signature_hex text, signer_hex text, i int, read_path text, read_version int, read_label text)
), r AS MATERIALIZED (
  SELECT t.i, s.id, s.path, s.data_key_id, s.wrapped_data_key, s.keyring_key_id, v.version, v.ciphertext, v.created_at,
         s.latest_version, s.current_version, s.pending_version, s.previous_version, s.label_epoch, s.labels_mac
  FROM t
  JOIN secrets s ON s.path = t.read_path AND (s.expires_at IS NULL OR s.expires_at > now())
  JOIN secret_versions v ON v.secret_id = s.id
    AND v.version = CASE WHEN t.read_version <> 0 THEN t.read_version
                         WHEN t.read_label = 'pending' THEN s.pending_version
                         WHEN t.read_label = 'previous' THEN s.previous_version
                         ELSE s.current_version END
    AND v.deleted_at IS NULL AND v.ciphertext IS NOT NULL
), ins AS (
  INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
  SELECT replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, decode(mac_hex, 'hex'),
         decode(signature_hex, 'hex'), decode(signer_hex, 'hex')
  FROM t WHERE t.read_path IS NULL OR t.i IN (SELECT i FROM r)
)
SELECT * FROM r`;

/** SecretStore.appendMany: the group commit of puts to different secrets, as in src/store/secret-store.ts. */
export const PUT_BATCH_SQL = `
WITH t AS MATERIALIZED (
  SELECT * FROM json_to_recordset(:batch::text::json) AS t(
    i int, secret_id uuid, new_version int, data_key_id int, ciphertext_hex text, created_by text, expires_at timestamptz,
    new_current int, new_pending int, new_previous int, new_epoch bigint, new_labels_mac_hex text, expected_labels_mac_hex text,
    replica_id text, sequence bigint, time timestamptz, request_id text, caller text, rpc text, path text, version int,
    outcome text, code text, detail jsonb, mac_hex text, signature_hex text, signer_hex text,
    idem_caller text, idem_key text, idem_rpc text, idem_request_mac_hex text, idem_response_hex text, idem_response_mac_hex text,
    idem_created_at timestamptz)
), cur AS MATERIALIZED (
  SELECT id, latest_version, data_key_id, current_version, pending_version, previous_version, label_epoch, labels_mac,
         (expires_at IS NOT NULL AND expires_at <= now()) AS expired
  FROM secrets WHERE id IN (SELECT secret_id FROM t) ORDER BY id FOR UPDATE NOWAIT
), upd AS (
  UPDATE secrets s
  SET latest_version = t.new_version, updated_at = now(), expires_at = coalesce(t.expires_at, s.expires_at),
      current_version = t.new_current, pending_version = t.new_pending, previous_version = t.new_previous,
      label_epoch = t.new_epoch, labels_mac = decode(t.new_labels_mac_hex, 'hex')
  FROM t JOIN cur ON cur.id = t.secret_id
  WHERE s.id = t.secret_id AND s.latest_version = t.new_version - 1 AND s.data_key_id = t.data_key_id AND (s.expires_at IS NULL OR s.expires_at > now())
    AND s.labels_mac IS NOT DISTINCT FROM decode(t.expected_labels_mac_hex, 'hex')
  RETURNING s.id, s.max_versions, t.i
), ins AS (
  INSERT INTO secret_versions (secret_id, version, ciphertext, created_by, created_at)
  SELECT upd.id, t.new_version, decode(t.ciphertext_hex, 'hex'), t.created_by, coalesce(t.idem_created_at, now()) FROM upd JOIN t ON t.i = upd.i
  RETURNING secret_id, created_at
), pruned AS (
  DELETE FROM secret_versions v USING upd JOIN t ON t.i = upd.i
  WHERE v.secret_id = upd.id AND v.version <= t.new_version - upd.max_versions
    AND v.version IS DISTINCT FROM t.new_current AND v.version IS DISTINCT FROM t.new_pending
    AND v.version IS DISTINCT FROM t.new_previous
), aud AS (
  INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
  SELECT t.replica_id, t.sequence, t.time, t.request_id, t.caller, t.rpc, t.path, t.version, t.outcome, t.code, t.detail, decode(t.mac_hex, 'hex'),
         decode(t.signature_hex, 'hex'), decode(t.signer_hex, 'hex')
  FROM t JOIN upd ON upd.i = t.i
), idem AS (
  INSERT INTO idempotency_keys (caller, key, rpc, request_mac, response, response_mac, created_at)
  SELECT t.idem_caller, t.idem_key, t.idem_rpc, decode(t.idem_request_mac_hex, 'hex'), decode(t.idem_response_hex, 'hex'), decode(t.idem_response_mac_hex, 'hex'),
         t.idem_created_at
  FROM t JOIN upd ON upd.i = t.i WHERE t.idem_key IS NOT NULL
)
SELECT t.i, ins.created_at, cur.latest_version, cur.expired, cur.data_key_id, cur.current_version, cur.pending_version,
       cur.previous_version, cur.label_epoch, cur.labels_mac
FROM t LEFT JOIN cur ON cur.id = t.secret_id LEFT JOIN ins ON ins.secret_id = t.secret_id`;

/** Marks the floor's own bookkeeping statements, which the server has no counterpart of. */
export const FLOOR_BOOKKEEPING = "floor_bookkeeping";

export const REPLICA = "pgbench-floor";

export interface FloorData {
  readonly readSecrets: number;
  readonly clients: number;
  /** Spacing between the write secrets the clients own, so they sit apart in the table. */
  readonly writeSpread: number;
  readonly ciphertextHex: string;
}

/** Copies the read secrets (rows and versions) to the paths "0".."N-1"; idempotent. */
export async function prepareFloorData(sql: postgres.Sql, readSecrets: number, clients: number, writeSecrets: number): Promise<FloorData> {
  // pgbench's puts go to copies of the write secrets outside bench/ (floor/write/…): its
  // statements carry placeholder MACs, which would make the server's own later puts to
  // those secrets fail their label integrity check (and no key rotation unwraps the copies,
  // which the rotation phase therefore deletes).
  await sql`
    INSERT INTO secrets (id, path, latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, created_at, updated_at,
                         current_version, pending_version, previous_version, label_epoch, labels_mac)
    SELECT md5('pgbench-write/' || id::text)::uuid, 'floor/write/' || substr(path, length('bench/write/') + 1),
           latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, created_at, updated_at,
           current_version, pending_version, previous_version, label_epoch, labels_mac
    FROM secrets WHERE path >= 'bench/write/' AND path < 'bench/write0'
    ON CONFLICT DO NOTHING`;
  // With their labels: GetSecret reads the version "current" names, so a copy
  // without them reads nothing and its audit event is never written.
  await sql`
    INSERT INTO secrets (id, path, latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, created_at, updated_at,
                         current_version, pending_version, previous_version, label_epoch, labels_mac)
    SELECT md5('pgbench-read/' || id::text)::uuid, (row_number() OVER (ORDER BY path) - 1)::text,
           latest_version, max_versions, data_key_id, wrapped_data_key, keyring_key_id, created_at, updated_at,
           current_version, pending_version, previous_version, label_epoch, labels_mac
    FROM secrets WHERE path >= 'bench/read/' AND path < 'bench/read0'
    ON CONFLICT DO NOTHING`;
  await sql`
    INSERT INTO secret_versions (secret_id, version, ciphertext, created_at, created_by, deleted_at)
    SELECT md5('pgbench-read/' || v.secret_id::text)::uuid, v.version, v.ciphertext, v.created_at, v.created_by, v.deleted_at
    FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
    WHERE s.path >= 'bench/read/' AND s.path < 'bench/read0'
    ON CONFLICT DO NOTHING`;
  await sql`ANALYZE secrets`;
  await sql`ANALYZE secret_versions`;
  const [ct] = await sql`
    SELECT encode(v.ciphertext, 'hex') AS hex FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
    WHERE s.path = ${writePath(0)} ORDER BY v.version DESC LIMIT 1`;
  return { readSecrets, clients, writeSpread: Math.max(1, Math.floor(writeSecrets / clients)), ciphertextHex: ct.hex as string };
}

export interface PgbenchResult {
  readonly name: string;
  readonly command: string;
  readonly clients: number;
  readonly durationS: number;
  /** Requests per second the floor served: statements per second × requests per statement. */
  readonly tps: number;
  readonly transactions: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly extra: Record<string, number>;
  readonly failed?: string;
}

export interface FloorRun {
  readonly bin: PgbenchBinary;
  readonly url: string;
  readonly dir: string;
  readonly data: FloorData;
  readonly durationS: number;
  readonly threads: number;
}

/**
 * PutSecret as the server runs it: appendMany with `putBatch` puts per
 * statement (the mean batch the server wrote), each client on its own
 * `putBatch` secrets; a bookkeeping SELECT per transaction reads their next
 * version numbers (the server knows them from memory).
 */
export async function pgbenchPut(run: FloorRun, putBatch: number): Promise<PgbenchResult> {
  const batch = Math.max(1, Math.min(Math.round(putBatch), run.data.writeSpread));
  const common = {
    init: "0",
    created_by: "spiffe://spike.ist/bench/writer",
    replica: REPLICA,
    time: new Date().toISOString(),
    request_id: "00000000-0000-4000-8000-00000000beef",
    rpc_put: "/spike.nexus.v1.SecretService/PutSecret",
    write_path: writePath(0),
    outcome: "ok",
    code: "OK",
    detail: "{}",
  };
  const file = path.join(run.dir, "put.sql");
  // The bookkeeping SELECT builds the batch as the server would: this client's
  // secrets, each at its next version, the same ciphertext and audit fields.
  await writeFile(file, [
    "\\if :init = 0",
    `\\set idx :client_id * ${run.data.writeSpread}`,
    `SELECT array_agg(id ORDER BY path)::text AS sids, 1 AS ${FLOOR_BOOKKEEPING} FROM (`,
    `  SELECT id, path FROM secrets WHERE path >= 'floor/write/s' || lpad(:idx::text, 6, '0') AND path < 'floor/write0' ORDER BY path LIMIT ${batch}) x \\gset`,
    "\\set init 1",
    "\\endif",
    // A put makes its new version current and the old current previous (the
    // server's default labels), with a label MAC the next put expects: the
    // floor's copies are outside bench/, so placeholder MACs break nothing.
    `SELECT json_agg(json_build_object('i', n - 1, 'secret_id', id, 'new_version', latest_version + 1, 'data_key_id', data_key_id,`,
    "    'ciphertext_hex', :ct::text, 'created_by', :created_by::text, 'expires_at', NULL,",
    "    'new_current', latest_version + 1, 'new_pending', NULL, 'new_previous', current_version, 'new_epoch', coalesce(label_epoch, 0) + 1,",
    "    'new_labels_mac_hex', :mac_hex::text, 'expected_labels_mac_hex', encode(labels_mac, 'hex'),",
    "    'replica_id', :replica::text, 'sequence', n, 'time', now(),",
    "    'request_id', :request_id::text, 'caller', :created_by::text, 'rpc', :rpc_put::text, 'path', :write_path::text,",
    "    'version', latest_version + 1, 'outcome', 'ok', 'code', 'OK', 'detail', '{}'::json, 'mac_hex', :mac_hex::text,",
    "    'signature_hex', NULL, 'signer_hex', NULL))::text AS batch,",
    `  1 AS ${FLOOR_BOOKKEEPING}`,
    "FROM (SELECT id, latest_version, data_key_id, current_version, label_epoch, labels_mac, row_number() OVER (ORDER BY path) AS n",
    "      FROM secrets WHERE id = ANY(:sids::uuid[])) x \\gset",
    PUT_BATCH_SQL.trim(),
    "",
  ].join("\n"));
  const result = await pgbench(run, "put", [file], { ...common, ct: run.data.ciphertextHex, mac_hex: "ab".repeat(32) });
  return { ...result, tps: result.tps * batch, transactions: result.transactions * batch, extra: { ...result.extra, putsPerStatement: batch } };
}

/**
 * GetSecret as the server runs it under load: the audit group commit's
 * statement with `auditBatch` reads in it (the mean batch the server wrote).
 * pgbench's variables are fixed strings, so every statement reads the same
 * `auditBatch` secrets, drawn at random once; all of them sit in shared
 * buffers either way. Throughput is reads per second (statements × batch).
 * One client with a batch of one is GetSecret at one call in flight: a read
 * and its audit event, one durable commit per statement.
 */
export async function pgbenchGet(run: FloorRun, auditBatch: number, clients = run.data.clients, name = "get"): Promise<PgbenchResult> {
  const batch = Math.max(1, Math.round(auditBatch));
  // pgbench reads "-f file@weight": no "@" in the file name.
  const get = path.join(run.dir, `${name.replace("@", "-at-")}.sql`);
  await writeFile(get, [AUDIT_BATCH_SQL.trim(), ""].join("\n"));
  const paths = new Set<number>();
  while (paths.size < Math.min(batch, run.data.readSecrets)) paths.add(Math.floor(Math.random() * run.data.readSecrets));
  const read = [...paths];
  const time = new Date().toISOString();
  const events = Array.from({ length: batch }, (_, i) => ({
    replica_id: REPLICA, sequence: i + 1, time, request_id: "00000000-0000-4000-8000-00000000beef",
    caller: "spiffe://spike.ist/bench/reader", rpc: "/spike.nexus.v1.SecretService/GetSecret", path: String(read[i % read.length]),
    version: null, outcome: "ok", code: "OK", detail: {}, mac_hex: "ab".repeat(32), i, read_path: String(read[i % read.length]), read_version: 0,
  }));
  const result = await pgbench({ ...run, data: { ...run.data, clients }, threads: Math.min(run.threads, clients) }, name, [get], { batch: JSON.stringify(events) });
  return { ...result, tps: result.tps * batch, transactions: result.transactions * batch, extra: { ...result.extra, readsPerStatement: batch } };
}

async function pgbench(run: FloorRun, name: string, scripts: string[], vars: Record<string, string>): Promise<PgbenchResult> {
  const logDir = path.join(run.dir, `log-${name}-${Date.now()}`);
  await mkdir(logDir, { recursive: true });
  const args = [
    "-n",
    "-M", "prepared",
    "-c", String(run.data.clients),
    "-j", String(run.threads),
    "-T", String(run.durationS),
    "-l", "--log-prefix", path.join(logDir, "tx"),
    ...scripts.flatMap((s) => ["-f", s]),
    ...Object.entries(vars).flatMap(([k, v]) => ["-D", `${k}=${v}`]),
    run.url,
  ];
  const command = `pgbench -n -M prepared -c ${run.data.clients} -j ${run.threads} -T ${run.durationS} ${scripts.map((s) => `-f ${path.basename(s)}`).join(" ")}`;
  const { code, stdout, stderr } = await exec(run.bin.path, args);
  const base = { name, command, clients: run.data.clients, durationS: run.durationS };
  if (code !== 0) {
    return { ...base, tps: NaN, transactions: 0, p50: NaN, p99: NaN, p999: NaN, extra: {}, failed: `${stderr.trim()}\n${stdout.trim()}`.slice(-2000) };
  }
  // Per script: "SQL script 1: …\n - weight: …\n - 1234 transactions (…% of total, tps = 123.4)".
  const scriptStats = [...stdout.matchAll(/SQL script (\d+): (.+)\n - weight: .*\n - (\d+) transactions \([\d.]+% of total, tps = ([\d.]+)\)/g)];
  const total = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout);
  const main = scriptStats.find((m) => m[1] === "1");
  const tps = main ? Number(main[4]) : Number(total?.[1]);
  const transactions = main ? Number(main[3]) : Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1]);
  const extra: Record<string, number> = { totalTps: Number(total?.[1]) };
  for (const m of scriptStats) extra[`script${m[1]}Tps`] = Number(m[4]);
  const h = new LatencyHistogram();
  for (const f of readdirSync(logDir)) {
    for (const line of (await readFile(path.join(logDir, f), "utf8")).split("\n")) {
      const cols = line.split(" ");
      // client_id transaction_no time(µs) script_no time_epoch time_us
      if (cols.length >= 4 && cols[3] === "0") h.record(Number(cols[2]) / 1000);
    }
  }
  return { ...base, tps, transactions, p50: h.percentile(50), p99: h.percentile(99), p999: h.percentile(99.9), extra };
}

function exec(file: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr = (stderr + c).slice(-10_000)));
    child.once("close", (code) => resolve({ code, stdout, stderr }));
    child.once("error", (err) => resolve({ code: -1, stdout, stderr: err.message }));
  });
}

/** How many of the floor's puts took effect (their audit row exists only if the version was written). */
export async function floorPutsWritten(sql: postgres.Sql): Promise<number> {
  const [row] = await sql`SELECT count(*)::int AS n FROM audit_events WHERE replica_id = ${REPLICA} AND rpc = '/spike.nexus.v1.SecretService/PutSecret'`;
  return row.n as number;
}

/** How many of the floor's reads found their version (the statement writes a read's audit row only then). */
export async function floorReadsFound(sql: postgres.Sql): Promise<number> {
  const [row] = await sql`SELECT count(*)::int AS n FROM audit_events WHERE replica_id = ${REPLICA} AND rpc = '/spike.nexus.v1.SecretService/GetSecret'`;
  return row.n as number;
}
