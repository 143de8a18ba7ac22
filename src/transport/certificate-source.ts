// This server's X.509-SVID, its key and the trust bundle, read from files and
// reloaded when they change. spiffe-helper writes svid.pem, svid_key.pem and
// svid_bundle.pem one after another, so changes are debounced and a new pair is
// swapped in only when the key matches the certificate; otherwise the old pair
// keeps serving and the reason is logged. Open connections keep the context they
// were accepted with, so streams survive a reload. (grpc-js's experimental
// FileWatcherCertificateProvider polls on a timer and does not check that key
// and certificate belong together, so both listeners follow this source.)
//
// Any change in the files' folders triggers a re-read, and the content decides:
// a Kubernetes volume (kubelet secrets, the SPIFFE CSI driver) swaps a whole
// generation at once by renaming a `..data` symlink, and no event then names
// svid.pem itself. The TLS options every listener serves with live here too, so
// a reload keeps the TLS floor: Node's setSecureContext resets any option it is
// not given to the process default (`node --tls-min-v1.0` would lower it).

import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, watch, type FSWatcher } from "node:fs";
import path from "node:path";
import { TrustBundleSet } from "../identity/trust-bundle.js";
import { inspectSvid } from "../identity/x509-svid.js";
import type { Logger } from "../log/logger.js";

export interface CertificateFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly bundleFile: string;
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer;
  readonly bundle: TrustBundleSet;
}

/** The TLS options both mTLS listeners serve with, at start and after every reload. */
export function secureContextOptions(m: TlsMaterial): { cert: Buffer; key: Buffer; ca: Buffer; minVersion: "TLSv1.2" } {
  return { cert: m.cert, key: m.key, ca: m.ca, minVersion: "TLSv1.2" };
}

/**
 * Where the listeners get this server's SVID: files (CertificateSource) or the
 * SPIFFE Workload API (WorkloadApiCertificateSource). Listeners call
 * setSecureContext on every change, so new connections get the new SVID while
 * open ones keep theirs.
 */
export interface TlsMaterialSource {
  readonly material: TlsMaterial;
  onChange(listener: (material: TlsMaterial) => void): void;
  close(): void;
}

export class CertificateSource implements TlsMaterialSource {
  private current: TlsMaterial;
  private readonly changeListeners = new Set<(material: TlsMaterial) => void>();
  private watchers: FSWatcher[] = [];
  private debounce: NodeJS.Timeout | undefined;
  private firstPendingChangeAt: number | undefined;
  private lastRefusal: string | undefined;

  /** Reads the files now; throws if they do not form a valid identity. */
  constructor(
    private readonly files: CertificateFiles,
    private readonly trustDomain: string,
    private readonly logger: Logger,
    private readonly debounceMs = 300,
  ) {
    this.current = readMaterial(files, trustDomain);
  }

  get material(): TlsMaterial {
    return this.current;
  }

  /**
   * Starts watching the files' folders. Every event counts, whatever it names
   * (renames, in-place writes, a `..data` symlink swap): reload() compares
   * content, so an unrelated change costs three small reads and nothing else.
   */
  watch(): void {
    const dirs = new Set([this.files.certFile, this.files.keyFile, this.files.bundleFile].map((f) => path.dirname(f)));
    for (const dir of dirs) {
      const watcher = watch(dir, { persistent: false }, () => this.scheduleReload());
      watcher.on("error", (err) => this.logger.warn("certificate watch failed", { dir, err }));
      this.watchers.push(watcher);
    }
  }

  close(): void {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    clearTimeout(this.debounce);
  }

  onChange(listener: (material: TlsMaterial) => void): void {
    this.changeListeners.add(listener);
  }

  /** Re-reads the files; returns whether the new material was taken. */
  reload(): boolean {
    let next: TlsMaterial;
    try {
      next = readMaterial(this.files, this.trustDomain);
    } catch (err) {
      const reason = (err as Error).message;
      // Every change in the folder re-reads: say why once, not at each unrelated write.
      if (reason !== this.lastRefusal) this.logger.warn("certificate reload refused; keeping the current certificate", { reason });
      this.lastRefusal = reason;
      return false;
    }
    this.lastRefusal = undefined;
    if (next.cert.equals(this.current.cert) && next.key.equals(this.current.key) && next.ca.equals(this.current.ca)) return false;
    this.current = next;
    this.logger.info("certificate reloaded", { notAfter: new X509Certificate(next.cert).validTo });
    this.emit();
    return true;
  }

  // Waits for a quiet moment (the files of one rotation land together), but no
  // longer than ten debounce periods: a folder that never stops changing must
  // not hold a new certificate back.
  private scheduleReload(): void {
    clearTimeout(this.debounce);
    const now = Date.now();
    this.firstPendingChangeAt ??= now;
    const delay = Math.max(0, Math.min(this.debounceMs, this.firstPendingChangeAt + 10 * this.debounceMs - now));
    this.debounce = setTimeout(() => {
      this.firstPendingChangeAt = undefined;
      this.reload();
    }, delay);
    this.debounce.unref();
  }

  private emit(): void {
    for (const l of this.changeListeners) l(this.current);
  }
}

function readMaterial(files: CertificateFiles, trustDomain: string): TlsMaterial {
  const cert = readFileSync(files.certFile);
  const key = readFileSync(files.keyFile);
  const ca = readFileSync(files.bundleFile);
  return checkMaterial({ cert, key, ca }, trustDomain, { cert: files.certFile, key: files.keyFile });
}

/**
 * Checks that PEM certificate, key and bundle form this server's current
 * identity: the key matches, the leaf is an unexpired X.509-SVID of our trust
 * domain. `names` say where each part came from, for the message.
 */
export function checkMaterial(pem: { cert: Buffer; key: Buffer; ca: Buffer }, trustDomain: string, names: { cert: string; key: string }): TlsMaterial {
  const { cert, key, ca } = pem;
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch {
    throw new Error(`${names.cert} does not hold a PEM certificate`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new Error(`${names.key} does not hold a PEM private key`);
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new Error(`the key in ${names.key} does not match the certificate in ${names.cert}`);
  }
  // Serve only our own, current X.509-SVID: clients authorize us by its SPIFFE ID.
  let svid;
  try {
    svid = inspectSvid(leaf.raw);
  } catch (err) {
    throw new Error(`${names.cert} is not an X.509-SVID: ${(err as Error).message}`, { cause: err });
  }
  if (!svid.id.memberOf(trustDomain)) throw new Error(`${names.cert} is an SVID of ${svid.id.trustDomain}, not of ${trustDomain}`);
  if (svid.notAfterMs <= Date.now()) throw new Error(`${names.cert} expired at ${new Date(svid.notAfterMs).toISOString()}`);
  const bundle = TrustBundleSet.single(trustDomain, ca.toString("utf8"));
  return { cert, key, ca, bundle };
}
