// Turns a request body into the method's request message, or into the refusal
// a caller gets for it, the same way on both listeners: a body that does not
// decode is MALFORMED_REQUEST, and a field this server does not know is
// UNKNOWN_FIELD — never dropped. (During a rolling upgrade an older replica
// that silently dropped a newer client's field would act on half a request,
// e.g. put a staged password live.) Refusals are handed to the CallPipeline,
// which audits them like any other.

import { fromBinary, fromJsonString, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { protoCamelCase } from "@bufbuild/protobuf/reflect";
import { NexusError } from "../errors/nexus-error.js";

export type WireFormat = "binary" | "json";

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
  const unknown = findUnknownField(schema, message);
  return unknown === undefined ? { message } : { refusal: unknownField(unknown.path, `unknown field number ${unknown.number}`) };
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
  try {
    return { message: fromJsonString(schema, text) };
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
      return { refusal: unknownField("(request)", at?.[1] === "enum" ? `unknown ${at[2]} value` : "unknown enum value") };
    }
    return { refusal: malformedRequest(schema, "json", jsonProblem(problem)) };
  }
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

/**
 * The first unknown field a decoded binary message carries, at any depth
 * (protobuf-es keeps them in `$unknown`), with the path of proto field names
 * that leads to it.
 */
export function findUnknownField(schema: DescMessage, message: Message, path = ""): { path: string; number: number } | undefined {
  const own = (message as { $unknown?: { no: number }[] }).$unknown;
  if (own !== undefined && own.length > 0) return { path: path === "" ? "(request)" : path, number: own[0].no };
  for (const field of schema.fields) {
    const found = unknownInField(field, fieldValue(field, message), path === "" ? field.name : `${path}.${field.name}`);
    if (found !== undefined) return found;
  }
  return undefined;
}

function unknownInField(field: DescField, value: unknown, path: string): { path: string; number: number } | undefined {
  if (value === undefined || value === null) return undefined;
  switch (field.fieldKind) {
    case "message":
      return findUnknownField(field.message, value as Message, path);
    case "list":
      if (field.listKind !== "message") return undefined;
      for (const [i, item] of (value as Message[]).entries()) {
        const found = findUnknownField(field.message, item, `${path}[${i}]`);
        if (found !== undefined) return found;
      }
      return undefined;
    case "map":
      if (field.mapKind !== "message") return undefined;
      for (const [k, item] of Object.entries(value as Record<string, Message>)) {
        const found = findUnknownField(field.message, item, `${path}[${JSON.stringify(k)}]`);
        if (found !== undefined) return found;
      }
      return undefined;
    default:
      return undefined;
  }
}

function fieldValue(field: DescField, message: Message): unknown {
  const m = message as unknown as Record<string, unknown>;
  if (field.oneof === undefined) return m[field.localName];
  const oneof = m[field.oneof.localName] as { case?: string; value?: unknown } | undefined;
  return oneof?.case === field.localName ? oneof.value : undefined;
}
