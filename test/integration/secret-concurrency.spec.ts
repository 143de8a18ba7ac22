// Concurrency is settled by the database: racing check-and-set puts have exactly
// one winner, racing unconditional puts never share a version number, and keyset
// pagination stays correct while other clients insert and purge paths between
// page fetches (an OFFSET implementation repeats or misses paths here).

import { expect } from "chai";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import type { NexusClient } from "../../src/client/nexus-client.js";
import { fails, ok, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { LISTENERS, type Listener } from "../support/test-server.js";

const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function forEachConcurrently<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

const other = (listener: Listener): Listener => (listener === "grpc" ? "connect" : "grpc");

describe("SecretService under concurrency", function () {
  this.timeout(60_000);
  let server: SecretTestServer;

  before(async () => {
    server = await startSecretServer();
  });

  after(async () => server?.stop());

  for (const listener of LISTENERS) {
    describe(`on the ${listener} listener`, () => {
      const clients = (n: number) => Array.from({ length: n }, () => server.client(listener));

      it("eight concurrent puts with the same cas: exactly one is OK, seven are ABORTED, and latest_version is cas + 1", async () => {
        const path = `${listener}/race/cas`;
        const setup = server.client(listener);
        for (let n = 1; n <= 3; n++) ok(await setup.call(SecretService.method.putSecret, { path, data: { n: String(n) } }));

        const racers = clients(8);
        const results = await Promise.all(racers.map((c, i) => c.call(SecretService.method.putSecret, { path, data: { racer: String(i) }, cas: 3 })));
        const winners = results.flatMap((r, i) => (r.code === "OK" ? [i] : []));
        expect(winners, results.map((r) => r.code).join(",")).to.have.length(1);
        expect(results.filter((r) => r.code === "ABORTED")).to.have.length(7);
        expect(results[winners[0]].response?.version).to.equal(4);

        const meta = ok(await setup.call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(meta.latestVersion).to.equal(4);
        expect(meta.versions.map((v) => v.version)).to.deep.equal([1, 2, 3, 4]);
        const read = ok(await setup.call(SecretService.method.getSecret, { path }));
        expect(read.data, "the winner's data is what was written").to.deep.equal({ racer: String(winners[0]) });
      });

      it("eight concurrent puts with cas 0 on a new path: exactly one creates it, seven are ABORTED", async () => {
        const path = `${listener}/race/create`;
        const results = await Promise.all(clients(8).map((c, i) => c.call(SecretService.method.putSecret, { path, data: { racer: String(i) }, cas: 0 })));
        expect(results.filter((r) => r.code === "OK").map((r) => r.response?.version)).to.deep.equal([1]);
        expect(results.filter((r) => r.code === "ABORTED")).to.have.length(7);
        const meta = ok(await server.client(listener).call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(meta.latestVersion).to.equal(1);
      });

      it("concurrent unconditional puts to one path never share a version, and latest_version counts every write", async () => {
        const path = `${listener}/race/blind-invariant`;
        const setup = server.client(listener);
        ok(await setup.call(SecretService.method.putSecret, { path, data: { n: "seed" } }));
        ok(await setup.call(SecretService.method.updateSecretMetadata, { path, maxVersions: 100, updateMask: { paths: ["max_versions"] } }));

        const results = await Promise.all(clients(20).map((c, i) => c.call(SecretService.method.putSecret, { path, data: { writer: String(i) } })));
        for (const r of results) expect(["OK", "ABORTED"], r.message).to.include(r.code);
        const versions = results.flatMap((r) => (r.code === "OK" ? [r.response!.version] : []));
        expect(new Set(versions).size, "distinct versions").to.equal(versions.length);

        const meta = ok(await setup.call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(meta.latestVersion).to.equal(1 + versions.length);
        expect(meta.versions.map((v) => v.version)).to.deep.equal(Array.from({ length: 1 + versions.length }, (_, i) => i + 1));
        for (const [i, r] of results.entries()) {
          if (r.code !== "OK") continue;
          const read = ok(await setup.call(SecretService.method.getSecret, { path, version: r.response!.version }));
          expect(read.data, `version ${r.response!.version}`).to.deep.equal({ writer: String(i) });
        }
      });
      it("twenty concurrent unconditional puts to a new path all succeed, as versions 1..20", async () => {
        const path = `${listener}/race/blind`;
        const results = await Promise.all(clients(20).map((c, i) => c.call(SecretService.method.putSecret, { path, data: { writer: String(i) } })));
        expect(results.map((r) => r.code)).to.deep.equal(Array(20).fill("OK"));
        expect(results.map((r) => r.response!.version).sort((a, b) => a - b)).to.deep.equal(Array.from({ length: 20 }, (_, i) => i + 1));
        const meta = ok(await server.client(listener).call(SecretService.method.getSecretMetadata, { path })).metadata!;
        expect(meta.latestVersion).to.equal(20);
        expect(meta.versions.map((v) => v.version), "max_versions 10 keeps the last ten").to.deep.equal([11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
      });
    });
  }

  describe("ListSecrets pagination over 1,000 paths while others write", () => {
    const PREFIX = "page/";
    const PAGE_SIZE = 37;
    // Stems chosen so byte order differs from case-insensitive and numeric order.
    const STEMS = ["Alpha", "alpha", "Beta", "beta", "_under", "0zero", "a-b", "a.b", "a_b", "a/b"];
    /** Every path under PREFIX that exists now, kept in step with our own writes. */
    const live = new Set<string>();

    before(async () => {
      const paths = Array.from({ length: 1000 }, (_, i) => `${PREFIX}${STEMS[i % STEMS.length]}/${i.toString(36)}`);
      const writers = [server.client("grpc"), server.client("grpc"), server.client("connect"), server.client("connect")];
      let n = 0;
      await forEachConcurrently(paths, 32, async (path) => {
        ok(await writers[n++ % writers.length].call(SecretService.method.putSecret, { path, data: { path } }), `seed ${path}`);
        live.add(path);
      });
      expect(live.size).to.equal(1000);
    });

    for (const listener of LISTENERS) {
      it(`on the ${listener} listener, every path that existed at the start and was not purged is seen exactly once, in byte order`, async () => {
        const reader = server.client(listener);
        const writers = [server.client(other(listener)), server.client(listener)];
        const atStart = new Set(live);
        const insertedAhead = new Set<string>();
        const insertedBehind = new Set<string>();
        const purgedUnseen = new Set<string>();
        const seen: string[] = [];
        const put = (w: NexusClient, path: string) => w.call(SecretService.method.putSecret, { path, data: { path } }).then((r) => ok(r, `put ${path}`));
        const purge = (w: NexusClient, path: string) => w.call(SecretService.method.purgeSecret, { path }).then((r) => ok(r, `purge ${path}`));

        let token = "";
        let page = 0;
        do {
          const result = ok(await reader.call(SecretService.method.listSecrets, { prefix: PREFIX, pageSize: PAGE_SIZE, pageToken: token }), `page ${page}`);
          expect(result.paths.length, `page ${page} size`).to.be.at.most(PAGE_SIZE);
          seen.push(...result.paths);
          token = result.nextPageToken;
          if (token === "") break;

          // Between page fetches, other clients change the listing on both sides of the cursor.
          const cursor = result.paths[result.paths.length - 1];
          const ahead = [...live].filter((p) => byteOrder(p, cursor) > 0).sort(byteOrder);
          const writes: Array<Promise<unknown>> = [];
          const tag = `${listener}-${page}`;
          if (page % 2 === 0) {
            for (const path of [`${PREFIX}--behind-${tag}-1`, `${PREFIX}--behind-${tag}-2`, `${PREFIX}-behind-${tag}`]) {
              insertedBehind.add(path);
              live.add(path);
              writes.push(put(writers[0], path));
            }
            for (const path of [`${cursor}.next-${tag}`, `${PREFIX}zzz/ahead-${tag}`]) {
              insertedAhead.add(path);
              live.add(path);
              writes.push(put(writers[1], path));
            }
          } else {
            const behind = result.paths.filter((p) => atStart.has(p) && live.has(p)).slice(0, 3);
            const doomed = [ahead[0], ahead[Math.floor(ahead.length / 2)], ahead[ahead.length - 1]].filter((p) => p !== undefined);
            for (const path of behind) writes.push(purge(writers[0], path));
            for (const path of new Set(doomed)) {
              purgedUnseen.add(path);
              writes.push(purge(writers[1], path));
            }
            behind.forEach((p) => live.delete(p));
            doomed.forEach((p) => live.delete(p));
          }
          await Promise.all(writes);
          page++;
          expect(page, "the walk ends").to.be.below(200);
        } while (token !== "");

        for (let i = 1; i < seen.length; i++) {
          expect(byteOrder(seen[i - 1], seen[i]), `strictly increasing at ${i}: ${seen[i - 1]} then ${seen[i]}`).to.be.below(0);
        }
        const seenSet = new Set(seen);
        const missed = [...atStart].filter((p) => !purgedUnseen.has(p) && !seenSet.has(p));
        expect(missed, "paths that existed at the start, were never purged, and were not seen").to.deep.equal([]);
        const aheadMissed = [...insertedAhead].filter((p) => !purgedUnseen.has(p) && !seenSet.has(p));
        expect(aheadMissed, "paths inserted ahead of the cursor and not seen").to.deep.equal([]);
        expect(seen.filter((p) => purgedUnseen.has(p)), "paths purged before the cursor reached them").to.deep.equal([]);
        expect(seen.filter((p) => insertedBehind.has(p)), "paths inserted behind the cursor").to.deep.equal([]);
        expect(page, "pages walked").to.be.at.least(Math.floor(1000 / PAGE_SIZE) - 2);
      });
    }

    for (const listener of LISTENERS) {
      describe(`on the ${listener} listener`, () => {
        let client: NexusClient;
        before(() => {
          client = server.client(listener);
        });

        it("page_size 0 means 100 and page_size 1000 is the most allowed", async () => {
          const small = ok(await client.call(SecretService.method.listSecrets, { prefix: PREFIX }));
          expect(small.paths).to.have.length(100);
          expect(small.nextPageToken).to.not.equal("");
          const large = ok(await client.call(SecretService.method.listSecrets, { prefix: PREFIX, pageSize: 1000 }));
          expect(large.paths).to.have.length(Math.min(1000, live.size));
          expect(large.paths.slice(0, 100)).to.deep.equal(small.paths);
        });

        it("page_size above 1000 is INVALID_ARGUMENT", async () => {
          expect(fails(await client.call(SecretService.method.listSecrets, { prefix: PREFIX, pageSize: 1001 }), "INVALID_ARGUMENT")).to.include("page_size");
        });

        it("a page token used with another prefix is INVALID_ARGUMENT", async () => {
          const first = ok(await client.call(SecretService.method.listSecrets, { prefix: PREFIX, pageSize: 5 }));
          expect(first.nextPageToken).to.not.equal("");
          for (const prefix of ["page/a", "", "pag"]) {
            const message = fails(await client.call(SecretService.method.listSecrets, { prefix, pageSize: 5, pageToken: first.nextPageToken }), "INVALID_ARGUMENT", prefix);
            expect(message).to.include("page_token");
          }
        });

        it("a garbage or truncated page token is INVALID_ARGUMENT", async () => {
          const first = ok(await client.call(SecretService.method.listSecrets, { prefix: PREFIX, pageSize: 5 }));
          const garbage = ["garbage", "!!!not base64!!!", first.nextPageToken.slice(0, -6), Buffer.from("{}").toString("base64url"), Buffer.from("[1,2]").toString("base64url")];
          for (const pageToken of garbage) {
            const message = fails(await client.call(SecretService.method.listSecrets, { prefix: PREFIX, pageToken }), "INVALID_ARGUMENT", pageToken);
            expect(message).to.include("page_token");
          }
        });
      });
    }
  });
});
