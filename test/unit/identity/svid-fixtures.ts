// Certificates for the identity specs, minted in-process with @peculiar/x509 so
// every bad-SVID case is one option away from a good one.

import { webcrypto } from "node:crypto";
// @peculiar/x509 uses tsyringe, which needs the Reflect metadata polyfill loaded first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

export const KeyUsageFlags = x509.KeyUsageFlags;

type KeyPair = webcrypto.CryptoKeyPair;

export const RSA: webcrypto.RsaHashedKeyGenParams = {
  name: "RSASSA-PKCS1-v1_5",
  modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]),
  hash: "SHA-256",
};
export const EC: webcrypto.EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };

export function generateKeys(algorithm: webcrypto.RsaHashedKeyGenParams | webcrypto.EcKeyGenParams): Promise<KeyPair> {
  return webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
}

export interface CertOptions {
  uris?: string[];
  dnsNames?: string[];
  /** basicConstraints cA; undefined leaves the extension out. */
  ca?: boolean;
  /** keyUsage flags; null leaves the extension out. */
  keyUsage?: x509.KeyUsageFlags | null;
  notBefore?: Date;
  notAfter?: Date;
}

/** A self-signed certificate; chain building is TLS's job, so self-signed leaves suffice. */
export async function makeCert(keys: KeyPair, opts: CertOptions = {}): Promise<x509.X509Certificate> {
  const extensions: x509.Extension[] = [];
  if (opts.ca !== undefined) extensions.push(new x509.BasicConstraintsExtension(opts.ca, undefined, true));
  const keyUsage = opts.keyUsage === undefined ? x509.KeyUsageFlags.digitalSignature : opts.keyUsage;
  if (keyUsage !== null) extensions.push(new x509.KeyUsagesExtension(keyUsage, true));
  const names = [
    ...(opts.uris ?? ["spiffe://example.org/workload"]).map((value) => ({ type: "url" as const, value })),
    ...(opts.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
  ];
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
  const signingAlgorithm =
    keys.privateKey.algorithm.name === "ECDSA"
      ? { name: "ECDSA", hash: "SHA-256" }
      : { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  return x509.X509CertificateGenerator.createSelfSigned(
    {
      name: "CN=nexus-test",
      keys,
      signingAlgorithm,
      extensions,
      notBefore: opts.notBefore ?? new Date(Date.now() - 60_000),
      notAfter: opts.notAfter ?? new Date(Date.now() + 3_600_000),
    },
    webcrypto,
  );
}

/** DER bytes of makeCert, as TLS hands them over. */
export async function makeLeafDer(keys: KeyPair, opts: CertOptions = {}): Promise<Uint8Array> {
  return new Uint8Array((await makeCert(keys, opts)).rawData);
}
