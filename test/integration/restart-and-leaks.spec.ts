// A restart keeps data but not keys: the new server is sealed until the admin
// password unseals it, and then every version is intact. Nothing secret is ever
// at rest in the clear: after puts, a restart and an unseal, neither a full dump
// of the database nor the server's own debug log holds a value, the password or
// any key of the hierarchy, raw or hex- or base64-encoded.

import { expect } from "chai";
import { createHash, randomBytes } from "node:crypto";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { associatedData, open } from "../../src/keys/aead.js";
import { DEFAULT_KDF_PARAMS, derivePasswordKeys, type KdfParams } from "../../src/keys/password-kdf.js";
import { SecretCipher } from "../../src/keys/secret-cipher.js";
import { createLogger } from "../../src/log/logger.js";
import { dumpDatabase } from "../support/database-dump.js";
import { encodedForms, findLeaks } from "../support/leak-forms.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";

const random = (bytes: number) => randomBytes(bytes);

describe("restart, unseal and what is left at rest", function () {
  this.timeout(60_000);
  const lines: string[] = [];
  const logger = createLogger("debug", (line) => lines.push(line));
  const password = `admin-${random(12).toString("base64url")}`;
  const wrongPassword = `wrong-${random(12).toString("base64url")}`;
  /** Every value written, by a name for failure messages. */
  const values = new Map<string, string>();
  /** What each path's versions must read back as: undefined for deleted or destroyed ones. */
  const expected = new Map<string, Array<Record<string, string> | undefined>>();
  let server: SecretTestServer;

  before(async () => {
    server = await startSecretServer({ initialize: password, logger });
    const client = server.client("grpc");
    const put = async (path: string, data: Record<string, string>) => {
      ok(await client.call(SecretService.method.putSecret, { path, data }), `put ${path}`);
      for (const [k, v] of Object.entries(data)) values.set(`${path} ${k}`, v);
      expected.set(path, [...(expected.get(path) ?? []), data]);
    };
    const secretKeyName = `name-${random(9).toString("hex")}`;
    await put("apps/billing/db", { password: random(24).toString("hex"), [secretKeyName]: random(24).toString("base64") });
    await put("apps/billing/db", { password: random(24).toString("hex"), token: random(24).toString("base64url") });
    await put("apps/billing/db", { password: random(24).toString("base64") });
    await put("apps/search/api-key", { key: `sk_live_${random(24).toString("base64url")}` });
    await put("apps/search/api-key", { key: `sk_live_${random(24).toString("base64url")}` });
    await put("infra/tls/key", { pem: `-----BEGIN PRIVATE KEY-----\n${random(96).toString("base64")}\n-----END PRIVATE KEY-----` });
    values.set("a data entry's name", secretKeyName);

    ok(await client.call(SecretService.method.deleteSecret, { path: "apps/search/api-key", versions: [1] }));
    ok(await client.call(SecretService.method.destroySecret, { path: "apps/billing/db", versions: [2] }));
    expected.get("apps/search/api-key")![0] = undefined;
    expected.get("apps/billing/db")![1] = undefined;

    // Refused calls that carry values, so the log has had every chance to record one.
    const carried = random(24).toString("hex");
    values.set("a value in refused calls", carried);
    fails(await client.call(SecretService.method.putSecret, { path: "bad path", data: { v: carried } }), "INVALID_ARGUMENT");
    fails(await client.call(SecretService.method.putSecret, { path: "apps/billing/db", data: { v: carried }, cas: 1 }), "ABORTED");
    fails(await client.call(SecretService.method.putSecret, { path: "apps/huge", data: { v: carried.repeat(2000) } }), "RESOURCE_EXHAUSTED");
    for (const path of expected.keys()) ok(await client.call(SecretService.method.getSecret, { path }), `read ${path}`);

    server = await server.restart({ logger });
  });

  after(async () => server?.stop());

  it("after a restart the server is initialized but sealed, and GetSecret is FAILED_PRECONDITION", async () => {
    for (const listener of LISTENERS) {
      const status = ok(await server.client(listener).call(OperatorService.method.getStatus, {}), listener);
      expect(status).to.include({ initialized: true, sealed: true, activeKeyringKeyId: 0 });
      const message = fails(await server.client(listener).call(SecretService.method.getSecret, { path: "apps/billing/db" }), "FAILED_PRECONDITION", listener);
      expect(message).to.match(/sealed/);
    }
  });

  it("Unseal with a wrong password is PERMISSION_DENIED, reveals nothing, and leaves the server sealed", async () => {
    for (const listener of LISTENERS) {
      const message = fails(await server.client(listener).call(OperatorService.method.unseal, { adminPassword: wrongPassword }), "PERMISSION_DENIED", listener);
      expect(message).to.not.include(wrongPassword).and.not.include(password);
      expect(ok(await server.client(listener).call(OperatorService.method.getStatus, {})).sealed).to.equal(true);
    }
  });

  it("Unseal with the right password brings back every version intact; deleted and destroyed ones stay so", async () => {
    ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: password }), "Unseal");
    for (const listener of LISTENERS) {
      const client = server.client(listener);
      for (const [path, versions] of expected) {
        for (const [i, data] of versions.entries()) {
          const result = await client.call(SecretService.method.getSecret, { path, version: i + 1 });
          if (data === undefined) fails(result, "NOT_FOUND", `${listener} ${path} v${i + 1}`);
          else expect(ok(result, `${listener} ${path} v${i + 1}`).data).to.deep.equal(data);
        }
        const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(meta.latestVersion, path).to.equal(versions.length);
      }
    }
  });

  it("the leak search finds a value wherever it is encoded, so its silence below means something", () => {
    const value = random(24).toString("hex");
    for (const prefix of ["", "x", "xy"]) {
      const blob = Buffer.from(`{"k":"${prefix}${value}"}`);
      for (const encoding of ["hex", "base64", "base64url"] as const) {
        const haystack = Buffer.from(`stored: ${blob.toString(encoding)} end`);
        expect(findLeaks(haystack, new Map([["v", value]])), `${encoding} after ${JSON.stringify(prefix)}`).to.not.deep.equal([]);
      }
    }
    expect(encodedForms(value).map((f) => f.form)).to.include.members(["raw", "hex", "base64@0", "base64url@2"]);
  });

  it("neither a full database dump nor the server log holds a value, the password or a key, in raw, hex or base64 form", async function () {
    const keys = await keyMaterial(server, password);
    const secrets = new Map<string, Buffer | string>([...values, ["the admin password", password], ["a wrong password", wrongPassword], ...keys]);

    const dump = await dumpDatabase(server.nexus.databaseUrl);
    this.test!.title += ` [dump: ${dump.tool}]`;
    expect(dump.content.includes(Buffer.from("apps/billing/db")), "the dump holds the (public) paths").to.equal(true);
    expect(findLeaks(dump.content, secrets), "found in the database dump").to.deep.equal([]);

    const log = Buffer.from(lines.join("\n"));
    expect(lines.some((l) => l.includes('"unsealed"')), "the log was captured").to.equal(true);
    expect(lines.some((l) => l.includes("call refused")), "debug lines were captured").to.equal(true);
    expect(findLeaks(log, secrets), "found in the server log").to.deep.equal([]);
  });
});

/**
 * Every key of the hierarchy, recovered as only the password's holder can: the
 * KEK and password-check key from the password and the stored salt, the root key
 * from them, the keyring from the unsealed server, and each secret's data key.
 */
async function keyMaterial(server: SecretTestServer, password: string): Promise<Map<string, Buffer>> {
  const sql = openDatabase(server.nexus.databaseUrl);
  try {
    const keys = new Map<string, Buffer>();
    const [root] = await sql`SELECT id, encrypted_key, kdf_salt, kdf_params FROM root_keys WHERE active`;
    const derived = await derivePasswordKeys(password, root.kdf_salt as Buffer, root.kdf_params as KdfParams);
    keys.set("the key-encryption key", Buffer.from(derived.kek));
    keys.set("the password-check key", Buffer.from(derived.checkKey));
    keys.set("the root key", open(derived.kek, root.encrypted_key as Buffer, associatedData("nexus/v1/root-key", root.id as number)));
    const active = server.nexus.keys.activeWrappingKey();
    keys.set("the active keyring key", Buffer.from(active.key));
    keys.set("the integrity key", Buffer.from(server.nexus.keys.integrityKey()));
    const cipher = new SecretCipher(server.nexus.keys);
    const rows = await sql`SELECT id, path, data_key_id, keyring_key_id, wrapped_data_key FROM secrets`;
    for (const row of rows) {
      const ref = { secretId: row.id, path: row.path, dataKeyId: row.data_key_id, keyringKeyId: row.keyring_key_id, wrappedDataKey: row.wrapped_data_key };
      keys.set(`the data key of ${row.path as string}`, Buffer.from(cipher.dataKey(ref)));
    }
    expect(rows.length, "secrets with data keys").to.be.at.least(3);
    return keys;
  } finally {
    await sql.end();
  }
}

describe("the stored key-derivation parameters", function () {
  this.timeout(60_000);
  let server: SecretTestServer | undefined;

  after(async () => server?.stop());

  it("a server with the production default stores scrypt N=131072, r=8, p=1 and a 16-byte salt; Unseal uses what is stored", async () => {
    const password = `admin-${random(12).toString("base64url")}`;
    server = await startSecretServer({ initialize: password, start: { kdfParams: undefined } });
    const sql = openDatabase(server.nexus.databaseUrl);
    try {
      const rows = await sql`SELECT kdf_params, kdf_salt, password_check, encrypted_key FROM root_keys`;
      expect(rows).to.have.length(1);
      const [root] = rows;
      expect(root.kdf_params).to.deep.equal({ alg: "scrypt", N: 131072, r: 8, p: 1 });
      expect(root.kdf_params).to.deep.equal({ ...DEFAULT_KDF_PARAMS });
      expect(root.kdf_salt as Buffer).to.have.length(16);
      const check = root.password_check as Buffer;
      expect(check.equals(createHash("sha256").update(password).digest()), "the check is not a fast hash of the password").to.equal(false);
      expect(check.equals(createHash("sha256").update(Buffer.concat([root.kdf_salt as Buffer, Buffer.from(password)])).digest())).to.equal(false);
    } finally {
      await sql.end();
    }

    // The next server is configured with the cheap test cost; the stored cost must win.
    server = await server.restart();
    ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: password }), "Unseal");
    expect(ok(await server.client("grpc").call(OperatorService.method.getStatus, {})).sealed).to.equal(false);
  });
});
