#!/usr/bin/env node
// certs-dev/generate.mjs — writes a throwaway development PKI for Nexus.
//
//   node certs-dev/generate.mjs [outDir] [--force]
//   NEXUS_TRUST_DOMAIN=example.org node certs-dev/generate.mjs
//
// Produces, in outDir (default: this folder):
//   ca.pem, ca-key.pem             self-signed CA "Nexus dev CA", URI SAN spiffe://<td>
//   nexus.pem, nexus-key.pem       server/client leaf: spiffe://<td>/spike/nexus, DNS localhost, IP 127.0.0.1
//   pilot.pem, pilot-key.pem       operator leaf: spiffe://<td>/spike/pilot/role/superuser
//   workload.pem, workload-key.pem workload leaf: spiffe://<td>/workload/demo
// Keys are RSA 2048 in PKCS#8 PEM, mode 0600; signatures are SHA-256.
//
// Why node-forge: Node's crypto can generate keys but cannot build or sign
// X.509 certificates, and this script must run with no tools other than Node
// (no openssl CLI). node-forge only does RSA, which is fine for dev certs; the
// tests use @peculiar/x509 (test/support/test-pki.ts) when they need EC keys.
//
// Idempotent: when every file exists, parses, is within its validity period,
// carries the current trust domain and chains to ca.pem, nothing is written
// ("certs-dev: up to date"). Pass --force to regenerate everything.
// These certificates are for local development only. Never deploy them.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import forge from "node-forge";

const { pki } = forge;

const args = process.argv.slice(2);
const force = args.includes("--force");
const outDir = path.resolve(args.find((a) => !a.startsWith("--")) ?? path.dirname(fileURLToPath(import.meta.url)));
const td = process.env.NEXUS_TRUST_DOMAIN || "spike.ist";

const LEAVES = [
  { name: "nexus", uri: `spiffe://${td}/spike/nexus`, dns: ["localhost"], ips: ["127.0.0.1"] },
  { name: "pilot", uri: `spiffe://${td}/spike/pilot/role/superuser` },
  { name: "workload", uri: `spiffe://${td}/workload/demo` },
];
const CA_URI = `spiffe://${td}`;

const file = (name) => path.join(outDir, name);
const ALL_FILES = ["ca", ...LEAVES.map((l) => l.name)].flatMap((n) => [`${n}.pem`, `${n}-key.pem`]);

// Random, positive, non-zero-leading 16-byte serial (a leading 0x00 would be non-minimal DER).
function serial() {
  const bytes = forge.random.getBytesSync(16);
  const first = (bytes.charCodeAt(0) & 0x7f) | 0x40;
  return forge.util.bytesToHex(String.fromCharCode(first) + bytes.slice(1));
}

function addYears(date, years) {
  const d = new Date(date);
  d.setFullYear(d.getFullYear() + years);
  return d;
}

function sanList({ uri, dns = [], ips = [] }) {
  return [
    { type: 6, value: uri }, // URI
    ...dns.map((value) => ({ type: 2, value })), // DNS
    ...ips.map((ip) => ({ type: 7, ip })), // IP
  ];
}

function newCert(publicKey, cn, notBefore, notAfter) {
  const cert = pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serial();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  cert.setSubject([{ name: "commonName", value: cn }]);
  return cert;
}

function makeCa(now) {
  const keys = pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
  const cert = newCert(keys.publicKey, "Nexus dev CA", new Date(now.getTime() - 5 * 60_000), addYears(now, 10));
  cert.setIssuer(cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { name: "subjectAltName", altNames: sanList({ uri: CA_URI }) },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { cert, key: keys.privateKey };
}

function makeLeaf(ca, leaf, now) {
  const keys = pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
  const cert = newCert(keys.publicKey, leaf.name, new Date(now.getTime() - 5 * 60_000), addYears(now, 1));
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: true, clientAuth: true },
    { name: "subjectAltName", altNames: sanList(leaf) },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forge.md.sha256.create());
  return { cert, key: keys.privateKey };
}

function keyToPem(privateKey) {
  return pki.privateKeyInfoToPem(pki.wrapRsaPrivateKey(pki.privateKeyToAsn1(privateKey)));
}

function write(name, contents, mode) {
  const p = file(name);
  fs.writeFileSync(p, contents, { mode });
  fs.chmodSync(p, mode); // writeFileSync's mode only applies when the file is created
  console.log(`certs-dev: wrote ${p}`);
}

function uris(cert) {
  const san = cert.getExtension("subjectAltName");
  return san ? san.altNames.filter((n) => n.type === 6).map((n) => n.value) : [];
}

// True when the existing files can be reused as they are.
function upToDate(now) {
  if (!ALL_FILES.every((f) => fs.existsSync(file(f)))) return false;
  try {
    const inValidity = (c) => c.validity.notBefore <= now && now < c.validity.notAfter;
    const ca = pki.certificateFromPem(fs.readFileSync(file("ca.pem"), "utf8"));
    pki.privateKeyFromPem(fs.readFileSync(file("ca-key.pem"), "utf8"));
    if (!inValidity(ca) || !ca.verify(ca) || !uris(ca).includes(CA_URI)) return false;
    return LEAVES.every((leaf) => {
      const cert = pki.certificateFromPem(fs.readFileSync(file(`${leaf.name}.pem`), "utf8"));
      pki.privateKeyFromPem(fs.readFileSync(file(`${leaf.name}-key.pem`), "utf8"));
      return inValidity(cert) && ca.verify(cert) && uris(cert).includes(leaf.uri);
    });
  } catch {
    return false;
  }
}

const now = new Date();
if (!force && upToDate(now)) {
  console.log("certs-dev: up to date");
} else {
  fs.mkdirSync(outDir, { recursive: true });
  const ca = makeCa(now);
  write("ca.pem", pki.certificateToPem(ca.cert), 0o644);
  write("ca-key.pem", keyToPem(ca.key), 0o600);
  for (const leaf of LEAVES) {
    const { cert, key } = makeLeaf(ca, leaf, now);
    write(`${leaf.name}.pem`, pki.certificateToPem(cert), 0o644);
    write(`${leaf.name}-key.pem`, keyToPem(key), 0o600);
  }
}
