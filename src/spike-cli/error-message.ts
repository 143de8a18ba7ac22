// Turns a failed call into one line a person can act on, from the status, the
// ErrorInfo reason and the field violations; never a stack trace.

import { SERVER_IDENTITY_REJECTED, type CallFailure } from "../client/nexus-client.js";

/** What a secret call was about, so a denial can say who may not do what on which path. */
export interface CallTarget {
  readonly permission: "READ" | "WRITE" | "LIST";
  readonly path: string;
}

export interface FailureContext {
  readonly address: string;
  readonly callerId: string;
  readonly target?: CallTarget;
}

export function failureMessage(failure: CallFailure, context: FailureContext): string {
  if (failure.reason === SERVER_IDENTITY_REJECTED) return `wrong server identity at ${context.address}: ${failure.message}`;
  if (failure.code === "PERMISSION_DENIED" && failure.reason === "NOT_AUTHORIZED" && context.target !== undefined) {
    const { permission, path } = context.target;
    return `permission denied: ${context.callerId} may not ${permission} ${path === "" ? "(all paths)" : path}`;
  }
  if (failure.code === "UNAVAILABLE" && failure.reason === undefined) {
    return `unavailable: cannot reach Nexus at ${context.address}: ${failure.message}`;
  }
  const words = failure.code.toLowerCase().replace(/_/g, " ");
  const violations = failure.violations ?? [];
  // One violation is already the message ("field: description"); several are listed.
  const detail = violations.length > 1 ? violations.map((v) => `${v.field}: ${v.description}`).join("; ") : failure.message;
  return `${words}: ${detail}`;
}
