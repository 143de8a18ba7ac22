// The audit record of one call, against an in-memory store: which sequence
// number each outcome is written under. A number whose statement's fate is
// unknown (the database became unreachable) is never written a second time;
// a definite failure leaves it free for the call's own event; a failure after
// the event was written gets a follow-up that points at it.

import { expect } from "chai";
import { GrantEpochs } from "../../../src/keys/grant-epochs.js";
import { AuditLog, checkpointVerifies } from "../../../src/audit/audit-log.js";
import { NexusError } from "../../../src/errors/nexus-error.js";
import type { KeyManager } from "../../../src/keys/key-manager.js";
import { silentLogger } from "../../../src/log/logger.js";
import type { AuditRow } from "../../../src/audit/audit-event.js";
import type { AuditStore, BatchEvent, Checkpoint, ReadableVersion } from "../../../src/store/audit-store.js";

const VERSION: ReadableVersion = {
  secretId: "00000000-0000-4000-8000-000000000001", path: "a/b", dataKeyId: 1, wrappedDataKey: Buffer.alloc(1),
  keyringKeyId: 1, version: 1, ciphertext: Buffer.alloc(1), createdAt: new Date(),
  labels: { latestVersion: 1, currentVersion: 1, pendingVersion: null, previousVersion: null, labelEpoch: 0, labelsMac: null },
};

/** Stores events; `mode` decides what the next batch does. */
class MemoryStore {
  readonly rows: AuditRow[] = [];
  readonly checkpoints: Checkpoint[] = [];
  mode: "ok" | "unreachable" = "ok";
  readable = new Set<string>();

  async insertBatch(events: readonly BatchEvent[]): Promise<Map<number, ReadableVersion>> {
    if (this.mode === "unreachable") throw new NexusError("unavailable", "the database is unavailable", { cause: Object.assign(new Error("reset"), { code: "ECONNRESET" }) });
    const found = new Map<number, ReadableVersion>();
    events.forEach((e, i) => {
      if (e.read !== undefined && !this.readable.has(e.read.path)) return;
      if (e.read !== undefined) found.set(i, VERSION);
      this.rows.push(e.row);
    });
    return found;
  }

  async insertCheckpoint(c: Checkpoint): Promise<void> {
    this.checkpoints.push(c);
  }
}

// Unsealed throughout: nothing is signed.
const noSigner = { sign: () => { throw new Error("unsealed events are MAC'd, not signed"); } };
const keys = { sealed: false, integrityKey: () => Buffer.alloc(32, 1), onSealChange() {} } as unknown as KeyManager;

function setup() {
  const store = new MemoryStore();
  const log = new AuditLog(store as unknown as AuditStore, keys, noSigner, silentLogger, new GrantEpochs(keys), "replica-1");
  const call = () => log.begin({ requestId: "r", rpc: "/spike.nexus.v1.SecretService/GetSecret", time: new Date() });
  const written = () => store.rows.map((r) => `${r.sequence} ${r.outcome} ${r.code}${r.detail.after_sequence ? ` after ${String(r.detail.after_sequence)}` : ""}`);
  return { store, log, call, written };
}

describe("CallRecord sequence numbers", () => {
  it("a read that finds its version is the call's one ok event", async () => {
    const { store, call, written } = setup();
    store.readable.add("a/b");
    const record = call();
    expect(await record.recordRead({ path: "a/b", version: 0 })).to.equal(VERSION);
    await record.finish("ok", "OK");
    expect(written()).to.deep.equal(["1 ok OK"]);
  });

  it("a read that finds nothing leaves its number for the call's own outcome", async () => {
    const { call, written } = setup();
    const record = call();
    expect(await record.recordRead({ path: "a/b", version: 0 })).to.equal(undefined);
    await record.finish("error", "NOT_FOUND");
    expect(written()).to.deep.equal(["1 error NOT_FOUND"]);
  });

  it("a read whose batch met an unreachable database never reuses its number: the failure is a follow-up", async () => {
    const { store, log, call, written } = setup();
    store.mode = "unreachable";
    const record = call();
    const failure = await record.recordRead({ path: "a/b", version: 0 }).catch((e: unknown) => e);
    expect(failure).to.be.instanceOf(NexusError);
    store.mode = "ok";
    await record.finish("error", "UNAVAILABLE");
    expect(written()).to.deep.equal(["2 error UNAVAILABLE after 1"]);
    expect(log.head, "1 is given up, not waited for: checkpoints go on covering new events").to.equal(2);
  });

  it("numbers given up are listed in the next checkpoint, under its MAC, so verification does not call them deleted", async () => {
    const { store, log, call } = setup();
    store.mode = "unreachable";
    const record = call();
    await record.recordRead({ path: "a/b", version: 0 }).catch(() => {});
    store.mode = "ok";
    await record.finish("error", "UNAVAILABLE");
    await log.checkpoint();
    const [c] = store.checkpoints;
    expect({ last: c.lastSequence, givenUp: c.givenUp }).to.deep.equal({ last: 2, givenUp: [1, 1] });
    expect(checkpointVerifies(keys.integrityKey(), c, c.mac)).to.equal(true);
    expect(checkpointVerifies(keys.integrityKey(), { ...c, givenUp: [] }, c.mac), "the list is under the MAC").to.equal(false);
  });

  it("a change whose statement met an unreachable database is recorded the same way; a definite refusal reuses the number", async () => {
    const { call, written } = setup();
    const lost = call();
    lost.prepare();
    await lost.finish("error", "UNAVAILABLE");
    const refused = call();
    refused.prepare();
    await refused.finish("error", "ABORTED");
    // The lost change's follow-up took number 2 before the next call began.
    expect(written()).to.deep.equal(["2 error UNAVAILABLE after 1", "3 error ABORTED"]);
  });

  it("an event that cannot be written at all is given up: the head moves past it", async () => {
    const { store, log, call, written } = setup();
    store.mode = "unreachable";
    const lost = call();
    expect(await lost.finish("error", "NOT_FOUND").catch((e: unknown) => e)).to.be.instanceOf(NexusError);
    store.mode = "ok";
    await call().finish("error", "NOT_FOUND");
    expect(written()).to.deep.equal(["2 error NOT_FOUND"]);
    expect(log.head).to.equal(2);
  });

  it("a batch the database refuses goes again one event at a time, failing only the event it refuses", async () => {
    const { store, call, written } = setup();
    const insert = store.insertBatch.bind(store);
    let calls = 0;
    store.insertBatch = async (events) => {
      calls++;
      if (events.some((e) => e.row.path === "bad")) {
        throw new NexusError("internal", "internal database error", { cause: Object.assign(new Error("check"), { code: "23514" }) });
      }
      return insert(events);
    };
    const a = call();
    const b = call();
    b.subject("bad", null);
    const c = call();
    const results = await Promise.allSettled([a.finish("error", "NOT_FOUND"), b.finish("error", "NOT_FOUND"), c.finish("error", "NOT_FOUND")]);
    expect(results.map((r) => r.status)).to.deep.equal(["fulfilled", "rejected", "fulfilled"]);
    expect(written().sort()).to.deep.equal(["1 error NOT_FOUND", "3 error NOT_FOUND"]);
    expect(calls, "one batch, then one statement per event").to.equal(4);
  });
});
