// A bounded fuzz run of mutated protobuf and JSON request bodies against both
// listeners (gRPC; Connect binary, Connect JSON and gRPC on the Connect port).
// Whatever arrives, the server must answer with a status that is not INTERNAL
// or UNKNOWN, must keep serving, and must have audited every call.
// NEXUS_FUZZ_RUNS enlarges the run (runs per protocol; default 40) and
// NEXUS_FUZZ_SEED replays one that failed (fast-check prints the seed).

import { expect } from "chai";
import fc from "fast-check";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary, toJsonString, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import type http2 from "node:http2";
import { randomUUID } from "node:crypto";
import { GetStatusRequestSchema } from "../../gen/spike/nexus/v1/operator_pb.js";
import { UpdatePolicyRequestSchema, Permission } from "../../gen/spike/nexus/v1/policy_pb.js";
import { GetSecretRequestSchema, ListSecretsRequestSchema, PutSecretRequestSchema, UpdateSecretMetadataRequestSchema } from "../../gen/spike/nexus/v1/secret_pb.js";
import { connectRaw, connectSession } from "../support/connect-json.js";
import { openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";

const RUNS = Number(process.env.NEXUS_FUZZ_RUNS ?? 40);
const SEED = process.env.NEXUS_FUZZ_SEED === undefined ? undefined : Number(process.env.NEXUS_FUZZ_SEED);

interface Seed {
  readonly path: string;
  readonly binary: Uint8Array;
  readonly json: string;
}

function seed<D extends DescMessage>(rpc: string, schema: D, init: MessageInitShape<D>): Seed {
  const message = create(schema, init);
  return { path: `/spike.nexus.v1.${rpc}`, binary: toBinary(schema, message), json: toJsonString(schema, message) };
}

const SEEDS: readonly Seed[] = [
  seed("OperatorService/GetStatus", GetStatusRequestSchema, {}),
  seed("SecretService/PutSecret", PutSecretRequestSchema, { path: "fuzz/a", data: { user: "u", password: "p" }, cas: 0, expiresAt: { seconds: 4_000_000_000n } }),
  seed("SecretService/GetSecret", GetSecretRequestSchema, { path: "fuzz/a", version: 1 }),
  seed("SecretService/ListSecrets", ListSecretsRequestSchema, { prefix: "fuzz/", pageSize: 10, pageToken: "" }),
  seed("SecretService/UpdateSecretMetadata", UpdateSecretMetadataRequestSchema, { path: "fuzz/a", maxVersions: 3, customMetadata: { owner: "t" }, updateMask: { paths: ["max_versions", "custom_metadata"] } }),
  seed("PolicyService/UpdatePolicy", UpdatePolicyRequestSchema, { name: "p", policy: { name: "p", pathPattern: "^fuzz/", permissions: [Permission.READ] }, updateMask: { paths: ["path_pattern"] } }),
];

type ByteEdit = { at: number; kind: "set" | "insert" | "truncate"; bytes: Uint8Array } | { kind: "append"; bytes: Uint8Array; at?: undefined };

const byteEdit: fc.Arbitrary<ByteEdit> = fc.oneof(
  fc.record({ kind: fc.constantFrom("set" as const, "insert" as const, "truncate" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
  // Appended bytes are often a well-formed unknown field.
  fc.record({ kind: fc.constant("append" as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 24 }) }),
);

function applyByteEdits(seedBytes: Uint8Array, edits: readonly ByteEdit[]): Uint8Array {
  let b = Buffer.from(seedBytes);
  for (const e of edits) {
    const at = e.at === undefined ? b.length : b.length === 0 ? 0 : e.at % (b.length + 1);
    if (e.kind === "set") {
      b = Buffer.from(b);
      e.bytes.forEach((v, i) => at + i < b.length && (b[at + i] = v));
    } else if (e.kind === "insert") b = Buffer.concat([b.subarray(0, at), e.bytes, b.subarray(at)]);
    else if (e.kind === "truncate") b = b.subarray(0, at);
    else b = Buffer.concat([b, e.bytes]);
  }
  return b;
}

/** A JSON body: the seed with keys set to odd values or unknown keys added, and sometimes text edits on top. */
const jsonBody = (s: Seed): fc.Arbitrary<string> =>
  fc
    .tuple(
      fc.array(fc.tuple(fc.oneof(fc.constantFrom(...Object.keys(JSON.parse(s.json) as object), "cass", "stage", "path", "updateMask"), fc.string({ maxLength: 8 })), fc.jsonValue({ maxDepth: 2 })), { maxLength: 3 }),
      fc.array(fc.record({ at: fc.nat(), text: fc.string({ unit: fc.constantFrom(..."{}[]\":,0123456789aeflnrstu\\ \u0000\ud800".split("")), maxLength: 4 }), cut: fc.nat({ max: 3 }) }), { maxLength: 2 }),
    )
    .map(([sets, edits]) => {
      const object = JSON.parse(s.json) as Record<string, unknown>;
      for (const [k, v] of sets) object[k] = v;
      let text = JSON.stringify(object);
      for (const e of edits) {
        const at = e.at % (text.length + 1);
        text = text.slice(0, at) + e.text + text.slice(at + e.cut);
      }
      return text;
    });

describe("fuzzed request bodies on both listeners", function () {
  this.timeout(120_000);
  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let grpcPort: grpc.Client;
  let grpcOnConnectPort: grpc.Client;
  let session: http2.ClientHttp2Session;
  const sent: string[] = [];

  const grpcClient = (port: number) =>
    new grpc.Client(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(Buffer.from(server.pki.ca.certPem), Buffer.from(server.pki.superuser.keyPem), Buffer.from(server.pki.superuser.certPem), {
        checkServerIdentity: () => undefined,
      }),
      { "grpc.ssl_target_name_override": "localhost" },
    );

  /** Sends one raw gRPC call and returns its status code. */
  const grpcCall = (client: grpc.Client, path: string, body: Uint8Array) =>
    new Promise<number>((resolve) => {
      const requestId = randomUUID();
      sent.push(requestId);
      const metadata = new grpc.Metadata();
      metadata.set("x-request-id", requestId);
      client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(body), metadata, {}, (err) => resolve(err?.code ?? grpc.status.OK));
    });

  /** Sends one Connect unary call and returns its Connect code ("ok" on success). */
  const connectCall = async (path: string, body: Uint8Array | string, contentType: string) => {
    const requestId = randomUUID();
    sent.push(requestId);
    const res = await connectRaw(session, path, body, contentType, { "x-request-id": requestId });
    if (res.status === 200) return "ok";
    const code = (JSON.parse(res.body.toString("utf8")) as { code?: string }).code;
    return `${code} (HTTP ${res.status})`;
  };

  const FAILURE_CODES = new Set<number>([grpc.status.INTERNAL, grpc.status.UNKNOWN]);
  const params = { numRuns: RUNS, seed: SEED, endOnFailure: true };

  before(async () => {
    server = await startSecretServer({ env: { NEXUS_MAX_MESSAGE_BYTES: String(16 * 1024) } });
    db = openDatabase(server.nexus.databaseUrl);
    grpcPort = grpcClient(server.nexus.grpcPort);
    grpcOnConnectPort = grpcClient(server.nexus.connectPort);
    session = connectSession(server);
  });

  after(async () => {
    session?.close();
    grpcPort?.close();
    grpcOnConnectPort?.close();
    await db?.end();
    await server?.stop();
  });

  const seedIndex = fc.nat({ max: SEEDS.length - 1 });
  const edits = fc.array(byteEdit, { minLength: 1, maxLength: 4 });

  it("mutated protobuf bodies on the gRPC listener never get INTERNAL or UNKNOWN", async () => {
    await fc.assert(
      fc.asyncProperty(seedIndex, edits, async (i, e) => {
        const code = await grpcCall(grpcPort, SEEDS[i].path, applyByteEdits(SEEDS[i].binary, e));
        expect(FAILURE_CODES.has(code), `status ${grpc.status[code]}`).to.equal(false);
      }),
      params,
    );
  });

  it("mutated protobuf bodies as gRPC on the Connect listener never get INTERNAL or UNKNOWN", async () => {
    await fc.assert(
      fc.asyncProperty(seedIndex, edits, async (i, e) => {
        const code = await grpcCall(grpcOnConnectPort, SEEDS[i].path, applyByteEdits(SEEDS[i].binary, e));
        expect(FAILURE_CODES.has(code), `status ${grpc.status[code]}`).to.equal(false);
      }),
      params,
    );
  });

  it("mutated protobuf bodies as Connect binary never get internal or unknown", async () => {
    await fc.assert(
      fc.asyncProperty(seedIndex, edits, async (i, e) => {
        const code = await connectCall(SEEDS[i].path, applyByteEdits(SEEDS[i].binary, e), "application/proto");
        expect(code).to.not.match(/^(internal|unknown|undefined)/);
      }),
      params,
    );
  });

  it("mutated JSON bodies as Connect JSON never get internal or unknown", async () => {
    await fc.assert(
      fc.asyncProperty(
        seedIndex.chain((i) => fc.tuple(fc.constant(i), jsonBody(SEEDS[i]))),
        async ([i, body]) => {
          const code = await connectCall(SEEDS[i].path, body, "application/json");
          expect(code, body).to.not.match(/^(internal|unknown|undefined)/);
        },
      ),
      params,
    );
  });

  it("after the run the server still serves, and every fuzzed call was audited", async () => {
    expect(await grpcCall(grpcPort, SEEDS[0].path, SEEDS[0].binary)).to.equal(grpc.status.OK);
    expect(await connectCall(SEEDS[0].path, SEEDS[0].json, "application/json")).to.equal("ok");
    const audited = new Set((await db`SELECT DISTINCT request_id FROM audit_events WHERE request_id = ANY(${sent})`).map((r) => r.request_id as string));
    const missing = sent.filter((id) => !audited.has(id));
    expect(missing, `${missing.length} of ${sent.length} calls have no audit event`).to.deep.equal([]);
    expect(sent.length).to.be.at.least(4 * RUNS);
  });
});
