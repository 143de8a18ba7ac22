import type { ConnectionOptions } from "node:tls";
import { expect } from "chai";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { authorizeServerId } from "../../../src/identity/server-authorizer.js";
import { generateKeys, KeyUsageFlags, makeLeafDer, RSA } from "./svid-fixtures.js";

describe("authorizeServerId", () => {
  let server: Uint8Array;
  let impostor: Uint8Array;
  let notAnSvid: Uint8Array;

  before(async () => {
    const keys = await generateKeys(RSA);
    server = await makeLeafDer(keys, { uris: ["spiffe://example.org/nexus"], dnsNames: ["other.host"] });
    impostor = await makeLeafDer(keys, { uris: ["spiffe://example.org/impostor"] });
    notAnSvid = await makeLeafDer(keys, { keyUsage: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign });
  });

  const check = authorizeServerId("spiffe://example.org/nexus");

  it("accepts the expected server whatever hostname was dialled", () => {
    expect(check("localhost", { raw: server })).to.equal(undefined);
    expect(check("10.0.0.7", { raw: server })).to.equal(undefined);
  });

  it("rejects another ID with an error naming the expected and the presented ID", () => {
    const err = check("localhost", { raw: impostor });
    expect(err).to.be.instanceOf(Error);
    expect(err?.message).to.contain("spiffe://example.org/nexus").and.to.contain("spiffe://example.org/impostor");
  });

  it("rejects a certificate that is not a valid SVID, saying why", () => {
    const err = check("localhost", { raw: notAnSvid });
    expect(err?.message).to.contain("spiffe://example.org/nexus").and.to.contain("keyCertSign");
  });

  it("fits node:tls checkServerIdentity", () => {
    const options: ConnectionOptions = { checkServerIdentity: check };
    expect(options.checkServerIdentity).to.equal(check);
  });

  it("refuses to build a check for an invalid expected ID", () => {
    expect(() => authorizeServerId("spiffe://example.org")).to.throw(NexusError, /must have a path/);
  });
});
