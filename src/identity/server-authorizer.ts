// Client side: which server our own clients (tests, CLI) agree to talk to. The
// server is authorized by the SPIFFE ID in its X.509-SVID, not by hostname,
// because SPIRE-issued SVIDs usually carry no DNS name (go-spiffe's
// tlsconfig.AuthorizeID). Chain verification stays with TLS and the `ca` option.

import { NexusError } from "../errors/nexus-error.js";
import { parseSpiffeId } from "./spiffe-id.js";
import { spiffeIdFromSvid } from "./x509-svid.js";

/** A `checkServerIdentity` for node:tls and grpc-js that accepts only the server `expected`. */
export function authorizeServerId(expected: string): (hostname: string, cert: { raw: Uint8Array }) => Error | undefined {
  const want = expectedId(expected);
  return (_hostname, cert) => {
    let presented: string;
    try {
      presented = spiffeIdFromSvid(cert.raw).toString();
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      return new Error(`expected server SPIFFE ID ${want}, but the server presented no valid X.509-SVID: ${why}`);
    }
    if (presented !== want) return new Error(`expected server SPIFFE ID ${want}, but the server presented ${presented}`);
    return undefined;
  };
}

// A bad expected ID is a configuration mistake, so it fails when the client is built.
function expectedId(expected: string): string {
  try {
    return parseSpiffeId(expected).toString();
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new NexusError("invalid_argument", `expected server ${why}`, { reason: "INVALID_SPIFFE_ID", cause: err });
  }
}
