// Signatures with an SVID key (audit events recorded while sealed): a
// signature verifies only with a chain to the trust bundle, the expected
// SPIFFE ID, every certificate valid at the signed moment, and the signed
// bytes unchanged — for RSA and EC P-256 keys, issued by a root or an
// intermediate.

import { expect } from "chai";
import { SvidSigner, SvidSignerChain } from "../../../src/identity/svid-signature.js";
import { TrustBundleSet } from "../../../src/identity/trust-bundle.js";
import { createAuthority, type Authority, type IssuedCert, type KeyAlg } from "../../support/test-pki.js";

const TD = "spike.ist";
const SERVER_ID = `spiffe://${TD}/spike/nexus`;
const DATA = Buffer.from("nexus/v1/audit-event-signature\0[...]");
const DAY = 86_400_000;

function signer(cert: IssuedCert, chainPem = cert.certPem) {
  return new SvidSigner(() => ({ cert: Buffer.from(chainPem), key: Buffer.from(cert.keyPem) }));
}

for (const alg of ["ec", "rsa"] as KeyAlg[]) {
  describe(`SVID signatures (${alg.toUpperCase()})`, function () {
    this.timeout(30_000);
    let ca: Authority;
    let bundle: TrustBundleSet;
    let leaf: IssuedCert;

    before(async () => {
      ca = await createAuthority({ alg, trustDomain: TD });
      bundle = TrustBundleSet.single(TD, ca.certPem);
      leaf = await ca.issue({ uris: [SERVER_ID], alg });
    });

    const check = (s: ReturnType<SvidSigner["sign"]>, opts: { data?: Buffer; at?: Date; id?: string; bundle?: TrustBundleSet; sha?: Buffer } = {}) =>
      new SvidSignerChain(opts.sha ?? s.certificateSha256, s.certificateChainPem, opts.bundle ?? bundle, opts.id ?? SERVER_ID).verifies(opts.data ?? DATA, s.signature, opts.at ?? new Date());

    it("a signature by the server's SVID verifies", () => {
      expect(check(signer(leaf).sign(DATA))).to.equal(true);
    });

    it("changed bytes, another SPIFFE ID expected, a time outside the leaf's validity, or a signer hash that is not the leaf's: refused", () => {
      const s = signer(leaf).sign(DATA);
      expect(check(s, { data: Buffer.concat([DATA, Buffer.from("x")]) }), "changed bytes").to.equal(false);
      expect(check(s, { id: `spiffe://${TD}/workload/demo` }), "another ID").to.equal(false);
      expect(check(s, { at: new Date(Date.now() + 2 * DAY) }), "after the leaf expired").to.equal(false);
      expect(check(s, { at: new Date(Date.now() - DAY) }), "before the leaf was valid").to.equal(false);
      expect(check(s, { sha: Buffer.alloc(32, 7) }), "signer hash").to.equal(false);
      expect(check({ ...s, signature: Buffer.alloc(s.signature.length) }), "zeroed signature").to.equal(false);
    });

    it("an SVID with the server's SPIFFE ID from a CA outside the bundle: refused", async () => {
      const rogue = await createAuthority({ alg, trustDomain: TD, name: "rogue" });
      expect(check(signer(await rogue.issue({ uris: [SERVER_ID], alg })).sign(DATA))).to.equal(false);
    });

    it("an SVID issued by an intermediate verifies when the chain carries the intermediate, not without it", async () => {
      const intermediate = await ca.intermediate({ alg });
      const viaIntermediate = await intermediate.issue({ uris: [SERVER_ID], alg });
      expect(check(signer(viaIntermediate, viaIntermediate.certPem + intermediate.certPem).sign(DATA)), "with").to.equal(true);
      expect(check(signer(viaIntermediate).sign(DATA)), "without").to.equal(false);
    });

    it("a time at which the leaf is valid but its intermediate has expired: refused (every certificate of the path, not only the leaf)", async () => {
      const now = Date.now();
      const shortLived = await ca.intermediate({ alg, notBefore: new Date(now - DAY), notAfter: new Date(now + 3_600_000) });
      const viaShortLived = await shortLived.issue({ uris: [SERVER_ID], alg, notBefore: new Date(now - 60_000), notAfter: new Date(now + DAY) });
      const s = signer(viaShortLived, viaShortLived.certPem + shortLived.certPem).sign(DATA);
      expect(check(s, { at: new Date(now + 60_000) }), "while the intermediate is valid").to.equal(true);
      expect(check(s, { at: new Date(now + 2 * 3_600_000) }), "after the intermediate expired").to.equal(false);
    });

    it("a workload SVID (not a CA) posing as the intermediate that issued the server's SVID: refused", async () => {
      const poser = await ca.intermediate({ alg, ca: false, name: "workload posing as CA", uris: [`spiffe://${TD}/workload/demo`] });
      const forged = await poser.issue({ uris: [SERVER_ID], alg });
      expect(check(signer(forged, forged.certPem + poser.certPem).sign(DATA))).to.equal(false);
    });
  });
}
