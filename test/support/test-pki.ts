// test/support/test-pki.ts — an in-memory certificate factory for tests.
//
// Builds throwaway CAs, intermediates and leaves (RSA 2048 or EC P-256, SHA-256
// signatures) with @peculiar/x509 over Node's WebCrypto, so tests can make
// exactly the certificate they need: a given SPIFFE ID, no URI SAN, cA true on a
// leaf, an expired leaf, a leaf from a foreign authority, and so on.
//
//   const ca = await createAuthority({ trustDomain: "spike.ist" });
//   const leaf = await ca.issue({ uris: ["spiffe://spike.ist/workload/a"] });
//   tls.connect({ ca: ca.certPem, cert: leaf.certPem, key: leaf.keyPem, ... });
//
// Certificates are PEM ("CERTIFICATE", newline-terminated, so PEMs can be
// concatenated into a chain) plus DER; private keys are PKCS#8 PEM ("PRIVATE KEY").

import { webcrypto } from "node:crypto";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
// @peculiar/x509 uses tsyringe, which needs the Reflect metadata polyfill loaded first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

export { x509 };
x509.cryptoProvider.set(webcrypto);

type CryptoKeyPair = webcrypto.CryptoKeyPair;

export type KeyAlg = "rsa" | "ec";

export interface IssuedCert {
  certPem: string;
  keyPem: string;
  der: Uint8Array;
}

export interface Authority extends IssuedCert {
  /** Issues a certificate signed by this authority's key. */
  issue(opts: LeafOptions): Promise<IssuedCert>;
  /** Creates a CA (cA true, keyCertSign) signed by this authority; its `issue` signs with the intermediate's key. */
  intermediate(opts?: IntermediateOptions): Promise<Authority>;
}

export interface LeafOptions {
  /** URI SANs, e.g. ["spiffe://spike.ist/workload/a"]; [] for none. Default: ["spiffe://<td>/workload/test"]. */
  uris?: string[];
  dns?: string[];
  ips?: string[];
  /** Default "ec" (P-256). */
  alg?: KeyAlg;
  /** basicConstraints cA (default false). */
  ca?: boolean;
  /** Default ["digitalSignature","keyEncipherment"] for RSA, ["digitalSignature"] for EC. */
  keyUsage?: Array<"digitalSignature" | "keyEncipherment" | "keyCertSign" | "cRLSign">;
  /** Default now - 5 minutes .. now + 1 day. */
  notBefore?: Date;
  notAfter?: Date;
}

export interface IntermediateOptions {
  alg?: KeyAlg;
  name?: string;
  /** Default: this authority's validity. */
  notBefore?: Date;
  notAfter?: Date;
  /**
   * basicConstraints cA (default true). False makes a certificate that only
   * poses as an issuer, e.g. a workload SVID whose key signs another certificate.
   */
  ca?: boolean;
  /** URI SANs (default ["spiffe://<td>"]). */
  uris?: string[];
}

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

const KEY_GEN = {
  rsa: { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
  ec: { name: "ECDSA", namedCurve: "P-256" },
} as const;

const SIGNING = {
  rsa: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
  ec: { name: "ECDSA", hash: "SHA-256" },
} as const;

async function generateKeys(alg: KeyAlg): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(KEY_GEN[alg], true, ["sign", "verify"])) as CryptoKeyPair;
}

// Random, positive 16-byte serial with a non-zero first byte.
function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] & 0x7f) | 0x40;
  return Buffer.from(bytes).toString("hex");
}

async function toIssued(cert: x509.X509Certificate, keys: CryptoKeyPair): Promise<IssuedCert> {
  const pkcs8 = await webcrypto.subtle.exportKey("pkcs8", keys.privateKey);
  return {
    certPem: `${cert.toString("pem")}\n`,
    keyPem: `${x509.PemConverter.encode(pkcs8, "PRIVATE KEY")}\n`,
    der: new Uint8Array(cert.rawData),
  };
}

function sanExtension(uris: string[], dns: string[], ips: string[]): x509.Extension[] {
  const names: x509.JsonGeneralName[] = [
    ...uris.map((value) => ({ type: "url" as const, value })),
    ...dns.map((value) => ({ type: "dns" as const, value })),
    ...ips.map((value) => ({ type: "ip" as const, value })),
  ];
  // An empty SubjectAltName extension is invalid DER for GeneralNames: omit it instead.
  return names.length ? [new x509.SubjectAlternativeNameExtension(names)] : [];
}

function keyUsageFlags(usages: NonNullable<LeafOptions["keyUsage"]>): x509.KeyUsageFlags {
  return usages.reduce<number>((flags, u) => flags | x509.KeyUsageFlags[u], 0);
}

class TestAuthority implements Authority {
  readonly certPem: string;
  readonly keyPem: string;
  readonly der: Uint8Array;

  constructor(
    private readonly cert: x509.X509Certificate,
    private readonly keys: CryptoKeyPair,
    private readonly alg: KeyAlg,
    private readonly trustDomain: string,
    issued: IssuedCert,
  ) {
    ({ certPem: this.certPem, keyPem: this.keyPem, der: this.der } = issued);
  }

  async issue(opts: LeafOptions = {}): Promise<IssuedCert> {
    const alg = opts.alg ?? "ec";
    const keys = await generateKeys(alg);
    const now = Date.now();
    const usages = opts.keyUsage ?? (alg === "rsa" ? ["digitalSignature", "keyEncipherment"] : ["digitalSignature"]);
    const uris = opts.uris ?? [`spiffe://${this.trustDomain}/workload/test`];
    const cert = await this.sign(keys, "CN=test leaf", opts.notBefore ?? new Date(now - 5 * MINUTE), opts.notAfter ?? new Date(now + DAY), [
      new x509.BasicConstraintsExtension(opts.ca ?? false, undefined, true),
      new x509.KeyUsagesExtension(keyUsageFlags(usages), true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      ...sanExtension(uris, opts.dns ?? [], opts.ips ?? []),
    ]);
    return toIssued(cert, keys);
  }

  async intermediate(opts: IntermediateOptions = {}): Promise<Authority> {
    const alg = opts.alg ?? "ec";
    const keys = await generateKeys(alg);
    const name = opts.name ?? "Nexus test intermediate CA";
    // keyCertSign even when not a CA (OpenSSL's issuer check wants it), so only cA tells a poser apart.
    const poser = opts.ca === false ? x509.KeyUsageFlags.digitalSignature : 0;
    const cert = await this.sign(keys, `CN=${name}`, opts.notBefore ?? this.cert.notBefore, opts.notAfter ?? this.cert.notAfter, [
      new x509.BasicConstraintsExtension(opts.ca ?? true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | poser, true),
      ...sanExtension(opts.uris ?? [`spiffe://${this.trustDomain}`], [], []),
    ]);
    return new TestAuthority(cert, keys, alg, this.trustDomain, await toIssued(cert, keys));
  }

  // Signs a certificate for `keys` with this authority's key, adding the key identifiers.
  private async sign(
    keys: CryptoKeyPair,
    subject: string,
    notBefore: Date,
    notAfter: Date,
    extensions: x509.Extension[],
  ): Promise<x509.X509Certificate> {
    return x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject,
      issuer: this.cert.subjectName,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: this.keys.privateKey,
      signingAlgorithm: SIGNING[this.alg],
      extensions: [
        ...extensions,
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(this.keys.publicKey),
      ],
    });
  }
}

/** Creates a self-signed root CA (cA true, keyCertSign+cRLSign, URI SAN spiffe://<trustDomain>). */
export async function createAuthority(
  opts: { alg?: KeyAlg; trustDomain?: string; name?: string } = {},
): Promise<Authority> {
  const alg = opts.alg ?? "ec";
  const trustDomain = opts.trustDomain ?? "spike.ist";
  const keys = await generateKeys(alg);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=${opts.name ?? "Nexus test CA"}`,
    notBefore: new Date(now - DAY),
    notAfter: new Date(now + 3650 * DAY),
    keys,
    signingAlgorithm: SIGNING[alg],
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      ...sanExtension([`spiffe://${trustDomain}`], [], []),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return new TestAuthority(cert, keys, alg, trustDomain, await toIssued(cert, keys));
}

/** Writes `files` (name relative to `dir` -> contents) under `dir`; private keys get mode 0600, others 0644. */
export async function writePkiFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [name, contents] of Object.entries(files)) {
    const file = path.join(dir, name);
    const mode = contents.includes("PRIVATE KEY-----") ? 0o600 : 0o644;
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, contents, { mode });
    await chmod(file, mode); // writeFile's mode only applies when it creates the file
  }
}
