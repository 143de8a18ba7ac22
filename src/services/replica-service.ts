// ReplicaService: what replicas ask each other. RequestUnsealKeys is peer
// unseal's responder side (ADR 0012); authorization admits only the server's
// own SPIFFE ID, and the handshake itself is done by the responder injected
// here (server/peer-unseal.ts), which holds the SVID key.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { ReplicaService, type RequestUnsealKeysRequest, type RequestUnsealKeysResponseSchema } from "../../gen/spike/nexus/v1/replica_pb.js";
import { registerService, type ServiceRegistration } from "../calls/call-context.js";

export interface UnsealKeysResponder {
  respond(request: RequestUnsealKeysRequest, caller: string): Promise<MessageInitShape<typeof RequestUnsealKeysResponseSchema>>;
}

export function replicaService(responder: UnsealKeysResponder): ServiceRegistration {
  return registerService(ReplicaService, {
    async requestUnsealKeys(req, ctx) {
      return responder.respond(req, ctx.caller.toString());
    },
  });
}
