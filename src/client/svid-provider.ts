// Where a client's own X.509-SVID comes from: PEM files (re-read when they
// change, as spiffe-helper and Kubernetes volumes rotate them), the SPIFFE
// Workload API (following its stream; SPIFFE_ENDPOINT_SOCKET by default), or
// a fixed value. The client asks for
// current() before each call and opens new connections when the answer is a
// new SVID, so a rotation needs no restart and open calls finish on the old one.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { spiffeIdFromSvid } from "../identity/x509-svid.js";
import { WorkloadApiSource, type WorkloadApiOptions } from "../workload-api/workload-api-source.js";

/** The caller's X.509-SVID as PEM, and the SPIFFE ID it carries. */
export interface ClientSvid {
  /** PEM chain, leaf first. */
  readonly certPem: string;
  readonly keyPem: string;
  /** PEM bundle of the trust domain. */
  readonly bundlePem: string;
  readonly spiffeId: string;
}

export interface SvidProvider {
  /** The SVID to use now; the same object until it changes. */
  current(): ClientSvid;
  close(): void;
}

/** A fixed SVID (tests, or a caller that manages rotation itself). */
export function staticSvid(svid: Omit<ClientSvid, "spiffeId"> & { spiffeId?: string }): SvidProvider {
  const value = { ...svid, spiffeId: svid.spiffeId ?? spiffeIdOf(svid.certPem) };
  return { current: () => value, close: () => {} };
}

export interface SvidFiles {
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
}

/**
 * PEM files, read now (throws if they do not form an SVID) and read again when
 * one of them changes (checked at most once a second). A half-written rotation
 * (a key that does not match the certificate) keeps the previous SVID.
 */
export function svidFromFiles(files: SvidFiles): SvidProvider {
  let stamp = stampOf(files);
  let svid = readSvidFiles(files);
  let checkedAt = Date.now();
  return {
    current() {
      if (Date.now() - checkedAt < 1000) return svid;
      checkedAt = Date.now();
      const now = stampOf(files);
      if (now === stamp) return svid;
      try {
        svid = readSvidFiles(files);
        stamp = now;
      } catch {
        // a rotation in progress: the next check reads it again
      }
      return svid;
    },
    close: () => {},
  };
}

/** The SPIFFE Workload API: resolves once the first SVID arrived, then follows rotations. */
export async function svidFromWorkloadApi(socket: string, options: WorkloadApiOptions = {}): Promise<SvidProvider> {
  const source = await WorkloadApiSource.start(socket, options);
  return {
    current: () => source.current,
    close: () => source.close(),
  };
}

/** Where openSvid takes the SVID from; with neither socket nor files, SPIFFE_ENDPOINT_SOCKET. */
export interface SvidSourceOptions extends WorkloadApiOptions {
  /** The Workload API socket (unix:///path or tcp://IP:port). */
  readonly socket?: string;
  /** PEM files (as spiffe-helper or a Kubernetes volume writes them). */
  readonly files?: SvidFiles;
  /** Where SPIFFE_ENDPOINT_SOCKET is read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * The caller's SVID as the CLI and the agent find it: the socket or the files
 * given, else the Workload API at SPIFFE_ENDPOINT_SOCKET (the standard
 * variable, a default only: files given explicitly win over it). A socket and
 * files together are refused, naming both: which should win is not obvious.
 */
export async function openSvid(options: SvidSourceOptions = {}): Promise<SvidProvider> {
  const { socket, files, env = process.env, ...workloadApi } = options;
  if (socket !== undefined && files !== undefined) {
    throw new Error(`socket (${socket}) and files (${files.cert}, ${files.key}, ${files.bundle}) are both set: take the SVID from the Workload API or from files, not both`);
  }
  if (files !== undefined) return svidFromFiles(files);
  const address = socket ?? env.SPIFFE_ENDPOINT_SOCKET;
  if (address === undefined || address === "") throw new Error("no SVID: give a Workload API socket or SVID files, or set SPIFFE_ENDPOINT_SOCKET");
  return svidFromWorkloadApi(address, workloadApi);
}

function readSvidFiles(files: SvidFiles): ClientSvid {
  const certPem = readFileSync(files.cert, "utf8");
  const keyPem = readFileSync(files.key, "utf8");
  const bundlePem = readFileSync(files.bundle, "utf8");
  if (!new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem))) {
    throw new Error(`the key in ${files.key} does not match the certificate in ${files.cert}`);
  }
  return { certPem, keyPem, bundlePem, spiffeId: spiffeIdOf(certPem) };
}

function spiffeIdOf(certPem: string): string {
  return spiffeIdFromSvid(new X509Certificate(certPem).raw).toString();
}

function stampOf(files: SvidFiles): string {
  try {
    return [files.cert, files.key, files.bundle].map((f) => `${statSync(f).mtimeMs}:${statSync(f).size}`).join("|");
  } catch {
    return "missing";
  }
}
