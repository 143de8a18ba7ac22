// Brings a fresh server to the state the scenarios need, through its public
// API as an operator would: Initialize (default scrypt cost), Login, the
// workloads' policies, and the secrets GetSecret and PutSecret address, written
// with PutSecret many calls at a time.

import { OperatorService } from "../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient, type NexusClient } from "../src/client/nexus-client.js";
import { NEXUS_ID, TRUST_DOMAIN, type BenchPki, type Caller } from "./bench-pki.js";
import { readPath, secretData, writePath } from "./load-protocol.js";

export interface Operator {
  readonly clients: NexusClient[];
  readonly token: string;
  close(): void;
}

/** Superuser clients on `connections` distinct channels. */
export function operatorClients(address: string, pki: BenchPki, connections = 4): NexusClient[] {
  const identity = { ...pki.superuser, ca: pki.ca, serverId: NEXUS_ID };
  return Array.from({ length: connections }, (_, i) => grpcNexusClient(address, identity, { "nexus.bench.operator": i, "grpc.use_local_subchannel_pool": 1 }));
}

export async function initializeAndLogin(address: string, pki: BenchPki, password: string): Promise<Operator> {
  const clients = operatorClients(address, pki);
  const init = await clients[0].call(OperatorService.method.initialize, { adminPassword: password }, { deadlineMs: 60_000 });
  if (init.code !== "OK") throw new Error(`Initialize: ${init.code} ${init.message}`);
  return login(clients, password);
}

export async function login(clients: NexusClient[], password: string): Promise<Operator> {
  const res = await clients[0].call(OperatorService.method.login, { adminPassword: password }, { deadlineMs: 60_000 });
  if (res.response === undefined) throw new Error(`Login: ${res.code} ${res.message}`);
  return { clients, token: res.response.sessionToken, close: () => clients.forEach((c) => c.close()) };
}

export interface PolicySpec {
  readonly name: string;
  readonly spiffeIdPattern: string;
  readonly pathPattern: string;
  readonly permissions: Permission[];
}

/** An RE2 pattern matching exactly these callers' SPIFFE IDs. */
const callers = (...names: Caller[]) => `spiffe://${TRUST_DOMAIN.replace(/\./g, "\\.")}/bench/(${names.join("|")})`;

/**
 * reader: READ+LIST on bench/read/.*; writer: WRITE on bench/write/.*; mixed
 * (the 90/10 scenario) matches both; lister: LIST on bench/list/.*.
 */
export const BENCH_POLICIES: readonly PolicySpec[] = [
  { name: "bench-reader", spiffeIdPattern: callers("reader", "mixed"), pathPattern: "bench/read/.*", permissions: [Permission.READ, Permission.LIST] },
  { name: "bench-writer", spiffeIdPattern: callers("writer", "mixed"), pathPattern: "bench/write/.*", permissions: [Permission.WRITE] },
  { name: "bench-lister", spiffeIdPattern: callers("lister"), pathPattern: "bench/list/.*", permissions: [Permission.LIST] },
];

export async function createPolicy(op: Operator, p: PolicySpec): Promise<void> {
  const res = await op.clients[0].call(PolicyService.method.createPolicy, { policy: p }, { bearerToken: op.token, deadlineMs: 10_000 });
  if (res.code !== "OK") throw new Error(`CreatePolicy ${p.name}: ${res.code} ${res.message}`);
}

/** Writes version 1 of `count` secrets at `pathOf(i)`, `concurrency` calls in flight. */
export async function seedSecrets(op: Operator, count: number, pathOf: (i: number) => string, valueBytes: number, concurrency = 64): Promise<void> {
  let next = 0;
  let failure: Error | undefined;
  const lane = async (lane: number) => {
    const client = op.clients[lane % op.clients.length];
    while (failure === undefined && next < count) {
      const i = next++;
      const res = await client.call(SecretService.method.putSecret, { path: pathOf(i), data: secretData(valueBytes, i + 1) }, { deadlineMs: 30_000 });
      if (res.code !== "OK") failure ??= new Error(`PutSecret ${pathOf(i)}: ${res.code} ${res.message}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, l) => lane(l)));
  if (failure) throw failure;
}

export async function seedReadAndWriteSecrets(op: Operator, reads: number, writes: number, valueBytes: number): Promise<void> {
  await seedSecrets(op, reads, readPath, valueBytes);
  // Written last, so the server's bounded cache of known paths holds these: a
  // put to a known path is one statement (appendVersion).
  await seedSecrets(op, writes, writePath, valueBytes);
}
