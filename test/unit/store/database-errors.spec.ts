// How driver errors leave the store: "the database is not there right now" is
// UNAVAILABLE (clients retry), conflicts ABORTED, anything else INTERNAL, and
// never with the driver's text.

import { expect } from "chai";
import { databaseError } from "../../../src/store/database.js";

describe("database errors", () => {
  const cases: ReadonlyArray<[string, string, string]> = [
    ["ECONNREFUSED", "unavailable", "connection refused"],
    ["CONNECTION_CLOSED", "unavailable", "connection closed by the driver"],
    ["08006", "unavailable", "connection_failure"],
    ["57P01", "unavailable", "admin_shutdown (immediate stop of the primary)"],
    ["57P03", "unavailable", "cannot_connect_now (starting up, promoting)"],
    ["53300", "unavailable", "too_many_connections"],
    ["25006", "unavailable", "read_only_sql_transaction (a standby, or a primary made read-only)"],
    ["57014", "internal", "query_canceled"],
    ["40001", "aborted", "serialization_failure"],
    ["23505", "internal", "unique_violation"],
  ];
  for (const [code, expected, what] of cases) {
    it(`${code} (${what}) becomes ${expected.toUpperCase()} with a safe message`, () => {
      const err = databaseError(Object.assign(new Error(`driver text for ${code}`), { code }));
      expect(err.code).to.equal(expected);
      expect(err.message).not.to.include("driver text");
    });
  }
});
