// Whether a stored audit event is authentic: its MAC under the integrity key
// verifies, or — recorded while sealed — its signature by this server's
// X.509-SVID does (a chain to the trust bundle, the server's own SPIFFE ID,
// valid at the event's time). A row that neither authenticates is a database
// writer's work, whatever it claims. Build one after the last await of a job
// and drop it before the next: it holds the integrity key, which a Seal
// zeroes in place (never hold key buffers across an await).

import type { TrustBundleSet } from "../identity/trust-bundle.js";
import { SvidSignerChain } from "../identity/svid-signature.js";
import type { AuditSignerRecord } from "../store/audit-store.js";
import { auditEventVerifies, auditSignatureInput, type AuditFields, type AuditRow } from "./audit-event.js";

/** What signatures are checked against: this server's SPIFFE ID and the trust bundle, as of now. */
export interface SignatureTrust {
  readonly serverId: string;
  readonly bundle: TrustBundleSet;
}

export type Authentication = "mac" | "signature" | undefined;

export class EventAuthenticator {
  private readonly chainPem = new Map<string, string>();
  private readonly chains = new Map<string, SvidSignerChain>();

  private readonly keys: readonly Buffer[];

  /**
   * @param key the integrity keys held (the active one and those a rotation
   * retired: events keep the key they were MAC'd with), or undefined while
   * sealed (then only signatures authenticate).
   */
  constructor(
    key: Buffer | readonly Buffer[] | undefined,
    signers: readonly AuditSignerRecord[],
    private readonly trust: SignatureTrust,
  ) {
    for (const s of signers) this.chainPem.set(s.certificateSha256.toString("hex"), s.certificateChainPem);
    this.keys = key === undefined ? [] : Buffer.isBuffer(key) ? [key] : (key as readonly Buffer[]);
  }

  /** How `row` authenticates with `fields` (default: its own), if at all. */
  check(row: AuditRow, fields: AuditFields = row): Authentication {
    if (row.mac !== null && this.keys.some((k) => auditEventVerifies(k, fields, row.mac!))) return "mac";
    if (row.signature !== null && row.signer !== null && this.chain(row.signer)?.verifies(auditSignatureInput(fields), row.signature, fields.time)) {
      return "signature";
    }
    return undefined;
  }

  private chain(sha256: Buffer): SvidSignerChain | undefined {
    const id = sha256.toString("hex");
    let chain = this.chains.get(id);
    const pem = this.chainPem.get(id);
    if (chain === undefined && pem !== undefined) {
      chain = new SvidSignerChain(sha256, pem, this.trust.bundle, this.trust.serverId);
      this.chains.set(id, chain);
    }
    return chain;
  }
}
