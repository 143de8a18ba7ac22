// X.509 trust bundles, one per trust domain. Keyed by trust domain from the start
// so federation (more trust domains, each with its own authorities) is a matter
// of configuration, not of changing callers.

import { X509Certificate } from "node:crypto";
import { NexusError } from "../errors/nexus-error.js";
import { parseTrustDomain } from "./spiffe-id.js";

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

export class TrustBundleSet {
  // Only the certificate blocks are kept, so comments or keys in a bundle file never reach TLS.
  private readonly bundles: ReadonlyMap<string, string>;

  constructor(bundles: ReadonlyMap<string, string>) {
    if (bundles.size === 0) {
      throw new NexusError("invalid_argument", "at least one trust bundle is required", { reason: "INVALID_TRUST_BUNDLE" });
    }
    const normalised = new Map<string, string>();
    for (const [trustDomain, pem] of bundles) {
      normalised.set(parseTrustDomain(trustDomain), certificateBlocks(trustDomain, pem).join("\n") + "\n");
    }
    this.bundles = normalised;
  }

  static single(trustDomain: string, pem: string): TrustBundleSet {
    return new TrustBundleSet(new Map([[trustDomain, pem]]));
  }

  /** The PEM authorities of one trust domain, or undefined if it is not trusted. */
  authoritiesFor(trustDomain: string): string | undefined {
    return this.bundles.get(trustDomain);
  }

  get trustDomains(): string[] {
    return [...this.bundles.keys()];
  }

  /** Every authority of every trust domain, as the TLS `ca` option wants them. */
  allAuthoritiesPem(): string {
    return [...this.bundles.values()].join("");
  }
}

function certificateBlocks(trustDomain: string, pem: string): string[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw invalidBundle(`trust bundle for ${trustDomain} contains no PEM certificate`);
  blocks.forEach((block, index) => {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw invalidBundle(`trust bundle for ${trustDomain} has an unparsable certificate (#${index + 1})`, err);
    }
  });
  return blocks;
}

function invalidBundle(message: string, cause?: unknown): NexusError {
  return new NexusError("invalid_argument", message, { reason: "INVALID_TRUST_BUNDLE", cause });
}
