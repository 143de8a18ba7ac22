// Secret labels (issue 12) over the wire: CURRENT / PENDING / PREVIOUS as puts,
// promotions, deletes and pruning move them; reads by label; a reader racing a
// promoter; and label rows altered or replayed in SQL behind a running server,
// which are integrity errors (INTERNAL, LABELS_ALTERED), never the old value.
// Reasons are checked in the audit event each refusal writes.

import { expect } from "chai";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { loadMigrations, Migrator } from "../../src/store/migrations.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { createTestPki, startTestServer, type TestServer } from "../support/test-server.js";

const { CURRENT, PENDING, PREVIOUS } = SecretLabel;

describe("secret labels", function () {
  this.timeout(60_000);

  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let client: NexusClient;

  before(async () => {
    server = await startSecretServer();
    db = openDatabase(server.nexus.databaseUrl);
    client = server.client("grpc");
  });

  after(async () => {
    await db?.end();
    await server?.stop();
  });

  const put = async (path: string, n: string, stage?: SecretLabel) => ok(await client.call(SecretService.method.putSecret, { path, data: { n }, stage }), `put ${path} ${n}`).version;
  const get = (path: string, req: { version?: number; label?: SecretLabel } = {}) => client.call(SecretService.method.getSecret, { path, ...req });
  const promote = (path: string, version: number, expectedCurrentVersion?: number) =>
    client.call(SecretService.method.promoteSecretVersion, { path, version, expectedCurrentVersion });
  const metadata = async (path: string) => ok(await client.call(SecretService.method.getSecretMetadata, { path }), `metadata ${path}`).metadata!;
  /** version -> its labels, from GetSecretMetadata. */
  const labelMap = async (path: string) => Object.fromEntries((await metadata(path)).versions.map((v) => [v.version, v.labels]));
  /** The reason recorded for the latest refused call on `path`. */
  const lastReason = async (path: string) => {
    const [row] = await db`SELECT detail->>'reason' AS reason FROM audit_events WHERE path = ${path} AND outcome <> 'ok' ORDER BY id DESC LIMIT 1`;
    return row?.reason as string | undefined;
  };
  const versionCount = async (path: string) => (await db`SELECT count(*)::int AS n FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ${path}`)[0].n as number;

  describe("the label rules", () => {
    // Each row: the writes, then the labels every version carries.
    const RULES: ReadonlyArray<{ name: string; steps: Array<["put", SecretLabel?] | ["promote", number]>; labels: Record<number, SecretLabel[]>; current: number }> = [
      { name: "a put without a stage makes the new version CURRENT", steps: [["put"]], labels: { 1: [CURRENT] }, current: 1 },
      { name: "the next put makes the old CURRENT PREVIOUS", steps: [["put"], ["put"]], labels: { 1: [PREVIOUS], 2: [CURRENT] }, current: 2 },
      { name: "stage CURRENT is the same as no stage", steps: [["put"], ["put", CURRENT]], labels: { 1: [PREVIOUS], 2: [CURRENT] }, current: 2 },
      { name: "stage PENDING leaves CURRENT alone", steps: [["put"], ["put", PENDING]], labels: { 1: [CURRENT], 2: [PENDING] }, current: 1 },
      { name: "a newer PENDING replaces an older one", steps: [["put"], ["put", PENDING], ["put", PENDING]], labels: { 1: [CURRENT], 2: [], 3: [PENDING] }, current: 1 },
      { name: "a put without a stage leaves an existing PENDING alone", steps: [["put"], ["put", PENDING], ["put"]], labels: { 1: [PREVIOUS], 2: [PENDING], 3: [CURRENT] }, current: 3 },
      { name: "a first put staged PENDING leaves no CURRENT", steps: [["put", PENDING]], labels: { 1: [PENDING] }, current: 0 },
      { name: "promoting PENDING makes it CURRENT, the old CURRENT PREVIOUS, and PENDING goes away", steps: [["put"], ["put", PENDING], ["promote", 2]], labels: { 1: [PREVIOUS], 2: [CURRENT] }, current: 2 },
      { name: "promoting PREVIOUS is a rollback: the two swap", steps: [["put"], ["put"], ["promote", 1]], labels: { 1: [CURRENT], 2: [PREVIOUS] }, current: 1 },
      { name: "promoting an unlabelled older version moves PREVIOUS to the old CURRENT", steps: [["put"], ["put"], ["put"], ["promote", 1]], labels: { 1: [CURRENT], 2: [], 3: [PREVIOUS] }, current: 1 },
      { name: "promoting CURRENT changes nothing", steps: [["put"], ["put"], ["promote", 2]], labels: { 1: [PREVIOUS], 2: [CURRENT] }, current: 2 },
    ];
    RULES.forEach((rule, i) => {
      it(rule.name, async () => {
        const path = `labels/rules/${i}`;
        let n = 0;
        for (const step of rule.steps) {
          if (step[0] === "put") await put(path, String(++n), step[1]);
          else ok(await promote(path, step[1]), `promote ${step[1]}`);
        }
        expect(await labelMap(path)).to.deep.equal(rule.labels);
        expect((await metadata(path)).currentVersion).to.equal(rule.current);
        if (rule.current > 0) {
          const read = ok(await get(path));
          expect(read.version).to.equal(rule.current);
          expect(read.data).to.deep.equal({ n: String(rule.current) });
          expect(read.labels).to.include(CURRENT);
        }
      });
    });
  });

  describe("reads by label", () => {
    const path = "labels/read";
    before(async () => {
      await put(path, "1");
      await put(path, "2");
      await put(path, "3", PENDING);
    });

    it("GetSecret by label returns that version and the labels it carries", async () => {
      expect(ok(await get(path, { label: PENDING }))).to.deep.include({ version: 3, data: { n: "3" }, labels: [PENDING] });
      expect(ok(await get(path, { label: PREVIOUS }))).to.deep.include({ version: 1, data: { n: "1" }, labels: [PREVIOUS] });
      expect(ok(await get(path, { label: CURRENT }))).to.deep.include({ version: 2, labels: [CURRENT] });
      expect(ok(await get(path))).to.deep.include({ version: 2, labels: [CURRENT] });
      expect(ok(await get(path, { version: 1 }))).to.deep.include({ version: 1, labels: [PREVIOUS] });
    });

    it("a label and a version together are INVALID_ARGUMENT", async () => {
      expect(fails(await get(path, { version: 2, label: CURRENT }), "INVALID_ARGUMENT")).to.match(/version or a label, not both/);
      expect(await lastReason(path)).to.equal("VERSION_AND_LABEL");
    });

    it("an unknown label value is INVALID_ARGUMENT UNKNOWN_FIELD naming label (refused as it is decoded, never read as no label)", async () => {
      const result = await get(path, { label: 99 as SecretLabel });
      fails(result, "INVALID_ARGUMENT");
      expect([result.reason, result.violations?.[0]?.field]).to.deep.equal(["UNKNOWN_FIELD", "label"]);
    });

    it("a label that names no version is NOT_FOUND (LABEL_NOT_ASSIGNED)", async () => {
      const lone = "labels/read-lone";
      await put(lone, "1");
      fails(await get(lone, { label: PENDING }), "NOT_FOUND");
      expect(await lastReason(lone)).to.equal("LABEL_NOT_ASSIGNED");
    });
  });

  describe("bad puts write nothing", () => {
    it("stage PREVIOUS is INVALID_ARGUMENT", async () => {
      const path = "labels/bad-stage";
      await put(path, "1");
      expect(fails(await client.call(SecretService.method.putSecret, { path, data: { n: "2" }, stage: PREVIOUS }), "INVALID_ARGUMENT")).to.match(/stage/);
      expect(await lastReason(path)).to.equal("INVALID_STAGE");
      expect(await versionCount(path)).to.equal(1);
    });

    it("an unknown stage is INVALID_ARGUMENT UNKNOWN_FIELD naming stage", async () => {
      const path = "labels/unknown-stage";
      const result = await client.call(SecretService.method.putSecret, { path, data: { n: "1" }, stage: 7 as SecretLabel });
      fails(result, "INVALID_ARGUMENT");
      expect([result.reason, result.violations?.[0]?.field]).to.deep.equal(["UNKNOWN_FIELD", "stage"]);
      expect(await versionCount(path)).to.equal(0);
    });
  });

  describe("PromoteSecretVersion", () => {
    it("with expected_current_version set and different is FAILED_PRECONDITION (CURRENT_VERSION_MISMATCH) and moves nothing", async () => {
      const path = "labels/promote-cas";
      await put(path, "1");
      await put(path, "2", PENDING);
      fails(await promote(path, 2, 5), "FAILED_PRECONDITION");
      expect(await lastReason(path)).to.equal("CURRENT_VERSION_MISMATCH");
      expect(await labelMap(path)).to.deep.equal({ 1: [CURRENT], 2: [PENDING] });
      expect(ok(await promote(path, 2, 1))).to.deep.include({ currentVersion: 2, previousVersion: 1, pendingVersion: 0 });
    });

    it("promoting a deleted or destroyed version is FAILED_PRECONDITION (VERSION_NOT_LIVE) and moves nothing", async () => {
      const path = "labels/promote-dead";
      for (const n of ["1", "2", "3"]) await put(path, n);
      ok(await client.call(SecretService.method.deleteSecret, { path, versions: [1] }));
      ok(await client.call(SecretService.method.destroySecret, { path, versions: [2] }));
      for (const v of [1, 2]) {
        expect(fails(await promote(path, v), "FAILED_PRECONDITION")).to.match(/only a live version/);
        expect(await lastReason(path)).to.equal("VERSION_NOT_LIVE");
      }
      expect((await metadata(path)).currentVersion).to.equal(3);
      fails(await promote(path, 9), "NOT_FOUND");
      fails(await promote(path, 0), "INVALID_ARGUMENT");
    });

    it("a rollback by promoting an older version serves the older value at once", async () => {
      const path = "labels/rollback";
      await put(path, "1");
      await put(path, "2");
      ok(await promote(path, 1));
      expect(ok(await get(path))).to.deep.include({ version: 1, data: { n: "1" } });
    });
  });

  describe("deleting CURRENT", () => {
    const deletedCurrent = async (path: string) => {
      await put(path, "1");
      await put(path, "2");
      expect(ok(await client.call(SecretService.method.deleteSecret, { path })).versions).to.deep.equal([2]);
      expect(fails(await get(path), "NOT_FOUND")).to.match(/current version \(2\) .* is deleted/);
      expect(await lastReason(path)).to.equal("CURRENT_VERSION_DELETED");
      expect((await metadata(path)).currentVersion, "the label does not move").to.equal(2);
    };

    it("is NOT_FOUND (CURRENT_VERSION_DELETED), never the older value, until a new put", async () => {
      await deletedCurrent("labels/del-put");
      await put("labels/del-put", "3");
      expect(ok(await get("labels/del-put")).version).to.equal(3);
    });

    it("is NOT_FOUND until an undelete", async () => {
      await deletedCurrent("labels/del-undelete");
      ok(await client.call(SecretService.method.undeleteSecret, { path: "labels/del-undelete", versions: [2] }));
      expect(ok(await get("labels/del-undelete")).version).to.equal(2);
    });

    it("is NOT_FOUND until a promotion", async () => {
      await deletedCurrent("labels/del-promote");
      ok(await promote("labels/del-promote", 1));
      expect(ok(await get("labels/del-promote")).version).to.equal(1);
    });

    it("destroying CURRENT is NOT_FOUND (CURRENT_VERSION_DELETED) too", async () => {
      const path = "labels/destroy-current";
      await put(path, "1");
      await put(path, "2");
      ok(await client.call(SecretService.method.destroySecret, { path, versions: [2] }));
      expect(fails(await get(path), "NOT_FOUND")).to.match(/current version \(2\) .* is destroyed/);
    });
  });

  it("pruning by max_versions never removes a labelled version: three stay under max_versions 1", async () => {
    const path = "labels/prune";
    await put(path, "1");
    ok(await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 1, updateMask: { paths: ["max_versions"] } }));
    await put(path, "2");
    await put(path, "3", PENDING);
    await put(path, "4", PENDING); // 3 loses PENDING: now unlabelled, so pruned
    expect(await labelMap(path)).to.deep.equal({ 1: [PREVIOUS], 2: [CURRENT], 4: [PENDING] });
    await put(path, "5"); // 1 loses PREVIOUS
    expect(await labelMap(path)).to.deep.equal({ 2: [PREVIOUS], 4: [PENDING], 5: [CURRENT] });
  });

  it("a reader that loops on GetSecret (CURRENT) while another caller promotes never sees NOT_FOUND, an error or a torn value", async () => {
    const path = "labels/race";
    await put(path, "1");
    await put(path, "2");
    const reader = server.client("grpc");
    const promoter = server.client("connect");
    let stop = false;
    const seen = new Set<number>();
    const failures: string[] = [];
    const readLoop = async () => {
      while (!stop) {
        const r = await reader.call(SecretService.method.getSecret, { path });
        const res = r.response;
        if (res === undefined) failures.push(`${r.code}: ${r.message}`);
        else if (res.data.n !== String(res.version) || !res.labels.includes(CURRENT)) failures.push(`torn: ${JSON.stringify(res.data)} as version ${res.version}`);
        else seen.add(res.version);
      }
    };
    const readers = [readLoop(), readLoop(), readLoop()];
    for (let i = 0; i < 60; i++) ok(await promoter.call(SecretService.method.promoteSecretVersion, { path, version: i % 2 === 0 ? 1 : 2 }), `promotion ${i}`);
    stop = true;
    await Promise.all(readers);
    expect(failures).to.deep.equal([]);
    expect([...seen].sort()).to.deep.equal([1, 2]);
  });

  describe("label rows altered in SQL", () => {
    const refused = async (path: string, what: string) => {
      const r = await get(path);
      expect(r.code, what).to.equal("INTERNAL");
      expect(r.response, "no data").to.equal(undefined);
      expect(r.message).to.match(/integrity check/);
      expect(await lastReason(path)).to.equal("LABELS_ALTERED");
    };

    it("moving CURRENT back to an older version is INTERNAL (LABELS_ALTERED), never the old value", async () => {
      const path = "labels/tamper-move";
      await put(path, "1");
      await put(path, "2");
      await db`UPDATE secrets SET current_version = 1, previous_version = NULL WHERE path = ${path}`;
      await refused(path, "a moved CURRENT");
      fails(await client.call(SecretService.method.getSecretMetadata, { path }), "INTERNAL");
      fails(await promote(path, 2), "INTERNAL");
    });

    it("replaying an older labels row (MAC and all) under a running server is INTERNAL (LABELS_ALTERED)", async () => {
      const path = "labels/tamper-replay";
      await put(path, "1");
      const [old] = await db`SELECT latest_version, current_version, pending_version, previous_version, label_epoch, labels_mac FROM secrets WHERE path = ${path}`;
      await put(path, "2");
      expect(ok(await get(path)).version).to.equal(2);
      await db`UPDATE secrets SET ${db(old)} WHERE path = ${path}`;
      await refused(path, "a replayed row");
    });

    it("turning a row back into an unbound pre-label row (no MAC) at an older version is refused once the server has seen it bound", async () => {
      const path = "labels/tamper-unbind";
      await put(path, "1");
      await put(path, "2");
      ok(await get(path));
      await db`UPDATE secrets SET latest_version = 1, current_version = 1, previous_version = NULL, label_epoch = 0, labels_mac = NULL WHERE path = ${path}`;
      await refused(path, "an unbound older row");
    });

    it("a row whose MAC was cleared is refused in any shape but the one migration 006 leaves", async () => {
      const path = "labels/tamper-unbound-shape";
      await put(path, "1");
      await put(path, "2", PENDING);
      await db`UPDATE secrets SET labels_mac = NULL, label_epoch = 0 WHERE path = ${path}`;
      await refused(path, "an unbound row with a PENDING label");
    });
  });

  describe("rows from before labels (migration 006)", () => {
    it("a secret written before the migration reads as CURRENT = latest_version after it, and its next put binds the labels with a MAC", async () => {
      const pki = await createTestPki();
      let old: TestServer | undefined = await startSecretServer({ pki });
      const url = old.nexus.databaseUrl;
      const sql = connectDatabase({ url, poolMax: 2, logger: silentLogger });
      try {
        const c = old.client("grpc");
        for (const n of ["1", "2"]) ok(await c.call(SecretService.method.putSecret, { path: "legacy/db", data: { n } }));
        await old.stop();
        old = undefined;
        // Back to the schema before labels (reverting any migration after 006 too), then up again at the next start.
        const migrator = new Migrator(sql, await loadMigrations(), silentLogger);
        while ((await sql`SELECT 1 FROM information_schema.columns WHERE table_name = 'secrets' AND column_name = 'labels_mac'`).length > 0) await migrator.down();
        const next = await startTestServer({ pki, databaseUrl: url, start: FAST_KDF });
        old = next;
        const n = next.client("grpc");
        ok(await n.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
        const [row] = await sql`SELECT current_version, label_epoch::int AS epoch, labels_mac FROM secrets WHERE path = 'legacy/db'`;
        expect(row).to.deep.equal({ current_version: 2, epoch: 0, labels_mac: null });
        expect(ok(await n.call(SecretService.method.getSecret, { path: "legacy/db" }))).to.deep.include({ version: 2, data: { n: "2" }, labels: [CURRENT] });
        expect(ok(await n.call(SecretService.method.getSecretMetadata, { path: "legacy/db" })).metadata?.currentVersion).to.equal(2);
        ok(await n.call(SecretService.method.putSecret, { path: "legacy/db", data: { n: "3" } }));
        const [bound] = await sql`SELECT label_epoch::int AS epoch, labels_mac FROM secrets WHERE path = 'legacy/db'`;
        expect(bound.epoch).to.equal(1);
        // A MAC that names its integrity key (key id, then the HMAC; ADR 0010).
        expect(bound.labels_mac).to.have.length(36);
        const versions = ok(await n.call(SecretService.method.getSecretMetadata, { path: "legacy/db" })).metadata!.versions;
        expect(versions.map((v) => [v.version, v.labels])).to.deep.equal([[1, []], [2, [PREVIOUS]], [3, [CURRENT]]]);
      } finally {
        await sql.end();
        await old?.stop();
        await pki.remove();
      }
    });
  });
});
