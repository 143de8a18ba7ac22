// The audit log: one event per request under load, with the right outcome and
// never a secret value; VerifyAuditLog silent on a clean log (rolled-back writes
// included) and reporting each kind of tampering; fail closed when the event
// cannot be written; ListAuditEvents filters and pages; and a full database
// dump that holds no session or admin token in any encoding.

import { expect } from "chai";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { randomBytes } from "node:crypto";
import { AuditOutcome, AuditProblemKind, OperatorService, type ListAuditEventsRequestSchema } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { createAdminToken, createPolicy, exactly, forEachConcurrently, issueSvid, login, spiffeId } from "../support/admin-fixtures.js";
import { dumpDatabase } from "../support/database-dump.js";
import { findLeaks } from "../support/leak-forms.js";
import { fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { createTestDatabase } from "../support/test-database.js";
import { LISTENERS, SUPERUSER_ID, startTestServer, type Listener } from "../support/test-server.js";
import { sleep } from "../support/wait.js";

const SECRET_SERVICE = "/spike.nexus.v1.SecretService";
const HOUR = 3_600_000;

/** An admin session on a fresh server, and a direct SQL handle on its database. */
async function auditedServer(opts: Parameters<typeof startSecretServer>[0] = {}) {
  const server = await startSecretServer(opts);
  const admin = server.client("grpc");
  const adminToken = (await login(admin, 12 * HOUR)).token;
  return { server, admin, adminToken };
}

describe("the audit log", function () {
  this.timeout(60_000);

  describe("under 1,000 concurrent mixed requests on both listeners", () => {
    const MARKER = `burst-secret-${randomBytes(8).toString("hex")}`;
    const N = 250; // requests of each of the four kinds
    let server: SecretTestServer;
    let db: ReturnType<typeof openDatabase>;
    const ids = { reader: spiffeId("workload/burst-reader"), writer: spiffeId("workload/burst-writer"), intruder: spiffeId("workload/burst-intruder") };
    const clients = new Map<string, NexusClient>();

    before(async () => {
      const s = await auditedServer();
      server = s.server;
      db = openDatabase(server.nexus.databaseUrl);
      await createPolicy(s.admin, s.adminToken, { name: "burst-reader", spiffeIdPattern: exactly(ids.reader), pathPattern: "burst/(read|missing)/.+", permissions: [Permission.READ] });
      await createPolicy(s.admin, s.adminToken, { name: "burst-writer", spiffeIdPattern: exactly(ids.writer), pathPattern: "burst/write/.+", permissions: [Permission.WRITE] });
      await forEachConcurrently(
        Array.from({ length: N }, (_, n) => n),
        8,
        async (n) => void ok(await s.admin.call(SecretService.method.putSecret, { path: `burst/read/${n}`, data: { v: `${MARKER}-read-${n}` } })),
      );
      // Several connections per caller and listener, so no single HTTP/2 connection nears its stream limit.
      for (const [who, id] of Object.entries(ids)) {
        const cert = await issueSvid(server, id);
        for (const listener of LISTENERS) for (let k = 0; k < 4; k++) clients.set(`${who}/${listener}/${k}`, server.client(listener, cert));
      }
    });

    after(async () => {
      await db?.end();
      await server?.stop();
    });

    it("writes exactly one event per request, each with the request's outcome and code, and none holds a secret value", async () => {
      interface Request {
        readonly call: (c: NexusClient) => Promise<{ code: string }>;
        readonly who: keyof typeof ids;
        readonly rpc: string;
        readonly path: string;
        readonly code: string;
        readonly outcome: "ok" | "denied" | "error";
      }
      const requests: Request[] = [];
      for (let n = 0; n < N; n++) {
        const read = `burst/read/${n}`;
        const write = `burst/write/${n}`;
        const missing = `burst/missing/${n}`;
        const denied = n % 2 === 0 ? read : `burst/denied/${n}`;
        requests.push(
          { who: "reader", rpc: "GetSecret", path: read, code: "OK", outcome: "ok", call: (c) => c.call(SecretService.method.getSecret, { path: read }) },
          { who: "writer", rpc: "PutSecret", path: write, code: "OK", outcome: "ok", call: (c) => c.call(SecretService.method.putSecret, { path: write, data: { v: `${MARKER}-write-${n}` } }) },
          n % 2 === 0
            ? { who: "intruder", rpc: "GetSecret", path: denied, code: "PERMISSION_DENIED", outcome: "denied", call: (c) => c.call(SecretService.method.getSecret, { path: denied }) }
            : {
                who: "intruder", rpc: "PutSecret", path: denied, code: "PERMISSION_DENIED", outcome: "denied",
                call: (c) => c.call(SecretService.method.putSecret, { path: denied, data: { v: `${MARKER}-denied-${n}` } }),
              },
          { who: "reader", rpc: "GetSecret", path: missing, code: "NOT_FOUND", outcome: "error", call: (c) => c.call(SecretService.method.getSecret, { path: missing }) },
        );
      }
      expect(requests).to.have.length(1000);

      const from = new Date();
      const results = await Promise.all(
        requests.map((r, i) => {
          const listener: Listener = LISTENERS[i % 2];
          return r.call(clients.get(`${r.who}/${listener}/${Math.floor(i / 2) % 4}`)!);
        }),
      );
      const to = new Date(Date.now() + 1);

      expect(results.map((res, i) => `${i}:${res.code}`).filter((s, i) => s !== `${i}:${requests[i].code}`), "requests with another status than expected").to.deep.equal([]);

      // Each response waited for its event: no waiting needed before counting.
      const [{ count }] = await db`SELECT count(*)::int AS count FROM audit_events WHERE time >= ${from} AND time <= ${to}`;
      expect(count, "events in the window").to.equal(requests.length);

      const events = await db`SELECT caller, rpc, path, outcome, code FROM audit_events WHERE time >= ${from} AND time <= ${to}`;
      const key = (caller: string, rpc: string, path: string) => `${caller} ${rpc} ${path}`;
      const byKey = new Map<string, Array<{ outcome: string; code: string }>>();
      for (const e of events) {
        const k = key(e.caller, e.rpc, e.path);
        byKey.set(k, [...(byKey.get(k) ?? []), { outcome: e.outcome, code: e.code }]);
      }
      const mismatches = requests.flatMap((r) => {
        const found = byKey.get(key(ids[r.who], `${SECRET_SERVICE}/${r.rpc}`, r.path)) ?? [];
        const want = { outcome: r.outcome, code: r.code };
        return found.length === 1 && found[0].outcome === want.outcome && found[0].code === want.code
          ? []
          : [`${r.who} ${r.rpc} ${r.path}: expected one ${JSON.stringify(want)}, found ${JSON.stringify(found)}`];
      });
      expect(mismatches).to.deep.equal([]);

      const dump = Buffer.from((await db`SELECT e::text AS row FROM audit_events e`).map((r) => r.row as string).join("\n"));
      expect(findLeaks(dump, new Map([["secret value marker", MARKER]])), "secret values in the audit log").to.deep.equal([]);
    });
  });

  describe("VerifyAuditLog", () => {
    let server: SecretTestServer;
    let admin: NexusClient;
    let adminToken: string;
    let db: ReturnType<typeof openDatabase>;
    let replicaId: string;

    const verify = async () => {
      const report = ok(await admin.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: adminToken }), "VerifyAuditLog");
      return {
        eventsChecked: Number(report.eventsChecked),
        eventsUnsealed: Number(report.eventsUnsealed),
        problems: report.problems.map((p) => ({ kind: AuditProblemKind[p.kind], replicaId: p.replicaId, sequence: Number(p.sequence) })),
      };
    };

    before(async () => {
      ({ server, admin, adminToken } = await auditedServer());
      db = openDatabase(server.nexus.databaseUrl);
      const reader = server.client("connect", await issueSvid(server, spiffeId("workload/verify-reader")));
      await createPolicy(admin, adminToken, { name: "verify-reader", spiffeIdPattern: exactly(spiffeId("workload/verify-reader")), pathPattern: "verify/.+", permissions: [Permission.READ] });
      for (let n = 1; n <= 6; n++) {
        ok(await admin.call(SecretService.method.putSecret, { path: `verify/${n}`, data: { v: String(n) } }));
        ok(await reader.call(SecretService.method.getSecret, { path: `verify/${n}` }));
        fails(await reader.call(SecretService.method.getSecret, { path: `verify/missing-${n}` }), "NOT_FOUND");
        fails(await reader.call(SecretService.method.putSecret, { path: `verify/${n}`, data: { v: "no" } }), "PERMISSION_DENIED");
      }
      [{ replica_id: replicaId }] = await db`SELECT DISTINCT replica_id FROM audit_events`;
    });

    after(async () => {
      await db?.end();
      await server?.stop();
    });

    it("reports nothing for a clean log that includes rolled-back writes, each recorded as one error event in the gapless sequence", async () => {
      const ROLLED_BACK: Array<{ what: string; path: string | undefined; rpc: string; code?: string; run: () => Promise<{ code: string }> }> = [
        {
          what: "a put with a stale cas",
          path: "verify/1",
          rpc: "SecretService/PutSecret",
          code: "ABORTED",
          run: () => admin.call(SecretService.method.putSecret, { path: "verify/1", data: { v: "x" }, cas: 7 }),
        },
        {
          what: "a put with cas 0 on an existing path",
          path: "verify/2",
          rpc: "SecretService/PutSecret",
          code: "ABORTED",
          run: () => admin.call(SecretService.method.putSecret, { path: "verify/2", data: { v: "x" }, cas: 0 }),
        },
        {
          what: "a put over the size limit",
          path: "verify/3",
          rpc: "SecretService/PutSecret",
          code: "RESOURCE_EXHAUSTED",
          run: () => admin.call(SecretService.method.putSecret, { path: "verify/3", data: { v: "x".repeat(70_000) } }),
        },
        {
          what: "a put the database refuses after its event was prepared (a CHECK constraint added for the test)",
          path: "verify/4",
          rpc: "SecretService/PutSecret",
          run: async () => {
            await db`ALTER TABLE secret_versions ADD CONSTRAINT audit_spec_refuses_writes CHECK (version < 0) NOT VALID`;
            try {
              return await admin.call(SecretService.method.putSecret, { path: "verify/4", data: { v: "x" } });
            } finally {
              await db`ALTER TABLE secret_versions DROP CONSTRAINT audit_spec_refuses_writes`;
            }
          },
        },
        {
          what: "a delete of a path that does not exist",
          path: "verify/nothing",
          rpc: "SecretService/DeleteSecret",
          code: "NOT_FOUND",
          run: () => admin.call(SecretService.method.deleteSecret, { path: "verify/nothing" }),
        },
        {
          what: "a policy whose name is taken",
          path: undefined, // matched by RPC alone: the name travels inside the request's policy
          rpc: "PolicyService/CreatePolicy",
          code: "ALREADY_EXISTS",
          run: () =>
            admin.call(PolicyService.method.createPolicy, { policy: { name: "verify-reader", spiffeIdPattern: "x", pathPattern: "x", permissions: [Permission.READ] } }, { bearerToken: adminToken }),
        },
        {
          what: "an admin token whose name is taken (its transaction rolls back)",
          path: "verify-automation",
          rpc: "OperatorService/CreateAdminToken",
          code: "ALREADY_EXISTS",
          run: async () => {
            await createAdminToken(admin, adminToken, "verify-automation", HOUR);
            return admin.call(OperatorService.method.createAdminToken, { name: "verify-automation" }, { bearerToken: adminToken });
          },
        },
      ];
      for (const r of ROLLED_BACK) {
        const before = new Date();
        const { code } = await r.run();
        if (r.code) expect(code, r.what).to.equal(r.code);
        else expect(code, r.what).to.not.equal("OK");
        const events = await db`
          SELECT outcome, code FROM audit_events
          WHERE time >= ${before} AND rpc = ${`/spike.nexus.v1.${r.rpc}`} AND outcome <> 'ok' ${r.path === undefined ? db`` : db`AND path = ${r.path}`}`;
        expect(events.map((e) => `${e.outcome} ${e.code}`), r.what).to.deep.equal([`error ${code}`]);
      }

      const report = await verify();
      expect(report.problems).to.deep.equal([]);
      expect(report.eventsUnsealed).to.equal(0);
      const sequences = (await db`SELECT sequence FROM audit_events WHERE replica_id = ${replicaId} ORDER BY sequence`).map((r) => Number(r.sequence));
      expect(report.eventsChecked).to.be.at.least(sequences.length - 1);
      expect(sequences, "gapless, each once").to.deep.equal(Array.from({ length: sequences.length }, (_, i) => i + 1));
    });

    describe("reports tampering", () => {
      // Each case tampers with the log, verifies, and restores the log exactly
      // (rows by id, from a backup table), so every case starts from a clean log.
      interface Target {
        readonly id: number;
        readonly sequence: number;
      }
      interface Targets {
        readonly first: Target;
        readonly middle: Target;
        readonly next: Target;
        readonly last: Target;
      }
      let backedUpThrough = 0;

      const targets = async (): Promise<Targets> => {
        const rows = await db`SELECT id, sequence, rpc, outcome FROM audit_events WHERE replica_id = ${replicaId} ORDER BY sequence`;
        const puts = rows.filter((r) => r.rpc === `${SECRET_SERVICE}/PutSecret` && r.outcome === "ok");
        const middle = puts[Math.floor(puts.length / 2)];
        const at = (r: (typeof rows)[number]) => ({ id: Number(r.id), sequence: Number(r.sequence) });
        const next = rows[rows.findIndex((r) => r.id === middle.id) + 1];
        return { first: at(rows[0]), middle: at(middle), next: at(next), last: at(rows[rows.length - 1]) };
      };
      const backup = async () => {
        await db`DROP TABLE IF EXISTS audit_spec_backup`;
        await db`CREATE TABLE audit_spec_backup AS SELECT * FROM audit_events`;
        [{ max: backedUpThrough }] = await db`SELECT coalesce(max(id), 0)::int AS max FROM audit_spec_backup`;
      };
      const restore = async (inserted: number[]) => {
        await db.begin(async (tx) => {
          await tx`DELETE FROM audit_events WHERE id <= ${backedUpThrough} OR id IN ${tx(inserted.length ? inserted : [-1])}`;
          await tx`INSERT INTO audit_events OVERRIDING SYSTEM VALUE SELECT * FROM audit_spec_backup`;
        });
        await db`DROP TABLE audit_spec_backup`;
      };
      const forge = async (fields: { replicaId: string; sequence: number; mac: Buffer | null }): Promise<number[]> => {
        const [row] = await db`
          INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac)
          VALUES (${fields.replicaId}, ${fields.sequence}, now(), 'forged', ${spiffeId("workload/verify-reader")}, ${`${SECRET_SERVICE}/GetSecret`},
                  'verify/1', 1, 'ok', 'OK', '{}'::jsonb, ${fields.mac})
          RETURNING id`;
        return [Number(row.id)];
      };

      interface Case {
        readonly what: string;
        readonly tamper: (t: Targets) => Promise<number[] | void>;
        readonly expected: (t: Targets) => Array<{ kind: string; replicaId?: string; sequence?: number | number[] }>;
      }
      const ALTERED_FIELDS: Array<[string, string]> = [
        ["time", "time + interval '1 second'"],
        ["request_id", "'forged-request-id'"],
        ["caller", "'spiffe://spike.ist/intruder'"],
        ["rpc", `'${SECRET_SERVICE}/GetSecret'`],
        ["path", "'someone/else'"],
        ["version", "coalesce(version, 0) + 1"],
        ["outcome", "CASE outcome WHEN 'ok' THEN 'error' ELSE 'ok' END"],
        ["code", "'NOT_FOUND'"],
        ["detail", `detail || '{"tampered": true}'::jsonb`],
        ["mac", "decode(md5(random()::text) || md5(random()::text), 'hex')"],
      ];
      const CASES: Case[] = [
        ...ALTERED_FIELDS.map(
          ([column, value]): Case => ({
            what: `${column} changed in an event: ALTERED`,
            tamper: async (t) => void (await db.unsafe(`UPDATE audit_events SET ${column} = ${value} WHERE id = $1`, [t.middle.id])),
            expected: (t) => [{ kind: "ALTERED", sequence: t.middle.sequence }],
          }),
        ),
        {
          what: "the first event deleted: DELETED",
          tamper: async (t) => void (await db`DELETE FROM audit_events WHERE id = ${t.first.id}`),
          expected: (t) => [{ kind: "DELETED", sequence: t.first.sequence }],
        },
        {
          what: "a middle event deleted: DELETED",
          tamper: async (t) => void (await db`DELETE FROM audit_events WHERE id = ${t.middle.id}`),
          expected: (t) => [{ kind: "DELETED", sequence: t.middle.sequence }],
        },
        {
          what: "the last event deleted: DELETED",
          tamper: async (t) => void (await db`DELETE FROM audit_events WHERE id = ${t.last.id}`),
          expected: (t) => [{ kind: "DELETED", sequence: t.last.sequence }],
        },
        {
          what: "two neighbouring events' sequence numbers swapped: REORDERED",
          tamper: async (t) =>
            void (await db`UPDATE audit_events SET sequence = CASE id WHEN ${t.middle.id} THEN ${t.next.sequence}::bigint ELSE ${t.middle.sequence}::bigint END
                           WHERE id IN (${t.middle.id}, ${t.next.id})`),
          expected: (t) => [{ kind: "REORDERED", sequence: [t.middle.sequence, t.next.sequence] }],
        },
        {
          what: "the first and the last event's sequence numbers swapped: REORDERED",
          tamper: async (t) =>
            void (await db`UPDATE audit_events SET sequence = CASE id WHEN ${t.first.id} THEN ${t.last.sequence}::bigint ELSE ${t.first.sequence}::bigint END
                           WHERE id IN (${t.first.id}, ${t.last.id})`),
          expected: (t) => [{ kind: "REORDERED", sequence: [t.first.sequence, t.last.sequence] }],
        },
        {
          what: "an event duplicated: DUPLICATED",
          tamper: async (t) =>
            (
              await db`INSERT INTO audit_events (replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac)
                       SELECT replica_id, sequence, time, request_id, caller, rpc, path, version, outcome, code, detail, mac FROM audit_events WHERE id = ${t.middle.id}
                       RETURNING id`
            ).map((r) => Number(r.id)),
          expected: (t) => [{ kind: "DUPLICATED", sequence: t.middle.sequence }],
        },
        {
          what: "a forged event with a random MAC and the next sequence number: INSERTED",
          tamper: (t) => forge({ replicaId, sequence: t.last.sequence + 1000, mac: randomBytes(32) }),
          expected: (t) => [{ kind: "INSERTED", sequence: t.last.sequence + 1000 }],
        },
        {
          what: "a forged event with a random MAC and an existing sequence number: INSERTED",
          tamper: (t) => forge({ replicaId, sequence: t.middle.sequence, mac: randomBytes(32) }),
          expected: (t) => [{ kind: "INSERTED", sequence: t.middle.sequence }],
        },
        {
          what: "a forged event without a MAC at an existing sequence number, while unsealed: INSERTED, not merely awaiting a MAC",
          tamper: (t) => forge({ replicaId, sequence: t.middle.sequence, mac: null }),
          expected: (t) => [{ kind: "INSERTED", sequence: t.middle.sequence }],
        },
        {
          what: "a forged event with a random MAC for a replica that never existed: INSERTED",
          tamper: () => forge({ replicaId: "forged-replica", sequence: 1, mac: randomBytes(32) }),
          expected: () => [{ kind: "INSERTED", replicaId: "forged-replica", sequence: 1 }],
        },
        {
          what: "a forged event carrying another event's MAC: INSERTED",
          tamper: async (t) => {
            const [{ mac }] = await db`SELECT mac FROM audit_events WHERE id = ${t.middle.id}`;
            return forge({ replicaId, sequence: t.last.sequence + 1000, mac });
          },
          expected: (t) => [{ kind: "INSERTED", sequence: t.last.sequence + 1000 }],
        },
      ];

      for (const c of CASES) {
        it(c.what, async () => {
          expect((await verify()).problems, "clean before").to.deep.equal([]);
          const t = await targets();
          await backup();
          let inserted: number[] = [];
          try {
            inserted = (await c.tamper(t)) ?? [];
            const { problems } = await verify();
            const expected = c.expected(t);
            expect(problems.map((p) => p.kind), JSON.stringify(problems)).to.deep.equal(expected.map((e) => e.kind));
            expected.forEach((e, i) => {
              expect(problems[i].replicaId).to.equal(e.replicaId ?? replicaId);
              if (Array.isArray(e.sequence)) expect(e.sequence).to.include(problems[i].sequence);
              else expect(problems[i].sequence).to.equal(e.sequence);
            });
          } finally {
            await restore(inserted);
          }
          expect((await verify()).problems, "clean again once restored").to.deep.equal([]);
        });
      }
    });
  });

  describe("a runtime database role, and failing closed", () => {
    const role = `nexus_runtime_${process.pid}_${randomBytes(3).toString("hex")}`;
    const password = randomBytes(12).toString("hex");
    let ownerDb: ReturnType<typeof openDatabase>;
    let runtimeUrl: string;
    let server: SecretTestServer | undefined;

    before(async () => {
      // Migrate with the owner's URL (start and stop a server), then create a
      // runtime role with data rights only: no DDL, owns nothing, and cannot
      // rewrite or delete audit events.
      const ownerUrl = await createTestDatabase("audit_role");
      await (await startTestServer({ databaseUrl: ownerUrl })).stop();
      ownerDb = openDatabase(ownerUrl);
      await ownerDb.unsafe(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
      await ownerDb.unsafe(`GRANT USAGE ON SCHEMA public TO ${role}`);
      await ownerDb.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${role}`);
      await ownerDb.unsafe(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
      // docs/operations.md: on audit_events only INSERT and SELECT.
      await ownerDb.unsafe(`REVOKE UPDATE, DELETE ON audit_events FROM ${role}`);
      const url = new URL(ownerUrl);
      url.username = role;
      url.password = password;
      runtimeUrl = url.toString();
    });

    afterEach(async () => {
      await server?.stop();
      server = undefined;
    });

    after(async () => {
      if (ownerDb) {
        await ownerDb.unsafe(`DROP OWNED BY ${role}`).catch(() => {});
        await ownerDb.unsafe(`DROP ROLE IF EXISTS ${role}`).catch(() => {});
        await ownerDb.end();
      }
    });

    it("a server starts on an already-migrated database as a runtime role without DDL rights", async () => {
      server = await startSecretServer({ databaseUrl: runtimeUrl, initialize: false });
      const status = ok(await server.client("grpc").call(OperatorService.method.getStatus, {}));
      expect(status).to.include({ initialized: false, sealed: true });
    });

    it("with INSERT on audit_events revoked from the runtime role, GetSecret fails UNAVAILABLE with no data, a put writes nothing, and both work again once granted", async () => {
      server = await startSecretServer({ databaseUrl: runtimeUrl });
      const value = `fail-closed-${randomBytes(8).toString("hex")}`;
      for (const listener of LISTENERS) ok(await server.client(listener).call(SecretService.method.putSecret, { path: `closed/${listener}`, data: { v: value } }));

      await ownerDb.unsafe(`REVOKE INSERT ON audit_events FROM ${role}`);
      try {
        for (const listener of LISTENERS) {
          const client = server.client(listener);
          const read = await client.call(SecretService.method.getSecret, { path: `closed/${listener}` });
          const message = fails(read, "UNAVAILABLE", `${listener}: GetSecret`);
          expect(message).to.not.include(value);
          const put = await client.call(SecretService.method.putSecret, { path: `closed/${listener}`, data: { v: "unaudited" } });
          expect(put.code, `${listener}: PutSecret`).to.not.equal("OK");
          const [{ latest }] = await ownerDb`SELECT latest_version AS latest FROM secrets WHERE path = ${`closed/${listener}`}`;
          expect(latest, `${listener}: nothing written`).to.equal(1);
        }
      } finally {
        await ownerDb.unsafe(`GRANT INSERT ON audit_events TO ${role}`);
      }
      for (const listener of LISTENERS) {
        const read = ok(await server.client(listener).call(SecretService.method.getSecret, { path: `closed/${listener}` }), `${listener}: GetSecret once granted`);
        expect(read.data).to.deep.equal({ v: value });
      }
    });
  });

  describe("ListAuditEvents", () => {
    let server: SecretTestServer;
    let admin: NexusClient;
    let adminToken: string;
    const readerId = spiffeId("workload/filter-reader");
    const intruderId = spiffeId("workload/filter-intruder");
    interface Scripted {
      readonly caller: string;
      readonly rpc: string;
      readonly path: string;
      readonly outcome: AuditOutcome;
    }
    const phase1: Scripted[] = [];
    const phase2: Scripted[] = [];
    let start: Date;
    let middle: Date;
    let end: Date;

    const describeEvent = (e: Scripted) => `${e.caller} ${e.rpc} ${e.path} ${AuditOutcome[e.outcome]}`;
    const listAll = async (request: MessageInitShape<typeof ListAuditEventsRequestSchema>, pageSize: number) => {
      const events: Array<Scripted & { sequence: bigint; time: Date }> = [];
      let pageToken = "";
      for (let calls = 0; ; calls++) {
        expect(calls, "pagination ends").to.be.lessThan(100);
        const page = ok(await admin.call(OperatorService.method.listAuditEvents, { ...request, pageSize, pageToken }, { bearerToken: adminToken }), "ListAuditEvents");
        expect(page.events.length).to.be.at.most(pageSize);
        events.push(...page.events.map((e) => ({ caller: e.callerSpiffeId, rpc: e.rpc, path: e.path, outcome: e.outcome, sequence: e.sequence, time: timestampDate(e.time!) })));
        if (page.nextPageToken === "") return events;
        pageToken = page.nextPageToken;
      }
    };

    before(async () => {
      ({ server, admin, adminToken } = await auditedServer());
      const reader = server.client("grpc", await issueSvid(server, readerId));
      const intruder = server.client("connect", await issueSvid(server, intruderId));
      await createPolicy(admin, adminToken, { name: "filter-reader", spiffeIdPattern: exactly(readerId), pathPattern: "audit/a/.+", permissions: [Permission.READ] });

      const O = AuditOutcome;
      const CODE = { [O.OK]: "OK", [O.DENIED]: "PERMISSION_DENIED", [O.ERROR]: "NOT_FOUND" } as Record<AuditOutcome, string>;
      const step = async (log: Scripted[], caller: string, rpc: string, path: string, outcome: AuditOutcome, call: () => Promise<{ code: string }>) => {
        expect((await call()).code, `${rpc} ${path}`).to.equal(CODE[outcome]);
        log.push({ caller, rpc: `${SECRET_SERVICE}/${rpc}`, path, outcome });
      };
      const put = (client: NexusClient, path: string) => () => client.call(SecretService.method.putSecret, { path, data: { v: "1" } });
      const get = (client: NexusClient, path: string) => () => client.call(SecretService.method.getSecret, { path });
      await sleep(5);
      start = new Date();
      await step(phase1, SUPERUSER_ID, "PutSecret", "audit/a/1", O.OK, put(admin, "audit/a/1"));
      await step(phase1, readerId, "GetSecret", "audit/a/1", O.OK, get(reader, "audit/a/1"));
      await step(phase1, readerId, "GetSecret", "audit/a/missing", O.ERROR, get(reader, "audit/a/missing"));
      await step(phase1, intruderId, "GetSecret", "audit/a/1", O.DENIED, get(intruder, "audit/a/1"));
      await step(phase1, SUPERUSER_ID, "PutSecret", "audit/b/1", O.OK, put(admin, "audit/b/1"));
      await sleep(5);
      middle = new Date();
      await step(phase2, readerId, "GetSecretMetadata", "audit/a/1", O.OK, () => reader.call(SecretService.method.getSecretMetadata, { path: "audit/a/1" }));
      await step(phase2, intruderId, "PutSecret", "audit/b/2", O.DENIED, put(intruder, "audit/b/2"));
      await step(phase2, SUPERUSER_ID, "DeleteSecret", "audit/b/1", O.OK, () => admin.call(SecretService.method.deleteSecret, { path: "audit/b/1" }));
      await step(phase2, readerId, "GetSecret", "audit/b/1", O.DENIED, get(reader, "audit/b/1"));
      await step(phase2, SUPERUSER_ID, "GetSecret", "audit/a/nothing", O.ERROR, get(admin, "audit/a/nothing"));
      await step(phase2, readerId, "GetSecret", "audit/a/1", O.OK, get(reader, "audit/a/1"));
      await sleep(5);
      end = new Date();
    });

    after(async () => server?.stop());

    const window = () => ({ startTime: timestampFromDate(start), endTime: timestampFromDate(end) });
    const FILTERS: Array<{ what: string; request: () => MessageInitShape<typeof ListAuditEventsRequestSchema>; keep: (e: Scripted, phase: 1 | 2) => boolean }> = [
      { what: "a time range alone", request: window, keep: () => true },
      { what: "a time range ending mid-way", request: () => ({ startTime: timestampFromDate(start), endTime: timestampFromDate(middle) }), keep: (_, phase) => phase === 1 },
      { what: "a time range starting mid-way", request: () => ({ startTime: timestampFromDate(middle), endTime: timestampFromDate(end) }), keep: (_, phase) => phase === 2 },
      { what: "a caller", request: () => ({ ...window(), callerSpiffeId: readerId }), keep: (e) => e.caller === readerId },
      { what: "another caller", request: () => ({ ...window(), callerSpiffeId: intruderId }), keep: (e) => e.caller === intruderId },
      { what: "a path prefix", request: () => ({ ...window(), pathPrefix: "audit/a/" }), keep: (e) => e.path.startsWith("audit/a/") },
      { what: "a path prefix that is not a whole segment", request: () => ({ ...window(), pathPrefix: "audit/b" }), keep: (e) => e.path.startsWith("audit/b") },
      { what: "a full RPC name", request: () => ({ ...window(), rpc: `${SECRET_SERVICE}/GetSecret` }), keep: (e) => e.rpc === `${SECRET_SERVICE}/GetSecret` },
      { what: "a method name", request: () => ({ ...window(), rpc: "PutSecret" }), keep: (e) => e.rpc === `${SECRET_SERVICE}/PutSecret` },
      { what: "a method name with LIKE wildcards, taken literally", request: () => ({ ...window(), rpc: "GetSecre_" }), keep: () => false },
      { what: "outcome ok", request: () => ({ ...window(), outcome: AuditOutcome.OK }), keep: (e) => e.outcome === AuditOutcome.OK },
      { what: "outcome denied", request: () => ({ ...window(), outcome: AuditOutcome.DENIED }), keep: (e) => e.outcome === AuditOutcome.DENIED },
      { what: "outcome error", request: () => ({ ...window(), outcome: AuditOutcome.ERROR }), keep: (e) => e.outcome === AuditOutcome.ERROR },
      {
        what: "caller, path prefix, RPC and outcome together",
        request: () => ({ ...window(), callerSpiffeId: readerId, pathPrefix: "audit/a/", rpc: "GetSecret", outcome: AuditOutcome.OK }),
        keep: (e) => e.caller === readerId && e.path.startsWith("audit/a/") && e.rpc === `${SECRET_SERVICE}/GetSecret` && e.outcome === AuditOutcome.OK,
      },
    ];

    for (const f of FILTERS) {
      it(`filters by ${f.what}, newest first, in one page and across pages of 2`, async () => {
        const expected = [...phase1.map((e) => [e, 1] as const), ...phase2.map((e) => [e, 2] as const)]
          .filter(([e, phase]) => f.keep(e, phase))
          .map(([e]) => describeEvent(e))
          .reverse();
        const whole = await listAll(f.request(), 1000);
        expect(whole.map(describeEvent)).to.deep.equal(expected);
        const paged = await listAll(f.request(), 2);
        expect(paged.map((e) => `${e.sequence}`)).to.deep.equal(whole.map((e) => `${e.sequence}`));
      });
    }

    it("a page token it did not issue, or a page size over 1,000, is INVALID_ARGUMENT", async () => {
      for (const request of [{ pageToken: "not-a-token" }, { pageToken: Buffer.from('{"t":"yesterday","i":1}').toString("base64url") }, { pageSize: 1001 }, { pageSize: -1 }]) {
        fails(await admin.call(OperatorService.method.listAuditEvents, request, { bearerToken: adminToken }), "INVALID_ARGUMENT", JSON.stringify(request));
      }
    });

    it("a time with bad nanos or out of range, an end before the start, or a filter with a NUL is INVALID_ARGUMENT, also for VerifyAuditLog's range", async () => {
      const t = (seconds: bigint, nanos = 0) => ({ seconds, nanos });
      const cases: Array<[string, MessageInitShape<typeof ListAuditEventsRequestSchema>, string]> = [
        ["nanos above 999,999,999", { startTime: t(1_700_000_000n, 1_000_000_000) }, "start_time: nanos must be between"],
        ["negative nanos", { endTime: t(1_700_000_000n, -1) }, "end_time: nanos must be between"],
        ["a time past the year 10000", { endTime: t(400_000_000_000n) }, "end_time: must be a time between 1970 and the year 10000"],
        ["an end before the start", { startTime: t(1_700_000_100n), endTime: t(1_700_000_000n) }, "end_time: must not be before start_time"],
        ["a NUL in the caller filter", { callerSpiffeId: "spiffe://x/\u0000" }, "caller_spiffe_id: must not contain NUL"],
        ["a path prefix of 3,000 characters", { pathPrefix: "a".repeat(3000) }, "path_prefix: must be at most 2048 characters"],
      ];
      for (const [what, request, message] of cases) {
        expect(fails(await admin.call(OperatorService.method.listAuditEvents, request, { bearerToken: adminToken }), "INVALID_ARGUMENT", what), what).to.include(message);
      }
      fails(await admin.call(OperatorService.method.verifyAuditLog, { startTime: t(1_700_000_000n, 1_000_000_000) }, { bearerToken: adminToken }), "INVALID_ARGUMENT", "VerifyAuditLog");
    });
  });

  describe("a full dump of the database", () => {
    it("holds no session or admin token — live, logged out or revoked — raw, in hex or in base64/base64url", async () => {
      const { server, admin, adminToken } = await auditedServer();
      try {
        const tokens = new Map<string, string>([["admin session", adminToken]]);
        const ended = await login(admin);
        ok(await admin.call(OperatorService.method.listAdminTokens, {}, { bearerToken: ended.token }));
        ok(await admin.call(OperatorService.method.logout, {}, { bearerToken: ended.token }));
        tokens.set("logged-out session", ended.token);
        tokens.set("live admin token", (await createAdminToken(admin, adminToken, "dump-automation", HOUR)).token);
        const revoked = await createAdminToken(admin, adminToken, "dump-revoked", HOUR);
        ok(await admin.call(OperatorService.method.revokeAdminToken, { name: "dump-revoked" }, { bearerToken: adminToken }));
        tokens.set("revoked admin token", revoked.token);
        for (const listener of LISTENERS) {
          ok(await server.client(listener).call(OperatorService.method.listAuditEvents, { pageSize: 1 }, { bearerToken: tokens.get("live admin token") }));
        }

        const dump = await dumpDatabase(server.nexus.databaseUrl);
        expect(dump.content.includes(Buffer.from("dump-automation")), `${dump.tool}: the dump holds the admin_credentials rows`).to.equal(true);
        const needles = new Map<string, Buffer | string>();
        for (const [name, token] of tokens) {
          needles.set(name, token);
          needles.set(`${name} (its random bytes)`, Buffer.from(token.slice(4), "base64url"));
        }
        expect(findLeaks(dump.content, needles), dump.tool).to.deep.equal([]);
      } finally {
        await server.stop();
      }
    });
  });
});
