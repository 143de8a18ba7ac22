// Every RPC on every mTLS listener runs through here, in this order: identify the
// caller from its X.509-SVID, authorize the call, run the handler, and turn any
// failure into a NexusError. The transports only translate to and from the wire.

import { create, type DescMethodUnary, type Message } from "@bufbuild/protobuf";
import { randomUUID } from "node:crypto";
import type { AccessPolicy } from "../authorization/access-policy.js";
import { NexusError } from "../errors/nexus-error.js";
import type { PeerAuthenticator } from "../identity/peer-authenticator.js";
import type { Logger } from "../log/logger.js";
import { methodPath, type CallContext, type IncomingCall, type UnaryHandler } from "./call-context.js";
import { asNexusError } from "./error-mapping.js";

const BEARER = /^Bearer\s+(\S+)$/i;

export class CallPipeline {
  constructor(
    private readonly authenticator: PeerAuthenticator,
    private readonly access: AccessPolicy,
    private readonly logger: Logger,
  ) {}

  /** Runs one unary call; resolves with the response message or rejects with a NexusError. */
  async unary(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, request: Message, call: IncomingCall): Promise<Message> {
    const path = methodPath(method);
    const requestId = validRequestId(call.requestId) ?? randomUUID();
    try {
      if (call.peerCertificate === undefined) {
        throw new NexusError("unauthenticated", "a client X.509-SVID is required", { reason: "NO_CLIENT_CERTIFICATE" });
      }
      const caller = this.authenticator.authenticate(call.peerCertificate);
      this.access.authorize({ caller, method: path });
      const ctx: CallContext = {
        caller,
        method: path,
        requestId,
        signal: call.signal,
        bearerToken: bearerToken(call.authorization),
        transport: call.transport,
      };
      const response = await handler(request as never, ctx);
      return create(method.output, response);
    } catch (err) {
      const nexusError = asNexusError(err);
      if (nexusError.code === "internal") {
        this.logger.error("call failed", { method: path, requestId, err: nexusError.cause ?? nexusError });
      } else {
        this.logger.debug("call refused", { method: path, requestId, code: nexusError.code, reason: nexusError.reason });
      }
      throw nexusError;
    }
  }
}

function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  return BEARER.exec(header)?.[1];
}

// A caller-supplied request id is echoed into logs, so keep it boring.
function validRequestId(id: string | undefined): string | undefined {
  return id !== undefined && /^[A-Za-z0-9._:-]{1,128}$/.test(id) ? id : undefined;
}
