// Text PostgreSQL cannot store (NUL, unpaired UTF-16 surrogates) is refused by
// the validators that take it from requests, and replaced where it is recorded
// before validation (the audit subject).

import { expect } from "chai";
import { compilePattern } from "../../../src/authorization/policy.js";
import { NexusError } from "../../../src/errors/nexus-error.js";
import { validateCustomMetadata } from "../../../src/services/secret-rules.js";
import { isStorableText, storableText } from "../../../src/store/storable-text.js";

const UNSTORABLE = { "a NUL": "a\u0000b", "a lone high surrogate": "a\ud800b", "a lone low surrogate": "a\udc00b", "a reversed pair": "\udc00\ud800" };
const STORABLE = { "plain text": "team/a-b_c.d", "a surrogate pair (emoji)": "ok \ud83d\ude00", "U+FFFD itself": "\ufffd" };

function reason(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(NexusError);
    expect((err as NexusError).code).to.equal("invalid_argument");
    return (err as NexusError).reason;
  }
  return undefined;
}

describe("storable text", () => {
  for (const [what, s] of Object.entries(UNSTORABLE)) {
    it(`${what} is not storable; it becomes U+FFFD in recorded text and INVALID_ARGUMENT in custom metadata and policy patterns`, () => {
      expect(isStorableText(s)).to.equal(false);
      expect(isStorableText(storableText(s))).to.equal(true);
      expect(storableText(s)).to.include("\ufffd");
      expect(reason(() => validateCustomMetadata({ [s]: "v" }))).to.equal("INVALID_METADATA");
      expect(reason(() => validateCustomMetadata({ k: s }))).to.equal("INVALID_METADATA");
      expect(reason(() => compilePattern(s, "path_pattern"))).to.equal("INVALID_PATTERN");
    });
  }
  for (const [what, s] of Object.entries(STORABLE)) {
    it(`${what} is storable and left as it is`, () => {
      expect(isStorableText(s)).to.equal(true);
      expect(storableText(s)).to.equal(s);
      expect(reason(() => validateCustomMetadata({ k: s }))).to.equal(undefined);
    });
  }
});
