// Properties of policy patterns (src/authorization/policy.ts and the engine that
// applies them): compiling any string yields a pattern or INVALID_ARGUMENT
// (INVALID_PATTERN), never another error; and a policy grants exactly the paths
// and SPIFFE IDs its patterns match as a whole, never ones they match in part.

import fc from "fast-check";
import { RE2JS } from "re2js";
import { compilePattern, compilePolicy, type Grant } from "../../../src/authorization/policy.js";
import { PolicyEngine } from "../../../src/authorization/policy-engine.js";
import { parseSpiffeId } from "../../../src/identity/spiffe-id.js";
import { runs, throwsOnly } from "./settings.js";

/** Pattern-ish strings: RE2 syntax, characters it refuses, NUL and a lone surrogate. */
const patternText = fc.string({ unit: fc.constantFrom(..."ab/.*+?|()[]{}^$\\-,12", "(?=", "\\1", "\0", "\uD800", "é"), maxLength: 24 });
/** Patterns over paths made of a, b and "/", that compile. */
const pathPattern = fc.string({ unit: fc.constantFrom(..."ab/.*+?|()"), minLength: 1, maxLength: 12 }).filter((p) => {
  try {
    RE2JS.compile(p);
    return true;
  } catch {
    return false;
  }
});
const pathText = fc.string({ unit: fc.constantFrom(..."ab/"), minLength: 1, maxLength: 12 });

/** The reference for "matches as a whole": an anchored search. */
const wholly = (pattern: string, s: string) => RE2JS.compile(`^(?:${pattern})$`).matcher(s).find();

function engineWith(spiffeIdPattern: string, pathPattern: string, permissions: Grant[] = ["read"]): PolicyEngine {
  const now = new Date(0);
  const engine = new PolicyEngine();
  engine.replace([compilePolicy({ id: "p", name: "p", spiffeIdPattern, pathPattern, permissions, createdAt: now, createdBy: "test", updatedAt: now })]);
  return engine;
}

describe("properties: policy patterns", () => {
  it("compiling any string gives a pattern or INVALID_ARGUMENT (INVALID_PATTERN), and nothing else is thrown; refused exactly when empty, unstorable or not RE2", () => {
    const re2Refuses = (p: string) => {
      try {
        RE2JS.compile(p);
        return false;
      } catch {
        return true;
      }
    };
    const unstorable = (p: string) => p.includes("\0") || /\p{Surrogate}/u.test(p.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ""));
    fc.assert(
      fc.property(fc.oneof(patternText, fc.string({ unit: "binary", maxLength: 40 })), (p) => {
        const refused = throwsOnly(() => compilePattern(p, "path_pattern"), "invalid_argument", "INVALID_PATTERN");
        return refused === (p === "" || unstorable(p) || re2Refuses(p));
      }),
      runs(1000),
    );
  });

  it("a policy allows a path exactly when its path pattern matches the whole path", () => {
    const caller = parseSpiffeId("spiffe://spike.ist/workload");
    fc.assert(
      fc.property(pathPattern, pathText, (pattern, path) => {
        const engine = engineWith("spiffe://spike\\.ist/workload", pattern, ["read", "list"]);
        const expected = wholly(pattern, path);
        return engine.allows(caller, "read", path) === expected && engine.pathTest(caller, "list")!(path) === expected;
      }),
      runs(500),
    );
  });

  it("a policy applies to a caller exactly when its SPIFFE ID pattern matches the whole ID", () => {
    fc.assert(
      fc.property(pathPattern, pathText.map((s) => s.replace(/\/+/g, "/").replace(/^\/|\/$/g, "")).filter((s) => s !== ""), (pattern, idPath) => {
        const id = `spiffe://spike.ist/${idPath}`;
        const engine = engineWith(`spiffe://spike\\.ist/(?:${pattern})`, ".*");
        return engine.allows(parseSpiffeId(id), "read", "x") === wholly(pattern, idPath);
      }),
      runs(500),
    );
  });

  it("a literal pattern grants only its own string, never a string that merely contains it", () => {
    const caller = parseSpiffeId("spiffe://spike.ist/workload");
    fc.assert(
      fc.property(pathText, pathText, fc.constantFrom("before", "after", "both"), (literal, extra, where) => {
        const engine = engineWith("spiffe://spike\\.ist/workload", RE2JS.quote(literal));
        const longer = where === "before" ? extra + literal : where === "after" ? literal + extra : extra + literal + extra;
        return engine.allows(caller, "read", literal) && !engine.allows(caller, "read", longer);
      }),
      runs(),
    );
  });
});
