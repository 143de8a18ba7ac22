// OperatorService's key lifecycle: a server starts uninitialized and sealed;
// Initialize (superuser, a password of at least 12 characters, once) creates the
// keys and unseals; Seal (an admin RPC: superuser with a session from Login)
// zeroes and drops the keys; Unseal with the password brings them back. GetStatus and health on the plaintext port follow along, and
// NEXUS_ADMIN_PASSWORD_FILE unseals at start.

import { expect } from "chai";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { createLogger } from "../../src/log/logger.js";
import { createPolicy, exactly, login } from "../support/admin-fixtures.js";
import { healthClient, insecureCredentials, type HealthClient, type ServingStatusName } from "../support/health-client.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, startTestServer, SUPERUSER_ID, WORKLOAD_ID } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

const HEALTH_SERVICES = ["", "spike.nexus.v1.SecretService", "spike.nexus.v1.OperatorService"];

/** Health on the plaintext port, for the whole server and each service, eventually `status`. */
async function expectHealth(server: SecretTestServer, status: ServingStatusName): Promise<void> {
  const health: HealthClient = healthClient(`127.0.0.1:${server.nexus.healthPort}`, insecureCredentials());
  try {
    await eventually(async () => {
      for (const service of HEALTH_SERVICES) expect(await health.check(service), `health of "${service}"`).to.deep.equal({ status });
    });
  } finally {
    health.close();
  }
}

/** Holds an exclusive lock on `table` (every statement reading it waits) until released. */
async function lockTable(databaseUrl: string, table: "policies" | "root_keys"): Promise<{ release(): Promise<void> }> {
  const db = openDatabase(databaseUrl);
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let locked!: () => void;
  const isLocked = new Promise<void>((resolve) => (locked = resolve));
  const holding = db.begin(async (tx) => {
    await tx.unsafe(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
    locked();
    await released;
  });
  await isLocked;
  let done: Promise<void> | undefined;
  return {
    release: () =>
      (done ??= (async () => {
        release();
        await holding;
        await db.end();
      })()),
  };
}

async function status(server: SecretTestServer, listener: (typeof LISTENERS)[number] = "grpc") {
  return ok(await server.client(listener).call(OperatorService.method.getStatus, {}), `GetStatus on ${listener}`);
}

describe("Initialize, Seal and Unseal", function () {
  this.timeout(60_000);

  describe("through the life of one server (these run in order)", () => {
    const password = "twelve-chars";
    let server: SecretTestServer;

    before(async () => {
      server = await startSecretServer({ initialize: false });
    });

    after(async () => server?.stop());

    it("a new server is uninitialized and sealed: GetStatus says so, health is NOT_SERVING, secret RPCs are FAILED_PRECONDITION saying how to Initialize", async () => {
      for (const listener of LISTENERS) {
        expect(await status(server, listener)).to.include({ initialized: false, sealed: true, activeKeyringKeyId: 0 });
        const message = fails(await server.client(listener).call(SecretService.method.getSecret, { path: "a/b" }), "FAILED_PRECONDITION", listener);
        expect(message, "an uninitialized server is not told to unseal").to.match(/not initialized: call OperatorService\/Initialize/);
        expect(message).to.not.match(/unseal it/i);
      }
      await expectHealth(server, "NOT_SERVING");
    });

    it("Unseal before Initialize is FAILED_PRECONDITION", async () => {
      for (const listener of LISTENERS) {
        const message = fails(await server.client(listener).call(OperatorService.method.unseal, { adminPassword: password }), "FAILED_PRECONDITION", listener);
        expect(message).to.match(/not initialized/);
      }
    });

    const shortPasswords: ReadonlyArray<{ name: string; password: string }> = [
      { name: "an empty password", password: "" },
      { name: "5 characters", password: "short" },
      { name: "11 characters", password: "eleven-char" },
      { name: "11 characters that take 22 UTF-16 units", password: "🔑".repeat(11) },
    ];

    for (const short of shortPasswords) {
      it(`Initialize with ${short.name} is INVALID_ARGUMENT and initializes nothing`, async () => {
        for (const listener of LISTENERS) {
          const message = fails(await server.client(listener).call(OperatorService.method.initialize, { adminPassword: short.password }), "INVALID_ARGUMENT", listener);
          expect(message).to.include("admin_password").and.include("12");
          if (short.password !== "") expect(message).to.not.include(short.password);
        }
        expect(await status(server)).to.include({ initialized: false, sealed: true });
      });
    }

    it("a workload SVID may call GetStatus but is PERMISSION_DENIED on Initialize, Unseal and Seal", async () => {
      for (const listener of LISTENERS) {
        const workload = server.client(listener, server.pki.workload);
        expect(ok(await workload.call(OperatorService.method.getStatus, {})).callerSpiffeId).to.equal(WORKLOAD_ID);
        fails(await workload.call(OperatorService.method.initialize, { adminPassword: password }), "PERMISSION_DENIED", `${listener} Initialize`);
        fails(await workload.call(OperatorService.method.unseal, { adminPassword: password }), "PERMISSION_DENIED", `${listener} Unseal`);
        fails(await workload.call(OperatorService.method.seal, {}), "PERMISSION_DENIED", `${listener} Seal`);
      }
      expect(await status(server)).to.include({ initialized: false, sealed: true });
    });

    it("Initialize by the superuser with 12 characters creates root key 1 and keyring key 1 and leaves the server unsealed and SERVING", async () => {
      const created = ok(await server.client("connect").call(OperatorService.method.initialize, { adminPassword: password }));
      expect(created).to.include({ rootKeyId: 1, activeKeyringKeyId: 1 });
      for (const listener of LISTENERS) {
        expect(await status(server, listener)).to.include({ initialized: true, sealed: false, activeKeyringKeyId: 1, callerSpiffeId: SUPERUSER_ID });
      }
      await expectHealth(server, "SERVING");
      ok(await server.client("grpc").call(SecretService.method.putSecret, { path: "life/db", data: { password: "s3cr3t" } }), "put");
    });

    it("a second Initialize is FAILED_PRECONDITION, even with another password, and changes nothing", async () => {
      for (const listener of LISTENERS) {
        const message = fails(await server.client(listener).call(OperatorService.method.initialize, { adminPassword: "another-password-123" }), "FAILED_PRECONDITION", listener);
        expect(message).to.match(/already initialized/);
      }
      expect(await status(server)).to.include({ initialized: true, sealed: false, activeKeyringKeyId: 1 });
      expect(ok(await server.client("grpc").call(SecretService.method.getSecret, { path: "life/db" })).data).to.deep.equal({ password: "s3cr3t" });
    });

    it("Seal zeroes the keys in memory and drops them: GetStatus sealed, key id 0, GetSecret FAILED_PRECONDITION, health NOT_SERVING", async () => {
      const wrapping = server.nexus.keys.activeWrappingKey().key;
      const integrity = server.nexus.keys.integrityKey();
      expect(wrapping.some((b) => b !== 0)).to.equal(true);

      await seal(server.client("grpc"), password);
      expect([...wrapping].every((b) => b === 0), "the keyring key's buffer is zeroed").to.equal(true);
      expect([...integrity].every((b) => b === 0), "the integrity key's buffer is zeroed").to.equal(true);
      expect(() => server.nexus.keys.activeWrappingKey(), "no key is handed out while sealed").to.throw(/sealed/);
      for (const listener of LISTENERS) {
        expect(await status(server, listener)).to.include({ initialized: true, sealed: true, activeKeyringKeyId: 0 });
        expect(fails(await server.client(listener).call(SecretService.method.getSecret, { path: "life/db" }), "FAILED_PRECONDITION", listener)).to.match(/sealed/);
      }
      await expectHealth(server, "NOT_SERVING");
    });

    it("Unseal with a wrong password is PERMISSION_DENIED and an empty one INVALID_ARGUMENT; the server stays sealed", async () => {
      for (const listener of LISTENERS) {
        const message = fails(await server.client(listener).call(OperatorService.method.unseal, { adminPassword: "twelve-charz" }), "PERMISSION_DENIED", listener);
        expect(message).to.not.include("twelve-char");
        fails(await server.client(listener).call(OperatorService.method.unseal, { adminPassword: "" }), "INVALID_ARGUMENT", listener);
      }
      expect(await status(server)).to.include({ sealed: true, activeKeyringKeyId: 0 });
      await expectHealth(server, "NOT_SERVING");
    });

    it("Unseal with the right password restores service on either listener: unsealed, SERVING, data back", async () => {
      for (const listener of LISTENERS) {
        const unsealed = ok(await server.client(listener).call(OperatorService.method.unseal, { adminPassword: password }), `Unseal on ${listener}`);
        expect(unsealed.activeKeyringKeyId).to.equal(1);
        expect(await status(server, listener)).to.include({ sealed: false, activeKeyringKeyId: 1 });
        await expectHealth(server, "SERVING");
        expect(ok(await server.client(listener).call(SecretService.method.getSecret, { path: "life/db" })).data).to.deep.equal({ password: "s3cr3t" });
        await seal(server.client(listener), password);
        await expectHealth(server, "NOT_SERVING");
      }
    });

    it("Unseal while unsealed checks the password: the right one is OK and keeps the keys in memory (no re-seal, health never flaps), a wrong one is PERMISSION_DENIED and does not seal", async () => {
      ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: password }));
      const generation = server.nexus.keys.generation;
      const seen: string[] = [];
      server.nexus.keys.onSealChange((sealed) => seen.push(sealed ? "sealed" : "unsealed"));
      ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: password }), "again");
      expect({ generation: server.nexus.keys.generation, seen }, "a second Unseal under the same root key").to.deep.equal({ generation, seen: [] });
      fails(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: "twelve-charz" }), "PERMISSION_DENIED");
      expect(await status(server)).to.include({ sealed: false });
      expect(ok(await server.client("grpc").call(SecretService.method.getSecret, { path: "life/db" })).data).to.deep.equal({ password: "s3cr3t" });
    });
  });

  describe("the stored scrypt parameters (a database writer can change them)", () => {
    let server: SecretTestServer;

    before(async () => {
      server = await startSecretServer();
    });

    after(async () => server?.stop());

    const altered: ReadonlyArray<{ name: string; params: Record<string, unknown>; code: string }> = [
      { name: "N = 2^30 (128 GiB of memory)", params: { alg: "scrypt", N: 2 ** 30, r: 8, p: 1 }, code: "INTERNAL" },
      { name: "r = 2^20", params: { alg: "scrypt", N: 1024, r: 2 ** 20, p: 1 }, code: "INTERNAL" },
      { name: "N not a power of two", params: { alg: "scrypt", N: 1000, r: 8, p: 1 }, code: "INTERNAL" },
      { name: "N = 2^20 (1 GiB, eight times the default's memory)", params: { alg: "scrypt", N: 2 ** 20, r: 8, p: 1 }, code: "INTERNAL" },
      { name: "p = 16 at the default N (16 times the default's work)", params: { alg: "scrypt", N: 2 ** 17, r: 8, p: 16 }, code: "INTERNAL" },
      { name: "another algorithm", params: { alg: "md5", N: 1024, r: 8, p: 1 }, code: "INTERNAL" },
      { name: "in bounds but not the ones the password check was made with", params: { alg: "scrypt", N: 2048, r: 8, p: 1 }, code: "PERMISSION_DENIED" },
    ];

    for (const c of altered) {
      it(`${c.name}: Unseal with the right password is ${c.code}, scrypt never runs with them out of bounds, and the server stays sealed`, async () => {
        const db = openDatabase(server.nexus.databaseUrl);
        try {
          const [{ kdf_params: original }] = await db`SELECT kdf_params FROM root_keys WHERE active`;
          await seal(server.client("grpc"));
          await db`UPDATE root_keys SET kdf_params = ${db.json(c.params as never)} WHERE active`;
          const started = Date.now();
          const message = fails(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), c.code, c.name);
          if (c.code === "INTERNAL") {
            expect(message).to.match(/key-derivation parameters/);
            expect(Date.now() - started, "refused before scrypt").to.be.below(2000);
          }
          expect(await status(server)).to.include({ sealed: true });
          await db`UPDATE root_keys SET kdf_params = ${db.json(original)} WHERE active`;
          ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal with the parameters restored");
        } finally {
          await db.end();
        }
      });
    }
  });

  describe("NEXUS_ADMIN_PASSWORD_FILE", () => {
    let server: SecretTestServer;
    let dir: string;

    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), "nexus-password-file-"));
      server = await startSecretServer();
      ok(await server.client("grpc").call(SecretService.method.putSecret, { path: "file/db", data: { k: "from-before" } }));
    });

    after(async () => {
      await server?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    const passwordFile = async (name: string, content: string) => {
      const file = path.join(dir, name);
      await writeFile(file, content, { mode: 0o600 });
      return file;
    };

    it("a server started with a file holding the password (and a trailing newline) is unsealed at start", async () => {
      const file = await passwordFile("admin-password", ADMIN_PASSWORD + "\n");
      server = await server.restart({ env: { NEXUS_ADMIN_PASSWORD_FILE: file } });
      expect(await status(server)).to.include({ initialized: true, sealed: false, activeKeyringKeyId: 1 });
      expect(ok(await server.client("connect").call(SecretService.method.getSecret, { path: "file/db" })).data).to.deep.equal({ k: "from-before" });
      await expectHealth(server, "SERVING");
    });

    it("a server unsealed from the file is up only once its policies are loaded: a workload's first call is allowed", async () => {
      const admin = server.client("grpc");
      await createPolicy(admin, (await login(admin)).token, { name: "file-reader", spiffeIdPattern: exactly(WORKLOAD_ID), pathPattern: "file/.+", permissions: [Permission.READ] });
      const file = await passwordFile("admin-password-policies", ADMIN_PASSWORD);
      // Held for 2 s across the restart, so a start-up that does not wait for
      // the policy load finishes with none loaded.
      const lock = await lockTable(server.nexus.databaseUrl, "policies");
      const timer = setTimeout(() => void lock.release(), 2000);
      try {
        server = await server.restart({ env: { NEXUS_ADMIN_PASSWORD_FILE: file } });
        const read = await server.client("grpc", server.pki.workload).call(SecretService.method.getSecret, { path: "file/db" });
        expect(ok(read, "the first GetSecret after start-up").data).to.deep.equal({ k: "from-before" });
      } finally {
        clearTimeout(timer);
        await lock.release();
      }
    });

    it("after an Unseal RPC health stays NOT_SERVING, and no policy decides (UNAVAILABLE, not a denial), until the policies are loaded", async () => {
      await seal(server.client("grpc"));
      const lock = await lockTable(server.nexus.databaseUrl, "policies");
      const health = healthClient(`127.0.0.1:${server.nexus.healthPort}`, insecureCredentials());
      try {
        ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
        for (let i = 0; i < 3; i++) {
          expect(await health.check(""), `health ${i * 150} ms after Unseal, policies table locked`).to.deep.equal({ status: "NOT_SERVING" });
          const read = await server.client("grpc", server.pki.workload).call(SecretService.method.getSecret, { path: "file/db" });
          expect(fails(read, "UNAVAILABLE", "a workload's read while the policies load")).to.match(/policies are loading/);
          await new Promise((resolve) => setTimeout(resolve, 150));
        }
      } finally {
        health.close();
        await lock.release();
      }
      await expectHealth(server, "SERVING");
    });

    it("a start that fails while unsealing from the file is in flight (a bad certificate file) seals before it gives up, and names the file", async () => {
      const file = await passwordFile("admin-password-bad-cert", ADMIN_PASSWORD);
      const badCert = await passwordFile("not-a-certificate.pem", "not a certificate\n");
      const lines: string[] = [];
      const keyEvents = () => lines.map((l) => (JSON.parse(l) as { msg: string }).msg).filter((m) => m === "unsealed" || m === "sealed");
      // Unsealing reads root_keys: holding it keeps the unseal in flight until the start has failed.
      const lock = await lockTable(server.nexus.databaseUrl, "root_keys");
      const timer = setTimeout(() => void lock.release(), 500);
      try {
        const failure = await startTestServer({
          pki: server.pki,
          databaseUrl: server.nexus.databaseUrl,
          env: { NEXUS_ADMIN_PASSWORD_FILE: file, NEXUS_TLS_CERT: badCert },
          start: FAST_KDF,
          logger: createLogger("info", (line) => lines.push(line)),
        }).then(
          (started) => started.stop().then(() => new Error("started")),
          (err: Error) => err,
        );
        expect(failure.message).to.equal(`${badCert} does not hold a PEM certificate`);
        expect(keyEvents(), "key events when the start gave up").to.deep.equal(["unsealed", "sealed"]);
      } finally {
        clearTimeout(timer);
        await lock.release();
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(keyEvents(), "key events after").to.deep.equal(["unsealed", "sealed"]);
    });

    it("a wrong password in the file leaves the server running but sealed, and Unseal still works", async () => {
      const file = await passwordFile("wrong-password", "not-the-admin-password\n");
      server = await server.restart({ env: { NEXUS_ADMIN_PASSWORD_FILE: file } });
      expect(await status(server)).to.include({ initialized: true, sealed: true });
      ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
      expect(ok(await server.client("grpc").call(SecretService.method.getSecret, { path: "file/db" })).data).to.deep.equal({ k: "from-before" });
    });

    it("a missing file leaves the server running but sealed", async () => {
      server = await server.restart({ env: { NEXUS_ADMIN_PASSWORD_FILE: path.join(dir, "no-such-file") } });
      expect(await status(server)).to.include({ initialized: true, sealed: true });
    });

    it("an uninitialized server does not initialize itself from the file", async () => {
      const file = await passwordFile("for-a-new-server", ADMIN_PASSWORD);
      const fresh = await startSecretServer({ initialize: false, env: { NEXUS_ADMIN_PASSWORD_FILE: file } });
      try {
        expect(await status(fresh)).to.include({ initialized: false, sealed: true });
      } finally {
        await fresh.stop();
      }
    });
  });
});
