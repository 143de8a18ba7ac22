// Signatures made with this server's own X.509-SVID key, and their
// verification: the signer's chain must lead to an authority of the trust
// bundle, every certificate on the way must be valid at the signed moment, and
// the leaf must be an SVID of the expected SPIFFE ID. The audit log uses this
// for events recorded while sealed, when the integrity key is not in memory
// (ADR 0003): a database writer holds neither the SVID key nor the CA's.
// RSA and EC keys sign with SHA-256 (PKCS#1 v1.5 / ECDSA), Ed25519 on its own.

import { createHash, createPrivateKey, sign, verify, X509Certificate, type KeyObject } from "node:crypto";
import type { TrustBundleSet } from "./trust-bundle.js";
import type { SpiffeId } from "./spiffe-id.js";
import { inspectSvid } from "./x509-svid.js";

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
/** Leaf, intermediates, root: more than this many links is refused rather than searched. */
const MAX_CHAIN_LENGTH = 8;

export interface SvidSignature {
  readonly signature: Buffer;
  /** SHA-256 of the leaf certificate's DER: how a stored signature names its signer. */
  readonly certificateSha256: Buffer;
  /** The leaf, then any intermediates, as PEM. */
  readonly certificateChainPem: string;
}

/** The SVID files' current content (the certificate file may carry intermediates after the leaf). */
export interface SvidMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** Signs with whatever SVID `material()` returns now, so a rotated SVID signs from the next call on. */
export class SvidSigner {
  private cached: { material: SvidMaterial; key: KeyObject; sha256: Buffer; chainPem: string } | undefined;

  constructor(private readonly material: () => SvidMaterial) {}

  sign(data: Buffer): SvidSignature {
    const m = this.material();
    if (this.cached?.material !== m) {
      const chainPem = certificateBlocks(m.cert.toString("utf8")).join("\n") + "\n";
      const leaf = new X509Certificate(certificateBlocks(chainPem)[0]);
      this.cached = { material: m, key: createPrivateKey(m.key), sha256: sha256(leaf.raw), chainPem };
    }
    const { key, sha256: certificateSha256, chainPem } = this.cached;
    return { signature: sign(digestFor(key), data, key), certificateSha256, certificateChainPem: chainPem };
  }
}

/** A stored signer chain, parsed once; answers whether it vouches for a signature. */
export class SvidSignerChain {
  private readonly certificates: X509Certificate[];
  /** From the leaf to the bundle's authority; undefined unless the chain is this server's and anchored. */
  private readonly path: X509Certificate[] | undefined;

  /**
   * @param leafSha256 the SHA-256 a stored signature names; the chain's leaf must hash to it.
   * @param expectedId the SPIFFE ID the leaf must carry (this server's own).
   */
  constructor(leafSha256: Uint8Array, chainPem: string, bundle: TrustBundleSet, expectedId: string) {
    this.certificates = parseChain(chainPem);
    const leaf = this.certificates[0];
    let id: SpiffeId | undefined;
    try {
      id = leaf === undefined ? undefined : inspectSvid(leaf.raw).id;
    } catch {
      id = undefined;
    }
    const leafMatches = leaf !== undefined && Buffer.from(leafSha256).equals(sha256(leaf.raw));
    const ours = leafMatches && id !== undefined && id.toString() === expectedId;
    this.path = ours && id !== undefined ? pathToAuthority(this.certificates, bundle, id.trustDomain) : undefined;
  }

  /** Whether `signature` over `data` was made by this chain's key while every certificate of it was valid at `at`. */
  verifies(data: Buffer, signature: Uint8Array | null, at: Date): boolean {
    if (this.path === undefined || signature === null || signature.length === 0) return false;
    if (!this.path.every((c) => validAt(c, at))) return false;
    const key = this.certificates[0].publicKey;
    try {
      return verify(digestFor(key), data, key, signature);
    } catch {
      return false;
    }
  }
}

/** Longest signer chain text accepted from a peer (a leaf and a few intermediates are a few KiB). */
const MAX_CHAIN_PEM_LENGTH = 64 * 1024;

/**
 * Whether `signature` over `data` was made, now, by the key of an SVID of
 * `expectedId` whose chain (`chainPem`, leaf first, sent by a peer) leads to
 * an authority of `bundle` (peer unseal: each replica checks the other's).
 */
export function verifySvidSignature(chainPem: string, bundle: TrustBundleSet, expectedId: string, data: Buffer, signature: Uint8Array, at = new Date()): boolean {
  if (chainPem.length > MAX_CHAIN_PEM_LENGTH) return false;
  const leaf = parseChain(chainPem)[0];
  if (leaf === undefined) return false;
  return new SvidSignerChain(sha256(leaf.raw), chainPem, bundle, expectedId).verifies(data, signature, at);
}

/** The certificates from the leaf, through the chain's intermediates, to an authority of the trust domain's bundle. */
function pathToAuthority(chain: readonly X509Certificate[], bundle: TrustBundleSet, trustDomain: string): X509Certificate[] | undefined {
  const pem = bundle.authoritiesFor(trustDomain);
  if (pem === undefined) return undefined;
  const roots = parseChain(pem);
  const intermediates = chain.slice(1);
  const path = [chain[0]];
  for (let depth = 0; depth < MAX_CHAIN_LENGTH; depth++) {
    const current = path[path.length - 1];
    const root = roots.find((r) => issued(r, current));
    if (root !== undefined) return [...path, root];
    const next = intermediates.find((i) => !path.includes(i) && issued(i, current));
    if (next === undefined) return undefined;
    path.push(next);
  }
  return undefined;
}

function issued(issuer: X509Certificate, subject: X509Certificate): boolean {
  if (!issuer.ca || !subject.checkIssued(issuer)) return false;
  try {
    return subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function validAt(c: X509Certificate, at: Date): boolean {
  const t = at.getTime();
  return new Date(c.validFrom).getTime() <= t && t <= new Date(c.validTo).getTime();
}

function digestFor(key: KeyObject): string | null {
  return key.asymmetricKeyType === "ed25519" || key.asymmetricKeyType === "ed448" ? null : "sha256";
}

function parseChain(pem: string): X509Certificate[] {
  try {
    return certificateBlocks(pem).map((b) => new X509Certificate(b));
  } catch {
    return [];
  }
}

function certificateBlocks(pem: string): string[] {
  return pem.match(PEM_CERTIFICATE) ?? [];
}

function sha256(data: Buffer): Buffer {
  return createHash("sha256").update(data).digest();
}
