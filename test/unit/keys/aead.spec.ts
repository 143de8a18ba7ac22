import { expect } from "chai";
import { associatedData, newKey, open, seal, sealedKeyId } from "../../../src/keys/aead.js";
import { NexusError } from "../../../src/errors/nexus-error.js";

describe("aead: AES-256-GCM in Nexus's stored format", () => {
  const key = newKey();
  const aad = associatedData("test", "secret-1", 3);

  it("round-trips and records the key id in the header", () => {
    const blob = seal(key, 42, Buffer.from("hello"), aad);
    expect(blob[0]).to.equal(1);
    expect(sealedKeyId(blob)).to.equal(42);
    expect(open(key, blob, aad).toString()).to.equal("hello");
  });

  it("uses a fresh nonce each time, so equal plaintexts never give equal ciphertexts", () => {
    const a = seal(key, 1, Buffer.from("same"), aad);
    const b = seal(key, 1, Buffer.from("same"), aad);
    expect(a.subarray(5, 17).equals(b.subarray(5, 17))).to.equal(false);
    expect(a.equals(b)).to.equal(false);
  });

  const tampering: Array<[string, (blob: Buffer) => [Buffer, Buffer, Buffer]]> = [
    ["other associated data", (b) => [key, b, associatedData("test", "secret-2", 3)]],
    ["another version in the associated data", (b) => [key, b, associatedData("test", "secret-1", 4)]],
    ["another key", (b) => [newKey(), b, aad]],
    ["a changed key id in the header", (b) => { const c = Buffer.from(b); c.writeUInt32BE(7, 1); return [key, c, aad]; }],
    ["a flipped ciphertext byte", (b) => { const c = Buffer.from(b); c[20] ^= 1; return [key, c, aad]; }],
    ["a truncated tag", (b) => [key, b.subarray(0, b.length - 1), aad]],
    ["an unknown format byte", (b) => { const c = Buffer.from(b); c[0] = 2; return [key, c, aad]; }],
  ];
  for (const [name, tamper] of tampering) {
    it(`refuses to open with ${name}, saying only that the integrity check failed`, () => {
      const blob = seal(key, 1, Buffer.from("value-that-must-not-leak"), aad);
      const [k, b, a] = tamper(blob);
      expect(() => open(k, b, a)).to.throw(NexusError).with.property("reason", "INTEGRITY_CHECK_FAILED");
    });
  }

  it("length-prefixes associated data fields so that different splits differ", () => {
    expect(associatedData("l", "ab", "c").equals(associatedData("l", "a", "bc"))).to.equal(false);
  });
});
