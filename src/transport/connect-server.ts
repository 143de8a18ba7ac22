// The Connect listener: the same handlers and the same CallPipeline, served as
// the Connect protocol (JSON or binary over HTTP/1.1 and HTTP/2), gRPC and
// gRPC-Web through @connectrpc/connect-node, behind the same mTLS.

import http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import type { DescMethodUnary, Message } from "@bufbuild/protobuf";
import { createContextKey, createContextValues, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../log/logger.js";
import type { CallPipeline } from "./call-pipeline.js";
import type { ServiceRegistration } from "./call-context.js";
import { secureContextOptions, type TlsMaterial } from "./certificate-source.js";
import { asNexusError, toConnectError } from "./error-mapping.js";
import { readPeerCertificateOnce } from "./peer-certificate.js";

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

export function createConnectServer(opts: ConnectServerOptions): http2.Http2SecureServer {
  const routes = (router: ConnectRouter) => {
    for (const { desc, handlers } of opts.services) {
      const impl: Record<string, (req: Message, ctx: HandlerContext) => Promise<Message>> = {};
      for (const method of desc.methods as DescMethodUnary[]) {
        const handler = handlers[method.localName];
        impl[method.localName] = async (req, ctx) => {
          try {
            return await opts.pipeline.unary(method, handler, req, {
              peerCertificate: ctx.values.get(peerCertificateKey),
              authorization: ctx.requestHeader.get("authorization") ?? undefined,
              requestId: ctx.requestHeader.get("x-request-id") ?? undefined,
              transport: "connect",
            });
          } catch (err) {
            throw toConnectError(asNexusError(err));
          }
        };
      }
      router.service(desc, impl as never);
    }
  };
  const handler = connectNodeAdapter({
    routes,
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

function peerCertificateOf(socket: TLSSocket | undefined): PeerCertificate | undefined {
  if (!socket?.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  return cert?.raw ? cert : undefined;
}
