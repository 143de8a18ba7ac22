// The client side we ship (tests now, the CLI later): mTLS with our own SVID,
// and the server authorized by its SPIFFE ID rather than its hostname, since
// SPIRE SVIDs usually carry no DNS name. One call shape over both listeners.

import { create, fromBinary, toBinary, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
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
}

/** The outcome of a call: the status name ("OK", "NOT_FOUND", …) and the response or message. */
export type CallResult<M extends DescMethodUnary> =
  | { readonly code: "OK"; readonly response: MessageShape<M["output"]>; readonly message?: undefined }
  | { readonly code: string; readonly message: string; readonly response?: undefined };

export interface NexusClient {
  call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options?: CallOptions): Promise<CallResult<M>>;
  close(): void;
}

const toBuffer = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** A grpc-js client for the gRPC listener. */
export function grpcNexusClient(address: string, identity: ClientIdentity, channelOptions: grpc.ChannelOptions = {}): NexusClient {
  const credentials = grpc.credentials.createSsl(asBuffer(identity.ca), asBuffer(identity.key), asBuffer(identity.cert), {
    checkServerIdentity: authorizeServerId(identity.serverId),
  });
  // SNI must be a name, not an IP; the server is authorized by SPIFFE ID anyway.
  const client = new grpc.Client(address, credentials, { "grpc.ssl_target_name_override": "localhost", ...channelOptions });
  return {
    call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options: CallOptions = {}) {
      const metadata = new grpc.Metadata();
      if (options.bearerToken !== undefined) metadata.set("authorization", `Bearer ${options.bearerToken}`);
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
            if (err) resolve({ code: grpc.status[err.code] ?? String(err.code), message: err.details });
            else resolve({ code: "OK", response: response as MessageShape<M["output"]> });
          },
        );
      });
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
      // A client is a cheap set of method wrappers; the connection lives in the transport.
      const client = createClient(method.parent, transport) as unknown as Record<string, (req: unknown, opts: unknown) => Promise<MessageShape<M["output"]>>>;
      try {
        const response = await client[method.localName](request, { headers, timeoutMs: options.deadlineMs });
        return { code: "OK", response } as CallResult<M>;
      } catch (err) {
        const e = ConnectError.from(err);
        return { code: connectCodeName(e.code), message: e.rawMessage };
      }
    },
    close: () => sessionManager?.abort(),
  };
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
