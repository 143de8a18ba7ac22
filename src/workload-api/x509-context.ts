// What one FetchX509SVID message means to us: the SVID we use (the first one,
// or the one whose SPIFFE ID was asked for), its chain and key, and the trust
// bundle, turned from the wire's concatenated DER into the PEM that Node's TLS
// takes. Nothing here touches the network.

import { X509Certificate } from "node:crypto";
import type { X509SVIDResponse } from "../../gen/spiffe/workload/workload_pb.js";

/** One X.509-SVID as PEM, with its SPIFFE ID and expiry. */
export interface WorkloadSvid {
  readonly spiffeId: string;
  /** Leaf first, then intermediates. */
  readonly certPem: string;
  /** PKCS#8 "PRIVATE KEY". */
  readonly keyPem: string;
  /** The trust domain's authorities. */
  readonly bundlePem: string;
  readonly notAfterMs: number;
}

/** Picks the SVID to use from a response; throws when there is none or the wanted ID is absent. */
export function selectSvid(response: X509SVIDResponse, spiffeId?: string): WorkloadSvid {
  if (response.svids.length === 0) throw new Error("the Workload API returned no X.509-SVID");
  const chosen = spiffeId === undefined ? response.svids[0] : response.svids.find((s) => s.spiffeId === spiffeId);
  if (chosen === undefined) {
    throw new Error(`the Workload API has no SVID for ${spiffeId} (it offers ${response.svids.map((s) => s.spiffeId).join(", ")})`);
  }
  const chain = splitDer(chosen.x509Svid);
  if (chain.length === 0) throw new Error(`the Workload API sent an empty certificate chain for ${chosen.spiffeId}`);
  const authorities = splitDer(chosen.bundle);
  if (authorities.length === 0) throw new Error(`the Workload API sent an empty bundle for ${chosen.spiffeId}`);
  const leaf = new X509Certificate(chain[0]);
  return {
    spiffeId: chosen.spiffeId,
    certPem: chain.map((der) => pem("CERTIFICATE", der)).join(""),
    keyPem: pem("PRIVATE KEY", chosen.x509SvidKey),
    bundlePem: authorities.map((der) => pem("CERTIFICATE", der)).join(""),
    notAfterMs: Date.parse(leaf.validTo),
  };
}

/**
 * Splits concatenated DER SEQUENCEs (the wire form of chains and bundles) by
 * reading each element's length header; a truncated or non-SEQUENCE element is an error.
 */
export function splitDer(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes[at] !== 0x30) throw new Error("malformed DER: expected a SEQUENCE");
    let length = bytes[at + 1];
    let header = 2;
    if (length === undefined) throw new Error("malformed DER: truncated header");
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count === 0 || count > 4) throw new Error("malformed DER: unsupported length");
      length = 0;
      for (let i = 0; i < count; i++) {
        const b = bytes[at + 2 + i];
        if (b === undefined) throw new Error("malformed DER: truncated header");
        length = length * 256 + b;
      }
      header += count;
    }
    const end = at + header + length;
    if (end > bytes.length) throw new Error("malformed DER: truncated element");
    out.push(bytes.subarray(at, end));
    at = end;
  }
  return out;
}

function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
