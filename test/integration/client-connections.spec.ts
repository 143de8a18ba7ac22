// The Connect client we ship keeps one HTTP/2 connection for all its calls and
// ends it on close(): a CLI or sidecar that closes its client must not leave a
// socket behind. Sockets are counted as the process's active TCP handles
// (this process holds both ends: the client's and the server's accepted one).

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { connectNexusClient } from "../../src/client/nexus-client.js";
import { NEXUS_ID, startTestServer, type TestServer } from "../support/test-server.js";

const tcpSockets = () => process.getActiveResourcesInfo().filter((r) => r === "TCPSocketWrap").length;

async function settle(expected: number): Promise<number> {
  for (let i = 0; i < 100 && tcpSockets() !== expected; i++) await new Promise((r) => setTimeout(r, 20));
  return tcpSockets();
}

describe("the Connect client's connection", function () {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(async () => {
    await server.stop();
  });

  for (const protocol of ["connect", "grpc"] as const) {
    it(`${protocol} over HTTP/2: three calls share one connection, and close() ends it`, async () => {
      const idle = await settle(tcpSockets());
      const { pki, nexus } = server;
      const client = connectNexusClient(
        `https://127.0.0.1:${nexus.connectPort}`,
        { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: NEXUS_ID },
        protocol,
      );
      for (let i = 0; i < 3; i++) expect((await client.call(OperatorService.method.getStatus, {})).code).to.equal("OK");
      expect(tcpSockets(), "one connection: our end and the server's").to.equal(idle + 2);
      client.close();
      expect(await settle(idle), "no socket left after close()").to.equal(idle);
    });
  }
});
