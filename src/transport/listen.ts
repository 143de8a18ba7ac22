// Starts a node server on a configured address and reports the port it got
// (port 0 in tests picks a free one), and checks before start-up that fixed
// ports are free, so a taken port stops a start before anything else happens.

import { createServer, type Server } from "node:net";
import type { ListenAddress } from "../config/config.js";

export function listen(server: Server, address: ListenAddress): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(address.port, address.host, () => {
      server.off("error", reject);
      const a = server.address();
      resolve(typeof a === "object" && a ? a.port : address.port);
    });
  });
}

/**
 * Whether `address` can be listened on right now (binds and lets go at once).
 * Resolves with the errno code that stops it (EADDRINUSE, EACCES, ...) or undefined.
 */
export async function addressUnavailable(address: ListenAddress): Promise<string | undefined> {
  if (address.port === 0) return undefined;
  const probe = createServer();
  try {
    await listen(probe, address);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? "error";
  } finally {
    await new Promise<void>((resolve) => (probe.listening ? probe.close(() => resolve()) : resolve()));
  }
}
