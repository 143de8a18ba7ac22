// The benchmark's PKI: one EC P-256 authority (as SPIRE issues) and the SVIDs
// of the server and of every caller the scenarios use, written where the
// server process reads them (NEXUS_TRUST_BUNDLE, NEXUS_TLS_CERT, NEXUS_TLS_KEY).

import path from "node:path";
import { createAuthority, writePkiFiles, type IssuedCert } from "../test/support/test-pki.js";
import type { PemIdentity } from "./load-protocol.js";

export const TRUST_DOMAIN = "spike.ist";
export const NEXUS_ID = `spiffe://${TRUST_DOMAIN}/spike/nexus`;
export const SUPERUSER_ID = `spiffe://${TRUST_DOMAIN}/spike/pilot/role/superuser`;

/** Callers, by role; each is its own SPIFFE ID under spiffe://spike.ist/bench/. */
export const CALLERS = ["reader", "writer", "mixed", "lister", "prop"] as const;
export type Caller = (typeof CALLERS)[number];
export const callerId = (c: Caller) => `spiffe://${TRUST_DOMAIN}/bench/${c}`;

export interface BenchPki {
  readonly ca: string;
  readonly files: { readonly ca: string; readonly cert: string; readonly key: string };
  readonly superuser: PemIdentity;
  readonly callers: Readonly<Record<Caller, PemIdentity>>;
}

export async function createBenchPki(dir: string): Promise<BenchPki> {
  const ca = await createAuthority({ trustDomain: TRUST_DOMAIN, name: "Nexus bench CA" });
  const nexus = await ca.issue({ uris: [NEXUS_ID], dns: ["localhost"], ips: ["127.0.0.1"] });
  const superuser = await ca.issue({ uris: [SUPERUSER_ID] });
  const callers = {} as Record<Caller, PemIdentity>;
  for (const c of CALLERS) callers[c] = pem(await ca.issue({ uris: [callerId(c)] }));
  await writePkiFiles(dir, { "ca.pem": ca.certPem, "svid.pem": nexus.certPem, "svid_key.pem": nexus.keyPem });
  return {
    ca: ca.certPem,
    files: { ca: path.join(dir, "ca.pem"), cert: path.join(dir, "svid.pem"), key: path.join(dir, "svid_key.pem") },
    superuser: pem(superuser),
    callers,
  };
}

function pem(c: IssuedCert): PemIdentity {
  return { cert: c.certPem, key: c.keyPem };
}
