// The watch event log below the RPC: the triggers record one event per change
// (never a value), delivery follows (xid, id) so a transaction that took its
// id first but commits last is neither skipped nor repeated, and the hub fans
// events out per stream with prefix and visibility filters, resumes from a
// cursor, bounds each stream's buffer, beats and ends on time.

import { expect } from "chai";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { SecretLabel, SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { NexusError } from "../../src/errors/nexus-error.js";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase, type Sql } from "../../src/store/database.js";
import { SecretEventStore, type EventPosition, type SecretEventRow } from "../../src/store/secret-event-store.js";
import { SecretStore } from "../../src/store/secret-store.js";
import { decodeCursor, encodeCursor } from "../../src/watch/watch-cursor.js";
import { WatchHub } from "../../src/watch/watch-hub.js";
import type { WatchEvent, WatchStream } from "../../src/watch/watch-stream.js";
import { ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { eventually, sleep } from "../support/wait.js";

describe("secret event log", function () {
  this.timeout(60_000);

  let server: SecretTestServer;
  let db: ReturnType<typeof openDatabase>;
  let sql: Sql;
  let events: SecretEventStore;
  let client: NexusClient;

  before(async () => {
    server = await startSecretServer();
    db = openDatabase(server.nexus.databaseUrl);
    sql = connectDatabase({ url: server.nexus.databaseUrl, poolMax: 4, logger: silentLogger });
    events = new SecretEventStore(sql);
    client = server.client("grpc");
  });

  after(async () => {
    await sql?.end();
    await db?.end();
    await server?.stop();
  });

  /** Every readable event after `from` (all transactions that wrote them have ended). */
  const readAll = async (from: EventPosition): Promise<SecretEventRow[]> => {
    const all: SecretEventRow[] = [];
    let at = from;
    for (;;) {
      const page = await events.readAfter(at, 100);
      all.push(...page.events);
      at = page.next;
      if (page.events.length < 100) return all;
    }
  };
  const brief = (rows: readonly SecretEventRow[]) => rows.map((r) => `${r.type} ${r.path} [${r.versions.join(",")}] [${r.labels.join(",")}]`);
  const insertEvent = (path: string, conn: Sql | ReturnType<typeof openDatabase> = db) =>
    conn`INSERT INTO secret_events (type, path) VALUES ('METADATA_UPDATED', ${path}) RETURNING id::text AS id, xid::text AS xid`;

  describe("triggers", () => {
    it("record each kind of change as one event naming path, versions and labels, and never a value", async () => {
      const from = await events.now();
      const p = "ev/kinds";
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { password: "hunter2-value" } }));
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { password: "staged-value" }, stage: SecretLabel.PENDING }));
      ok(await client.call(SecretService.method.promoteSecretVersion, { path: p, version: 2 }));
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { password: "third-value" } }));
      ok(await client.call(SecretService.method.deleteSecret, { path: p, versions: [1, 2] }));
      ok(await client.call(SecretService.method.undeleteSecret, { path: p, versions: [1] }));
      ok(await client.call(SecretService.method.destroySecret, { path: p, versions: [1] }));
      ok(await client.call(SecretService.method.updateSecretMetadata, { path: p, maxVersions: 5, updateMask: { paths: ["max_versions"] } }));
      ok(await client.call(SecretService.method.purgeSecret, { path: p }));
      const rows = (await readAll(from)).filter((r) => r.path === p);
      expect(brief(rows)).to.deep.equal([
        "VERSION_CREATED ev/kinds [1] [CURRENT]",
        "VERSION_CREATED ev/kinds [2] [PENDING]",
        "ROTATION_DUE ev/kinds [2] [PENDING]",
        "PROMOTED ev/kinds [2] [CURRENT]",
        "VERSION_CREATED ev/kinds [3] [CURRENT]",
        "DELETED ev/kinds [1,2] []",
        "UNDELETED ev/kinds [1] []",
        "DESTROYED ev/kinds [1] []",
        "METADATA_UPDATED ev/kinds [] []",
        "PURGED ev/kinds [] []",
      ]);
      const stored = JSON.stringify(await db`SELECT * FROM secret_events`);
      for (const value of ["hunter2-value", "staged-value", "third-value", "password"]) expect(stored).not.to.include(value);
    });

    it("record an expired secret's removal as EXPIRED, not PURGED", async () => {
      const from = await events.now();
      const expiresAt = timestampFromDate(new Date(Date.now() + 1500));
      ok(await client.call(SecretService.method.putSecret, { path: "ev/expiring", data: { k: "v" }, expiresAt }));
      await sleep(1700);
      await new SecretStore(sql).purgeExpired();
      const rows = (await readAll(from)).filter((r) => r.path === "ev/expiring");
      expect(brief(rows)).to.deep.equal(["VERSION_CREATED ev/expiring [1] [CURRENT]", "EXPIRED ev/expiring [] []"]);
    });

    it("an external rotation that comes due is one ROTATION_DUE event for its CURRENT, however often the scheduler looks", async () => {
      const from = await events.now();
      const p = "ev/external";
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { k: "v" } }));
      ok(await client.call(SecretService.method.updateSecretMetadata, { path: p, rotation: { period: { seconds: 60n, nanos: 0 }, generator: { case: "external", value: {} } }, updateMask: { paths: ["rotation"] } }));
      const store = new SecretStore(sql);
      expect(await store.markExternalRotationsDue(), "not due yet").to.equal(0);
      await db`UPDATE secret_versions SET created_at = now() - interval '2 minutes' WHERE secret_id = (SELECT id FROM secrets WHERE path = ${p})`;
      await store.markExternalRotationsDue();
      await store.markExternalRotationsDue();
      const rows = (await readAll(from)).filter((r) => r.path === p);
      expect(brief(rows)).to.deep.equal(["VERSION_CREATED ev/external [1] [CURRENT]", "METADATA_UPDATED ev/external [] []", "ROTATION_DUE ev/external [1] [CURRENT]"]);
    });

    it("a rotation that stages PENDING is VERSION_CREATED then ROTATION_DUE; one that promotes is VERSION_CREATED as CURRENT", async () => {
      const from = await events.now();
      const p = "ev/rotated";
      ok(await client.call(SecretService.method.putSecret, { path: p, data: { user: "app", password: "old" } }));
      const generator = { case: "randomBytes" as const, value: { length: 16 } };
      ok(await client.call(SecretService.method.rotateSecret, { path: p, generator, dataKey: "password" }));
      ok(await client.call(SecretService.method.rotateSecret, { path: p, generator, dataKey: "password", promote: true }));
      const rows = (await readAll(from)).filter((r) => r.path === p);
      expect(brief(rows)).to.deep.equal([
        "VERSION_CREATED ev/rotated [1] [CURRENT]",
        "VERSION_CREATED ev/rotated [2] [PENDING]",
        "ROTATION_DUE ev/rotated [2] [PENDING]",
        "VERSION_CREATED ev/rotated [3] [CURRENT]",
      ]);
    });

    it("puts that share one group-commit statement each get their own event", async () => {
      const from = await events.now();
      const paths = Array.from({ length: 12 }, (_, i) => `ev/batch/${i}`);
      await Promise.all(paths.map((path) => client.call(SecretService.method.putSecret, { path, data: { k: "v" } })));
      await Promise.all(paths.map(async (path) => ok(await client.call(SecretService.method.putSecret, { path, data: { k: "w" } }))));
      const rows = (await readAll(from)).filter((r) => r.path.startsWith("ev/batch/"));
      for (const path of paths) expect(brief(rows.filter((r) => r.path === path))).to.deep.equal([`VERSION_CREATED ${path} [1] [CURRENT]`, `VERSION_CREATED ${path} [2] [CURRENT]`]);
    });
  });

  describe("delivery order", () => {
    // A bigserial cursor fails this: A takes 10, B takes 11 and commits first;
    // a reader that saw 11 and moved its cursor past it would never see 10.
    it("a transaction that took the lower id but commits last is delivered once, in order, and nothing passes it", async () => {
      const from = await events.now();
      const a = await db.reserve();
      const b = await db.reserve();
      try {
        await a`BEGIN`;
        await b`BEGIN`;
        const [ea] = await insertEvent("order/a", a as never);
        const [eb] = await insertEvent("order/b", b as never);
        expect(Number(ea.id)).to.be.lessThan(Number(eb.id));
        await b`COMMIT`;
        // B has committed, but A (lower id, older xid) is still open: nothing is readable past A.
        const whileOpen = await events.readAfter(from, 100);
        expect(whileOpen.events.map((e) => e.path).filter((p) => p.startsWith("order/"))).to.deep.equal([]);
        await a`COMMIT`;
        const rows = (await readAll(whileOpen.next)).filter((e) => e.path.startsWith("order/"));
        expect(rows.map((e) => [e.path, e.position.id])).to.deep.equal([
          ["order/a", ea.id],
          ["order/b", eb.id],
        ]);
        // Resuming after either event gives exactly what followed it.
        expect((await readAll(rows[0].position)).filter((e) => e.path.startsWith("order/")).map((e) => e.path)).to.deep.equal(["order/b"]);
        expect((await readAll(rows[1].position)).filter((e) => e.path.startsWith("order/"))).to.deep.equal([]);
      } finally {
        a.release();
        b.release();
      }
    });

    it("an event of an aborted transaction is never delivered", async () => {
      const from = await events.now();
      await db.begin(async (tx) => {
        await tx`INSERT INTO secret_events (type, path) VALUES ('METADATA_UPDATED', 'order/rolled-back')`;
        throw new Error("roll back");
      }).catch(() => {});
      await insertEvent("order/after-rollback");
      expect((await readAll(from)).map((e) => e.path).filter((p) => p.startsWith("order/"))).to.deep.equal(["order/after-rollback"]);
    });
  });

  describe("cursor", () => {
    it("round-trips and refuses anything else as INVALID_ARGUMENT (MALFORMED_CURSOR)", () => {
      const c = encodeCursor({ xid: "12345", id: "67" }, 1_700_000_000_000);
      expect(decodeCursor(c)).to.deep.equal({ position: { xid: "12345", id: "67" }, issuedAt: 1_700_000_000_000 });
      expect(decodeCursor("")).to.equal(undefined);
      for (const bad of ["x", "not a cursor!", Buffer.from("w1.1.2").toString("base64url"), Buffer.from("w2.1.2.3").toString("base64url"), Buffer.from("w1.99999999999999999999.1.1").toString("base64url"), "A".repeat(300)]) {
        expect(() => decodeCursor(bad), bad).to.throw(NexusError).with.property("reason", "MALFORMED_CURSOR");
      }
    });
  });

  describe("hub", () => {
    let hub: WatchHub;
    const HOUR = 3_600_000;
    beforeEach(async () => {
      hub = new WatchHub({ store: events, logger: silentLogger, retentionMs: HOUR, pollIntervalMs: 200 });
      await hub.start();
    });
    afterEach(() => hub.stop());

    const open = (o: { prefix?: string; cursor?: string; visible?: (p: string) => boolean; bufferLimit?: number; heartbeatMs?: number; endAt?: number } = {}) =>
      hub.open({
        prefix: o.prefix ?? "hub/",
        cursor: decodeCursor(o.cursor ?? ""),
        visible: o.visible ?? (() => true),
        bufferLimit: o.bufferLimit ?? 100,
        heartbeatMs: o.heartbeatMs ?? 60_000,
        endAt: o.endAt ?? Date.now() + HOUR,
      });
    /** Reads `n` events that are not heartbeats. */
    const take = async (stream: WatchStream, n: number, timeoutMs = 5000): Promise<WatchEvent[]> => {
      const got: WatchEvent[] = [];
      const it = stream[Symbol.asyncIterator]();
      const deadline = Date.now() + timeoutMs;
      while (got.length < n) {
        const next = await Promise.race([it.next(), sleep(Math.max(0, deadline - Date.now())).then(() => "timeout" as const)]);
        if (next === "timeout") throw new Error(`only ${got.length} of ${n} events arrived: ${got.map((e) => e.path)}`);
        if (next.done) throw new Error(`the stream ended after ${got.length} events`);
        if (next.value.type !== "HEARTBEAT") got.push(next.value);
      }
      return got;
    };

    it("fans events out to every matching stream, filtered by prefix and by what the caller may see", async () => {
      const all = await open();
      const team = await open({ prefix: "hub/team/" });
      const hidden = await open({ visible: (p) => !p.endsWith("/secret") });
      for (const p of ["hub/a", "hub/team/x", "hub/team/secret", "other/z"]) await insertEvent(p);
      expect((await take(all, 3)).map((e) => e.path)).to.deep.equal(["hub/a", "hub/team/x", "hub/team/secret"]);
      expect((await take(team, 2)).map((e) => e.path)).to.deep.equal(["hub/team/x", "hub/team/secret"]);
      expect((await take(hidden, 2)).map((e) => e.path)).to.deep.equal(["hub/a", "hub/team/x"]);
      for (const s of [all, team, hidden]) s.end();
    });

    it("a resumed stream gets every event after its cursor once, in order, backlog then live", async () => {
      const first = await open({ prefix: "hub/resume/" });
      for (let i = 0; i < 5; i++) await insertEvent(`hub/resume/${i}`);
      const got = await take(first, 5);
      first.end();
      const cursor = got[1].cursor; // after event 1: events 2, 3, 4 were sent too, but not seen
      const resumed = await open({ prefix: "hub/resume/", cursor });
      for (let i = 5; i < 8; i++) await insertEvent(`hub/resume/${i}`);
      expect((await take(resumed, 6)).map((e) => e.path)).to.deep.equal([2, 3, 4, 5, 6, 7].map((i) => `hub/resume/${i}`));
      await sleep(300);
      resumed.end();
      const rest: WatchEvent[] = [];
      for await (const e of resumed) rest.push(e);
      expect(rest.filter((e) => e.type !== "HEARTBEAT")).to.deep.equal([]);
    });

    it("a stream that starts now is not sent events that ended before it opened, even when the hub has yet to read them", async () => {
      // A hub whose live reads wait at a gate: it lags the database.
      let open_ = () => {};
      const gate = new Promise<void>((resolve) => (open_ = resolve));
      const lagging = Object.create(events) as SecretEventStore;
      lagging.readAfter = async (after, limit, upTo) => {
        if (upTo === undefined) await gate;
        return events.readAfter(after, limit, upTo);
      };
      const slow = new WatchHub({ store: lagging, logger: silentLogger, retentionMs: HOUR, pollIntervalMs: 50 });
      await slow.start();
      try {
        await insertEvent("hub/lag/before");
        const stream = await slow.open({ prefix: "hub/lag/", cursor: undefined, visible: () => true, bufferLimit: 100, heartbeatMs: 60_000, endAt: Date.now() + HOUR });
        await insertEvent("hub/lag/after");
        open_();
        expect((await take(stream, 1)).map((e) => e.path)).to.deep.equal(["hub/lag/after"]);
        stream.end();
      } finally {
        open_();
        await slow.stop();
      }
    });

    it("a stream whose reader leaves (ends its iteration) is forgotten by the hub", async () => {
      const stream = await open();
      for await (const e of stream) {
        expect(e.type).to.equal("HEARTBEAT"); // the opening one
        break;
      }
      expect(stream.ended).to.equal(true);
      expect(hub.size).to.equal(0);
    });

    it("a cursor older than the retention is OUT_OF_RANGE (CURSOR_EXPIRED)", async () => {
      const old = encodeCursor(await events.now(), Date.now() - HOUR - 1000);
      const err = await open({ cursor: old }).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(NexusError).and.include({ code: "out_of_range", reason: "CURSOR_EXPIRED" });
    });

    it("a cursor ahead of this database is INVALID_ARGUMENT", async () => {
      const err = await open({ cursor: encodeCursor({ xid: "999999999999", id: "1" }, Date.now()) }).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(NexusError).and.include({ code: "invalid_argument", reason: "MALFORMED_CURSOR" });
    });

    it("a stream nobody reads ends with RESOURCE_EXHAUSTED once its buffer is full, and the hub forgets it", async () => {
      const stream = await open({ prefix: "hub/flood/", bufferLimit: 10 });
      await db`INSERT INTO secret_events (type, path) SELECT 'METADATA_UPDATED', 'hub/flood/' || i FROM generate_series(1, 50) i`;
      await eventually(() => expect(stream.ended).to.equal(true));
      const err = await (async () => {
        for await (const e of stream) void e;
      })().then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(NexusError).and.include({ code: "resource_exhausted", reason: "WATCH_BUFFER_FULL" });
      expect(hub.size).to.equal(0);
    });

    it("heartbeats carry the current cursor: resuming from one skips what was passed over, and nothing after it", async () => {
      const stream = await open({ prefix: "hub/beat/", heartbeatMs: 100 });
      await insertEvent("other/passed-over");
      await sleep(400);
      const it = stream[Symbol.asyncIterator]();
      let beat: WatchEvent | undefined;
      for (;;) {
        const next = await it.next();
        if (next.done) throw new Error("ended");
        if (next.value.type === "HEARTBEAT") beat = next.value;
        else throw new Error(`unexpected ${next.value.path}`);
        break;
      }
      stream.end();
      await insertEvent("hub/beat/after");
      const resumed = await open({ prefix: "hub/beat/", cursor: beat!.cursor });
      expect((await take(resumed, 1)).map((e) => e.path)).to.deep.equal(["hub/beat/after"]);
      resumed.end();
    });

    it("a stream ends cleanly at its deadline, and endAll ends every stream with the error given", async () => {
      const short = await open({ endAt: Date.now() + 300 });
      const started = Date.now();
      for await (const e of short) void e;
      expect(Date.now() - started).to.be.within(200, 3000);
      const a = await open();
      const sealed = new NexusError("unavailable", "sealed", { reason: "SEALED" });
      hub.endAll(sealed);
      const err = await (async () => {
        for await (const e of a) void e;
      })().then(() => undefined, (e: unknown) => e);
      expect(err).to.equal(sealed);
    });
  });
});
