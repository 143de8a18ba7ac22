// The typed client keeps the AIP-193 details a failed call carries — the
// ErrorInfo reason and the BadRequest field violations — on both listeners,
// so the CLI (and later the public client) branches on reasons, not on text.

import { expect } from "chai";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";

describe("the Nexus client keeps the error details of a failed call", function () {
  this.timeout(60_000);
  let server: SecretTestServer;

  before(async () => {
    server = await startSecretServer();
  });

  after(async () => {
    await server?.stop();
  });

  for (const listener of LISTENERS) {
    it(`${listener}: an invalid path carries its reason and the field violation`, async () => {
      const result = await server.client(listener).call(SecretService.method.putSecret, { path: "apps//db", data: { k: "v" } });
      expect(result.code).to.equal("INVALID_ARGUMENT");
      expect(result.reason).to.be.a("string").and.match(/^[A-Z_]+$/);
      expect(result.violations?.map((v) => v.field)).to.deep.equal(["path"]);
    });

    it(`${listener}: a missing secret carries reason SECRET_NOT_FOUND and no violations`, async () => {
      const result = await server.client(listener).call(SecretService.method.getSecret, { path: "apps/none" });
      expect(result.code).to.equal("NOT_FOUND");
      expect(result.reason).to.equal("SECRET_NOT_FOUND");
      expect(result.violations ?? []).to.deep.equal([]);
    });
  }
});
