// Fixtures for the authorization, audit and session specs: an admin session
// from Login, policies created through PolicyService, workload SVIDs for any
// SPIFFE ID, and RE2 patterns that match exactly one ID.

import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PolicyService, type Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { ADMIN_PASSWORD, ok } from "./secret-server.js";
import type { IssuedCert } from "./test-pki.js";
import { TRUST_DOMAIN, type TestServer } from "./test-server.js";

export interface IssuedCredential {
  readonly token: string;
  readonly expiresAt: Date;
}

/** Logs the superuser in and returns the session token (ttl unset: the 1 h default). */
export async function login(superuser: NexusClient, ttlMs?: number): Promise<IssuedCredential> {
  const res = ok(
    await superuser.call(OperatorService.method.login, { adminPassword: ADMIN_PASSWORD, ttl: ttlMs === undefined ? undefined : durationFromMs(ttlMs) }),
    "Login",
  );
  return { token: res.sessionToken, expiresAt: timestampDate(res.expiresAt!) };
}

/** Creates a named admin token with the given lifetime. */
export async function createAdminToken(superuser: NexusClient, bearerToken: string, name: string, ttlMs: number): Promise<IssuedCredential> {
  const res = ok(await superuser.call(OperatorService.method.createAdminToken, { name, ttl: durationFromMs(ttlMs) }, { bearerToken }), `CreateAdminToken ${name}`);
  return { token: res.token, expiresAt: timestampDate(res.adminToken!.expiresAt!) };
}

export interface PolicySpec {
  readonly name: string;
  readonly spiffeIdPattern: string;
  readonly pathPattern: string;
  readonly permissions: readonly Permission[];
}

/** Creates a policy through PolicyService (so it is MAC'd and every replica is told). */
export async function createPolicy(superuser: NexusClient, bearerToken: string, policy: PolicySpec): Promise<void> {
  ok(await superuser.call(PolicyService.method.createPolicy, { policy: { ...policy, permissions: [...policy.permissions] } }, { bearerToken }), `CreatePolicy ${policy.name}`);
}

export function spiffeId(path: string): string {
  return `spiffe://${TRUST_DOMAIN}/${path}`;
}

/** An RE2 pattern that matches exactly `literal` (policies match the whole string). */
export function exactly(literal: string): string {
  return literal.replace(/[\\.+*?()|[\]{}^$]/g, "\\$&");
}

/** An X.509-SVID for `id`, signed by the server's trust domain CA. */
export function issueSvid(server: TestServer, id: string): Promise<IssuedCert> {
  return server.pki.ca.issue({ uris: [id] });
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
export async function forEachConcurrently<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
