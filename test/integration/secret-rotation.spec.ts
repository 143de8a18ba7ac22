// Rotation (issue 12) over the wire: policy validation in UpdateSecretMetadata,
// RotateSecret with each generator, what GetSecretMetadata shows, and the
// scheduler with two replicas on one database: a due secret is rotated once,
// within the window; missed periods run once; a tampered policy is skipped and
// reported; a sealed replica does not rotate.

import { expect } from "chai";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import {
  ByteEncoding,
  CharacterClass,
  SecretLabel,
  SecretService,
  type RotationPolicySchema,
} from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { silentLogger } from "../../src/log/logger.js";
import { connectDatabase } from "../../src/store/database.js";
import { SecretStore } from "../../src/store/secret-store.js";
import { ADMIN_PASSWORD, FAST_KDF, fails, ok, openDatabase, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { startTestServer, type TestServer } from "../support/test-server.js";
import { eventually, sleep } from "../support/wait.js";

type Policy = MessageInitShape<typeof RotationPolicySchema>;
const MINUTE = { seconds: 60n, nanos: 0 };
const ROTATE_RPC = "/spike.nexus.v1.SecretService/RotateSecret";

describe("secret rotation", function () {
  this.timeout(120_000);

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

  const put = async (path: string, data: Record<string, string>) => ok(await client.call(SecretService.method.putSecret, { path, data }), `put ${path}`).version;
  const setPolicy = (path: string, rotation: Policy | undefined) => client.call(SecretService.method.updateSecretMetadata, { path, rotation, updateMask: { paths: ["rotation"] } });
  const metadata = async (path: string) => ok(await client.call(SecretService.method.getSecretMetadata, { path }), `metadata ${path}`).metadata!;
  const lastReason = async (path: string) => {
    const [row] = await db`SELECT detail->>'reason' AS reason FROM audit_events WHERE path = ${path} AND outcome <> 'ok' ORDER BY id DESC LIMIT 1`;
    return row?.reason as string | undefined;
  };
  const latest = async (path: string) => (await db`SELECT latest_version FROM secrets WHERE path = ${path}`)[0].latest_version as number;
  const bytes = (length: number, encoding = ByteEncoding.HEX): Policy => ({ period: MINUTE, generator: { case: "randomBytes", value: { length, encoding } }, dataKey: "key" });
  const password = (value: Policy["generator"] extends infer G ? G : never): Policy => ({ period: MINUTE, generator: value, dataKey: "password" });

  describe("policy validation", () => {
    const BAD: ReadonlyArray<{ name: string; policy: Policy; field: RegExp; reason: string }> = [
      { name: "a period under 1 minute", policy: { ...bytes(16), period: { seconds: 59n, nanos: 0 } } as Policy, field: /rotation.period/, reason: "INVALID_ROTATION_PERIOD" },
      { name: "a period over 10 years", policy: { ...bytes(16), period: { seconds: BigInt(3654 * 86400), nanos: 0 } } as Policy, field: /rotation.period/, reason: "INVALID_ROTATION_PERIOD" },
      { name: "no period", policy: { ...bytes(16), period: undefined }, field: /rotation.period/, reason: "INVALID_ROTATION_PERIOD" },
      { name: "no generator", policy: { period: MINUTE, dataKey: "k" }, field: /rotation/, reason: "MISSING_GENERATOR" },
      { name: "a password of 7 characters", policy: password({ case: "randomPassword", value: { length: 7 } }), field: /random_password.length/, reason: "INVALID_GENERATOR_LENGTH" },
      { name: "a password of 1025 characters", policy: password({ case: "randomPassword", value: { length: 1025 } }), field: /random_password.length/, reason: "INVALID_GENERATOR_LENGTH" },
      { name: "7 random bytes", policy: bytes(7), field: /random_bytes.length/, reason: "INVALID_GENERATOR_LENGTH" },
      { name: "1025 random bytes", policy: bytes(1025), field: /random_bytes.length/, reason: "INVALID_GENERATOR_LENGTH" },
      { name: "an unspecified character class", policy: password({ case: "randomPassword", value: { length: 12, characterClasses: [CharacterClass.UNSPECIFIED] } }), field: /character_classes/, reason: "INVALID_CHARACTER_CLASS" },
      {
        name: "excluded characters that empty a class",
        policy: password({ case: "randomPassword", value: { length: 12, characterClasses: [CharacterClass.DIGITS], excludedCharacters: "0123456789" } }),
        field: /excluded_characters/,
        reason: "INVALID_EXCLUDED_CHARACTERS",
      },
      { name: "no data key for a generator", policy: { ...bytes(16), dataKey: "" }, field: /data_key/, reason: "INVALID_DATA_KEY" },
    ];
    for (const bad of BAD) {
      it(`${bad.name} is INVALID_ARGUMENT and sets nothing`, async () => {
        const path = "rotation/invalid";
        if ((await db`SELECT 1 FROM secrets WHERE path = ${path}`).length === 0) await put(path, { key: "v" });
        expect(fails(await setPolicy(path, bad.policy), "INVALID_ARGUMENT")).to.match(bad.field);
        expect(await lastReason(path)).to.equal(bad.reason);
        const meta = await metadata(path);
        expect(meta.rotation, "no policy was set").to.equal(undefined);
        expect(meta.nextRotationAt).to.equal(undefined);
      });
    }

    it("an unknown byte encoding is INVALID_ARGUMENT UNKNOWN_FIELD naming it (refused as it is decoded) and sets nothing", async () => {
      const path = "rotation/invalid";
      if ((await db`SELECT 1 FROM secrets WHERE path = ${path}`).length === 0) await put(path, { key: "v" });
      const result = await setPolicy(path, bytes(16, 9 as ByteEncoding));
      fails(result, "INVALID_ARGUMENT");
      expect(result.reason).to.equal("UNKNOWN_FIELD");
      expect(result.violations?.[0]?.field).to.match(/random_bytes.encoding$/);
      expect((await metadata(path)).rotation, "no policy was set").to.equal(undefined);
    });
  });

  describe("policies and RotateSecret", () => {
    it("a policy shows in the metadata with next_rotation_at one period ahead; clearing it turns rotation off", async () => {
      const path = "rotation/show";
      await put(path, { key: "v" });
      const before = Date.now();
      const set = ok(await setPolicy(path, bytes(32, ByteEncoding.BASE64URL))).metadata!;
      expect(set.rotation?.generator.case).to.equal("randomBytes");
      expect(set.rotation?.dataKey).to.equal("key");
      expect(set.rotation?.promote).to.equal(false);
      const next = timestampDate(set.nextRotationAt!).getTime();
      expect(next).to.be.within(before + 59_000, Date.now() + 61_000);
      expect(set.rotationDue).to.equal(false);
      const cleared = ok(await setPolicy(path, undefined)).metadata!;
      expect(cleared.rotation).to.equal(undefined);
      expect(cleared.nextRotationAt).to.equal(undefined);
    });

    it("a random password policy stages a PENDING version with the data key filled from the chosen classes and the other keys copied", async () => {
      const path = "rotation/password";
      await put(path, { password: "old", user: "app" });
      ok(await setPolicy(path, password({ case: "randomPassword", value: { length: 40, characterClasses: [CharacterClass.LOWERCASE, CharacterClass.DIGITS], excludedCharacters: "0o1l" } })));
      const rotated = ok(await client.call(SecretService.method.rotateSecret, { path }));
      expect(rotated).to.deep.include({ version: 2, labels: [SecretLabel.PENDING] });
      const current = ok(await client.call(SecretService.method.getSecret, { path }));
      expect(current.data, "CURRENT is untouched").to.deep.equal({ password: "old", user: "app" });
      const pending = ok(await client.call(SecretService.method.getSecret, { path, label: SecretLabel.PENDING }));
      expect(pending.data.user).to.equal("app");
      expect(pending.data.password).to.match(/^[a-z2-9]{40}$/);
      expect(pending.data.password).to.match(/[a-z]/).and.to.match(/[0-9]/);
      expect(pending.data.password).not.to.match(/[0o1l]/);
      const meta = await metadata(path);
      expect(meta.rotationDue, "a staged value not yet promoted").to.equal(true);
      expect(meta.lastRotatedAt).not.to.equal(undefined);
      ok(await client.call(SecretService.method.promoteSecretVersion, { path, version: 2 }));
      expect((await metadata(path)).rotationDue).to.equal(false);
    });

    for (const [encoding, pattern] of [
      [ByteEncoding.HEX, /^[0-9a-f]{64}$/],
      [ByteEncoding.BASE64, /^[A-Za-z0-9+/]{43}=$/],
      [ByteEncoding.BASE64URL, /^[A-Za-z0-9_-]{43}$/],
    ] as const) {
      it(`random bytes in ${ByteEncoding[encoding]} with promote become CURRENT at once`, async () => {
        const path = `rotation/bytes-${ByteEncoding[encoding]}`;
        await put(path, { key: "old" });
        ok(await setPolicy(path, { ...bytes(32, encoding), promote: true }));
        expect(ok(await client.call(SecretService.method.rotateSecret, { path }))).to.deep.include({ version: 2, labels: [SecretLabel.CURRENT] });
        const read = ok(await client.call(SecretService.method.getSecret, { path }));
        expect(read.version).to.equal(2);
        expect(read.data.key).to.match(pattern);
      });
    }

    it("a generator in the request rotates a secret without a policy; without either it is FAILED_PRECONDITION (NO_ROTATION_POLICY)", async () => {
      const path = "rotation/adhoc";
      await put(path, { token: "old" });
      fails(await client.call(SecretService.method.rotateSecret, { path }), "FAILED_PRECONDITION");
      expect(await lastReason(path)).to.equal("NO_ROTATION_POLICY");
      const r = ok(await client.call(SecretService.method.rotateSecret, { path, generator: { case: "randomBytes", value: { length: 16 } }, dataKey: "token", promote: true }));
      expect(r).to.deep.include({ version: 2, labels: [SecretLabel.CURRENT] });
      expect(ok(await client.call(SecretService.method.getSecret, { path })).data.token).to.match(/^[0-9a-f]{32}$/);
      fails(await client.call(SecretService.method.rotateSecret, { path, generator: { case: "randomPassword", value: { length: 4 } }, dataKey: "token" }), "INVALID_ARGUMENT");
      expect(await latest(path), "the bad request wrote nothing").to.equal(2);
    });

    it("an external policy is FAILED_PRECONDITION (EXTERNAL_ROTATION) for RotateSecret and is due once CURRENT is one period old", async () => {
      const path = "rotation/external";
      await put(path, { password: "owner-set" });
      ok(await setPolicy(path, { period: MINUTE, generator: { case: "external", value: {} } }));
      fails(await client.call(SecretService.method.rotateSecret, { path }), "FAILED_PRECONDITION");
      expect(await lastReason(path)).to.equal("EXTERNAL_ROTATION");
      expect((await metadata(path)).rotationDue).to.equal(false);
      await db`UPDATE secret_versions v SET created_at = now() - interval '2 minutes' FROM secrets s WHERE s.id = v.secret_id AND s.path = ${path}`;
      expect((await metadata(path)).rotationDue).to.equal(true);
      await put(path, { password: "owner-rotated" });
      expect((await metadata(path)).rotationDue).to.equal(false);
    });

    it("a policy altered in SQL is INTERNAL (ROTATION_POLICY_ALTERED) for RotateSecret and GetSecretMetadata", async () => {
      const path = "rotation/altered-rpc";
      await put(path, { key: "v" });
      ok(await setPolicy(path, bytes(16)));
      await db`UPDATE secrets SET rotation = jsonb_set(rotation, '{promote}', 'true') WHERE path = ${path}`;
      fails(await client.call(SecretService.method.rotateSecret, { path }), "INTERNAL");
      expect(await lastReason(path)).to.equal("ROTATION_POLICY_ALTERED");
      fails(await client.call(SecretService.method.getSecretMetadata, { path }), "INTERNAL");
      expect(await latest(path)).to.equal(1);
    });
  });

  describe("the scheduler", () => {
    let second: TestServer;

    before(async () => {
      second = await startTestServer({ pki: server.pki, databaseUrl: server.nexus.databaseUrl, start: FAST_KDF });
      ok(await second.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal the second replica");
    });

    after(async () => {
      await second?.stop();
    });

    const rotationEvents = (path: string) => db`SELECT replica_id, caller, outcome, detail FROM audit_events WHERE rpc = ${ROTATE_RPC} AND path = ${path} ORDER BY id`;

    it("with two replicas on one database, a due secret is rotated once, within 30 s, audited as the scheduler of one replica", async () => {
      const path = "rotation/scheduled";
      await put(path, { key: "v0", other: "kept" });
      ok(await setPolicy(path, { ...bytes(16), promote: true }));
      await db`UPDATE secrets SET next_rotation_at = now() WHERE path = ${path}`;
      const due = Date.now();
      await eventually(async () => expect(await latest(path)).to.equal(2), { timeoutMs: 30_000, intervalMs: 200 });
      expect(Date.now() - due).to.be.below(30_000);
      await sleep(7_000); // more than one scheduler round on each replica
      expect(await latest(path), "rotated exactly once").to.equal(2);
      const read = ok(await client.call(SecretService.method.getSecret, { path }));
      expect(read.data.other).to.equal("kept");
      expect(read.data.key).to.match(/^[0-9a-f]{32}$/);
      const events = await rotationEvents(path);
      expect(events.map((e) => e.outcome)).to.deep.equal(["ok"]);
      expect(events[0].caller, "the caller names the scheduler and the replica that wrote the event").to.equal(`nexus-scheduler@${events[0].replica_id}`);
      expect(JSON.stringify(events[0].detail), "the generated value is not in the event").not.to.include(read.data.key);
      const next = timestampDate((await metadata(path)).nextRotationAt!).getTime();
      expect(next).to.be.within(Date.now() + 40_000, Date.now() + 61_000);
    });

    it("concurrent claims from two replicas' stores hand each due rotation to exactly one of them", async () => {
      const paths = Array.from({ length: 40 }, (_, i) => `rotation/claims/${String(i).padStart(2, "0")}`);
      for (const p of paths) {
        await put(p, { key: "v" });
        ok(await setPolicy(p, bytes(16)));
      }
      // Far in the past, so the live schedulers (which claim the oldest first) race these stores for them too.
      const sqls = [0, 1].map(() => connectDatabase({ url: server.nexus.databaseUrl, poolMax: 4, logger: silentLogger }));
      try {
        const stores = sqls.map((sql) => new SecretStore(sql));
        await db`UPDATE secrets SET next_rotation_at = now() - interval '1 day' WHERE path LIKE 'rotation/claims/%'`;
        const claimed: string[] = [];
        await Promise.all(
          stores.flatMap((store) => [0, 1, 2].map(async () => {
            for (let round = 0; round < 10; round++) claimed.push(...(await store.claimDueRotations(3, 120_000)).map((c) => c.path));
          })),
        );
        const mine = claimed.filter((p) => p.startsWith("rotation/claims/"));
        expect(mine.length, "no rotation claimed twice").to.equal(new Set(mine).size);
      } finally {
        await Promise.all(sqls.map((sql) => sql.end()));
        await db`UPDATE secrets SET rotation = NULL, rotation_mac = NULL, next_rotation_at = NULL WHERE path LIKE 'rotation/claims/%'`;
      }
    });

    it("a rotation missed for many periods runs once, not once per missed period", async () => {
      const path = "rotation/missed";
      await put(path, { key: "v0" });
      ok(await setPolicy(path, { ...bytes(16), promote: true }));
      await db`UPDATE secrets SET next_rotation_at = now() - interval '1 hour' WHERE path = ${path}`;
      await eventually(async () => expect(await latest(path)).to.equal(2), { timeoutMs: 30_000, intervalMs: 200 });
      await sleep(7_000);
      expect(await latest(path)).to.equal(2);
      expect((await rotationEvents(path)).length).to.equal(1);
    });

    it("a policy altered in SQL is skipped and reported, never run", async () => {
      const path = "rotation/altered-scheduled";
      await put(path, { key: "v0" });
      ok(await setPolicy(path, bytes(16)));
      await db`UPDATE secrets SET rotation = jsonb_set(rotation, '{promote}', 'true'), next_rotation_at = now() WHERE path = ${path}`;
      const events = await eventually(async () => {
        const e = await rotationEvents(path);
        expect(e.length).to.be.greaterThan(0);
        return e;
      }, { timeoutMs: 30_000, intervalMs: 200 });
      expect(events[0].outcome).to.equal("error");
      expect(events[0].detail.reason).to.equal("ROTATION_POLICY_ALTERED");
      expect(events[0].caller).to.match(/^nexus-scheduler@/);
      expect(await latest(path), "nothing was written").to.equal(1);
    });

    it("sealed replicas do not rotate; the rotation runs once one is unsealed", async () => {
      const path = "rotation/sealed";
      await put(path, { key: "v0" });
      ok(await setPolicy(path, { ...bytes(16), promote: true }));
      await seal(client);
      await seal(second.client("grpc"));
      try {
        await db`UPDATE secrets SET next_rotation_at = now() WHERE path = ${path}`;
        await sleep(7_000);
        expect(await latest(path), "no rotation while every replica is sealed").to.equal(1);
      } finally {
        ok(await client.call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }), "Unseal");
      }
      await eventually(async () => expect(await latest(path)).to.equal(2), { timeoutMs: 30_000, intervalMs: 200 });
      const [event] = await rotationEvents(path);
      const [unseal] = await db`SELECT replica_id FROM audit_events WHERE rpc = '/spike.nexus.v1.OperatorService/Unseal' ORDER BY id DESC LIMIT 1`;
      expect(event.caller, "rotated by the replica that was unsealed").to.equal(`nexus-scheduler@${unseal.replica_id}`);
    });
  });
});
