// `spike secret …`: SecretService for people and scripts. Values come from
// key=@file or key=- (stdin) as well as key=value, which lands in shell history.

import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Command, Option } from "commander";
import {
  DeleteSecretResponseSchema,
  DestroySecretResponseSchema,
  GetSecretMetadataResponseSchema,
  GetSecretResponseSchema,
  ListSecretsResponseSchema,
  PurgeSecretResponseSchema,
  PutSecretResponseSchema,
  SecretService,
  UndeleteSecretResponseSchema,
  UpdateSecretMetadataResponseSchema,
  type SecretMetadata,
} from "../../gen/spike/nexus/v1/secret_pb.js";
import { collect, parseCount, parseEdits, parseTime, parseVersions, readPairs } from "./argument-values.js";
import { CliError } from "./cli-error.js";
import { example, withConnection } from "./command-context.js";
import type { Connection } from "./connection.js";
import { EXIT } from "./exit-codes.js";
import { relativeTime, type Output } from "./output.js";

export function secretCommands(): Command {
  const secret = example(new Command("secret").description("read and write secrets (SecretService)"), "spike secret get apps/billing/db");

  example(
    secret
      .command("put")
      .description("write a new version of a secret; prefer key=@file or key=- (stdin) over key=value, which lands in shell history")
      .argument("<path>", "secret path, e.g. apps/billing/db")
      .argument("<pairs...>", "key=value, key=@file or key=- (stdin)")
      .option("--cas <version>", "write only if the latest version is this one (0: only if the secret is new)")
      .option("--expires-at <time>", "the secret expires at this RFC 3339 time, or after a duration (30d)")
      .action(async (path: string, pairs: string[], _o: unknown, cmd: Command) =>
        withConnection<{ cas?: string; expiresAt?: string }>(cmd, async ({ opts, out, conn }) => {
          const cas = opts.cas === undefined ? undefined : parseCount(opts.cas, "--cas");
          const expiresAt = opts.expiresAt === undefined ? undefined : timestampFromDate(parseTime(opts.expiresAt, "--expires-at"));
          const data = await readPairs(pairs, "secret put");
          const res = await conn.call(SecretService.method.putSecret, { path, data, cas, expiresAt }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(PutSecretResponseSchema, res);
          else out.note(`wrote ${path} version ${res.version}`);
        }),
      ),
    "spike secret put apps/billing/db username=billing password=-   # the password from stdin",
    "spike secret put apps/billing/tls cert=@tls.pem key=@tls-key.pem --cas 0",
  );

  example(
    secret
      .command("patch")
      .description("write a new version from the current one with some keys changed (check-and-set on the version read)")
      .argument("<path>", "secret path")
      .argument("<pairs...>", "key=value, key=@file or key=- (stdin)")
      .action(async (path: string, pairs: string[], _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const changes = await readPairs(pairs, "secret patch");
          const current = await conn.call(SecretService.method.getSecret, { path, version: 0 }, { target: { permission: "READ", path } });
          const data = { ...current.data, ...changes };
          const res = await conn.call(SecretService.method.putSecret, { path, data, cas: current.version }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(PutSecretResponseSchema, res);
          else out.note(`wrote ${path} version ${res.version} (from version ${current.version})`);
        }),
      ),
    "spike secret patch apps/billing/db password=-",
  );

  example(
    secret
      .command("get")
      .description("read a version of a secret (default: the current one)")
      .argument("<path>", "secret path")
      .option("--version <n>", "read this version")
      .option("--field <key>", "print only this key's value and a newline")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection<{ version?: string; field?: string }>(cmd, async ({ opts, out, conn }) => {
          const version = opts.version === undefined ? 0 : parseCount(opts.version, "--version");
          const res = await conn.call(SecretService.method.getSecret, { path, version }, { target: { permission: "READ", path } });
          if (opts.field !== undefined) {
            if (!(opts.field in res.data)) throw new CliError(`not found: ${path} version ${res.version} has no key ${opts.field}`, EXIT.notFound);
            process.stdout.write(res.data[opts.field] + "\n");
          } else if (out.format === "json") {
            out.message(GetSecretResponseSchema, res);
          } else {
            out.note(`${res.path} version ${res.version}, written ${relativeTime(res.createdAt)}`);
            out.table(["KEY", "VALUE"], Object.entries(res.data).sort(([a], [b]) => (a < b ? -1 : 1)));
          }
        }),
      ),
    "spike secret get apps/billing/db",
    'PGPASSWORD="$(spike secret get apps/billing/db --field password)" psql …',
  );

  example(
    secret
      .command("list")
      .description("list secret paths that start with a prefix (every page)")
      .argument("[prefix]", "raw string prefix; none lists every path you may list", "")
      .option("--page-size <n>", "paths per request (1-1000); every page is fetched either way", "1000")
      .action(async (prefix: string, _o: unknown, cmd: Command) =>
        withConnection<{ pageSize: string }>(cmd, async ({ opts, out, conn }) => {
          const pageSize = parseCount(opts.pageSize, "--page-size");
          const paths: string[] = [];
          let pageToken = "";
          do {
            const page = await conn.call(SecretService.method.listSecrets, { prefix, pageSize, pageToken }, { target: { permission: "LIST", path: prefix } });
            paths.push(...page.paths);
            pageToken = page.nextPageToken;
          } while (pageToken !== "");
          if (out.format === "json") out.message(ListSecretsResponseSchema, { $typeName: "spike.nexus.v1.ListSecretsResponse", paths, nextPageToken: "" });
          else paths.forEach((p) => out.line(p));
        }),
      ),
    "spike secret list apps/billing/",
  );

  const versionsVerb = (name: "delete" | "undelete" | "destroy", description: string, rpc: "deleteSecret" | "undeleteSecret" | "destroySecret", fallback: string) =>
    example(
      secret
        .command(name)
        .description(description)
        .argument("<path>", "secret path")
        .option("--versions <list>", `versions to ${name}, e.g. 1,2 (default: ${fallback})`)
        .action(async (path: string, _o: unknown, cmd: Command) =>
          withConnection<{ versions?: string }>(cmd, async ({ opts, out, conn }) => {
            let versions = opts.versions === undefined ? [] : parseVersions(opts.versions);
            // Undelete and destroy need versions; the natural default of a person is "the current one".
            if (versions.length === 0 && name !== "delete") versions = [await currentOrLatest(conn, path, name === "undelete")];
            const method = SecretService.method[rpc];
            const res = await conn.call(method, { path, versions }, { target: { permission: "WRITE", path } });
            const schema = { deleteSecret: DeleteSecretResponseSchema, undeleteSecret: UndeleteSecretResponseSchema, destroySecret: DestroySecretResponseSchema }[rpc];
            if (out.format === "json") out.message(schema, res);
            else out.note(res.versions.length ? `${name}d ${path} version${res.versions.length > 1 ? "s" : ""} ${res.versions.join(", ")}` : `${path}: no version changed`);
          }),
        ),
      `spike secret ${name} apps/billing/db --versions 1,2`,
    );
  versionsVerb("delete", "soft-delete versions (undelete brings them back)", "deleteSecret", "the current version");
  versionsVerb("undelete", "restore soft-deleted versions", "undeleteSecret", "the latest version");
  versionsVerb("destroy", "erase versions' data for good", "destroySecret", "the current version");

  example(
    secret
      .command("purge")
      .description("remove a secret, all its versions and its metadata")
      .argument("<path>", "secret path")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(SecretService.method.purgeSecret, { path }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(PurgeSecretResponseSchema, res);
          else out.note(`purged ${path}`);
        }),
      ),
    "spike secret purge apps/billing/old-db",
  );

  secret.addCommand(metadataCommands());
  return secret;
}

function metadataCommands(): Command {
  const metadata = example(new Command("metadata").description("a secret's metadata and versions (never its data)"), "spike secret metadata get apps/billing/db");

  example(
    metadata
      .command("get")
      .description("show a secret's metadata and versions")
      .argument("<path>", "secret path")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(SecretService.method.getSecretMetadata, { path }, { target: { permission: "READ", path } });
          if (out.format === "json") out.message(GetSecretMetadataResponseSchema, res);
          else printMetadata(out, res.metadata!);
        }),
      ),
    "spike secret metadata get apps/billing/db",
  );

  example(
    metadata
      .command("set")
      .description("change a secret's metadata; --custom merges into the custom metadata (k= removes k)")
      .argument("<path>", "secret path")
      .option("--max-versions <n>", "keep at most this many versions (1-1000)")
      .option("--custom <k=v>", "set a custom metadata key (repeatable); k= removes it", collect)
      .addOption(new Option("--expires-at <time>", "expire the secret at this RFC 3339 time or after a duration (30d); never: no expiry"))
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection<{ maxVersions?: string; custom?: string[]; expiresAt?: string }>(cmd, async ({ opts, out, conn }) => {
          const paths: string[] = [];
          const request: { path: string; maxVersions?: number; customMetadata?: Record<string, string>; expiresAt?: ReturnType<typeof timestampFromDate> } = { path };
          if (opts.maxVersions !== undefined) {
            request.maxVersions = parseCount(opts.maxVersions, "--max-versions");
            paths.push("max_versions");
          }
          if (opts.custom !== undefined) {
            const edits = parseEdits(opts.custom, "--custom");
            // The RPC replaces the whole map; read it first so --custom merges.
            const current = await conn.call(SecretService.method.getSecretMetadata, { path }, { target: { permission: "READ", path } });
            const merged = { ...current.metadata!.customMetadata };
            for (const [k, v] of edits) {
              if (v === undefined) delete merged[k];
              else merged[k] = v;
            }
            request.customMetadata = merged;
            paths.push("custom_metadata");
          }
          if (opts.expiresAt !== undefined) {
            if (opts.expiresAt !== "never") request.expiresAt = timestampFromDate(parseTime(opts.expiresAt, "--expires-at"));
            paths.push("expires_at");
          }
          if (paths.length === 0) throw CliError.usage("secret metadata set: say what to change (--max-versions, --custom, --expires-at)");
          const res = await conn.call(
            SecretService.method.updateSecretMetadata,
            { ...request, updateMask: create(FieldMaskSchema, { paths }) },
            { target: { permission: "WRITE", path } },
          );
          if (out.format === "json") out.message(UpdateSecretMetadataResponseSchema, res);
          else out.note(`updated the metadata of ${path}`);
        }),
      ),
    "spike secret metadata set apps/billing/db --max-versions 5 --custom owner=billing --custom ticket=",
  );
  return metadata;
}

/** The version `undelete`/`destroy` act on when none is named. */
async function currentOrLatest(conn: Connection, path: string, latest: boolean): Promise<number> {
  const res = await conn.call(SecretService.method.getSecretMetadata, { path }, { target: { permission: "READ", path } });
  const m = res.metadata!;
  const version = latest ? m.latestVersion : m.currentVersion;
  if (version === 0) throw new CliError(`not found: ${path} has no ${latest ? "" : "current "}version: name one with --versions`, EXIT.notFound);
  return version;
}

function printMetadata(out: Output, m: SecretMetadata): void {
  out.table(
    ["FIELD", "VALUE"],
    [
      ["path", m.path],
      ["current version", String(m.currentVersion)],
      ["latest version", String(m.latestVersion)],
      ["oldest version", String(m.oldestVersion)],
      ["max versions", String(m.maxVersions)],
      ["created", relativeTime(m.createdAt)],
      ["updated", relativeTime(m.updatedAt)],
      ["expires", m.expiresAt ? relativeTime(m.expiresAt) : "never"],
      ...Object.entries(m.customMetadata).map(([k, v]) => [`custom ${k}`, v]),
    ],
  );
  out.line("");
  out.table(
    ["VERSION", "CREATED", "BY", "STATE"],
    m.versions.map((v) => [String(v.version), relativeTime(v.createdAt), v.createdBy, v.destroyed ? "destroyed" : v.deletedAt ? `deleted ${relativeTime(v.deletedAt)}` : "live"]),
  );
}
