// The Connect listener: the same handlers and the same CallPipeline, served as
// the Connect protocol (JSON or binary over HTTP/1.1 and HTTP/2), gRPC and
// gRPC-Web through @connectrpc/connect-node, behind the same mTLS. Requests are
// decoded ahead of connect-es (connect-request-body.ts) and unknown paths are
// refused here, so every call on this port is audited.

import http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import { create, type DescMethodServerStreaming, type DescMethodUnary, type Message } from "@bufbuild/protobuf";
import { createContextKey, createContextValues, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { compressionBrotli, compressionGzip, connectNodeAdapter, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import { errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import type { CallPipeline } from "./call-pipeline.js";
import type { IncomingCall, ServerStreamHandler, ServiceRegistration, UnaryHandler } from "../calls/call-context.js";
import { secureContextOptions, type TlsMaterial } from "./certificate-source.js";
import { decodeAhead, preparedRequestKey, type AuditRefusal, type PreparedRequest } from "./connect-request-body.js";
import { asNexusError, toConnectError, toGrpcError } from "./error-mapping.js";
import { readPeerCertificateOnce } from "./peer-certificate.js";
import { connectReflection } from "./reflection.js";

type PeerCertificate = { raw: Uint8Array; fingerprint256?: string };
const peerCertificateKey = createContextKey<PeerCertificate | undefined>(undefined, { description: "peer certificate" });

export interface ConnectServerOptions {
  readonly services: readonly ServiceRegistration[];
  readonly pipeline: CallPipeline;
  readonly tls: TlsMaterial;
  readonly maxMessageBytes: number;
  readonly maxConcurrentStreams: number;
  readonly logger: Logger;
}

/** Request compressions the Connect listener accepts (connect-node's defaults, named here because decoding happens in connect-request-body.ts). */
const ACCEPT_COMPRESSION = [compressionGzip, compressionBrotli];

export function createConnectServer(opts: ConnectServerOptions): http2.Http2SecureServer {
  const limits = { readMaxBytes: opts.maxMessageBytes, acceptCompression: ACCEPT_COMPRESSION };
  const routes = (router: ConnectRouter) => {
    for (const { desc, handlers } of opts.services) {
      const impl: Record<string, (req: Message, ctx: HandlerContext) => Promise<Message> | AsyncIterable<Message>> = {};
      for (const method of desc.methods) {
        const handler = handlers[method.localName];
        if (method.methodKind === "server_streaming") {
          const streamHandler = handler as ServerStreamHandler<DescMethodServerStreaming>;
          const streamMethod = method as DescMethodServerStreaming;
          impl[method.localName] = async function* (_emptyReq, ctx) {
            const prepared = ctx.values.get(preparedRequestKey);
            // connect-es aborts ctx.signal when the client goes away and ends this iteration.
            const stream = opts.pipeline.serverStream(streamMethod, streamHandler, prepared?.message ?? create(method.input), incoming(ctx, prepared), ctx.signal);
            try {
              yield* stream;
            } catch (err) {
              throw toConnectError(asNexusError(err));
            }
          };
          continue;
        }
        const unaryHandler = handler as UnaryHandler<DescMethodUnary>;
        impl[method.localName] = async (_emptyReq, ctx) => {
          // connect-es parsed an empty stand-in; the real message was decoded ahead.
          const prepared = ctx.values.get(preparedRequestKey);
          try {
            return await opts.pipeline.unary(method as DescMethodUnary, unaryHandler, prepared?.message ?? create(method.input), incoming(ctx, prepared));
          } catch (err) {
            throw toConnectError(asNexusError(err));
          }
        };
      }
      router.service(desc, impl as never);
    }
    // Every unary and server-streaming route decodes its request ahead of connect-es (see connect-request-body.ts).
    router.handlers.forEach((h, i) => (router.handlers[i] = decodeAhead(h, limits, auditRefusal)));
    // Reflection: bidi-streaming and schema only, so neither decoded ahead nor run through the pipeline.
    const reflection = connectReflection(opts.services.map((s) => s.desc.file));
    router.service(reflection.desc, reflection.impl);
  };
  // A served method refused before any handler (HTTP 415/405) is audited like an unknown one.
  const auditRefusal: AuditRefusal = async (req, rpc, failure) => {
    await opts.pipeline.refuseUnknown(rpc, {
      peerCertificate: req.contextValues?.get(peerCertificateKey),
      authorization: req.header.get("authorization") ?? undefined,
      requestId: req.header.get("x-request-id") ?? undefined,
      transport: "connect",
      wireFormat: "json",
    }, failure);
  };
  const handler = connectNodeAdapter({
    routes,
    fallback: (req, res) => refuseUnknownMethod(req, res, opts.pipeline),
    acceptCompression: ACCEPT_COMPRESSION,
    readMaxBytes: opts.maxMessageBytes,
    writeMaxBytes: opts.maxMessageBytes,
    contextValues: (req) => createContextValues().set(peerCertificateKey, peerCertificateOf(req.socket as TLSSocket)),
  });
  const server = http2.createSecureServer(
    {
      allowHTTP1: true,
      ...secureContextOptions(opts.tls),
      requestCert: true,
      rejectUnauthorized: true,
      settings: { maxConcurrentStreams: opts.maxConcurrentStreams },
    },
    handler,
  );
  // A failed handshake or a reset socket is the peer's problem, never a crash.
  server.on("tlsClientError", (err) => opts.logger.debug("TLS handshake refused", { listener: "connect", err }));
  server.on("sessionError", (err) => opts.logger.debug("HTTP/2 session error", { listener: "connect", err }));
  server.on("secureConnection", (socket: TLSSocket) => {
    socket.on("error", () => {});
    if (socket.authorized) readPeerCertificateOnce(socket);
  });
  return server;
}

function incoming(ctx: HandlerContext, prepared: PreparedRequest | undefined): IncomingCall {
  return {
    peerCertificate: ctx.values.get(peerCertificateKey),
    authorization: ctx.requestHeader.get("authorization") ?? undefined,
    requestId: ctx.requestHeader.get("x-request-id") ?? undefined,
    idempotencyKey: ctx.requestHeader.get("idempotency-key") ?? undefined,
    transport: "connect",
    wireFormat: prepared?.format ?? "binary",
    refusal: prepared === undefined ? NOT_DECODED : prepared.refusal,
  };
}

/** Fail closed should a request ever reach a handler without having been decoded ahead. */
const NOT_DECODED = new NexusError("internal", "internal error", { reason: "INTERNAL", cause: new Error("request reached its handler without being decoded") });

/**
 * A request for a path no route serves: audited through the pipeline as
 * UNKNOWN_METHOD, then answered UNIMPLEMENTED in the caller's protocol (a gRPC
 * status for gRPC and gRPC-Web, a Connect error with HTTP 404 otherwise).
 */
type FallbackArgs = Parameters<NonNullable<ConnectNodeAdapterOptions["fallback"]>>;

function refuseUnknownMethod(req: FallbackArgs[0], res: FallbackArgs[1], pipeline: CallPipeline): void {
  const path = (req.url ?? "").split("?")[0];
  const header = (name: string) => {
    const v = req.headers[name];
    return typeof v === "string" ? v : undefined;
  };
  const failure = new NexusError("unimplemented", `this server has no method ${JSON.stringify(path.slice(0, 200))}`, { reason: "UNKNOWN_METHOD" });
  // The body is not wanted; reading it lets an HTTP/1.1 connection be reused.
  req.resume();
  void pipeline
    .refuseUnknown(path, {
      peerCertificate: peerCertificateOf(req.socket as TLSSocket),
      authorization: header("authorization"),
      requestId: header("x-request-id"),
      transport: "connect",
      wireFormat: "json",
    }, failure)
    .then((err) => {
      const contentType = header("content-type") ?? "";
      if (/^application\/grpc/i.test(contentType)) {
        const status = toGrpcError(err);
        const headers = {
          ":status": 200,
          "content-type": contentType.split(";")[0],
          "grpc-status": String(status.code),
          "grpc-message": encodeURIComponent(err.message),
          "grpc-status-details-bin": (status.metadata?.get("grpc-status-details-bin")[0] as Buffer).toString("base64").replace(/=+$/, ""),
        };
        // A trailers-only response: gRPC clients read the status only from a header block that ends the stream.
        if ("stream" in res) res.stream.respond(headers, { endStream: true });
        else {
          const { ":status": _, ...http1 } = headers;
          res.writeHead(200, http1);
          res.end();
        }
      } else {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(errorToJsonBytes(toConnectError(err), {}));
      }
    });
}

function peerCertificateOf(socket: TLSSocket | undefined): PeerCertificate | undefined {
  if (!socket?.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  return cert?.raw ? cert : undefined;
}
