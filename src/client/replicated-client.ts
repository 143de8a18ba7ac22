// The client workloads use (`nexus/client`): one or more Nexus replicas, the
// caller's SVID from a provider that follows rotation, and idempotent calls
// retried on UNAVAILABLE with backoff and jitter, moving to the next replica,
// so that a replica going away costs a retry, not an outage. A replica that
// answers sealed is passed over for the next one (it refused before acting).
//
// Connections come in generations: one gRPC channel per address, built with
// one SVID. When the provider hands out a new SVID, later calls open a new
// generation; the old one is closed once its calls have finished. A server
// stream takes a channel from the same generations and holds it until it ends;
// it is not retried (what it already yielded cannot be taken back).

import type { DescMethodServerStreaming, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import { parseSpiffeId } from "../identity/spiffe-id.js";
import { backoffDelay, sleep } from "../timing/backoff.js";
import { grpcNexusClient, SERVER_IDENTITY_REJECTED, StreamFailure, type CallOptions, type CallResult, type NexusClient } from "./nexus-client.js";
import { DEFAULT_RETRY_POLICY, isIdempotent, isRetryableFailure, isSealedRefusal, type RetryPolicy } from "./retry-policy.js";
import { openSvid, type ClientSvid, type SvidProvider, type SvidSourceOptions } from "./svid-provider.js";
import { watchSecrets, type WatchItem, type WatchOptions } from "./secret-watch.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";

export interface NexusClientOptions {
  /**
   * The gRPC listeners, "host:port" each (or one comma-separated string). A
   * DNS name that resolves to several addresses is one entry: grpc-js tries
   * its addresses in turn.
   */
  readonly addresses: string | readonly string[];
  /** The caller's SVID: svidFromFiles, svidFromWorkloadApi or staticSvid. The client closes it on close(). */
  readonly svid: SvidProvider;
  /** The SPIFFE ID every replica must present; default spiffe://<the caller's trust domain>/spike/nexus. */
  readonly serverId?: string;
  readonly retry?: Partial<RetryPolicy>;
  readonly channelOptions?: grpc.ChannelOptions;
}

export interface ReplicatedCallOptions extends CallOptions {
  /** Retry this call on UNAVAILABLE even though the proto does not mark it idempotent (or never retry it: false). */
  readonly idempotent?: boolean;
}

export interface ReplicatedNexusClient extends NexusClient {
  call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options?: ReplicatedCallOptions): Promise<CallResult<M>>;
  /** The SPIFFE ID of the SVID calls are made with now. */
  readonly spiffeId: string;
  readonly serverId: string;
  readonly addresses: readonly string[];
  /**
   * WatchSecrets under `prefix` as an async iterator that reconnects (next
   * replica, backoff) and resumes from the last cursor it yielded; see
   * secret-watch.ts. Break out of the loop or abort `signal` to stop.
   */
  watch(prefix: string, options?: WatchOptions): AsyncGenerator<WatchItem, void, undefined>;
}

/**
 * How long one attempt of a retryable call may take: the policy's
 * attemptTimeoutMs, and with a deadline no more than an even share of the time
 * left among the replicas not yet tried in this round (and the attempts left).
 */
export function attemptBudget(policy: RetryPolicy, replicas: number, attempt: number, deadline: number | undefined): number | undefined {
  const cap = policy.attemptTimeoutMs;
  if (deadline === undefined) return cap;
  const turnsLeft = Math.max(1, Math.min(replicas - (attempt % replicas), policy.maxAttempts - attempt));
  const share = Math.max(1, Math.floor((deadline - Date.now()) / turnsLeft));
  return cap === undefined ? share : Math.min(cap, share);
}

interface Generation {
  readonly svid: ClientSvid;
  readonly clients: Map<string, NexusClient>;
  inflight: number;
  retired: boolean;
}

export interface OpenNexusClientOptions extends Omit<NexusClientOptions, "svid"> {
  /** An SVID provider; or leave it out and say where the SVID comes from with `source`. */
  readonly svid?: SvidProvider;
  /** Socket or files; with neither (and no svid), the Workload API at SPIFFE_ENDPOINT_SOCKET. */
  readonly source?: SvidSourceOptions;
}

/**
 * createNexusClient with the SVID found as the CLI and the agent find it:
 * `svid`, or `source` (a socket or files), or by default the Workload API at
 * SPIFFE_ENDPOINT_SOCKET. Resolves once the first SVID is in hand.
 */
export async function openNexusClient(options: OpenNexusClientOptions): Promise<ReplicatedNexusClient> {
  const { svid, source, ...rest } = options;
  if (svid !== undefined && (source?.socket !== undefined || source?.files !== undefined)) {
    throw new Error(`svid and source.${source.socket !== undefined ? "socket" : "files"} are both set: give one SVID source`);
  }
  return createNexusClient({ ...rest, svid: svid ?? (await openSvid(source)) });
}

export function createNexusClient(options: NexusClientOptions): ReplicatedNexusClient {
  const addresses = (typeof options.addresses === "string" ? options.addresses.split(",") : [...options.addresses]).map((a) => a.trim()).filter((a) => a !== "");
  if (addresses.length === 0) throw new Error("createNexusClient: no server address");
  const policy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  const serverId = options.serverId ?? `spiffe://${new URL(options.svid.current().spiffeId).host}/spike/nexus`;
  parseSpiffeId(serverId);
  let preferred = 0;
  let generation: Generation | undefined;
  let closed = false;

  const closeIfDone = (g: Generation) => {
    if (g.retired && g.inflight === 0) g.clients.forEach((c) => c.close());
  };
  const currentGeneration = (): Generation => {
    const svid = options.svid.current();
    if (generation?.svid !== svid) {
      if (generation) {
        generation.retired = true;
        closeIfDone(generation);
      }
      generation = { svid, clients: new Map(), inflight: 0, retired: false };
    }
    return generation;
  };
  const clientFor = (g: Generation, address: string): NexusClient => {
    let c = g.clients.get(address);
    if (c === undefined) {
      c = grpcNexusClient(address, { cert: g.svid.certPem, key: g.svid.keyPem, ca: g.svid.bundlePem, serverId }, options.channelOptions);
      g.clients.set(address, c);
    }
    return c;
  };

  const client: ReplicatedNexusClient = {
    serverId,
    addresses,
    get spiffeId() {
      return options.svid.current().spiffeId;
    },
    async call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, callOptions: ReplicatedCallOptions = {}): Promise<CallResult<M>> {
      if (closed) return { code: "CANCELLED", message: "the client is closed" };
      const deadline = callOptions.deadlineMs === undefined ? undefined : Date.now() + callOptions.deadlineMs;
      const retryable = callOptions.idempotent ?? isIdempotent(method);
      for (let attempt = 0; ; attempt++) {
        const index = preferred;
        const g = currentGeneration();
        g.inflight++;
        let result: CallResult<M>;
        // A retryable call gives each attempt only its share of the time left, so
        // that a replica that accepts connections and never answers costs one
        // attempt and the next replica still gets its turn before the deadline.
        const remaining = deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
        const attemptMs = retryable ? attemptBudget(policy, addresses.length, attempt, deadline) : undefined;
        const attemptLimited = attemptMs !== undefined && (remaining === undefined || attemptMs < remaining);
        const attemptDeadlineMs = attemptLimited ? attemptMs : remaining;
        try {
          result = await clientFor(g, addresses[index]).call(method, request, { bearerToken: callOptions.bearerToken, deadlineMs: attemptDeadlineMs });
        } finally {
          g.inflight--;
          closeIfDone(g);
        }
        if (result.code === "DEADLINE_EXCEEDED" && attemptLimited) {
          // Only this attempt's share ran out: the replica hangs, treat it as away.
          result = { code: "UNAVAILABLE", message: `${addresses[index]} did not answer within ${attemptDeadlineMs} ms`, reason: undefined };
        }
        if (isSealedRefusal(result.code, result.reason)) {
          // Sealed replicas are tried once each, without waiting: the next one may hold its keys.
          if (preferred === index) preferred = (index + 1) % addresses.length;
          if (attempt + 1 >= addresses.length || closed) return result;
          continue;
        }
        if (!isRetryableFailure(result.code, result.reason, SERVER_IDENTITY_REJECTED)) return result;
        // This replica is away: the next call, retried or not, goes to the next one.
        if (preferred === index) preferred = (index + 1) % addresses.length;
        if (!retryable || attempt + 1 >= policy.maxAttempts || closed) return result;
        // Another replica is tried at once; after a full round, wait.
        const round = Math.floor((attempt + 1) / addresses.length);
        const delay = (attempt + 1) % addresses.length === 0 ? backoffDelay(policy, round - 1) : 0;
        if (deadline !== undefined && Date.now() + delay >= deadline) return result;
        await sleep(delay);
      }
    },
    async *stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, callOptions: CallOptions = {}): AsyncIterable<MessageShape<M["output"]>> {
      if (closed) throw new StreamFailure("CANCELLED", "the client is closed");
      const g = currentGeneration();
      const index = preferred;
      g.inflight++;
      try {
        yield* clientFor(g, addresses[index]).stream(method, request, callOptions);
      } catch (err) {
        // A caller that cancelled with a StreamFailure as the reason (watch(): the replica fell silent) reports that instead of CANCELLED.
        const reason: unknown = callOptions.signal?.aborted ? callOptions.signal.reason : undefined;
        const failure = reason instanceof StreamFailure ? reason : err;
        // As for calls: after a replica went away (or sealed), the next stream or call goes to the next one.
        if (failure instanceof StreamFailure && (isRetryableFailure(failure.code, failure.reason, SERVER_IDENTITY_REJECTED) || isSealedRefusal(failure.code, failure.reason))) {
          if (preferred === index) preferred = (index + 1) % addresses.length;
        }
        throw failure;
      } finally {
        g.inflight--;
        closeIfDone(g);
      }
    },
    watch(prefix: string, watchOptions?: WatchOptions): AsyncGenerator<WatchItem, void, undefined> {
      return watchSecrets((request, o) => client.stream(SecretService.method.watchSecrets, request, o), prefix, watchOptions);
    },
    close() {
      closed = true;
      if (generation) {
        generation.retired = true;
        closeIfDone(generation);
      }
      options.svid.close();
    },
  };
  return client;
}
