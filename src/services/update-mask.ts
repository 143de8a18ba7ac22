// Reads an AIP-134 update_mask against the fields a method may update, and
// names paths in errors as the caller must send them: lowerCamelCase in Connect
// JSON (protobuf JSON's FieldMask form), snake_case in binary protobuf. Binary
// callers may also send camelCase paths; JSON ones cannot send snake_case, as
// the protobuf JSON decoder refuses it.

import type { FieldMask } from "@bufbuild/protobuf/wkt";
import { protoCamelCase, protoSnakeCase } from "@bufbuild/protobuf/reflect";
import { NexusError } from "../errors/nexus-error.js";
import type { CallContext } from "../calls/call-context.js";

/** The snake_case names of the fields the mask selects; refuses an empty mask and any path not in `updatable`. */
export function maskedFields(mask: FieldMask | undefined, updatable: readonly string[], format: CallContext["wireFormat"]): Set<string> {
  const spell = (snake: string) => (format === "json" ? protoCamelCase(snake) : snake);
  const field = spell("update_mask");
  const choices = (names: readonly string[]) => `${names.slice(0, -1).map(spell).join(", ")} or ${spell(names[names.length - 1])}`;
  const paths = mask?.paths ?? [];
  if (paths.length === 0) throw NexusError.invalidArgument(field, `name at least one of ${choices(updatable)}`, "EMPTY_UPDATE_MASK");
  const fields = new Set<string>();
  for (const path of paths) {
    const snake = /[A-Z]/.test(path) ? protoSnakeCase(path) : path;
    if (!updatable.includes(snake)) {
      const shown = format === "json" ? protoCamelCase(path) : path;
      throw NexusError.invalidArgument(field, `"${shown.slice(0, 64)}" cannot be updated; use ${choices(updatable)}`, "INVALID_UPDATE_MASK");
    }
    fields.add(snake);
  }
  return fields;
}
