// How one secret version becomes the bytes of one output: `env` (KEY="value"
// lines, quoted so that `source file.env` in sh reads the value back exactly),
// `json` (the data map), `value` (one key's raw value) and `template`
// (`{{ data.KEY }}`, `{{ path }}`, `{{ version }}` substituted as they are:
// no HTML escaping, no logic, nothing evaluated). Errors name keys, never values.

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
      return renderTemplate(parseTemplate(spec.template), secret);
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

type TemplatePart = { readonly text: string } | { readonly ref: "path" | "version" } | { readonly dataKey: string };

/** Parses a template; throws on a reference other than data.KEY, path or version, or an unclosed {{. */
export function parseTemplate(template: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let at = 0;
  for (;;) {
    const open = template.indexOf("{{", at);
    if (open === -1) {
      parts.push({ text: template.slice(at) });
      return parts;
    }
    parts.push({ text: template.slice(at, open) });
    const close = template.indexOf("}}", open + 2);
    if (close === -1) throw new Error(`unclosed "{{" at character ${open + 1}`);
    const ref = template.slice(open + 2, close).trim();
    const dataKey = /^data\.([^\s{}]+)$/.exec(ref);
    if (dataKey) parts.push({ dataKey: dataKey[1] });
    else if (ref === "path" || ref === "version") parts.push({ ref });
    else throw new Error(`"{{ ${ref} }}" is not {{ data.KEY }}, {{ path }} or {{ version }}`);
    at = close + 2;
  }
}

function renderTemplate(parts: readonly TemplatePart[], secret: SecretVersion): string {
  return parts
    .map((p) => {
      if ("text" in p) return p.text;
      if ("ref" in p) return p.ref === "path" ? secret.path : String(secret.version);
      const value = secret.data[p.dataKey];
      if (value === undefined) throw new RenderError(`${secret.path} version ${secret.version} has no key "${p.dataKey}" (used by the template)`);
      return value;
    })
    .join("");
}
