// Where `spike` gets its own X.509-SVID: PEM files, named one by one
// (--cert/--key/--bundle) or as spiffe-helper writes them into a folder
// (--svid-dir), or the SPIFFE Workload API (--spiffe-endpoint-socket, or the
// standard SPIFFE_ENDPOINT_SOCKET, with --spiffe-id to pick one of several
// SVIDs). Commands never read certificate files themselves: they get an
// SvidProvider from here and hand it to the client, which follows rotation.

import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { staticSvid, svidFromWorkloadApi, type ClientSvid, type SvidProvider } from "../client/svid-provider.js";
import { spiffeIdFromSvid } from "../identity/x509-svid.js";
import { CliError } from "./cli-error.js";
import { EXIT } from "./exit-codes.js";

/** The caller's X.509-SVID: PEM chain, key and trust bundle, and the SPIFFE ID it carries. */
export interface Svid {
  readonly certPem: string;
  readonly keyPem: string;
  readonly bundlePem: string;
  readonly spiffeId: string;
  /** The trust domain of spiffeId, e.g. "spike.ist". */
  readonly trustDomain: string;
}

export interface SvidSource {
  /** Describes the source for error messages, e.g. "files svid.pem, svid_key.pem, svid_bundle.pem". */
  readonly description: string;
  /** The SVID now and as it rotates; close it when done. */
  open(): Promise<SvidProvider>;
}

/** The SVID with its trust domain, for messages and defaults. */
export function describeSvid(svid: ClientSvid): Svid {
  return { ...svid, trustDomain: new URL(svid.spiffeId).host };
}

export interface SvidFiles {
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
}

/** spiffe-helper's default file names. */
export const SPIFFE_HELPER_NAMES = { cert: "svid.pem", key: "svid_key.pem", bundle: "svid_bundle.pem" } as const;

export function fileSvidSource(files: SvidFiles, flags = { cert: "--cert", key: "--key", bundle: "--bundle" }): SvidSource {
  return {
    description: `files ${files.cert}, ${files.key}, ${files.bundle}`,
    async open() {
      const [certPem, keyPem, bundlePem] = await Promise.all([readPem(files.cert, flags.cert), readPem(files.key, flags.key), readPem(files.bundle, flags.bundle)]);
      let spiffeId: string;
      try {
        spiffeId = spiffeIdFromSvid(new X509Certificate(certPem).raw).toString();
      } catch (err) {
        throw CliError.usage(`${files.cert} is not an X.509-SVID: ${(err as Error).message}`);
      }
      return staticSvid({ certPem, keyPem, bundlePem, spiffeId });
    },
  };
}

/** The SPIFFE Workload API at `socket` (unix:///path or tcp://IP:port). */
export function workloadApiSvidSource(socket: string, spiffeId?: string): SvidSource {
  return {
    description: `the Workload API at ${socket}`,
    async open() {
      try {
        return await svidFromWorkloadApi(socket, { spiffeId, firstSvidTimeoutMs: 5000 });
      } catch (err) {
        const message = (err as Error).message;
        // A malformed address is the caller's mistake; an agent that does not answer is an outage.
        throw /is not a Workload API address|needs an IP address|port out of range|is not unix/.test(message)
          ? CliError.usage(`--spiffe-endpoint-socket ${message}`)
          : new CliError(message, EXIT.unavailable);
      }
    },
  };
}

export function svidDirSource(dir: string): SvidSource {
  return fileSvidSource(
    {
      cert: path.join(dir, SPIFFE_HELPER_NAMES.cert),
      key: path.join(dir, SPIFFE_HELPER_NAMES.key),
      bundle: path.join(dir, SPIFFE_HELPER_NAMES.bundle),
    },
    { cert: "--svid-dir", key: "--svid-dir", bundle: "--svid-dir" },
  );
}

/**
 * Picks the source from the options: --spiffe-endpoint-socket, --svid-dir, or
 * all three of --cert, --key and --bundle. A socket together with files is
 * refused, naming both: which should win is not obvious.
 */
export function svidSourceFrom(options: { cert?: string; key?: string; bundle?: string; svidDir?: string; spiffeEndpointSocket?: string; spiffeId?: string }): SvidSource {
  const named = [options.cert, options.key, options.bundle].filter((v) => v !== undefined && v !== "").length;
  if (options.spiffeEndpointSocket) {
    const files = [
      ...(options.svidDir ? ["--svid-dir"] : []),
      ...(["cert", "key", "bundle"] as const).filter((k) => options[k]).map((k) => `--${k}`),
    ];
    if (files.length > 0) {
      throw CliError.usage(`--spiffe-endpoint-socket (SPIFFE_ENDPOINT_SOCKET) and ${files.join(", ")} are both set: take the SVID from the Workload API or from files, not both`);
    }
    return workloadApiSvidSource(options.spiffeEndpointSocket, options.spiffeId || undefined);
  }
  if (options.spiffeId) throw CliError.usage("--spiffe-id picks one of the Workload API's SVIDs: give --spiffe-endpoint-socket too");
  if (named === 3) return fileSvidSource({ cert: options.cert!, key: options.key!, bundle: options.bundle! });
  if (named > 0) throw CliError.usage("give all three of --cert, --key and --bundle (SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE), or --svid-dir");
  if (options.svidDir) return svidDirSource(options.svidDir);
  throw CliError.usage(
    "no SVID: give --spiffe-endpoint-socket (SPIFFE_ENDPOINT_SOCKET), --svid-dir (spiffe-helper's folder) or --cert, --key and --bundle (SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE)",
  );
}

async function readPem(file: string, flag: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    throw CliError.usage(`cannot read ${flag} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
