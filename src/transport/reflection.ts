// gRPC server reflection (v1 and v1alpha), so grpcurl and `buf curl` work
// without proto files. @grpc/reflection reads serialized FileDescriptorProtos;
// protobuf-es embeds them in the generated code (including our copy of the
// health proto).

import { toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { ReflectionService } from "@grpc/reflection";

export function createReflectionService(files: readonly DescFile[]): ReflectionService {
  const seen = new Set<string>();
  const descriptors: Buffer[] = [];
  const add = (file: DescFile): void => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    file.dependencies.forEach(add);
    descriptors.push(Buffer.from(toBinary(FileDescriptorProtoSchema, file.proto)));
  };
  files.forEach(add);
  // @grpc/reflection only reads `fileDescriptorProtos` from each entry.
  const pkg = { nexus: { fileDescriptorProtos: descriptors } };
  return new ReflectionService(pkg as unknown as ConstructorParameters<typeof ReflectionService>[0]);
}
