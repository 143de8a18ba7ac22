// The gRPC listener (grpc-js) serving protoc-gen-es messages: service
// definitions are built from the generated descriptors (toBinary/fromBinary),
// and every call goes through the CallPipeline.

import { create, fromBinary, toBinary, type DescMessage, type DescMethodServerStreaming, type DescMethodUnary, type DescService, type Message } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import tls from "node:tls";
import type { ListenAddress } from "../config/config.js";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import { secureContextOptions, type TlsMaterialSource } from "./certificate-source.js";
import { listen } from "./listen.js";
import type { CallPipeline } from "./call-pipeline.js";
import { methodPath, type IncomingCall, type ServerStreamHandler, type ServiceRegistration, type UnaryHandler } from "../calls/call-context.js";
import { decodeRequest, messageTooLarge } from "./request-decoding.js";
import { asNexusError, toGrpcError } from "./error-mapping.js";
import { readPeerCertificateOnce } from "./peer-certificate.js";

export interface GrpcLimits {
  readonly maxMessageBytes: number;
  readonly maxConcurrentStreams: number;
  readonly keepaliveTimeMs: number;
}

/**
 * How far past the message limit grpc-js still reads a request, so that an
 * oversized message reaches the pipeline and is refused MESSAGE_TOO_LARGE and
 * audited. Beyond it grpc-js refuses RESOURCE_EXHAUSTED on its own, before any
 * code of ours runs, and that call is not audited: the memory bound wins.
 */
export const OVERSIZE_AUDIT_MARGIN = 1024 * 1024;

export function grpcServerOptions(limits: GrpcLimits): grpc.ServerOptions {
  return {
    "grpc.max_receive_message_length": limits.maxMessageBytes + OVERSIZE_AUDIT_MARGIN,
    "grpc.max_send_message_length": limits.maxMessageBytes,
    "grpc.max_concurrent_streams": limits.maxConcurrentStreams,
    "grpc.keepalive_time_ms": limits.keepaliveTimeMs,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
  };
}

/**
 * What the deserializer hands on for a request body that must be refused (does
 * not decode, carries unknown fields, is too large): the pipeline refuses it
 * and audits the refusal (grpc-js would answer INTERNAL, unaudited, if
 * deserialization threw).
 */
class RefusedRequest {
  constructor(readonly refusal: NexusError) {}
}

function decodeOrRefuse(schema: DescMessage, bytes: Buffer, maxMessageBytes: number): Message | RefusedRequest {
  if (bytes.length > maxMessageBytes) return new RefusedRequest(messageTooLarge(maxMessageBytes));
  const decoded = decodeRequest(schema, bytes, "binary");
  return decoded.refusal === undefined ? decoded.message : new RefusedRequest(decoded.refusal);
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A grpc-js service definition for a protobuf-es service descriptor (unary and server-streaming methods). */
function grpcServiceDefinition(desc: DescService, maxMessageBytes: number): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<Message | RefusedRequest, Message>> = {};
  for (const method of desc.methods) {
    if (method.methodKind !== "unary" && method.methodKind !== "server_streaming") throw new Error(`${method.name}: only unary and server-streaming methods are served`);
    definition[method.localName] = {
      path: methodPath(method),
      requestStream: false,
      responseStream: method.methodKind === "server_streaming",
      requestSerialize: (m: Message | RefusedRequest) => toBuffer(toBinary(method.input, m as Message)),
      requestDeserialize: (b: Buffer) => decodeOrRefuse(method.input, b, maxMessageBytes),
      responseSerialize: (m: Message) => toBuffer(toBinary(method.output, m)),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
      originalName: method.localName,
    };
  }
  return definition as grpc.ServiceDefinition;
}

export function addServicesToGrpcServer(server: grpc.Server, services: readonly ServiceRegistration[], pipeline: CallPipeline, maxMessageBytes: number): void {
  for (const { desc, handlers } of services) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const method of desc.methods) {
      const handler = handlers[method.localName];
      if (handler === undefined) throw new Error(`no handler for ${methodPath(method)}`);
      impl[method.localName] =
        method.methodKind === "server_streaming"
          ? serverStreamHandler(method as DescMethodServerStreaming, handler as ServerStreamHandler<DescMethodServerStreaming>, pipeline)
          : unaryHandler(method as DescMethodUnary, handler as UnaryHandler<DescMethodUnary>, pipeline);
    }
    server.addService(grpcServiceDefinition(desc, maxMessageBytes), impl);
  }
}

function unaryHandler(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, pipeline: CallPipeline): grpc.handleUnaryCall<Message | RefusedRequest, Message> {
  return (call, callback) => {
    // No per-call AbortController: grpc-js emits "cancelled" as streams close,
    // and an abort builds a DOMException with a stack (measured: 3.6 % of a
    // GetSecret's CPU). Deadlines are enforced by grpc-js itself.
    const refused = call.request instanceof RefusedRequest ? call.request : undefined;
    pipeline
      .unary(method, handler, refused ? create(method.input) : (call.request as Message), incomingCall(call, refused))
      .then(
        (response) => callback(null, response),
        (err) => callback(toGrpcError(asNexusError(err))),
      );
  };
}

function incomingCall(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, refused: RefusedRequest | undefined): IncomingCall {
  const authorization = call.metadata.get("authorization")[0];
  const requestId = call.metadata.get("x-request-id")[0];
  const idempotencyKey = call.metadata.get("idempotency-key")[0];
  return {
    peerCertificate: call.getAuthContext().sslPeerCertificate,
    authorization: typeof authorization === "string" ? authorization : undefined,
    requestId: typeof requestId === "string" ? requestId : undefined,
    idempotencyKey: typeof idempotencyKey === "string" ? idempotencyKey : undefined,
    transport: "grpc",
    wireFormat: "binary",
    refusal: refused?.refusal,
  };
}

/**
 * A server stream: each message the pipeline yields is written (waiting for
 * the socket when grpc-js asks to), then the stream ends with OK or with the
 * mapped error. A client that cancels aborts the call's signal and ends the
 * pipeline's iteration.
 */
function serverStreamHandler(
  method: DescMethodServerStreaming,
  handler: ServerStreamHandler<DescMethodServerStreaming>,
  pipeline: CallPipeline,
): grpc.handleServerStreamingCall<Message | RefusedRequest, Message> {
  return (call) => {
    const refused = call.request instanceof RefusedRequest ? call.request : undefined;
    const abort = new AbortController();
    const stream = pipeline.serverStream(method, handler, refused ? create(method.input) : (call.request as Message), incomingCall(call, refused), abort.signal);
    call.on("cancelled", () => {
      abort.abort();
      void stream.return(undefined).catch(() => {});
    });
    void (async () => {
      try {
        for await (const message of stream) {
          if (abort.signal.aborted) return;
          if (!call.write(message)) await drainOrCancel(call, abort.signal);
        }
        if (!abort.signal.aborted) call.end();
      } catch (err) {
        if (!abort.signal.aborted) call.emit("error", toGrpcError(asNexusError(err)));
      }
    })();
  };
}

function drainOrCancel(call: grpc.ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Routes calls to methods no service here serves through the pipeline, so they
 * are audited (UNKNOWN_METHOD) instead of answered UNIMPLEMENTED by grpc-js
 * before any code of ours runs. grpc-js has no public fallback route, so this
 * replaces its handler lookup on this server instance; the start-up check and
 * the unknown-method tests fail loudly if a grpc-js upgrade removes it.
 */
export function auditUnknownMethods(server: grpc.Server, pipeline: CallPipeline): void {
  type Lookup = (path: string) => unknown;
  const target = server as unknown as { _retrieveHandler?: Lookup };
  const lookup = target._retrieveHandler;
  if (typeof lookup !== "function") throw new Error("grpc-js changed: Server._retrieveHandler is gone; unknown methods could not be audited");
  const known = lookup.bind(server);
  target._retrieveHandler = (path: string) => known(path) ?? unknownMethodHandler(path, pipeline);
}

function unknownMethodHandler(path: string, pipeline: CallPipeline) {
  // Bidi-streaming, so it runs at once whatever the caller meant to stream.
  const func = (stream: grpc.ServerDuplexStream<Buffer, Buffer>) => {
    const authorization = stream.metadata.get("authorization")[0];
    const requestId = stream.metadata.get("x-request-id")[0];
    const failure = new NexusError("unimplemented", `this server has no method ${JSON.stringify(path.slice(0, 200))}`, { reason: "UNKNOWN_METHOD" });
    void pipeline
      .refuseUnknown(path, {
        peerCertificate: stream.getAuthContext().sslPeerCertificate,
        authorization: typeof authorization === "string" ? authorization : undefined,
        requestId: typeof requestId === "string" ? requestId : undefined,
        transport: "grpc",
        wireFormat: "binary",
      }, failure)
      .then((err) => stream.emit("error", toGrpcError(err)));
  };
  return { func, serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b, type: "bidi", path };
}

export interface TlsListener {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Serves `server` over mTLS from our own TLS listener: each connection's
 * handshake is done here and the socket is handed to grpc-js. That lets the
 * peer certificate be read once per connection (grpc-js's getAuthContext reads
 * it on every call; measured at ~10 % of a GetSecret's CPU) and the secure
 * context follow the certificate files like the Connect listener's.
 */
export async function listenGrpcTls(server: grpc.Server, address: ListenAddress, certificates: TlsMaterialSource, logger: Logger): Promise<TlsListener> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer = tls.createServer({ ...secureContextOptions(certificates.material), requestCert: true, rejectUnauthorized: true, ALPNProtocols: ["h2"] }, (socket) => {
    socket.on("error", (err) => logger.debug("TLS socket error", { listener: "grpc", err }));
    readPeerCertificateOnce(socket);
    injector.injectConnection(socket);
  });
  tlsServer.on("tlsClientError", (err) => logger.debug("TLS handshake refused", { listener: "grpc", err }));
  certificates.onChange((m) => tlsServer.setSecureContext(secureContextOptions(m)));
  const port = await listen(tlsServer, address);
  return { port, close: () => new Promise((resolve) => tlsServer.close(() => resolve())) };
}
