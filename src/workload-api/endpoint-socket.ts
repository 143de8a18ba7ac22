// The Workload API endpoint address as SPIFFE defines it (SPIFFE_ENDPOINT_SOCKET):
// "unix:///absolute/path" or "tcp://IP:port", turned into a grpc-js target.
// A bad address stops the start with a message naming what is wrong.

import { isIP } from "node:net";

export interface EndpointSocket {
  /** The address as given, for messages. */
  readonly address: string;
  /** The grpc-js channel target. */
  readonly target: string;
}

export function parseEndpointSocket(raw: string): EndpointSocket {
  const address = raw.trim();
  const unix = /^unix:\/\/(\/.+)$/.exec(address);
  if (unix) return { address, target: `unix://${unix[1]}` };
  if (address.startsWith("unix:")) throw new Error(`"${raw}" is not unix:///absolute/path`);
  const tcp = /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/]+):(\d{1,5})$/.exec(address);
  if (tcp) {
    const host = tcp[1].replace(/^\[|\]$/g, "");
    // The SPIFFE Workload Endpoint spec allows only an IP here: a name would need DNS before identity exists.
    if (isIP(host) === 0) throw new Error(`"${raw}": tcp:// needs an IP address, not a host name`);
    if (Number(tcp[2]) > 65535) throw new Error(`"${raw}": port out of range`);
    return { address, target: isIP(host) === 6 ? `ipv6:[${host}]:${tcp[2]}` : `ipv4:${host}:${tcp[2]}` };
  }
  throw new Error(`"${raw}" is not a Workload API address (unix:///path/to/agent.sock or tcp://IP:port)`);
}
