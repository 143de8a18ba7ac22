// SPIFFE IDs and trust domain names: the one place that decides whether a string
// is a well-formed workload identity (SPIFFE-ID spec, sections 2 and 2.3). Parsed
// by hand because WHATWG URL parsing normalises (case, dot segments, percent
// escapes) and so would accept IDs the spec forbids.

import { NexusError } from "../errors/nexus-error.js";

const SCHEME = "spiffe://";
const MAX_ID_BYTES = 2048;
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

// Held only by this module, so every SpiffeId in the process has passed the parser.
const parsed = Symbol("parsed SPIFFE ID");

/** A validated SPIFFE ID. Obtain one through parseSpiffeId. */
export class SpiffeId {
  readonly trustDomain: string;
  readonly path: string;

  constructor(token: typeof parsed, trustDomain: string, path: string) {
    if (token !== parsed) throw new TypeError("SpiffeId is constructed only by parseSpiffeId");
    this.trustDomain = trustDomain;
    this.path = path;
    Object.freeze(this);
  }

  toString(): string {
    return `${SCHEME}${this.trustDomain}${this.path}`;
  }

  memberOf(trustDomain: string): boolean {
    return this.trustDomain === trustDomain;
  }
}

/** Parses a SPIFFE ID, throwing UNAUTHENTICATED (reason INVALID_SPIFFE_ID) naming the broken rule. */
export function parseSpiffeId(uri: string): SpiffeId {
  const bytes = Buffer.byteLength(uri, "utf8");
  // An oversized ID is attacker-sized: report its length, never its content.
  if (bytes > MAX_ID_BYTES) {
    throw invalidId(`SPIFFE ID must be at most ${MAX_ID_BYTES} bytes (got ${bytes} bytes)`);
  }
  const problem = spiffeIdProblem(uri);
  if (problem !== undefined) throw invalidId(`SPIFFE ID ${problem} (got ${JSON.stringify(uri)})`);

  const rest = uri.slice(SCHEME.length);
  const slash = rest.indexOf("/");
  return new SpiffeId(parsed, rest.slice(0, slash), rest.slice(slash));
}

/** Validates a bare trust domain name from configuration, e.g. "example.org". */
export function parseTrustDomain(name: string): string {
  const problem = name.startsWith(SCHEME)
    ? "must be a bare name such as example.org, not a SPIFFE ID"
    : trustDomainProblem(name);
  if (problem !== undefined) {
    throw new NexusError("invalid_argument", `trust domain ${problem} (got ${JSON.stringify(name)})`, {
      reason: "INVALID_TRUST_DOMAIN",
    });
  }
  return name;
}

function spiffeIdProblem(uri: string): string | undefined {
  if (!uri.startsWith(SCHEME)) return "must start with spiffe://";
  const rest = uri.slice(SCHEME.length);
  if (rest.includes("?")) return "must not contain a query (?)";
  if (rest.includes("#")) return "must not contain a fragment (#)";
  if (rest.includes("%")) return "must not contain percent-encoding (%)";

  const slash = rest.indexOf("/");
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== undefined) return `trust domain ${tdProblem}`;
  if (slash < 0) return "must have a path after the trust domain";

  for (const segment of rest.slice(slash + 1).split("/")) {
    if (segment === "") return "path must not contain empty segments (no // and no trailing /)";
    if (segment === "." || segment === "..") return "path must not contain . or .. segments";
    if (!PATH_SEGMENT_CHARS.test(segment)) return "path segments may only contain [A-Za-z0-9.-_]";
  }
  return undefined;
}

function trustDomainProblem(trustDomain: string): string | undefined {
  if (trustDomain === "") return "must not be empty";
  if (trustDomain.includes(":")) return "must not contain a port (:)";
  if (trustDomain.includes("@")) return "must not contain userinfo (@)";
  if (!TRUST_DOMAIN_CHARS.test(trustDomain)) return "must be lowercase [a-z0-9.-_]";
  return undefined;
}

function invalidId(message: string): NexusError {
  return new NexusError("unauthenticated", message, { reason: "INVALID_SPIFFE_ID" });
}
