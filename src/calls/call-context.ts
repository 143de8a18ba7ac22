// What a handler knows about the call it serves, whichever listener carried it:
// the authenticated caller, the method, a request id, its credential and
// authorization, and its audit record. It sits below both the listeners
// (src/transport) and the handlers (src/services), so that neither imports the
// other's layer (ADR 0013).

import type { DescMethod, DescMethodServerStreaming, DescMethodUnary, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { CallAudit } from "../audit/audit-log.js";
import type { AccessGrant } from "../authorization/access-policy.js";
import type { NexusError } from "../errors/nexus-error.js";
import type { AuditRow } from "../store/audit-row.js";
import type { SpiffeId } from "../identity/spiffe-id.js";

export type TransportKind = "grpc" | "connect";

/** How a request message was encoded on the wire: "json" only for Connect JSON. */
export type WireFormat = "binary" | "json";

export interface CallContext {
  readonly caller: SpiffeId;
  /** Full method path, e.g. "/spike.nexus.v1.OperatorService/GetStatus". */
  readonly method: string;
  readonly requestId: string;
  /** The token of `authorization: Bearer <token>`, if one was sent. */
  readonly bearerToken: string | undefined;
  readonly transport: TransportKind;
  /**
   * How the request message was encoded: "json" only for Connect JSON. Errors
   * that name fields or FieldMask paths name them as the caller must send them
   * (lowerCamelCase in JSON, snake_case in binary).
   */
  readonly wireFormat: WireFormat;
  /** What authorization decided (ListSecrets filter, the admin credential used). */
  readonly access: AccessGrant;
  /** The call's audit record; changes write it in their own transaction. */
  readonly audit: CallAudit;
  /**
   * Server streams only: aborted when the client goes away (cancel, deadline,
   * closed connection). A handler that waits between messages stops waiting
   * and returns; work it started on the caller's behalf need not stop.
   */
  readonly signal?: AbortSignal;
  /**
   * Set when the call carries an idempotency key (services/idempotency.ts): the
   * handler attaches its record to the audit row of its change.
   */
  readonly idempotency?: IdempotencyIntent;
  /** Server streams only: when the caller's X.509-SVID expires (ms since the epoch); a long stream ends then. */
  readonly svidNotAfterMs?: number;
}

export type UnaryHandler<M extends DescMethodUnary> = (
  request: MessageShape<M["input"]>,
  ctx: CallContext,
) => Promise<MessageInitShape<M["output"]>>;

/**
 * A server-streaming handler: an async iterable of response messages. The
 * stream ends when the iteration does; a throw ends it with that error. When
 * the client goes away the iteration is ended early (return) and ctx.signal is
 * aborted.
 */
export type ServerStreamHandler<M extends DescMethodServerStreaming> = (
  request: MessageShape<M["input"]>,
  ctx: CallContext,
) => AsyncIterable<MessageInitShape<M["output"]>>;

/** One handler per method of a service, keyed by the method's local name. */
export type ServiceHandlers<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends DescMethodUnary
    ? UnaryHandler<S["method"][K]>
    : S["method"][K] extends DescMethodServerStreaming
      ? ServerStreamHandler<S["method"][K]>
      : never;
};

/** A handler of either kind, as the listeners hold it (the method's kind says which). */
export type AnyHandler = UnaryHandler<DescMethodUnary> | ServerStreamHandler<DescMethodServerStreaming>;

/** A service descriptor with its handlers, as both listeners consume it. */
export interface ServiceRegistration {
  readonly desc: DescService;
  readonly handlers: Readonly<Record<string, AnyHandler>>;
}

export function registerService<S extends DescService>(desc: S, handlers: ServiceHandlers<S>): ServiceRegistration {
  for (const method of desc.methods) {
    if (method.methodKind !== "unary" && method.methodKind !== "server_streaming") {
      throw new Error(`${methodPath(method)}: only unary and server-streaming methods are served`);
    }
  }
  return { desc, handlers: handlers as unknown as Record<string, AnyHandler> };
}

/** What the transports extract from the wire before the pipeline runs. */
export interface IncomingCall {
  readonly peerCertificate: { readonly raw: Uint8Array; readonly fingerprint256?: string } | undefined;
  readonly authorization: string | undefined;
  readonly requestId: string | undefined;
  /** The `idempotency-key` header, if sent (checked by the pipeline). */
  readonly idempotencyKey?: string;
  readonly transport: TransportKind;
  readonly wireFormat: WireFormat;
  /** Set when the listener already knows the call must be refused (a body that does not decode or carries unknown fields). */
  readonly refusal?: NexusError;
}

export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** How a handler records its response with its change when the call carries an idempotency key (services/idempotency.ts). */
export interface IdempotencyIntent {
  /**
   * The audit row with the record of `response` attached. A response field
   * `created_at` left unset is filled on replay with the record's own time,
   * which the same statement as the change writes (PutSecret's version time).
   */
  attach(audit: AuditRow, response: object): AuditRow;
}
