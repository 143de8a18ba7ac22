// The label rules and the per-process epoch memory, without a server: what a
// put and a promotion do to the labels, that a sealed state verifies only with
// its own content, and that an older epoch is refused only when a statement
// that finished before it started had seen a newer one.

import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { LabelFreshness, labelsAfterPromote, labelsAfterPut, labelsVerify, sealLabels } from "../../../src/services/secret-labels.js";
import { generateValue } from "../../../src/services/rotation-policy.js";

const KEY = randomBytes(32);
const KEY_REF = { id: 2, key: KEY };
const OTHER = randomBytes(32);
/** Key 2 verifies; key 4 is another key; any other id is not accepted. */
const keyFor = (id: number) => (id === 2 ? KEY : id === 4 ? OTHER : undefined);
const ID = "00000000-0000-4000-8000-000000000001";

describe("secret labels (unit)", () => {
  it("a sealed state verifies, and any change to it (or to the path it was sealed for) does not", () => {
    const s = sealLabels(KEY_REF, ID, "a/b", { epoch: 4 }, { current: 3, pending: 5, previous: 2 }, 5);
    expect(s.epoch).to.equal(5);
    expect(labelsVerify(keyFor, ID, "a/b", s)).to.equal(true);
    expect(labelsVerify(keyFor, ID, "a/c", s)).to.equal(false);
    for (const change of [{ current: 2 }, { pending: null }, { previous: 1 }, { epoch: 6 }, { latestVersion: 4 }]) {
      expect(labelsVerify(keyFor, ID, "a/b", { ...s, ...change }), JSON.stringify(change)).to.equal(false);
    }
  });

  it("a state is verified with the key its MAC names: another key id, or an id not allowed, does not verify", () => {
    const s = sealLabels(KEY_REF, ID, "a/b", { epoch: 0 }, { current: 1, pending: null, previous: null }, 1);
    expect(s.mac.length).to.equal(36);
    expect(s.mac.readUInt32BE(0)).to.equal(2);
    const renamed = Buffer.from(s.mac);
    renamed.writeUInt32BE(4);
    expect(labelsVerify(keyFor, ID, "a/b", { ...s, mac: renamed })).to.equal(false);
    renamed.writeUInt32BE(7);
    expect(labelsVerify(keyFor, ID, "a/b", { ...s, mac: renamed })).to.equal(false);
    // A 32-byte MAC (written before MACs named their key) is under the first integrity key.
    expect(labelsVerify(keyFor, ID, "a/b", { ...s, mac: s.mac.subarray(4) })).to.equal(true);
    expect(labelsVerify(() => undefined, ID, "a/b", s)).to.equal(false);
  });

  it("an unbound state (no MAC) is accepted only as CURRENT = latest_version at epoch 0", () => {
    const unbound = { current: 3, pending: null, previous: null, epoch: 0, latestVersion: 3, mac: null };
    expect(labelsVerify(keyFor, ID, "a/b", unbound)).to.equal(true);
    expect(labelsVerify(keyFor, ID, "a/b", { ...unbound, current: 2 })).to.equal(false);
    expect(labelsVerify(keyFor, ID, "a/b", { ...unbound, previous: 2 })).to.equal(false);
    expect(labelsVerify(keyFor, ID, "a/b", { ...unbound, epoch: 1 })).to.equal(false);
  });

  it("put and promote move labels as the issue says", () => {
    const none = { current: null, pending: null, previous: null };
    expect(labelsAfterPut(none, 1, "current")).to.deep.equal({ current: 1, pending: null, previous: null });
    expect(labelsAfterPut({ current: 1, pending: 2, previous: null }, 3, "current")).to.deep.equal({ current: 3, pending: 2, previous: 1 });
    expect(labelsAfterPut({ current: 1, pending: 2, previous: null }, 3, "pending")).to.deep.equal({ current: 1, pending: 3, previous: null });
    expect(labelsAfterPromote({ current: 1, pending: 2, previous: null }, 2)).to.deep.equal({ current: 2, pending: null, previous: 1 });
    expect(labelsAfterPromote({ current: 2, pending: null, previous: 1 }, 1)).to.deep.equal({ current: 1, pending: null, previous: 2 });
  });

  describe("LabelFreshness", () => {
    it("refuses an older epoch from a statement that started after a newer one was seen", () => {
      const f = new LabelFreshness();
      expect(f.accept(ID, 6, f.start())).to.equal(true);
      expect(f.accept(ID, 5, f.start())).to.equal(false);
      expect(f.accept(ID, 6, f.start())).to.equal(true);
    });

    it("accepts an older epoch from a statement that started before the newer one was seen (overlapping statements)", () => {
      const f = new LabelFreshness();
      const early = f.start();
      expect(f.accept(ID, 6, f.start())).to.equal(true);
      expect(f.accept(ID, 5, early)).to.equal(true);
    });

    it("is bounded: past its limit it forgets the least recently raised secret", () => {
      const f = new LabelFreshness(2);
      f.accept("a", 5, f.start());
      f.accept("b", 5, f.start());
      f.accept("c", 5, f.start());
      expect(f.accept("a", 1, f.start()), "forgotten").to.equal(true);
      expect(f.accept("c", 1, f.start())).to.equal(false);
    });
  });

  it("generated passwords hold every chosen class and none of the excluded characters", () => {
    for (let i = 0; i < 200; i++) {
      const p = generateValue({ kind: "random_password", length: 8, classes: ["lowercase", "uppercase", "digits", "symbols"], excluded: "\"'\\" });
      expect(p).to.have.length(8);
      expect(p).to.match(/[a-z]/).and.match(/[A-Z]/).and.match(/[0-9]/).and.match(/[^A-Za-z0-9]/);
      expect(p).not.to.match(/["'\\]/);
    }
  });
});
