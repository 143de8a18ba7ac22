// The Prometheus listener (NEXUS_METRICS_LISTEN): off unless set in serve mode;
// when on, RPCs are counted by service, method and code, the gauges tell the
// seal, the database, the audit log and the SVID's expiry, and no label value
// ever carries what a caller chose (a secret path, a SPIFFE ID, an unknown
// method's name). The dashboards and alert rules under deploy/ use only
// metrics a live server exposes.

import { expect } from "chai";
import * as grpc from "@grpc/grpc-js";
import { X509Certificate, randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { ADMIN_PASSWORD, ok, seal, startSecretServer, type SecretTestServer } from "../support/secret-server.js";
import { startTestServer, WORKLOAD_ID, SUPERUSER_ID, NEXUS_ID } from "../support/test-server.js";
import { eventually } from "../support/wait.js";

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).to.equal(200);
  expect(res.headers.get("content-type")).to.include("text/plain");
  return res.text();
}

/** The value of one sample, e.g. sample(text, 'nexus_sealed') or with its labels in Prometheus order. */
function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Every metric family name the exposition declares. */
function metricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    const m = /^# TYPE (\S+) (\S+)/.exec(line);
    if (m === null) continue;
    names.add(m[1]);
    if (m[2] === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(m[1] + s);
  }
  return names;
}

describe("metrics (NEXUS_METRICS_LISTEN)", function () {
  this.timeout(60_000);
  let server: SecretTestServer;
  let port: number;

  before(async () => {
    server = await startSecretServer({ env: { NEXUS_METRICS_LISTEN: "127.0.0.1:0" } });
    port = server.nexus.metricsPort!;
  });
  after(() => server?.stop());

  it("a serve-mode server without NEXUS_METRICS_LISTEN opens no metrics listener", async () => {
    const plain = await startTestServer();
    try {
      expect(plain.nexus.metricsPort).to.equal(undefined);
      expect(plain.config.metricsListen).to.equal(undefined);
    } finally {
      await plain.stop();
    }
  });

  it("counts RPCs by service, method and gRPC code, with a latency histogram", async () => {
    const path = `metrics/${randomUUID()}`;
    const before = await scrape(port);
    const put = 'nexus_rpc_requests_total{service="spike.nexus.v1.SecretService",method="PutSecret",code="OK"}';
    const notFound = 'nexus_rpc_requests_total{service="spike.nexus.v1.SecretService",method="GetSecret",code="NOT_FOUND"}';
    const client = server.client("grpc");
    ok(await client.call(SecretService.method.putSecret, { path, data: { k: "v" } }));
    ok(await server.client("connect").call(SecretService.method.putSecret, { path, data: { k: "v2" } }));
    expect((await client.call(SecretService.method.getSecret, { path: `${path}-missing` })).code).to.equal("NOT_FOUND");
    const after = await scrape(port);
    expect((sample(after, put) ?? 0) - (sample(before, put) ?? 0)).to.equal(2);
    expect((sample(after, notFound) ?? 0) - (sample(before, notFound) ?? 0)).to.equal(1);
    const count = 'nexus_rpc_duration_seconds_count{service="spike.nexus.v1.SecretService",method="PutSecret"}';
    expect(sample(after, count)).to.be.at.least(2);
    expect(sample(after, 'nexus_rpc_in_flight{service="spike.nexus.v1.SecretService",method="PutSecret"}')).to.equal(0);
  });

  it("reports the seal, the database, the keyring, the audit log and the SVID's expiry", async () => {
    let text = await scrape(port);
    expect(sample(text, "nexus_sealed")).to.equal(0);
    expect(sample(text, "nexus_database_up")).to.equal(1);
    expect(sample(text, "nexus_database_pool_max")).to.equal(4);
    // Read from pg_stat_activity by this replica's application_name: its pool has connections open.
    expect(sample(text, "nexus_database_pool_open")).to.be.within(1, 4);
    expect(sample(text, "nexus_database_pool_in_use")).to.be.within(0, 4);
    // From the driver's queue (patched postgres.js): nothing waits for a connection at rest.
    expect(sample(text, "nexus_database_pool_waiting")).to.equal(0);
    expect(sample(text, "nexus_keyring_keys")).to.equal(1);
    expect(sample(text, "nexus_keyring_active_key_id")).to.be.at.least(1);
    expect(sample(text, "nexus_audit_batch_size_count")).to.be.at.least(1);
    expect(sample(text, "nexus_audit_write_failures_total")).to.equal(0);
    expect(sample(text, "nexus_audit_events_waiting")).to.equal(0);
    expect(sample(text, "nexus_watch_streams_open")).to.equal(0);
    expect(sample(text, "nexus_database_ping_duration_seconds_count")).to.be.at.least(1);
    const notAfter = new Date(new X509Certificate(server.pki.nexus.certPem).validTo).getTime() / 1000;
    expect(sample(text, "nexus_svid_expiry_timestamp_seconds")).to.equal(notAfter);
    expect(sample(text, "nexus_process_cpu_seconds_total")).to.be.greaterThan(0);
    expect(text).to.include("nexus_nodejs_eventloop_lag_seconds");

    await seal(server.client("grpc"));
    text = await scrape(port);
    expect(sample(text, "nexus_sealed")).to.equal(1);
    expect(sample(text, "nexus_keyring_keys")).to.equal(0);
    ok(await server.client("grpc").call(OperatorService.method.unseal, { adminPassword: ADMIN_PASSWORD }));
    expect(sample(await scrape(port), "nexus_sealed")).to.equal(0);
  });

  it("nexus_watch_streams_open counts this replica's open WatchSecrets streams", async () => {
    const iterator = server.client("grpc").stream(SecretService.method.watchSecrets, { prefix: "metrics/" })[Symbol.asyncIterator]();
    await iterator.next(); // the first response (a heartbeat) says the stream is open
    expect(sample(await scrape(port), "nexus_watch_streams_open")).to.equal(1);
    await iterator.return?.();
    await eventually(async () => expect(sample(await scrape(port), "nexus_watch_streams_open")).to.equal(0));
    expect(sample(await scrape(port), "nexus_key_rotation_remaining")).to.equal(0);
  });

  it("no label value carries a secret path, a SPIFFE ID or an unknown method's name", async () => {
    const marker = `leak-marker-${randomUUID()}`;
    const client = server.client("grpc");
    ok(await client.call(SecretService.method.putSecret, { path: `${marker}/db`, data: { password: marker } }));
    expect((await client.call(SecretService.method.getSecret, { path: `${marker}/missing` })).code).to.equal("NOT_FOUND");
    // Denied: the workload has no policy.
    expect((await server.client("grpc", server.pki.workload).call(SecretService.method.getSecret, { path: `${marker}/db` })).code).to.equal("PERMISSION_DENIED");
    // An unknown method whose name is the marker, on the gRPC listener.
    const raw = new grpc.Client(`127.0.0.1:${server.nexus.grpcPort}`, grpc.credentials.createSsl(Buffer.from(server.pki.ca.certPem), Buffer.from(server.pki.superuser.keyPem), Buffer.from(server.pki.superuser.certPem), { checkServerIdentity: () => undefined }));
    try {
      const err = await new Promise<grpc.ServiceError | null>((resolve) =>
        raw.makeUnaryRequest(`/${marker}.Service/${marker}`, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), new grpc.Metadata(), {}, (e) => resolve(e)),
      );
      expect(err?.code).to.equal(grpc.status.UNIMPLEMENTED);
    } finally {
      raw.close();
    }
    const text = await scrape(port);
    for (const leaked of [marker, SUPERUSER_ID, WORKLOAD_ID, NEXUS_ID, "spiffe://"]) expect(text).not.to.include(leaked);
    expect(sample(text, 'nexus_rpc_requests_total{service="unknown",method="unknown",code="UNIMPLEMENTED"}')).to.be.at.least(1);
    expect(sample(text, 'nexus_rpc_requests_total{service="spike.nexus.v1.SecretService",method="GetSecret",code="PERMISSION_DENIED"}')).to.be.at.least(1);
    // Every label value is one of a fixed set.
    const methods = new Set([...SecretService.methods, ...OperatorService.methods].map((m) => m.name));
    for (const m of text.matchAll(/^nexus_rpc_requests_total\{service="([^"]*)",method="([^"]*)",code="([^"]*)"\}/gm)) {
      expect(m[1]).to.match(/^(spike\.nexus\.v1\.(Secret|Operator|Policy)Service|unknown)$/);
      expect(m[2] === "unknown" || methods.has(m[2]) || /^[A-Z]\w+$/.test(m[2]), m[2]).to.equal(true);
      expect(m[3]).to.match(/^[A-Z_]+$/);
    }
  });

  it("answers only GET /metrics", async () => {
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).to.equal(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: "POST" })).status).to.equal(405);
  });

  it("every metric the Grafana dashboards and Prometheus alert rules under deploy/ use exists on a live server", async () => {
    const names = metricNames(await scrape(port));
    const deploy = path.resolve("deploy");
    const used = new Map<string, string>();
    const collect = (expr: string, where: string) => {
      for (const m of expr.matchAll(/\bnexus_[a-z0-9_]+\b/g)) used.set(m[0], where);
    };
    for (const file of await readdir(path.join(deploy, "grafana"))) {
      const dashboard = JSON.parse(await readFile(path.join(deploy, "grafana", file), "utf8")) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
      for (const panel of dashboard.panels) for (const t of panel.targets ?? []) collect(t.expr, `${file}: ${panel.title}`);
    }
    for (const file of await readdir(path.join(deploy, "prometheus"))) {
      const rules = parseYaml(await readFile(path.join(deploy, "prometheus", file), "utf8")) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> };
      for (const group of rules.groups) for (const rule of group.rules) collect(rule.expr, `${file}: ${rule.alert}`);
    }
    expect(used.size).to.be.greaterThan(5);
    const alerts = (parseYaml(await readFile(path.join(deploy, "prometheus", "nexus-alerts.yaml"), "utf8")) as { groups: Array<{ rules: Array<{ alert: string }> }> }).groups.flatMap((g) => g.rules.map((r) => r.alert));
    expect(alerts).to.include.members(["NexusSealed", "NexusAuditFailing", "NexusDatabaseDown", "NexusSvidExpiringSoon", "NexusHighErrorRate"]);
    for (const [name, where] of used) expect(names.has(name), `${where} uses ${name}, which /metrics does not expose`).to.equal(true);
  });
});
