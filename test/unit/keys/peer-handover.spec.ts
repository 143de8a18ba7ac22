import { expect } from "chai";
import { newKey } from "../../../src/keys/aead.js";
import {
  ephemeralKey,
  handoverNonce,
  openRootKeyFromPeer,
  requestTranscript,
  responseTranscript,
  sealRootKeyForPeer,
  type RequestHalf,
} from "../../../src/keys/peer-handover.js";

const ID = "spiffe://spike.ist/spike/nexus";

describe("peer handover: the root key sealed to the requester's ephemeral X25519 key", () => {
  const rootKey = newKey();

  function exchange() {
    const requester = ephemeralKey();
    const responder = ephemeralKey();
    const half: RequestHalf = { requesterId: ID, responderId: ID, requesterNonce: handoverNonce(), requesterPublicKey: requester.publicKey };
    const s = { responderNonce: handoverNonce(), responderPublicKey: responder.publicKey, rootKeyId: 3 };
    const transcript = responseTranscript(half, s);
    const sealed = sealRootKeyForPeer(responder.privateKey, requester.publicKey, transcript, 3, rootKey);
    return { requester, responder, half, s, transcript, sealed };
  }

  it("opens for the requester that made the request, and the ciphertext does not contain the key", () => {
    const { requester, s, transcript, sealed } = exchange();
    expect(openRootKeyFromPeer(requester.privateKey, s.responderPublicKey, transcript, sealed).equals(rootKey)).to.equal(true);
    expect(sealed.includes(rootKey)).to.equal(false);
  });

  it("a replayed request is answered under a fresh responder key: whoever replays it, without the requester's private key, cannot open the answer", () => {
    const { half, s, transcript, sealed } = exchange();
    const eavesdropper = ephemeralKey();
    expect(() => openRootKeyFromPeer(eavesdropper.privateKey, s.responderPublicKey, transcript, sealed)).to.throw();
    // Two answers to the same request differ entirely (fresh nonce and key each time).
    const again = ephemeralKey();
    const t2 = responseTranscript(half, { responderNonce: handoverNonce(), responderPublicKey: again.publicKey, rootKeyId: 3 });
    const sealed2 = sealRootKeyForPeer(again.privateKey, half.requesterPublicKey, t2, 3, rootKey);
    expect(sealed2.equals(sealed)).to.equal(false);
  });

  it("an answer recorded for one request does not open for another (the transcript names the requester's nonce)", () => {
    const { requester, half, s, sealed } = exchange();
    const otherRequest = { ...half, requesterNonce: handoverNonce() };
    expect(() => openRootKeyFromPeer(requester.privateKey, s.responderPublicKey, responseTranscript(otherRequest, s), sealed)).to.throw();
  });

  it("an answer whose transcript changed in transit (root key id, IDs) does not open", () => {
    const { requester, half, s, sealed } = exchange();
    expect(() => openRootKeyFromPeer(requester.privateKey, s.responderPublicKey, responseTranscript(half, { ...s, rootKeyId: 4 }), sealed)).to.throw();
    const otherIds = { ...half, responderId: "spiffe://spike.ist/workload/demo" };
    expect(() => openRootKeyFromPeer(requester.privateKey, s.responderPublicKey, responseTranscript(otherIds, s), sealed)).to.throw();
  });

  it("a low-order or malformed peer key is refused, not used", () => {
    const { requester, transcript } = exchange();
    expect(() => sealRootKeyForPeer(requester.privateKey, Buffer.alloc(32), transcript, 3, rootKey)).to.throw();
    expect(() => sealRootKeyForPeer(requester.privateKey, Buffer.alloc(31, 1), transcript, 3, rootKey)).to.throw(/32 bytes/);
  });

  it("the request transcript binds both IDs, the nonce and the key", () => {
    const { half } = exchange();
    const base = requestTranscript(half);
    for (const changed of [{ requesterId: "spiffe://spike.ist/x" }, { responderId: "spiffe://spike.ist/x" }, { requesterNonce: handoverNonce() }, { requesterPublicKey: ephemeralKey().publicKey }]) {
      expect(requestTranscript({ ...half, ...changed }).equals(base), JSON.stringify(Object.keys(changed))).to.equal(false);
    }
  });
});
