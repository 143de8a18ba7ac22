// gRPC server reflection (grpc.reflection.v1), so grpcurl and `buf curl` work
// without proto files on both mTLS ports. On the gRPC port @grpc/reflection
// serves v1 and v1alpha from serialized FileDescriptorProtos; on the Connect
// port (gRPC over HTTP/2) a small v1 implementation answers from the same
// protobuf-es descriptors. Both expose the schema only, which is public.

import { create, createRegistry, toBinary, type DescFile, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { ReflectionService } from "@grpc/reflection";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { ServerReflection, ServerReflectionResponseSchema, type ServerReflectionRequest, type ServerReflectionResponse } from "../../gen/grpc/reflection/v1/reflection_pb.js";

/** Every file `files` needs, dependencies first, each once. */
function withDependencies(files: readonly DescFile[]): DescFile[] {
  const seen = new Set<string>();
  const ordered: DescFile[] = [];
  const add = (file: DescFile): void => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    file.dependencies.forEach(add);
    ordered.push(file);
  };
  files.forEach(add);
  return ordered;
}

const encode = (file: DescFile) => toBinary(FileDescriptorProtoSchema, file.proto);

export function createReflectionService(files: readonly DescFile[]): ReflectionService {
  const descriptors = withDependencies(files).map((f) => Buffer.from(encode(f)));
  // @grpc/reflection only reads `fileDescriptorProtos` from each entry.
  const pkg = { nexus: { fileDescriptorProtos: descriptors } };
  return new ReflectionService(pkg as unknown as ConstructorParameters<typeof ReflectionService>[0]);
}

type Answer = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/** grpc.reflection.v1 for connect-node: answers each request of the stream in turn. */
export function connectReflection(files: readonly DescFile[]): { desc: typeof ServerReflection; impl: ServiceImpl<typeof ServerReflection> } {
  const all = withDependencies(files);
  const byName = new Map(all.map((f) => [f.name, f]));
  const encoded = new Map(all.map((f) => [f.name, encode(f)]));
  const registry = createRegistry(...all);
  const services = files.flatMap((f) => f.services.map((s) => ({ name: s.typeName })));

  // A file and everything it imports, as clients expect to receive them.
  const fileResponse = (file: DescFile): Answer => ({
    case: "fileDescriptorResponse",
    value: { fileDescriptorProto: withDependencies([file]).map((f) => encoded.get(f.name)!) },
  });
  const notFound = (what: string): Answer => ({
    case: "errorResponse",
    value: { errorCode: GrpcStatus.NOT_FOUND, errorMessage: `${what} not found` },
  });
  const fileOfSymbol = (symbol: string): DescFile | undefined => {
    const desc = registry.get(symbol) ?? registry.get(symbol.slice(0, Math.max(0, symbol.lastIndexOf(".")))); // a method: its service
    return desc?.kind === "service" || desc?.kind === "message" || desc?.kind === "enum" || desc?.kind === "extension" ? desc.file : undefined;
  };

  const answer = (req: ServerReflectionRequest): ServerReflectionResponse => {
    const r = req.messageRequest;
    let messageResponse: Answer;
    switch (r.case) {
      case "listServices":
        messageResponse = { case: "listServicesResponse", value: { service: services } };
        break;
      case "fileByFilename": {
        const file = byName.get(r.value);
        messageResponse = file ? fileResponse(file) : notFound(`file ${JSON.stringify(r.value.slice(0, 200))}`);
        break;
      }
      case "fileContainingSymbol": {
        const file = fileOfSymbol(r.value);
        messageResponse = file ? fileResponse(file) : notFound(`symbol ${JSON.stringify(r.value.slice(0, 200))}`);
        break;
      }
      case "fileContainingExtension":
        messageResponse = notFound("extension");
        break;
      case "allExtensionNumbersOfType":
        // No extensions are declared: an empty list for a known message type.
        messageResponse = registry.getMessage(r.value)
          ? { case: "allExtensionNumbersResponse", value: { baseTypeName: r.value, extensionNumber: [] } }
          : notFound(`type ${JSON.stringify(r.value.slice(0, 200))}`);
        break;
      default:
        messageResponse = { case: "errorResponse", value: { errorCode: GrpcStatus.UNIMPLEMENTED, errorMessage: "unsupported reflection request" } };
    }
    return create(ServerReflectionResponseSchema, { validHost: req.host, originalRequest: req, messageResponse });
  };

  return {
    desc: ServerReflection,
    impl: {
      async *serverReflectionInfo(requests) {
        for await (const req of requests) yield answer(req);
      },
    },
  };
}
