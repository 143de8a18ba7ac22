// What only a real process shows: a rotation survives kill -9 of the server
// in the middle of its re-wrap (after some batches committed), and resumes
// by itself after a restart and Unseal; and the schedule starts a rotation on
// its own once the active wrapping key has wrapped its limit of data keys.

import { expect } from "chai";
import { OperatorService, RotationPhase, type RotateEncryptionKeyResponse } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient, type NexusClient } from "../../src/client/nexus-client.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { forEachConcurrently } from "../support/admin-fixtures.js";
import { cleanEnv, startNexusProcess, type NexusProcess } from "../support/nexus-process.js";
import { ADMIN_PASSWORD, adminSession, ok, openDatabase } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";
import { createTestPki, NEXUS_ID, type TestPki } from "../support/test-server.js";
import { FAST_KDF, startSecretServer } from "../support/secret-server.js";

const SECRETS = 1000;

describe("key rotation in a child process", function () {
  this.timeout(180_000);
  let pki: TestPki;
  let server: NexusProcess | undefined;
  const clients: NexusClient[] = [];

  before(async () => {
    pki = await createTestPki();
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await server?.stop().catch(() => {});
    await pki.remove();
  });

  async function start(databaseUrl: string, port: number): Promise<NexusClient> {
    server = startNexusProcess(
      ["serve"],
      cleanEnv({
        NEXUS_DATABASE_URL: databaseUrl,
        NEXUS_LISTEN: `127.0.0.1:${port}`,
        NEXUS_CONNECT_LISTEN: `127.0.0.1:${await freePort()}`,
        NEXUS_HEALTH_LISTEN: `127.0.0.1:${await freePort()}`,
        NEXUS_TLS_CERT: pki.files.cert,
        NEXUS_TLS_KEY: pki.files.key,
        NEXUS_TRUST_BUNDLE: pki.files.ca,
        NEXUS_LOG_LEVEL: "info",
        NEXUS_DB_POOL_MAX: "4",
        // Slow enough to be caught in the middle: 50 batches of 20, 100 ms apart.
        NEXUS_KEY_ROTATION_BATCH: "20",
        NEXUS_KEY_ROTATION_PAUSE: "100ms",
      }),
    );
    await server.waitForLog("nexus serving");
    const client = grpcNexusClient(`127.0.0.1:${port}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID });
    clients.push(client);
    return client;
  }

  it("kill -9 in the middle of the re-wrap: after restart and Unseal the rotation resumes by itself and completes; every version decrypts", async () => {
    const databaseUrl = await createTestDatabase();
    const db = openDatabase(databaseUrl);
    try {
      const port = await freePort();
      let client = await start(databaseUrl, port);
      ok(await client.call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }), "Initialize");
      await forEachConcurrently(Array.from({ length: SECRETS }, (_, i) => i), 16, async (i) => {
        ok(await client.call(SecretService.method.putSecret, { path: `crash/s${i}`, data: { v: `value-${i}` } }), `put ${i}`);
      });
      const token = await adminSession(client);
      let seen: RotateEncryptionKeyResponse | undefined;
      for await (const m of client.stream(OperatorService.method.rotateEncryptionKey, {}, { bearerToken: token })) {
        seen = m;
        if (m.phase === RotationPhase.REWRAPPING && m.done >= 100n) break;
      }
      await server!.kill();
      const [mid] = await db`SELECT id, phase, done, total FROM key_rotations`;
      expect(mid.phase).to.equal("rewrapping");
      expect(Number(mid.done)).to.be.within(100, SECRETS - 1);
      // Committed batches stay committed: their rows are under the new key already.
      const [moved] = await db`SELECT count(*)::int AS n FROM secrets WHERE keyring_key_id = ${seen!.newKeyId}`;
      expect(moved.n).to.equal(Number(mid.done));

      client = await start(databaseUrl, port);
      ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal after the restart");
      const session = await adminSession(client);
      let last: RotateEncryptionKeyResponse | undefined;
      for await (const m of client.stream(OperatorService.method.rotateEncryptionKey, {}, { bearerToken: session })) last = m;
      expect(last!.rotationId).to.equal(seen!.rotationId); // attached to the resumed rotation, not a new one
      expect(last!.phase).to.equal(RotationPhase.DONE);
      const [left] = await db`SELECT count(*)::int AS n FROM secrets WHERE keyring_key_id <> ${seen!.newKeyId}`;
      expect(left.n).to.equal(0);
      const wrapping = await db`SELECT id FROM keyring_keys WHERE purpose = 'wrapping'`;
      expect(wrapping.map((r) => r.id)).to.deep.equal([seen!.newKeyId]);
      await forEachConcurrently(Array.from({ length: SECRETS }, (_, i) => i), 16, async (i) => {
        expect(ok(await client.call(SecretService.method.getSecret, { path: `crash/s${i}` }), `get ${i}`).data).to.deep.equal({ v: `value-${i}` });
      });
    } finally {
      await db.end();
    }
  });

  it("the schedule: once the active wrapping key has wrapped NEXUS_KEY_ROTATION_MAX_ENCRYPTIONS data keys, one replica rotates by itself", async () => {
    const a = await startSecretServer({ env: { NEXUS_KEY_ROTATION_MAX_ENCRYPTIONS: "10" }, start: { ...FAST_KDF, keyRotationCheckMs: 200 } });
    const db = openDatabase(a.nexus.databaseUrl);
    try {
      const client = a.client("grpc");
      for (let i = 0; i < 10; i++) ok(await client.call(SecretService.method.putSecret, { path: `sched/s${i}`, data: { v: String(i) } }));
      const until = Date.now() + 15_000;
      let rotations: { id: number; phase: string; started_by: string }[] = [];
      while (Date.now() < until) {
        rotations = [...(await db`SELECT id, phase, started_by FROM key_rotations`)] as never;
        if (rotations.some((r) => r.phase === "done")) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(rotations.map((r) => [r.phase, r.started_by])).to.deep.equal([["done", "schedule"]]);
      // The new key has wrapped 10 data keys (the re-wrap): the limit is reached again, so it rotates again; never two at once.
      const [running] = await db`SELECT count(*)::int AS n FROM key_rotations WHERE phase <> 'done'`;
      expect(running.n).to.be.at.most(1);
      for (let i = 0; i < 10; i++) expect(ok(await client.call(SecretService.method.getSecret, { path: `sched/s${i}` })).data).to.deep.equal({ v: String(i) });
    } finally {
      await db.end();
      await a.stop();
    }
  });
});
