// The leaf certificate of an X.509-SVID (SPIFFE X509-SVID spec, sections 4 and
// 5): checks that a certificate may act as a workload identity and extracts its
// SPIFFE ID. Chain verification is not done here; the TLS handshake has already
// done it against the trust bundle. Everything is read from the parsed ASN.1
// structure, never from a printed SAN string, so "URI:" inside a DNS name or an
// extra URI cannot smuggle in an identity. @peculiar/asn1-x509 is used because it
// parses RSA and EC certificates alike.

import { AsnConvert } from "@peculiar/asn1-schema";
import {
  BasicConstraints,
  Certificate,
  Extension,
  KeyUsage,
  KeyUsageFlags,
  SubjectAlternativeName,
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_subjectAltName,
} from "@peculiar/asn1-x509";
import { NexusError } from "../errors/nexus-error.js";
import { parseSpiffeId, type SpiffeId } from "./spiffe-id.js";

export interface SvidInfo {
  id: SpiffeId;
  notAfterMs: number;
}

/** Validates an X.509-SVID leaf and returns its SPIFFE ID and expiry. */
export function inspectSvid(leafDer: Uint8Array): SvidInfo {
  const cert = parse(leafDer, Certificate, "certificate");
  const extensions = cert.tbsCertificate.extensions ?? [];

  const constraints = decodeExtension(extensions, id_ce_basicConstraints, BasicConstraints, "basicConstraints");
  if (constraints?.cA === true) throw invalidSvid("X.509-SVID leaf must not be a CA (basicConstraints cA is true)");

  const keyUsage = decodeExtension(extensions, id_ce_keyUsage, KeyUsage, "keyUsage");
  if (keyUsage === undefined) throw invalidSvid("X.509-SVID leaf must have a keyUsage extension");
  const usages = keyUsage.toNumber();
  if (!(usages & KeyUsageFlags.digitalSignature)) {
    throw invalidSvid("X.509-SVID leaf keyUsage must include digitalSignature");
  }
  if (usages & KeyUsageFlags.keyCertSign) throw invalidSvid("X.509-SVID leaf keyUsage must not include keyCertSign");
  if (usages & KeyUsageFlags.cRLSign) throw invalidSvid("X.509-SVID leaf keyUsage must not include cRLSign");

  const san = decodeExtension(extensions, id_ce_subjectAltName, SubjectAlternativeName, "subjectAltName");
  const uris = (san ?? []).flatMap((name) =>
    name.uniformResourceIdentifier === undefined ? [] : [name.uniformResourceIdentifier],
  );
  if (uris.length !== 1) throw invalidSvid(`X.509-SVID must have exactly one URI SAN (found ${uris.length})`);

  return { id: spiffeIdFromUriSan(uris[0]), notAfterMs: cert.tbsCertificate.validity.notAfter.getTime().getTime() };
}

/** Validates an X.509-SVID leaf and returns its SPIFFE ID. */
export function spiffeIdFromSvid(leafDer: Uint8Array): SpiffeId {
  return inspectSvid(leafDer).id;
}

function spiffeIdFromUriSan(uri: string): SpiffeId {
  try {
    return parseSpiffeId(uri);
  } catch (err) {
    // Keep one reason for "this certificate is not an SVID"; the rule stays in the message.
    const rule = err instanceof NexusError ? err.message : "is malformed";
    throw invalidSvid(`X.509-SVID URI SAN is not a valid SPIFFE ID: ${rule}`, err);
  }
}

function decodeExtension<T>(
  extensions: readonly Extension[],
  oid: string,
  type: new () => T,
  name: string,
): T | undefined {
  const matches = extensions.filter((ext) => ext.extnID === oid);
  // RFC 5280 4.2: an extension appears at most once; two would let parsers disagree.
  if (matches.length > 1) throw invalidSvid(`certificate has more than one ${name} extension`);
  return matches.length === 0 ? undefined : parse(matches[0].extnValue, type, `${name} extension`);
}

function parse<T>(der: ArrayBufferView, type: new () => T, what: string): T {
  try {
    return AsnConvert.parse(der, type);
  } catch (err) {
    throw invalidSvid(`X.509-SVID ${what} is not valid DER`, err);
  }
}

function invalidSvid(message: string, cause?: unknown): NexusError {
  return new NexusError("unauthenticated", message, { reason: "INVALID_SVID", cause });
}
