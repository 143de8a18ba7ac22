// An X.509-SVID that follows the SPIFFE Workload API: one FetchX509SVID stream
// (with the `workload.spiffe.io: true` header the API requires), a new SVID
// taken whenever the agent sends one, and the stream reopened with backoff and
// jitter when it fails (an agent restart). The last good SVID stays current
// until a new one arrives; whoever uses it decides what expiry means (the
// server reports NOT_SERVING). Server, CLI, agent and client library all take
// their identity from here when a socket is set.

import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { X509SVIDRequestSchema, X509SVIDResponseSchema, type X509SVIDResponse } from "../../gen/spiffe/workload/workload_pb.js";
import type { Logger } from "../log/logger.js";
import { backoffDelay, type BackoffPolicy } from "../timing/backoff.js";
import { parseEndpointSocket } from "./endpoint-socket.js";
import { selectSvid, type WorkloadSvid } from "./x509-context.js";

export interface WorkloadApiOptions {
  /** Use the SVID with this SPIFFE ID instead of the first one. */
  readonly spiffeId?: string;
  readonly logger?: Logger;
  readonly backoff?: BackoffPolicy;
  /** How long start() waits for the first SVID (default 30 s). */
  readonly firstSvidTimeoutMs?: number;
}

const FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID";
const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 200, maxMs: 30_000 };

export class WorkloadApiSource {
  private svid: WorkloadSvid | undefined;
  private readonly listeners = new Set<(svid: WorkloadSvid) => void>();
  private readonly client: grpc.Client;
  private call: grpc.ClientReadableStream<X509SVIDResponse> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private closed = false;
  private lastError: Error | undefined;
  private firstSvid: { resolve: () => void } | undefined;

  private constructor(
    readonly socket: string,
    private readonly options: WorkloadApiOptions,
  ) {
    const { target } = parseEndpointSocket(socket);
    this.client = new grpc.Client(target, grpc.credentials.createInsecure());
  }

  /** Connects and resolves once the first SVID has arrived; rejects with the last error after the timeout. */
  static async start(socket: string, options: WorkloadApiOptions = {}): Promise<WorkloadApiSource> {
    const source = new WorkloadApiSource(socket, options);
    const timeoutMs = options.firstSvidTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        source.firstSvid = { resolve };
        timer = setTimeout(() => {
          const why = source.lastError?.message ?? "no answer";
          reject(new Error(`no X.509-SVID from the Workload API at ${socket} within ${timeoutMs} ms: ${why}`));
        }, timeoutMs);
        source.open();
      });
    } catch (err) {
      source.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return source;
  }

  /** The SVID in use: the newest one the API sent. */
  get current(): WorkloadSvid {
    if (this.svid === undefined) throw new Error("no SVID yet");
    return this.svid;
  }

  onChange(listener: (svid: WorkloadSvid) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.call?.cancel();
    this.client.close();
  }

  private open(): void {
    if (this.closed) return;
    const metadata = new grpc.Metadata();
    metadata.set("workload.spiffe.io", "true");
    const call = this.client.makeServerStreamRequest(
      FETCH_X509_SVID,
      (m: ReturnType<typeof Object>) => Buffer.from(toBinary(X509SVIDRequestSchema, m as never)),
      (b: Buffer) => fromBinary(X509SVIDResponseSchema, b),
      {} as never,
      metadata,
    ) as grpc.ClientReadableStream<X509SVIDResponse>;
    this.call = call;
    let ended = false;
    const retry = (err: Error) => {
      if (ended || this.closed) return;
      ended = true;
      this.lastError = err;
      const delay = backoffDelay(this.options.backoff ?? DEFAULT_BACKOFF, this.failures++);
      this.options.logger?.warn("Workload API stream failed; retrying", { socket: this.socket, reason: err.message, retryInMs: delay });
      this.retryTimer = setTimeout(() => this.open(), delay);
      this.retryTimer.unref();
    };
    call.on("data", (response: X509SVIDResponse) => this.take(response));
    call.on("error", (err: Error) => retry(err));
    call.on("end", () => retry(new Error("the Workload API ended the stream")));
  }

  private take(response: X509SVIDResponse): void {
    let next: WorkloadSvid;
    try {
      next = selectSvid(response, this.options.spiffeId);
    } catch (err) {
      // Keep the last good SVID; the agent's next message may fix it.
      this.lastError = err as Error;
      this.options.logger?.warn("Workload API update refused; keeping the current SVID", { reason: (err as Error).message });
      return;
    }
    this.failures = 0;
    if (this.svid !== undefined && this.svid.certPem === next.certPem && this.svid.keyPem === next.keyPem && this.svid.bundlePem === next.bundlePem) return;
    this.svid = next;
    this.options.logger?.info("SVID received from the Workload API", { spiffeId: next.spiffeId, notAfter: new Date(next.notAfterMs).toISOString() });
    this.firstSvid?.resolve();
    this.firstSvid = undefined;
    for (const l of this.listeners) l(next);
  }
}
