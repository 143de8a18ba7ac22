// Which failed calls the client tries again, and when. Only UNAVAILABLE is
// retried (the replica is gone, restarting, sealed or unreachable: another
// replica or a moment later may answer) and only for calls that may safely run
// twice: the RPCs the proto marks NO_SIDE_EFFECTS or IDEMPOTENT. Writes are
// not retried, PutSecret with cas included: if the first attempt landed before
// the connection broke, the retry would be refused as a stale cas (ABORTED)
// and a caller could not tell that its write succeeded. A caller that knows
// better sets `idempotent: true` on the call.

import type { DescMethodUnary } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { BackoffPolicy } from "../timing/backoff.js";

export interface RetryPolicy extends BackoffPolicy {
  /** Attempts per call, the first included (default 5). 1 turns retries off. */
  readonly maxAttempts: number;
  /**
   * Longest wait for one attempt of a retryable call before the next replica is
   * asked (default 10 s; undefined: only the call's deadline). With a deadline
   * an attempt also gets no more than its share of the time left.
   */
  readonly attemptTimeoutMs?: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 5, initialMs: 100, maxMs: 2000, attemptTimeoutMs: 10_000 };

/** Whether the proto declares the method safe to repeat. */
export function isIdempotent(method: DescMethodUnary): boolean {
  return method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS || method.idempotency === MethodOptions_IdempotencyLevel.IDEMPOTENT;
}

/**
 * A replica that refused as sealed (FAILED_PRECONDITION, reason SEALED) did so
 * before acting, so any call may go on to another replica: a replica that
 * restarted sealed is as good as away. With one address there is no one else
 * to ask, and the caller sees the refusal at once.
 */
export function isSealedRefusal(code: string, reason: string | undefined): boolean {
  return code === "FAILED_PRECONDITION" && reason === "SEALED";
}

/** The status a retry can help with. A server refused for its identity is not one: it will not change its mind. */
export function isRetryableFailure(code: string, reason: string | undefined, serverIdentityRejected: string): boolean {
  return code === "UNAVAILABLE" && reason !== serverIdentityRejected;
}
