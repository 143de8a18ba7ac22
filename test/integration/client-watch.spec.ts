// `watch()` of nexus/client against real replicas: it resumes from the last
// cursor it yielded on the next replica when its replica goes away (an event
// written while it was away arrives once), tells the caller when its cursor
// expired and goes on from a new stream, leaves a replica that stays silent,
// ends with a StreamFailure on what a reconnect cannot mend, and stops at once on break or abort, backoff included.

import { expect } from "chai";
import net from "node:net";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService, WatchEventType } from "../../gen/spike/nexus/v1/secret_pb.js";
import { createNexusClient, staticSvid, StreamFailure, type CallFailure, type ReplicatedNexusClient, type WatchItem } from "../../src/client/index.js";
import { freePort } from "../../src/store/embedded-postgres.js";
import { ADMIN_PASSWORD, FAST_KDF, ok, openDatabase, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { startTestServer, type TestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

const WATCH_RPC = "/spike.nexus.v1.SecretService/WatchSecrets";

describe("watch() in nexus/client", function () {
  this.timeout(60_000);
  let a: SecretTestServer;
  let b: TestServer;
  let proxy: TcpProxy;

  const clientFor = (addresses: string[]): ReplicatedNexusClient =>
    createNexusClient({ addresses, svid: staticSvid({ certPem: a.pki.superuser.certPem, keyPem: a.pki.superuser.keyPem, bundlePem: a.pki.ca.certPem }), retry: { initialMs: 20, maxMs: 200 } });
  const put = async (path: string, value: string) => ok(await b.client("grpc").call(SecretService.method.putSecret, { path, data: { k: value } }), `put ${path}`).version;
  /** The next item that is not a heartbeat. */
  const nextChange = async (it: AsyncIterator<WatchItem>): Promise<WatchItem> => {
    for (;;) {
      const r = await it.next();
      if (r.done) throw new Error("the watch ended");
      if (r.value.kind !== "event" || r.value.event.type !== WatchEventType.HEARTBEAT) return r.value;
    }
  };

  before(async () => {
    a = await startSecretServer();
    // Replica B keeps cursors 2 s, to expire one.
    b = await startTestServer({ pki: a.pki, databaseUrl: a.nexus.databaseUrl, env: { NEXUS_WATCH_RETENTION: "2s" }, start: FAST_KDF });
    ok(await b.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal replica B");
    proxy = await startTcpProxy(a.nexus.grpcPort);
  });
  after(async () => {
    await proxy?.close();
    await b?.stop();
    await a?.stop();
  });

  it("resumes from the last cursor on the next replica when its replica goes away: an event written meanwhile arrives once", async () => {
    const client = clientFor([`127.0.0.1:${proxy.port}`, `127.0.0.1:${b.nexus.grpcPort}`]);
    const disconnects: CallFailure[] = [];
    const connects: boolean[] = [];
    const it = client.watch("resume/", { onDisconnect: (f) => disconnects.push(f), onConnect: (resumed) => connects.push(resumed) });
    try {
      const first = await it.next();
      expect(first.value).to.deep.include({ kind: "event" });
      expect((first.value as { event: { type: WatchEventType } }).event.type).to.equal(WatchEventType.HEARTBEAT);
      await put("resume/db", "one");
      const one = await nextChange(it);
      expect(one.kind === "event" && [one.event.type, one.event.path, one.event.versions]).to.deep.equal([WatchEventType.VERSION_CREATED, "resume/db", [1]]);

      // Replica A goes away while the caller is not reading; a version is written meanwhile.
      await proxy.close();
      await put("resume/db", "two");
      const two = await nextChange(it);
      expect(two.kind === "event" && [two.event.type, two.event.path, two.event.versions]).to.deep.equal([WatchEventType.VERSION_CREATED, "resume/db", [2]]);
      expect(disconnects.map((f) => f.code)).to.include("UNAVAILABLE");
      expect(connects).to.deep.equal([false, true]);

      // Nothing twice: the next change is the next write.
      await put("resume/db", "three");
      const three = await nextChange(it);
      expect(three.kind === "event" && three.event.versions).to.deep.equal([3]);
    } finally {
      await it.return();
      client.close();
    }
  });

  it("an expired cursor yields cursor_expired once, then the events after it from a new stream", async () => {
    const client = clientFor([`127.0.0.1:${b.nexus.grpcPort}`]);
    try {
      const opening = client.watch("expiry/");
      const heartbeat = (await opening.next()).value as WatchItem;
      await opening.return();
      expect(heartbeat.kind).to.equal("event");
      const cursor = heartbeat.kind === "event" ? heartbeat.event.cursor : "";
      await sleep(2200); // replica B keeps cursors 2 s

      const it = client.watch("expiry/", { cursor });
      try {
        const expired = (await it.next()).value as WatchItem;
        expect(expired).to.include({ kind: "cursor_expired" });
        await put("expiry/db", "after");
        const change = await nextChange(it);
        expect(change.kind === "event" && [change.event.path, change.event.versions]).to.deep.equal(["expiry/db", [1]]);
      } finally {
        await it.return();
      }
    } finally {
      client.close();
    }
  });

  it("a failure a reconnect cannot mend (a malformed cursor) ends the iteration with a StreamFailure", async () => {
    const client = clientFor([`127.0.0.1:${b.nexus.grpcPort}`]);
    try {
      let failure: unknown;
      try {
        for await (const item of client.watch("", { cursor: "not-a-cursor" })) expect.fail(`nothing yielded, got ${item.kind}`);
      } catch (err) {
        failure = err;
      }
      expect(failure).to.be.instanceOf(StreamFailure).and.to.include({ code: "INVALID_ARGUMENT", reason: "MALFORMED_CURSOR" });
    } finally {
      client.close();
    }
  });

  it("leaving the loop with break ends the server's stream", async () => {
    const db = openDatabase(a.nexus.databaseUrl);
    const client = clientFor([`127.0.0.1:${b.nexus.grpcPort}`]);
    try {
      const [{ n }] = await db`SELECT count(*)::int AS n FROM audit_events WHERE rpc = ${WATCH_RPC}`;
      for await (const item of client.watch("break/")) {
        expect(item.kind).to.equal("event");
        break;
      }
      await eventually(async () => {
        const rows = await db`SELECT detail->>'stream' AS stream FROM audit_events WHERE rpc = ${WATCH_RPC} ORDER BY id OFFSET ${n}`;
        expect(rows.map((r) => r.stream)).to.deep.equal(["started", "ended"]);
      });
    } finally {
      client.close();
      await db.end();
    }
  });

  it("a hung replica listed first (accepts TCP, never answers) is left after the idle timeout for the next one", async () => {
    const sockets = new Set<net.Socket>();
    const hung = net.createServer((socket) => sockets.add(socket.on("error", () => {})));
    await new Promise<void>((resolve) => hung.listen(0, "127.0.0.1", resolve));
    const client = clientFor([`127.0.0.1:${(hung.address() as net.AddressInfo).port}`, `127.0.0.1:${b.nexus.grpcPort}`]);
    const disconnects: CallFailure[] = [];
    const it = client.watch("hung/", { idleTimeoutMs: 500, onDisconnect: (f) => disconnects.push(f) });
    try {
      const started = Date.now();
      const first = (await it.next()).value as WatchItem;
      expect(first.kind === "event" && first.event.type).to.equal(WatchEventType.HEARTBEAT);
      expect(Date.now() - started).to.be.below(3000);
      expect(sockets.size, "the hung replica was tried first").to.be.at.least(1);
      expect(disconnects.map((f) => [f.code, f.message])).to.deep.equal([["UNAVAILABLE", "no message from the server within 500 ms"]]);
      await put("hung/db", "v");
      const change = await nextChange(it);
      expect(change.kind === "event" && change.event.path).to.equal("hung/db");
    } finally {
      await it.return();
      client.close();
      sockets.forEach((s) => s.destroy());
      await new Promise((resolve) => hung.close(resolve));
    }
  });

  it("aborting the signal during a reconnect backoff ends the iteration at once, without an error", async () => {
    const client = clientFor([`127.0.0.1:${await freePort()}`]); // nobody listens: UNAVAILABLE
    const abort = new AbortController();
    const disconnects: number[] = [];
    try {
      const it = client.watch("", { signal: abort.signal, backoff: { initialMs: 60_000, maxMs: 60_000 }, onDisconnect: (_, retryInMs) => disconnects.push(retryInMs) });
      const pending = it.next();
      await eventually(() => expect(disconnects).to.have.length(1));
      const started = Date.now();
      abort.abort();
      expect(await pending).to.deep.equal({ done: true, value: undefined });
      expect(Date.now() - started).to.be.below(1000);
    } finally {
      client.close();
    }
  });
});
