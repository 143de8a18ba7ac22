// GroupCommit: what arrives together shares a batch, what arrives while a batch
// runs waits for the next, one batch runs at a time, equal keys never share a
// batch, and a failure is confined to its batch (or to its item).

import { expect } from "chai";
import { concurrencyLimit, GroupCommit } from "../../../src/store/group-commit.js";

/** A run function that records its batches and finishes each when told. */
function recorder<T>(result: (item: T) => unknown = (item) => item) {
  const batches: T[][] = [];
  const pending: Array<() => void> = [];
  let running = 0;
  let maxRunning = 0;
  const run = async (batch: T[]) => {
    batches.push(batch);
    running++;
    maxRunning = Math.max(maxRunning, running);
    await new Promise<void>((resolve) => pending.push(resolve));
    running--;
    return batch.map(result);
  };
  const finishOne = async () => {
    while (pending.length === 0) await new Promise((r) => setImmediate(r));
    pending.shift()!();
  };
  return { batches, run, finishOne, maxRunning: () => maxRunning };
}

describe("GroupCommit", () => {
  it("puts what arrives in one tick into one batch, and what arrives during it into the next", async () => {
    const r = recorder<number>((n) => n * 10);
    const gc = new GroupCommit<number, number>(r.run as never, { maxBatch: 100 });
    const first = [1, 2, 3].map((n) => gc.submit(n));
    await r.finishOne();
    expect(await Promise.all(first)).to.deep.equal([10, 20, 30]);
    const second = [4, 5].map((n) => gc.submit(n));
    const third = gc.submit(6);
    await r.finishOne();
    expect(await Promise.all([...second, third])).to.deep.equal([40, 50, 60]);
    expect(r.batches).to.deep.equal([[1, 2, 3], [4, 5, 6]]);
  });

  it("runs one batch at a time; items submitted while one runs wait for the next", async () => {
    const r = recorder<number>();
    const gc = new GroupCommit<number, number>(r.run as never, { maxBatch: 100 });
    const a = gc.submit(1);
    await new Promise((res) => setImmediate(res));
    const b = [gc.submit(2), gc.submit(3)];
    await r.finishOne();
    await a;
    await r.finishOne();
    await Promise.all(b);
    expect(r.batches).to.deep.equal([[1], [2, 3]]);
    expect(r.maxRunning()).to.equal(1);
  });

  it("splits by maxBatch and never puts equal keys in one batch, keeping their order", async () => {
    const r = recorder<string>();
    const gc = new GroupCommit<string, string>(r.run as never, { maxBatch: 3, key: (s) => s[0] });
    const all = ["a1", "a2", "b1", "c1", "d1", "a3", "b2"].map((s) => gc.submit(s));
    for (let i = 0; i < 3; i++) await r.finishOne();
    await Promise.all(all);
    expect(r.batches).to.deep.equal([["a1", "b1", "c1"], ["a2", "d1", "b2"], ["a3"]]);
    for (const batch of r.batches) expect(new Set(batch.map((s) => s[0])).size, batch.join()).to.equal(batch.length);
  });

  it("fails every item of a batch whose run throws, and goes on with the next batch", async () => {
    let call = 0;
    const gc = new GroupCommit<number, number>(async (batch) => {
      if (call++ === 0) throw new Error("batch refused");
      return batch;
    }, { maxBatch: 10 });
    const failed = [gc.submit(1), gc.submit(2)];
    const results = await Promise.allSettled(failed);
    expect(results.map((x) => x.status)).to.deep.equal(["rejected", "rejected"]);
    expect(await gc.submit(3)).to.equal(3);
  });

  it("settles each item with its own result when run returns promises", async () => {
    const gc = new GroupCommit<number, number>(async (batch) => batch.map((n) => (n === 2 ? Promise.reject(new Error("two")) : Promise.resolve(n))), { maxBatch: 10 });
    const results = await Promise.allSettled([1, 2, 3].map((n) => gc.submit(n)));
    expect(results.map((x) => (x.status === "fulfilled" ? x.value : (x.reason as Error).message))).to.deep.equal([1, "two", 3]);
  });
});

describe("concurrencyLimit", () => {
  it("runs at most n at a time, starts them in order, and passes results and errors through", async () => {
    const limit = concurrencyLimit(2);
    let active = 0;
    let maxActive = 0;
    const started: number[] = [];
    const task = (n: number) => async () => {
      started.push(n);
      active++;
      maxActive = Math.max(maxActive, active);
      await new Promise((r) => setTimeout(r, 5));
      active--;
      if (n === 3) throw new Error("three");
      return n;
    };
    const results = await Promise.allSettled([1, 2, 3, 4, 5].map((n) => limit(task(n))));
    expect(maxActive).to.equal(2);
    expect(started).to.deep.equal([1, 2, 3, 4, 5]);
    expect(results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message))).to.deep.equal([1, 2, "three", 4, 5]);
  });
});
