// The agent's output formats: env lines a shell reads back exactly, the json
// data map, one raw value, and templates substituted without HTML escaping.

import { expect } from "chai";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseTemplate, render, RenderError } from "../../../src/agent/output-format.js";

const secret = { path: "apps/demo/db", version: 3, data: { username: "demo", password: `p"a$s\`w\\d'<&>\nline2` } };

describe("agent output formats", () => {
  it('env: KEY="value" lines that sh reads back byte for byte, whatever the value holds', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "agent-env-"));
    try {
      const file = path.join(dir, "db.env");
      await writeFile(file, render({ format: "env" }, secret));
      const read = execFileSync("sh", ["-c", `. "${file}"; printf %s "$password"`], { encoding: "utf8" });
      expect(read).to.equal(secret.data.password);
      expect(execFileSync("sh", ["-c", `. "${file}"; printf %s "$username"`], { encoding: "utf8" })).to.equal("demo");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("env: a key that is not a variable name is refused, naming the key and not the value", () => {
    expect(() => render({ format: "env" }, { ...secret, data: { "db-url": "postgres://x" } }))
      .to.throw(RenderError, "db-url")
      .and.satisfy((e: Error) => !e.message.includes("postgres://x"));
  });

  it("json: the data map", () => {
    expect(JSON.parse(render({ format: "json" }, secret))).to.deep.equal(secret.data);
  });

  it("value: the raw value of one key, nothing added", () => {
    expect(render({ format: "value", key: "password" }, secret)).to.equal(secret.data.password);
    expect(() => render({ format: "value", key: "missing" }, secret)).to.throw(RenderError, "missing");
  });

  it("template: data keys, path and version substituted as they are, with no HTML escaping", () => {
    const out = render({ format: "template", template: "url=postgres://{{ data.username }}:{{data.password}}@db/{{ path }}#{{ version }}" }, secret);
    expect(out).to.equal(`url=postgres://demo:${secret.data.password}@db/apps/demo/db#3`);
  });

  it("template: triple braces and comments are mustache's; values are as they are either way", () => {
    const out = render({ format: "template", template: "{{! a comment }}{{{ data.password }}}|{{& data.password }}" }, secret);
    expect(out).to.equal(`${secret.data.password}|${secret.data.password}`);
  });

  it("template: an unknown reference, an unclosed tag, a section, a partial or a delimiter change is refused at parse time", () => {
    expect(() => parseTemplate("{{ .Data.password }}")).to.throw("data.KEY");
    expect(() => parseTemplate("x {{ data.a")).to.throw("Unclosed tag");
    expect(() => parseTemplate("{{# data.password }}x{{/ data.password }}")).to.throw("no sections or partials");
    expect(() => parseTemplate("{{^ data.password }}x{{/ data.password }}")).to.throw("no sections or partials");
    expect(() => parseTemplate("{{> other }}")).to.throw("no sections or partials");
    expect(() => parseTemplate("{{=<% %>=}}<% path %>")).to.throw("no sections or partials");
    expect(() => parseTemplate("{{ data.a.b }}")).to.throw("a key with a dot");
  });

  it("template: a key the version does not have is an error naming the key, never an empty value", () => {
    expect(() => render({ format: "template", template: "pw={{ data.missing }}" }, secret))
      .to.throw(RenderError, 'no key "missing"')
      .and.satisfy((e: Error) => !e.message.includes(secret.data.password));
    expect(() => render({ format: "template", template: "{{ data.constructor }}" }, secret)).to.throw(RenderError, 'no key "constructor"');
  });
});
