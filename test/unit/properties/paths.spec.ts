// Properties of secret paths and ListSecrets prefixes (src/services/secret-rules.ts):
// what is accepted is exactly the documented grammar, an accepted value comes
// back unchanged, and anything else is INVALID_ARGUMENT, never another error.

import { expect } from "chai";
import fc from "fast-check";
import { validatePath, validatePrefix } from "../../../src/services/secret-rules.js";
import { runs, throwsOnly } from "./settings.js";

const SEGMENT_CHAR = fc.constantFrom(..."aZ09._-");
const segment = fc.string({ unit: SEGMENT_CHAR, minLength: 1, maxLength: 12 }).filter((s) => s !== "." && s !== "..");
const validPath = fc.array(segment, { minLength: 1, maxLength: 20 }).map((s) => s.join("/")).filter((p) => p.length <= 255);
/** Strings near the grammar: its characters, separators and a few it forbids. */
const nearPath = fc.string({ unit: fc.constantFrom(..."aZ09._-/", " ", "ä", "\0", "\n", "%", "\uD800"), maxLength: 40 });

/** The grammar, written independently of the implementation. */
function isPath(p: string): boolean {
  if (p.length === 0 || p.length > 255) return false;
  return p.split("/").every((s) => /^[A-Za-z0-9._-]+$/.test(s) && s !== "." && s !== "..");
}

describe("properties: secret paths and prefixes", () => {
  it("every path of 1-20 valid segments and at most 255 characters is accepted unchanged", () => {
    fc.assert(fc.property(validPath, (p) => validatePath(p) === p), runs());
  });

  it("a string is accepted as a path exactly when it follows the grammar; otherwise it is INVALID_ARGUMENT (INVALID_PATH)", () => {
    fc.assert(
      fc.property(fc.oneof(nearPath, validPath, fc.string({ unit: "binary", maxLength: 300 })), (p) => {
        const refused = throwsOnly(() => expect(validatePath(p)).to.equal(p), "invalid_argument", "INVALID_PATH");
        return refused === !isPath(p);
      }),
      runs(500),
    );
  });

  it("a path is refused once it has an empty, '.' or '..' segment, or a leading or trailing '/'", () => {
    const breakPath = fc.constantFrom((p: string) => `/${p}`, (p: string) => `${p}/`, (p: string) => `${p}//x`, (p: string) => `${p}/./x`, (p: string) => `../${p}`);
    fc.assert(fc.property(validPath.filter((p) => p.length < 240), breakPath, (p, broken) => throwsOnly(() => validatePath(broken(p)), "invalid_argument", "INVALID_PATH")), runs());
  });

  it("every leading part of a valid path is a valid prefix, returned unchanged", () => {
    fc.assert(fc.property(validPath, fc.nat(), (p, n) => validatePrefix(p.slice(0, n % (p.length + 1))) === p.slice(0, n % (p.length + 1))), runs());
  });

  it("a prefix with a character no path can hold is INVALID_ARGUMENT (INVALID_PREFIX), and nothing else is thrown", () => {
    fc.assert(
      fc.property(fc.oneof(nearPath, fc.string({ unit: "binary", maxLength: 300 })), (p) => {
        const refused = throwsOnly(() => expect(validatePrefix(p)).to.equal(p), "invalid_argument", "INVALID_PREFIX");
        return refused === (p.length > 255 || !/^[A-Za-z0-9._/-]*$/.test(p));
      }),
      runs(500),
    );
  });
});
