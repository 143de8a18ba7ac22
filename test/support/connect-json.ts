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

/** One POST with any body and content type on the Connect listener; resolves with the HTTP status, headers and body bytes. */
export function connectRaw(
  session: http2.ClientHttp2Session,
  path: string,
  body: Uint8Array | string,
  contentType: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ...headers, ":method": "POST", ":path": path, "content-type": contentType });
    let status = 0;
    let responseHeaders: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      responseHeaders = h;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => resolve({ status, headers: responseHeaders, body: Buffer.concat(chunks) }));
    stream.on("error", reject);
    stream.end(body);
  });
}
