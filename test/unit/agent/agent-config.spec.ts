// agent.yaml is validated at start: a malformed file names the line and the
// field, unknown keys are refused, and a valid one reads with its defaults.

import { expect } from "chai";
import { AgentConfigError, parseAgentConfig } from "../../../src/agent/agent-config.js";

const VALID = `nexus: { addr: "localhost:8553", server_id: "spiffe://spike.ist/spike/nexus" }
svid: { socket: "unix:///run/spire/agent.sock" }
health: { listen: "127.0.0.1:8556" }
outputs:
  - path: apps/demo/db
    label: current
    file: /run/secrets/db.env
    format: env
    mode: "0640"
    on_change: { signal: SIGHUP, pid_file: /run/app.pid }
  - path: apps/demo/api
    version: 3
    file: /run/secrets/api-key
    format: value
    key: token
    on_change: { command: ["/bin/true"], timeout: 5s }
`;

function error(text: string, exec = false): string {
  try {
    parseAgentConfig(text, "agent.yaml", { exec });
  } catch (err) {
    expect(err).to.be.instanceOf(AgentConfigError);
    return (err as Error).message;
  }
  return expect.fail("expected an AgentConfigError");
}

describe("agent.yaml", () => {
  it("a valid file reads with its defaults (0600 unless given, watch with a resync every 5 min, poll every 10 s when not watching, label current)", () => {
    const config = parseAgentConfig(VALID, "agent.yaml");
    expect(config.addresses).to.deep.equal(["localhost:8553"]);
    expect(config.svid).to.deep.equal({ socket: "unix:///run/spire/agent.sock", spiffeId: undefined });
    expect(config.pollIntervalMs).to.equal(10_000);
    expect(config.watch, "follows WatchSecrets unless told not to").to.equal(true);
    expect(config.resyncIntervalMs).to.equal(5 * 60_000);
    expect(config.outputs[0]).to.include({ label: "current", format: "env", mode: 0o640 });
    expect(config.outputs[0].onChange).to.deep.equal({ kind: "signal", signal: "SIGHUP", pidFile: "/run/app.pid" });
    expect(config.outputs[1]).to.include({ version: 3, label: undefined, key: "token", mode: 0o600 });
    expect(config.outputs[1].onChange).to.deep.equal({ kind: "command", command: ["/bin/true"], timeoutMs: 5000 });
  });

  const cases: Array<[string, string, string]> = [
    ["an unknown format", VALID.replace("format: env", "format: xml"), 'agent.yaml:8: outputs[0].format: "xml" is not one of env, json, value, template'],
    ["a misspelt key", VALID.replace("pid_file:", "pidfile:"), "agent.yaml:10: outputs[0].on_change.pidfile: unknown field"],
    ["format value without key", VALID.replace("    key: token\n", ""), "agent.yaml:11: outputs[1]: key is required for format value"],
    ["label and version together", VALID.replace("version: 3", "version: 3\n    label: pending"), "outputs[1].version: give label or version, not both"],
    ["an unknown label", VALID.replace("version: 3", "label: prod"), 'outputs[1].label: "prod" is not one of current, pending, previous'],
    ["a relative file", VALID.replace("/run/secrets/db.env", "db.env"), 'agent.yaml:7: outputs[0].file: "db.env" must be an absolute path'],
    ["a bad mode", VALID.replace('"0640"', '"0999"'), "agent.yaml:9: outputs[0].mode"],
    ["socket and files together", VALID.replace('{ socket: "unix:///run/spire/agent.sock" }', '{ socket: "unix:///run/spire/agent.sock", cert: /a.pem }'), "svid.socket and svid.cert are both set"],
    ["a bad socket", VALID.replace("unix:///run/spire/agent.sock", "/run/spire/agent.sock"), "agent.yaml:2: svid.socket"],
    ["no outputs", VALID.slice(0, VALID.indexOf("outputs:")) + "outputs: []\n", "agent.yaml:4: outputs: needs at least one output"],
    ["a missing nexus.addr", VALID.replace('addr: "localhost:8553", ', ""), "nexus: addr is required"],
    ["an unknown signal", VALID.replace("SIGHUP", "SIGFOO"), 'outputs[0].on_change.signal: "SIGFOO" is not one of'],
    ["a bad duration", VALID.replace("timeout: 5s", "timeout: soon"), "outputs[1].on_change.timeout"],
    ["watch that is not a boolean", `watch: "yes"\n${VALID}`, 'agent.yaml:1: watch: "yes" is not true or false'],
    ["a bad resync_interval", `resync_interval: often\n${VALID}`, "agent.yaml:1: resync_interval"],
    ["broken YAML", VALID.replace("outputs:", "outputs: ["), "agent.yaml:"],
    ["two outputs on one file", VALID.replace("/run/secrets/api-key", "/run/secrets/db.env"), "outputs[1].file: /run/secrets/db.env is also the file of outputs[0]"],
  ];
  for (const [what, text, expected] of cases) {
    it(`${what} is refused, naming the line and field`, () => {
      expect(error(text)).to.include(expected);
    });
  }

  it("an env output without a file is refused, except under `spike agent exec`", () => {
    const text = VALID.replace("    file: /run/secrets/db.env\n", "");
    expect(error(text)).to.include("outputs[0]: file is required");
    expect(parseAgentConfig(text, "agent.yaml", { exec: true }).outputs[0].file).to.equal(undefined);
  });
});
