import { expect } from "chai";
import { KeyManager } from "../../src/keys/key-manager.js";
import { SecretCipher, type DataKeyRef } from "../../src/keys/secret-cipher.js";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { loadMigrations, Migrator } from "../../src/store/migrations.js";
import { RootKeyStore } from "../../src/store/root-key-store.js";
import { isCollected } from "../support/heap-retention.js";
import { ADMIN_PASSWORD, FAST_KDF } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";

describe("SecretCipher's data-key cache (real keys)", function () {
  this.timeout(60_000);
  let keys: KeyManager;
  let end: () => Promise<void>;

  before(async () => {
    const url = await createTestDatabase("datakeys");
    const sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
    end = () => sql.end();
    await new Migrator(sql, await loadMigrations(), silentLogger).up();
    keys = new KeyManager(new RootKeyStore(sql), silentLogger, FAST_KDF.kdfParams, 0);
    await keys.initialize(ADMIN_PASSWORD);
  });
  after(() => end?.());

  /** A secret's row as the store returns it: the data-key reference plus every other column, bytea columns sliced from one shared slab. */
  function rowIn(slab: ArrayBuffer, ref: DataKeyRef) {
    const bytes = Buffer.from(slab);
    ref.wrappedDataKey.copy(bytes, 100);
    return {
      ...ref,
      wrappedDataKey: bytes.subarray(100, 100 + ref.wrappedDataKey.length),
      version: 1,
      ciphertext: bytes.subarray(1000, 1100),
      createdAt: new Date(),
      labels: { labelsMac: bytes.subarray(2000, 2032) },
    };
  }

  it("an entry keeps only the data-key reference: the row it was read from, and the slab its buffers share, can be collected", async () => {
    const writer = new SecretCipher(keys);
    const secretId = "00000000-0000-4000-8000-00000000000a";
    const made = writer.newDataKey(secretId, "app/db");
    const ref: DataKeyRef = { secretId, path: "app/db", dataKeyId: made.dataKeyId, keyringKeyId: made.keyringKeyId, wrappedDataKey: made.wrappedDataKey };
    const reader = new SecretCipher(keys); // an empty cache: the row below is a miss, unwrapped and remembered
    const [row, slab] = (() => {
      const slab = new ArrayBuffer(8192);
      const row = rowIn(slab, ref);
      expect(reader.dataKey(row).equals(made.dataKey)).to.equal(true);
      return [new WeakRef(row), new WeakRef(slab)];
    })();
    expect(await isCollected(row), "the row object is still reachable from the cache").to.equal(true);
    expect(await isCollected(slab), "the slab of the row's buffers is still reachable from the cache").to.equal(true);
    // Still cached, and still bound to the same reference: a hit needs no unwrap.
    const hit = reader.dataKey(ref);
    expect(hit.equals(made.dataKey)).to.equal(true);
    expect(reader.dataKey(ref)).to.equal(hit);
  });

  it("holds at most its size in entries: past it the least recently used is zeroed, and unwrapped again when asked for", () => {
    const cipher = new SecretCipher(keys, 2);
    const made = ["a", "b", "c"].map((p, i) => {
      const secretId = `00000000-0000-4000-8000-00000000010${i}`;
      const k = new SecretCipher(keys).newDataKey(secretId, p);
      return { ref: { secretId, path: p, dataKeyId: k.dataKeyId, keyringKeyId: k.keyringKeyId, wrappedDataKey: k.wrappedDataKey }, dataKey: k.dataKey };
    });
    const first = made.map((m) => cipher.dataKey(m.ref));
    // c evicted a: its cached key was zeroed, and asking again unwraps it afresh.
    expect(first[0].equals(Buffer.alloc(32)), "the evicted key is zeroed").to.equal(true);
    const again = cipher.dataKey(made[0].ref);
    expect(again).to.not.equal(first[0]);
    expect(again.equals(made[0].dataKey)).to.equal(true);
    // a evicted b in turn; c stayed, the same cached Buffer.
    expect(first[1].equals(Buffer.alloc(32))).to.equal(true);
    expect(cipher.dataKey(made[2].ref)).to.equal(first[2]);
  });
});
