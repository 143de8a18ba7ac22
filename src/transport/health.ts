// grpc.health.v1.Health on every gRPC listener, including the plaintext one that
// Kubernetes probes use (they cannot present a client certificate). The overall
// status ("") is SERVING only while the database answers and the server can
// serve secrets.

import { HealthImplementation, type ServingStatus } from "grpc-health-check";

export class HealthReporter {
  readonly implementation: HealthImplementation;
  private readonly services: readonly string[];
  private status: ServingStatus = "NOT_SERVING";

  /** `services` are the fully qualified names whose status follows the overall one. */
  constructor(services: readonly string[]) {
    this.services = services;
    this.implementation = new HealthImplementation({ "": "NOT_SERVING" });
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
