import { expect } from "chai";
import { compilePolicy, type Grant } from "../../../src/authorization/policy.js";
import { PolicyEngine } from "../../../src/authorization/policy-engine.js";
import { parseSpiffeId } from "../../../src/identity/spiffe-id.js";
import { NexusError } from "../../../src/errors/nexus-error.js";

function policy(name: string, spiffeIdPattern: string, pathPattern: string, permissions: Grant[]) {
  const now = new Date();
  return compilePolicy({ id: name, name, spiffeIdPattern, pathPattern, permissions, createdAt: now, createdBy: "test", updatedAt: now });
}

describe("policy engine", () => {
  const engine = new PolicyEngine();
  engine.replace([
    policy("billing-read", "spiffe://spike\\.ist/ns/billing/.*", "apps/billing/.*", ["read", "list"]),
    policy("ops-super", "spiffe://spike\\.ist/ops", "ops/.*", ["super"]),
  ]);
  const billing = parseSpiffeId("spiffe://spike.ist/ns/billing/api");
  const ops = parseSpiffeId("spiffe://spike.ist/ops");

  const cases: Array<[string, ReturnType<typeof parseSpiffeId>, Grant, string, boolean]> = [
    ["READ on a matching path", billing, "read", "apps/billing/db", true],
    ["LIST on a matching path", billing, "list", "apps/billing/db", true],
    ["no WRITE from a READ/LIST policy", billing, "write", "apps/billing/db", false],
    ["nothing on another path", billing, "read", "apps/payroll/db", false],
    ["whole-path match only (no match anywhere, unlike SPIKE)", billing, "read", "x/apps/billing/db", false],
    ["SUPER implies READ", ops, "read", "ops/x", true],
    ["SUPER implies WRITE", ops, "write", "ops/x", true],
    ["SUPER implies LIST", ops, "list", "ops/x", true],
    ["whole-ID match only", parseSpiffeId("spiffe://spike.ist/ops/child"), "read", "ops/x", false],
  ];
  for (const [name, caller, grant, path, allowed] of cases) {
    it(`${allowed ? "allows" : "denies"}: ${name}`, () => expect(engine.allows(caller, grant, path)).to.equal(allowed));
  }

  it("gives a path test for a grant a caller holds somewhere, agreeing with allows(), and none otherwise", () => {
    const mayList = engine.pathTest(billing, "list");
    expect(mayList).to.be.a("function");
    for (const path of ["apps/billing/db", "apps/payroll/db", "x/apps/billing/db"]) expect(mayList!(path), path).to.equal(engine.allows(billing, "list", path));
    expect(engine.pathTest(parseSpiffeId("spiffe://spike.ist/nobody"), "list")).to.equal(undefined);
  });

  it("denies everything after clear()", () => {
    const e = new PolicyEngine();
    e.replace([policy("p", ".*", ".*", ["super"])]);
    e.clear();
    expect(e.allows(billing, "read", "a")).to.equal(false);
  });

  it("evaluates a catastrophically backtracking pattern in linear time", () => {
    const e = new PolicyEngine();
    e.replace([policy("evil", "(a+)+$", ".*", ["read"])]);
    const id = parseSpiffeId("spiffe://spike.ist/" + "a".repeat(2000) + "b");
    expect(e.allows(id, "read", "x")).to.equal(false);
  });

  it("refuses a pattern that does not compile, with the reason", () => {
    expect(() => policy("bad", "(", ".*", ["read"])).to.throw(NexusError).that.satisfies((err: NexusError) => err.code === "invalid_argument" && /missing closing/.test(err.message));
  });
});
