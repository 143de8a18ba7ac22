// Turns a request body into the method's request message, or into the refusal
// a caller gets for it, the same way on both listeners: a body that does not
// decode is MALFORMED_REQUEST, and a field this server does not know is
// UNKNOWN_FIELD — never dropped; so is an enum value it does not know (proto3
// would keep the number, and a service would read it as "no filter" or "no
// stage"). (During a rolling upgrade an older replica
// that silently dropped a newer client's field would act on half a request,
// e.g. put a staged password live.) Refusals are handed to the CallPipeline,
// which audits them like any other.

import { fromBinary, fromJsonString, type DescEnum, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { protoCamelCase } from "@bufbuild/protobuf/reflect";
import type { WireFormat } from "../calls/call-context.js";
import { NexusError } from "../errors/nexus-error.js";

export type { WireFormat };

export type DecodedRequest = { readonly message: Message; readonly refusal?: undefined } | { readonly message?: undefined; readonly refusal: NexusError };

export function decodeRequest(schema: DescMessage, bytes: Uint8Array, format: WireFormat): DecodedRequest {
  return format === "binary" ? decodeBinary(schema, bytes) : decodeJson(schema, bytes);
}

export function malformedRequest(schema: DescMessage, format: WireFormat, detail = ""): NexusError {
  const form = format === "binary" ? "message" : "JSON message";
  return new NexusError("invalid_argument", `the request body is not a valid ${schema.typeName} ${form}${detail}`, { reason: "MALFORMED_REQUEST" });
}

export function messageTooLarge(limit: number): NexusError {
  return new NexusError("resource_exhausted", `the request message is larger than ${limit} bytes`, { reason: "MESSAGE_TOO_LARGE" });
}

function unknownField(field: string, description: string): NexusError {
  return new NexusError("invalid_argument", `${field}: ${description}; this server does not know it and will not ignore it`, {
    reason: "UNKNOWN_FIELD",
    violations: [{ field, description }],
  });
}

function decodeBinary(schema: DescMessage, bytes: Uint8Array): DecodedRequest {
  let message: Message;
  try {
    message = fromBinary(schema, bytes);
  } catch {
    return { refusal: malformedRequest(schema, "binary") };
  }
  const unknown = findUnknownField(schema, message, "binary");
  return unknown === undefined ? { message } : { refusal: unknownField(unknown.path, unknown.description) };
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });
const UNKNOWN_JSON_KEY = /key "((?:[^"\\]|\\.)*)" is unknown/;

function decodeJson(schema: DescMessage, bytes: Uint8Array): DecodedRequest {
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    return { refusal: malformedRequest(schema, "json", " (not UTF-8)") };
  }
  let message: Message;
  try {
    message = fromJsonString(schema, text);
  } catch (strictError) {
    // Only protobuf-es knows JSON names, aliases and well-known types; so ask
    // it again leniently to tell "unknown key or enum value" from "malformed".
    let lenientOk = true;
    try {
      fromJsonString(schema, text, { ignoreUnknownFields: true });
    } catch {
      lenientOk = false;
    }
    const problem = strictError instanceof Error ? strictError.message : "";
    if (lenientOk) {
      const key = UNKNOWN_JSON_KEY.exec(problem)?.[1];
      if (key !== undefined) return { refusal: unknownField(key.length <= 64 ? key : `${key.slice(0, 64)}…`, "unknown field") };
      const at = JSON_PROBLEM.exec(problem);
      if (at?.[1] === "field") return { refusal: unknownField(jsonFieldName(at[2]), "unknown enum value") };
      const description = at?.[1] === "enum" ? `unknown ${at[2]} value` : "unknown enum value";
      return { refusal: unknownField(unknownEnumNameIn(schema, JSON.parse(text)) ?? "(request)", description) };
    }
    return { refusal: malformedRequest(schema, "json", jsonProblem(problem)) };
  }
  // protobuf-es takes any number for an enum in JSON, as binary does.
  const unknown = findUnknownField(schema, message, "json");
  return unknown === undefined ? { message } : { refusal: unknownField(unknown.path, unknown.description) };
}

const JSON_PROBLEM = /^cannot decode (field|message|enum) ([\w.]+) from JSON: (.*)$/s;

/**
 * What a caller may be told of protobuf-es's JSON error: the field or the
 * well-known type, never the rest, which can quote a value (maybe a secret).
 */
function jsonFieldName(qualified: string): string {
  return protoCamelCase(qualified.slice(qualified.lastIndexOf(".") + 1));
}

function jsonProblem(message: string): string {
  const m = JSON_PROBLEM.exec(message);
  if (m === null) return "";
  const [, kind, name, rest] = m;
  if (kind === "field") return ` (field ${jsonFieldName(name)})`;
  if (name === "google.protobuf.FieldMask" && rest.startsWith("path names must be lowerCamelCase")) return " (FieldMask paths must be lowerCamelCase in JSON)";
  if (rest.startsWith("duplicate object key")) return " (a key appears twice)";
  if (kind === "enum" || name.startsWith("google.protobuf.")) return ` (not a valid ${name} value)`;
  return "";
}

type UnknownField = { readonly path: string; readonly description: string };

/**
 * The first thing a decoded message carries that this server does not know, at
 * any depth: an unknown field (protobuf-es keeps them in `$unknown`) or an enum
 * number that is not one of the enum's values; with the path that leads to it,
 * in the caller's names (proto names in binary, JSON names in JSON).
 */
export function findUnknownField(schema: DescMessage, message: Message, format: WireFormat, path = ""): UnknownField | undefined {
  const own = (message as { $unknown?: { no: number }[] }).$unknown;
  if (own !== undefined && own.length > 0) return { path: path === "" ? "(request)" : path, description: `unknown field number ${own[0].no}` };
  for (const field of schema.fields) {
    const name = format === "json" ? field.jsonName : field.name;
    const found = unknownInField(field, fieldValue(field, message), format, path === "" ? name : `${path}.${name}`);
    if (found !== undefined) return found;
  }
  return undefined;
}

function unknownInField(field: DescField, value: unknown, format: WireFormat, path: string): UnknownField | undefined {
  if (value === undefined || value === null) return undefined;
  const each = (entries: [string, unknown][], check: (item: unknown, at: string) => UnknownField | undefined) => {
    for (const [key, item] of entries) {
      const found = check(item, `${path}[${key}]`);
      if (found !== undefined) return found;
    }
    return undefined;
  };
  switch (field.fieldKind) {
    case "message":
      return findUnknownField(field.message, value as Message, format, path);
    case "enum":
      return unknownEnumNumber(field.enum, value, path);
    case "list": {
      const items = (value as unknown[]).map((item, i): [string, unknown] => [String(i), item]);
      if (field.listKind === "message") return each(items, (item, at) => findUnknownField(field.message, item as Message, format, at));
      if (field.listKind === "enum") return each(items, (item, at) => unknownEnumNumber(field.enum, item, at));
      return undefined;
    }
    case "map": {
      const items = Object.entries(value as Record<string, unknown>).map(([k, item]): [string, unknown] => [JSON.stringify(k), item]);
      if (field.mapKind === "message") return each(items, (item, at) => findUnknownField(field.message, item as Message, format, at));
      if (field.mapKind === "enum") return each(items, (item, at) => unknownEnumNumber(field.enum, item, at));
      return undefined;
    }
    default:
      return undefined;
  }
}

function unknownEnumNumber(desc: DescEnum, value: unknown, path: string): UnknownField | undefined {
  return typeof value === "number" && desc.value[value] === undefined ? { path, description: `unknown ${desc.typeName} value ${value}` } : undefined;
}

/**
 * Where a JSON request names an enum value that is not one of its enum's (the
 * JSON path), for a refusal to name the field; protobuf-es's error names only
 * the enum. Well-known types have JSON forms of their own and are not entered.
 */
function unknownEnumNameIn(schema: DescMessage, json: unknown, path = ""): string | undefined {
  if (json === null || typeof json !== "object" || Array.isArray(json) || schema.typeName.startsWith("google.protobuf.")) return undefined;
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    const field = schema.fields.find((f) => f.jsonName === key || f.name === key);
    if (field === undefined || value === null) continue;
    const at = path === "" ? field.jsonName : `${path}.${field.jsonName}`;
    const entries: [string, unknown][] =
      field.fieldKind === "list" && Array.isArray(value)
        ? value.map((item, i) => [`${at}[${i}]`, item])
        : field.fieldKind === "map" && typeof value === "object"
          ? Object.entries(value as object).map(([k, item]) => [`${at}[${JSON.stringify(k)}]`, item])
          : [[at, value]];
    const desc = field.fieldKind === "enum" ? field.enum : field.fieldKind === "list" && field.listKind === "enum" ? field.enum : field.fieldKind === "map" && field.mapKind === "enum" ? field.enum : undefined;
    const message = field.fieldKind === "message" ? field.message : field.fieldKind === "list" && field.listKind === "message" ? field.message : field.fieldKind === "map" && field.mapKind === "message" ? field.message : undefined;
    for (const [itemPath, item] of entries) {
      if (desc !== undefined && typeof item === "string" && desc.values.every((v) => v.name !== item)) return itemPath.length <= 128 ? itemPath : `${itemPath.slice(0, 128)}…`;
      if (message !== undefined) {
        const found = unknownEnumNameIn(message, item, itemPath);
        if (found !== undefined) return found;
      }
    }
  }
  return undefined;
}

function fieldValue(field: DescField, message: Message): unknown {
  const m = message as unknown as Record<string, unknown>;
  if (field.oneof === undefined) return m[field.localName];
  const oneof = m[field.oneof.localName] as { case?: string; value?: unknown } | undefined;
  return oneof?.case === field.localName ? oneof.value : undefined;
}
