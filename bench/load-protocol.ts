// What the harness and its load-worker processes say to each other, and the
// requests a scenario sends. Requests are encoded once, before the clock
// starts, so a worker spends its CPU on gRPC and TLS rather than on protobuf:
// the server, PostgreSQL and the workers share one small machine.

import { create, toBinary } from "@bufbuild/protobuf";
import { HealthCheckRequestSchema } from "../gen/grpc/health/v1/health_pb.js";
import { GetSecretRequestSchema, ListSecretsRequestSchema, PutSecretRequestSchema } from "../gen/spike/nexus/v1/secret_pb.js";

export type ScenarioKind = "health" | "get" | "put" | "mix" | "list";
export type Operation = "health" | "get" | "put" | "list";

export const METHODS: Record<Operation, string> = {
  health: "/grpc.health.v1.Health/Check",
  get: "/spike.nexus.v1.SecretService/GetSecret",
  put: "/spike.nexus.v1.SecretService/PutSecret",
  list: "/spike.nexus.v1.SecretService/ListSecrets",
};

export interface PemIdentity {
  readonly cert: string;
  readonly key: string;
}

/** The data set a scenario draws from; paths are derived, not shipped. */
export interface DataSet {
  readonly readSecrets: number;
  readonly writeSecrets: number;
  /** First write path index this target uses (A/B runs give each server its own paths). */
  readonly writeOffset?: number;
  readonly valueBytes: number;
  /** ListSecrets prefixes are bench/list/<two hex digits>/: 256 of them. */
  readonly listPageSize: number;
}

export interface WorkerTask {
  readonly workerId: number;
  readonly kind: ScenarioKind;
  /** host:port of the mTLS gRPC listener. */
  readonly address: string;
  readonly serverId: string;
  readonly ca: string;
  readonly identity: PemIdentity;
  readonly channels: number;
  readonly inFlight: number;
  /**
   * Open loop: this worker's calls per second, sent on schedule whether or not
   * earlier ones have answered (inFlight then only caps what may be
   * outstanding). Latency is measured from the scheduled send time, so a
   * stalled server is not hidden by the generator waiting for it.
   */
  readonly rate?: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Percentage of puts in a "mix" scenario. */
  readonly putPercent: number;
  readonly data: DataSet;
  readonly seed: number;
  /** Makes every channel of every scenario distinct, so grpc-js shares no connection. */
  readonly channelSalt: string;
}

export type ParentMessage = { readonly type: "prepare"; readonly task: WorkerTask } | { readonly type: "go"; readonly startAt: number };

export interface OperationResult {
  readonly count: number;
  readonly errors: number;
  readonly histogram: number[];
}

export interface WorkerResult {
  readonly workerId: number;
  /** Completed within the measured window, per operation. */
  readonly operations: Partial<Record<Operation, OperationResult>>;
  /** Failures at any time, warm-up included, by gRPC status name. */
  readonly errorCodes: Record<string, number>;
  readonly firstError?: string;
  readonly measuredMs: number;
  readonly clientCpuSeconds: number;
  /** ListSecrets pages that came back with fewer paths than asked for. */
  readonly shortPages: number;
}

export type WorkerMessage =
  | { readonly type: "ready" }
  | { readonly type: "result"; readonly result: WorkerResult }
  | { readonly type: "failed"; readonly message: string };

export const readPath = (i: number) => `bench/read/s${String(i).padStart(6, "0")}`;
export const writePath = (i: number) => `bench/write/s${String(i).padStart(6, "0")}`;
export const listPrefix = (i: number) => `bench/list/${(i & 0xff).toString(16).padStart(2, "0")}/`;
export const LIST_PREFIXES = 256;

/** A value whose encoded JSON ({"value":"…"}) is exactly `bytes` long. */
export function secretData(bytes: number, seed: number): Record<string, string> {
  const filler = bytes - '{"value":""}'.length;
  let s = "";
  let x = seed >>> 0 || 1;
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (let i = 0; i < filler; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    s += alphabet[(x >>> 0) % alphabet.length];
  }
  return { value: s };
}

const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

export function encodeHealth(): Buffer {
  return bytes(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" })));
}

export function encodeGet(path: string): Buffer {
  return bytes(toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { path, version: 0 })));
}

export function encodePut(path: string, data: Record<string, string>): Buffer {
  return bytes(toBinary(PutSecretRequestSchema, create(PutSecretRequestSchema, { path, data })));
}

export function encodeList(prefix: string, pageSize: number): Buffer {
  return bytes(toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { prefix, pageSize })));
}

/** xorshift32: cheap, seedable, good enough to pick paths. */
export function random(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}
