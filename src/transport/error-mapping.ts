// The one place where NexusErrors become wire errors: a gRPC status with
// google.rpc.Status details (grpc-status-details-bin) for grpc-js, and a
// ConnectError with the same details for the Connect listener (AIP-193:
// ErrorInfo with a stable reason, BadRequest field violations, RetryInfo when
// a rate limit says when to retry).

import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Metadata, status as GrpcStatus, type StatusObject } from "@grpc/grpc-js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { NexusError, type ErrorCode } from "../errors/nexus-error.js";

export const ERROR_DOMAIN = "nexus.spike.ist";

const CODES: Record<ErrorCode, { grpc: GrpcStatus; connect: Code }> = {
  invalid_argument: { grpc: GrpcStatus.INVALID_ARGUMENT, connect: Code.InvalidArgument },
  not_found: { grpc: GrpcStatus.NOT_FOUND, connect: Code.NotFound },
  already_exists: { grpc: GrpcStatus.ALREADY_EXISTS, connect: Code.AlreadyExists },
  permission_denied: { grpc: GrpcStatus.PERMISSION_DENIED, connect: Code.PermissionDenied },
  unauthenticated: { grpc: GrpcStatus.UNAUTHENTICATED, connect: Code.Unauthenticated },
  failed_precondition: { grpc: GrpcStatus.FAILED_PRECONDITION, connect: Code.FailedPrecondition },
  aborted: { grpc: GrpcStatus.ABORTED, connect: Code.Aborted },
  resource_exhausted: { grpc: GrpcStatus.RESOURCE_EXHAUSTED, connect: Code.ResourceExhausted },
  out_of_range: { grpc: GrpcStatus.OUT_OF_RANGE, connect: Code.OutOfRange },
  unavailable: { grpc: GrpcStatus.UNAVAILABLE, connect: Code.Unavailable },
  deadline_exceeded: { grpc: GrpcStatus.DEADLINE_EXCEEDED, connect: Code.DeadlineExceeded },
  cancelled: { grpc: GrpcStatus.CANCELLED, connect: Code.Canceled },
  unimplemented: { grpc: GrpcStatus.UNIMPLEMENTED, connect: Code.Unimplemented },
  internal: { grpc: GrpcStatus.INTERNAL, connect: Code.Internal },
};

/** Anything thrown below the transport becomes a NexusError; unknown errors become a bare INTERNAL. */
export function asNexusError(err: unknown): NexusError {
  if (err instanceof NexusError) return err;
  return new NexusError("internal", "internal error", { reason: "INTERNAL", cause: err });
}

/** "PERMISSION_DENIED", as the audit log records codes. */
export function grpcStatusName(code: ErrorCode): string {
  return code.toUpperCase();
}

// AIP-193 details: always an ErrorInfo with the stable reason; a BadRequest
// with the field violations when there are any.
function details(err: NexusError) {
  const errorInfo = create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN });
  const badRequest = err.violations.length
    ? create(BadRequestSchema, { fieldViolations: err.violations.map((v) => ({ field: v.field, description: v.description })) })
    : undefined;
  const retryInfo = err.retryDelayMs === undefined ? undefined : create(RetryInfoSchema, { retryDelay: durationFromMs(Math.ceil(err.retryDelayMs)) });
  return { errorInfo, badRequest, retryInfo };
}

export function toGrpcError(err: NexusError): Partial<StatusObject> {
  const { errorInfo, badRequest, retryInfo } = details(err);
  const code = CODES[err.code].grpc;
  const status = create(StatusSchema, {
    code,
    message: err.message,
    details: [
      anyPack(ErrorInfoSchema, errorInfo),
      ...(badRequest ? [anyPack(BadRequestSchema, badRequest)] : []),
      ...(retryInfo ? [anyPack(RetryInfoSchema, retryInfo)] : []),
    ],
  });
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(toBinary(StatusSchema, status)));
  return { code, details: err.message, metadata };
}

export function toConnectError(err: NexusError): ConnectError {
  const { errorInfo, badRequest, retryInfo } = details(err);
  return new ConnectError(err.message, CODES[err.code].connect, undefined, [
    { desc: ErrorInfoSchema, value: errorInfo },
    ...(badRequest ? [{ desc: BadRequestSchema, value: badRequest }] : []),
    ...(retryInfo ? [{ desc: RetryInfoSchema, value: retryInfo }] : []),
  ]);
}
