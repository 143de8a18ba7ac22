// Unknown fields are found at any depth of a decoded binary message: nested
// messages, repeated messages and map values (google.protobuf.Struct and
// ListValue have all three), and named by their path. So are enum values this
// server does not know, in binary (a number) and JSON (a number or a name).

import { expect } from "chai";
import { create, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { ListValueSchema, StructSchema, ValueSchema } from "@bufbuild/protobuf/wkt";
import { WireType } from "@bufbuild/protobuf/wire";
import { decodeRequest } from "../../../src/transport/request-decoding.js";
import { ListAuditEventsRequestSchema } from "../../../gen/spike/nexus/v1/operator_pb.js";
import { CreatePolicyRequestSchema } from "../../../gen/spike/nexus/v1/policy_pb.js";

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

describe("decodeRequest: enum values this server does not know", () => {
  const json = (schema: DescMessage, text: string) => decodeRequest(schema, new TextEncoder().encode(text), "json");
  const binary = (schema: DescMessage, init: object) => decodeRequest(schema, toBinary(schema, create(schema, init as never)), "binary");
  const violation = (d: ReturnType<typeof decodeRequest>) => [d.refusal?.reason, d.refusal?.violations[0]?.field];

  it("an unknown number is UNKNOWN_FIELD naming the field, in binary and JSON (proto names in binary, JSON names in JSON)", () => {
    expect(violation(binary(ListAuditEventsRequestSchema, { outcome: 7 }))).to.deep.equal(["UNKNOWN_FIELD", "outcome"]);
    expect(violation(json(ListAuditEventsRequestSchema, '{"outcome": 7}'))).to.deep.equal(["UNKNOWN_FIELD", "outcome"]);
    expect(binary(ListAuditEventsRequestSchema, { outcome: 7 }).refusal?.violations[0]?.description).to.equal("unknown spike.nexus.v1.AuditOutcome value 7");
  });

  it("in a repeated enum of a nested message, and in a oneof", () => {
    expect(violation(binary(CreatePolicyRequestSchema, { policy: { name: "p", permissions: [1, 42] } }))).to.deep.equal(["UNKNOWN_FIELD", "policy.permissions[1]"]);
    expect(violation(json(CreatePolicyRequestSchema, '{"policy": {"name": "p", "permissions": [1, 42]}}'))).to.deep.equal(["UNKNOWN_FIELD", "policy.permissions[1]"]);
    expect(violation(binary(ValueSchema, { kind: { case: "nullValue", value: 5 } }))).to.deep.equal(["UNKNOWN_FIELD", "null_value"]);
  });

  it("an unknown name in JSON is UNKNOWN_FIELD naming the field, not the request", () => {
    expect(violation(json(ListAuditEventsRequestSchema, '{"outcome": "AUDIT_OUTCOME_TIMEOUT"}'))).to.deep.equal(["UNKNOWN_FIELD", "outcome"]);
    expect(violation(json(CreatePolicyRequestSchema, '{"policy": {"permissions": ["PERMISSION_READ", "PERMISSION_FLY"]}}'))).to.deep.equal(["UNKNOWN_FIELD", "policy.permissions[1]"]);
  });

  it("known values pass, UNSPECIFIED (0) included: a service decides whether it needs one", () => {
    for (const outcome of [0, 1, 3]) {
      expect(binary(ListAuditEventsRequestSchema, { outcome }).refusal, `binary ${outcome}`).to.equal(undefined);
      expect(json(ListAuditEventsRequestSchema, `{"outcome": ${outcome}}`).refusal, `json ${outcome}`).to.equal(undefined);
    }
    expect(json(CreatePolicyRequestSchema, '{"policy": {"permissions": ["PERMISSION_READ", 2]}}').refusal).to.equal(undefined);
  });
});
