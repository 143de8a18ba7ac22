// A grpc.health.v1.Health client for tests, built on grpc-js's generic client and
// our generated health messages: Check on the plaintext health port (as a
// Kubernetes probe calls it) and Watch over mTLS (a long-lived server stream).

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";
import { authorizeServerId } from "../../src/identity/server-authorizer.js";
import type { IssuedCert } from "./test-pki.js";

export type ServingStatusName = keyof typeof HealthCheckResponse_ServingStatus;

/** What one Check returned: a serving status, or the gRPC status name of the failure. */
export type HealthCheckResult = { readonly status: ServingStatusName } | { readonly error: string };

export interface HealthWatch {
  /** Resolves with the next status the stream delivers (buffered, in order). */
  next(timeoutMs?: number): Promise<ServingStatusName>;
  cancel(): void;
}

export interface HealthClient {
  check(service?: string, deadlineMs?: number): Promise<HealthCheckResult>;
  watch(service?: string): HealthWatch;
  close(): void;
}

const CHECK = "/grpc.health.v1.Health/Check";
const WATCH = "/grpc.health.v1.Health/Watch";

const serialize = (m: HealthCheckRequest) => Buffer.from(toBinary(HealthCheckRequestSchema, m));
const deserialize = (b: Buffer) => fromBinary(HealthCheckResponseSchema, b);
const statusName = (r: HealthCheckResponse) => HealthCheckResponse_ServingStatus[r.status] as ServingStatusName;

/** Plaintext credentials, for the health-only listener. */
export function insecureCredentials(): grpc.ChannelCredentials {
  return grpc.credentials.createInsecure();
}

/** mTLS credentials as our shipped client builds them: the server is authorized by its SPIFFE ID. */
export function mtlsCredentials(ca: string, client: IssuedCert, serverId: string): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(Buffer.from(ca), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
    checkServerIdentity: authorizeServerId(serverId),
  });
}

export function healthClient(address: string, credentials: grpc.ChannelCredentials): HealthClient {
  const client = new grpc.Client(address, credentials);
  return {
    check(service = "", deadlineMs = 5000) {
      return new Promise((resolve) => {
        client.makeUnaryRequest(
          CHECK,
          serialize,
          deserialize,
          create(HealthCheckRequestSchema, { service }),
          new grpc.Metadata(),
          { deadline: Date.now() + deadlineMs },
          (err, response) => {
            if (err || !response) resolve({ error: err ? grpc.status[err.code] : "NO_RESPONSE" });
            else resolve({ status: statusName(response) });
          },
        );
      });
    },

    watch(service = "") {
      const stream = client.makeServerStreamRequest(WATCH, serialize, deserialize, create(HealthCheckRequestSchema, { service }));
      const received: ServingStatusName[] = [];
      let waiter: { resolve(s: ServingStatusName): void; reject(err: Error): void } | undefined;
      let ended: Error | undefined;
      stream.on("data", (response: HealthCheckResponse) => {
        const w = waiter;
        waiter = undefined;
        if (w) w.resolve(statusName(response));
        else received.push(statusName(response));
      });
      const end = (err: Error) => {
        ended ??= err;
        const w = waiter;
        waiter = undefined;
        w?.reject(err);
      };
      stream.on("error", (err: grpc.ServiceError) => end(new Error(`the Watch stream failed: ${grpc.status[err.code]} ${err.details}`)));
      stream.on("end", () => end(new Error("the Watch stream ended")));
      return {
        next(timeoutMs = 10_000) {
          const buffered = received.shift();
          if (buffered !== undefined) return Promise.resolve(buffered);
          if (ended) return Promise.reject(ended);
          if (waiter) return Promise.reject(new Error("next() is already waiting"));
          return new Promise<ServingStatusName>((resolve, reject) => {
            const timer = setTimeout(() => {
              waiter = undefined;
              reject(new Error(`no Watch message within ${timeoutMs} ms`));
            }, timeoutMs);
            waiter = {
              resolve(s) {
                clearTimeout(timer);
                resolve(s);
              },
              reject(err) {
                clearTimeout(timer);
                reject(err);
              },
            };
          });
        },
        cancel: () => stream.cancel(),
      };
    },

    close: () => client.close(),
  };
}
