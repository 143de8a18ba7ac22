// Which calls the client repeats and how long it waits: UNAVAILABLE only,
// methods the proto marks NO_SIDE_EFFECTS only (never a write), and a delay
// between half and all of an exponential step capped at the maximum.

import { expect } from "chai";
import { OperatorService } from "../../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../../gen/spike/nexus/v1/secret_pb.js";
import { isIdempotent, isRetryableFailure } from "../../../src/client/retry-policy.js";
import { SERVER_IDENTITY_REJECTED } from "../../../src/client/nexus-client.js";
import { backoffDelay } from "../../../src/timing/backoff.js";

describe("client retry policy", () => {
  it("reads are idempotent by the proto; writes are not", () => {
    for (const m of [SecretService.method.getSecret, SecretService.method.listSecrets, SecretService.method.getSecretMetadata, OperatorService.method.getStatus]) {
      expect(isIdempotent(m), m.name).to.equal(true);
    }
    for (const m of [SecretService.method.putSecret, SecretService.method.deleteSecret, SecretService.method.destroySecret, OperatorService.method.unseal]) {
      expect(isIdempotent(m), m.name).to.equal(false);
    }
  });

  it("only UNAVAILABLE is retried, and never a server refused for its identity", () => {
    expect(isRetryableFailure("UNAVAILABLE", undefined, SERVER_IDENTITY_REJECTED)).to.equal(true);
    expect(isRetryableFailure("UNAVAILABLE", "SEALED", SERVER_IDENTITY_REJECTED)).to.equal(true);
    expect(isRetryableFailure("UNAVAILABLE", SERVER_IDENTITY_REJECTED, SERVER_IDENTITY_REJECTED)).to.equal(false);
    for (const code of ["DEADLINE_EXCEEDED", "INTERNAL", "ABORTED", "PERMISSION_DENIED"]) expect(isRetryableFailure(code, undefined, SERVER_IDENTITY_REJECTED), code).to.equal(false);
  });

  it("backoff: between half and all of initial × 2^attempt, capped", () => {
    const policy = { initialMs: 100, maxMs: 1000 };
    expect(backoffDelay(policy, 0, () => 0)).to.equal(50);
    expect(backoffDelay(policy, 0, () => 1)).to.equal(100);
    expect(backoffDelay(policy, 2, () => 1)).to.equal(400);
    expect(backoffDelay(policy, 10, () => 1)).to.equal(1000);
    expect(backoffDelay(policy, 10, () => 0)).to.equal(500);
  });
});
