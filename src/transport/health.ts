// grpc.health.v1.Health on every gRPC listener, including the plaintext one that
// Kubernetes probes use (they cannot present a client certificate). The overall
// status ("") is SERVING only while the database answers and the server can
// serve secrets: the readiness probe. The "liveness" service is SERVING for as
// long as the process answers at all, sealed or not, database or not, so a
// liveness probe restarts a hung process but never a sealed one in a loop.

import { HealthImplementation, type ServingStatus } from "grpc-health-check";

/** The health service name a liveness probe checks: SERVING whenever the process answers. */
export const LIVENESS_SERVICE = "liveness";

export class HealthReporter {
  readonly implementation: HealthImplementation;
  private readonly services: readonly string[];
  private status: ServingStatus = "NOT_SERVING";

  /** `services` are the fully qualified names whose status follows the overall one. */
  constructor(services: readonly string[]) {
    this.services = services;
    this.implementation = new HealthImplementation({ "": "NOT_SERVING", [LIVENESS_SERVICE]: "SERVING" });
    this.set("NOT_SERVING");
  }

  get current(): ServingStatus {
    return this.status;
  }

  set(status: ServingStatus): void {
    this.status = status;
    this.implementation.setStatus("", status);
    for (const s of this.services) this.implementation.setStatus(s, status);
  }
}
