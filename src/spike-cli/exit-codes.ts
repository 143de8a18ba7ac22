// The exit codes of `spike`, a contract scripts branch on (docs/cli.md): one
// number per kind of failure, chosen from the gRPC status and, for the sealed
// server and a refused server identity, the ErrorInfo reason.

import { SERVER_IDENTITY_REJECTED } from "../client/nexus-client.js";

export const EXIT = {
  ok: 0,
  /** A usage error or INVALID_ARGUMENT. */
  usage: 1,
  notFound: 2,
  /** PERMISSION_DENIED, UNAUTHENTICATED or a server with the wrong SPIFFE ID. */
  denied: 3,
  /** ABORTED, ALREADY_EXISTS, or FAILED_PRECONDITION other than sealed. */
  conflict: 4,
  /** UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, or a sealed server. */
  unavailable: 5,
  other: 6,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The text `spike --help` shows. */
export const EXIT_CODES_HELP = `Exit codes:
  0  ok
  1  usage error or INVALID_ARGUMENT
  2  NOT_FOUND
  3  PERMISSION_DENIED, UNAUTHENTICATED or a wrong server identity
  4  ABORTED, ALREADY_EXISTS or FAILED_PRECONDITION (other than sealed)
  5  UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or sealed
  6  anything else`;

/** The exit code for a failed call's status name and reason. */
export function exitCodeFor(code: string, reason?: string): ExitCode {
  if (reason === SERVER_IDENTITY_REJECTED) return EXIT.denied;
  switch (code) {
    case "INVALID_ARGUMENT":
      return EXIT.usage;
    case "NOT_FOUND":
      return EXIT.notFound;
    case "PERMISSION_DENIED":
    case "UNAUTHENTICATED":
      return EXIT.denied;
    case "FAILED_PRECONDITION":
      return reason === "SEALED" ? EXIT.unavailable : EXIT.conflict;
    case "ABORTED":
    case "ALREADY_EXISTS":
      return EXIT.conflict;
    case "UNAVAILABLE":
    case "DEADLINE_EXCEEDED":
    case "RESOURCE_EXHAUSTED":
      return EXIT.unavailable;
    default:
      return EXIT.other;
  }
}
