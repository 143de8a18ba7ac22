// An access policy as the policies table stores it. Compiling its patterns and
// deciding with it belong to src/authorization/policy.ts; the type lives here so
// that the store layer imports nothing above it (ADR 0013).

export type Grant = "read" | "write" | "list" | "super";

export interface PolicyRecord {
  readonly id: string;
  readonly name: string;
  readonly spiffeIdPattern: string;
  readonly pathPattern: string;
  readonly permissions: readonly Grant[];
  readonly createdAt: Date;
  readonly createdBy: string;
  readonly updatedAt: Date;
}
