// `spike operator …`: OperatorService. init/unseal/login take the admin
// password (prompted without echo, or --password-file / --password-stdin);
// login keeps the session token in the session store, which seal, tokens,
// audit and every policy command then use until it expires.

import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Command } from "commander";
import {
  AuditOutcome,
  AuditProblemKind,
  CreateAdminTokenResponseSchema,
  GetStatusResponseSchema,
  InitializeResponseSchema,
  ListAdminTokensResponseSchema,
  ListAuditEventsResponseSchema,
  LoginResponseSchema,
  LogoutResponseSchema,
  OperatorService,
  RevokeAdminTokenResponseSchema,
  SealResponseSchema,
  SealScope,
  UnsealResponseSchema,
  VerifyAuditLogResponseSchema,
  ChangeAdminPasswordResponseSchema,
  RotateEncryptionKeyResponseSchema,
  RotateRootKeyResponseSchema,
  RotationPhase,
  type AuditEvent,
  type RotateEncryptionKeyResponse,
} from "../../gen/spike/nexus/v1/operator_pb.js";
import { SingleBar } from "cli-progress";

import { parseCount, parseDuration, parseTime } from "./argument-values.js";
import { CliError } from "./cli-error.js";
import { example, withConnection } from "./command-context.js";
import { EXIT } from "./exit-codes.js";
import { relativeTime } from "./output.js";
import { prompt, readPassword, readStdin, type PasswordOptions } from "./password-input.js";
import { readFile } from "node:fs/promises";

/** The current and the new admin password: prompted on a terminal, else two lines of a file or of stdin. */
async function readPasswordChange(opts: PasswordOptions): Promise<[string, string]> {
  if (opts.passwordFile !== undefined && opts.passwordStdin) throw CliError.usage("give --password-file or --password-stdin, not both");
  let text: string | undefined;
  if (opts.passwordFile !== undefined) {
    try {
      text = await readFile(opts.passwordFile, "utf8");
    } catch (err) {
      throw CliError.usage(`cannot read --password-file ${opts.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  } else if (opts.passwordStdin) text = await readStdin();
  if (text !== undefined) {
    const [current = "", next = ""] = text.split(/\r?\n/);
    if (current === "" || next === "") throw CliError.usage("expected two lines: the current password, then the new one");
    return [current, next];
  }
  if (!process.stdin.isTTY) throw CliError.usage("no terminal to prompt for the passwords on: use --password-file FILE or --password-stdin");
  return [await prompt({ prompt: "Current admin password:" }), await prompt({ prompt: "New admin password:", confirm: true })];
}

const PHASE_NAMES: Record<RotationPhase, string> = {
  [RotationPhase.UNSPECIFIED]: "",
  [RotationPhase.CREATING_KEYS]: "creating keys",
  [RotationPhase.REWRAPPING]: "re-wrapping",
  [RotationPhase.REMACING]: "re-MACing",
  [RotationPhase.RETIRING]: "retiring the old key",
  [RotationPhase.DONE]: "done",
};

/** A progress bar on a terminal (stderr), one line per phase change otherwise; nothing for -o json. */
function rotationProgress(stream: NodeJS.WriteStream | undefined): { update(m: RotateEncryptionKeyResponse): void; stop(): void } {
  if (stream === undefined) return { update: () => {}, stop: () => {} };
  if (stream.isTTY) {
    const bar = new SingleBar({ stream, format: "{phase} [{bar}] {value}/{total} data keys, {rate}/s", hideCursor: true, clearOnComplete: false });
    let started = false;
    return {
      update(m) {
        const values = { phase: PHASE_NAMES[m.phase].padEnd(20), rate: Math.round(m.keysPerSecond) };
        if (!started) bar.start(Number(m.total), Number(m.done), values);
        else bar.update(Number(m.done), values);
        bar.setTotal(Number(m.total));
        started = true;
      },
      stop: () => started && bar.stop(),
    };
  }
  let phase: RotationPhase | undefined;
  return {
    update(m) {
      if (m.phase === phase) return;
      phase = m.phase;
      stream.write(`rotation ${m.rotationId}: ${PHASE_NAMES[m.phase]} (${m.done}/${m.total} data keys)\n`);
    },
    stop: () => {},
  };
}

function passwordOptions(command: Command): Command {
  return command
    .option("--password-file <file>", "read the admin password from this file")
    .option("--password-stdin", "read the admin password from standard input");
}

export function operatorCommands(): Command {
  const operator = example(new Command("operator").description("initialize, unseal, seal and log in to Nexus; admin tokens and the audit log"), "spike operator status");

  example(
    passwordOptions(operator.command("init").description("create the root key, sealed under a new admin password (at least 12 characters)")).action(
      async (_o: unknown, cmd: Command) =>
        withConnection<PasswordOptions>(cmd, async ({ opts, out, conn }) => {
          const adminPassword = await readPassword(opts, { prompt: "New admin password:", confirm: true });
          const res = await conn.call(OperatorService.method.initialize, { adminPassword }, { deadlineMs: 120_000 });
          if (out.format === "json") out.message(InitializeResponseSchema, res);
          else out.note(`initialized: root key ${res.rootKeyId}, keyring key ${res.activeKeyringKeyId}; Nexus is unsealed`);
        }),
    ),
    "spike operator init                      # prompts twice",
    "spike operator init --password-file /run/secrets/nexus-admin",
  );

  example(
    passwordOptions(operator.command("unseal").description("load the keys into the server's memory with the admin password")).action(async (_o: unknown, cmd: Command) =>
      withConnection<PasswordOptions>(cmd, async ({ opts, out, conn }) => {
        const adminPassword = await readPassword(opts, { prompt: "Admin password:" });
        const res = await conn.call(OperatorService.method.unseal, { adminPassword }, { deadlineMs: 120_000 });
        if (out.format === "json") out.message(UnsealResponseSchema, res);
        else out.note(`unsealed: keyring key ${res.activeKeyringKeyId}`);
      }),
    ),
    "spike operator unseal",
  );

  example(
    operator
      .command("seal")
      .description("drop all key material from the server's memory (needs login); peers leave it sealed until unseal or a restart")
      .option("--cluster", "seal every replica: none unseals another until one is unsealed with the admin password")
      .action(async (o: { cluster?: boolean }, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const scope = o.cluster === true ? SealScope.CLUSTER : SealScope.REPLICA;
          const res = await conn.call(OperatorService.method.seal, { scope }, { admin: true });
          if (out.format === "json") out.message(SealResponseSchema, res);
          else out.note(o.cluster === true ? "cluster sealed: every replica seals itself until one is unsealed with the admin password" : "sealed");
        }),
      ),
    "spike operator seal --cluster",
  );

  example(
    operator
      .command("status")
      .description("the server's version and seal state, and who you are to it (any SVID of the trust domain)")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(OperatorService.method.getStatus, {});
          if (out.format === "json") out.message(GetStatusResponseSchema, res);
          else
            out.table(
              ["FIELD", "VALUE"],
              [
                ["server", `${conn.address} (${conn.serverId})`],
                ["version", res.version],
                ["initialized", String(res.initialized)],
                ["sealed", String(res.sealed)],
                ["trust domain", res.trustDomain],
                ["you are", res.callerSpiffeId],
              ],
            );
        }),
      ),
    "spike operator status -o json | jq .sealed",
  );

  example(
    passwordOptions(operator.command("login").description("start an admin session (superuser SVID and admin password); the token is kept for this server and SVID"))
      .option("--ttl <duration>", "session lifetime, at most 12h", "1h")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<PasswordOptions & { ttl: string }>(cmd, async ({ opts, out, conn }) => {
          const ttl = durationFromMs(parseDuration(opts.ttl, "--ttl"));
          const adminPassword = await readPassword(opts, { prompt: "Admin password:" });
          const res = await conn.call(OperatorService.method.login, { adminPassword, ttl }, { deadlineMs: 120_000 });
          const file = await conn.sessions.write({
            address: conn.address,
            spiffeId: conn.svid.spiffeId,
            token: res.sessionToken,
            expiresAt: timestampDate(res.expiresAt!).toISOString(),
          });
          // The token stays in the file: -o json reports the expiry, never the token.
          if (out.format === "json") out.message(LoginResponseSchema, { ...res, sessionToken: "" });
          else out.note(`logged in as ${conn.svid.spiffeId} until ${timestampDate(res.expiresAt!).toISOString()} (${relativeTime(res.expiresAt)}); session in ${file}`);
        }),
      ),
    "spike operator login",
    "spike operator login --password-stdin --ttl 15m < /run/secrets/nexus-admin",
  );

  example(
    operator
      .command("logout")
      .description("revoke the session on the server and delete its file")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const session = await conn.sessions.read(conn.address, conn.svid.spiffeId);
          if (session === undefined) throw new CliError(`not logged in to ${conn.address} as ${conn.svid.spiffeId}`, EXIT.ok);
          try {
            const res = await conn.call(OperatorService.method.logout, {}, { admin: true });
            if (out.format === "json") out.message(LogoutResponseSchema, res);
          } finally {
            // Whether the server still knew the session or not, it is gone now.
            await conn.sessions.remove(conn.address, conn.svid.spiffeId);
          }
          if (out.format !== "json") out.note("logged out");
        }),
      ),
    "spike operator logout",
  );

  example(
    operator
      .command("rotate-encryption-key")
      .description("new wrapping and integrity keys; every data key re-wrapped while Nexus serves (needs login). Ctrl-C stops watching, not the rotation")
      .option("--reencrypt", "also re-encrypt every secret version under a fresh data key (after a suspected data-key leak)")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<{ reencrypt?: boolean }>(cmd, async ({ opts, out, conn }) => {
          const progress = rotationProgress(out.format === "json" ? undefined : process.stderr);
          let last: RotateEncryptionKeyResponse | undefined;
          try {
            for await (const m of conn.stream(OperatorService.method.rotateEncryptionKey, { reencrypt: opts.reencrypt === true }, { admin: true })) {
              last = m;
              // JSON lines: one compact object per report, so a script can read them as they come.
              if (out.format === "json") out.messageLine(RotateEncryptionKeyResponseSchema, m);
              else progress.update(m);
            }
          } finally {
            progress.stop();
          }
          if (out.format !== "json" && last !== undefined) out.note(`rotation ${last.rotationId} done: wrapping key ${last.oldKeyId} -> ${last.newKeyId}, ${last.done} data keys`);
        }),
      ),
    "spike operator rotate-encryption-key",
    "spike operator rotate-encryption-key --reencrypt -o json   # one JSON object per progress report",
  );

  example(
    passwordOptions(
      operator.command("rotate-root-key").description("a new root key sealed under the admin password; other replicas seal themselves and need unseal (needs login)"),
    ).action(async (_o: unknown, cmd: Command) =>
      withConnection<PasswordOptions>(cmd, async ({ opts, out, conn }) => {
        const adminPassword = await readPassword(opts, { prompt: "Admin password:" });
        const res = await conn.call(OperatorService.method.rotateRootKey, { adminPassword }, { admin: true, deadlineMs: 120_000 });
        if (out.format === "json") out.message(RotateRootKeyResponseSchema, res);
        else out.note(`root key rotated: root key ${res.rootKeyId}; unseal the other replicas`);
      }),
    ),
    "spike operator rotate-root-key",
  );

  example(
    operator
      .command("change-password")
      .description("change the admin password (needs login); every admin session ends, admin tokens stay")
      .option("--password-file <file>", "read the current password, then the new one, one per line, from this file")
      .option("--password-stdin", "read the current password, then the new one, one per line, from standard input")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<PasswordOptions>(cmd, async ({ opts, out, conn }) => {
          const [currentPassword, newPassword] = await readPasswordChange(opts);
          const res = await conn.call(OperatorService.method.changeAdminPassword, { currentPassword, newPassword }, { admin: true, deadlineMs: 120_000 });
          // This session ended with the others.
          await conn.sessions.remove(conn.address, conn.svid.spiffeId);
          if (out.format === "json") out.message(ChangeAdminPasswordResponseSchema, res);
          else out.note(`admin password changed; ${res.sessionsRevoked} admin session(s) ended: log in again with the new password`);
        }),
      ),
    "spike operator change-password                 # prompts for both",
    "printf '%s\n%s\n' \"$OLD\" \"$NEW\" | spike operator change-password --password-stdin",
  );

  operator.addCommand(tokenCommands());
  operator.addCommand(auditCommands());
  return operator;
}

function tokenCommands(): Command {
  const token = example(new Command("token").description("named long-lived admin tokens for automation (needs login)"), "spike operator token list");

  example(
    token
      .command("create")
      .description("create an admin token; it is printed once, on stdout")
      .argument("<name>", "1-64 characters of [A-Za-z0-9._-]")
      .option("--ttl <duration>", "lifetime, at most 365d", "30d")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection<{ ttl: string }>(cmd, async ({ opts, out, conn }) => {
          const res = await conn.call(OperatorService.method.createAdminToken, { name, ttl: durationFromMs(parseDuration(opts.ttl, "--ttl")) }, { admin: true });
          if (out.format === "json") out.message(CreateAdminTokenResponseSchema, res);
          else {
            out.line(res.token);
            out.note(`admin token ${name} expires ${relativeTime(res.adminToken?.expiresAt)}; it is shown only now`);
          }
        }),
      ),
    "spike operator token create ci-deploy --ttl 90d > ci-token && chmod 600 ci-token",
  );

  example(
    token
      .command("list")
      .description("list admin tokens (never the tokens themselves)")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(OperatorService.method.listAdminTokens, {}, { admin: true });
          if (out.format === "json") out.message(ListAdminTokensResponseSchema, res);
          else
            out.table(
              ["NAME", "CREATED BY", "CREATED", "EXPIRES", "LAST USED"],
              res.adminTokens.map((t) => [t.name, t.createdBy, relativeTime(t.createdAt), relativeTime(t.expiresAt), relativeTime(t.lastActivity)]),
            );
        }),
      ),
    "spike operator token list",
  );

  example(
    token
      .command("revoke")
      .description("revoke an admin token by name")
      .argument("<name>", "the token's name")
      .action(async (name: string, _o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(OperatorService.method.revokeAdminToken, { name }, { admin: true });
          if (out.format === "json") out.message(RevokeAdminTokenResponseSchema, res);
          else out.note(`revoked admin token ${name}`);
        }),
      ),
    "spike operator token revoke ci-deploy",
  );
  return token;
}

function auditCommands(): Command {
  const audit = example(new Command("audit").description("the audit log (needs login)"), "spike operator audit list --since 1h");

  example(
    audit
      .command("list")
      .description("list audit events, newest first")
      .option("--since <time>", "only events at or after this RFC 3339 time, or this long ago (1h)")
      .option("--caller <spiffe-id>", "only events of this caller")
      .option("--path-prefix <prefix>", "only events whose path starts with this")
      .option("--limit <n>", "at most this many events", "100")
      .action(async (_o: unknown, cmd: Command) =>
        withConnection<{ since?: string; caller?: string; pathPrefix?: string; limit: string }>(cmd, async ({ opts, out, conn }) => {
          const limit = parseCount(opts.limit, "--limit");
          const startTime = opts.since === undefined ? undefined : timestampFromDate(parseTime(opts.since, "--since", "past"));
          const events: AuditEvent[] = [];
          let pageToken = "";
          do {
            const page = await conn.call(
              OperatorService.method.listAuditEvents,
              { startTime, callerSpiffeId: opts.caller ?? "", pathPrefix: opts.pathPrefix ?? "", pageSize: Math.min(1000, Math.max(1, limit - events.length)), pageToken },
              { admin: true },
            );
            events.push(...page.events.slice(0, limit - events.length));
            pageToken = page.nextPageToken;
          } while (pageToken !== "" && events.length < limit);
          if (out.format === "json") out.message(ListAuditEventsResponseSchema, { $typeName: "spike.nexus.v1.ListAuditEventsResponse", events, nextPageToken: "" });
          else
            out.table(
              ["TIME", "CALLER", "RPC", "PATH", "OUTCOME", "CODE"],
              events.map((e) => [relativeTime(e.time), e.callerSpiffeId, e.rpc.replace(/^\/spike\.nexus\.v1\./, ""), e.path, AuditOutcome[e.outcome].toLowerCase(), e.code]),
            );
        }),
      ),
    "spike operator audit list --since 1h --caller spiffe://spike.ist/workload/billing",
  );

  example(
    audit
      .command("verify")
      .description(`check the audit log's MACs and sequences; exits ${EXIT.other} when it finds problems`)
      .action(async (_o: unknown, cmd: Command) =>
        withConnection(cmd, async ({ out, conn }) => {
          const res = await conn.call(OperatorService.method.verifyAuditLog, {}, { admin: true, deadlineMs: 600_000 });
          if (out.format === "json") out.message(VerifyAuditLogResponseSchema, res);
          else {
            for (const p of res.problems) out.line(`${AuditProblemKind[p.kind].toLowerCase()}  ${p.replicaId} #${p.sequence}  ${p.description}`);
          }
          if (res.problems.length > 0) throw new CliError(`audit log: ${res.problems.length} problem(s) in ${res.eventsChecked} events checked`, EXIT.other);
          if (out.format !== "json") out.note(`audit log verified: ${res.eventsChecked} events checked${res.eventsUnsealed > 0n ? `, ${res.eventsUnsealed} waiting for a MAC` : ""}`);
        }),
      ),
    "spike operator audit verify",
  );
  return audit;
}
