// The cryptography of peer unseal (ADR 0012), without the transport: fresh
// nonces and ephemeral X25519 keys, the two transcripts each side signs with
// its SVID key, and the root key sealed (AES-256-GCM) under a key derived with
// HKDF-SHA256 from the X25519 shared secret, salted with the transcript's hash
// and with the whole transcript as associated data. A recorded request replayed
// gets an answer sealed to the requester's ephemeral key, which only the
// original requester ever held; the response names the requester's nonce, so
// an old response is refused too. Key buffers live only inside one call.

import { createHash, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from "node:crypto";
import { associatedData, open, seal } from "./aead.js";

export const HANDOVER_NONCE_BYTES = 32;
export const X25519_PUBLIC_KEY_BYTES = 32;

const REQUEST_LABEL = "nexus/v1/peer-unseal/request";
const RESPONSE_LABEL = "nexus/v1/peer-unseal/response";
const KEY_INFO = "nexus/v1/peer-unseal/key";

export interface EphemeralKey {
  /** Raw 32-byte X25519 public key. */
  readonly publicKey: Buffer;
  readonly privateKey: KeyObject;
}

export function ephemeralKey(): EphemeralKey {
  const { publicKey, privateKey } = generateKeyPairSync("x25519");
  const x = publicKey.export({ format: "jwk" }).x;
  if (x === undefined) throw new Error("X25519 public key without x");
  return { publicKey: Buffer.from(x, "base64url"), privateKey };
}

export function handoverNonce(): Buffer {
  return randomBytes(HANDOVER_NONCE_BYTES);
}

export interface RequestHalf {
  readonly requesterId: string;
  readonly responderId: string;
  readonly requesterNonce: Uint8Array;
  readonly requesterPublicKey: Uint8Array;
}

export interface ResponseHalf {
  readonly responderNonce: Uint8Array;
  readonly responderPublicKey: Uint8Array;
  readonly rootKeyId: number;
}

/** What the requester signs: both SPIFFE IDs, its nonce and its ephemeral key. */
export function requestTranscript(r: RequestHalf): Buffer {
  return associatedData(REQUEST_LABEL, r.requesterId, r.responderId, r.requesterNonce, r.requesterPublicKey);
}

/** What the responder signs, and the AES-GCM associated data: the request half, then its own nonce, key and the root key id. */
export function responseTranscript(r: RequestHalf, s: ResponseHalf): Buffer {
  return associatedData(RESPONSE_LABEL, r.requesterId, r.responderId, r.requesterNonce, r.requesterPublicKey, s.responderNonce, s.responderPublicKey, s.rootKeyId);
}

/** Responder: `rootKey` sealed to the requester's ephemeral key; `rootKey` is only read. */
export function sealRootKeyForPeer(own: KeyObject, peerPublicKey: Uint8Array, transcript: Buffer, rootKeyId: number, rootKey: Buffer): Buffer {
  const key = handoverKey(own, peerPublicKey, transcript);
  try {
    return seal(key, rootKeyId, rootKey, transcript);
  } finally {
    key.fill(0);
  }
}

/** Requester: the root key the responder sealed; throws if anything in the transcript or the ciphertext differs. The caller zeroes it. */
export function openRootKeyFromPeer(own: KeyObject, peerPublicKey: Uint8Array, transcript: Buffer, sealed: Uint8Array): Buffer {
  const key = handoverKey(own, peerPublicKey, transcript);
  try {
    return open(key, sealed, transcript);
  } finally {
    key.fill(0);
  }
}

function handoverKey(own: KeyObject, peerPublicKey: Uint8Array, transcript: Buffer): Buffer {
  if (peerPublicKey.length !== X25519_PUBLIC_KEY_BYTES) throw new Error("the peer's X25519 key is not 32 bytes");
  const peer = createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(peerPublicKey).toString("base64url") }, format: "jwk" });
  const shared = diffieHellman({ privateKey: own, publicKey: peer });
  try {
    // A low-order point gives an all-zero secret anyone can compute.
    if (shared.every((b) => b === 0)) throw new Error("the peer's X25519 key is a low-order point");
    const salt = createHash("sha256").update(transcript).digest();
    return Buffer.from(hkdfSync("sha256", shared, salt, KEY_INFO, 32));
  } finally {
    shared.fill(0);
  }
}
