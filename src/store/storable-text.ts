// What PostgreSQL text and jsonb can hold: no NUL and, in UTF-8, no unpaired
// UTF-16 surrogate, which Connect JSON can carry in a string. Validators refuse
// such input (INVALID_ARGUMENT rather than an INTERNAL from the database), and
// what is recorded before validation is made storable, so that one request
// cannot fail a statement it shares with others (the audit group commit).

const UNSTORABLE_CHAR = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|\0/;
const UNSTORABLE_CHARS = new RegExp(UNSTORABLE_CHAR.source, "g");

export function isStorableText(s: string): boolean {
  return !UNSTORABLE_CHAR.test(s);
}

/** `s` with each character PostgreSQL cannot store replaced by U+FFFD. */
export function storableText(s: string): string {
  return s.replace(UNSTORABLE_CHARS, "\uFFFD");
}
