// The one error type of the domain. Every failure that reaches a caller is a
// NexusError: a code (named after the gRPC status it maps to), a message that is
// safe to show (never SQL, stack traces or secret material), a stable reason for
// machines (AIP-193 ErrorInfo.reason), and optional field violations for
// INVALID_ARGUMENT. Mapping to the wire happens in transport/error-mapping.ts.

export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "unauthenticated"
  | "failed_precondition"
  | "aborted"
  | "resource_exhausted"
  | "out_of_range"
  | "unavailable"
  | "deadline_exceeded"
  | "cancelled"
  | "unimplemented"
  | "internal";

export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

export interface NexusErrorOptions {
  /** Stable UPPER_SNAKE_CASE reason; defaults to the code in upper case. */
  readonly reason?: string;
  readonly violations?: readonly FieldViolation[];
  /** RESOURCE_EXHAUSTED from a rate limit: when the caller may retry (sent as google.rpc.RetryInfo). */
  readonly retryDelayMs?: number;
  /** Kept for logs only; never sent to a caller. */
  readonly cause?: unknown;
}

export class NexusError extends Error {
  override readonly name = "NexusError";
  readonly code: ErrorCode;
  readonly reason: string;
  readonly violations: readonly FieldViolation[];
  readonly retryDelayMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: NexusErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = options.reason ?? code.toUpperCase();
    this.violations = options.violations ?? [];
    this.retryDelayMs = options.retryDelayMs;
  }

  /** An INVALID_ARGUMENT naming the field and the rule it broke. */
  static invalidArgument(field: string, description: string, reason = "INVALID_ARGUMENT"): NexusError {
    return new NexusError("invalid_argument", `${field}: ${description}`, {
      reason,
      violations: [{ field, description }],
    });
  }
}
