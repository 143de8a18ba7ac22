// Properties of SPIFFE ID parsing (src/identity/spiffe-id.ts): every ID the spec
// allows parses and prints back as given; anything else is UNAUTHENTICATED
// (INVALID_SPIFFE_ID) and nothing else is thrown; an oversized ID is never echoed.

import { expect } from "chai";
import fc from "fast-check";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { parseSpiffeId } from "../../../src/identity/spiffe-id.js";
import { runs, throwsOnly } from "./settings.js";

const trustDomain = fc.string({ unit: fc.constantFrom(..."az09.-_"), minLength: 1, maxLength: 20 });
const segment = fc.string({ unit: fc.constantFrom(..."aZ09._-"), minLength: 1, maxLength: 10 }).filter((s) => s !== "." && s !== "..");
const idPath = fc.array(segment, { minLength: 1, maxLength: 8 }).map((s) => `/${s.join("/")}`);
const validId = fc.tuple(trustDomain, idPath).map(([td, p]) => ({ td, path: p, id: `spiffe://${td}${p}` }));

const refused = (id: string) => throwsOnly(() => parseSpiffeId(id), "unauthenticated", "INVALID_SPIFFE_ID");

describe("properties: SPIFFE IDs", () => {
  it("a well-formed ID parses into its trust domain and path and prints back unchanged", () => {
    fc.assert(
      fc.property(validId, ({ td, path, id }) => {
        const parsed = parseSpiffeId(id);
        return parsed.trustDomain === td && parsed.path === path && parsed.toString() === id && parsed.memberOf(td);
      }),
      runs(),
    );
  });

  it("any string either parses to an ID that prints back as the same string, or is UNAUTHENTICATED (INVALID_SPIFFE_ID)", () => {
    const near = fc.string({ unit: fc.constantFrom("spiffe://", ..."aZ09._-/:@?#%", "ä", "\0"), maxLength: 30 });
    fc.assert(
      fc.property(fc.oneof(near, fc.string({ unit: "binary", maxLength: 100 }), validId.map((v) => v.id)), (s) => {
        try {
          return parseSpiffeId(s).toString() === s;
        } catch (err) {
          return err instanceof NexusError && err.code === "unauthenticated" && err.reason === "INVALID_SPIFFE_ID";
        }
      }),
      runs(500),
    );
  });

  it("breaking one rule of a well-formed ID gets it refused", () => {
    const BREAKS: Array<(v: { td: string; path: string }) => string> = [
      ({ td, path }) => `spiffe://${td.toUpperCase()}X${path}`, // uppercase trust domain
      ({ td, path }) => `spiffe://${td}:8443${path}`, // a port
      ({ td, path }) => `spiffe://user@${td}${path}`, // userinfo
      ({ td, path }) => `spiffe://${td}${path}/`, // trailing slash
      ({ td, path }) => `spiffe://${td}${path}//x`, // empty segment
      ({ td, path }) => `spiffe://${td}${path}/..`, // dot segment
      ({ td, path }) => `spiffe://${td}${path}%2e`, // percent-encoding
      ({ td, path }) => `spiffe://${td}${path}?q`, // query
      ({ td, path }) => `spiffe://${td}${path}#f`, // fragment
      ({ td }) => `spiffe://${td}`, // no path
      ({ td, path }) => `SPIFFE://${td}${path}`, // scheme case
      ({ td, path }) => `https://${td}${path}`, // another scheme
    ];
    fc.assert(fc.property(validId, fc.constantFrom(...BREAKS), (v, breakIt) => refused(breakIt(v))), runs());
  });

  it("an ID over 2,048 bytes is refused by its length, without its content in the message", () => {
    fc.assert(
      fc.property(validId, fc.integer({ min: 2049, max: 6000 }), ({ td }, size) => {
        const id = `spiffe://${td}/${"x".repeat(size)}`;
        try {
          parseSpiffeId(id);
          return false;
        } catch (err) {
          expect(err).to.be.instanceOf(NexusError);
          expect((err as NexusError).message).not.to.include("xxxxxxxx");
          return (err as NexusError).reason === "INVALID_SPIFFE_ID";
        }
      }),
      runs(50),
    );
  });
});
