// How one secret version becomes the bytes of one output: `env` (KEY="value"
// lines, quoted so that `source file.env` in sh reads the value back exactly),
// `json` (the data map), `value` (one key's raw value) and `template`
// (mustache, kept logic-less: `{{ data.KEY }}`, `{{ path }}`, `{{ version }}`
// substituted as they are, no HTML escaping, no sections or partials, a
// missing key an error rather than an empty string). Errors name keys, never values.

import Mustache from "mustache";

export interface SecretVersion {
  readonly path: string;
  readonly version: number;
  readonly data: Readonly<Record<string, string>>;
}

export type RenderSpec =
  | { readonly format: "env" }
  | { readonly format: "json" }
  | { readonly format: "value"; readonly key: string }
  | { readonly format: "template"; readonly template: string };

export class RenderError extends Error {
  override readonly name = "RenderError";
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function render(spec: RenderSpec, secret: SecretVersion): string {
  switch (spec.format) {
    case "env":
      return envLines(secret.data);
    case "json":
      return JSON.stringify(secret.data, null, 2) + "\n";
    case "value": {
      const value = secret.data[spec.key];
      if (value === undefined) throw new RenderError(`${secret.path} version ${secret.version} has no key "${spec.key}"`);
      return value;
    }
    case "template":
      return renderTemplate(spec.template, secret);
  }
}

/** `KEY="value"` per key, in the data's order; a key that is not a shell variable name is refused. */
export function envLines(data: Readonly<Record<string, string>>): string {
  return Object.entries(data)
    .map(([key, value]) => {
      if (!ENV_NAME.test(key)) throw new RenderError(`key "${key}" is not a valid environment variable name (letters, digits, _)`);
      return `${key}=${shellQuote(value)}\n`;
    })
    .join("");
}

/** The environment variables an env output puts into a child (`spike agent exec`). */
export function envVariables(data: Readonly<Record<string, string>>): Record<string, string> {
  for (const key of Object.keys(data)) {
    if (!ENV_NAME.test(key)) throw new RenderError(`key "${key}" is not a valid environment variable name (letters, digits, _)`);
  }
  return { ...data };
}

/** Double quotes with \, ", $ and ` escaped: the only characters special inside them in sh. */
export function shellQuote(value: string): string {
  return `"${value.replace(/[\\"$`]/g, (c) => `\\${c}`)}"`;
}

/** What a template may name: the secret's path and version, and data.KEY for each of its keys. */
export interface TemplateReferences {
  readonly dataKeys: readonly string[];
}

/**
 * Parses a template with mustache and keeps it logic-less: only {{ name }}
 * (or {{{ name }}} / {{& name }}, the same here) and {{! comments }}; sections,
 * partials and delimiter changes are refused, and so is any name other than
 * data.KEY, path or version. Throws on an unclosed tag.
 */
export function parseTemplate(template: string): TemplateReferences {
  const dataKeys: string[] = [];
  for (const token of Mustache.parse(template)) {
    const [type, value] = token;
    if (type === "text" || type === "!") continue;
    if (type !== "name" && type !== "&") throw new Error(`"{{${type} ${value}}}" is not allowed: templates name data.KEY, path and version only (no sections or partials)`);
    const dataKey = /^data\.(.+)$/.exec(value);
    if (dataKey) {
      // mustache reads a dot as a step into an object: "data.a.b" would look for data.a, then b.
      if (dataKey[1].includes(".")) throw new Error(`"{{ ${value} }}": a key with a dot cannot be named in a template (use format json or value)`);
      dataKeys.push(dataKey[1]);
    } else if (value !== "path" && value !== "version") throw new Error(`"{{ ${value} }}" is not {{ data.KEY }}, {{ path }} or {{ version }}`);
  }
  return { dataKeys };
}

/** No HTML escaping: the file gets the values exactly. */
const AS_IS = { escape: (text: string) => text };

function renderTemplate(template: string, secret: SecretVersion): string {
  // A missing key would render as "" (mustache's rule): refuse it instead, naming the key.
  for (const key of parseTemplate(template).dataKeys) {
    if (!Object.hasOwn(secret.data, key)) throw new RenderError(`${secret.path} version ${secret.version} has no key "${key}" (used by the template)`);
  }
  return Mustache.render(template, { data: secret.data, path: secret.path, version: secret.version }, {}, AS_IS);
}
