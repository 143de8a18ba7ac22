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
import type { ClientSvid, SvidProvider } from "./svid-provider.js";

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
}

interface Generation {
  readonly svid: ClientSvid;
  readonly clients: Map<string, NexusClient>;
  inflight: number;
  retired: boolean;
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

  return {
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
        try {
          const remaining = deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
          result = await clientFor(g, addresses[index]).call(method, request, { bearerToken: callOptions.bearerToken, deadlineMs: remaining });
        } finally {
          g.inflight--;
          closeIfDone(g);
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
      g.inflight++;
      try {
        yield* clientFor(g, addresses[preferred]).stream(method, request, callOptions);
      } finally {
        g.inflight--;
        closeIfDone(g);
      }
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
}
