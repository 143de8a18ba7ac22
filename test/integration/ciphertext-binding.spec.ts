// Ciphertext binding, against someone who can write the database: every version's
// ciphertext is bound to its secret id, path and version, and every wrapped data
// key to its secret id, path and keyring key. Moving, renaming, replaying or
// corrupting rows in SQL makes GetSecret fail with INTERNAL and no data, both
// through the running server (whose caches were warm) and after a restart. And
// the associated data is the one docs/threat-model.md documents.

import { expect } from "chai";
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { NexusError } from "../../src/errors/nexus-error.js";
import { associatedData, FORMAT_V1, open } from "../../src/keys/aead.js";
import { ADMIN_PASSWORD, fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";

/** Writes through the API: a put stores a fresh random value labelled `label`. */
interface Api {
  put(path: string, label: string): Promise<void>;
  purge(path: string): Promise<void>;
}

interface TamperCase {
  readonly name: string;
  /** Writes the secrets the case needs, through the API. */
  setup(api: Api): Promise<void>;
  /** Changes rows behind the server's back (after every case's setup). */
  tamper(sql: postgres.Sql, api: Api): Promise<void>;
  /** The reads that must now fail. */
  readonly reads: ReadonlyArray<{ readonly path: string; readonly version: number }>;
}

const secretId = async (sql: postgres.Sql, path: string): Promise<string> => {
  const [row] = await sql`SELECT id FROM secrets WHERE path = ${path}`;
  expect(row, `a secrets row for ${path}`).to.not.equal(undefined);
  return row.id as string;
};

const CASES: readonly TamperCase[] = [
  {
    name: "a version's ciphertext copied to another secret's version row",
    async setup({ put }) {
      await put("bind/copy/source", "v1");
      await put("bind/copy/target", "v1");
    },
    async tamper(sql) {
      const [source, target] = [await secretId(sql, "bind/copy/source"), await secretId(sql, "bind/copy/target")];
      await sql`UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE secret_id = ${source} AND version = 1)
                WHERE secret_id = ${target} AND version = 1`;
    },
    reads: [{ path: "bind/copy/target", version: 1 }, { path: "bind/copy/target", version: 0 }],
  },
  {
    name: "version 1's ciphertext copied over version 2 of the same secret",
    async setup({ put }) {
      await put("bind/replay-version", "v1");
      await put("bind/replay-version", "v2");
    },
    async tamper(sql) {
      const id = await secretId(sql, "bind/replay-version");
      await sql`UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE secret_id = ${id} AND version = 1)
                WHERE secret_id = ${id} AND version = 2`;
    },
    reads: [{ path: "bind/replay-version", version: 2 }, { path: "bind/replay-version", version: 0 }],
  },
  {
    name: "a version row renumbered (version 1 made to pose as version 2)",
    async setup({ put }) {
      await put("bind/renumber", "v1");
      await put("bind/renumber", "v2");
    },
    async tamper(sql) {
      const id = await secretId(sql, "bind/renumber");
      await sql.begin(async (tx) => {
        await tx`DELETE FROM secret_versions WHERE secret_id = ${id} AND version = 2`;
        await tx`UPDATE secret_versions SET version = 2 WHERE secret_id = ${id} AND version = 1`;
      });
    },
    reads: [{ path: "bind/renumber", version: 2 }, { path: "bind/renumber", version: 0 }],
  },
  {
    name: "a secret's path renamed in SQL",
    async setup({ put }) {
      await put("bind/rename/before", "v1");
    },
    async tamper(sql) {
      await sql`UPDATE secrets SET path = 'bind/rename/after' WHERE path = 'bind/rename/before'`;
    },
    reads: [{ path: "bind/rename/after", version: 1 }, { path: "bind/rename/after", version: 0 }],
  },
  {
    name: "wrapped data keys swapped between two secrets",
    async setup({ put }) {
      await put("bind/swap/a", "v1");
      await put("bind/swap/b", "v1");
    },
    async tamper(sql) {
      await sql`UPDATE secrets s SET wrapped_data_key = o.wrapped_data_key
                FROM secrets o
                WHERE (s.path, o.path) IN (('bind/swap/a', 'bind/swap/b'), ('bind/swap/b', 'bind/swap/a'))`;
    },
    reads: [{ path: "bind/swap/a", version: 0 }, { path: "bind/swap/b", version: 0 }],
  },
  {
    name: "a whole secret's wrapped data key and ciphertext moved onto another secret",
    async setup({ put }) {
      await put("bind/move/source", "v1");
      await put("bind/move/target", "v1");
    },
    async tamper(sql) {
      const [source, target] = [await secretId(sql, "bind/move/source"), await secretId(sql, "bind/move/target")];
      await sql.begin(async (tx) => {
        await tx`UPDATE secrets SET wrapped_data_key = (SELECT wrapped_data_key FROM secrets WHERE id = ${source}) WHERE id = ${target}`;
        await tx`UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE secret_id = ${source} AND version = 1)
                 WHERE secret_id = ${target} AND version = 1`;
      });
    },
    reads: [{ path: "bind/move/target", version: 1 }],
  },
  {
    name: "an old secret's rows replayed into a new secret at the same path after a purge",
    async setup({ put }) {
      await put("bind/replay-purged", "old");
    },
    async tamper(sql, { put, purge }) {
      const [old] = await sql`
        SELECT s.wrapped_data_key, v.ciphertext FROM secrets s JOIN secret_versions v ON v.secret_id = s.id
        WHERE s.path = 'bind/replay-purged' AND v.version = 1`;
      await purge("bind/replay-purged");
      await put("bind/replay-purged", "new");
      const id = await secretId(sql, "bind/replay-purged");
      await sql`UPDATE secrets SET wrapped_data_key = ${old.wrapped_data_key as Buffer} WHERE id = ${id}`;
      await sql`UPDATE secret_versions SET ciphertext = ${old.ciphertext as Buffer} WHERE secret_id = ${id} AND version = 1`;
    },
    reads: [{ path: "bind/replay-purged", version: 1 }],
  },
  {
    name: "a flipped byte in a version's ciphertext",
    async setup({ put }) {
      await put("bind/flip/ciphertext", "v1");
    },
    async tamper(sql) {
      const id = await secretId(sql, "bind/flip/ciphertext");
      await sql`UPDATE secret_versions SET ciphertext = set_byte(ciphertext, length(ciphertext) - 20, get_byte(ciphertext, length(ciphertext) - 20) # 1)
                WHERE secret_id = ${id} AND version = 1`;
    },
    reads: [{ path: "bind/flip/ciphertext", version: 1 }],
  },
  {
    name: "a flipped byte in a wrapped data key",
    async setup({ put }) {
      await put("bind/flip/data-key", "v1");
    },
    async tamper(sql) {
      await sql`UPDATE secrets SET wrapped_data_key = set_byte(wrapped_data_key, 20, get_byte(wrapped_data_key, 20) # 128)
                WHERE path = 'bind/flip/data-key'`;
    },
    reads: [{ path: "bind/flip/data-key", version: 1 }],
  },
  {
    name: "keyring_key_id pointed at the integrity key",
    async setup({ put }) {
      await put("bind/keyring-key", "v1");
    },
    async tamper(sql) {
      const [integrity] = await sql`SELECT id FROM keyring_keys WHERE purpose = 'integrity'`;
      await sql`UPDATE secrets SET keyring_key_id = ${integrity.id as number} WHERE path = 'bind/keyring-key'`;
    },
    reads: [{ path: "bind/keyring-key", version: 1 }],
  },
];

describe("ciphertext binding against database tampering", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let sql: postgres.Sql;
  /** Every value written, by path, so no error message can be checked against too few. */
  const values = new Map<string, string[]>();
  const allValues = () => [...values.values()].flat();

  const client = (listener: (typeof LISTENERS)[number]): NexusClient => server.client(listener);

  before(async () => {
    server = await startSecretServer();
    sql = openDatabase(server.nexus.databaseUrl);
    const writer = client("grpc");
    const api: Api = {
      async put(path, label) {
        const value = `${label}-${randomBytes(18).toString("hex")}`;
        ok(await writer.call(SecretService.method.putSecret, { path, data: { value } }), `put ${path}`);
        values.set(path, [...(values.get(path) ?? []), value]);
      },
      async purge(path) {
        ok(await writer.call(SecretService.method.purgeSecret, { path }), `purge ${path}`);
      },
    };
    await api.put("bind/control", "untouched");
    for (const c of CASES) await c.setup(api);
    // Read everything once so the server's data-key cache is warm when rows change.
    for (const path of values.keys()) ok(await writer.call(SecretService.method.getSecret, { path }), `warm ${path}`);

    for (const c of CASES) await c.tamper(sql, api);
  });

  after(async () => {
    await sql?.end();
    await server?.stop();
  });

  const expectEveryCaseFails = () => {
    for (const c of CASES) {
      it(`${c.name}: GetSecret is INTERNAL with no data, on both listeners`, async () => {
        for (const listener of LISTENERS) {
          for (const read of c.reads) {
            const what = `${listener} ${read.path} v${read.version}`;
            const message = fails(await client(listener).call(SecretService.method.getSecret, read), "INTERNAL", what);
            for (const value of allValues()) expect(message, `${what}: the message leaks a value`).to.not.include(value);
          }
        }
      });
    }

    it("an untouched secret on the same server still reads", async () => {
      for (const listener of LISTENERS) {
        const read = ok(await client(listener).call(SecretService.method.getSecret, { path: "bind/control" }), listener);
        expect(read.data).to.deep.equal({ value: values.get("bind/control")![0] });
      }
    });
  };

  describe("read through the running server, whose caches saw the rows before", () => {
    expectEveryCaseFails();

    // A warm data-key cache must not let a write through under a key bound to the old path.
    it("a put to a path renamed in SQL is refused rather than written under a data key bound to the old path", async () => {
      const result = await client("grpc").call(SecretService.method.putSecret, { path: "bind/rename/after", data: { value: "written-after-rename" } });
      fails(result, "INTERNAL");
    });
  });

  describe("read after a restart and an unseal, with cold caches", () => {
    before(async () => {
      server = await server.restart();
      ok(await client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
    });

    expectEveryCaseFails();

    it("a put to a path renamed in SQL is refused: its data key does not unwrap under the new path", async () => {
      const result = await client("grpc").call(SecretService.method.putSecret, { path: "bind/rename/after", data: { value: "written-after-rename" } });
      fails(result, "INTERNAL");
      const [row] = await sql`SELECT latest_version FROM secrets WHERE path = 'bind/rename/after'`;
      expect(row.latest_version, "nothing was written").to.equal(1);
    });
  });

  // A path renamed in SQL is refused twice over: the wrapped data key is bound to
  // the path, and so is each version. Since no row can carry a data key wrapped
  // for another path, only the stored format itself shows the second binding.
  describe("the associated data is what the threat model documents", () => {
    it("a version opens under (\"nexus/v1/secret-version\", format, data key id, secret id, path, version) and not with any one of them changed", async () => {
      const [row] = await sql`
        SELECT s.id, s.path, s.data_key_id, s.keyring_key_id, s.wrapped_data_key, v.ciphertext
        FROM secrets s JOIN secret_versions v ON v.secret_id = s.id
        WHERE s.path = 'bind/control' AND v.version = 1`;
      const id = Buffer.from((row.id as string).replace(/-/g, ""), "hex");
      const keyringKeyId = row.keyring_key_id as number;
      const dataKeyAad = (path: string) => associatedData("nexus/v1/data-key", id, path, keyringKeyId);
      const dataKey = open(server.nexus.keys.wrappingKey(keyringKeyId), row.wrapped_data_key as Buffer, dataKeyAad("bind/control"));
      expect(() => open(server.nexus.keys.wrappingKey(keyringKeyId), row.wrapped_data_key as Buffer, dataKeyAad("bind/renamed")), "the data key under another path").to.throw(NexusError);

      const documented = { dataKeyId: row.data_key_id as number, id, path: "bind/control", version: 1 };
      const versionAad = (f: typeof documented) => associatedData("nexus/v1/secret-version", FORMAT_V1, f.dataKeyId, f.id, f.path, f.version);
      try {
        const plaintext = open(dataKey, row.ciphertext as Buffer, versionAad(documented));
        expect(JSON.parse(plaintext.toString("utf8"))).to.deep.equal({ value: values.get("bind/control")![0] });
        plaintext.fill(0);
        const variants = { path: { path: "bind/renamed" }, "secret id": { id: randomBytes(16) }, version: { version: 2 }, "data key id": { dataKeyId: documented.dataKeyId + 1 } };
        for (const [field, change] of Object.entries(variants)) {
          expect(() => open(dataKey, row.ciphertext as Buffer, versionAad({ ...documented, ...change })), `the version under another ${field}`).to.throw(NexusError);
        }
      } finally {
        dataKey.fill(0);
      }
    });
  });

  describe("undoing the tampering", () => {
    it("renaming the path back and swapping the data keys back make the secrets readable again", async () => {
      await sql`UPDATE secrets SET path = 'bind/rename/before' WHERE path = 'bind/rename/after'`;
      await sql`UPDATE secrets s SET wrapped_data_key = o.wrapped_data_key
                FROM secrets o
                WHERE (s.path, o.path) IN (('bind/swap/a', 'bind/swap/b'), ('bind/swap/b', 'bind/swap/a'))`;
      for (const path of ["bind/rename/before", "bind/swap/a", "bind/swap/b"]) {
        const read = ok(await client("grpc").call(SecretService.method.getSecret, { path }), path);
        expect(read.data).to.deep.equal({ value: values.get(path)![0] });
      }
    });
  });
});
