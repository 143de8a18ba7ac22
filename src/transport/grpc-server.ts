// The gRPC listener (grpc-js) serving protoc-gen-es messages: service
// definitions are built from the generated descriptors (toBinary/fromBinary),
// and every call goes through the CallPipeline.

import { create, fromBinary, toBinary, type DescMessage, type DescMethodUnary, type DescService, type Message } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import tls from "node:tls";
import type { ListenAddress } from "../config/config.js";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import { secureContextOptions, type CertificateSource } from "./certificate-source.js";
import { listen } from "./listen.js";
import type { CallPipeline } from "./call-pipeline.js";
import { methodPath, type ServiceRegistration, type UnaryHandler } from "./call-context.js";
import { asNexusError, toGrpcError } from "./error-mapping.js";
import { readPeerCertificateOnce } from "./peer-certificate.js";

export interface GrpcLimits {
  readonly maxMessageBytes: number;
  readonly maxConcurrentStreams: number;
  readonly keepaliveTimeMs: number;
}

export function grpcServerOptions(limits: GrpcLimits): grpc.ServerOptions {
  return {
    "grpc.max_receive_message_length": limits.maxMessageBytes,
    "grpc.max_send_message_length": limits.maxMessageBytes,
    "grpc.max_concurrent_streams": limits.maxConcurrentStreams,
    "grpc.keepalive_time_ms": limits.keepaliveTimeMs,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
  };
}

/** What the deserializer hands on for a request body that does not decode. */
const UNDECODABLE: Message = Object.freeze({ $typeName: "nexus.undecodable" });

function decodeOrMark(schema: DescMessage, bytes: Buffer): Message {
  try {
    return fromBinary(schema, bytes);
  } catch {
    return UNDECODABLE;
  }
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A grpc-js service definition for a protobuf-es service descriptor (unary methods). */
function grpcServiceDefinition(desc: DescService): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<Message, Message>> = {};
  for (const method of desc.methods) {
    if (method.methodKind !== "unary") throw new Error(`${method.name}: only unary methods are served`);
    definition[method.localName] = {
      path: methodPath(method),
      requestStream: false,
      responseStream: false,
      requestSerialize: (m: Message) => toBuffer(toBinary(method.input, m)),
      // A body that is not the request message reaches the pipeline as a marker,
      // to be refused INVALID_ARGUMENT and audited like any other refusal
      // (grpc-js would answer INTERNAL, unaudited, if this threw).
      requestDeserialize: (b: Buffer) => decodeOrMark(method.input, b),
      responseSerialize: (m: Message) => toBuffer(toBinary(method.output, m)),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
      originalName: method.localName,
    };
  }
  return definition as grpc.ServiceDefinition;
}

export function addServicesToGrpcServer(server: grpc.Server, services: readonly ServiceRegistration[], pipeline: CallPipeline): void {
  for (const { desc, handlers } of services) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const method of desc.methods as DescMethodUnary[]) {
      const handler = handlers[method.localName];
      if (handler === undefined) throw new Error(`no handler for ${methodPath(method)}`);
      impl[method.localName] = unaryHandler(method, handler, pipeline);
    }
    server.addService(grpcServiceDefinition(desc), impl);
  }
}

function unaryHandler(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, pipeline: CallPipeline): grpc.handleUnaryCall<Message, Message> {
  return (call, callback) => {
    // No per-call AbortController: grpc-js emits "cancelled" as streams close,
    // and an abort builds a DOMException with a stack (measured: 3.6 % of a
    // GetSecret's CPU). Deadlines are enforced by grpc-js itself.
    const authorization = call.metadata.get("authorization")[0];
    const requestId = call.metadata.get("x-request-id")[0];
    const undecodable = call.request === UNDECODABLE;
    pipeline
      .unary(method, handler, undecodable ? create(method.input) : call.request, {
        peerCertificate: call.getAuthContext().sslPeerCertificate,
        authorization: typeof authorization === "string" ? authorization : undefined,
        requestId: typeof requestId === "string" ? requestId : undefined,
        transport: "grpc",
        refusal: undecodable
          ? new NexusError("invalid_argument", `the request body is not a valid ${method.input.typeName} message`, { reason: "MALFORMED_REQUEST" })
          : undefined,
      })
      .then(
        (response) => callback(null, response),
        (err) => callback(toGrpcError(asNexusError(err))),
      );
  };
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
export async function listenGrpcTls(server: grpc.Server, address: ListenAddress, certificates: CertificateSource, logger: Logger): Promise<TlsListener> {
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
