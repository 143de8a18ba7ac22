// What a database writer (no admin password, no SVID key) can and cannot do
// to the audit log across restarts: events recorded while sealed are signed
// with the server's SVID and verify on any later replica; a row that neither a
// MAC nor a valid signature authenticates is a problem (and listed with
// verified=false), never "awaiting a MAC"; a missing event after a replica's
// last checkpoint is a crash gap, one it checkpointed is a deletion; and a
// ranged VerifyAuditLog does not lose an event whose time was moved away.

import { expect } from "chai";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AuditProblemKind, OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { auditSignatureInput, type AuditFields } from "../../src/audit/audit-event.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { SvidSigner } from "../../src/identity/svid-signature.js";
import { auditProblems } from "../support/audit-fixtures.js";
import { ADMIN_PASSWORD, adminSession, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { createAuthority } from "../support/test-pki.js";
import { NEXUS_ID, TRUST_DOMAIN } from "../support/test-server.js";

const HOUR = 3_600_000;

/** Restarts `server` as a new replica (sealed), unseals it and logs in. */
async function restartUnsealed(server: SecretTestServer) {
  const next = await server.restart();
  const client = next.client("grpc");
  ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
  return { server: next, client, token: await adminSession(client) };
}

/** Every event, newest first, as ListAuditEvents shows it. */
async function listed(client: NexusClient, token: string) {
  const page = ok(await client.call(OperatorService.method.listAuditEvents, { pageSize: 1000 }, { bearerToken: token }), "ListAuditEvents");
  return page.events;
}

describe("audit authenticity across restarts", function () {
  this.timeout(60_000);

  describe("a log with events recorded while sealed, read by a later replica", () => {
    let server: SecretTestServer;
    let client: NexusClient;
    let token: string;
    let db: ReturnType<typeof openDatabase>;
    let sealedReplica: string;

    before(async () => {
      const first = await startSecretServer();
      const firstClient = first.client("grpc");
      ok(await firstClient.call(SecretService.method.putSecret, { path: "authentic/1", data: { v: "1" } }));
      await seal(firstClient);
      for (let i = 0; i < 3; i++) ok(await firstClient.call(OperatorService.method.getStatus, {}));
      ({ server, client, token } = await restartUnsealed(first));
      db = openDatabase(server.nexus.databaseUrl);
      [{ replica_id: sealedReplica }] = await db`SELECT replica_id FROM audit_events WHERE rpc LIKE '%/Seal' AND outcome = 'ok'`;
    });

    after(async () => {
      await db?.end();
      await server?.stop();
    });

    it("events recorded while sealed carry an SVID signature and no MAC, and verify on the next replica", async () => {
      const sealedTime = await db`SELECT replica_id, mac, signature, signer FROM audit_events WHERE mac IS NULL`;
      // Seal (its event is built once sealed) and three GetStatus on the first replica.
      expect(sealedTime.filter((r) => r.replica_id === sealedReplica).length).to.equal(4);
      for (const r of sealedTime) {
        expect(r.signature, "signed").to.be.instanceOf(Buffer);
        expect(r.signer, "names its signer").to.have.length(32);
      }
      const signers = await db`SELECT certificate_sha256 FROM audit_signers`;
      expect(signers, "one SVID signed them all").to.have.length(1);

      const report = ok(await client.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
      expect(report.problems.map((p) => p.description)).to.deep.equal([]);
      expect(Number(report.eventsUnsealed), "signature-authenticated events").to.equal(sealedTime.length);
      const events = await listed(client, token);
      expect(events.filter((e) => !e.verified).map((e) => `${e.replicaId} ${e.sequence} ${e.rpc}`), "every genuine event is verified").to.deep.equal([]);
    });

    describe("reports rows a database writer made or changed", () => {
      interface Case {
        readonly what: string;
        /** Tampers; returns how to undo it. */
        readonly tamper: () => Promise<() => Promise<unknown>>;
        readonly expected: () => Promise<string[]>;
        /** The request_id of a forged row ListAuditEvents must show as verified=false. */
        readonly listedUnverified?: string;
      }
      const lastOf = async (replicaId: string) => Number((await db`SELECT max(sequence) AS m FROM audit_events WHERE replica_id = ${replicaId}`)[0].m);
      const sealedRow = async () => (await db`SELECT id, sequence::int AS sequence, caller FROM audit_events WHERE replica_id = ${sealedReplica} AND mac IS NULL AND rpc LIKE '%/GetStatus' ORDER BY sequence LIMIT 1`)[0];
      const forged = (fields: Partial<AuditFields> & { replicaId: string; sequence: number; requestId: string }): AuditFields => ({
        time: new Date(),
        caller: "spiffe://spike.ist/workload/forger",
        rpc: "/spike.nexus.v1.SecretService/GetSecret",
        path: "authentic/1",
        version: 1,
        outcome: "ok",
        code: "OK",
        detail: {},
        ...fields,
      });
      const insertForged = async (f: AuditFields, signature: { signature: Buffer; certificateSha256: Buffer; certificateChainPem: string } | null) => {
        if (signature !== null) {
          await db`INSERT INTO audit_signers (certificate_sha256, certificate_chain) VALUES (${signature.certificateSha256}, ${signature.certificateChainPem}) ON CONFLICT DO NOTHING`;
        }
        const [row] = await db`
          INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac, signature, signer)
          VALUES (${f.replicaId}, ${f.sequence}, ${f.time}, ${f.requestId}, ${f.caller}, ${f.rpc}, ${f.path}, ${f.version}, ${f.outcome}, ${f.code},
                  ${db.json(f.detail as never)}, NULL, ${signature?.signature ?? null}, ${signature?.certificateSha256 ?? null})
          RETURNING id`;
        return () => db`DELETE FROM audit_events WHERE id = ${row.id}`;
      };
      /** Signs like a server whose SVID is `cert` would. */
      const signAs = (cert: { certPem: string; keyPem: string }, f: AuditFields) =>
        new SvidSigner(() => ({ cert: Buffer.from(cert.certPem), key: Buffer.from(cert.keyPem) })).sign(auditSignatureInput(f));

      const CASES: Case[] = [
        {
          what: "a row with neither MAC nor signature after the sealed replica's last event: INSERTED",
          tamper: async () => insertForged(forged({ replicaId: sealedReplica, sequence: (await lastOf(sealedReplica)) + 1, requestId: "forged-unsigned" }), null),
          expected: async () => [`INSERTED ${sealedReplica} ${(await lastOf(sealedReplica))}`],
          listedUnverified: "forged-unsigned",
        },
        {
          what: "a signed row rewritten (caller changed): ALTERED",
          tamper: async () => {
            const row = await sealedRow();
            await db`UPDATE audit_events SET caller = 'spiffe://spike.ist/workload/someone-else' WHERE id = ${row.id}`;
            return () => db`UPDATE audit_events SET caller = ${row.caller} WHERE id = ${row.id}`;
          },
          expected: async () => [`ALTERED ${sealedReplica} ${(await sealedRow()).sequence}`],
        },
        {
          what: "a signed row with its signature removed: ALTERED",
          tamper: async () => {
            const row = await sealedRow();
            const [{ signature }] = await db`SELECT signature FROM audit_events WHERE id = ${row.id}`;
            await db`UPDATE audit_events SET signature = NULL WHERE id = ${row.id}`;
            return () => db`UPDATE audit_events SET signature = ${signature} WHERE id = ${row.id}`;
          },
          expected: async () => [`ALTERED ${sealedReplica} ${(await sealedRow()).sequence}`],
        },
        {
          what: "a row signed by an SVID with the server's SPIFFE ID from a CA outside the trust bundle: INSERTED",
          tamper: async () => {
            const rogue = await createAuthority({ trustDomain: TRUST_DOMAIN, name: "rogue CA" });
            const leaf = await rogue.issue({ uris: [NEXUS_ID] });
            const f = forged({ replicaId: sealedReplica, sequence: (await lastOf(sealedReplica)) + 1, requestId: "forged-rogue-ca" });
            return insertForged(f, signAs(leaf, f));
          },
          expected: async () => [`INSERTED ${sealedReplica} ${(await lastOf(sealedReplica))}`],
          listedUnverified: "forged-rogue-ca",
        },
        {
          what: "a row signed by a genuine SVID of the trust domain that is not the server's (a workload's): INSERTED",
          tamper: async () => {
            const f = forged({ replicaId: sealedReplica, sequence: (await lastOf(sealedReplica)) + 1, requestId: "forged-workload" });
            return insertForged(f, signAs(server.pki.workload, f));
          },
          expected: async () => [`INSERTED ${sealedReplica} ${(await lastOf(sealedReplica))}`],
          listedUnverified: "forged-workload",
        },
      ];

      for (const c of CASES) {
        it(c.what, async () => {
          expect(await auditProblems(client, token), "clean before").to.deep.equal([]);
          const undo = await c.tamper();
          try {
            expect(await auditProblems(client, token)).to.deep.equal(await c.expected());
            if (c.listedUnverified !== undefined) {
              const shown = (await listed(client, token)).filter((e) => e.requestId === c.listedUnverified);
              expect(shown.map((e) => e.verified), "listed, and not verified").to.deep.equal([false]);
            }
          } finally {
            await undo();
          }
          expect(await auditProblems(client, token), "clean again once undone").to.deep.equal([]);
        });
      }
    });

    it("a ranged VerifyAuditLog still reports an event whose time was moved out of the range, and a later range does not", async () => {
      const start = new Date();
      for (let i = 0; i < 3; i++) ok(await client.call(SecretService.method.putSecret, { path: `authentic/ranged/${i}`, data: { v: "x" } }));
      const end = new Date(Date.now() + 1);
      const [target] = await db`SELECT id, sequence::int AS sequence, replica_id, time FROM audit_events WHERE path = 'authentic/ranged/1'`;
      const ranged = async (from: Date, to: Date) => {
        const report = ok(
          await client.call(OperatorService.method.verifyAuditLog, { startTime: timestampFromDate(from), endTime: timestampFromDate(to) }, { bearerToken: token }),
          "VerifyAuditLog",
        );
        return report.problems.map((p) => `${AuditProblemKind[p.kind]} ${p.replicaId} ${p.sequence}`);
      };
      await db`UPDATE audit_events SET time = time - interval '30 days' WHERE id = ${target.id}`;
      try {
        const altered = `ALTERED ${target.replica_id} ${target.sequence}`;
        expect(await auditProblems(client, token), "unranged").to.deep.equal([altered]);
        expect(await ranged(start, end), "in the range it was moved out of").to.deep.equal([altered]);
        expect(await ranged(new Date(end.getTime() + HOUR), new Date(end.getTime() + 2 * HOUR)), "not in a range after its neighbours").to.deep.equal([]);
      } finally {
        await db`UPDATE audit_events SET time = ${target.time} WHERE id = ${target.id}`;
      }
    });
  });

  it("an event missing after a replica's last checkpoint (no final checkpoint: it crashed) is a CRASH_GAP; a checkpointed one is DELETED", async () => {
    // The first replica checkpoints (VerifyAuditLog writes one), records more
    // events, then stops without a final checkpoint (sealed, as after a
    // crash). One of its late events is removed, as a number taken but never
    // committed would be, and one checkpointed event is deleted.
    const first = await startSecretServer();
    const firstClient = first.client("grpc");
    const firstToken = await adminSession(firstClient);
    for (let i = 0; i < 3; i++) ok(await firstClient.call(SecretService.method.putSecret, { path: `crash/${i}`, data: { v: "x" } }));
    ok(await firstClient.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: firstToken }), "VerifyAuditLog");
    await seal(firstClient);
    for (let i = 0; i < 3; i++) ok(await firstClient.call(OperatorService.method.getStatus, {}));
    const { server, client, token } = await restartUnsealed(first);
    const db = openDatabase(server.nexus.databaseUrl);
    try {
      const [put] = await db`SELECT replica_id, id, sequence::int AS sequence FROM audit_events WHERE path = 'crash/1'`;
      const replicaId = put.replica_id as string;
      const [{ last }] = await db`SELECT last_sequence::int AS last FROM audit_checkpoints WHERE replica_id = ${replicaId} ORDER BY written_at DESC LIMIT 1`;
      expect(await db`SELECT 1 FROM audit_checkpoints WHERE replica_id = ${replicaId} AND final`, "no final checkpoint").to.have.length(0);
      const late = await db`SELECT id, sequence::int AS sequence FROM audit_events WHERE replica_id = ${replicaId} AND rpc LIKE '%/GetStatus' ORDER BY sequence`;
      const lost = late[1];
      expect(put.sequence).to.be.at.most(last);
      expect(lost.sequence).to.be.greaterThan(last);

      await db`DELETE FROM audit_events WHERE id IN (${put.id}, ${lost.id})`;
      expect(await auditProblems(client, token)).to.deep.equal([`DELETED ${replicaId} ${put.sequence}`, `CRASH_GAP ${replicaId} ${lost.sequence}`]);
    } finally {
      await db.end();
      await server.stop();
    }
  });
});
