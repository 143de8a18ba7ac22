// `spike secret …`: SecretService for people and scripts. Values come from
// key=@file or key=- (stdin) as well as key=value, which lands in shell history.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, FieldMaskSchema, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Command, Option } from "commander";
import {
  ByteEncoding,
  CharacterClass,
  DeleteSecretResponseSchema,
  DestroySecretResponseSchema,
  GetSecretMetadataResponseSchema,
  GetSecretResponseSchema,
  ListSecretsResponseSchema,
  PurgeSecretResponseSchema,
  PromoteSecretVersionResponseSchema,
  PutSecretResponseSchema,
  RotateSecretResponseSchema,
  SecretLabel,
  WatchEventType,
  WatchSecretsResponseSchema,
  SecretService,
  UndeleteSecretResponseSchema,
  UpdateSecretMetadataResponseSchema,
  type RandomBytesGeneratorSchema,
  type RandomPasswordGeneratorSchema,
  type RotationPolicySchema,
  type SecretMetadata,
} from "../../gen/spike/nexus/v1/secret_pb.js";
import { collect, parseCount, parseDuration, parseEdits, parseGenerator, parseLabel, parseTime, parseVersions, readPairs, type GeneratorSpec } from "./argument-values.js";
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
      .option("--stage <label>", "pending: stage the new version PENDING and leave CURRENT alone (current: the default)")
      .option("--expires-at <time>", "the secret expires at this RFC 3339 time, or after a duration (30d)")
      .action(async (path: string, pairs: string[], _o: unknown, cmd: Command) =>
        withConnection<{ cas?: string; stage?: string; expiresAt?: string }>(cmd, async ({ opts, out, conn }) => {
          const cas = opts.cas === undefined ? undefined : parseCount(opts.cas, "--cas");
          const stage = opts.stage === undefined ? SecretLabel.UNSPECIFIED : LABELS[parseLabel(opts.stage, "--stage", ["current", "pending"])];
          const expiresAt = opts.expiresAt === undefined ? undefined : timestampFromDate(parseTime(opts.expiresAt, "--expires-at"));
          const data = await readPairs(pairs, "secret put");
          const res = await conn.call(SecretService.method.putSecret, { path, data, cas, stage, expiresAt }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(PutSecretResponseSchema, res);
          else out.note(`wrote ${path} version ${res.version}${stage === SecretLabel.PENDING ? " (PENDING: promote it with spike secret promote)" : ""}`);
        }),
      ),
    "spike secret put apps/billing/db username=billing password=-   # the password from stdin",
    "spike secret put apps/billing/tls cert=@tls.pem key=@tls-key.pem --cas 0",
    "spike secret put apps/billing/db username=billing password=- --stage pending",
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
      .option("--label <label>", "read the version with this label: current, pending or previous")
      .option("--field <key>", "print only this key's value and a newline")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection<{ version?: string; label?: string; field?: string }>(cmd, async ({ opts, out, conn }) => {
          if (opts.version !== undefined && opts.label !== undefined) throw CliError.usage("secret get: --version and --label cannot go together");
          const version = opts.version === undefined ? 0 : parseCount(opts.version, "--version");
          const label = opts.label === undefined ? SecretLabel.UNSPECIFIED : LABELS[parseLabel(opts.label, "--label")];
          const res = await conn.call(SecretService.method.getSecret, { path, version, label }, { target: { permission: "READ", path } });
          if (opts.field !== undefined) {
            if (!(opts.field in res.data)) throw new CliError(`not found: ${path} version ${res.version} has no key ${opts.field}`, EXIT.notFound);
            process.stdout.write(res.data[opts.field] + "\n");
          } else if (out.format === "json") {
            out.message(GetSecretResponseSchema, res);
          } else {
            out.note(`${res.path} version ${res.version}${res.labels.length ? ` (${res.labels.map(labelName).join(", ")})` : ""}, written ${relativeTime(res.createdAt)}`);
            out.table(["KEY", "VALUE"], Object.entries(res.data).sort(([a], [b]) => (a < b ? -1 : 1)));
          }
        }),
      ),
    "spike secret get apps/billing/db",
    "spike secret get apps/billing/db --label pending",
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
            else out.note(res.versions.length ? `${name === "destroy" ? "destroyed" : `${name}d`} ${path} version${res.versions.length > 1 ? "s" : ""} ${res.versions.join(", ")}` : `${path}: no version changed`);
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

  example(
    secret
      .command("promote")
      .description("label a version CURRENT (the old CURRENT becomes PREVIOUS); promoting an older version is a rollback")
      .argument("<path>", "secret path")
      .argument("<version>", "the version to make CURRENT")
      .option("--expect-current <n>", "promote only if CURRENT is this version (0: only if none is)")
      .action(async (path: string, versionArg: string, _o: unknown, cmd: Command) =>
        withConnection<{ expectCurrent?: string }>(cmd, async ({ opts, out, conn }) => {
          const version = parseCount(versionArg, "<version>");
          const expectedCurrentVersion = opts.expectCurrent === undefined ? undefined : parseCount(opts.expectCurrent, "--expect-current");
          const res = await conn.call(SecretService.method.promoteSecretVersion, { path, version, expectedCurrentVersion }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(PromoteSecretVersionResponseSchema, res);
          else out.note(`${path}: version ${res.currentVersion} is CURRENT${res.previousVersion ? `, ${res.previousVersion} PREVIOUS` : ""}`);
        }),
      ),
    "spike secret promote apps/billing/db 7",
    "spike secret promote apps/billing/db 7 --expect-current 6",
  );

  example(
    secret
      .command("rotate")
      .description("rotate a secret now by its rotation policy (spike secret metadata set --rotation-period …)")
      .argument("<path>", "secret path")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(SecretService.method.rotateSecret, { path }, { target: { permission: "WRITE", path } });
          if (out.format === "json") out.message(RotateSecretResponseSchema, res);
          else out.note(`rotated ${path}: version ${res.version}${res.labels.length ? ` (${res.labels.map(labelName).join(", ")})` : ""}`);
        }),
      ),
    "spike secret rotate apps/billing/db",
  );

  example(
    secret
      .command("watch")
      .description("follow changes under a prefix, one line per event, until interrupted (never values: read the secret)")
      .argument("[prefix]", "raw string prefix; none follows every path you may read and list", "")
      .option("--cursor <cursor>", "resume after this event (each event prints its cursor); none starts now")
      .action(async (prefix: string, _o: unknown, cmd: Command) =>
        withConnection<{ cursor?: string }>(cmd, async ({ opts, out, conn }) => {
          for await (const event of conn.stream(SecretService.method.watchSecrets, { prefix, cursor: opts.cursor ?? "" }, { target: { permission: "LIST", path: prefix } })) {
            if (out.format === "json") out.messageLine(WatchSecretsResponseSchema, event);
            else if (event.type !== WatchEventType.HEARTBEAT) {
              const type = (WatchEventType[event.type] ?? String(event.type)).toLowerCase();
              const versions = event.versions.length ? ` versions ${event.versions.join(",")}` : "";
              const labels = event.labels.length ? ` (${event.labels.map(labelName).join(", ")})` : "";
              out.line(`${event.time ? timestampDate(event.time).toISOString() : "-"} ${type} ${event.path}${versions}${labels} cursor=${event.cursor}`);
            }
          }
        }),
      ),
    "spike secret watch apps/billing/",
    "spike secret watch apps/billing/ -o json --cursor \"$LAST_CURSOR\"",
  );

  secret.addCommand(metadataCommands());
  return secret;
}

const LABELS: Record<string, SecretLabel> = { current: SecretLabel.CURRENT, pending: SecretLabel.PENDING, previous: SecretLabel.PREVIOUS };

function labelName(label: SecretLabel): string {
  return (SecretLabel[label] ?? String(label)).toLowerCase();
}

const CLASSES: Record<string, CharacterClass> = {
  lowercase: CharacterClass.LOWERCASE,
  uppercase: CharacterClass.UPPERCASE,
  digits: CharacterClass.DIGITS,
  symbols: CharacterClass.SYMBOLS,
};
const ENCODINGS: Record<string, ByteEncoding> = { hex: ByteEncoding.HEX, base64: ByteEncoding.BASE64, base64url: ByteEncoding.BASE64URL };

/** A rotation policy from --rotation-period, --generator, --data-key and --promote. */
function rotationPolicy(period: number, generator: GeneratorSpec, dataKey: string, promote: boolean): MessageInitShape<typeof RotationPolicySchema> {
  const base = { period: durationFromMs(period), promote, dataKey: generator.kind === "external" ? "" : dataKey };
  switch (generator.kind) {
    case "password": {
      const value: MessageInitShape<typeof RandomPasswordGeneratorSchema> = { length: generator.length, characterClasses: generator.classes.map((c) => CLASSES[c]) };
      return { ...base, generator: { case: "randomPassword", value } };
    }
    case "bytes": {
      const value: MessageInitShape<typeof RandomBytesGeneratorSchema> = { length: generator.length, encoding: ENCODINGS[generator.encoding] };
      return { ...base, generator: { case: "randomBytes", value } };
    }
    case "external":
      return { ...base, generator: { case: "external", value: {} } };
  }
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
      .option("--rotation-period <duration>", "rotate every period (1m to 10 years, e.g. 30d), with --generator; off: no rotation")
      .option("--generator <spec>", "password:LENGTH[:lower,upper,digits,symbols], bytes:LENGTH[:hex|base64|base64url] or external")
      .option("--data-key <key>", "the data key the generated value replaces (other keys are copied from CURRENT)", "password")
      .option("--promote", "make each rotated value CURRENT at once (default: staged PENDING for you to test and promote)")
      .action(async (path: string, _o: unknown, cmd: Command) =>
        withConnection<{ maxVersions?: string; custom?: string[]; expiresAt?: string; rotationPeriod?: string; generator?: string; dataKey: string; promote?: boolean }>(cmd, async ({ opts, out, conn }) => {
          const paths: string[] = [];
          const request: {
            path: string;
            maxVersions?: number;
            customMetadata?: Record<string, string>;
            expiresAt?: ReturnType<typeof timestampFromDate>;
            rotation?: MessageInitShape<typeof RotationPolicySchema>;
          } = { path };
          if (opts.rotationPeriod === "off") {
            if (opts.generator !== undefined || opts.promote) throw CliError.usage("secret metadata set: --rotation-period off turns rotation off; drop --generator and --promote");
            paths.push("rotation");
          } else if (opts.rotationPeriod !== undefined || opts.generator !== undefined || opts.promote) {
            if (opts.rotationPeriod === undefined || opts.generator === undefined) {
              throw CliError.usage("secret metadata set: a rotation policy needs both --rotation-period and --generator");
            }
            request.rotation = rotationPolicy(parseDuration(opts.rotationPeriod, "--rotation-period"), parseGenerator(opts.generator, "--generator"), opts.dataKey, opts.promote === true);
            paths.push("rotation");
          }
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
          if (paths.length === 0) throw CliError.usage("secret metadata set: say what to change (--max-versions, --custom, --expires-at, --rotation-period)");
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
    "spike secret metadata set apps/billing/db --rotation-period 30d --generator password:32:lower,upper,digits",
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
      ["rotation", m.rotation ? describeRotation(m.rotation) : "off"],
      ...(m.rotation ? [["next rotation", m.nextRotationAt ? relativeTime(m.nextRotationAt) : "-"], ["rotation due", m.rotationDue ? "yes" : "no"]] : []),
      ...Object.entries(m.customMetadata).map(([k, v]) => [`custom ${k}`, v]),
    ],
  );
  out.line("");
  out.table(
    ["VERSION", "LABELS", "CREATED", "BY", "STATE"],
    m.versions.map((v) => [
      String(v.version),
      v.labels.map(labelName).join(",") || "-",
      relativeTime(v.createdAt),
      v.createdBy,
      v.destroyed ? "destroyed" : v.deletedAt ? `deleted ${relativeTime(v.deletedAt)}` : "live",
    ]),
  );
}

function describeRotation(r: NonNullable<SecretMetadata["rotation"]>): string {
  const every = r.period ? `every ${Math.round(durationMs(r.period) / 60_000)} min` : "";
  const how =
    r.generator.case === "randomPassword"
      ? `password of ${r.generator.value.length}`
      : r.generator.case === "randomBytes"
        ? `${r.generator.value.length} random bytes`
        : "external";
  return `${every}, ${how}${r.dataKey ? ` into ${r.dataKey}` : ""}, ${r.promote ? "promoted at once" : "staged PENDING"}`;
}
