// What the listeners do with a request body before any service sees it: a field
// this server does not know is INVALID_ARGUMENT (UNKNOWN_FIELD), never dropped;
// a body that does not decode is MALFORMED_REQUEST; an oversized message is
// MESSAGE_TOO_LARGE; a method nobody serves is UNKNOWN_METHOD; a content type or
// HTTP method a served method does not take is 415/405, audited; an enum value this
// server does not know is UNKNOWN_FIELD, never read as "unset" — on the gRPC and
// the Connect listener, in binary and JSON, and every one of them audited.

import { expect } from "chai";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import type http2 from "node:http2";
import { randomUUID } from "node:crypto";
import { gzipSync } from "node:zlib";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PutSecretRequestSchema, SecretService, UpdateSecretMetadataRequestSchema } from "../../gen/spike/nexus/v1/secret_pb.js";
import { login } from "../support/admin-fixtures.js";
import { connectJson, connectRaw, connectSession } from "../support/connect-json.js";
import { ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { SUPERUSER_ID } from "../support/test-server.js";

const PUT_SECRET = "/spike.nexus.v1.SecretService/PutSecret";
const UPDATE_METADATA = "/spike.nexus.v1.SecretService/UpdateSecretMetadata";
const MAX_MESSAGE_BYTES = 64 * 1024;

/** An unknown varint field (number 15) as protobuf-es keeps it. */
const UNKNOWN_15 = [{ no: 15, wireType: WireType.Varint, data: new Uint8Array([0x01]) }];

describe("request decoding on both listeners", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let grpcRaw: grpc.Client;
  let grpcOnConnectPort: grpc.Client;
  let session: http2.ClientHttp2Session;

  const grpcClient = (port: number) =>
    new grpc.Client(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(Buffer.from(server.pki.ca.certPem), Buffer.from(server.pki.superuser.keyPem), Buffer.from(server.pki.superuser.certPem), {
        checkServerIdentity: () => undefined,
      }),
      { "grpc.ssl_target_name_override": "localhost", "grpc.max_send_message_length": -1 },
    );

  /** A unary gRPC call with raw bytes; resolves with the error (null on success) and the request id it sent. */
  const rawCall = (client: grpc.Client, path: string, body: Uint8Array) =>
    new Promise<{ err: grpc.ServiceError | null; requestId: string }>((resolve) => {
      const requestId = randomUUID();
      const metadata = new grpc.Metadata();
      metadata.set("x-request-id", requestId);
      client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(body), metadata, {}, (err) => resolve({ err, requestId }));
    });

  const auditOf = async (requestId: string) =>
    (await db`SELECT caller, rpc, outcome, code, detail FROM audit_events WHERE request_id = ${requestId}`).map((e) => `${e.outcome} ${e.code} ${e.detail.reason}`);

  const connectCall = async (path: string, body: Uint8Array | string, contentType: string) => {
    const requestId = randomUUID();
    const res = await connectRaw(session, path, body, contentType, { "x-request-id": requestId });
    return { ...res, text: res.body.toString("utf8"), requestId };
  };

  before(async () => {
    server = await startSecretServer({ env: { NEXUS_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) } });
    db = openDatabase(server.nexus.databaseUrl);
    grpcRaw = grpcClient(server.nexus.grpcPort);
    grpcOnConnectPort = grpcClient(server.nexus.connectPort);
    session = connectSession(server);
  });

  after(async () => {
    session?.close();
    grpcRaw?.close();
    grpcOnConnectPort?.close();
    await db?.end();
    await server?.stop();
  });

  describe("unknown fields", () => {
    it('a Connect JSON put with a misspelt "cas" ("cass") is INVALID_ARGUMENT UNKNOWN_FIELD, writes nothing and is audited', async () => {
      const path = `typo/${randomUUID()}`;
      const res = await connectCall(PUT_SECRET, JSON.stringify({ path, data: { k: "v" }, cass: 0 }), "application/json");
      expect(res.status, res.text).to.equal(400);
      expect(JSON.parse(res.text)).to.deep.include({ code: "invalid_argument" });
      expect(res.text).to.include("UNKNOWN_FIELD").and.include("cass");
      expect(await auditOf(res.requestId)).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
      expect(ok(await server.client("grpc").call(SecretService.method.listSecrets, { prefix: "typo/" })).paths).to.not.include(path);
    });

    const binaryBodies = [
      { where: "at the top level", body: () => toBinary(PutSecretRequestSchema, { ...create(PutSecretRequestSchema, { path: `unknown/${randomUUID()}`, data: { k: "v" } }), $unknown: UNKNOWN_15 }) },
      {
        where: "in a nested message",
        body: () => {
          const req = create(PutSecretRequestSchema, { path: `unknown/${randomUUID()}`, data: { k: "v" }, expiresAt: { seconds: BigInt(Math.floor(Date.now() / 1000) + 3600) } });
          req.expiresAt!.$unknown = UNKNOWN_15;
          return toBinary(PutSecretRequestSchema, req);
        },
      },
    ];
    for (const { where, body } of binaryBodies) {
      it(`a binary put with an unknown field ${where} is INVALID_ARGUMENT UNKNOWN_FIELD on gRPC, gRPC-on-Connect and Connect binary, and is audited`, async () => {
        for (const client of [grpcRaw, grpcOnConnectPort]) {
          const { err, requestId } = await rawCall(client, PUT_SECRET, body());
          expect(err?.code, err?.details).to.equal(grpc.status.INVALID_ARGUMENT);
          expect(err?.details).to.include("unknown field number 15");
          expect(await auditOf(requestId)).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
        }
        const res = await connectCall(PUT_SECRET, body(), "application/proto");
        expect(res.status, res.text).to.equal(400);
        expect(res.text).to.include("UNKNOWN_FIELD").and.include("unknown field number 15");
        expect(await auditOf(res.requestId)).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
        expect(ok(await server.client("grpc").call(SecretService.method.listSecrets, { prefix: "unknown/" })).paths).to.deep.equal([]);
      });
    }

    it("known fields still work in JSON and binary on every protocol", async () => {
      const path = `known/${randomUUID()}`;
      const json = await connectCall(PUT_SECRET, JSON.stringify({ path, data: { k: "v" } }), "application/json");
      expect(json.status, json.text).to.equal(200);
      expect(JSON.parse(json.text)).to.deep.include({ version: 1 });
      const bin = await connectCall(PUT_SECRET, toBinary(PutSecretRequestSchema, create(PutSecretRequestSchema, { path, data: { k: "v2" }, cas: 1 })), "application/proto");
      expect(bin.status, bin.text).to.equal(200);
      for (const client of [grpcRaw, grpcOnConnectPort]) {
        const { err } = await rawCall(client, UPDATE_METADATA, toBinary(UpdateSecretMetadataRequestSchema, create(UpdateSecretMetadataRequestSchema, { path, maxVersions: 3, updateMask: { paths: ["max_versions"] } })));
        expect(err).to.equal(null);
      }
    });
  });

  describe("unknown enum values", () => {
    const LIST_AUDIT = "/spike.nexus.v1.OperatorService/ListAuditEvents";

    it("ListAuditEvents with an outcome this server does not know (7) is INVALID_ARGUMENT UNKNOWN_FIELD naming outcome on gRPC and Connect JSON, not an unfiltered listing, and is audited", async () => {
      const grpcClient = server.client("grpc");
      const token = (await login(grpcClient)).token;
      const refusals = async () => Number((await db`SELECT count(*)::int AS n FROM audit_events WHERE rpc = ${LIST_AUDIT} AND detail->>'reason' = 'UNKNOWN_FIELD'`)[0].n);
      const before = await refusals();
      const viaGrpc = await grpcClient.call(OperatorService.method.listAuditEvents, { outcome: 7 as never }, { bearerToken: token });
      expect([viaGrpc.code, viaGrpc.reason, viaGrpc.violations?.[0]?.field], viaGrpc.message).to.deep.equal(["INVALID_ARGUMENT", "UNKNOWN_FIELD", "outcome"]);
      expect(await refusals()).to.equal(before + 1);
      for (const body of ['{"outcome": 7}', '{"outcome": "AUDIT_OUTCOME_TIMEOUT"}']) {
        const requestId = randomUUID();
        const res = await connectJson(session, LIST_AUDIT, body, { authorization: `Bearer ${token}`, "x-request-id": requestId });
        expect(res.status, res.body).to.equal(400);
        expect(res.body).to.include("UNKNOWN_FIELD").and.include('"field":"outcome"');
        expect(await auditOf(requestId), body).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
      }
      // A known outcome still filters.
      const filtered = await connectJson(session, LIST_AUDIT, '{"outcome": "AUDIT_OUTCOME_ERROR"}', { authorization: `Bearer ${token}` });
      expect(filtered.status, filtered.body).to.equal(200);
      expect([...new Set((JSON.parse(filtered.body).events ?? []).map((e: { outcome: string }) => e.outcome))]).to.deep.equal(["AUDIT_OUTCOME_ERROR"]);
    });
  });

  describe("malformed bodies", () => {
    const truncated = new Uint8Array([0x0a, 0x7f, 0x01]);
    it("a Connect binary body that does not decode is INVALID_ARGUMENT MALFORMED_REQUEST (not INTERNAL) and is audited", async () => {
      const res = await connectCall(PUT_SECRET, truncated, "application/proto");
      expect(res.status, res.text).to.equal(400);
      expect(JSON.parse(res.text)).to.deep.include({ code: "invalid_argument" });
      expect(res.text).to.include("MALFORMED_REQUEST").and.include("not a valid spike.nexus.v1.PutSecretRequest message");
      expect(await auditOf(res.requestId)).to.deep.equal(["error INVALID_ARGUMENT MALFORMED_REQUEST"]);
    });

    for (const body of ["{", "[]", '{"path": 7}', '{"path": "a", "path": "b"}', "\xff"]) {
      it(`a Connect JSON body ${JSON.stringify(body)} is INVALID_ARGUMENT MALFORMED_REQUEST with a reason, and is audited`, async () => {
        const res = await connectCall(PUT_SECRET, body, "application/json");
        expect(res.status, res.text).to.equal(400);
        expect(res.text).to.include("MALFORMED_REQUEST");
        expect(await auditOf(res.requestId)).to.deep.equal(["error INVALID_ARGUMENT MALFORMED_REQUEST"]);
      });
    }

    it("a malformed JSON body is answered without quoting any value from it (values may be secrets)", async () => {
      const res = await connectCall(PUT_SECRET, JSON.stringify({ path: "p", data: { k: "hunter2-secret" }, cas: "hunter3-secret" }), "application/json");
      expect(res.status, res.text).to.equal(400);
      expect(JSON.parse(res.text).message).to.equal("the request body is not a valid spike.nexus.v1.PutSecretRequest JSON message (field cas)");
      expect(res.text).to.not.include("hunter");
    });

    it("a Connect GET whose message does not decode is MALFORMED_REQUEST and audited; a good one is answered", async () => {
      const get = (query: string) =>
        new Promise<{ status: number; body: string; requestId: string }>((resolve, reject) => {
          const requestId = randomUUID();
          const stream = session.request({ ":method": "GET", ":path": `/spike.nexus.v1.OperatorService/GetStatus?${query}`, "x-request-id": requestId });
          let status = 0;
          let body = "";
          stream.setEncoding("utf8");
          stream.on("response", (h) => (status = Number(h[":status"])));
          stream.on("data", (c: string) => (body += c));
          stream.on("end", () => resolve({ status, body, requestId }));
          stream.on("error", reject);
          stream.end();
        });
      const bad = await get(`encoding=json&message=${encodeURIComponent('{"nope":1}')}`);
      expect(bad.status, bad.body).to.equal(400);
      expect(await auditOf(bad.requestId)).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
      const truncatedProto = await get(`encoding=proto&base64=1&message=${Buffer.from(truncated).toString("base64url")}`);
      expect(truncatedProto.status, truncatedProto.body).to.equal(400);
      expect(await auditOf(truncatedProto.requestId)).to.deep.equal(["error INVALID_ARGUMENT MALFORMED_REQUEST"]);
      const good = await get(`encoding=json&message=${encodeURIComponent("{}")}`);
      expect(good.status, good.body).to.equal(200);
      expect(await auditOf(good.requestId)).to.deep.equal(["ok OK undefined"]);
    });

    it("a gzip Connect body is decoded and checked like a plain one; an unsupported compression is UNIMPLEMENTED and audited", async () => {
      const send = (body: Uint8Array | string, encoding: string) => {
        const requestId = randomUUID();
        return connectRaw(session, PUT_SECRET, body, "application/json", { "content-encoding": encoding, "x-request-id": requestId }).then((r) => ({ ...r, requestId }));
      };
      const path = `gzip/${randomUUID()}`;
      const good = await send(gzipSync(JSON.stringify({ path, data: { k: "v" } })), "gzip");
      expect(good.status, good.body.toString()).to.equal(200);
      const typo = await send(gzipSync(JSON.stringify({ path, data: { k: "v" }, cass: 1 })), "gzip");
      expect(typo.status).to.equal(400);
      expect(await auditOf(typo.requestId)).to.deep.equal(["error INVALID_ARGUMENT UNKNOWN_FIELD"]);
      const bomb = await send(gzipSync(Buffer.alloc(MAX_MESSAGE_BYTES * 4, 0x20)), "gzip");
      expect(bomb.status).to.equal(429);
      expect(await auditOf(bomb.requestId)).to.deep.equal(["error RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE"]);
      const odd = await send("{}", "zstd");
      expect(odd.status, odd.body.toString()).to.equal(501);
      expect(await auditOf(odd.requestId)).to.deep.equal(["error UNIMPLEMENTED UNSUPPORTED_COMPRESSION"]);
    });

    it("a gRPC body on the Connect port that does not decode is INVALID_ARGUMENT MALFORMED_REQUEST and is audited", async () => {
      const { err, requestId } = await rawCall(grpcOnConnectPort, PUT_SECRET, truncated);
      expect(err?.code, err?.details).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(await auditOf(requestId)).to.deep.equal(["error INVALID_ARGUMENT MALFORMED_REQUEST"]);
    });
  });

  describe("oversized messages", () => {
    const big = () => toBinary(PutSecretRequestSchema, create(PutSecretRequestSchema, { path: `big/${randomUUID()}`, data: { k: "x".repeat(MAX_MESSAGE_BYTES + 10) } }));
    it("a message over the limit is RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE on the gRPC listener and is audited", async () => {
      const { err, requestId } = await rawCall(grpcRaw, PUT_SECRET, big());
      expect(err?.code, err?.details).to.equal(grpc.status.RESOURCE_EXHAUSTED);
      expect(await auditOf(requestId)).to.deep.equal(["error RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE"]);
    });

    it("a message over the limit is RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE on the Connect listener (Connect and gRPC) and is audited", async () => {
      const res = await connectCall(PUT_SECRET, big(), "application/proto");
      expect(res.status, res.text).to.equal(429);
      expect(res.text).to.include("MESSAGE_TOO_LARGE");
      expect(await auditOf(res.requestId)).to.deep.equal(["error RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE"]);
      const { err, requestId } = await rawCall(grpcOnConnectPort, PUT_SECRET, big());
      expect(err?.code, err?.details).to.equal(grpc.status.RESOURCE_EXHAUSTED);
      expect(await auditOf(requestId)).to.deep.equal(["error RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE"]);
    });
  });

  describe("unknown methods", () => {
    const NOPE = "/spike.nexus.v1.SecretService/Nope";
    it("an unknown method is UNIMPLEMENTED UNKNOWN_METHOD on both listeners and is audited with its caller", async () => {
      for (const client of [grpcRaw, grpcOnConnectPort]) {
        const { err, requestId } = await rawCall(client, NOPE, new Uint8Array());
        expect(err?.code, err?.details).to.equal(grpc.status.UNIMPLEMENTED);
        expect(await auditOf(requestId)).to.deep.equal(["error UNIMPLEMENTED UNKNOWN_METHOD"]);
        const [event] = await db`SELECT caller, rpc FROM audit_events WHERE request_id = ${requestId}`;
        expect(event).to.deep.equal({ caller: SUPERUSER_ID, rpc: NOPE });
      }
      const res = await connectCall(NOPE, "{}", "application/json");
      expect(res.status, res.text).to.equal(404);
      expect(JSON.parse(res.text)).to.deep.include({ code: "unimplemented" });
      expect(await auditOf(res.requestId)).to.deep.equal(["error UNIMPLEMENTED UNKNOWN_METHOD"]);
    });

    it("reflection v1alpha on the Connect port (which serves v1 only) is an audited unknown method", async () => {
      const path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
      const { err, requestId } = await rawCall(grpcOnConnectPort, path, new Uint8Array());
      expect(err?.code).to.equal(grpc.status.UNIMPLEMENTED);
      expect(await auditOf(requestId)).to.deep.equal(["error UNIMPLEMENTED UNKNOWN_METHOD"]);
    });
  });

  describe("request shapes a served method does not take (Connect port)", () => {
    const GET_STATUS = "/spike.nexus.v1.OperatorService/GetStatus";
    const refusals = [
      { what: "a gRPC-Web text (base64) body", path: GET_STATUS, contentType: "application/grpc-web-text", body: "AAAAAAA=" },
      { what: "a text/plain body", path: GET_STATUS, contentType: "text/plain", body: "{}" },
      { what: "a Connect streaming content type on a unary method", path: GET_STATUS, contentType: "application/connect+json", body: "\0\0\0\0\x02{}" },
      { what: "a PutSecret as text/plain", path: PUT_SECRET, contentType: "text/plain", body: JSON.stringify({ path: "shapes/plain", data: { k: "v" } }) },
    ];
    for (const { what, path, contentType, body } of refusals) {
      it(`${what} is answered 415, as connect-es would, and audited as UNSUPPORTED_MEDIA_TYPE with its caller`, async () => {
        const res = await connectCall(path, body, contentType);
        expect(res.status, res.text).to.equal(415);
        expect(await auditOf(res.requestId)).to.deep.equal(["error INVALID_ARGUMENT UNSUPPORTED_MEDIA_TYPE"]);
        const [event] = await db`SELECT caller, rpc FROM audit_events WHERE request_id = ${res.requestId}`;
        expect(event).to.deep.equal({ caller: SUPERUSER_ID, rpc: path });
      });
    }

    const get = (path: string, requestId: string) =>
      new Promise<number>((resolve, reject) => {
        const stream = session.request({ ":method": "GET", ":path": path, "x-request-id": requestId });
        stream.on("response", (h) => resolve(Number(h[":status"])));
        stream.on("error", reject);
        stream.resume();
        stream.end();
      });

    it("a GET on a method with side effects (PutSecret) is answered 405, audited as METHOD_NOT_ALLOWED, and writes nothing", async () => {
      const requestId = randomUUID();
      const message = encodeURIComponent(JSON.stringify({ path: "shapes/get", data: { k: "v" } }));
      expect(await get(`${PUT_SECRET}?encoding=json&message=${message}&connect=v1`, requestId)).to.equal(405);
      expect(await auditOf(requestId)).to.deep.equal(["error INVALID_ARGUMENT METHOD_NOT_ALLOWED"]);
      expect(ok(await server.client("grpc").call(SecretService.method.listSecrets, { prefix: "shapes/" })).paths).to.deep.equal([]);
    });

    it("a GET on a method without side effects in an encoding other than json or proto is answered 415 and audited", async () => {
      const requestId = randomUUID();
      expect(await get(`${GET_STATUS}?encoding=xml&message=x&connect=v1`, requestId)).to.equal(415);
      expect(await auditOf(requestId)).to.deep.equal(["error INVALID_ARGUMENT UNSUPPORTED_MEDIA_TYPE"]);
    });
  });

  describe("FieldMask paths in errors", () => {
    it("Connect JSON names update_mask paths in lowerCamelCase, as a JSON caller must send them", async () => {
      const path = `mask/${randomUUID()}`;
      ok(await server.client("grpc").call(SecretService.method.putSecret, { path, data: { k: "v" } }));
      const res = await connectJson(session, UPDATE_METADATA, JSON.stringify({ path, maxVersions: 3, updateMask: "maxVersions,cass" }));
      expect(res.status, res.body).to.equal(400);
      const message = JSON.parse(res.body).message as string;
      expect(message).to.equal('updateMask: "cass" cannot be updated; use maxVersions, customMetadata, expiresAt or rotation');
      const empty = await connectJson(session, UPDATE_METADATA, JSON.stringify({ path }));
      expect(JSON.parse(empty.body).message).to.equal("updateMask: name at least one of maxVersions, customMetadata, expiresAt or rotation");
      const snake = await connectJson(session, UPDATE_METADATA, JSON.stringify({ path, maxVersions: 3, updateMask: "max_versions" }));
      expect(snake.status, snake.body).to.equal(400);
      expect(JSON.parse(snake.body).message).to.include("FieldMask paths must be lowerCamelCase in JSON");
      const good = await connectJson(session, UPDATE_METADATA, JSON.stringify({ path, maxVersions: 3, updateMask: "maxVersions" }));
      expect(good.status, good.body).to.equal(200);
    });

    it("binary callers get snake_case paths in errors, and may send camelCase paths", async () => {
      const path = `mask/${randomUUID()}`;
      const client = server.client("grpc");
      ok(await client.call(SecretService.method.putSecret, { path, data: { k: "v" } }));
      const bad = await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 3, updateMask: { paths: ["cass"] } });
      expect(bad.message).to.equal('update_mask: "cass" cannot be updated; use max_versions, custom_metadata, expires_at or rotation');
      ok(await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 4, updateMask: { paths: ["maxVersions"] } }));
      const meta = ok(await client.call(SecretService.method.getSecretMetadata, { path }));
      expect(meta.metadata?.maxVersions).to.equal(4);
    });
  });
});
