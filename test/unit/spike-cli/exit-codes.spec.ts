// The exit-code contract of `spike` (docs/cli.md) as a table: every gRPC status
// and the two reasons that change the answer.

import { expect } from "chai";
import { SERVER_IDENTITY_REJECTED } from "../../../src/client/nexus-client.js";
import { exitCodeFor } from "../../../src/spike-cli/exit-codes.js";
import { parseDuration, parseTime, parseVersions } from "../../../src/spike-cli/argument-values.js";
import { CliError } from "../../../src/spike-cli/cli-error.js";

describe("spike exit codes", () => {
  const table: Array<[string, string | undefined, number]> = [
    ["INVALID_ARGUMENT", "INVALID_PATH", 1],
    ["NOT_FOUND", "SECRET_NOT_FOUND", 2],
    ["PERMISSION_DENIED", "NOT_AUTHORIZED", 3],
    ["UNAUTHENTICATED", "INVALID_ADMIN_CREDENTIAL", 3],
    ["UNAVAILABLE", SERVER_IDENTITY_REJECTED, 3],
    ["ABORTED", "CAS_MISMATCH", 4],
    ["ALREADY_EXISTS", "POLICY_EXISTS", 4],
    ["FAILED_PRECONDITION", "ALREADY_INITIALIZED", 4],
    ["FAILED_PRECONDITION", "SEALED", 5],
    ["UNAVAILABLE", undefined, 5],
    ["DEADLINE_EXCEEDED", undefined, 5],
    ["RESOURCE_EXHAUSTED", "PASSWORD_ATTEMPTS_EXCEEDED", 5],
    ["INTERNAL", "INTERNAL", 6],
    ["UNIMPLEMENTED", undefined, 6],
    ["UNKNOWN", undefined, 6],
    ["CANCELLED", undefined, 6],
  ];
  for (const [code, reason, exit] of table) {
    it(`${code}${reason ? ` (${reason})` : ""} exits ${exit}`, () => {
      expect(exitCodeFor(code, reason)).to.equal(exit);
    });
  }
});

describe("spike argument values", () => {
  it("durations add up their parts and refuse anything else", () => {
    expect(parseDuration("1h30m", "--ttl")).to.equal(90 * 60_000);
    expect(parseDuration("30d", "--ttl")).to.equal(30 * 86_400_000);
    for (const bad of ["", "1", "1w", "h", "1h 2m", "-1h"]) expect(() => parseDuration(bad, "--ttl"), bad).to.throw(CliError, /--ttl/);
  });

  it("times are RFC 3339, or a duration from now in the direction asked", () => {
    expect(parseTime("2026-01-31T12:00:00Z", "--expires-at").toISOString()).to.equal("2026-01-31T12:00:00.000Z");
    expect(parseTime("1h", "--since", "past").getTime()).to.be.closeTo(Date.now() - 3600_000, 5000);
    expect(parseTime("1d", "--expires-at").getTime()).to.be.closeTo(Date.now() + 86_400_000, 5000);
    expect(() => parseTime("tomorrow", "--expires-at")).to.throw(CliError, /RFC 3339/);
  });

  it("version lists are positive whole numbers", () => {
    expect(parseVersions("1,2, 5")).to.deep.equal([1, 2, 5]);
    for (const bad of ["0", "1,,2", "a", "-1", "1.5"]) expect(() => parseVersions(bad), bad).to.throw(CliError);
  });
});
