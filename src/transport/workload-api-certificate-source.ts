// This server's SVID from the SPIFFE Workload API instead of files: every SVID
// the agent sends is checked as a file-based one would be (key matches, our
// trust domain, not expired) and handed to the listeners; a refused update
// keeps the current SVID serving.

import type { Logger } from "../log/logger.js";
import type { WorkloadApiSource } from "../workload-api/workload-api-source.js";
import type { WorkloadSvid } from "../workload-api/x509-context.js";
import { checkMaterial, type TlsMaterial, type TlsMaterialSource } from "./certificate-source.js";

export class WorkloadApiCertificateSource implements TlsMaterialSource {
  private current: TlsMaterial;
  private readonly changeListeners = new Set<(material: TlsMaterial) => void>();
  private readonly unsubscribe: () => void;

  /** Takes the source's current SVID now; throws if it is not a valid identity of the trust domain. */
  constructor(
    private readonly source: WorkloadApiSource,
    private readonly trustDomain: string,
    private readonly logger: Logger,
  ) {
    this.current = this.toMaterial(source.current);
    this.unsubscribe = source.onChange((svid) => this.take(svid));
  }

  get material(): TlsMaterial {
    return this.current;
  }

  onChange(listener: (material: TlsMaterial) => void): void {
    this.changeListeners.add(listener);
  }

  close(): void {
    this.unsubscribe();
    this.source.close();
  }

  private take(svid: WorkloadSvid): void {
    try {
      this.current = this.toMaterial(svid);
    } catch (err) {
      this.logger.warn("Workload API SVID refused; keeping the current certificate", { reason: (err as Error).message });
      return;
    }
    this.logger.info("certificate reloaded", { source: "workload-api", notAfter: new Date(svid.notAfterMs).toISOString() });
    for (const l of this.changeListeners) l(this.current);
  }

  private toMaterial(svid: WorkloadSvid): TlsMaterial {
    const from = `the Workload API's SVID ${svid.spiffeId} (${this.source.socket})`;
    return checkMaterial({ cert: Buffer.from(svid.certPem), key: Buffer.from(svid.keyPem), ca: Buffer.from(svid.bundlePem) }, this.trustDomain, { cert: from, key: from });
  }
}
