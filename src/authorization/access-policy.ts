// The authorization decision, in one place: given who calls and what, allow or
// refuse. This release's rule (the "superuser seam"): any valid SVID of the trust
// domain may read its own status; everything else needs the superuser ID. The
// policy engine replaces this class without touching the transports.

import { NexusError } from "../errors/nexus-error.js";
import type { SpiffeId } from "../identity/spiffe-id.js";

export interface AccessRequest {
  readonly caller: SpiffeId;
  /** Full method path, e.g. "/spike.nexus.v1.OperatorService/GetStatus". */
  readonly method: string;
}

export interface AccessPolicy {
  /** Throws a permission_denied NexusError when the call is not allowed. */
  authorize(request: AccessRequest): void;
}

export class SuperuserAccessPolicy implements AccessPolicy {
  private readonly superuserId: string;
  private readonly openMethods: ReadonlySet<string>;

  constructor(superuserId: string, openMethods: Iterable<string>) {
    this.superuserId = superuserId;
    this.openMethods = new Set(openMethods);
  }

  authorize({ caller, method }: AccessRequest): void {
    if (this.openMethods.has(method)) return;
    if (caller.toString() === this.superuserId) return;
    throw new NexusError("permission_denied", `${caller.toString()} may not call ${method}`, { reason: "NOT_AUTHORIZED" });
  }
}
