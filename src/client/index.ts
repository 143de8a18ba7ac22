// The public entry point `nexus/client`: a typed client for Node workloads.
//
//   import { openNexusClient, SecretService } from "nexus/client";
//   // The SVID from the Workload API at SPIFFE_ENDPOINT_SOCKET (or pass source: { socket } or { files }).
//   const client = await openNexusClient({ addresses: ["nexus-0.nexus:8553", "nexus-1.nexus:8553"] });
//   const result = await client.call(SecretService.method.getSecret, { path: "apps/demo/db" });
//   if (result.code === "OK") use(result.response.data);
//   for await (const item of client.watch("apps/demo/", { signal })) {
//     if (item.kind === "cursor_expired") rereadEverything();
//     else if (item.event.type !== WatchEventType.HEARTBEAT) reread(item.event.path);
//   }
//
// Calls return a CallResult (the status name, and the response or the
// server's reason and field violations) instead of throwing, so callers branch
// on codes and reasons. Everything else in this package is internal.

export { createNexusClient, openNexusClient, type OpenNexusClientOptions, type NexusClientOptions, type ReplicatedCallOptions, type ReplicatedNexusClient } from "./replicated-client.js";
export { openSvid, staticSvid, svidFromFiles, svidFromWorkloadApi, type ClientSvid, type SvidFiles, type SvidProvider, type SvidSourceOptions } from "./svid-provider.js";
export { DEFAULT_RETRY_POLICY, isIdempotent, type RetryPolicy } from "./retry-policy.js";
export { SERVER_IDENTITY_REJECTED, type CallFailure, type CallOptions, type CallResult, type FieldViolation, type NexusClient } from "./nexus-client.js";
export { watchSecrets, DEFAULT_WATCH_BACKOFF, WatchEventType, type WatchItem, type WatchOptions, type WatchSecretsResponse } from "./secret-watch.js";
export { StreamFailure } from "./nexus-client.js";
export { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
export { PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
export { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
