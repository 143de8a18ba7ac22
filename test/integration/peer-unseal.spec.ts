// Peer unseal (issue 16 §3, ADR 0012) with real `nexus serve` processes on one
// PostgreSQL: a sealed replica takes the keys from an unsealed peer over mTLS,
// only the server's own SPIFFE ID may ask, an endpoint a database writer
// advertises is not believed unless it proves the server ID, and a cluster
// seal holds until a person unseals one replica with the password.

import { expect } from "chai";
import type postgres from "postgres";
import { OperatorService, SealScope } from "../../gen/spike/nexus/v1/operator_pb.js";
import {
  ReplicaService,
  RequestUnsealKeysRequestSchema,
  RequestUnsealKeysResponseSchema,
  type RequestUnsealKeysRequest,
} from "../../gen/spike/nexus/v1/replica_pb.js";
import { grpcNexusClient } from "../../src/client/nexus-client.js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { createPrivateKey, sign } from "node:crypto";
import {
  ephemeralKey,
  handoverNonce,
  openRootKeyFromPeer,
  requestTranscript,
  responseTranscript,
  sealRootKeyForPeer,
  type RequestHalf,
} from "../../src/keys/peer-handover.js";
import { startReplica, unsealReplica, type NexusReplica } from "../support/nexus-replica.js";
import { ADMIN_PASSWORD, adminSession, ok, openDatabase } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";
import { writePkiFiles, type IssuedCert } from "../support/test-pki.js";
import { createTestPki, NEXUS_ID, WORKLOAD_ID, type TestPki } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

const RPC = "/spike.nexus.v1.ReplicaService/RequestUnsealKeys";

async function sealed(replica: NexusReplica): Promise<boolean> {
  return ok(await replica.client().call(OperatorService.method.getStatus, {}), `GetStatus on ${replica.name}`).sealed;
}

async function serving(replica: NexusReplica): Promise<boolean> {
  const h = await replica.health.check();
  return "status" in h && h.status === "SERVING";
}

/** A well-formed request, signed by nobody the server trusts: authorization must refuse it before anything else. */
function unsignedRequest() {
  return { requesterNonce: handoverNonce(), requesterPublicKey: ephemeralKey().publicKey, requesterCertificateChain: "", requesterSignature: new Uint8Array(0) };
}

describe("peer unseal: replicas unseal each other over mTLS", function () {
  this.timeout(180_000);
  let pki: TestPki;
  let databaseUrl: string;
  let db: postgres.Sql;
  const replicas = new Map<string, NexusReplica>();
  const start = async (name: string, env: Record<string, string> = {}) => {
    const r = await startReplica({ name, pki, databaseUrl, env });
    replicas.set(name, r);
    return r;
  };

  before(async () => {
    pki = await createTestPki();
    databaseUrl = await createTestDatabase("peer_unseal");
    db = openDatabase(databaseUrl);
    const a = await start("a");
    await Promise.all([start("b"), start("c")]);
    ok(await a.client().call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }), "Initialize on a");
  });

  after(async () => {
    await Promise.all([...replicas.values()].map((r) => r.stop().catch(() => {})));
    await db?.end();
    await pki?.remove();
  });

  it("replicas started sealed take the keys from the one initialized, without a password, and both sides audit the handover", async () => {
    for (const name of ["b", "c"]) await eventually(async () => expect(await serving(replicas.get(name)!), name).to.equal(true), { timeoutMs: 15_000 });
    await eventually(async () => {
      const rows = await db`SELECT replica_id, caller, outcome, detail FROM audit_events WHERE rpc = ${RPC} AND outcome = 'ok'`;
      // Two responder events (the pipeline's) and two requester events (detail.handover = received).
      expect(rows.filter((r) => r.detail.handover === "received")).to.have.length(2);
      expect(rows.filter((r) => r.detail.handover === undefined && r.caller === NEXUS_ID)).to.have.length(2);
    });
  });

  it("two replicas killed with SIGKILL and restarted serve within 5 s, without a password", async () => {
    await Promise.all(["b", "c"].map((n) => replicas.get(n)!.process.kill()));
    await Promise.all(["b", "c"].map((n) => replicas.get(n)!.stop().catch(() => {})));
    const began = Date.now();
    const restarted = await Promise.all(["b", "c"].map((n) => start(n)));
    await Promise.all(restarted.map((r) => eventually(async () => expect(await serving(r), r.name).to.equal(true), { timeoutMs: 10_000, intervalMs: 50 })));
    const tookMs = Date.now() - began;
    expect(tookMs, "ms from spawning both replicas to both SERVING").to.be.below(5_000);
    for (const r of restarted) expect(await sealed(r)).to.equal(false);
  });

  it("a workload SVID or a foreign-trust-domain SVID asking for the keys gets PERMISSION_DENIED and an audit event", async () => {
    const a = replicas.get("a")!;
    const workload = a.client(pki.workload);
    const denied = await workload.call(ReplicaService.method.requestUnsealKeys, unsignedRequest());
    expect(denied.code).to.equal("PERMISSION_DENIED");
    // Refused by authorization, not only by the handshake's signature check further on.
    expect(denied.reason).to.equal("NOT_AUTHORIZED");

    const foreign = await pki.ca.issue({ uris: ["spiffe://other.org/spike/nexus"] });
    const refused = await a.client(foreign).call(ReplicaService.method.requestUnsealKeys, unsignedRequest());
    // Even signed by the trusted CA and naming the server's path: only NEXUS_SERVER_ID may ask, so not this ID.
    expect({ code: refused.code, reason: refused.reason }).to.deep.equal({ code: "PERMISSION_DENIED", reason: "NOT_AUTHORIZED" });
    expect(refused.message).to.contain("spiffe://other.org/spike/nexus");
    // Elsewhere a foreign trust domain stays what authentication says it is.
    const elsewhere = await a.client(foreign).call(OperatorService.method.getStatus, {});
    expect({ code: elsewhere.code, reason: elsewhere.reason }).to.deep.equal({ code: "UNAUTHENTICATED", reason: "FOREIGN_TRUST_DOMAIN" });

    await eventually(async () => {
      const rows = await db`SELECT caller, code, detail FROM audit_events WHERE rpc = ${RPC} AND outcome = 'denied'`;
      expect(rows.some((r) => r.caller === WORKLOAD_ID && r.code === "PERMISSION_DENIED" && r.detail.reason === "NOT_AUTHORIZED")).to.equal(true);
      expect(rows.filter((r) => r.code === "PERMISSION_DENIED" && r.detail.reason === "NOT_AUTHORIZED").length, "both refusals audited").to.be.at.least(2);
    });
  });

  it("a replica's own SVID without a valid handshake signature gets no keys", async () => {
    const a = replicas.get("a")!;
    const asServer = a.client(pki.nexus);
    const result = await asServer.call(ReplicaService.method.requestUnsealKeys, unsignedRequest());
    expect(result.code).to.equal("PERMISSION_DENIED");
    expect(result.reason).to.equal("PEER_SIGNATURE_INVALID");
  });

  it("a handshake signed by a workload SVID's key, on a connection that presents the server SVID, gets no keys", async () => {
    const a = replicas.get("a")!;
    const half = { requesterId: NEXUS_ID, responderId: NEXUS_ID, requesterNonce: handoverNonce(), requesterPublicKey: ephemeralKey().publicKey };
    const signature = sign("sha256", requestTranscript(half), createPrivateKey(pki.workload.keyPem));
    const result = await a.client(pki.nexus).call(ReplicaService.method.requestUnsealKeys, {
      requesterNonce: half.requesterNonce,
      requesterPublicKey: half.requesterPublicKey,
      requesterCertificateChain: pki.workload.certPem,
      requesterSignature: signature,
    });
    expect({ code: result.code, reason: result.reason }).to.deep.equal({ code: "PERMISSION_DENIED", reason: "PEER_SIGNATURE_INVALID" });
    // The same request signed with the server SVID's key is answered (the check above is the only difference).
    const good = sign("sha256", requestTranscript(half), createPrivateKey(pki.nexus.keyPem));
    const answered = await a.client(pki.nexus).call(ReplicaService.method.requestUnsealKeys, {
      requesterNonce: half.requesterNonce,
      requesterPublicKey: half.requesterPublicKey,
      requesterCertificateChain: pki.nexus.certPem,
      requesterSignature: good,
    });
    expect(answered.code).to.equal("OK");
  });

  it("a replica with NEXUS_PEER_UNSEAL=off stays sealed while its peers are unsealed", async () => {
    const off = await start("off", { NEXUS_PEER_UNSEAL: "off" });
    await sleep(4_000);
    expect(await sealed(off)).to.equal(true);
    expect(await serving(off)).to.equal(false);
    await off.stop();
    replicas.delete("off");
  });

  it("a replica sealed on request stays sealed (its peers do not unseal it) until it is unsealed", async () => {
    const [a, b] = [replicas.get("a")!, replicas.get("b")!];
    const token = await adminSession(a.client());
    ok(await b.client().call(OperatorService.method.seal, { scope: SealScope.REPLICA }, { bearerToken: token }), "Seal b");
    await sleep(4_000);
    expect(await sealed(b)).to.equal(true);
    expect(await sealed(a)).to.equal(false);
    await unsealReplica(b, ADMIN_PASSWORD);
    expect(await sealed(b)).to.equal(false);
  });

  it("a forged cluster-seal row seals nobody and lifts nothing: unsealed replicas stay unsealed, and hand out no keys while it is there", async () => {
    const [a, c] = [replicas.get("a")!, replicas.get("c")!];
    const token = await adminSession(a.client());
    await db`INSERT INTO cluster_seal (id, epoch, sealed, changed_by, mac) VALUES (1, 99, true, 'forger', ${Buffer.alloc(36)})
             ON CONFLICT (id) DO UPDATE SET epoch = 99, sealed = true, changed_by = 'forger', mac = EXCLUDED.mac`;
    await db`SELECT pg_notify('nexus_cluster_seal', '99')`;
    await sleep(3_000);
    expect(await sealed(a)).to.equal(false);
    // Responders refuse: a replica sealed now stays sealed.
    ok(await c.client().call(OperatorService.method.seal, {}, { bearerToken: token }), "Seal c");
    await db`UPDATE cluster_seal SET sealed = false`;
    await sleep(4_000);
    expect(await sealed(c)).to.equal(true);
    // An Unseal with the password replaces the forged row; peers hand out keys again.
    await unsealReplica(c, ADMIN_PASSWORD);
    const [row] = await db`SELECT sealed, changed_by FROM cluster_seal`;
    expect(row).to.deep.include({ sealed: false });
    expect(row.changed_by).to.not.equal("forger");
  });

  it("a cluster seal seals every replica, peers do not undo it (not even for a restarted replica), and an Unseal with the password on one brings the others back", async () => {
    const [a, b] = [replicas.get("a")!, replicas.get("b")!];
    const token = await adminSession(a.client());
    ok(await a.client().call(OperatorService.method.seal, { scope: SealScope.CLUSTER }, { bearerToken: token }), "cluster Seal on a");
    for (const r of replicas.values()) await eventually(async () => expect(await sealed(r), r.name).to.equal(true), { timeoutMs: 5_000 });
    // Killed and restarted: it starts sealed and asks nobody.
    await replicas.get("c")!.process.kill();
    await replicas.get("c")!.stop().catch(() => {});
    await start("c");
    await sleep(4_000);
    for (const r of replicas.values()) expect(await sealed(r), `${r.name} after the cluster seal`).to.equal(true);

    await unsealReplica(b, ADMIN_PASSWORD);
    for (const r of replicas.values()) await eventually(async () => expect(await serving(r), r.name).to.equal(true), { timeoutMs: 15_000 });
  });
});

describe("peer unseal: an endpoint advertised through the database", function () {
  this.timeout(120_000);
  let pki: TestPki;
  let databaseUrl: string;
  let db: postgres.Sql;
  const running: NexusReplica[] = [];
  let impostorPki: { remove(): Promise<void> } | undefined;
  let impostor: NexusReplica;
  let victim: NexusReplica;
  let fake: grpc.Server | undefined;
  const advertise = (port: number) => db`
    INSERT INTO replica_adverts (instance_id, address, heartbeat_at) VALUES ('evil', ${`127.0.0.1:${port}`}, now())
    ON CONFLICT (instance_id) DO UPDATE SET address = EXCLUDED.address, heartbeat_at = now()`;

  before(async () => {
    pki = await createTestPki();
    databaseUrl = await createTestDatabase("peer_impostor");
    db = openDatabase(databaseUrl);
  });

  after(async () => {
    await Promise.all(running.map((r) => r.stop().catch(() => {})));
    fake?.forceShutdown();
    await db?.end();
    await impostorPki?.remove();
    await pki?.remove();
  });

  it("a sealed replica pointed at an endpoint that presents a workload SVID (even one holding the keys) refuses it and stays sealed", async () => {
    const first = await startReplica({ name: "first", pki, databaseUrl });
    running.push(first);
    ok(await first.client().call(OperatorService.method.initialize, { adminPassword: ADMIN_PASSWORD }), "Initialize");

    // A full Nexus serving with a workload SVID, unsealed with the password: it holds the keys and answers the RPC.
    const workloadFiles = await workloadSvidFiles(pki, pki.workload);
    impostorPki = workloadFiles;
    impostor = await startReplica({
      name: "impostor",
      pki: { ...pki, files: workloadFiles.files },
      databaseUrl,
      env: { NEXUS_SERVER_ID: WORKLOAD_ID },
    });
    running.push(impostor);
    const impostorClient = grpcNexusClient(`127.0.0.1:${impostor.grpcPort}`, { cert: pki.superuser.certPem, key: pki.superuser.keyPem, ca: pki.ca.certPem, serverId: WORKLOAD_ID });
    ok(await impostorClient.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }, { deadlineMs: 20_000 }), "Unseal the impostor");
    impostorClient.close();

    // The only honest replica leaves; a new one starts sealed.
    await first.stop();
    running.splice(running.indexOf(first), 1);
    victim = await startReplica({ name: "victim", pki, databaseUrl });
    running.push(victim);
    // The database writer advertises the impostor, and keeps its heartbeat fresh.
    await advertise(impostor.grpcPort);
    const keepFresh = setInterval(() => void advertise(impostor.grpcPort).catch(() => {}), 500);
    try {
      await eventually(
        async () => {
          const rows = await db`SELECT detail FROM audit_events WHERE rpc = ${RPC} AND outcome = 'denied' AND detail->>'handover' = 'refused'`;
          expect(rows.length, "refusals audited by the victim").to.be.above(0);
        },
        { timeoutMs: 10_000 },
      );
      await sleep(2_000);
      expect(await sealed(victim)).to.equal(true);
      expect(await serving(victim)).to.equal(false);
    } finally {
      clearInterval(keepFresh);
    }
  });

  it("an endpoint that presents a workload SVID in TLS is refused even when its handshake is signed with the server SVID's key and sends the right root key", async () => {
    const rootKey = await takeRootKey(impostor.grpcPort, pki, pki.workload, WORKLOAD_ID);
    const other = await fakeResponder(pki, rootKey.id, rootKey.key, () => pki.nexus, pki.workload);
    const port = (other as grpc.Server & { port: number }).port;
    await advertise(port);
    const keepFresh = setInterval(() => void advertise(port).catch(() => {}), 500);
    try {
      await eventually(async () => {
        const rows = await db`SELECT detail FROM audit_events WHERE rpc = ${RPC} AND outcome = 'denied' AND detail->>'peer' = ${`127.0.0.1:${port}`}`;
        expect(rows.length, "refusals of the endpoint audited").to.be.above(0);
      });
      await sleep(1_000);
      expect(await sealed(victim)).to.equal(true);
    } finally {
      clearInterval(keepFresh);
      other.forceShutdown();
    }
  });

  it("an endpoint that presents the server SVID in TLS but signs the handshake with another key is refused, though its sealed root key is right", async () => {
    // The real root key, taken from the impostor (its server ID is the workload's, so the workload may ask it).
    const rootKey = await takeRootKey(impostor.grpcPort, pki, pki.workload, WORKLOAD_ID);
    let signer: IssuedCert = pki.workload;
    fake = await fakeResponder(pki, rootKey.id, rootKey.key, () => signer);
    const port = (fake as grpc.Server & { port: number }).port;
    await db`DELETE FROM replica_adverts WHERE instance_id <> 'evil'`;
    await advertise(port);
    const keepFresh = setInterval(() => void advertise(port).catch(() => {}), 500);
    try {
      await eventually(async () => {
        const rows = await db`SELECT detail FROM audit_events WHERE rpc = ${RPC} AND outcome = 'denied' AND detail->>'peer' = ${`127.0.0.1:${port}`}`;
        expect(rows.map((r) => r.detail.why)).to.include("the handshake is not signed by an SVID of the server ID");
      });
      expect(await sealed(victim)).to.equal(true);
      // Control: the same endpoint signing with the server SVID's key is believed (the signature was the only thing wrong).
      signer = pki.nexus;
      await eventually(async () => expect(await sealed(victim)).to.equal(false), { timeoutMs: 15_000 });
    } finally {
      clearInterval(keepFresh);
    }
  });
});

/** Asks the replica on `port` for the root key with `cert` (its key signs), as a replica whose server ID is `serverId` would. */
async function takeRootKey(port: number, pki: TestPki, cert: IssuedCert, serverId: string): Promise<{ id: number; key: Buffer }> {
  const own = ephemeralKey();
  const half: RequestHalf = { requesterId: serverId, responderId: serverId, requesterNonce: handoverNonce(), requesterPublicKey: own.publicKey };
  const client = grpcNexusClient(`127.0.0.1:${port}`, { cert: cert.certPem, key: cert.keyPem, ca: pki.ca.certPem, serverId });
  try {
    const r = ok(
      await client.call(ReplicaService.method.requestUnsealKeys, {
        requesterNonce: half.requesterNonce,
        requesterPublicKey: half.requesterPublicKey,
        requesterCertificateChain: cert.certPem,
        requesterSignature: sign("sha256", requestTranscript(half), createPrivateKey(cert.keyPem)),
      }),
      "RequestUnsealKeys",
    );
    const t = responseTranscript(half, { responderNonce: r.responderNonce, responderPublicKey: r.responderPublicKey, rootKeyId: r.rootKeyId });
    return { id: r.rootKeyId, key: openRootKeyFromPeer(own.privateKey, r.responderPublicKey, t, r.sealedRootKey) };
  } finally {
    client.close();
  }
}

/**
 * A ReplicaService endpoint serving TLS with the server SVID that answers with
 * the right root key, correctly sealed, but signs with `signer()`'s key; `tls`
 * is the SVID it presents.
 */
async function fakeResponder(pki: TestPki, rootKeyId: number, rootKey: Buffer, signer: () => IssuedCert, tls: IssuedCert = pki.nexus): Promise<grpc.Server> {
  const server = new grpc.Server();
  const method = {
    path: "/spike.nexus.v1.ReplicaService/RequestUnsealKeys",
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: RequestUnsealKeysRequest) => Buffer.from(toBinary(RequestUnsealKeysRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(RequestUnsealKeysRequestSchema, b),
    responseSerialize: (m: ReturnType<typeof create<typeof RequestUnsealKeysResponseSchema>>) => Buffer.from(toBinary(RequestUnsealKeysResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(RequestUnsealKeysResponseSchema, b),
  };
  server.addService({ requestUnsealKeys: method } as unknown as grpc.ServiceDefinition, {
    requestUnsealKeys: (call: grpc.ServerUnaryCall<RequestUnsealKeysRequest, unknown>, done: grpc.sendUnaryData<unknown>) => {
      const req = call.request;
      const half: RequestHalf = { requesterId: NEXUS_ID, responderId: NEXUS_ID, requesterNonce: req.requesterNonce, requesterPublicKey: req.requesterPublicKey };
      const own = ephemeralKey();
      const s = { responderNonce: handoverNonce(), responderPublicKey: own.publicKey, rootKeyId };
      const t = responseTranscript(half, s);
      const by = signer();
      done(
        null,
        create(RequestUnsealKeysResponseSchema, {
          ...s,
          sealedRootKey: sealRootKeyForPeer(own.privateKey, req.requesterPublicKey, t, rootKeyId, rootKey),
          responderCertificateChain: by.certPem,
          responderSignature: sign("sha256", t, createPrivateKey(by.keyPem)),
        }),
      );
    },
  });
  const credentials = grpc.ServerCredentials.createSsl(Buffer.from(pki.ca.certPem), [{ cert_chain: Buffer.from(tls.certPem), private_key: Buffer.from(tls.keyPem) }], true);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", credentials, (err, p) => (err ? reject(err) : resolve(p))));
  return Object.assign(server, { port });
}

/** SVID files for a Nexus process that serves with `cert` (for an impostor). */
async function workloadSvidFiles(pki: TestPki, cert: IssuedCert) {
  const dir = `${pki.dir}-impostor`;
  await writePkiFiles(dir, { "ca.pem": pki.ca.certPem, "svid.pem": cert.certPem, "svid_key.pem": cert.keyPem });
  const { rm } = await import("node:fs/promises");
  return {
    files: { ca: `${dir}/ca.pem`, cert: `${dir}/svid.pem`, key: `${dir}/svid_key.pem` },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
