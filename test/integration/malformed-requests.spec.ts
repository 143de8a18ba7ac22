// Requests malformed below the message level: a body that is not the method's
// protobuf message, and an authorization header that is not one bearer token.
// Each is refused with a clear status and reason on both listeners, and is
// audited like any other refusal.

import { expect } from "chai";
import * as grpc from "@grpc/grpc-js";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { connectJson, connectSession } from "../support/connect-json.js";
import { openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS } from "../support/test-server.js";

const GET_STATUS = "/spike.nexus.v1.OperatorService/GetStatus";
const LIST_POLICIES = "/spike.nexus.v1.PolicyService/ListPolicies";

describe("malformed requests", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let raw: grpc.Client;

  /** A gRPC call with raw bytes and raw metadata, over mTLS as the superuser. */
  const rawCall = (path: string, body: Buffer, headers: Record<string, string> = {}) =>
    new Promise<grpc.ServiceError | null>((resolve) => {
      const metadata = new grpc.Metadata();
      for (const [k, v] of Object.entries(headers)) metadata.set(k, v);
      raw.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, metadata, {}, (err) => resolve(err));
    });
  const reasonOf = (err: grpc.ServiceError | null) => err?.metadata.get("grpc-status-details-bin").length ? err.details : err?.details;

  before(async () => {
    server = await startSecretServer();
    db = openDatabase(server.nexus.databaseUrl);
    raw = new grpc.Client(
      `127.0.0.1:${server.nexus.grpcPort}`,
      grpc.credentials.createSsl(Buffer.from(server.pki.ca.certPem), Buffer.from(server.pki.superuser.keyPem), Buffer.from(server.pki.superuser.certPem), {
        checkServerIdentity: () => undefined,
      }),
      { "grpc.ssl_target_name_override": "localhost" },
    );
  });

  after(async () => {
    raw?.close();
    await db?.end();
    await server?.stop();
  });

  it("a gRPC body that is not the method's message is INVALID_ARGUMENT (not INTERNAL) and is audited", async () => {
    const before = new Date();
    // Field 1 as a length-delimited value whose length runs past the end.
    const err = await rawCall(GET_STATUS, Buffer.from([0x0a, 0x7f, 0x01]));
    expect(err?.code, err?.details).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(reasonOf(err)).to.include("not a valid spike.nexus.v1.GetStatusRequest message");
    const events = await db`SELECT outcome, code, detail FROM audit_events WHERE rpc = ${GET_STATUS} AND time >= ${before}`;
    expect(events.map((e) => `${e.outcome} ${e.code} ${e.detail.reason}`)).to.deep.equal(["error INVALID_ARGUMENT MALFORMED_REQUEST"]);
    // The same method still answers a well-formed call on the same channel.
    expect(await rawCall(GET_STATUS, Buffer.alloc(0))).to.equal(null);
  });

  for (const header of ["Basic dXNlcjpwYXNz", "Bearer two tokens", "Bearer", "token-without-scheme"]) {
    it(`an authorization header ${JSON.stringify(header)} is UNAUTHENTICATED on both listeners, not ignored`, async () => {
      const before = new Date();
      const grpcErr = await rawCall(LIST_POLICIES, Buffer.alloc(0), { authorization: header });
      expect(grpcErr?.code, grpcErr?.details).to.equal(grpc.status.UNAUTHENTICATED);
      expect(grpcErr?.details).to.include('"Bearer <token>"');

      const session = connectSession(server);
      try {
        const res = await connectJson(session, LIST_POLICIES, "{}", { authorization: header });
        expect(res.status, res.body).to.equal(401);
        expect(JSON.parse(res.body)).to.deep.include({ code: "unauthenticated" });
        expect(res.body).to.include("MALFORMED_AUTHORIZATION");
      } finally {
        session.close();
      }
      const events = await db`SELECT outcome, code, detail FROM audit_events WHERE rpc = ${LIST_POLICIES} AND time >= ${before}`;
      expect(events.map((e) => `${e.outcome} ${e.code} ${e.detail.reason}`)).to.deep.equal(Array.from({ length: LISTENERS.length }, () => "denied UNAUTHENTICATED MALFORMED_AUTHORIZATION"));
    });
  }

  it("a well-formed bearer token still reaches authorization (a wrong one is refused for what it is)", async () => {
    const err = await rawCall(LIST_POLICIES, Buffer.alloc(0), { authorization: "Bearer not-a-real-token" });
    expect(err?.code).to.equal(grpc.status.UNAUTHENTICATED);
    expect(err?.details).to.not.include('"Bearer <token>"');
  });
});

// The typed descriptors are imported so a rename of these RPCs breaks the build here.
void OperatorService.method.getStatus;
void PolicyService.method.listPolicies;
