// What single steps of a request cost on this machine, measured in a tight
// loop in one process (so other jobs on the box barely matter): the numbers
// behind the suggestions in bench/results/, next to the server CPU per request
// the scenarios measure.   node dist/bench/micro-costs.js [out.md]

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { connect, createServer, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import { GetSecretResponseSchema, PutSecretRequestSchema } from "../gen/spike/nexus/v1/secret_pb.js";
import { macAuditEvent } from "../src/audit/audit-event.js";
import { compilePattern } from "../src/authorization/policy.js";
import { NexusMetrics } from "../src/metrics/nexus-metrics.js";
import { associatedData, open, seal } from "../src/keys/aead.js";
import { createAuthority } from "../test/support/test-pki.js";
import { secretData } from "./load-protocol.js";

export interface Cost {
  readonly step: string;
  readonly microseconds: number;
}

/** Mean µs per call of `fn` over ~`ms` of calls, after a warm-up. */
function measure(step: string, fn: () => unknown, ms = 400): Cost {
  for (let i = 0; i < 2000; i++) fn();
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 200; i++) fn();
    n += 200;
    now = performance.now();
  }
  return { step, microseconds: ((now - start) * 1000) / n };
}

async function tlsPair(): Promise<{ server: TLSSocket; close(): void }> {
  const ca = await createAuthority({ trustDomain: "spike.ist" });
  const serverCert = await ca.issue({ uris: ["spiffe://spike.ist/spike/nexus"], dns: ["localhost"] });
  const clientCert = await ca.issue({ uris: ["spiffe://spike.ist/bench/reader"] });
  const server = createServer({ cert: serverCert.certPem, key: serverCert.keyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, "secureConnection");
  const client = connect({ port, host: "127.0.0.1", ca: ca.certPem, cert: clientCert.certPem, key: clientCert.keyPem, servername: "localhost" });
  const [socket] = (await accepted) as [TLSSocket];
  return {
    server: socket,
    close: () => {
      client.destroy();
      socket.destroy();
      server.close();
    },
  };
}

export async function microCosts(): Promise<Cost[]> {
  const costs: Cost[] = [];
  const tls = await tlsPair();
  const memo = new WeakMap<TLSSocket, unknown>();
  memo.set(tls.server, tls.server.getPeerCertificate());
  costs.push(measure("TLSSocket.getPeerCertificate() (grpc-js getAuthContext() did it per call until a018c13)", () => tls.server.getPeerCertificate()));
  costs.push(measure("TLSSocket.getPeerX509Certificate()", () => tls.server.getPeerX509Certificate()));
  costs.push(measure("a per-connection memo of it (WeakMap.get)", () => memo.get(tls.server)));
  tls.close();

  costs.push(measure("new AbortController() + abort() (grpc-server.ts did it per call until 45e197c)", () => new AbortController().abort()));
  costs.push(measure("new AbortController() without abort()", () => new AbortController()));

  const key = randomBytes(32);
  const plaintext = Buffer.from(JSON.stringify(secretData(1024, 1)));
  const secretId = randomBytes(16);
  const aad = () => associatedData("nexus/v1/secret-version", 1, 1, secretId, "bench/read/s000001", 1);
  const fixedAad = aad();
  const sealedFixed = seal(key, 1, plaintext, fixedAad);
  costs.push(measure("associatedData(...) for a version", aad));
  costs.push(measure("AES-256-GCM seal, 1 KiB (aead.seal)", () => seal(key, 1, plaintext, fixedAad)));
  costs.push(measure("AES-256-GCM open, 1 KiB (aead.open)", () => open(key, sealedFixed, fixedAad)));
  costs.push(measure("JSON.parse of the 1 KiB value", () => JSON.parse(plaintext.toString("utf8"))));

  const auditFields = {
    replicaId: "bench-replica-0001",
    sequence: 123456,
    time: new Date(),
    requestId: randomUUID(),
    caller: "spiffe://spike.ist/bench/reader",
    rpc: "/spike.nexus.v1.SecretService/GetSecret",
    path: "bench/read/s000001",
    version: null,
    outcome: "ok" as const,
    code: "OK",
    detail: {},
  };
  costs.push(measure("audit event MAC (macAuditEvent: canonical JSON + HMAC-SHA256)", () => macAuditEvent(key, auditFields)));
  costs.push(measure("randomUUID() (request id)", () => randomUUID()));

  const response = create(GetSecretResponseSchema, { path: "bench/read/s000001", version: 1, data: secretData(1024, 2) });
  costs.push(measure("protobuf: encode a GetSecretResponse (1 KiB)", () => toBinary(GetSecretResponseSchema, response)));
  const put = toBinary(PutSecretRequestSchema, create(PutSecretRequestSchema, { path: "bench/write/s000001", data: secretData(1024, 3) }));
  costs.push(measure("protobuf: decode a PutSecretRequest (1 KiB)", () => fromBinary(PutSecretRequestSchema, put)));

  const pattern = compilePattern("bench/read/.*", "path_pattern");
  costs.push(measure("RE2 policy match of a path (re2js)", () => pattern.matches("bench/read/s000001")));

  // Metrics on (issue 17: within 5 % of server CPU per GetSecret): what one call
  // records, and what one scrape renders (paid once per scrape interval).
  const getSecret = "/spike.nexus.v1.SecretService/GetSecret";
  const metrics = new NexusMetrics([getSecret], {
    sealed: () => false,
    keyringKeys: () => 1,
    activeKeyringKeyId: () => 1,
    databaseUp: () => true,
    databasePoolMax: 8,
    databasePoolWaiting: () => 0,
    auditEventsWaiting: () => 0,
    svidNotAfterMs: () => Date.now(),
  });
  costs.push(measure("metrics: one call recorded (in flight ±1, duration histogram, requests counter)", () => metrics.calls.callStarted(getSecret)("OK")));
  const renders: number[] = [];
  for (let i = 0; i < 50; i++) {
    const start = performance.now();
    await metrics.render();
    renders.push(performance.now() - start);
  }
  renders.sort((a, b) => a - b);
  costs.push({ step: "metrics: one /metrics rendering (median of 50, per scrape)", microseconds: renders[25] * 1000 });
  return costs;
}

export function costsMarkdown(costs: Cost[]): string {
  return [
    "| step | µs per call |",
    "|---|---:|",
    ...costs.map((c) => `| ${c.step} | ${c.microseconds < 1 ? c.microseconds.toFixed(3) : c.microseconds.toFixed(1)} |`),
    "",
  ].join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const costs = await microCosts();
  const md = costsMarkdown(costs);
  process.stdout.write(md);
  if (process.argv[2]) await writeFile(process.argv[2], `## Cost of single steps on this machine (bench/micro-costs.ts, Node ${process.version})\n\n${md}`);
}
