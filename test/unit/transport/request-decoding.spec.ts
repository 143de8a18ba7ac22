// Unknown fields are found at any depth of a decoded binary message: nested
// messages, repeated messages and map values (google.protobuf.Struct and
// ListValue have all three), and named by their path.

import { expect } from "chai";
import { create, toBinary } from "@bufbuild/protobuf";
import { ListValueSchema, StructSchema, ValueSchema } from "@bufbuild/protobuf/wkt";
import { WireType } from "@bufbuild/protobuf/wire";
import { decodeRequest } from "../../../src/transport/request-decoding.js";

const UNKNOWN = [{ no: 99, wireType: WireType.Varint, data: new Uint8Array([1]) }];

describe("decodeRequest (binary)", () => {
  it("finds an unknown field in a map value and names its path", () => {
    const inner = create(ValueSchema, { kind: { case: "numberValue", value: 1 } });
    inner.$unknown = UNKNOWN;
    const bytes = toBinary(StructSchema, create(StructSchema, { fields: { a: create(ValueSchema), b: inner } }));
    const { refusal } = decodeRequest(StructSchema, bytes, "binary");
    expect(refusal?.reason).to.equal("UNKNOWN_FIELD");
    expect(refusal?.violations).to.deep.equal([{ field: 'fields["b"]', description: "unknown field number 99" }]);
  });

  it("finds an unknown field in a repeated message inside a oneof", () => {
    const deep = create(ValueSchema, { kind: { case: "boolValue", value: true } });
    deep.$unknown = UNKNOWN;
    const list = create(ListValueSchema, { values: [create(ValueSchema), deep] });
    const value = create(ValueSchema, { kind: { case: "listValue", value: list } });
    const { refusal } = decodeRequest(ValueSchema, toBinary(ValueSchema, value), "binary");
    expect(refusal?.violations[0]?.field).to.equal("list_value.values[1]");
  });

  it("passes a message with no unknown fields, and refuses bytes that do not decode as MALFORMED_REQUEST", () => {
    const value = create(ValueSchema, { kind: { case: "stringValue", value: "x" } });
    expect(decodeRequest(ValueSchema, toBinary(ValueSchema, value), "binary").refusal).to.equal(undefined);
    expect(decodeRequest(ValueSchema, new Uint8Array([0x1a, 0x7f, 0x01]), "binary").refusal?.reason).to.equal("MALFORMED_REQUEST");
  });
});
