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

  it("never repeats a nonce, across refills of the nonce pool", () => {
    const nonces = new Set<string>();
    for (let i = 0; i < 1000; i++) nonces.add(seal(key, 1, Buffer.from("x"), aad).subarray(5, 17).toString("hex"));
    expect(nonces.size).to.equal(1000);
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

  // Stored ciphertexts outlive builds: the associated data's bytes and the blob
  // format are fixed. Both vectors were made by the first released encoding.
  const storedKey = Buffer.from("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "hex");
  const storedAad = () => associatedData("nexus/v1/secret-version", 1, 7, Buffer.from("00112233445566778899aabbccddeeff", "hex"), "app/db/pässword", 4294967295);

  it("encodes associated data exactly as earlier builds did (label, numbers, bytes, UTF-8 text, each length-prefixed)", () => {
    expect(storedAad().toString("hex")).to.equal(
      "000000176e657875732f76312f7365637265742d76657273696f6e000000040000000100000004000000070000001000112233445566778899aabbccddeeff000000106170702f64622f70c3a47373776f726400000004ffffffff",
    );
  });

  it("opens a blob sealed by an earlier build", () => {
    const blob = Buffer.from("0100000007c135c1d7b120f48fcd58ad17962f0fbc5b0bccd22c8d2b9d680d95b7f1847b546eb8a280b9ea33695e8f07e26e8151547e34", "hex");
    expect(sealedKeyId(blob)).to.equal(7);
    expect(open(storedKey, blob, storedAad()).toString()).to.equal('{"password":"hunter2"}');
  });

  it("length-prefixes associated data fields so that different splits differ", () => {
    expect(associatedData("l", "ab", "c").equals(associatedData("l", "a", "bc"))).to.equal(false);
  });
});
