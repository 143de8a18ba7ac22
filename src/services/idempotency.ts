// Idempotent writes (issue 17 §5). A write call may carry an `idempotency-key`
// header; this module decides what such a call does before and after its
// handler runs:
// - a record for (caller, key) exists: its request MAC must match this
//   request (else INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED), its response MAC
//   must verify, and the stored response is returned without running the
//   handler (the pipeline audits the call as a replay);
// - none exists: the handler runs with ctx.idempotency, and attaches the record
//   to the audit row of its change, so the store writes both in one statement;
// - a duplicate that ran while the first was still running waits for it: its
//   write blocks on the first call's uncommitted rows (the record's primary
//   key, or the rows its own precondition reads under a lock) and, once the
//   first commits, fails — IDEMPOTENCY_KEY_IN_USE, or its own precondition
//   (ALREADY_EXISTS, NOT_FOUND, a cas mismatch...), nothing of it written.
//   So on ANY failure of a call with a key the record is looked up again and,
//   if one exists now, replayed (or IDEMPOTENCY_KEY_REUSED). This is sound
//   because a change and its record commit in one transaction and READ
//   COMMITTED shows this call nothing of the first before that commit: a
//   failure caused by the first's change is seen only after its record is
//   visible. (A session advisory lock per (caller, key) would also serialize
//   them, but holds a pooled connection across the whole call.)
// Only responses without credentials are stored: the methods are listed here.

import { create, fromBinary, toBinary, toJson, type DescMethodUnary, type Message } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHmac } from "node:crypto";
import type { IdempotencyIntent } from "../calls/call-context.js";
import { NexusError } from "../errors/nexus-error.js";
import type { KeyManager } from "../keys/key-manager.js";
import { canonicalJson } from "../keys/integrity.js";
import { keyedMac, keyedMacKeyId, keyedMacMatches } from "../keys/keyed-mac.js";
import type { Logger } from "../log/logger.js";
import type { IdempotencyStore, StoredIdempotencyRecord } from "../store/idempotency-store.js";

/** How long a key is remembered (the 24 h); a retry after that runs again. */
export const IDEMPOTENCY_TTL_MS = 24 * 3_600_000;

/** Methods that accept an idempotency key: writes whose responses carry no credential (never CreateAdminToken). */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set([
  "/spike.nexus.v1.SecretService/PutSecret",
  "/spike.nexus.v1.SecretService/PromoteSecretVersion",
  "/spike.nexus.v1.SecretService/RotateSecret",
  "/spike.nexus.v1.PolicyService/CreatePolicy",
  "/spike.nexus.v1.PolicyService/UpdatePolicy",
  "/spike.nexus.v1.PolicyService/DeletePolicy",
]);

const KEY = /^[A-Za-z0-9._:-]{1,128}$/;
const DERIVATION_LABEL = "nexus/v1/idempotency-mac-key";
const REQUEST_LABEL = "nexus/v1/idempotency-request";
const RESPONSE_LABEL = "nexus/v1/idempotency-response";

/** What a handler of a call with an idempotency key gets: attaches the record to its change's audit row. */
export type { IdempotencyIntent };

/** What the handler is run with: the call's context, with or without an intent. */
export type IdempotentHandler = (intent: IdempotencyIntent | undefined) => Promise<object>;

export interface IdempotentWritesDeps {
  readonly store: IdempotencyStore;
  readonly keys: KeyManager;
  readonly logger: Logger;
  readonly ttlMs?: number;
}

export interface IdempotentOutcome {
  readonly response: Message;
  /** Set when the response is a stored one (the call is audited as a replay). */
  readonly replayed: boolean;
}

export class IdempotentWrites {
  private readonly ttlMs: number;

  constructor(private readonly d: IdempotentWritesDeps) {
    this.ttlMs = d.ttlMs ?? IDEMPOTENCY_TTL_MS;
  }

  /** Validates the header before any work: INVALID_ARGUMENT for a malformed key or a method that takes none. */
  static check(path: string, key: string): void {
    if (!KEY.test(key)) {
      throw NexusError.invalidArgument("idempotency-key", "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'", "INVALID_IDEMPOTENCY_KEY");
    }
    if (!IDEMPOTENT_METHODS.has(path)) {
      throw NexusError.invalidArgument("idempotency-key", `${path.slice(path.lastIndexOf("/") + 1)} does not take an idempotency key (only PutSecret, PromoteSecretVersion, RotateSecret and the policy writes do)`, "IDEMPOTENCY_NOT_SUPPORTED");
    }
  }

  /** Runs `handler` once per (caller, key): the first result is returned to every retry of the same request. */
  async run(method: DescMethodUnary, path: string, caller: string, key: string, request: Message, handler: IdempotentHandler): Promise<IdempotentOutcome> {
    IdempotentWrites.check(path, key);
    if (this.d.keys.sealed) throw this.d.keys.sealedError();
    // The request's canonical JSON form: map entries sorted, so the same request
    // compares equal whichever listener, encoding or map order carried it.
    const requestBytes = Buffer.from(canonicalJson(toJson(method.input, request as never)), "utf8");
    const earlier = await this.d.store.find(caller, key, this.ttlMs);
    if (earlier !== undefined && !earlier.expired) return { response: this.replay(method, path, requestBytes, earlier), replayed: true };
    // Expired and not yet removed by the expiry job: the key is free again.
    // (A database writer could move its time back to make it so; it can delete it anyway.)
    if (earlier !== undefined) await this.d.store.deleteExpiredRecord(earlier);
    const intent: IdempotencyIntent = {
      attach: (audit, response) => {
        // Key material is used synchronously here and not kept.
        const active = this.d.keys.activeIntegrityKey();
        const k = { id: active.id, key: derive(active.key) };
        const requestMac = keyedMac(k, REQUEST_LABEL, requestInput(caller, path, requestBytes));
        const responseBytes = Buffer.from(toBinary(method.output, create(method.output, response as never)));
        // The record's time is chosen here and MAC'd: it decides when the record
        // expires and is the created_at a replay reports.
        const createdAt = new Date();
        const responseMac = keyedMac(k, RESPONSE_LABEL, responseInput(caller, key, path, requestMac, responseBytes, createdAt));
        return { ...audit, idempotency: { caller, key, rpc: path, requestMac, response: responseBytes, responseMac, createdAt } };
      },
    };
    try {
      return { response: create(method.output, (await handler(intent)) as never), replayed: false };
    } catch (err) {
      // Whatever the failure: if a call with this key committed meanwhile (this
      // one was its duplicate, and failed on its change), answer with its result.
      const first = await this.d.store.find(caller, key, this.ttlMs).catch(() => undefined);
      if (first === undefined || first.expired) throw err;
      return { response: this.replay(method, path, requestBytes, first), replayed: true };
    }
  }

  /** Deletes expired records (one replica at a time); -1 if another replica is doing it. */
  deleteExpired(): Promise<number> {
    return this.d.store.deleteExpired(this.ttlMs);
  }

  private replay(method: DescMethodUnary, path: string, requestBytes: Uint8Array, r: StoredIdempotencyRecord): Message {
    if (this.d.keys.sealed) throw this.d.keys.sealedError();
    const lookup = (id: number) => this.lookupKey(id);
    const keyId = keyedMacKeyId(r.responseMac);
    if (keyId !== undefined && keyId !== keyedMacKeyId(r.requestMac)) throw this.altered(path);
    if (keyId !== undefined && lookup(keyId) === undefined && this.d.keys.integrityKeyById(keyId) !== undefined) {
      throw new NexusError("failed_precondition", "the record of this idempotency key was made under an integrity key retired since; retry with a new key", {
        reason: "IDEMPOTENCY_RECORD_UNVERIFIABLE",
      });
    }
    if (!keyedMacMatches(lookup, RESPONSE_LABEL, responseInput(r.caller, r.key, r.rpc, r.requestMac, r.response, r.createdAt), r.responseMac)) throw this.altered(path);
    if (r.rpc !== path || !keyedMacMatches(lookup, REQUEST_LABEL, requestInput(r.caller, path, requestBytes), r.requestMac)) {
      throw NexusError.invalidArgument(
        "idempotency-key",
        "was already used with a different request in the last 24 hours; use a new key for a new request",
        "IDEMPOTENCY_KEY_REUSED",
      );
    }
    const response = fromBinary(method.output, r.response) as Message & { createdAt?: unknown };
    if (response.createdAt === undefined && method.output.fields.some((f) => f.localName === "createdAt")) {
      response.createdAt = timestampFromDate(r.createdAt);
    }
    return response;
  }

  private altered(path: string): NexusError {
    this.d.logger.error("an idempotency record failed its integrity check; not replayed", { method: path });
    return new NexusError("internal", "the stored result of this idempotency key failed its integrity check", { reason: "IDEMPOTENCY_RECORD_ALTERED" });
  }

  /** The MAC key of records under integrity key `id`: derived, so these MACs never share a key with any other row's. */
  private lookupKey(id: number): Buffer | undefined {
    const k = this.d.keys.integrityKeyForRow(id);
    return k === undefined ? undefined : derive(k);
  }
}

function derive(integrityKey: Buffer): Buffer {
  return createHmac("sha256", integrityKey).update(DERIVATION_LABEL).digest();
}

function requestInput(caller: string, path: string, requestBytes: Uint8Array): unknown {
  return [caller, path, Buffer.from(requestBytes).toString("base64")];
}

function responseInput(caller: string, key: string, path: string, requestMac: Buffer, response: Buffer, createdAt: Date): unknown {
  return [caller, key, path, requestMac.toString("hex"), response.toString("base64"), createdAt.getTime()];
}
