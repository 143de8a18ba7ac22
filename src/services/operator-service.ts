// OperatorService: the server's own state. GetStatus tells any valid SVID of the
// trust domain who it is and whether the server can serve secrets.

import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { registerService, type ServiceRegistration } from "../transport/call-context.js";
import { NEXUS_VERSION } from "../version.js";

export interface ServerState {
  initialized(): Promise<boolean>;
  sealed(): boolean;
}

export function operatorService(deps: { trustDomain: string; state: ServerState }): ServiceRegistration {
  return registerService(OperatorService, {
    async getStatus(_req, ctx) {
      return {
        version: NEXUS_VERSION,
        initialized: await deps.state.initialized(),
        sealed: deps.state.sealed(),
        trustDomain: deps.trustDomain,
        callerSpiffeId: ctx.caller.toString(),
      };
    },
  });
}
