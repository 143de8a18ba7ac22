// Who is calling: turns the client certificate the TLS layer accepted into a
// SPIFFE ID from a trusted trust domain. The handshake has already verified the
// chain against the trust bundle; this adds the SVID rules (x509-svid.ts) and the
// trust-domain check. Each certificate is judged once and the verdict cached,
// because a client reuses one certificate for many calls and connections.

import { createHash } from "node:crypto";
import { NexusError } from "../errors/nexus-error.js";
import { parseTrustDomain, type SpiffeId } from "./spiffe-id.js";
import { inspectSvid, type SvidInfo } from "./x509-svid.js";

export interface PeerAuthenticatorOptions {
  trustDomains: readonly string[];
  /** Certificates whose verdict is remembered; default 1024. */
  cacheSize?: number;
  now?: () => number;
}

export interface PeerCertificate {
  /** DER of the leaf; empty when the client sent no certificate. */
  raw: Uint8Array;
  /** Node's "AB:CD:..." SHA-256 fingerprint, when the TLS layer already has it. */
  fingerprint256?: string;
}

type Verdict = { ok: true; svid: SvidInfo } | { ok: false; error: NexusError };

export class PeerAuthenticator {
  private readonly trustDomains: ReadonlySet<string>;
  private readonly cacheSize: number;
  private readonly now: () => number;
  // Insertion order is recency order: a hit is re-inserted, the oldest key is evicted.
  private readonly verdicts = new Map<string, Verdict>();

  constructor(opts: PeerAuthenticatorOptions) {
    this.trustDomains = new Set(opts.trustDomains.map(parseTrustDomain));
    this.cacheSize = opts.cacheSize ?? 1024;
    if (!Number.isInteger(this.cacheSize) || this.cacheSize < 1) {
      throw NexusError.invalidArgument("cacheSize", "must be a positive integer");
    }
    this.now = opts.now ?? Date.now;
  }

  /** The caller's SPIFFE ID, or UNAUTHENTICATED with a reason saying why not. */
  authenticate(peer: PeerCertificate): SpiffeId {
    return this.authenticateSvid(peer).id;
  }

  /** authenticate(), with the SVID's expiry: a server stream ends when its caller's SVID does. */
  authenticateSvid(peer: PeerCertificate): SvidInfo {
    if (peer.raw === undefined || peer.raw.length === 0) {
      throw new NexusError("unauthenticated", "a client certificate (X.509-SVID) is required", {
        reason: "NO_CLIENT_CERTIFICATE",
      });
    }
    const verdict = this.verdictFor(peer);
    if (!verdict.ok) throw verdict.error;
    // A cached verdict outlives the handshake that produced it, so expiry is re-checked every time.
    if (this.now() >= verdict.svid.notAfterMs) {
      throw new NexusError("unauthenticated", `the X.509-SVID of ${verdict.svid.id} has expired`, {
        reason: "SVID_EXPIRED",
      });
    }
    return verdict.svid;
  }

  private verdictFor(peer: PeerCertificate): Verdict {
    // The fingerprint comes from the same TLS socket as raw, so it identifies these bytes.
    const key = (peer.fingerprint256 ?? createHash("sha256").update(peer.raw).digest("hex"))
      .replaceAll(":", "")
      .toLowerCase();
    const cached = this.verdicts.get(key);
    if (cached !== undefined) {
      this.verdicts.delete(key);
      this.verdicts.set(key, cached);
      return cached;
    }
    const verdict = this.judge(peer.raw);
    this.verdicts.set(key, verdict);
    if (this.verdicts.size > this.cacheSize) this.verdicts.delete(this.verdicts.keys().next().value as string);
    return verdict;
  }

  private judge(raw: Uint8Array): Verdict {
    try {
      const svid = inspectSvid(raw);
      if (!this.trustDomains.has(svid.id.trustDomain)) {
        throw new NexusError("unauthenticated", `SPIFFE ID ${svid.id} is not in a trust domain this server trusts`, {
          reason: "FOREIGN_TRUST_DOMAIN",
        });
      }
      return { ok: true, svid };
    } catch (err) {
      if (err instanceof NexusError) return { ok: false, error: err };
      throw err;
    }
  }
}
