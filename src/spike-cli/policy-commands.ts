// `spike policy …`: PolicyService. Every verb needs the superuser's session
// (spike operator login) or --token-file. `apply` makes the server's policies
// match a YAML or JSON file, deleting the others only with --prune.

import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Command } from "commander";
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import {
  CreatePolicyResponseSchema,
  DeletePolicyResponseSchema,
  GetPolicyResponseSchema,
  ListPoliciesResponseSchema,
  Permission,
  PolicyService,
  UpdatePolicyResponseSchema,
  type Policy,
} from "../../gen/spike/nexus/v1/policy_pb.js";
import { parseCount } from "./argument-values.js";
import { CliError } from "./cli-error.js";
import { example, withConnection } from "./command-context.js";
import type { Connection } from "./connection.js";
import { relativeTime, type Output } from "./output.js";

const PERMISSIONS: Record<string, Permission> = { read: Permission.READ, write: Permission.WRITE, list: Permission.LIST, super: Permission.SUPER };

/** "read,list" -> [READ, LIST]. */
export function parsePermissions(raw: string | readonly string[], where = "--permissions"): Permission[] {
  const names = typeof raw === "string" ? raw.split(",") : raw;
  return names.map((n) => {
    const p = PERMISSIONS[String(n).trim().toLowerCase()];
    if (p === undefined) throw CliError.usage(`${where}: ${String(n)} is not a permission: say read, write, list or super`);
    return p;
  });
}

const permissionNames = (ps: readonly Permission[]) => ps.map((p) => Permission[p].toLowerCase()).join(",");

interface PolicyFlags {
  spiffeIdPattern?: string;
  pathPattern?: string;
  permissions?: string;
}

export function policyCommands(): Command {
  const policy = example(new Command("policy").description("manage access policies (PolicyService; needs spike operator login)"), "spike policy list");

  example(
    policy
      .command("create")
      .description("create a policy granting workloads whose SPIFFE ID matches permissions on matching paths (RE2, whole match)")
      .argument("<name>", "policy name")
      .requiredOption("--spiffe-id-pattern <re2>", "RE2 pattern for the caller's whole SPIFFE ID")
      .requiredOption("--path-pattern <re2>", "RE2 pattern for the whole secret path")
      .requiredOption("--permissions <list>", "read, write, list, super (comma-separated)")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection<PolicyFlags>(cmd, async ({ opts, out, conn }) => {
          const policy = { name, spiffeIdPattern: opts.spiffeIdPattern!, pathPattern: opts.pathPattern!, permissions: parsePermissions(opts.permissions!) };
          const res = await conn.call(PolicyService.method.createPolicy, { policy }, { admin: true });
          if (out.format === "json") out.message(CreatePolicyResponseSchema, res);
          else out.note(`created policy ${res.policy!.name}`);
        }),
      ),
    "spike policy create billing-read --spiffe-id-pattern '^spiffe://spike\\.ist/workload/billing$' --path-pattern '^apps/billing/.*$' --permissions read,list",
  );

  example(
    policy
      .command("get")
      .description("show a policy")
      .argument("<name>", "policy name")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(PolicyService.method.getPolicy, { name }, { admin: true });
          if (out.format === "json") out.message(GetPolicyResponseSchema, res);
          else printPolicies(out, [res.policy!]);
        }),
      ),
    "spike policy get billing-read",
  );

  example(
    policy
      .command("update")
      .description("change the given fields of a policy")
      .argument("<name>", "policy name")
      .option("--spiffe-id-pattern <re2>", "new RE2 pattern for the caller's SPIFFE ID")
      .option("--path-pattern <re2>", "new RE2 pattern for the secret path")
      .option("--permissions <list>", "new permissions: read, write, list, super")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection<PolicyFlags>(cmd, async ({ opts, out, conn }) => {
          const paths: string[] = [];
          if (opts.spiffeIdPattern !== undefined) paths.push("spiffe_id_pattern");
          if (opts.pathPattern !== undefined) paths.push("path_pattern");
          if (opts.permissions !== undefined) paths.push("permissions");
          if (paths.length === 0) throw CliError.usage("policy update: say what to change (--spiffe-id-pattern, --path-pattern, --permissions)");
          const policy = {
            name,
            spiffeIdPattern: opts.spiffeIdPattern ?? "",
            pathPattern: opts.pathPattern ?? "",
            permissions: opts.permissions === undefined ? [] : parsePermissions(opts.permissions),
          };
          const res = await conn.call(PolicyService.method.updatePolicy, { name, policy, updateMask: create(FieldMaskSchema, { paths }) }, { admin: true });
          if (out.format === "json") out.message(UpdatePolicyResponseSchema, res);
          else out.note(`updated policy ${res.policy!.name}`);
        }),
      ),
    "spike policy update billing-read --permissions read",
  );

  example(
    policy
      .command("delete")
      .description("delete a policy")
      .argument("<name>", "policy name")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(PolicyService.method.deletePolicy, { name }, { admin: true });
          if (out.format === "json") out.message(DeletePolicyResponseSchema, res);
          else out.note(`deleted policy ${name}`);
        }),
      ),
    "spike policy delete billing-read",
  );

  example(
    policy
      .command("list")
      .description("list policies (every page), optionally only those with exactly these patterns")
      .option("--spiffe-id-pattern <re2>", "only policies with this SPIFFE ID pattern")
      .option("--path-pattern <re2>", "only policies with this path pattern")
      .option("--page-size <n>", "policies per request (1-1000); every page is fetched either way", "1000")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<PolicyFlags & { pageSize: string }>(cmd, async ({ opts, out, conn }) => {
          const policies = (await listAll(conn, parseCount(opts.pageSize, "--page-size"))).filter(
            (p) =>
              (opts.spiffeIdPattern === undefined || p.spiffeIdPattern === opts.spiffeIdPattern) &&
              (opts.pathPattern === undefined || p.pathPattern === opts.pathPattern),
          );
          if (out.format === "json") out.message(ListPoliciesResponseSchema, { $typeName: "spike.nexus.v1.ListPoliciesResponse", policies, nextPageToken: "" });
          else printPolicies(out, policies);
        }),
      ),
    "spike policy list --path-pattern '^apps/billing/.*$'",
  );

  example(
    policy
      .command("apply")
      .description("create or update the policies in a YAML or JSON file; with --prune, delete the policies the file does not name")
      .requiredOption("-f, --file <file>", "YAML or JSON: a list of policies, or {policies: [...]}, each with name, spiffeIdPattern, pathPattern, permissions")
      .option("--prune", "delete policies missing from the file")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<{ file: string; prune?: boolean }>(cmd, async ({ opts, out, conn }) => {
          const wanted = await readPolicyFile(opts.file);
          const result = await applyPolicies(conn, wanted, opts.prune === true);
          if (out.format === "json") out.json(result);
          else {
            for (const [what, names] of Object.entries(result)) for (const name of names as string[]) out.note(`${what} ${name}`);
          }
        }),
      ),
    "spike policy apply -f policies.yaml --prune",
  );
  return policy;
}

async function listAll(conn: Connection, pageSize = 1000): Promise<Policy[]> {
  const policies: Policy[] = [];
  let pageToken = "";
  do {
    const page = await conn.call(PolicyService.method.listPolicies, { pageSize, pageToken }, { admin: true });
    policies.push(...page.policies);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return policies;
}

function printPolicies(out: Output, policies: readonly Policy[]): void {
  out.table(
    ["NAME", "SPIFFE ID PATTERN", "PATH PATTERN", "PERMISSIONS", "UPDATED"],
    policies.map((p) => [p.name, p.spiffeIdPattern, p.pathPattern, permissionNames(p.permissions), relativeTime(p.updatedAt ?? p.createdAt)]),
  );
}

export interface PolicySpec {
  readonly name: string;
  readonly spiffeIdPattern: string;
  readonly pathPattern: string;
  readonly permissions: Permission[];
}

/** Reads and checks a policy file; every mistake names the entry and field. */
export async function readPolicyFile(file: string): Promise<PolicySpec[]> {
  let doc: unknown;
  try {
    doc = parseYaml(await readFile(file, "utf8")); // YAML is a superset of JSON
  } catch (err) {
    throw CliError.usage(`-f ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message.split("\n")[0]}`);
  }
  const list = Array.isArray(doc) ? doc : (doc as { policies?: unknown } | null)?.policies;
  if (!Array.isArray(list)) throw CliError.usage(`-f ${file}: expected a list of policies, or an object with a "policies" list`);
  const seen = new Set<string>();
  return list.map((entry: unknown, i) => {
    const e = (entry ?? {}) as Record<string, unknown>;
    const field = (camel: string, snake: string): string => {
      const v = e[camel] ?? e[snake];
      if (typeof v !== "string" || v === "") throw CliError.usage(`-f ${file}: policy ${i + 1}: ${camel} is missing`);
      return v;
    };
    const name = field("name", "name");
    if (seen.has(name.toLowerCase())) throw CliError.usage(`-f ${file}: policy ${name} appears twice`);
    seen.add(name.toLowerCase());
    const perms = e.permissions;
    if (!(typeof perms === "string" || (Array.isArray(perms) && perms.length > 0))) throw CliError.usage(`-f ${file}: policy ${name}: permissions is missing`);
    return {
      name,
      spiffeIdPattern: field("spiffeIdPattern", "spiffe_id_pattern"),
      pathPattern: field("pathPattern", "path_pattern"),
      permissions: parsePermissions(perms as string | string[], `-f ${file}: policy ${name}: permissions`),
    };
  });
}

export interface ApplyResult {
  created: string[];
  updated: string[];
  unchanged: string[];
  deleted: string[];
}

async function applyPolicies(conn: Connection, wanted: readonly PolicySpec[], prune: boolean): Promise<ApplyResult> {
  const existing = new Map((await listAll(conn)).map((p) => [p.name.toLowerCase(), p]));
  const result: ApplyResult = { created: [], updated: [], unchanged: [], deleted: [] };
  for (const spec of wanted) {
    const have = existing.get(spec.name.toLowerCase());
    if (have === undefined) {
      await conn.call(PolicyService.method.createPolicy, { policy: spec }, { admin: true });
      result.created.push(spec.name);
      continue;
    }
    const paths: string[] = [];
    if (have.spiffeIdPattern !== spec.spiffeIdPattern) paths.push("spiffe_id_pattern");
    if (have.pathPattern !== spec.pathPattern) paths.push("path_pattern");
    if (permissionNames([...have.permissions].sort()) !== permissionNames([...spec.permissions].sort())) paths.push("permissions");
    if (paths.length === 0) {
      result.unchanged.push(have.name);
      continue;
    }
    await conn.call(PolicyService.method.updatePolicy, { name: have.name, policy: spec, updateMask: create(FieldMaskSchema, { paths }) }, { admin: true });
    result.updated.push(have.name);
  }
  if (prune) {
    const keep = new Set(wanted.map((s) => s.name.toLowerCase()));
    for (const [key, policy] of existing) {
      if (keep.has(key)) continue;
      await conn.call(PolicyService.method.deletePolicy, { name: policy.name }, { admin: true });
      result.deleted.push(policy.name);
    }
  }
  return result;
}

