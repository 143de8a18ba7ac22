// The client side we ship (tests now, the CLI later): mTLS with our own SVID,
// and the server authorized by its SPIFFE ID rather than its hostname, since
// SPIRE SVIDs usually carry no DNS name. One call shape over both listeners.
// A failed call keeps the AIP-193 details the server sent (ErrorInfo reason,
// BadRequest field violations) so callers branch on reasons, not on text.

import { create, fromBinary, toBinary, type DescMethodServerStreaming, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { anyIs, anyUnpack, durationMs } from "@bufbuild/protobuf/wkt";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { authorizeServerId } from "../identity/server-authorizer.js";

export interface ClientIdentity {
  /** PEM chain of the client's X.509-SVID. */
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
  /** PEM bundle of the trust domain. */
  readonly ca: string | Buffer;
  /** The server's expected SPIFFE ID, e.g. spiffe://spike.ist/spike/nexus. */
  readonly serverId: string;
}

export interface CallOptions {
  readonly bearerToken?: string;
  readonly deadlineMs?: number;
  /** Sent as the `idempotency-key` header: a retry with the same key and request gets the first result (writes only). */
  readonly idempotencyKey?: string;
  /** Streams only: aborting cancels the call and ends the iteration with CANCELLED. */
  readonly signal?: AbortSignal;
}

export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/**
 * The reason a client gives when it refused the server's SVID itself (the server
 * presented another SPIFFE ID or no SVID); the call never reached a handler.
 */
export const SERVER_IDENTITY_REJECTED = "SERVER_IDENTITY_REJECTED";

/** A failed call: the status name, the server's message, and its ErrorInfo reason and field violations if it sent them. */
export interface CallFailure {
  readonly code: string;
  readonly message: string;
  readonly reason?: string;
  readonly violations?: readonly FieldViolation[];
  /** RESOURCE_EXHAUSTED from a rate limit: how long to wait before retrying (google.rpc.RetryInfo). */
  readonly retryDelayMs?: number;
  readonly response?: undefined;
}

/** The outcome of a call: the status name ("OK", "NOT_FOUND", …) and the response or the failure. */
export type CallResult<M extends DescMethodUnary> =
  | {
      readonly code: "OK";
      readonly response: MessageShape<M["output"]>;
      readonly message?: undefined;
      readonly reason?: undefined;
      readonly violations?: undefined;
      readonly retryDelayMs?: undefined;
    }
  | CallFailure;

/** A server stream that failed (or was refused): the same fields as a CallFailure, thrown by the stream's iteration. */
export class StreamFailure extends Error implements CallFailure {
  readonly response?: undefined;
  constructor(
    readonly code: string,
    message: string,
    readonly reason?: string,
    readonly violations?: readonly FieldViolation[],
  ) {
    super(message);
    this.name = "StreamFailure";
  }
}

export interface NexusClient {
  call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options?: CallOptions): Promise<CallResult<M>>;
  /**
   * A server-streaming call: iterate for the response messages; a failure is
   * thrown as a StreamFailure. Leaving the iteration early (break) cancels the call.
   */
  stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, options?: CallOptions): AsyncIterable<MessageShape<M["output"]>>;
  close(): void;
}

const toBuffer = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** A grpc-js client for the gRPC listener. */
export function grpcNexusClient(address: string, identity: ClientIdentity, channelOptions: grpc.ChannelOptions = {}): NexusClient {
  // grpc-js reports a refused server as a bare UNAVAILABLE; remember why we refused it.
  const authorize = authorizeServerId(identity.serverId);
  let refusal: Error | undefined;
  const credentials = grpc.credentials.createSsl(asBuffer(identity.ca), asBuffer(identity.key), asBuffer(identity.cert), {
    checkServerIdentity: (hostname, cert) => {
      const err = authorize(hostname, cert);
      refusal = err;
      return err;
    },
  });
  // SNI must be a name, not an IP; the server is authorized by SPIFFE ID anyway.
  const client = new grpc.Client(address, credentials, { "grpc.ssl_target_name_override": "localhost", ...channelOptions });
  return {
    call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options: CallOptions = {}) {
      const metadata = new grpc.Metadata();
      if (options.bearerToken !== undefined) metadata.set("authorization", `Bearer ${options.bearerToken}`);
      if (options.idempotencyKey !== undefined) metadata.set("idempotency-key", options.idempotencyKey);
      const deadline = options.deadlineMs === undefined ? undefined : Date.now() + options.deadlineMs;
      return new Promise<CallResult<M>>((resolve) => {
        client.makeUnaryRequest(
          `/${method.parent.typeName}/${method.name}`,
          (m: MessageShape<M["input"]>) => toBuffer(toBinary(method.input, m)),
          (b: Buffer) => fromBinary(method.output, b),
          create(method.input, request) as MessageShape<M["input"]>,
          metadata,
          deadline === undefined ? {} : { deadline },
          (err, response) => {
            if (err && refusal !== undefined && err.code === grpc.status.UNAVAILABLE) {
              resolve({ code: "UNAVAILABLE", message: refusal.message, reason: SERVER_IDENTITY_REJECTED });
            } else if (err) {
              resolve({ code: grpc.status[err.code] ?? String(err.code), message: err.details, ...statusDetails(err.metadata) });
            } else resolve({ code: "OK", response: response as MessageShape<M["output"]> });
          },
        );
      });
    },
    async *stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, options: CallOptions = {}) {
      const metadata = new grpc.Metadata();
      if (options.bearerToken !== undefined) metadata.set("authorization", `Bearer ${options.bearerToken}`);
      const call = client.makeServerStreamRequest(
        `/${method.parent.typeName}/${method.name}`,
        (m: MessageShape<M["input"]>) => toBuffer(toBinary(method.input, m)),
        (b: Buffer) => fromBinary(method.output, b),
        create(method.input, request) as MessageShape<M["input"]>,
        metadata,
        options.deadlineMs === undefined ? {} : { deadline: Date.now() + options.deadlineMs },
      );
      let finished = false;
      const cancel = () => call.cancel();
      options.signal?.addEventListener("abort", cancel, { once: true });
      if (options.signal?.aborted) call.cancel();
      try {
        for await (const message of call) yield message as MessageShape<M["output"]>;
        finished = true;
      } catch (err) {
        finished = true;
        const e = err as grpc.ServiceError;
        if (refusal !== undefined && e.code === grpc.status.UNAVAILABLE) throw new StreamFailure("UNAVAILABLE", refusal.message, SERVER_IDENTITY_REJECTED);
        const { reason, violations } = statusDetails(e.metadata);
        throw new StreamFailure(grpc.status[e.code] ?? String(e.code), e.details ?? String(err), reason, violations);
      } finally {
        options.signal?.removeEventListener("abort", cancel);
        if (!finished) call.cancel();
      }
    },
    close: () => client.close(),
  };
}

/**
 * A connect-es client for the Connect listener; `protocol` picks Connect (JSON)
 * or gRPC, `httpVersion` (Connect only) 1.1 or 2. Over HTTP/2 every call shares one
 * connection, which `close()` ends.
 */
export function connectNexusClient(
  baseUrl: string,
  identity: ClientIdentity,
  protocol: "connect" | "grpc" = "connect",
  httpVersion: "1.1" | "2" = "2",
): NexusClient {
  const nodeOptions = {
    // SNI must be a name, not an IP; the server is authorized by SPIFFE ID anyway.
    servername: "localhost",
    ca: identity.ca,
    cert: identity.cert,
    key: identity.key,
    checkServerIdentity: authorizeServerId(identity.serverId),
  };
  const sessionManager = protocol === "grpc" || httpVersion === "2" ? new Http2SessionManager(baseUrl, {}, nodeOptions) : undefined;
  const transport: Transport =
    protocol === "grpc"
      ? createGrpcTransport({ baseUrl, nodeOptions, sessionManager })
      : createConnectTransport({ baseUrl, httpVersion, nodeOptions, sessionManager, useBinaryFormat: false });
  return {
    async call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options: CallOptions = {}) {
      const headers: Record<string, string> = {};
      if (options.bearerToken !== undefined) headers.authorization = `Bearer ${options.bearerToken}`;
      if (options.idempotencyKey !== undefined) headers["idempotency-key"] = options.idempotencyKey;
      // A client is a cheap set of method wrappers; the connection lives in the transport.
      const client = createClient(method.parent, transport) as unknown as Record<string, (req: unknown, opts: unknown) => Promise<MessageShape<M["output"]>>>;
      try {
        const response = await client[method.localName](request, { headers, timeoutMs: options.deadlineMs });
        return { code: "OK", response } as CallResult<M>;
      } catch (err) {
        const e = ConnectError.from(err);
        const reason = e.findDetails(ErrorInfoSchema)[0]?.reason;
        const violations = e.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map(({ field, description }) => ({ field, description })));
        const retryDelay = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
        return { code: connectCodeName(e.code), message: e.rawMessage, reason, violations, ...(retryDelay ? { retryDelayMs: durationMs(retryDelay) } : {}) };
      }
    },
    async *stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, options: CallOptions = {}) {
      const headers: Record<string, string> = {};
      if (options.bearerToken !== undefined) headers.authorization = `Bearer ${options.bearerToken}`;
      const abort = new AbortController();
      const cancel = () => abort.abort();
      options.signal?.addEventListener("abort", cancel, { once: true });
      if (options.signal?.aborted) abort.abort();
      const client = createClient(method.parent, transport) as unknown as Record<string, (req: unknown, opts: unknown) => AsyncIterable<MessageShape<M["output"]>>>;
      try {
        yield* client[method.localName](request, { headers, timeoutMs: options.deadlineMs, signal: abort.signal });
      } catch (err) {
        const e = ConnectError.from(err);
        const reason = e.findDetails(ErrorInfoSchema)[0]?.reason;
        const violations = e.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map(({ field, description }) => ({ field, description })));
        throw new StreamFailure(connectCodeName(e.code), e.rawMessage, reason, violations);
      } finally {
        options.signal?.removeEventListener("abort", cancel);
        abort.abort();
      }
    },
    close: () => sessionManager?.abort(),
  };
}

/** Decodes grpc-status-details-bin (a google.rpc.Status) into the ErrorInfo reason and field violations. */
function statusDetails(metadata: grpc.Metadata | undefined): { reason?: string; violations?: FieldViolation[]; retryDelayMs?: number } {
  const raw = metadata?.get("grpc-status-details-bin")[0];
  if (raw === undefined || typeof raw === "string") return {};
  let reason: string | undefined;
  let retryDelayMs: number | undefined;
  const violations: FieldViolation[] = [];
  try {
    for (const detail of fromBinary(StatusSchema, raw).details) {
      if (anyIs(detail, ErrorInfoSchema)) reason = anyUnpack(detail, ErrorInfoSchema)?.reason;
      if (anyIs(detail, RetryInfoSchema)) {
        const delay = anyUnpack(detail, RetryInfoSchema)?.retryDelay;
        if (delay) retryDelayMs = durationMs(delay);
      }
      if (anyIs(detail, BadRequestSchema)) {
        violations.push(...(anyUnpack(detail, BadRequestSchema)?.fieldViolations ?? []).map(({ field, description }) => ({ field, description })));
      }
    }
  } catch {
    return {}; // malformed details: the status code and message still stand
  }
  return { reason, violations, ...(retryDelayMs === undefined ? {} : { retryDelayMs }) };
}

function connectCodeName(code: Code): string {
  return Code[code]
    .replace(/([a-z])([A-Z])/g, "$1_$2")
    .toUpperCase()
    .replace(/^CANCELED$/, "CANCELLED");
}

function asBuffer(v: string | Buffer): Buffer {
  return typeof v === "string" ? Buffer.from(v) : v;
}
