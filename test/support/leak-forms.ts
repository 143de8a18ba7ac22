// Where a secret could hide in text it should never be in (a database dump, a
// log): raw, hex in either case, and base64 or base64url at each of the three
// byte alignments a value can have inside a longer encoded blob.

export interface Leak {
  readonly name: string;
  readonly form: string;
}

/** The encodings of `secret` worth searching for, labelled. */
export function encodedForms(secret: Buffer | string): Array<{ form: string; bytes: Buffer }> {
  const raw = typeof secret === "string" ? Buffer.from(secret, "utf8") : secret;
  const hex = raw.toString("hex");
  const forms = [
    { form: "raw", bytes: raw },
    { form: "hex", bytes: Buffer.from(hex) },
    { form: "HEX", bytes: Buffer.from(hex.toUpperCase()) },
  ];
  for (let offset = 0; offset < 3; offset++) {
    const core = base64Core(raw, offset);
    if (core.length < 12) continue;
    forms.push({ form: `base64@${offset}`, bytes: Buffer.from(core) });
    forms.push({ form: `base64url@${offset}`, bytes: Buffer.from(core.replace(/\+/g, "-").replace(/\//g, "_")) });
  }
  return forms;
}

// The base64 characters that encode only `raw`'s bytes when it starts `offset`
// bytes into a 3-byte group: the first and last groups mix in other bytes.
function base64Core(raw: Buffer, offset: number): string {
  const encoded = Buffer.concat([Buffer.alloc(offset), raw]).toString("base64").replace(/=+$/, "");
  const start = offset === 0 ? 0 : 4;
  const fullGroups = Math.floor((offset + raw.length) / 3);
  return encoded.slice(start, fullGroups * 4);
}

/** Every (secret, encoding) pair found in `haystack`. */
export function findLeaks(haystack: Buffer, secrets: ReadonlyMap<string, Buffer | string>): Leak[] {
  const leaks: Leak[] = [];
  for (const [name, secret] of secrets) {
    for (const { form, bytes } of encodedForms(secret)) {
      if (haystack.includes(bytes)) leaks.push({ name, form });
    }
  }
  return leaks;
}
