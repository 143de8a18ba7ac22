// Connect-protocol calls with a JSON body over a raw HTTP/2 session, as curl
// sends them: for what our typed clients cannot send (odd JSON) and for
// sessions that must outlive a certificate reload.

import http2 from "node:http2";
import type { TestServer } from "./test-server.js";

/** An mTLS HTTP/2 session to the server's Connect listener, as the superuser. */
export function connectSession(server: TestServer): http2.ClientHttp2Session {
  return http2.connect(`https://127.0.0.1:${server.nexus.connectPort}`, {
    ca: server.pki.ca.certPem,
    cert: server.pki.superuser.certPem,
    key: server.pki.superuser.keyPem,
    servername: "localhost",
    checkServerIdentity: () => undefined,
  });
}

/** One Connect unary call with a JSON body; resolves with the HTTP status and the body. */
export function connectJson(
  session: http2.ClientHttp2Session,
  path: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ...headers, ":method": "POST", ":path": path, "content-type": "application/json" });
    let status = 0;
    let text = "";
    stream.setEncoding("utf8");
    stream.on("response", (headers) => (status = Number(headers[":status"])));
    stream.on("data", (chunk: string) => (text += chunk));
    stream.on("end", () => resolve({ status, body: text }));
    stream.on("error", reject);
    stream.end(body);
  });
}
