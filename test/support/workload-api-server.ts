// A SPIFFE Workload API of our own, since SPIRE cannot be installed here: the
// FetchX509SVID stream of the official definition over a unix socket with
// grpc-js, refusing calls without the `workload.spiffe.io: true` header as a
// SPIRE agent does, and handing out short-lived SVIDs from a test CA that it
// rotates on demand (rotate()) or on a timer. Every caller gets the same SVIDs:
// tests start one server per identity they need.

import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  X509SVIDRequestSchema,
  X509SVIDResponseSchema,
  X509SVIDSchema,
  type X509SVIDRequest,
  type X509SVIDResponse,
} from "../../gen/spiffe/workload/workload_pb.js";
import type { Authority, IssuedCert } from "./test-pki.js";

export interface TestWorkloadApiOptions {
  readonly ca: Authority;
  /** The SVIDs to hand out, first = default. */
  readonly spiffeIds: readonly string[];
  /** Lifetime of each SVID (default 1 hour). */
  readonly ttlMs?: number;
  /** Rotate on this interval (default: only when rotate() is called). */
  readonly rotateEveryMs?: number;
}

export interface TestWorkloadApi {
  /** unix:///…/agent.sock */
  readonly socket: string;
  /** The SVIDs currently handed out, in order. */
  readonly current: readonly IssuedCert[];
  /** How many calls came without the security header (and were refused). */
  readonly refusedWithoutHeader: number;
  /** Issues new SVIDs and sends them on every open stream. */
  rotate(ttlMs?: number): Promise<readonly IssuedCert[]>;
  /** Ends every open stream with UNAVAILABLE, as an agent restart does. */
  dropStreams(): void;
  /** Sends nothing (no rotation, no first message) until resume(), as a stuck agent would. */
  pause(): void;
  /** Issues fresh SVIDs and sends them again. */
  resume(): Promise<readonly IssuedCert[]>;
  stop(): Promise<void>;
}

const SERVICE: grpc.ServiceDefinition = {
  FetchX509SVID: {
    path: "/SpiffeWorkloadAPI/FetchX509SVID",
    requestStream: false,
    responseStream: true,
    requestSerialize: (m: X509SVIDRequest) => Buffer.from(toBinary(X509SVIDRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(X509SVIDRequestSchema, b),
    responseSerialize: (m: X509SVIDResponse) => Buffer.from(toBinary(X509SVIDResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(X509SVIDResponseSchema, b),
  },
};

export async function startTestWorkloadApi(options: TestWorkloadApiOptions): Promise<TestWorkloadApi> {
  const dir = await mkdtemp(path.join(tmpdir(), "nexus-wlapi-"));
  const socketPath = path.join(dir, "agent.sock");
  const streams = new Set<grpc.ServerWritableStream<X509SVIDRequest, X509SVIDResponse>>();
  let current: IssuedCert[] = [];
  let refusedWithoutHeader = 0;
  let paused = false;

  const issueAll = async (ttlMs = options.ttlMs ?? 3_600_000) => {
    const notAfter = new Date(Date.now() + ttlMs);
    current = await Promise.all(options.spiffeIds.map((id) => options.ca.issue({ uris: [id], notAfter })));
    return current;
  };
  const response = () =>
    create(X509SVIDResponseSchema, {
      svids: current.map((svid, i) =>
        create(X509SVIDSchema, { spiffeId: options.spiffeIds[i], x509Svid: svid.der, x509SvidKey: pemBody(svid.keyPem), bundle: options.ca.der }),
      ),
    });

  await issueAll();
  const server = new grpc.Server();
  server.addService(SERVICE, {
    FetchX509SVID: (call: grpc.ServerWritableStream<X509SVIDRequest, X509SVIDResponse>) => {
      if (call.metadata.get("workload.spiffe.io")[0] !== "true") {
        refusedWithoutHeader++;
        call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: "security header missing from request" });
        return;
      }
      streams.add(call);
      call.on("cancelled", () => streams.delete(call));
      call.on("close", () => streams.delete(call));
      if (!paused) call.write(response());
    },
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  const timer = options.rotateEveryMs === undefined ? undefined : setInterval(() => void rotate(), options.rotateEveryMs);
  timer?.unref();

  async function rotate(ttlMs?: number) {
    const issued = await issueAll(ttlMs);
    if (!paused) for (const s of streams) s.write(response());
    return issued;
  }

  return {
    socket: `unix://${socketPath}`,
    get current() {
      return current;
    },
    get refusedWithoutHeader() {
      return refusedWithoutHeader;
    },
    rotate,
    dropStreams() {
      for (const s of streams) s.emit("error", { code: grpc.status.UNAVAILABLE, details: "agent restarting" });
      streams.clear();
    },
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
      return rotate();
    },
    async stop() {
      clearInterval(timer);
      server.forceShutdown();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The server settings that take the SVID from a Workload API instead of the files. */
export function workloadApiEnv(socket: string): Record<string, string> {
  return { NEXUS_SPIFFE_ENDPOINT_SOCKET: socket, NEXUS_TLS_CERT: "", NEXUS_TLS_KEY: "", NEXUS_TRUST_BUNDLE: "" };
}

function pemBody(pem: string): Uint8Array {
  return Buffer.from(pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
}
