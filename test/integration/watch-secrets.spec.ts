// WatchSecrets over the wire, on both listeners, with two replicas on one
// database: a write through one replica reaches a watcher on the other within
// a second; a cursor resumes with every later event once, in order; an empty
// cursor starts now; expired and malformed cursors are refused; a watcher
// never sees a path it may not READ and LIST; a client that stops reading is
// ended with RESOURCE_EXHAUSTED; heartbeats carry the cursor; streams end at
// SVID expiry, after their maximum lifetime and on seal; opening and closing
// are audited, single events are not.

import { expect } from "chai";
import type { MessageShape } from "@bufbuild/protobuf";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { Permission, PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { SecretLabel, SecretService, WatchEventType } from "../../gen/spike/nexus/v1/secret_pb.js";
import { StreamFailure, type NexusClient } from "../../src/client/nexus-client.js";
import { createPolicy, exactly, issueSvid, login, spiffeId } from "../support/admin-fixtures.js";
import { ADMIN_PASSWORD, adminSession, FAST_KDF, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, startTestServer, SUPERUSER_ID, type TestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

type WatchResponse = MessageShape<typeof SecretService.method.watchSecrets.output>;
const WATCH_RPC = "/spike.nexus.v1.SecretService/WatchSecrets";
const HEARTBEAT_MS = 300;

/** A watch read in the background: what arrived, and how it ended. */
interface Watcher {
  readonly events: WatchResponse[];
  /** Non-heartbeat events. */
  changes(): WatchResponse[];
  readonly done: Promise<StreamFailure | undefined>;
  /** Resolves once the stream has sent its first message (it is open). */
  readonly opened: Promise<void>;
  stop(): Promise<void>;
}

function watch(client: NexusClient, prefix: string, cursor = ""): Watcher {
  const events: WatchResponse[] = [];
  let stopped = false;
  let markOpen!: () => void;
  const opened = new Promise<void>((resolve) => (markOpen = resolve));
  const done = (async () => {
    try {
      for await (const e of client.stream(SecretService.method.watchSecrets, { prefix, cursor })) {
        events.push(e);
        markOpen();
        if (stopped) break;
      }
      return undefined;
    } catch (err) {
      if (err instanceof StreamFailure) return err;
      throw err;
    } finally {
      markOpen();
    }
  })();
  return {
    events,
    changes: () => events.filter((e) => e.type !== WatchEventType.HEARTBEAT),
    done,
    opened,
    async stop() {
      stopped = true;
      await done;
    },
  };
}

describe("WatchSecrets", function () {
  this.timeout(120_000);

  let a: SecretTestServer;
  let b: TestServer;
  let db: ReturnType<typeof openDatabase>;

  before(async () => {
    a = await startSecretServer({ start: { watchHeartbeatMs: HEARTBEAT_MS, watchBufferLimit: 64 } });
    // Replica B: short cursor retention and stream lifetime, to test both.
    b = await startTestServer({
      pki: a.pki,
      databaseUrl: a.nexus.databaseUrl,
      env: { NEXUS_WATCH_RETENTION: "2s", NEXUS_WATCH_MAX_LIFETIME: "4s" },
      start: { ...FAST_KDF, watchHeartbeatMs: HEARTBEAT_MS },
    });
    ok(await b.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal replica B");
    db = openDatabase(a.nexus.databaseUrl);
  });

  after(async () => {
    await db?.end();
    await b?.stop();
    await a?.stop();
  });

  const put = async (client: NexusClient, path: string) => ok(await client.call(SecretService.method.putSecret, { path, data: { k: "never-in-an-event" } }), `put ${path}`).version;

  it("an open watch holds back no audit checkpoint: VerifyAuditLog reports no gap while it stays open", async () => {
    const client = a.client("grpc");
    const token = await adminSession(client);
    const w = watch(client, "held/");
    await w.opened;
    try {
      // Calls numbered after the watch opened, then a checkpoint over them (the verifier writes one).
      for (let i = 0; i < 5; i++) await put(client, `held/s${i}`);
      await eventually(async () => {
        const report = ok(await client.call(OperatorService.method.verifyAuditLog, {}, { bearerToken: token }), "VerifyAuditLog");
        expect(report.problems.map((p) => `${p.kind} ${p.replicaId}#${p.sequence}: ${p.description}`)).to.deep.equal([]);
      }, { timeoutMs: 3000, intervalMs: 100 });
      expect(w.changes().length, "the watch is still open and saw the puts").to.equal(5);
    } finally {
      await w.stop();
    }
  });

  for (const listener of LISTENERS) {
    describe(`on the ${listener} listener`, () => {
      it("a put through replica A reaches a watcher on replica B within 1 s, as one event without the value", async () => {
        const path = `x-${listener}/cross/db`;
        const w = watch(b.client(listener), `x-${listener}/cross/`);
        await w.opened;
        const started = Date.now();
        await put(a.client("grpc"), path);
        await eventually(() => expect(w.changes()).to.have.length(1), { intervalMs: 5, timeoutMs: 5000 });
        const latency = Date.now() - started;
        await w.stop();
        expect(latency, "delivery across replicas").to.be.below(1000);
        const [e] = w.changes();
        expect(e).to.deep.include({ type: WatchEventType.VERSION_CREATED, path, versions: [1], labels: [SecretLabel.CURRENT] });
        expect(e.time).to.not.equal(undefined);
        expect(e.cursor).to.match(/^[A-Za-z0-9_-]+$/);
        expect(JSON.stringify(w.events, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))).not.to.include("never-in-an-event");
      });

      it("resuming with a cursor delivers every later event once, in order", async () => {
        const prefix = `x-${listener}/resume/`;
        const client = a.client(listener);
        const first = watch(client, prefix);
        await first.opened;
        for (let i = 1; i <= 3; i++) await put(client, `${prefix}${i}`);
        await eventually(() => expect(first.changes()).to.have.length(3));
        await first.stop();
        const cursor = first.changes()[0].cursor;
        for (let i = 4; i <= 5; i++) await put(client, `${prefix}${i}`); // while nobody watches
        const resumed = watch(client, prefix, cursor);
        await resumed.opened;
        await put(client, `${prefix}6`);
        await eventually(() => expect(resumed.changes()).to.have.length(5));
        await sleep(3 * HEARTBEAT_MS); // duplicates would show up by now
        await resumed.stop();
        expect(resumed.changes().map((e) => e.path)).to.deep.equal([2, 3, 4, 5, 6].map((i) => `${prefix}${i}`));
      });

      it("an empty cursor starts now: earlier events are not sent", async () => {
        const prefix = `x-${listener}/now/`;
        const client = a.client(listener);
        await put(client, `${prefix}before`);
        const w = watch(client, prefix);
        await w.opened;
        await put(client, `${prefix}after`);
        await eventually(() => expect(w.changes()).to.have.length(1));
        await sleep(2 * HEARTBEAT_MS);
        await w.stop();
        expect(w.changes().map((e) => e.path)).to.deep.equal([`${prefix}after`]);
      });

      it("the first message of an idle stream is a HEARTBEAT carrying a cursor to resume from", async () => {
        const w = watch(a.client(listener), `x-${listener}/idle/`);
        await w.opened;
        await w.stop();
        expect(w.events[0]).to.deep.include({ type: WatchEventType.HEARTBEAT, path: "", versions: [] });
        expect(w.events[0].cursor).to.not.equal("");
        const resumed = watch(a.client(listener), `x-${listener}/idle/`, w.events[0].cursor);
        await resumed.opened;
        await resumed.stop();
        expect(resumed.changes()).to.deep.equal([]);
      });

      it("a cursor older than the retention is OUT_OF_RANGE (CURSOR_EXPIRED)", async () => {
        const w = watch(b.client(listener), `x-${listener}/expired/`);
        await w.opened;
        await w.stop();
        await sleep(2200); // replica B keeps cursors 2 s
        const failure = await watch(b.client(listener), `x-${listener}/expired/`, w.events[0].cursor).done;
        expect(failure).to.include({ code: "OUT_OF_RANGE", reason: "CURSOR_EXPIRED" });
      });

      it("a malformed cursor or prefix is INVALID_ARGUMENT naming the field", async () => {
        const failure = await watch(a.client(listener), "", "not-a-cursor").done;
        expect(failure).to.include({ code: "INVALID_ARGUMENT", reason: "MALFORMED_CURSOR" });
        expect(failure?.violations?.[0]?.field).to.equal("cursor");
        const badPrefix = await watch(a.client(listener), "a b").done;
        expect(badPrefix).to.include({ code: "INVALID_ARGUMENT", reason: "INVALID_PREFIX" });
      });
    });
  }

  describe("authorization", () => {
    let token: string;
    before(async () => {
      token = (await login(a.client("grpc"))).token;
    });

    it("a watcher sees only paths it may both READ and LIST, by the policies in force when each event is sent", async () => {
      const id = spiffeId("workload/watcher");
      await createPolicy(a.client("grpc"), token, { name: "watcher-list", spiffeIdPattern: exactly(id), pathPattern: "authz/.+", permissions: [Permission.LIST] });
      await createPolicy(a.client("grpc"), token, { name: "watcher-read", spiffeIdPattern: exactly(id), pathPattern: "authz/open/.+", permissions: [Permission.READ] });
      const cert = await issueSvid(a, id);
      for (const listener of LISTENERS) {
        const w = watch(b.client(listener, cert), "authz/");
        await w.opened;
        const admin = a.client("grpc");
        await put(admin, `authz/closed/${listener}`); // LIST but no READ
        await put(admin, `authz/open/${listener}`);
        await eventually(() => expect(w.changes()).to.have.length(1));
        await sleep(2 * HEARTBEAT_MS);
        await w.stop();
        expect(w.changes().map((e) => e.path), listener).to.deep.equal([`authz/open/${listener}`]);
      }
      // A grant revoked while the stream is open stops the next event.
      const w = watch(b.client("grpc", cert), "authz/");
      await w.opened;
      await put(a.client("grpc"), "authz/open/before-revoke");
      await eventually(() => expect(w.changes()).to.have.length(1));
      ok(await a.client("grpc").call(PolicyService.method.deletePolicy, { name: "watcher-read" }, { bearerToken: token }), "DeletePolicy");
      await sleep(1000); // replica B reloads its policies on the NOTIFY
      await put(a.client("grpc"), "authz/open/after-revoke");
      await sleep(1000);
      await w.stop();
      expect(w.changes().map((e) => e.path)).to.deep.equal(["authz/open/before-revoke"]);
    });

    it("a watcher with no LIST anywhere is PERMISSION_DENIED", async () => {
      const cert = await issueSvid(a, spiffeId("workload/no-list"));
      for (const listener of LISTENERS) {
        const failure = await watch(a.client(listener, cert), "").done;
        expect(failure, listener).to.include({ code: "PERMISSION_DENIED" });
      }
    });
  });

  describe("ending", () => {
    it("a client that stops reading is ended with RESOURCE_EXHAUSTED (WATCH_BUFFER_FULL)", async () => {
      const client = a.client("grpc");
      const iterator = client.stream(SecretService.method.watchSecrets, { prefix: "flood/" })[Symbol.asyncIterator]();
      const first = await iterator.next(); // open, then stop reading
      expect(first.value?.type).to.equal(WatchEventType.HEARTBEAT);
      await db`INSERT INTO secret_events (type, path) SELECT 'METADATA_UPDATED', 'flood/' || i FROM generate_series(1, 30000) i`;
      await eventually(
        async () => expect((await db`SELECT 1 FROM audit_events WHERE rpc = ${WATCH_RPC} AND code = 'RESOURCE_EXHAUSTED'`).length).to.equal(1),
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      let received = 0;
      const failure = await (async () => {
        for (;;) {
          const next = await iterator.next();
          if (next.done) return undefined;
          received++;
        }
      })().catch((err: unknown) => err);
      expect(failure).to.be.instanceOf(StreamFailure).and.include({ code: "RESOURCE_EXHAUSTED", reason: "WATCH_BUFFER_FULL" });
      expect(received, "the server stopped sending long before the end").to.be.below(30000);
    });

    it("a stream ends by itself (OK) when the caller's SVID expires", async () => {
      const cert = await a.pki.ca.issue({ uris: [SUPERUSER_ID], notAfter: new Date(Date.now() + 2500) });
      const w = watch(a.client("grpc", cert), "svid/");
      await w.opened;
      const started = Date.now();
      expect(await w.done).to.equal(undefined);
      expect(Date.now() - started).to.be.below(4000);
    });

    it("a stream ends by itself (OK) after the maximum lifetime", async () => {
      const w = watch(b.client("connect"), "lifetime/");
      await w.opened;
      const started = Date.now();
      expect(await w.done).to.equal(undefined);
      expect(Date.now() - started).to.be.within(2500, 6000); // replica B: 4 s
    });

    it("opening and closing a watch are audited; single events are not", async () => {
      const [before] = await db`SELECT count(*)::int AS n FROM audit_events WHERE rpc = ${WATCH_RPC}`;
      const w = watch(a.client("grpc"), "audited/");
      await w.opened;
      for (let i = 0; i < 3; i++) await put(a.client("grpc"), `audited/${i}`);
      await eventually(() => expect(w.changes()).to.have.length(3));
      await w.stop();
      await eventually(async () => {
        const rows = await db`SELECT detail->>'stream' AS stream FROM audit_events WHERE rpc = ${WATCH_RPC} ORDER BY id OFFSET ${before.n}`;
        expect(rows.map((r) => r.stream)).to.deep.equal(["started", "ended"]);
      });
    });

    it("sealing a replica ends its streams with FAILED_PRECONDITION (SEALED)", async () => {
      const w = watch(b.client("grpc"), "seal/");
      await w.opened;
      await seal(b.client("grpc"));
      const failure = await w.done;
      expect(failure).to.include({ code: "FAILED_PRECONDITION", reason: "SEALED" });
    });
  });
});
