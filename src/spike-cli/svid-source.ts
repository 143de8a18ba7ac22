// Where `spike` gets its own X.509-SVID. Today: PEM files, named one by one
// (--cert/--key/--bundle) or as spiffe-helper writes them into a folder
// (--svid-dir). The SPIFFE Workload API source comes with the agent and slots in
// behind the same SvidSource seam: commands never read certificate files themselves.

import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { spiffeIdFromSvid } from "../identity/x509-svid.js";
import { CliError } from "./cli-error.js";

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
  load(): Promise<Svid>;
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
    async load() {
      const [certPem, keyPem, bundlePem] = await Promise.all([readPem(files.cert, flags.cert), readPem(files.key, flags.key), readPem(files.bundle, flags.bundle)]);
      let spiffeId: string;
      try {
        spiffeId = spiffeIdFromSvid(new X509Certificate(certPem).raw).toString();
      } catch (err) {
        throw CliError.usage(`${files.cert} is not an X.509-SVID: ${(err as Error).message}`);
      }
      return { certPem, keyPem, bundlePem, spiffeId, trustDomain: new URL(spiffeId).host };
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

/** Picks the source from the options: --svid-dir, or all three of --cert, --key and --bundle. */
export function svidSourceFrom(options: { cert?: string; key?: string; bundle?: string; svidDir?: string }): SvidSource {
  const named = [options.cert, options.key, options.bundle].filter((v) => v !== undefined && v !== "").length;
  if (named === 3) return fileSvidSource({ cert: options.cert!, key: options.key!, bundle: options.bundle! });
  if (named > 0) throw CliError.usage("give all three of --cert, --key and --bundle (SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE), or --svid-dir");
  if (options.svidDir) return svidDirSource(options.svidDir);
  throw CliError.usage("no SVID: give --svid-dir (spiffe-helper's folder) or --cert, --key and --bundle (SPIKE_CERT, SPIKE_KEY, SPIKE_BUNDLE)");
}

async function readPem(file: string, flag: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    throw CliError.usage(`cannot read ${flag} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
