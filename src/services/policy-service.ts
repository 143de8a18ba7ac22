// PolicyService: create, read, list, update and delete access policies. A
// change is validated (patterns compile as RE2), MAC'd under the integrity key,
// and written with its audit event (before and after) in one transaction; the
// table's trigger tells every replica to reload.

import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Permission, PolicyService, type PolicySchema } from "../../gen/spike/nexus/v1/policy_pb.js";
import { compilePolicy, GRANTS, POLICY_MAC_LABEL, policyMacInput, type Grant, type PolicyRecord } from "../authorization/policy.js";
import type { GrantEpochs } from "../keys/grant-epochs.js";
import { POLICY_SET, type PolicySync } from "../authorization/policy-sync.js";
import { NexusError } from "../errors/nexus-error.js";
import { mac } from "../keys/integrity.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { PolicyChange, PolicyStore, StoredPolicy } from "../store/policy-store.js";
import type { AuditRow } from "../audit/audit-event.js";
import { registerService, type CallContext, type ServiceRegistration } from "../calls/call-context.js";
import { pageSize } from "./secret-rules.js";
import { maskedFields } from "./update-mask.js";

const NAME = /^[A-Za-z0-9._-]{1,128}$/;
const PERMISSION_GRANT: Partial<Record<Permission, Grant>> = {
  [Permission.READ]: "read",
  [Permission.WRITE]: "write",
  [Permission.LIST]: "list",
  [Permission.SUPER]: "super",
};
const GRANT_PERMISSION: Record<Grant, Permission> = { read: Permission.READ, write: Permission.WRITE, list: Permission.LIST, super: Permission.SUPER };
const UPDATABLE = ["spiffe_id_pattern", "path_pattern", "permissions"];

export interface PolicyServiceDeps {
  readonly store: PolicyStore;
  readonly keys: KeyManager;
  readonly sync: PolicySync;
  readonly epochs: GrantEpochs;
}

export function policyService({ store, keys, sync, epochs }: PolicyServiceDeps): ServiceRegistration {
  const sign = (record: PolicyRecord): StoredPolicy => ({ ...record, mac: mac(keys.integrityKey(), POLICY_MAC_LABEL, policyMacInput(record)) });
  const find = async (name: string) => {
    const p = await store.byName(validateName(name));
    if (p === undefined) throw new NexusError("not_found", `no policy named "${name}"`, { reason: "POLICY_NOT_FOUND" });
    return p;
  };
  // Every change raises the policy set's epoch in its own transaction.
  const write = async (change: PolicyChange | (() => PolicyChange), audit: AuditRow): Promise<boolean> => {
    // A function builds the change again (MAC'd under the new key) if a rotation commits meanwhile.
    const epoch = await epochs.acrossRotation(() =>
      store.write(typeof change === "function" ? change() : change, audit, (stored, before, after) => epochs.next(POLICY_SET, stored, before, after)),
    );
    if (epoch === false) return false;
    epochs.advance("policies", epoch);
    return true;
  };

  return registerService(PolicyService, {
    async createPolicy(req, ctx) {
      const p = req.policy;
      if (p === undefined) throw NexusError.invalidArgument("policy", "is required", "MISSING_POLICY");
      const now = new Date();
      const record: PolicyRecord = {
        id: randomUUID(),
        name: validateName(p.name),
        spiffeIdPattern: p.spiffeIdPattern,
        pathPattern: p.pathPattern,
        permissions: grants(p.permissions),
        createdAt: now,
        createdBy: ctx.caller.toString(),
        updatedAt: now,
      };
      compilePolicy(record);
      await write(() => ({ kind: "insert", policy: sign(record) }), recorded(ctx, ctx.audit.prepare({ after: describe(record) }), { policy: toProto(record) }));
      ctx.audit.markWritten();
      await sync.reload();
      return { policy: toProto(record) };
    },

    async getPolicy(req) {
      return { policy: toProto(await find(req.name)) };
    },

    async listPolicies(req) {
      const size = pageSize(req.pageSize);
      const after = req.pageToken === "" ? "" : decodeToken(req.pageToken);
      const rows = await store.page(after, size + 1);
      const page = rows.slice(0, size);
      const next = rows.length > size ? Buffer.from(page[page.length - 1].name, "utf8").toString("base64url") : "";
      return { policies: page.map(toProto), nextPageToken: next };
    },

    async updatePolicy(req, ctx) {
      const mask = maskedFields(req.updateMask, UPDATABLE, ctx.wireFormat);
      const before = await find(req.name);
      const p = req.policy;
      const record: PolicyRecord = {
        ...before,
        spiffeIdPattern: mask.has("spiffe_id_pattern") ? (p?.spiffeIdPattern ?? "") : before.spiffeIdPattern,
        pathPattern: mask.has("path_pattern") ? (p?.pathPattern ?? "") : before.pathPattern,
        permissions: mask.has("permissions") ? grants(p?.permissions ?? []) : before.permissions,
        updatedAt: new Date(Math.max(Date.now(), before.updatedAt.getTime() + 1)),
      };
      compilePolicy(record);
      const ok = await write(() => ({ kind: "update", policy: sign(record), expectedUpdatedAt: before.updatedAt }), recorded(ctx, ctx.audit.prepare({ before: describe(before), after: describe(record) }), { policy: toProto(record) }));
      if (!ok) throw new NexusError("aborted", `policy "${req.name}" changed concurrently; retry`, { reason: "CONCURRENT_UPDATE" });
      ctx.audit.markWritten();
      await sync.reload();
      return { policy: toProto(record) };
    },

    async deletePolicy(req, ctx) {
      const before = await find(req.name);
      if (!(await write({ kind: "delete", id: before.id }, recorded(ctx, ctx.audit.prepare({ before: describe(before) }), {})))) {
        throw new NexusError("not_found", `no policy named "${req.name}"`, { reason: "POLICY_NOT_FOUND" });
      }
      ctx.audit.markWritten();
      await sync.reload();
      return {};
    },
  });
}

/** The change's audit row with the call's idempotency record, if it has a key (written in the change's transaction). */
function recorded(ctx: CallContext, audit: AuditRow, response: object): AuditRow {
  return ctx.idempotency === undefined ? audit : ctx.idempotency.attach(audit, response);
}

function validateName(name: string): string {
  if (!NAME.test(name)) throw NexusError.invalidArgument("name", "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' and '-'", "INVALID_POLICY_NAME");
  return name;
}

function grants(permissions: readonly Permission[]): Grant[] {
  if (permissions.length === 0) throw NexusError.invalidArgument("permissions", "name at least one permission", "NO_PERMISSIONS");
  const out = new Set<Grant>();
  for (const p of permissions) {
    const g = PERMISSION_GRANT[p];
    if (g === undefined) throw NexusError.invalidArgument("permissions", `${p} is not a permission; use READ, WRITE, LIST or SUPER`, "INVALID_PERMISSION");
    out.add(g);
  }
  return GRANTS.filter((g) => out.has(g));
}

function decodeToken(token: string): string {
  const name = Buffer.from(token, "base64url").toString("utf8");
  if (!NAME.test(name)) throw NexusError.invalidArgument("page_token", "is not a token this server issued", "INVALID_PAGE_TOKEN");
  return name;
}

function describe(p: PolicyRecord): Record<string, unknown> {
  return { name: p.name, spiffeIdPattern: p.spiffeIdPattern, pathPattern: p.pathPattern, permissions: [...p.permissions] };
}

function toProto(p: PolicyRecord): MessageInitShape<typeof PolicySchema> {
  return {
    name: p.name,
    spiffeIdPattern: p.spiffeIdPattern,
    pathPattern: p.pathPattern,
    permissions: p.permissions.map((g) => GRANT_PERMISSION[g]),
    createdAt: timestampFromDate(p.createdAt),
    createdBy: p.createdBy,
    updatedAt: timestampFromDate(p.updatedAt),
  };
}
