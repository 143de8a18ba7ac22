// Servers for the secret and key-hierarchy tests: a cheap scrypt cost (the
// production cost takes about half a second and 128 MiB per derivation, too much
// for tests that unseal many times), initialized by the superuser, restartable on
// the same database and PKI as a replica restart would be, and a direct SQL
// handle for tests that read or tamper with rows behind the server's back.

import { expect } from "chai";
import type { DescMethodUnary, MessageShape } from "@bufbuild/protobuf";
import postgres from "postgres";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import type { CallResult, NexusClient } from "../../src/client/nexus-client.js";
import type { StartOptions } from "../../src/server/nexus-server.js";
import { createTestPki, startTestServer, type TestServer, type TestServerOptions } from "./test-server.js";

/** A scrypt cost low enough for tests; one test checks the real default separately. */
export const FAST_KDF: StartOptions = { kdfParams: { alg: "scrypt", N: 1024, r: 8, p: 1 }, failedUnsealDelayMs: 10 };

export const ADMIN_PASSWORD = "correct-horse-battery-staple-42";

export interface SecretServerOptions extends TestServerOptions {
  /** Call Initialize with this password (default ADMIN_PASSWORD); false leaves the server uninitialized. */
  readonly initialize?: string | false;
}

export interface SecretTestServer extends TestServer {
  /**
   * Stops this server and starts a new one on the same database and PKI: sealed,
   * with empty caches, as after a crash or a deploy. Stop the returned server, not this one.
   */
  restart(opts?: Omit<TestServerOptions, "pki" | "databaseUrl">): Promise<SecretTestServer>;
}

export async function startSecretServer(opts: SecretServerOptions = {}): Promise<SecretTestServer> {
  const ownPki = opts.pki === undefined;
  const pki = opts.pki ?? (await createTestPki());
  const server = await startTestServer({ ...opts, pki, start: { ...FAST_KDF, ...opts.start } });
  const password = opts.initialize ?? ADMIN_PASSWORD;
  if (password !== false) {
    const result = await server.client("grpc").call(OperatorService.method.initialize, { adminPassword: password });
    expect(result.code, `Initialize: ${result.message}`).to.equal("OK");
  }
  return restartable(server, ownPki);
}

function restartable(server: TestServer, ownPki: boolean): SecretTestServer {
  return {
    ...server,
    async stop() {
      await server.stop();
      if (ownPki) await server.pki.remove();
    },
    async restart(opts = {}) {
      await server.stop();
      const next = await startTestServer({ ...opts, pki: server.pki, databaseUrl: server.nexus.databaseUrl, start: { ...FAST_KDF, ...opts.start } });
      return restartable(next, ownPki);
    },
  };
}

/** Asserts a call succeeded and returns its response. */
export function ok<M extends DescMethodUnary>(result: CallResult<M>, what = "call"): MessageShape<M["output"]> {
  expect(result.code, `${what}: ${result.message ?? ""}`).to.equal("OK");
  return result.response as MessageShape<M["output"]>;
}

/** Asserts a call failed with `code` and carries no response; returns the message. */
export function fails<M extends DescMethodUnary>(result: CallResult<M>, code: string, what = "call"): string {
  expect(result.code, `${what}: ${result.message ?? ""}`).to.equal(code);
  expect(result.response, `${what}: a failed call carries no response`).to.equal(undefined);
  return result.message ?? "";
}

/** Logs in as admin (superuser SVID and password): the bearer token admin RPCs such as Seal need. */
export async function adminSession(client: NexusClient, password = ADMIN_PASSWORD): Promise<string> {
  return ok(await client.call(OperatorService.method.login, { adminPassword: password }), "Login").sessionToken;
}

/** Seals the server through `client`, as an admin. */
export async function seal(client: NexusClient, password = ADMIN_PASSWORD): Promise<void> {
  const bearerToken = await adminSession(client, password);
  ok(await client.call(OperatorService.method.seal, {}, { bearerToken }), "Seal");
}

/** A direct connection to a server's database, for reading and tampering with rows. */
export function openDatabase(url: string): postgres.Sql {
  return postgres(url, { max: 2, onnotice: () => {} });
}
