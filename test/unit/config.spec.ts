// Configuration: NEXUS_* variables and matching flags (flags win); a missing or
// malformed value stops the start with a ConfigError that names the variable.

import { expect } from "chai";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { ConfigError, loadConfig, loadDatabaseConfig, type Mode } from "../../src/config/config.js";

const CWD = "/srv/nexus";

/** The least a production start needs. */
const SERVE_ENV = {
  NEXUS_TRUST_BUNDLE: "/etc/nexus/bundle.pem",
  NEXUS_TLS_CERT: "/etc/nexus/svid.pem",
  NEXUS_TLS_KEY: "/etc/nexus/svid_key.pem",
  NEXUS_DATABASE_URL: "postgres://nexus@db.internal/nexus",
};

function load(env: Record<string, string | undefined>, flags: string[] = [], mode: Mode = "serve") {
  return loadConfig(mode, flags, env, CWD);
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail("expected a ConfigError");
}

describe("loadConfig", () => {
  describe("refuses a missing or bad value, naming the variable", () => {
    it("serve mode without NEXUS_TLS_CERT", () => {
      const err = configError(() => load({ ...SERVE_ENV, NEXUS_TLS_CERT: undefined }));
      expect(err.message).to.include("NEXUS_TLS_CERT");
    });

    for (const bad of ["zero", "0", "-1", "2.5"]) {
      it(`NEXUS_DB_POOL_MAX=${JSON.stringify(bad)}`, () => {
        const err = configError(() => load({ ...SERVE_ENV, NEXUS_DB_POOL_MAX: bad }));
        expect(err.message).to.include("NEXUS_DB_POOL_MAX");
      });
    }

    for (const bad of ["nohost", "h:99999", ":8553", "127.0.0.1:"]) {
      it(`NEXUS_LISTEN=${JSON.stringify(bad)}`, () => {
        const err = configError(() => load({ ...SERVE_ENV, NEXUS_LISTEN: bad }));
        expect(err.message).to.include("NEXUS_LISTEN");
      });
    }

    for (const bad of ["verbose", "constructor", "toString", "__proto__"]) {
      it(`NEXUS_LOG_LEVEL=${JSON.stringify(bad)} (not a level, even if Object.prototype has it)`, () => {
        const err = configError(() => load({ ...SERVE_ENV, NEXUS_LOG_LEVEL: bad }));
        expect(err.message).to.include("NEXUS_LOG_LEVEL");
      });
    }

    it('an invalid NEXUS_TRUST_DOMAIN ("Spike.IST")', () => {
      const err = configError(() => load({ ...SERVE_ENV, NEXUS_TRUST_DOMAIN: "Spike.IST" }));
      expect(err.message).to.include("NEXUS_TRUST_DOMAIN");
    });

    it("a bad value given as a flag names the variable and the flag", () => {
      const err = configError(() => load(SERVE_ENV, ["--db-pool-max=zero"]));
      expect(err.message).to.include("NEXUS_DB_POOL_MAX").and.include("--db-pool-max");
    });
  });

  describe("flags", () => {
    it("override the environment, as --name=value", () => {
      const config = load({ ...SERVE_ENV, NEXUS_DB_POOL_MAX: "8" }, ["--db-pool-max=3"]);
      expect(config.dbPoolMax).to.equal(3);
    });

    it("override the environment, as --name value (two arguments)", () => {
      const config = load({ ...SERVE_ENV, NEXUS_LISTEN: "0.0.0.0:9000" }, ["--listen", "127.0.0.1:1"]);
      expect(config.listen).to.deep.equal({ host: "127.0.0.1", port: 1 });
    });

    it("an unknown flag is refused, naming it", () => {
      const err = configError(() => load(SERVE_ENV, ["--no-such-setting=1"]));
      expect(err.message).to.include("--no-such-setting");
    });

    it("a flag without its value is refused", () => {
      const err = configError(() => load(SERVE_ENV, ["--listen"]));
      expect(err.message).to.include("--listen");
    });
  });

  describe("defaults", () => {
    it("dev mode needs nothing: dev certificates in certs-dev/ and loopback listeners from 8553", () => {
      const config = load({}, [], "dev");
      expect(config.certFile).to.equal(path.join(CWD, "certs-dev/nexus.pem"));
      expect(config.keyFile).to.equal(path.join(CWD, "certs-dev/nexus-key.pem"));
      expect(config.trustBundleFile).to.equal(path.join(CWD, "certs-dev/ca.pem"));
      expect(config.listen).to.deep.equal({ host: "127.0.0.1", port: 8553 });
      expect(config.connectListen).to.deep.equal({ host: "127.0.0.1", port: 8554 });
      expect(config.healthListen).to.deep.equal({ host: "127.0.0.1", port: 8555 });
      expect(config.databaseUrl, "no URL: the embedded PostgreSQL").to.equal(undefined);
    });

    it("serve mode listens on all interfaces, 8553, 8554 and 8555", () => {
      const config = load(SERVE_ENV);
      expect(config.listen).to.deep.equal({ host: "0.0.0.0", port: 8553 });
      expect(config.connectListen).to.deep.equal({ host: "0.0.0.0", port: 8554 });
      expect(config.healthListen).to.deep.equal({ host: "0.0.0.0", port: 8555 });
      expect(config.trustDomain).to.equal("spike.ist");
    });

    it("metrics are off by default in serve mode and on 127.0.0.1:9553 in dev mode; NEXUS_METRICS_LISTEN sets them", () => {
      expect(load(SERVE_ENV).metricsListen).to.equal(undefined);
      expect(load({}, [], "dev").metricsListen).to.deep.equal({ host: "127.0.0.1", port: 9553 });
      expect(load({ ...SERVE_ENV, NEXUS_METRICS_LISTEN: "0.0.0.0:9090" }).metricsListen).to.deep.equal({ host: "0.0.0.0", port: 9090 });
    });

    it("NEXUS_AUDIT_EXPORT is off by default, \"-\" means stdout and a path is resolved", () => {
      expect(load(SERVE_ENV).auditExport).to.equal(undefined);
      expect(load({ ...SERVE_ENV, NEXUS_AUDIT_EXPORT: "-" }).auditExport).to.equal("-");
      expect(load({ ...SERVE_ENV, NEXUS_AUDIT_EXPORT: "audit.jsonl" }).auditExport).to.equal(path.join(CWD, "audit.jsonl"));
    });

    it("NEXUS_SUPERUSER_ID derives from NEXUS_TRUST_DOMAIN", () => {
      const config = load({ ...SERVE_ENV, NEXUS_TRUST_DOMAIN: "example.org" });
      expect(config.superuserId).to.equal("spiffe://example.org/spike/pilot/role/superuser");
    });

    it("an explicit NEXUS_SUPERUSER_ID wins over the derived one", () => {
      const config = load({ ...SERVE_ENV, NEXUS_SUPERUSER_ID: "spiffe://spike.ist/ops/admin" });
      expect(config.superuserId).to.equal("spiffe://spike.ist/ops/admin");
    });

    it("peer unseal: NEXUS_SERVER_ID derives from NEXUS_TRUST_DOMAIN, peer unseal is on, and nothing is advertised while NEXUS_LISTEN is 0.0.0.0", () => {
      const config = load({ ...SERVE_ENV, NEXUS_TRUST_DOMAIN: "example.org" });
      expect({ serverId: config.serverId, peerUnseal: config.peerUnseal, advertise: config.advertiseAddress }).to.deep.equal({
        serverId: "spiffe://example.org/spike/nexus",
        peerUnseal: true,
        advertise: undefined,
      });
    });

    it("peer unseal: a NEXUS_LISTEN with a host is advertised; NEXUS_ADVERTISE_ADDRESS wins; NEXUS_PEER_UNSEAL=off turns it off", () => {
      expect(load({ ...SERVE_ENV, NEXUS_LISTEN: "10.0.0.7:8553" }).advertiseAddress).to.deep.equal({ host: "10.0.0.7", port: 8553 });
      const config = load({ ...SERVE_ENV, NEXUS_ADVERTISE_ADDRESS: "nexus-1.nexus.svc:8553", NEXUS_PEER_UNSEAL: "off", NEXUS_SERVER_ID: "spiffe://spike.ist/ns/nexus/sa/nexus" });
      expect({ advertise: config.advertiseAddress, peerUnseal: config.peerUnseal, serverId: config.serverId }).to.deep.equal({
        advertise: { host: "nexus-1.nexus.svc", port: 8553 },
        peerUnseal: false,
        serverId: "spiffe://spike.ist/ns/nexus/sa/nexus",
      });
    });

    it("peer unseal: a NEXUS_PEER_UNSEAL that is not on/off, or a NEXUS_SERVER_ID that is not a SPIFFE ID, is refused, naming the variable", () => {
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_PEER_UNSEAL: "maybe" })).message).to.match(/^NEXUS_PEER_UNSEAL \(--peer-unseal\): "maybe" is not on or off/);
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_SERVER_ID: "nexus" })).message).to.match(/^NEXUS_SERVER_ID \(--server-id\)/);
    });

    it("rate limits are shared every second by default; NEXUS_RATE_LIMIT_SYNC_INTERVAL sets it, off turns it off, under 100ms is refused", () => {
      expect(load(SERVE_ENV).rateLimits.syncIntervalMs).to.equal(1000);
      expect(load({}, [], "dev").rateLimits.syncIntervalMs).to.equal(1000);
      expect(load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "250ms" }).rateLimits.syncIntervalMs).to.equal(250);
      expect(load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "off" }).rateLimits.syncIntervalMs).to.equal(0);
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "10ms" })).message).to.match(/^NEXUS_RATE_LIMIT_SYNC_INTERVAL \(--rate-limit-sync-interval\): "10ms" is shorter than 100ms/);
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "often" })).message).to.match(/^NEXUS_RATE_LIMIT_SYNC_INTERVAL .*not a duration/);
    });

    // setTimeout holds at most 2^31 - 1 ms (24.8 days): beyond, Node fires after 1 ms, so "30d" would exchange continuously.
    it("a NEXUS_RATE_LIMIT_SYNC_INTERVAL over 1h is refused: a timer cannot hold 30d and would fire every millisecond", () => {
      expect(load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "1h" }).rateLimits.syncIntervalMs).to.equal(3_600_000);
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_RATE_LIMIT_SYNC_INTERVAL: "30d" })).message).to.match(/^NEXUS_RATE_LIMIT_SYNC_INTERVAL .*"30d" is longer than 1h/);
    });

    it("audit read durability: durable unless NEXUS_AUDIT_READ_DURABILITY=relaxed; any other value is refused, naming the variable", () => {
      expect(load(SERVE_ENV).auditReadDurability).to.equal("durable");
      expect(load(SERVE_ENV, [], "dev").auditReadDurability).to.equal("durable");
      expect(load({ ...SERVE_ENV, NEXUS_AUDIT_READ_DURABILITY: "relaxed" }).auditReadDurability).to.equal("relaxed");
      expect(load(SERVE_ENV, ["--audit-read-durability=relaxed"]).auditReadDurability).to.equal("relaxed");
      // Relaxed reads and the audit export together are refused: ids a crash loses can be reused past the export's position.
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_AUDIT_READ_DURABILITY: "relaxed", NEXUS_AUDIT_EXPORT: "-" })).message).to.match(
        /^NEXUS_AUDIT_READ_DURABILITY=relaxed and NEXUS_AUDIT_EXPORT are both set/,
      );
      expect(load({ ...SERVE_ENV, NEXUS_AUDIT_EXPORT: "-" }).auditReadDurability).to.equal("durable");
      expect(configError(() => load({ ...SERVE_ENV, NEXUS_AUDIT_READ_DURABILITY: "fast" })).message).to.match(
        /^NEXUS_AUDIT_READ_DURABILITY \(--audit-read-durability\): "fast" is not durable or relaxed/,
      );
    });
  });

  describe("the SVID from the SPIFFE Workload API", () => {
    const { NEXUS_TLS_CERT: _c, NEXUS_TLS_KEY: _k, NEXUS_TRUST_BUNDLE: _b, ...NO_FILES } = SERVE_ENV;

    it("NEXUS_SPIFFE_ENDPOINT_SOCKET replaces the three files", () => {
      const config = load({ ...NO_FILES, NEXUS_SPIFFE_ENDPOINT_SOCKET: "unix:///run/spire/agent.sock" });
      expect(config.spiffeEndpointSocket).to.equal("unix:///run/spire/agent.sock");
      expect(config.certFile).to.equal(undefined);
    });

    it("--spiffe-endpoint-socket and --spiffe-id are the flags", () => {
      const config = load(NO_FILES, ["--spiffe-endpoint-socket", "tcp://127.0.0.1:8081", "--spiffe-id", "spiffe://spike.ist/spike/nexus"]);
      expect(config.spiffeEndpointSocket).to.equal("tcp://127.0.0.1:8081");
      expect(config.spiffeId).to.equal("spiffe://spike.ist/spike/nexus");
    });

    it("the standard SPIFFE_ENDPOINT_SOCKET is honoured too", () => {
      const config = load({ ...NO_FILES, SPIFFE_ENDPOINT_SOCKET: "unix:///run/spire/agent.sock" });
      expect(config.spiffeEndpointSocket).to.equal("unix:///run/spire/agent.sock");
    });

    for (const [socketVar, fileVar] of [
      ["NEXUS_SPIFFE_ENDPOINT_SOCKET", "NEXUS_TLS_CERT"],
      ["NEXUS_SPIFFE_ENDPOINT_SOCKET", "NEXUS_TRUST_BUNDLE"],
      ["SPIFFE_ENDPOINT_SOCKET", "NEXUS_TLS_KEY"],
    ]) {
      it(`${socketVar} with ${fileVar} is refused at start, naming both`, () => {
        const err = configError(() => load({ ...NO_FILES, [socketVar]: "unix:///run/spire/agent.sock", [fileVar]: "/etc/nexus/x.pem" }));
        expect(err.message).to.include(socketVar).and.to.include(fileVar);
      });
    }

    it("a socket that is not unix:///path or tcp://IP:port is refused", () => {
      for (const bad of ["/run/spire/agent.sock", "unix://relative", "tcp://spire-agent:8081", "http://127.0.0.1:1"]) {
        const err = configError(() => load({ ...NO_FILES, NEXUS_SPIFFE_ENDPOINT_SOCKET: bad }));
        expect(err.message, bad).to.include("NEXUS_SPIFFE_ENDPOINT_SOCKET");
      }
    });

    it("--spiffe-id without a socket is refused", () => {
      const err = configError(() => load({ ...SERVE_ENV, NEXUS_SPIFFE_ID: "spiffe://spike.ist/spike/nexus" }));
      expect(err.message).to.include("NEXUS_SPIFFE_ID");
    });
  });

  describe("NEXUS_DATABASE_URL_FILE", () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), "nexus-config-"));
    });
    after(async () => rm(dir, { recursive: true, force: true }));

    it("is read and trimmed", async () => {
      const file = path.join(dir, "database-url");
      await writeFile(file, "  postgres://nexus:s3cret@db.internal/nexus\n\n");
      const config = load({ ...SERVE_ENV, NEXUS_DATABASE_URL: undefined, NEXUS_DATABASE_URL_FILE: file });
      expect(config.databaseUrl).to.equal("postgres://nexus:s3cret@db.internal/nexus");
    });

    it("together with NEXUS_DATABASE_URL is refused", async () => {
      const file = path.join(dir, "database-url-both");
      await writeFile(file, "postgres://nexus@other/nexus\n");
      const err = configError(() => load({ ...SERVE_ENV, NEXUS_DATABASE_URL_FILE: file }));
      expect(err.message).to.include("NEXUS_DATABASE_URL").and.include("NEXUS_DATABASE_URL_FILE");
    });

    it("that cannot be read is refused, naming the variable", () => {
      const err = configError(() => load({ ...SERVE_ENV, NEXUS_DATABASE_URL: undefined, NEXUS_DATABASE_URL_FILE: path.join(dir, "missing") }));
      expect(err.message).to.include("NEXUS_DATABASE_URL_FILE");
    });
  });
});

describe("loadDatabaseConfig (what `nexus migrate` reads)", () => {
  it("needs no TLS files or listeners: NEXUS_DATABASE_URL alone is enough in serve mode", () => {
    const config = loadDatabaseConfig("serve", [], { NEXUS_DATABASE_URL: SERVE_ENV.NEXUS_DATABASE_URL }, CWD);
    expect(config).to.deep.equal({
      mode: "serve",
      databaseUrl: SERVE_ENV.NEXUS_DATABASE_URL,
      databaseCaFile: undefined,
      dataDir: path.join(CWD, ".nexus/data"),
      logLevel: "info",
    });
  });

  it("ignores the other settings of the environment, even malformed ones, but still refuses an unknown flag", () => {
    const env = { NEXUS_DATABASE_URL: SERVE_ENV.NEXUS_DATABASE_URL, NEXUS_LISTEN: "not-an-address", NEXUS_DB_POOL_MAX: "0" };
    expect(loadDatabaseConfig("serve", ["--tls-cert=/etc/nexus/svid.pem"], env, CWD).databaseUrl).to.equal(SERVE_ENV.NEXUS_DATABASE_URL);
    expect(configError(() => loadDatabaseConfig("serve", ["--nope=1"], env, CWD)).message).to.include("unknown flag --nope");
  });

  it("a malformed database setting is still refused, naming the variable", () => {
    const err = configError(() => loadDatabaseConfig("serve", [], { NEXUS_LOG_LEVEL: "loud" }, CWD));
    expect(err.message).to.include("NEXUS_LOG_LEVEL");
  });
});
