// What `spike` prints. Data goes to stdout, messages to stderr. Readable by
// default (aligned tables, relative times); with `-o json` each command prints
// its response message as one proto3 JSON document (camelCase), and nothing else
// on stdout, so `$(…)` and jq get exactly the data.

import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import Table from "cli-table3";
import { CliError } from "./cli-error.js";

export type OutputFormat = "text" | "json";

export interface Output {
  readonly format: OutputFormat;
  /** A response message as proto3 JSON (every field, camelCase). */
  message<D extends DescMessage>(schema: D, message: MessageShape<D>): void;
  /** A JSON value that is not a proto message (e.g. what `policy apply` did). */
  json(value: unknown): void;
  /** An aligned table without borders, like kubectl's. */
  /** One message as one line of JSON (streams: one line per message). */
  messageLine<D extends DescMessage>(schema: D, message: MessageShape<D>): void;
  table(head: readonly string[], rows: ReadonlyArray<readonly string[]>): void;
  /** A line of data on stdout. */
  line(text: string): void;
  /** A message for a person on stderr (never in json mode's stdout). */
  note(text: string): void;
}

export function parseFormat(raw: string | undefined): OutputFormat {
  if (raw === undefined || raw === "text") return "text";
  if (raw === "json") return "json";
  throw CliError.usage(`-o ${raw}: say text or json`);
}

export function createOutput(format: OutputFormat, stdout: NodeJS.WritableStream = process.stdout, stderr: NodeJS.WritableStream = process.stderr): Output {
  return {
    format,
    message(schema, message) {
      stdout.write(JSON.stringify(toJson(schema, message, { alwaysEmitImplicit: true }), null, 2) + "\n");
    },
    messageLine(schema, message) {
      stdout.write(JSON.stringify(toJson(schema, message, { alwaysEmitImplicit: true })) + "\n");
    },
    json(value) {
      stdout.write(JSON.stringify(value, null, 2) + "\n");
    },
    table(head, rows) {
      const table = new Table({
        head: [...head],
        chars: BORDERLESS,
        style: { head: [], border: [], "padding-left": 0, "padding-right": 2 },
      });
      table.push(...rows.map((r) => [...r]));
      // cli-table3 pads the last column too; trailing blanks only get in the way of grep and diff.
      stdout.write(table.toString().split("\n").map((l) => l.trimEnd()).join("\n") + "\n");
    },
    line(text) {
      stdout.write(text + "\n");
    },
    note(text) {
      stderr.write(text + "\n");
    },
  };
}

const BORDERLESS = {
  top: "", "top-mid": "", "top-left": "", "top-right": "",
  bottom: "", "bottom-mid": "", "bottom-left": "", "bottom-right": "",
  left: "", "left-mid": "", mid: "", "mid-mid": "",
  right: "", "right-mid": "", middle: "",
};

const UNITS: ReadonlyArray<[Intl.RelativeTimeFormatUnit, number]> = [
  ["year", 365 * 24 * 3600_000],
  ["month", 30 * 24 * 3600_000],
  ["day", 24 * 3600_000],
  ["hour", 3600_000],
  ["minute", 60_000],
  ["second", 1000],
];

/** "3 minutes ago", "in 2 hours"; "-" for an unset time. */
export function relativeTime(time: Timestamp | Date | undefined, now = Date.now()): string {
  if (time === undefined) return "-";
  const date = time instanceof Date ? time : timestampDate(time);
  const delta = date.getTime() - now;
  const format = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
  for (const [unit, ms] of UNITS) {
    if (Math.abs(delta) >= ms || unit === "second") return format.format(Math.round(delta / ms), unit);
  }
  return "-";
}
