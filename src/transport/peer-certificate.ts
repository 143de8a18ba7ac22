// The client certificate of a TLS connection, read once. It cannot change once
// the handshake is done (renegotiation is refused here), so every later call
// on the connection gets the first read: TLSSocket.getPeerCertificate() builds
// a fresh object each time (measured at ~10 % of a GetSecret's CPU when grpc-js
// called it per call; ADR 0001).

import type { TLSSocket } from "node:tls";

export function readPeerCertificateOnce(socket: TLSSocket): void {
  socket.disableRenegotiation();
  const cert = socket.getPeerCertificate();
  const detailed = socket.getPeerCertificate.bind(socket);
  socket.getPeerCertificate = ((full?: boolean) => (full ? detailed(true) : cert)) as typeof socket.getPeerCertificate;
}
