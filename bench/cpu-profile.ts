// Summarizes a V8 .cpuprofile: self time per function (callFrame functionName
// + url) and per origin (our src/, each npm package, node internals, GC), so
// a profile reads as "where does a request's CPU go". Also a command:
//   node dist/bench/cpu-profile.js file.cpuprofile [top]

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly children?: number[];
}

export interface CpuProfile {
  readonly nodes: ProfileNode[];
  readonly samples: number[];
  readonly timeDeltas: number[];
  readonly startTime: number;
  readonly endTime: number;
}

export interface SelfTime {
  readonly name: string;
  readonly where: string;
  readonly ms: number;
  /** Share of the busy (non-idle) time. */
  readonly percent: number;
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly busyMs: number;
  readonly functions: SelfTime[];
  readonly origins: SelfTime[];
  /** Inclusive time of the request path's stages (STAGES), where the profile shows them. */
  readonly stages: SelfTime[];
}

/**
 * Stages of a request whose inclusive time is worth knowing: a frame matches
 * by function name and a piece of its URL. Async functions resume from the
 * microtask queue, so a handler's inclusive time only covers its synchronous
 * stretches; the stages below are synchronous leaves or near-leaves.
 */
export const STAGES: ReadonlyArray<{ label: string; fn: string; url: string }> = [
  { label: "peer certificate per call (grpc-js getAuthContext → TLSSocket.getPeerCertificate)", fn: "getAuthContext", url: "server-interceptors" },
  { label: "AbortController.abort per call (DOMException + stack)", fn: "abort", url: "abort_controller" },
  { label: "PostgreSQL driver: build and send a query (postgres.js execute)", fn: "execute", url: "postgres/src/connection" },
  { label: "PostgreSQL driver: socket writes deferred to setImmediate (postgres.js nextWrite)", fn: "nextWrite", url: "postgres/src/connection" },
  { label: "PostgreSQL driver: receive (postgres.js handle, incl. row parsing)", fn: "handle", url: "postgres/src/connection" },
  { label: "decrypt a version (SecretCipher.decryptVersion: AES-256-GCM open, JSON.parse)", fn: "decryptVersion", url: "secret-cipher" },
  { label: "encrypt a version (SecretCipher.encryptVersion: AES-256-GCM seal)", fn: "encryptVersion", url: "secret-cipher" },
  { label: "data key lookup (SecretCipher.dataKey; AES unwrap on a cache miss)", fn: "dataKey", url: "secret-cipher" },
  { label: "audit event MAC (AuditLog.row → HMAC over canonical JSON)", fn: "row", url: "audit-log" },
  { label: "audit group commit (AuditLog.flush)", fn: "flush", url: "audit-log" },
  { label: "authorization (AccessController.authorize)", fn: "authorize", url: "access-policy" },
  { label: "caller identity (PeerAuthenticator.authenticate)", fn: "authenticate", url: "peer-authenticator" },
  { label: "protobuf encode (toBinary)", fn: "toBinary", url: "to-binary" },
  { label: "protobuf decode (fromBinary)", fn: "fromBinary", url: "from-binary" },
  { label: "HTTP/2 response headers (node:http2 respond)", fn: "respond", url: "http2/core" },
];

export function summarizeProfile(profile: CpuProfile): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, { name: string; where: string; ms: number }>();
  const origin = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    // A sample's time runs until the next sample (as DevTools counts it).
    const ms = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    const frame = byId.get(profile.samples[i])?.callFrame;
    if (!frame) continue;
    total += ms;
    if (frame.functionName === "(idle)") {
      idle += ms;
      continue;
    }
    const where = shortUrl(frame.url, frame.lineNumber);
    const name = frame.functionName || "(anonymous)";
    const key = `${name}\u0000${where}`;
    const entry = fn.get(key) ?? { name, where, ms: 0 };
    entry.ms += ms;
    fn.set(key, entry);
    const o = originOf(frame);
    origin.set(o, (origin.get(o) ?? 0) + ms);
  }
  const busy = total - idle;
  const pct = (ms: number) => (100 * ms) / Math.max(1e-9, busy);
  return {
    totalMs: total,
    busyMs: busy,
    functions: [...fn.values()].sort((a, b) => b.ms - a.ms).map((e) => ({ ...e, percent: pct(e.ms) })),
    origins: [...origin.entries()].sort((a, b) => b[1] - a[1]).map(([name, ms]) => ({ name, where: "", ms, percent: pct(ms) })),
    stages: inclusive(profile, byId).map((s) => ({ ...s, percent: pct(s.ms) })),
  };
}

function inclusive(profile: CpuProfile, byId: Map<number, ProfileNode>): Array<{ name: string; where: string; ms: number }> {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const totals = new Array<number>(STAGES.length).fill(0);
  for (let i = 0; i < profile.samples.length; i++) {
    const ms = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    const seen = new Set<number>();
    for (let id: number | undefined = profile.samples[i]; id !== undefined; id = parent.get(id)) {
      const frame = byId.get(id)?.callFrame;
      if (!frame) break;
      STAGES.forEach((stage, k) => {
        if (!seen.has(k) && frame.functionName === stage.fn && frame.url.includes(stage.url)) {
          seen.add(k);
          totals[k] += ms;
        }
      });
    }
  }
  return STAGES.map((stage, k) => ({ name: stage.label, where: "", ms: totals[k] })).filter((s) => s.ms > 0);
}

function shortUrl(url: string, line: number): string {
  if (url === "") return "(native)";
  const m = /node_modules\/(.+)$/.exec(url) ?? /\/dist\/(.+)$/.exec(url);
  const file = m ? m[1] : url.replace(/^file:\/\//, "");
  return `${file}:${line + 1}`;
}

function originOf(frame: CallFrame): string {
  const url = frame.url;
  if (url === "") {
    if (frame.functionName.startsWith("(")) return frame.functionName; // (garbage collector), (program)
    return "native (V8 builtins, C++)";
  }
  if (url.startsWith("node:")) return "node: core (" + url.slice(5).split("/")[0] + ")";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  const own = /\/dist\/((?:src|gen)\/[^/]+)/.exec(url);
  if (own) return own[1];
  return url;
}

export function profileMarkdown(title: string, s: ProfileSummary, top = 10): string {
  const lines = [
    `### ${title}`,
    "",
    `Profiled ${(s.totalMs / 1000).toFixed(1)} s, of which ${(s.busyMs / 1000).toFixed(1)} s busy on the main thread (${((100 * s.busyMs) / s.totalMs).toFixed(0)} %). Shares are of busy time.`,
    "",
    `Top ${top} functions by self time:`,
    "",
    "| # | function | where | self ms | % busy |",
    "|---|---|---|---:|---:|",
    ...s.functions.slice(0, top).map((f, i) => `| ${i + 1} | \`${f.name}\` | ${f.where} | ${f.ms.toFixed(0)} | ${f.percent.toFixed(1)} |`),
    "",
    "Inclusive time of request stages (a stage's callees included):",
    "",
    "| stage | ms | % busy |",
    "|---|---:|---:|",
    ...s.stages.map((st) => `| ${st.name} | ${st.ms.toFixed(0)} | ${st.percent.toFixed(1)} |`),
    "",
    "Self time by origin:",
    "",
    "| origin | self ms | % busy |",
    "|---|---:|---:|",
    ...s.origins.slice(0, 14).map((o) => `| ${o.name} | ${o.ms.toFixed(0)} | ${o.percent.toFixed(1)} |`),
    "",
  ];
  return lines.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write("usage: node dist/bench/cpu-profile.js file.cpuprofile [top]\n");
    process.exit(2);
  }
  const summary = summarizeProfile(JSON.parse(readFileSync(file, "utf8")) as CpuProfile);
  process.stdout.write(profileMarkdown(file, summary, Number(process.argv[3] ?? 10)) + "\n");
}
