// OperatorService: the server's own state. GetStatus tells any valid SVID of the
// trust domain who it is and whether the server can serve secrets; Initialize,
// Unseal and Seal drive the key hierarchy (who may call them is decided in
// authorization/, not here).

import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { KeyManager } from "../keys/key-manager.js";
import { registerService, type ServiceRegistration } from "../transport/call-context.js";
import { NEXUS_VERSION } from "../version.js";

export interface OperatorDeps {
  readonly trustDomain: string;
  readonly keys: KeyManager;
  readonly initialized: () => Promise<boolean>;
}

export function operatorService(deps: OperatorDeps): ServiceRegistration {
  return registerService(OperatorService, {
    async getStatus(_req, ctx) {
      return {
        version: NEXUS_VERSION,
        initialized: await deps.initialized(),
        sealed: deps.keys.sealed,
        trustDomain: deps.trustDomain,
        callerSpiffeId: ctx.caller.toString(),
        activeKeyringKeyId: deps.keys.activeKeyringKeyId,
      };
    },
    async initialize(req) {
      return deps.keys.initialize(req.adminPassword);
    },
    async unseal(req) {
      await deps.keys.unseal(req.adminPassword);
      return { activeKeyringKeyId: deps.keys.activeKeyringKeyId };
    },
    async seal() {
      deps.keys.seal();
      return {};
    },
  });
}
