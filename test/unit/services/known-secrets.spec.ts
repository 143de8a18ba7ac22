import { expect } from "chai";
import { KnownSecrets, type KnownSecret } from "../../../src/services/known-secrets.js";
import { isCollected } from "../../support/heap-retention.js";

/** A secret as the driver hands a row out: its bytea columns are slices of one shared slab. */
function rowFromSlab(slab: ArrayBuffer, path: string): KnownSecret {
  const bytes = Buffer.from(slab);
  bytes.fill(7);
  return {
    secretId: "00000000-0000-4000-8000-000000000001",
    path,
    dataKeyId: 1,
    keyringKeyId: 2,
    wrappedDataKey: bytes.subarray(100, 165),
    latestVersion: 3,
    labels: { current: 3, pending: null, previous: 2, epoch: 4, latestVersion: 3, mac: bytes.subarray(300, 332) },
    dataKeyOriginKeyId: 2,
  };
}

describe("KnownSecrets: what a replica remembers for one-round-trip puts", () => {
  it("remembers at most `limit` paths, forgetting the one remembered longest ago", () => {
    const known = new KnownSecrets(3);
    for (const path of ["a", "b", "c", "d"]) known.remember(rowFromSlab(new ArrayBuffer(512), path));
    expect(known.size).to.equal(3);
    expect(known.get("a")).to.equal(undefined);
    known.remember(rowFromSlab(new ArrayBuffer(512), "b")); // remembered again: now the newest
    known.remember(rowFromSlab(new ArrayBuffer(512), "e"));
    expect(known.get("c")).to.equal(undefined);
    expect(["b", "d", "e"].map((p) => known.get(p)?.path)).to.deep.equal(["b", "d", "e"]);
  });

  it("keeps no slice of a row's shared memory: the slab its wrapped key and label MAC came from can be collected", async () => {
    const known = new KnownSecrets(10);
    const slab = (() => {
      const slab = new ArrayBuffer(8192);
      known.remember(rowFromSlab(slab, "p"));
      return new WeakRef(slab);
    })();
    expect(await isCollected(slab), "the 8 KiB slab is still reachable from the cache").to.equal(true);
    const kept = known.get("p")!;
    expect(kept.wrappedDataKey.equals(Buffer.alloc(65, 7))).to.equal(true);
    expect(kept.labels.mac!.equals(Buffer.alloc(32, 7))).to.equal(true);
    expect(kept.labels).to.deep.include({ current: 3, pending: null, previous: 2, epoch: 4, latestVersion: 3 });
  });

  it("keeps no slice after a write either: the labels a write recorded are copied out of shared memory", async () => {
    const known = new KnownSecrets(10);
    const entry = known.remember(rowFromSlab(new ArrayBuffer(512), "p"));
    const slab = (() => {
      const slab = new ArrayBuffer(8192);
      known.wrote(entry, 4, rowFromSlab(slab, "p").labels);
      return new WeakRef(slab);
    })();
    expect(await isCollected(slab)).to.equal(true);
    expect(known.get("p")!.latestVersion).to.equal(4);
  });
});
