// Properties of ListSecrets page tokens (src/services/secret-rules.ts): a token
// round-trips for the caller and prefix it was issued to, is the same length
// whatever it resumes after, and is refused (INVALID_ARGUMENT, INVALID_PAGE_TOKEN)
// when any bit of it changes, when it is cut short, or when anyone else or any
// other prefix presents it. No string makes decoding throw anything else.

import fc from "fast-check";
import { decodePageToken, encodePageToken } from "../../../src/services/secret-rules.js";
import { runs, throwsOnly } from "./settings.js";

const segment = fc.string({ unit: fc.constantFrom(..."aZ09._-"), minLength: 1, maxLength: 12 }).filter((s) => s !== "." && s !== "..");
const path = fc.array(segment, { minLength: 1, maxLength: 20 }).map((s) => s.join("/")).filter((p) => p.length <= 255);
const binding = fc.record({
  caller: fc.string({ unit: fc.constantFrom(..."abc/:."), maxLength: 40 }).map((s) => `spiffe://spike.ist/${s}`),
  prefix: fc.string({ unit: fc.constantFrom(..."ab/-"), maxLength: 20 }),
});
const key = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b));

const refused = (fn: () => unknown) => throwsOnly(fn, "invalid_argument", "INVALID_PAGE_TOKEN");

describe("properties: ListSecrets page tokens", () => {
  it("decoding a token gives back the resume point it was issued with", () => {
    fc.assert(fc.property(key, binding, path, (k, b, p) => decodePageToken(k, encodePageToken(k, b, p), b) === p), runs());
  });

  it("every token has the same length, whatever path it resumes after", () => {
    fc.assert(fc.property(key, binding, path, path, (k, b, p, q) => encodePageToken(k, b, p).length === encodePageToken(k, b, q).length), runs(100));
  });

  it("flipping any one bit of a token gets it refused", () => {
    fc.assert(
      fc.property(key, binding, path, fc.nat(), fc.integer({ min: 0, max: 7 }), (k, b, p, at, bit) => {
        const bytes = Buffer.from(encodePageToken(k, b, p), "base64url");
        bytes[at % bytes.length] ^= 1 << bit;
        return refused(() => decodePageToken(k, bytes.toString("base64url"), b));
      }),
      runs(),
    );
  });

  it("a token cut short is refused", () => {
    fc.assert(
      fc.property(key, binding, path, fc.nat(), (k, b, p, n) => {
        const bytes = Buffer.from(encodePageToken(k, b, p), "base64url");
        return refused(() => decodePageToken(k, bytes.subarray(0, n % bytes.length).toString("base64url") || "x", b));
      }),
      runs(),
    );
  });

  it("a token presented by another caller, with another prefix, or checked under another key is refused", () => {
    fc.assert(
      fc.property(key, key, binding, binding, path, (k, otherKey, b, other, p) => {
        fc.pre(!k.equals(otherKey) && (b.caller !== other.caller || b.prefix !== other.prefix));
        const token = encodePageToken(k, b, p);
        return refused(() => decodePageToken(k, token, other)) && refused(() => decodePageToken(otherKey, token, b));
      }),
      runs(),
    );
  });

  it("any other string is refused as INVALID_PAGE_TOKEN and nothing else is thrown; the empty token is the first page", () => {
    fc.assert(
      fc.property(key, binding, fc.oneof(fc.string({ unit: "binary", maxLength: 500 }), fc.base64String({ maxLength: 500 })), (k, b, s) =>
        s === "" ? decodePageToken(k, s, b) === "" : refused(() => decodePageToken(k, s, b)),
      ),
      runs(),
    );
  });
});
