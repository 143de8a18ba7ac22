// Parsing of the values commands take: key=value pairs (with @file and - for
// stdin), version lists, durations ("30d"), and times (RFC 3339 or a duration
// from now). Each failure is a usage error naming the flag.

import { readFile } from "node:fs/promises";
import { CliError } from "./cli-error.js";
import { prompt, readStdin } from "./password-input.js";

const DURATION_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 };

/** "90s", "15m", "12h", "30d" (and combinations like "1h30m") in milliseconds. */
export function parseDuration(raw: string, flag: string): number {
  const parts = [...raw.matchAll(/(\d+)([smhd])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join("") !== raw) throw CliError.usage(`${flag} ${raw}: say a duration like 90s, 15m, 12h or 30d`);
  return parts.reduce((sum, [, n, unit]) => sum + Number(n) * DURATION_UNITS[unit], 0);
}

/** An RFC 3339 time, or a duration from now ("30d": in 30 days; `ago` subtracts it instead). */
export function parseTime(raw: string, flag: string, direction: "future" | "past" = "future"): Date {
  if (/^\d+[smhd]/.test(raw)) {
    const ms = parseDuration(raw, flag);
    return new Date(Date.now() + (direction === "future" ? ms : -ms));
  }
  const time = new Date(raw);
  if (!/^\d{4}-\d{2}-\d{2}/.test(raw) || Number.isNaN(time.getTime())) {
    throw CliError.usage(`${flag} ${raw}: say an RFC 3339 time (2026-01-31T12:00:00Z) or a duration (${direction === "future" ? "30d: in 30 days" : "1h: an hour ago"})`);
  }
  return time;
}

export function parseCount(raw: string, flag: string): number {
  if (!/^\d+$/.test(raw) || Number(raw) > 0xffffffff) throw CliError.usage(`${flag} ${raw}: say a whole number`);
  return Number(raw);
}

/** "1,2,5" -> [1, 2, 5]. */
export function parseVersions(raw: string): number[] {
  return raw.split(",").map((v) => {
    const n = parseCount(v.trim(), "--versions");
    if (n === 0) throw CliError.usage("--versions: versions start at 1");
    return n;
  });
}

/**
 * key=value, key=@file (the file's content) and key=- (standard input, for one
 * key only). A file is taken byte for byte (certificates end in a newline);
 * from stdin one trailing newline is dropped, so `echo s3cret | … password=-`
 * stores what was meant, as --password-stdin does. On a terminal, key=- prompts
 * for the value without echo instead.
 */
export async function readPairs(pairs: readonly string[], what: string): Promise<Record<string, string>> {
  const data: Record<string, string> = {};
  let stdinUsed = false;
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw CliError.usage(`${what} ${pair}: say key=value, key=@file or key=-`);
    const key = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    if (key in data) throw CliError.usage(`${what}: key ${key} is given twice`);
    if (value === "-") {
      if (stdinUsed) throw CliError.usage(`${what}: only one key can read standard input (key=-)`);
      stdinUsed = true;
      data[key] = process.stdin.isTTY ? await prompt({ prompt: `${key}:` }) : (await readStdin()).replace(/\r?\n$/, "");
    } else if (value.startsWith("@")) {
      try {
        data[key] = await readFile(value.slice(1), "utf8");
      } catch (err) {
        throw CliError.usage(`${what} ${key}=@${value.slice(1)}: cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    } else {
      data[key] = value;
    }
  }
  return data;
}

/** k=v pairs where "k=" means remove k (for metadata merges); no files or stdin. */
export function parseEdits(pairs: readonly string[], flag: string): Map<string, string | undefined> {
  const edits = new Map<string, string | undefined>();
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw CliError.usage(`${flag} ${pair}: say key=value, or key= to remove the key`);
    const value = pair.slice(eq + 1);
    edits.set(pair.slice(0, eq), value === "" ? undefined : value);
  }
  return edits;
}

/** Commander's collector for a repeatable option. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** A --label or --stage value: current, pending or previous. */
export function parseLabel(raw: string, flag: string, allowed: readonly string[] = ["current", "pending", "previous"]): string {
  const label = raw.toLowerCase();
  if (!allowed.includes(label)) throw CliError.usage(`${flag} ${raw}: say ${allowed.join(", ").replace(/, ([^,]*)$/, " or $1")}`);
  return label;
}

export type GeneratorSpec =
  | { readonly kind: "password"; readonly length: number; readonly classes: readonly ("lowercase" | "uppercase" | "digits" | "symbols")[] }
  | { readonly kind: "bytes"; readonly length: number; readonly encoding: "hex" | "base64" | "base64url" }
  | { readonly kind: "external" };

const CLASS_NAMES: Record<string, "lowercase" | "uppercase" | "digits" | "symbols"> = {
  lower: "lowercase",
  lowercase: "lowercase",
  upper: "uppercase",
  uppercase: "uppercase",
  digits: "digits",
  digit: "digits",
  symbols: "symbols",
  symbol: "symbols",
};

/** password:32[:lower,upper,digits,symbols] | bytes:32[:hex|base64|base64url] | external. */
export function parseGenerator(raw: string, flag: string): GeneratorSpec {
  const [kind, length, extra, ...rest] = raw.split(":");
  const usage = () => CliError.usage(`${flag} ${raw}: say password:LENGTH[:lower,upper,digits,symbols], bytes:LENGTH[:hex|base64|base64url] or external`);
  if (rest.length > 0) throw usage();
  if (kind === "external" && length === undefined) return { kind };
  if ((kind !== "password" && kind !== "bytes") || length === undefined) throw usage();
  const n = parseCount(length, flag);
  if (kind === "password") {
    const classes = extra === undefined || extra === "" ? [] : extra.split(",").map((c) => CLASS_NAMES[c.trim().toLowerCase()] ?? (() => { throw usage(); })());
    return { kind, length: n, classes };
  }
  const encoding = (extra ?? "base64").toLowerCase();
  if (encoding !== "hex" && encoding !== "base64" && encoding !== "base64url") throw usage();
  return { kind, length: n, encoding };
}
