// Review of issue 17 §6 (adversarial): calls the pipeline refuses before it
// identifies the caller — an unknown method, a body that does not decode —
// must still take a token from the caller's bucket. Each such refusal is an
// audit write, so a workload over its limit that switches to them keeps the
// database busy at whatever rate it likes.

import { expect } from "chai";
import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { SUPERUSER_ID, WORKLOAD_ID } from "../support/test-server.js";
import { connectRaw, connectSession } from "../support/connect-json.js";

const RATE = 5;
const BURST = 5;
const CALLS = 40;

describe("per-caller rate limits: refusals before identification (review)", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let client: grpc.Client;

  const rawCall = (path: string, body: Uint8Array) =>
    new Promise<{ err: grpc.ServiceError | null; requestId: string }>((resolve) => {
      const requestId = randomUUID();
      const metadata = new grpc.Metadata();
      metadata.set("x-request-id", requestId);
      client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(body), metadata, {}, (err) => resolve({ err, requestId }));
    });

  before(async () => {
    server = await startSecretServer({ env: { NEXUS_RATE_LIMIT_RPS: String(RATE), NEXUS_RATE_LIMIT_BURST: String(BURST) } });
    db = openDatabase(server.nexus.databaseUrl);
    const w = server.pki.workload;
    client = new grpc.Client(
      `127.0.0.1:${server.nexus.grpcPort}`,
      grpc.credentials.createSsl(Buffer.from(server.pki.ca.certPem), Buffer.from(w.keyPem), Buffer.from(w.certPem), { checkServerIdentity: () => undefined }),
      { "grpc.ssl_target_name_override": "localhost" },
    );
  });

  after(async () => {
    client?.close();
    await db?.end();
    await server?.stop();
  });

  const flood = async (path: string, body: Uint8Array) => {
    const codes: number[] = [];
    for (let i = 0; i < CALLS; i++) codes.push((await rawCall(path, body)).err?.code ?? grpc.status.OK);
    return codes;
  };

  it("calls to an unknown method count against the caller's call rate limit", async () => {
    const codes = await flood("/spike.nexus.v1.SecretService/Nope", new Uint8Array());
    const [{ n }] = await db`SELECT count(*)::int AS n FROM audit_events WHERE caller = ${WORKLOAD_ID} AND code = 'UNIMPLEMENTED'`;
    // 40 calls in well under 2 s against a burst of 5 and 5 per second.
    expect(codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED).length, `codes ${codes.join(",")}; ${n} audit rows written`).to.be.greaterThan(0);
  });

  it("requests whose body does not decode count against the caller's call rate limit", async () => {
    await new Promise((r) => setTimeout(r, 1500)); // the bucket refills
    const codes = await flood("/spike.nexus.v1.SecretService/GetSecret", new Uint8Array([0xff, 0xff, 0xff]));
    expect(codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED).length, `codes ${codes.join(",")}`).to.be.greaterThan(0);
  });
  it("Connect calls refused HTTP 415 before any handler count against the caller's call rate limit (their events name it)", async () => {
    // The superuser's own bucket: untouched by the workload's floods above.
    const session = connectSession(server);
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 2 * BURST; i++) {
        statuses.push((await connectRaw(session, "/spike.nexus.v1.OperatorService/GetStatus", "{}", "text/plain")).status);
      }
      expect(statuses.every((s) => s === 415), `statuses ${statuses.join(",")}`).to.equal(true);
      const after = await connectRaw(session, "/spike.nexus.v1.OperatorService/GetStatus", "{}", "application/json");
      expect(after.status, after.body.toString()).to.equal(429);
      expect(JSON.parse(after.body.toString())).to.deep.include({ code: "resource_exhausted" });
      const callers = await db`SELECT DISTINCT caller FROM audit_events WHERE rpc = '/spike.nexus.v1.OperatorService/GetStatus' AND detail->>'reason' = 'UNSUPPORTED_MEDIA_TYPE'`;
      expect(callers.map((e) => e.caller as string)).to.deep.equal([SUPERUSER_ID]);
    } finally {
      session.close();
    }
  });

  it("the audit event of a call refused RATE_LIMITED names the caller whose SVID was valid", async () => {
    await new Promise((r) => setTimeout(r, 1500)); // the bucket refills
    const refused: string[] = [];
    for (let i = 0; i < 20; i++) {
      const { err, requestId } = await rawCall("/spike.nexus.v1.SecretService/GetSecret", new Uint8Array());
      if (err?.code === grpc.status.RESOURCE_EXHAUSTED) refused.push(requestId);
    }
    expect(refused.length).to.be.greaterThan(0);
    const events = await db`SELECT caller FROM audit_events WHERE request_id IN ${db(refused)}`;
    expect(events.length).to.equal(refused.length);
    expect([...new Set(events.map((e) => e.caller as string))]).to.deep.equal([WORKLOAD_ID]);
  });
});
