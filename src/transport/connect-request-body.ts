// Decodes a request on the Connect listener before connect-es sees it (unary
// calls, and server streams, whose request is one enveloped message).
// connect-es parses the body before any handler or interceptor runs, so a body
// that does not parse would be answered there — INTERNAL for binary, unaudited
// either way — and unknown JSON fields would be dropped. Here the body is read
// (bounded), un-framed, decompressed and decoded by request-decoding.ts; the
// outcome goes into the call's context values, and connect-es is handed an
// empty message in the same protocol and format. The handler then runs the
// CallPipeline with the decoded message or the refusal, so every such call is
// audited and answered in its own protocol's error form. A request for a served
// method that connect-es would refuse before any handler (a content type or
// HTTP method the method does not take: 415, 405) is audited here through the
// `refuse` callback, then answered with the status connect-es gives it.

import { create, toBinary, toJsonString, type DescMessage, type Message } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { ConnectError, Code, createContextKey } from "@connectrpc/connect";
import type { Compression, UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { parseContentType as parseConnectContentType } from "@connectrpc/connect/protocol-connect";
import { parseContentType as parseGrpcContentType } from "@connectrpc/connect/protocol-grpc";
import { parseContentType as parseGrpcWebContentType } from "@connectrpc/connect/protocol-grpc-web";
import { NexusError } from "../errors/nexus-error.js";
import { decodeRequest, malformedRequest, messageTooLarge, type DecodedRequest, type WireFormat } from "./request-decoding.js";

/** What the handler of a call finds in its context values. */
export type PreparedRequest = DecodedRequest & { readonly format: WireFormat };

export const preparedRequestKey = createContextKey<PreparedRequest | undefined>(undefined, { description: "decoded request" });

export interface RequestBodyLimits {
  readonly readMaxBytes: number;
  readonly acceptCompression: readonly Compression[];
}

/** The request as connect-es would read it: how it is framed, its format, and where its compression is named. */
type Framing =
  | { readonly kind: "connect-post"; readonly format: WireFormat }
  | { readonly kind: "connect-get"; readonly format: WireFormat }
  | { readonly kind: "envelope"; readonly format: WireFormat; readonly encodingHeader: "grpc-encoding" | "connect-content-encoding" };

const ENVELOPE_HEADER = 5;
const COMPRESSED_FLAG = 0x01;

/** Audits a call to `rpc` refused before any handler; resolves once its event is written. */
export type AuditRefusal = (req: UniversalServerRequest, rpc: string, failure: NexusError) => Promise<void>;

/**
 * Wraps the handler connect-es built for one unary or server-streaming method.
 * Requests it cannot frame (a content type or HTTP method connect-es refuses
 * with 415/405 before any handler) are audited through `refuse` and answered
 * 415/405 as connect-es would.
 */
export function decodeAhead(handler: UniversalHandler, limits: RequestBodyLimits, refuse: AuditRefusal): UniversalHandler {
  // A client stream is not one body to read ahead (reflection is the only one served).
  const kind = handler.method.methodKind;
  if (kind !== "unary" && kind !== "server_streaming") return handler;
  const streaming = kind === "server_streaming";
  const schema = handler.method.input;
  const getAllowed = !streaming && handler.method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
  const empty = { binary: emptyMessage(schema, "binary"), json: emptyMessage(schema, "json") };
  const wrapped = async (req: UniversalServerRequest) => {
    const framing = framingOf(req, getAllowed, streaming);
    if (framing === undefined) {
      const [status, failure] = unframeable(req, handler.allowedMethods);
      await refuse(req, handler.requestPath, failure);
      return { status };
    }
    if (req.contextValues === undefined) return handler(req);
    const decoded = await readAndDecode(req, framing, schema, limits);
    req.contextValues.set(preparedRequestKey, { ...decoded, format: framing.format });
    return handler(withEmptyMessage(req, framing, empty[framing.format]));
  };
  return Object.assign(wrapped, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/**
 * What connect-es answers a request it cannot frame (its universal handler's
 * negotiation): 405 for an HTTP method no protocol of the route takes, 415 for
 * anything else (a content type it does not serve, gRPC-Web text, a streaming
 * content type on a unary method, a GET without a known encoding).
 */
function unframeable(req: UniversalServerRequest, allowedMethods: readonly string[]): [number, NexusError] {
  if (!allowedMethods.includes(req.method)) {
    const allowed = allowedMethods.join(", ");
    return [405, new NexusError("invalid_argument", `this method takes HTTP ${allowed}, not ${req.method.slice(0, 16)}`, { reason: "METHOD_NOT_ALLOWED" })];
  }
  const message = "this method does not take the request's content type; send application/json or application/proto (Connect), application/grpc or application/grpc-web (binary, +proto or +json)";
  return [415, new NexusError("invalid_argument", message, { reason: "UNSUPPORTED_MEDIA_TYPE" })];
}

function framingOf(req: UniversalServerRequest, getAllowed: boolean, streaming: boolean): Framing | undefined {
  if (req.method === "GET") {
    if (!getAllowed) return undefined;
    const encoding = new URL(req.url).searchParams.get("encoding");
    return encoding === "proto" ? { kind: "connect-get", format: "binary" } : encoding === "json" ? { kind: "connect-get", format: "json" } : undefined;
  }
  if (req.method !== "POST") return undefined;
  const contentType = req.header.get("content-type");
  const connect = parseConnectContentType(contentType);
  if (connect !== undefined) {
    // A server stream's request is one enveloped message, its compression named by connect-content-encoding.
    const format = connect.binary ? "binary" : "json";
    if (streaming) return connect.stream ? { kind: "envelope", format, encodingHeader: "connect-content-encoding" } : undefined;
    return connect.stream ? undefined : { kind: "connect-post", format };
  }
  const grpc = parseGrpcContentType(contentType);
  if (grpc !== undefined) return { kind: "envelope", format: grpc.binary ? "binary" : "json", encodingHeader: "grpc-encoding" };
  const grpcWeb = parseGrpcWebContentType(contentType);
  // gRPC-Web text (base64) is refused by connect-es itself.
  if (grpcWeb !== undefined && !grpcWeb.text) return { kind: "envelope", format: grpcWeb.binary ? "binary" : "json", encodingHeader: "grpc-encoding" };
  return undefined;
}

async function readAndDecode(req: UniversalServerRequest, framing: Framing, schema: DescMessage, limits: RequestBodyLimits): Promise<DecodedRequest> {
  try {
    const { bytes, encoding } = framing.kind === "connect-get" ? fromQuery(req) : await fromBody(req, framing, schema, limits);
    const plain = await decompress(bytes, encoding, limits);
    return decodeRequest(schema, plain, framing.format);
  } catch (err) {
    if (err instanceof NexusError) return { refusal: err };
    if (err instanceof ConnectError && err.code === Code.ResourceExhausted) return { refusal: messageTooLarge(limits.readMaxBytes) };
    return { refusal: malformedRequest(schema, framing.format) };
  }
}

function fromQuery(req: UniversalServerRequest): { bytes: Uint8Array; encoding: string | null } {
  const params = new URL(req.url).searchParams;
  const message = params.get("message") ?? "";
  const bytes = params.get("base64") === "1" ? base64Decode(message) : new TextEncoder().encode(message);
  return { bytes, encoding: params.get("compression") };
}

async function fromBody(req: UniversalServerRequest, framing: Framing, schema: DescMessage, limits: RequestBodyLimits): Promise<{ bytes: Uint8Array; encoding: string | null }> {
  const max = framing.kind === "envelope" ? limits.readMaxBytes + ENVELOPE_HEADER : limits.readMaxBytes;
  const body = await readBounded(req, max, limits.readMaxBytes);
  if (framing.kind !== "envelope") return { bytes: body, encoding: req.header.get("content-encoding") };
  // A unary or server-stream request is exactly one enveloped message.
  if (body.length < ENVELOPE_HEADER) throw malformedRequest(schema, framing.format, " (no complete message envelope)");
  const flags = body[0];
  const length = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(1);
  if (length > limits.readMaxBytes) throw messageTooLarge(limits.readMaxBytes);
  if ((flags & ~COMPRESSED_FLAG) !== 0 || body.length !== ENVELOPE_HEADER + length) {
    throw malformedRequest(schema, framing.format, " (not exactly one message envelope)");
  }
  const bytes = body.subarray(ENVELOPE_HEADER);
  return { bytes, encoding: flags & COMPRESSED_FLAG ? (req.header.get(framing.encodingHeader) ?? "") : null };
}

async function readBounded(req: UniversalServerRequest, max: number, limit: number): Promise<Uint8Array> {
  const declared = Number(req.header.get("content-length") ?? "0");
  if (declared > max) throw messageTooLarge(limit);
  const body = req.body;
  if (body === null || typeof body !== "object" || !(Symbol.asyncIterator in body)) {
    throw new NexusError("internal", "internal error", { reason: "INTERNAL", cause: new Error("request body is not a byte stream") });
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    total += chunk.byteLength;
    if (total > max) throw messageTooLarge(limit);
    chunks.push(chunk);
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total);
}

async function decompress(bytes: Uint8Array, encoding: string | null, limits: RequestBodyLimits): Promise<Uint8Array> {
  if (encoding === null || encoding === "identity") return bytes;
  const compression = limits.acceptCompression.find((c) => c.name === encoding);
  if (compression === undefined) {
    const accepted = ["identity", ...limits.acceptCompression.map((c) => c.name)].join(", ");
    throw new NexusError("unimplemented", `request compression "${encoding.slice(0, 32)}" is not supported; use one of ${accepted}`, { reason: "UNSUPPORTED_COMPRESSION" });
  }
  return compression.decompress(bytes, limits.readMaxBytes);
}

/** The same request with an empty, uncompressed message for connect-es to parse. */
function withEmptyMessage(req: UniversalServerRequest, framing: Framing, empty: Uint8Array): UniversalServerRequest {
  if (framing.kind === "connect-get") {
    const url = new URL(req.url);
    url.searchParams.delete("compression");
    url.searchParams.delete("base64");
    url.searchParams.set("message", new TextDecoder().decode(empty));
    return { ...req, url: url.toString() };
  }
  const header = new Headers(req.header);
  header.delete("content-length");
  header.delete("content-encoding");
  let body = empty;
  if (framing.kind === "envelope") {
    body = new Uint8Array(ENVELOPE_HEADER + empty.length);
    new DataView(body.buffer).setUint32(1, empty.length);
    body.set(empty, ENVELOPE_HEADER);
  }
  return { ...req, header, body: (async function* () { yield body; })() };
}

function emptyMessage(schema: DescMessage, format: WireFormat): Uint8Array {
  const message: Message = create(schema);
  return format === "binary" ? toBinary(schema, message) : new TextEncoder().encode(toJsonString(schema, message));
}
