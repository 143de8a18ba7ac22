// Every RPC on every mTLS listener runs through here, in this order: identify the
// caller from its X.509-SVID, authorize the call, run the handler, and record
// the outcome in the audit log — allowed, denied or failed. A response is
// returned only after its audit event has committed (fail closed). A server
// stream has two events: its start (written before the first message is sent)
// and its end (OK, the error it ended with, or CANCELLED when the client left).

import { create, type DescMethodServerStreaming, type DescMethodUnary, type Message } from "@bufbuild/protobuf";
import { createHash, randomUUID } from "node:crypto";
import type { AuditLog, CallRecord, DeferredCallRecord } from "../audit/audit-log.js";
import type { AccessPolicy } from "../authorization/access-policy.js";
import { NexusError } from "../errors/nexus-error.js";
import { storableText } from "../store/storable-text.js";
import { IdempotentWrites } from "../services/idempotency.js";
import type { PeerAuthenticator } from "../identity/peer-authenticator.js";
import type { Logger } from "../log/logger.js";
import { methodPath, type CallContext, type IncomingCall, type ServerStreamHandler, type UnaryHandler } from "../calls/call-context.js";
import { asNexusError, grpcStatusName } from "./error-mapping.js";
import type { RateLimits } from "./rate-limits.js";

const BEARER = /^Bearer\s+(\S+)$/i;

/** Watches calls from start to finish (metrics); `path` is the method path, the result gets the gRPC status name. */
export interface CallObserver {
  callStarted(path: string): (code: string) => void;
}

export class CallPipeline {
  constructor(
    private readonly authenticator: PeerAuthenticator,
    private readonly access: AccessPolicy,
    private readonly audit: AuditLog,
    private readonly logger: Logger,
    private readonly observer?: CallObserver,
    private readonly idempotency?: IdempotentWrites,
    private readonly limits?: RateLimits,
  ) {}

  /** Runs one unary call; resolves with the response message or rejects with a NexusError. */
  async unary(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, request: Message, call: IncomingCall): Promise<Message> {
    const ended = this.observer?.callStarted(methodPath(method));
    if (ended === undefined) return this.runUnary(method, handler, request, call);
    return this.runUnary(method, handler, request, call).then(
      (response) => (ended("OK"), response),
      (err: unknown) => {
        ended(grpcStatusName(asNexusError(err).code));
        throw err;
      },
    );
  }

  private async runUnary(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, request: Message, call: IncomingCall): Promise<Message> {
    const path = methodPath(method);
    const requestId = validRequestId(call.requestId) ?? randomUUID();
    const record = this.audit.begin({ requestId, rpc: path, time: new Date() });
    record.subject(...auditSubject(request));
    let response: Message;
    let replayed = false;
    let callerId: string | undefined;
    try {
      const caller = this.identifyBeforeRefusal(call, record, path).id;
      callerId = caller.toString();
      const bearerToken = bearer(call.authorization);
      const access = await this.access.authorize({ caller, method: path, request, bearerToken });
      const ctx: CallContext = { caller, method: path, requestId, bearerToken, transport: call.transport, wireFormat: call.wireFormat, access, audit: record };
      if (call.idempotencyKey === undefined) response = create(method.output, await handler(request as never, ctx));
      else ({ response, replayed } = await this.runIdempotent(method, handler, request, ctx, call.idempotencyKey));
    } catch (err) {
      if (callerId !== undefined) this.chargeFailedAuthentication(err, callerId);
      throw await this.failed(record, path, requestId, err);
    }
    // A replay is re-authorized above and audited as what it is (nothing was written).
    await record.finish("ok", "OK", replayed ? { idempotent_replay: true, idempotency_key: call.idempotencyKey } : {});
    return response;
  }

  /**
   * Runs one server-streaming call. Authentication, authorization and refusals
   * are those of a unary call; the iteration yields the response messages and
   * throws a NexusError if the stream fails. Ending the iteration early (the
   * client went away) ends the handler's iteration and records CANCELLED.
   */
  async *serverStream(
    method: DescMethodServerStreaming,
    handler: ServerStreamHandler<DescMethodServerStreaming>,
    request: Message,
    call: IncomingCall,
    signal: AbortSignal,
  ): AsyncGenerator<Message, void, undefined> {
    const path = methodPath(method);
    const requestId = validRequestId(call.requestId) ?? randomUUID();
    const start = this.audit.begin({ requestId, rpc: path, time: new Date() });
    const subject = auditSubject(request);
    start.subject(...subject);
    let ctx: CallContext;
    let end: DeferredCallRecord;
    try {
      const svid = this.identifyBeforeRefusal(call, start, path);
      const caller = svid.id;
      const bearerToken = bearer(call.authorization);
      const access = await this.access.authorize({ caller, method: path, request, bearerToken }).catch((err: unknown) => {
        throw this.chargeFailedAuthentication(err, caller.toString());
      });
      await start.finish("ok", "OK", { stream: "started" });
      // A change the handler makes is recorded with this record; the end event too if it makes none.
      // Its number is taken at first use, so an open stream holds back no one's checkpoint.
      end = this.audit.beginDeferred({ requestId, rpc: path });
      end.identify(caller.toString());
      end.subject(...subject);
      ctx = { caller, method: path, requestId, bearerToken, transport: call.transport, wireFormat: call.wireFormat, access, audit: end, signal, svidNotAfterMs: svid.notAfterMs };
    } catch (err) {
      throw await this.failed(start, path, requestId, err);
    }
    const ended = { stream: "ended", after_sequence: start.sequence };
    // A change the handler made wrote ctx.audit's event with it: the end gets an event of its own.
    const endRecord = () => {
      if (!end.isWritten) return end;
      const own = this.audit.begin({ requestId, rpc: path, time: new Date() });
      own.identify(ctx.caller.toString());
      own.subject(...subject);
      return own;
    };
    let sent = 0;
    let failure: NexusError | undefined;
    let completed = false;
    try {
      // for-await ends the handler's iteration (return) when this one is ended early.
      for await (const message of handler(request as never, ctx)) {
        yield create(method.output, message);
        sent++;
      }
      completed = true;
    } catch (err) {
      failure = await this.failed(endRecord(), path, requestId, err, { ...ended, messages: sent });
    } finally {
      if (failure === undefined) {
        const cancelled = !completed || signal.aborted;
        await endRecord()
          .finish(cancelled ? "error" : "ok", cancelled ? "CANCELLED" : "OK", { ...ended, messages: sent })
          .catch((auditErr) => this.logger.error("audit event of a stream's end not written", { method: path, requestId, err: auditErr }));
      }
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Audits a call to a method this server does not serve (or cannot route) and
   * returns the error to answer it with. The caller is identified if its
   * certificate is a valid SVID, so the event says who probed.
   */
  async refuseUnknown(rpc: string, call: IncomingCall, failure: NexusError): Promise<NexusError> {
    const path = auditText(rpc === "" ? "(none)" : rpc);
    const requestId = validRequestId(call.requestId) ?? randomUUID();
    const record = this.audit.begin({ requestId, rpc: path, time: new Date() });
    // Each refusal is an audit write: it takes a token like any call (rate-limits.ts).
    const answer = call.peerCertificate === undefined ? failure : this.refusalWithinLimits(call, record, failure);
    this.observer?.callStarted(rpc)(grpcStatusName(answer.code));
    return this.failed(record, path, requestId, answer);
  }

  /** A call with an idempotency key (services/idempotency.ts); refused where none is taken. */
  private runIdempotent(method: DescMethodUnary, handler: UnaryHandler<DescMethodUnary>, request: Message, ctx: CallContext, key: string) {
    if (this.idempotency === undefined) {
      IdempotentWrites.check(ctx.method, key);
      throw new NexusError("invalid_argument", "this server does not take idempotency keys", { reason: "IDEMPOTENCY_NOT_SUPPORTED" });
    }
    return this.idempotency.run(method, ctx.method, ctx.caller.toString(), key, request, (idempotency) => handler(request as never, { ...ctx, idempotency }));
  }

  /**
   * The caller's SVID; a call the transport refused already (body that does
   * not decode, unknown fields, too large) is identified and charged first
   * too, since its refusal is still an audit write: a caller over its limit
   * gets RATE_LIMITED, not a free audited refusal.
   */
  private identifyBeforeRefusal(call: IncomingCall, record: Pick<CallRecord, "identify">, method: string) {
    if (call.refusal !== undefined) throw this.refusalWithinLimits(call, record, call.refusal);
    try {
      return this.identifySvid(call, record);
    } catch (err) {
      throw this.foreignToSoleCallerMethod(err, method);
    }
  }

  /** A foreign trust domain's SVID calling a method only one ID may call is not authorized for it (AccessPolicy.soleCaller). */
  private foreignToSoleCallerMethod(err: unknown, method: string): unknown {
    const sole = this.access.soleCaller?.(method);
    if (sole === undefined || !(err instanceof NexusError) || err.reason !== "FOREIGN_TRUST_DOMAIN") return err;
    return new NexusError("permission_denied", `only ${sole} may call ${method}; ${err.message}`, { reason: "NOT_AUTHORIZED" });
  }

  /** `failure`, unless identifying the caller hit a rate limit; an invalid SVID leaves the record without a caller and charges its certificate. */
  private refusalWithinLimits(call: IncomingCall, record: Pick<CallRecord, "identify">, failure: NexusError): NexusError {
    try {
      this.identifySvid(call, record);
    } catch (err) {
      if (err instanceof NexusError && err.reason === "RATE_LIMITED") return err;
    }
    return failure;
  }

  /**
   * The caller's SVID, within the rate limits (rate-limits.ts): failed
   * authentications first, then calls. `record` is identified before the call
   * limit is checked, so a RATE_LIMITED event names the caller refused.
   */
  private identifySvid(call: IncomingCall, record: Pick<CallRecord, "identify">) {
    if (call.peerCertificate === undefined) {
      throw new NexusError("unauthenticated", "a client X.509-SVID is required", { reason: "NO_CLIENT_CERTIFICATE" });
    }
    const limits = this.limits;
    if (limits === undefined) {
      const svid = this.authenticator.authenticateSvid(call.peerCertificate);
      record.identify(svid.id.toString());
      return svid;
    }
    const presented = call.peerCertificate;
    limits.checkFailures(() => certificateKey(presented));
    let svid;
    try {
      svid = this.authenticator.authenticateSvid(presented);
    } catch (err) {
      limits.authenticationFailed(certificateKey(presented));
      throw err;
    }
    const caller = svid.id.toString();
    record.identify(caller);
    // A valid SVID whose bearer tokens keep failing is refused like a rejected certificate.
    limits.checkFailures(() => caller);
    limits.admit(caller);
    return svid;
  }

  /** A bad bearer token (UNAUTHENTICATED after a valid SVID) counts against the caller's failed authentications. */
  private chargeFailedAuthentication(err: unknown, caller: string): unknown {
    if (err instanceof NexusError && err.code === "unauthenticated") this.limits?.authenticationFailed(caller);
    return err;
  }

  private async failed(record: Pick<CallRecord, "finish">, path: string, requestId: string, err: unknown, detail: Record<string, unknown> = {}): Promise<NexusError> {
    const failure = asNexusError(err);
    const denied = failure.code === "permission_denied" || failure.code === "unauthenticated";
    if (failure.code === "internal") this.logger.error("call failed", { method: path, requestId, err: failure.cause ?? failure });
    else this.logger.debug("call refused", { method: path, requestId, code: failure.code, reason: failure.reason });
    await record.finish(denied ? "denied" : "error", grpcStatusName(failure.code), { ...detail, reason: failure.reason }).catch((auditErr) => {
      this.logger.error("audit event of a failed call not written", { method: path, requestId, err: auditErr });
    });
    return failure;
  }
}

/** Longest subject an audit event keeps of what a request names (valid paths and names are shorter). */
const MAX_AUDIT_SUBJECT = 256;

/**
 * What a call addresses, for its audit event: a secret path (ListSecrets: its
 * prefix) or a policy/token name, and a version. It is recorded before the
 * request is validated, so it is made storable first: a lone UTF-16 surrogate
 * (possible in Connect JSON) or a NUL would make PostgreSQL refuse the event,
 * and with it the whole batch.
 */
function auditSubject(request: Message): [string | null, number | null] {
  const r = request as Message & { path?: unknown; version?: unknown; name?: unknown; policy?: { name?: unknown }; prefix?: unknown };
  const text = (v: unknown) => (typeof v === "string" && v !== "" ? v : null);
  // ListSecrets records its prefix (none: it listed from the start of every path).
  const subject = text(r.path) ?? text(r.name) ?? text(r.policy?.name) ?? text(r.prefix);
  return [subject === null ? null : auditText(subject), typeof r.version === "number" && r.version > 0 ? r.version : null];
}


function auditText(s: string): string {
  // Cut first: a cut can split a surrogate pair, and the replacement mends that too.
  return storableText(s.length > MAX_AUDIT_SUBJECT ? `${s.slice(0, MAX_AUDIT_SUBJECT)}…` : s);
}

/** Who presented a certificate that was not a valid SVID: its SHA-256 fingerprint. */
function certificateKey(cert: { readonly raw: Uint8Array; readonly fingerprint256?: string }): string {
  return cert.fingerprint256 ?? createHash("sha256").update(cert.raw).digest("hex");
}

/** The token of `authorization: Bearer <token>`; any other authorization header is refused, not ignored. */
function bearer(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const token = BEARER.exec(header)?.[1];
  if (token === undefined) {
    throw new NexusError("unauthenticated", 'the authorization header must be "Bearer <token>" (one token)', { reason: "MALFORMED_AUTHORIZATION" });
  }
  return token;
}

// A caller-supplied request id is echoed into logs and the audit log, so keep it boring.
function validRequestId(id: string | undefined): string | undefined {
  return id !== undefined && /^[A-Za-z0-9._:-]{1,128}$/.test(id) ? id : undefined;
}
