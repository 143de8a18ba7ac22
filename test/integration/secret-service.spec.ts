// SecretService over the wire, on both mTLS listeners: versioned puts and reads,
// the path and size rules, check-and-set, delete / undelete / destroy / purge,
// pruning past max_versions, metadata, the superuser seam and the sealed state.
// Each listener works under its own path prefix on one shared server.

import { protoCamelCase } from "@bufbuild/protobuf/reflect";
import { expect } from "chai";
import type { DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { StreamFailure, type CallResult, type NexusClient } from "../../src/client/nexus-client.js";
import { ADMIN_PASSWORD, fails, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, SUPERUSER_ID } from "../support/test-server.js";

const KIB = 1024;

/** The fields of an UpdateSecretMetadataRequest besides its path. */
interface UpdateFields {
  readonly maxVersions?: number;
  readonly customMetadata?: Record<string, string>;
  readonly expiresAt?: Timestamp;
  readonly updateMask?: { readonly paths: string[] };
}

/** One call of any SecretService RPC, for tables that must cover them all. */
interface RpcCall {
  readonly name: string;
  call(client: NexusClient): Promise<CallResult<DescMethodUnary>>;
}

function rpc<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>): RpcCall {
  return { name: method.name, call: (client) => client.call(method, request) as Promise<CallResult<DescMethodUnary>> };
}

/** WatchSecrets as one call: OK once its first response (the opening heartbeat) arrives, or the failure it ended with. */
function watchRpc(prefix: string): RpcCall {
  return {
    name: SecretService.method.watchSecrets.name,
    async call(client) {
      try {
        for await (const first of client.stream(SecretService.method.watchSecrets, { prefix })) {
          return { code: "OK", response: first } as unknown as CallResult<DescMethodUnary>;
        }
        throw new Error("the watch ended without a response");
      } catch (err) {
        if (!(err instanceof StreamFailure)) throw err;
        return { code: err.code, message: err.message, reason: err.reason, violations: err.violations };
      }
    },
  };
}

/** Every SecretService RPC once, with a valid request about `path` (purge last). */
function everySecretRpc(path: string): RpcCall[] {
  return [
    rpc(SecretService.method.putSecret, { path, data: { k: "v2" } }),
    rpc(SecretService.method.getSecret, { path }),
    rpc(SecretService.method.listSecrets, { prefix: path }),
    rpc(SecretService.method.deleteSecret, { path }),
    rpc(SecretService.method.undeleteSecret, { path, versions: [2] }),
    rpc(SecretService.method.destroySecret, { path, versions: [1] }),
    rpc(SecretService.method.getSecretMetadata, { path }),
    rpc(SecretService.method.updateSecretMetadata, { path, maxVersions: 5, updateMask: { paths: ["max_versions"] } }),
    rpc(SecretService.method.promoteSecretVersion, { path, version: 2 }),
    rpc(SecretService.method.rotateSecret, { path, generator: { case: "randomBytes", value: { length: 16 } }, dataKey: "k" }),
    watchRpc(path),
    rpc(SecretService.method.purgeSecret, { path }),
  ];
}

// Each row breaks one path rule; `rule` is a fragment of the message that names it.
const BAD_PATHS: ReadonlyArray<{ name: string; path: string; rule: string }> = [
  { name: "empty", path: "", rule: "must not be empty" },
  { name: "256 characters", path: "a".repeat(256), rule: "at most 255" },
  { name: "a leading /", path: "/apps/db", rule: "must not start or end" },
  { name: "a trailing /", path: "apps/db/", rule: "must not start or end" },
  { name: "an empty segment (//)", path: "apps//db", rule: "empty segment" },
  { name: 'a "." segment', path: "apps/./db", rule: '"." or ".."' },
  { name: 'a ".." segment', path: "apps/../db", rule: '"." or ".."' },
  { name: "a lone ..", path: "..", rule: '"." or ".."' },
  { name: "a space", path: "a b", rule: "may contain only" },
  { name: "a non-ASCII letter", path: "ä", rule: "may contain only" },
  { name: "a backslash", path: "apps\\db", rule: "may contain only" },
  { name: "a colon", path: "apps:db", rule: "may contain only" },
  { name: "a NUL byte", path: "apps\u0000db", rule: "may contain only" },
];

// Each row builds a valid path under a listener's own prefix.
const GOOD_PATHS: ReadonlyArray<{ name: string; path: (prefix: string) => string }> = [
  { name: "exactly 255 characters", path: (prefix) => prefix + "g".repeat(255 - prefix.length) },
  { name: "every allowed character", path: (prefix) => prefix + "edge/AZaz09._-/x" },
  { name: 'segments that merely contain dots ("..a", "a.", ".b")', path: (prefix) => prefix + "edge/..a/a./.b" },
];

describe("SecretService", function () {
  this.timeout(60_000);
  let server: SecretTestServer;

  before(async () => {
    server = await startSecretServer();
  });

  after(async () => server?.stop());

  for (const listener of LISTENERS) {
    describe(`on the ${listener} listener`, () => {
      let client: NexusClient;
      const at = (name: string) => `${listener}/${name}`;
      const put = async (path: string, data: Record<string, string>, extra: { cas?: number } = {}) =>
        ok(await client.call(SecretService.method.putSecret, { path, data, ...extra }), `put ${path}`);
      const get = (path: string, version = 0) => client.call(SecretService.method.getSecret, { path, version });
      const metadata = async (path: string) => ok(await client.call(SecretService.method.getSecretMetadata, { path }), `metadata ${path}`).metadata!;

      before(() => {
        client = server.client(listener);
      });

      describe("PutSecret and GetSecret", () => {
        it("a first put writes version 1, and GetSecret with version 0 reads the current version", async () => {
          const before = Date.now();
          const written = await put(at("basic/first"), { user: "admin", password: "hunter2-" + listener });
          expect(written.version).to.equal(1);
          const createdAt = timestampDate(written.createdAt!).getTime();
          expect(createdAt).to.be.within(before - 5000, Date.now() + 5000);

          const read = ok(await get(at("basic/first")), "get");
          expect(read.path).to.equal(at("basic/first"));
          expect(read.version).to.equal(1);
          expect(read.data).to.deep.equal({ user: "admin", password: "hunter2-" + listener });
          expect(timestampDate(read.createdAt!).getTime()).to.equal(createdAt);
        });

        it("each put writes the next version; every kept version reads by number and version 0 reads the newest", async () => {
          const path = at("basic/versions");
          for (const n of [1, 2, 3]) expect((await put(path, { n: String(n) })).version).to.equal(n);
          for (const n of [1, 2, 3]) {
            const read = ok(await get(path, n), `version ${n}`);
            expect(read.version).to.equal(n);
            expect(read.data).to.deep.equal({ n: String(n) });
          }
          expect(ok(await get(path, 0)).data).to.deep.equal({ n: "3" });
        });

        it("data keeps every key and value exactly, including empty and non-ASCII values", async () => {
          const data = { a: "", "key with spaces": "välue ✓", json: '{"x":[1,2]}', newline: "line1\nline2" };
          await put(at("basic/exact"), data);
          expect(ok(await get(at("basic/exact"))).data).to.deep.equal(data);
        });

        it("every path rule is enforced on every RPC that takes a path, as INVALID_ARGUMENT naming the rule", async () => {
          for (const bad of BAD_PATHS) {
            // ListSecrets and WatchSecrets take a prefix, whose rules differ.
            for (const r of everySecretRpc(bad.path).filter((c) => c.name !== "ListSecrets" && c.name !== "WatchSecrets")) {
              const message = fails(await r.call(client), "INVALID_ARGUMENT", `${r.name} with ${bad.name}`);
              expect(message, `${r.name} with ${bad.name}`).to.include("path").and.include(bad.rule);
            }
          }
        });

        it("paths at the edges of the rules are accepted", async () => {
          for (const good of GOOD_PATHS) {
            const path = good.path(at(""));
            ok(await client.call(SecretService.method.putSecret, { path, data: { k: "v" } }), good.name);
            expect(ok(await get(path), good.name).data).to.deep.equal({ k: "v" });
          }
        });

        it("empty data is INVALID_ARGUMENT and nothing is written", async () => {
          const message = fails(await client.call(SecretService.method.putSecret, { path: at("size/empty"), data: {} }), "INVALID_ARGUMENT");
          expect(message).to.include("data");
          fails(await client.call(SecretService.method.getSecretMetadata, { path: at("size/empty") }), "NOT_FOUND");
          // Checked before anything else about the put, even a cas no version can have.
          expect(fails(await client.call(SecretService.method.putSecret, { path: at("size/empty"), data: {}, cas: 4_294_967_295 }), "INVALID_ARGUMENT")).to.include("data");
        });

        it("data just under 64 KiB is accepted", async () => {
          const value = "x".repeat(63 * KIB);
          await put(at("size/large"), { value });
          expect(ok(await get(at("size/large"))).data.value).to.have.length(63 * KIB);
        });

        it("data over 64 KiB is RESOURCE_EXHAUSTED and nothing is written, for a new path or a new version", async () => {
          const tooBig = { value: "y".repeat(64 * KIB) };
          const message = fails(await client.call(SecretService.method.putSecret, { path: at("size/too-big"), data: tooBig }), "RESOURCE_EXHAUSTED");
          expect(message).to.not.include("yyyy");
          fails(await client.call(SecretService.method.getSecretMetadata, { path: at("size/too-big") }), "NOT_FOUND", "after a refused first put");

          await put(at("size/grows"), { value: "small" });
          fails(await client.call(SecretService.method.putSecret, { path: at("size/grows"), data: tooBig }), "RESOURCE_EXHAUSTED");
          expect((await metadata(at("size/grows"))).latestVersion).to.equal(1);
          expect(ok(await get(at("size/grows"))).data).to.deep.equal({ value: "small" });
        });
      });

      describe("check-and-set", () => {
        // A sequence of puts on one path; after each, latest_version must be as stated.
        const steps: ReadonlyArray<{ name: string; cas: number | undefined; expect: "OK" | "ABORTED"; latest: number | undefined }> = [
          { name: "cas 0 on a new path writes version 1", cas: 0, expect: "OK", latest: 1 },
          { name: "cas 0 on an existing path is ABORTED", cas: 0, expect: "ABORTED", latest: 1 },
          { name: "cas 1 matching latest_version writes version 2", cas: 1, expect: "OK", latest: 2 },
          { name: "a stale cas 1 is ABORTED", cas: 1, expect: "ABORTED", latest: 2 },
          { name: "a cas ahead of latest_version (5) is ABORTED", cas: 5, expect: "ABORTED", latest: 2 },
          { name: "a put without cas is unconditional", cas: undefined, expect: "OK", latest: 3 },
          { name: "cas 3 matching again writes version 4", cas: 3, expect: "OK", latest: 4 },
        ];

        for (const step of steps) {
          it(step.name + (step.expect === "ABORTED" ? " and writes nothing" : ""), async () => {
            const path = at("cas/sequence");
            const result = await client.call(SecretService.method.putSecret, { path, data: { step: step.name }, cas: step.cas });
            if (step.expect === "OK") expect(ok(result, step.name).version).to.equal(step.latest);
            else expect(fails(result, "ABORTED", step.name)).to.match(/check-and-set/);
            const meta = await metadata(path);
            expect(meta.latestVersion).to.equal(step.latest);
            expect(meta.versions.map((v) => v.version)).to.deep.equal([...Array(step.latest).keys()].map((i) => i + 1));
          });
        }

        it("version and cas numbers beyond any stored version are answered like any other, not INTERNAL", async () => {
          const path = at("cas/huge");
          await put(path, { n: "1" });
          for (const huge of [2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]) {
            fails(await get(path, huge), "NOT_FOUND", `GetSecret version ${huge}`);
            expect(ok(await client.call(SecretService.method.deleteSecret, { path, versions: [huge] }), `DeleteSecret ${huge}`).versions).to.deep.equal([]);
            fails(await client.call(SecretService.method.putSecret, { path, data: { n: "x" }, cas: huge }), "ABORTED", `PutSecret cas ${huge}`);
          }
          expect((await metadata(path)).latestVersion).to.equal(1);
        });

        it("a cas N > 0 on a missing path is ABORTED and creates nothing", async () => {
          fails(await client.call(SecretService.method.putSecret, { path: at("cas/missing"), data: { k: "v" }, cas: 3 }), "ABORTED");
          fails(await client.call(SecretService.method.getSecretMetadata, { path: at("cas/missing") }), "NOT_FOUND");
        });

        it("cas counts deleted versions: it compares with latest_version, not current_version", async () => {
          const path = at("cas/deleted");
          await put(path, { n: "1" });
          await put(path, { n: "2" });
          ok(await client.call(SecretService.method.deleteSecret, { path }), "delete");
          fails(await client.call(SecretService.method.putSecret, { path, data: { n: "x" }, cas: 1 }), "ABORTED", "cas = current_version");
          expect((await put(path, { n: "3" }, { cas: 2 })).version).to.equal(3);
        });
      });

      describe("GetSecret NOT_FOUND", () => {
        before(async () => {
          const path = at("missing/secret");
          await put(path, { n: "1" });
          await put(path, { n: "2" });
          await put(path, { n: "3" });
          ok(await client.call(SecretService.method.deleteSecret, { path, versions: [2] }), "delete 2");
          ok(await client.call(SecretService.method.destroySecret, { path, versions: [3] }), "destroy 3");
          await put(at("missing/all-deleted"), { n: "1" });
          ok(await client.call(SecretService.method.deleteSecret, { path: at("missing/all-deleted") }), "delete all");
        });

        const cases: ReadonlyArray<{ name: string; path: string; version: number; says: RegExp }> = [
          { name: "an unknown path", path: "missing/nothing-here", version: 0, says: /secret ".*missing\/nothing-here" does not exist/ },
          { name: "an unknown version", path: "missing/secret", version: 99, says: /version 99 .* does not exist/ },
          { name: "a deleted version", path: "missing/secret", version: 2, says: /version 2 .* is deleted/ },
          { name: "a destroyed version", path: "missing/secret", version: 3, says: /version 3 .* is destroyed/ },
          { name: "version 0 when every version is deleted", path: "missing/all-deleted", version: 0, says: /current version \(1\) .* is deleted/ },
          { name: "version 0 when the current version is destroyed and older ones live", path: "missing/secret", version: 0, says: /current version \(3\) .* is destroyed/ },
        ];

        for (const c of cases) {
          it(`for ${c.name}, with a message saying which`, async () => {
            const message = fails(await get(at(c.path), c.version), "NOT_FOUND", c.name);
            expect(message).to.match(c.says);
          });
        }

        it("version 0 never falls back to an older live version: the older one is read by number", async () => {
          const message = fails(await get(at("missing/secret"), 0), "NOT_FOUND");
          expect(message).to.match(/read an older version by number/);
          const read = ok(await get(at("missing/secret"), 1));
          expect(read.data).to.deep.equal({ n: "1" });
        });

        it("a database writer who sets deleted_at on the newest version does not roll readers back to an older value", async () => {
          const path = at("missing/rollback");
          await put(path, { n: "old" });
          await put(path, { n: "new" });
          const db = openDatabase(server.nexus.databaseUrl);
          try {
            await db`UPDATE secret_versions SET deleted_at = now() WHERE version = 2 AND secret_id = (SELECT id FROM secrets WHERE path = ${path})`;
          } finally {
            await db.end();
          }
          expect(fails(await get(path, 0), "NOT_FOUND", "the current version, deleted behind Nexus's back")).to.match(/current version \(2\)/);
        });
      });

      describe("DeleteSecret, UndeleteSecret, DestroySecret and PurgeSecret", () => {
        const path = at("lifecycle/db");

        before(async () => {
          for (const n of [1, 2, 3]) await put(path, { n: String(n) });
        });

        it("DeleteSecret without versions soft-deletes the current version; reads of the current version are NOT_FOUND, not the one before", async () => {
          const deleted = ok(await client.call(SecretService.method.deleteSecret, { path }));
          expect(deleted.versions).to.deep.equal([3]);
          expect(fails(await get(path), "NOT_FOUND")).to.match(/current version \(3\) .* is deleted/);
          expect(ok(await get(path, 2)).version).to.equal(2);
          expect(ok(await client.call(SecretService.method.deleteSecret, { path })).versions, "the current version is deleted already").to.deep.equal([]);
          const meta = await metadata(path);
          expect(meta).to.include({ latestVersion: 3, currentVersion: 3 });
          expect(meta.versions[2].deletedAt, "deleted_at of version 3").to.not.equal(undefined);
        });

        it("DeleteSecret of named versions reports only the versions it changed", async () => {
          const deleted = ok(await client.call(SecretService.method.deleteSecret, { path, versions: [1, 3, 42] }));
          expect(deleted.versions, "3 was already deleted, 42 does not exist").to.deep.equal([1]);
          fails(await get(path, 1), "NOT_FOUND");
        });

        it("UndeleteSecret restores deleted versions with their data", async () => {
          const restored = ok(await client.call(SecretService.method.undeleteSecret, { path, versions: [1, 3] }));
          expect(restored.versions).to.deep.equal([1, 3]);
          expect(ok(await get(path, 1)).data).to.deep.equal({ n: "1" });
          expect(ok(await get(path)).version).to.equal(3);
          expect((await metadata(path)).versions.map((v) => v.deletedAt)).to.deep.equal([undefined, undefined, undefined]);
        });

        it("DestroySecret erases versions for good: a destroyed version cannot be undeleted", async () => {
          ok(await client.call(SecretService.method.deleteSecret, { path, versions: [2] }));
          const destroyed = ok(await client.call(SecretService.method.destroySecret, { path, versions: [2, 3] }));
          expect(destroyed.versions).to.deep.equal([2, 3]);
          const restored = ok(await client.call(SecretService.method.undeleteSecret, { path, versions: [2, 3] }));
          expect(restored.versions, "nothing to restore").to.deep.equal([]);
          expect(fails(await get(path, 2), "NOT_FOUND")).to.match(/destroyed/);
          expect(fails(await get(path, 3), "NOT_FOUND")).to.match(/destroyed/);
          const meta = await metadata(path);
          expect(meta.versions.map((v) => v.destroyed)).to.deep.equal([false, true, true]);
          expect(meta.currentVersion, "the current version, destroyed").to.equal(3);
          expect(ok(await client.call(SecretService.method.destroySecret, { path, versions: [3] })).versions, "already destroyed").to.deep.equal([]);
        });

        it("version numbers are never reused after deletes and destroys", async () => {
          expect((await put(path, { n: "4" })).version).to.equal(4);
          ok(await client.call(SecretService.method.deleteSecret, { path }));
          expect((await put(path, { n: "5" })).version, "after deleting the current version").to.equal(5);
          ok(await client.call(SecretService.method.deleteSecret, { path, versions: [1, 4, 5] }));
          expect((await put(path, { n: "6" })).version, "after deleting every version").to.equal(6);
          expect(ok(await get(path)).data).to.deep.equal({ n: "6" });
          expect((await metadata(path)).latestVersion).to.equal(6);
        });

        it("UndeleteSecret and DestroySecret need at least one version, and versions start at 1", async () => {
          for (const method of [SecretService.method.undeleteSecret, SecretService.method.destroySecret]) {
            expect(fails(await client.call(method, { path, versions: [] }), "INVALID_ARGUMENT", `${method.name} []`)).to.include("versions");
            expect(fails(await client.call(method, { path, versions: [0] }), "INVALID_ARGUMENT", `${method.name} [0]`)).to.include("versions");
          }
          fails(await client.call(SecretService.method.deleteSecret, { path, versions: [0] }), "INVALID_ARGUMENT", "DeleteSecret [0]");
        });

        it("DeleteSecret, UndeleteSecret, DestroySecret and PurgeSecret of an unknown path are NOT_FOUND", async () => {
          const unknown = at("lifecycle/unknown");
          fails(await client.call(SecretService.method.deleteSecret, { path: unknown }), "NOT_FOUND", "delete");
          fails(await client.call(SecretService.method.undeleteSecret, { path: unknown, versions: [1] }), "NOT_FOUND", "undelete");
          fails(await client.call(SecretService.method.destroySecret, { path: unknown, versions: [1] }), "NOT_FOUND", "destroy");
          fails(await client.call(SecretService.method.purgeSecret, { path: unknown }), "NOT_FOUND", "purge");
        });

        it("PurgeSecret removes the path, its versions and metadata; the path then starts again at version 1", async () => {
          ok(await client.call(SecretService.method.updateSecretMetadata, { path, customMetadata: { owner: "team-a" }, updateMask: { paths: ["custom_metadata"] } }));
          ok(await client.call(SecretService.method.purgeSecret, { path }), "purge");
          fails(await get(path), "NOT_FOUND", "get after purge");
          fails(await get(path, 6), "NOT_FOUND", "get version 6 after purge");
          fails(await client.call(SecretService.method.getSecretMetadata, { path }), "NOT_FOUND", "metadata after purge");
          expect(ok(await client.call(SecretService.method.listSecrets, { prefix: at("lifecycle/") })).paths).to.not.include(path);
          fails(await client.call(SecretService.method.purgeSecret, { path }), "NOT_FOUND", "a second purge");

          expect((await put(path, { n: "again" })).version).to.equal(1);
          const meta = await metadata(path);
          expect(meta).to.include({ latestVersion: 1, currentVersion: 1, oldestVersion: 1 });
          expect(meta.versions).to.have.length(1);
          expect(meta.customMetadata, "metadata went with the purge").to.deep.equal({});
        });
      });

      describe("pruning past max_versions", () => {
        const path = at("prune/db");

        it("with max_versions 3, five more puts keep only the last three and advance oldest_version", async () => {
          await put(path, { n: "1" });
          await put(path, { n: "2" });
          const updated = ok(await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 3, updateMask: { paths: ["max_versions"] } }));
          expect(updated.metadata?.maxVersions).to.equal(3);
          for (const n of [3, 4, 5, 6, 7]) expect((await put(path, { n: String(n) })).version).to.equal(n);

          const meta = await metadata(path);
          expect(meta.versions.map((v) => v.version)).to.deep.equal([5, 6, 7]);
          expect(meta).to.include({ latestVersion: 7, currentVersion: 7, oldestVersion: 5, maxVersions: 3 });
          expect(fails(await get(path, 4), "NOT_FOUND")).to.match(/version 4 .* does not exist/);
          expect(ok(await get(path, 5)).data).to.deep.equal({ n: "5" });
        });

        // Labelled versions are never pruned (issue 12): with max_versions 1,
        // CURRENT and PREVIOUS both stay.
        it("lowering max_versions prunes at once except labelled versions, and the next put continues the numbering", async () => {
          const updated = ok(await client.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 1, updateMask: { paths: ["max_versions"] } }));
          expect(updated.metadata?.versions.map((v) => v.version)).to.deep.equal([6, 7]);
          expect(updated.metadata?.oldestVersion).to.equal(6);
          expect((await put(path, { n: "8" })).version).to.equal(8);
          expect((await metadata(path)).versions.map((v) => v.version)).to.deep.equal([7, 8]);
        });

        it("a new secret keeps 10 versions by default", async () => {
          const fresh = at("prune/default");
          for (let n = 1; n <= 12; n++) await put(fresh, { n: String(n) });
          const meta = await metadata(fresh);
          expect(meta.maxVersions).to.equal(10);
          expect(meta.versions.map((v) => v.version)).to.deep.equal([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
          expect(meta.oldestVersion).to.equal(3);
        });
      });

      describe("GetSecretMetadata and UpdateSecretMetadata", () => {
        const path = at("meta/db");

        it("GetSecretMetadata describes the secret and every kept version, without data", async () => {
          const first = await put(path, { n: "1" });
          await put(path, { n: "2" });
          const third = await put(path, { n: "3" });
          ok(await client.call(SecretService.method.deleteSecret, { path, versions: [3] }));
          ok(await client.call(SecretService.method.destroySecret, { path, versions: [1] }));

          const meta = await metadata(path);
          expect(meta).to.include({ path, latestVersion: 3, currentVersion: 3, oldestVersion: 1, maxVersions: 10 });
          expect(meta.customMetadata).to.deep.equal({});
          expect(meta.expiresAt).to.equal(undefined);
          expect(timestampDate(meta.createdAt!).getTime()).to.equal(timestampDate(first.createdAt!).getTime());
          expect(timestampDate(meta.updatedAt!).getTime()).to.be.at.least(timestampDate(third.createdAt!).getTime());
          expect(meta.versions.map((v) => ({ version: v.version, destroyed: v.destroyed, deleted: v.deletedAt !== undefined, createdBy: v.createdBy }))).to.deep.equal([
            { version: 1, destroyed: true, deleted: false, createdBy: SUPERUSER_ID },
            { version: 2, destroyed: false, deleted: false, createdBy: SUPERUSER_ID },
            { version: 3, destroyed: false, deleted: true, createdBy: SUPERUSER_ID },
          ]);
          expect(timestampDate(meta.versions[0].createdAt!).getTime()).to.equal(timestampDate(first.createdAt!).getTime());
        });

        it("custom_metadata replaces the old labels, up to 64 keys", async () => {
          const labels = Object.fromEntries([...Array(64).keys()].map((i) => [`label-${i}`, `value-${i}`]));
          const updated = ok(await client.call(SecretService.method.updateSecretMetadata, { path, customMetadata: labels, updateMask: { paths: ["custom_metadata"] } }));
          expect(updated.metadata?.customMetadata).to.deep.equal(labels);
          expect(updated.metadata?.maxVersions, "fields outside the mask stay").to.equal(10);

          ok(await client.call(SecretService.method.updateSecretMetadata, { path, customMetadata: { team: "payments" }, updateMask: { paths: ["custom_metadata"] } }));
          expect((await metadata(path)).customMetadata).to.deep.equal({ team: "payments" });
        });

        it("65 custom_metadata keys are INVALID_ARGUMENT and change nothing", async () => {
          const labels = Object.fromEntries([...Array(65).keys()].map((i) => [`label-${i}`, "v"]));
          const message = fails(
            await client.call(SecretService.method.updateSecretMetadata, { path, customMetadata: labels, updateMask: { paths: ["custom_metadata"] } }),
            "INVALID_ARGUMENT",
          );
          expect(message).to.include("custom_metadata");
          expect((await metadata(path)).customMetadata).to.deep.equal({ team: "payments" });
        });

        it("fields named in update_mask are set and the others are left alone", async () => {
          const expiresAt = timestampFromDate(new Date(Date.now() + 3_600_000));
          const updated = ok(
            await client.call(SecretService.method.updateSecretMetadata, {
              path,
              maxVersions: 7,
              customMetadata: { ignored: "yes" },
              expiresAt,
              updateMask: { paths: ["max_versions", "expires_at"] },
            }),
          );
          expect(updated.metadata?.maxVersions).to.equal(7);
          expect(updated.metadata?.customMetadata, "not in the mask").to.deep.equal({ team: "payments" });
          expect(timestampDate(updated.metadata!.expiresAt!).getTime()).to.be.closeTo(timestampDate(expiresAt).getTime(), 1);

          const cleared = ok(await client.call(SecretService.method.updateSecretMetadata, { path, updateMask: { paths: ["expires_at"] } }));
          expect(cleared.metadata?.expiresAt, "expires_at in the mask but unset clears it").to.equal(undefined);
        });

        // `mask`: the error names a FieldMask path, spelt as the caller's wire format wants it.
        const badUpdates: ReadonlyArray<{ name: string; request: UpdateFields; says: string; mask?: true }> = [
          { name: "no update_mask", request: { maxVersions: 5 }, says: "update_mask", mask: true },
          { name: "an empty update_mask", request: { maxVersions: 5, updateMask: { paths: [] } }, says: "update_mask", mask: true },
          { name: "an unknown field in update_mask", request: { maxVersions: 5, updateMask: { paths: ["no_such_field"] } }, says: "no_such_field", mask: true },
          { name: "path in update_mask", request: { updateMask: { paths: ["path"] } }, says: "update_mask", mask: true },
          { name: "an unknown field next to a known one", request: { maxVersions: 5, updateMask: { paths: ["max_versions", "versions"] } }, says: "update_mask", mask: true },
          { name: "max_versions 0", request: { maxVersions: 0, updateMask: { paths: ["max_versions"] } }, says: "max_versions" },
          { name: "max_versions 1001", request: { maxVersions: 1001, updateMask: { paths: ["max_versions"] } }, says: "max_versions" },
          { name: "expires_at in the past", request: { expiresAt: timestampFromDate(new Date(Date.now() - 60_000)), updateMask: { paths: ["expires_at"] } }, says: "expires_at" },
        ];

        for (const bad of badUpdates) {
          it(`UpdateSecretMetadata with ${bad.name} is INVALID_ARGUMENT and changes nothing`, async () => {
            const message = fails(await client.call(SecretService.method.updateSecretMetadata, { path, ...bad.request }), "INVALID_ARGUMENT", bad.name);
            // Connect JSON callers are told the names they must send (lowerCamelCase).
            expect(message).to.include(bad.mask && listener === "connect" ? protoCamelCase(bad.says) : bad.says);
            expect((await metadata(path)).maxVersions).to.equal(7);
          });
        }

        it("GetSecretMetadata and UpdateSecretMetadata of an unknown path are NOT_FOUND", async () => {
          fails(await client.call(SecretService.method.getSecretMetadata, { path: at("meta/unknown") }), "NOT_FOUND");
          fails(await client.call(SecretService.method.updateSecretMetadata, { path: at("meta/unknown"), maxVersions: 3, updateMask: { paths: ["max_versions"] } }), "NOT_FOUND");
        });
      });

      describe("ListSecrets", () => {
        const base = at("list/");
        const names = ["b", "a", "B", "a/x", "a-b", "a.b", "a_b", "9", "a/x/y"];

        before(async () => {
          for (const name of names) await put(base + name, { k: "v" });
          await put(at("lister"), { k: "outside the prefix" });
          await put(base + "gone", { k: "v" });
          ok(await client.call(SecretService.method.purgeSecret, { path: base + "gone" }));
          await put(base + "all-deleted", { k: "v" });
          ok(await client.call(SecretService.method.deleteSecret, { path: base + "all-deleted" }));
        });

        it("lists full paths under a raw string prefix in byte order, with deleted-but-not-purged paths", async () => {
          const page = ok(await client.call(SecretService.method.listSecrets, { prefix: base }));
          const expected = [...names, "all-deleted"].map((n) => base + n).sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
          expect(page.paths).to.deep.equal(expected);
          expect(page.nextPageToken).to.equal("");
        });

        it("a prefix is a raw string, not a folder: list/a matches list/a-b and list/a/x", async () => {
          const page = ok(await client.call(SecretService.method.listSecrets, { prefix: base + "a" }));
          expect(page.paths).to.deep.equal(["a", "a-b", "a.b", "a/x", "a/x/y", "a_b", "all-deleted"].map((n) => base + n));
        });

        it("pages follow next_page_token until it is empty", async () => {
          const seen: string[] = [];
          let token = "";
          let pages = 0;
          do {
            const page = ok(await client.call(SecretService.method.listSecrets, { prefix: base, pageSize: 4, pageToken: token }));
            expect(page.paths.length).to.be.at.most(4);
            seen.push(...page.paths);
            token = page.nextPageToken;
            pages++;
          } while (token !== "");
          expect(seen).to.have.length(names.length + 1);
          expect(new Set(seen).size).to.equal(seen.length);
          expect(pages).to.equal(3);
        });

        it("an unknown prefix lists nothing", async () => {
          expect(ok(await client.call(SecretService.method.listSecrets, { prefix: at("nothing/") }))).to.include({ nextPageToken: "" });
          expect(ok(await client.call(SecretService.method.listSecrets, { prefix: at("nothing/") })).paths).to.deep.equal([]);
        });

        const badLists: ReadonlyArray<{ name: string; request: MessageInitShape<typeof SecretService.method.listSecrets.input>; says: string }> = [
          { name: "page_size 1001", request: { prefix: "", pageSize: 1001 }, says: "page_size" },
          { name: "a negative page_size", request: { prefix: "", pageSize: -1 }, says: "page_size" },
          { name: "a prefix with a space", request: { prefix: "a b" }, says: "prefix" },
          { name: "a garbage page_token", request: { prefix: "", pageToken: "not-a-token" }, says: "page_token" },
        ];

        for (const bad of badLists) {
          it(`ListSecrets with ${bad.name} is INVALID_ARGUMENT`, async () => {
            expect(fails(await client.call(SecretService.method.listSecrets, bad.request), "INVALID_ARGUMENT", bad.name)).to.include(bad.says);
          });
        }
      });

      describe("who may call", () => {
        it("a workload SVID is PERMISSION_DENIED on every SecretService RPC, and the superuser succeeds on each", async () => {
          const path = at("authz/db");
          await put(path, { n: "1" });
          const calls = everySecretRpc(path);
          expect(calls.map((c) => c.name).sort()).to.deep.equal(SecretService.methods.map((m) => m.name).sort());

          const workload = server.client(listener, server.pki.workload);
          for (const c of calls) fails(await c.call(workload), "PERMISSION_DENIED", `workload ${c.name}`);
          expect((await metadata(path)).latestVersion, "the workload's calls changed nothing").to.equal(1);
          for (const c of calls) ok(await c.call(client), `superuser ${c.name}`);
        });
      });

      describe("while sealed", () => {
        it("every SecretService RPC is FAILED_PRECONDITION; after Unseal the data is back", async () => {
          const path = at("sealed/db");
          await put(path, { password: "before-seal" });
          await seal(client);
          expect(ok(await client.call(OperatorService.method.getStatus, {})).sealed).to.equal(true);

          const calls = everySecretRpc(path);
          expect(calls.map((c) => c.name).sort()).to.deep.equal(SecretService.methods.map((m) => m.name).sort());
          for (const c of calls) expect(fails(await c.call(client), "FAILED_PRECONDITION", c.name)).to.match(/sealed/);

          ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
          const read = ok(await get(path));
          expect(read).to.include({ version: 1 });
          expect(read.data).to.deep.equal({ password: "before-seal" });
        });
      });
    });
  }
});
