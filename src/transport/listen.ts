// Starts a node server on a configured address and reports the port it got
// (port 0 in tests picks a free one).

import type { Server } from "node:net";
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
