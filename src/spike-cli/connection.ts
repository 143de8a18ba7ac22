// One command's connection to Nexus: the caller's SVID from its source, the
// server authorized by SPIFFE ID (default spiffe://<caller's trust domain>/spike/nexus,
// never a host name), gRPC over mTLS, and the admin credential (the stored
// session, or --token-file) for admin RPCs. A failed call becomes a CliError
// with the exit code and the one-line message.

import type { DescMethodServerStreaming, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { readFile } from "node:fs/promises";
import { StreamFailure, type CallFailure } from "../client/nexus-client.js";
import { createNexusClient, type ReplicatedNexusClient } from "../client/replicated-client.js";
import { parseSpiffeId } from "../identity/spiffe-id.js";
import { CliError } from "./cli-error.js";
import { failureMessage, type CallTarget } from "./error-message.js";
import { EXIT, exitCodeFor } from "./exit-codes.js";
import { createOutput, parseFormat, type Output } from "./output.js";
import { sessionDir, sessionStore, type SessionStore } from "./session-store.js";
import { describeSvid, svidSourceFrom, type Svid, type SvidSource } from "./svid-source.js";

export const DEFAULT_ADDRESS = "localhost:8553";
const DEFAULT_DEADLINE_MS = 30_000;

/** The options every command accepts (flags or SPIKE_* variables). */
export interface GlobalOptions {
  readonly addr?: string;
  readonly serverId?: string;
  readonly cert?: string;
  readonly key?: string;
  readonly bundle?: string;
  readonly svidDir?: string;
  readonly spiffeEndpointSocket?: string;
  readonly spiffeId?: string;
  readonly output?: string;
  readonly tokenFile?: string;
}

export interface CallOptions {
  /** Send the admin credential (PolicyService, Seal, tokens, audit). */
  readonly admin?: boolean;
  /** For a denial message naming the permission and path. */
  readonly target?: CallTarget;
  readonly deadlineMs?: number;
}

export interface Connection {
  readonly address: string;
  readonly serverId: string;
  readonly svid: Svid;
  readonly sessions: SessionStore;
  call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, options?: CallOptions): Promise<MessageShape<M["output"]>>;
  /** A server stream's messages; a failure ends the iteration with a CliError, as call does. */
  stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, options?: CallOptions): AsyncIterable<MessageShape<M["output"]>>;
  close(): void;
}

/** The output chosen by -o, before any connection is made. */
export function outputFor(options: GlobalOptions): Output {
  return createOutput(parseFormat(options.output));
}

export async function connect(options: GlobalOptions, source: SvidSource = svidSourceFrom(options)): Promise<Connection> {
  // Several replicas: "host1:8553,host2:8553"; idempotent calls move on when one is away.
  const addresses = (options.addr || DEFAULT_ADDRESS).split(",").map(normalizeAddress).filter((a) => a !== "");
  const address = addresses.join(",");
  const provider = await source.open();
  const svid = describeSvid(provider.current());
  const serverId = options.serverId || `spiffe://${svid.trustDomain}/spike/nexus`;
  try {
    parseSpiffeId(serverId);
  } catch (err) {
    provider.close();
    throw CliError.usage(`--server-id ${serverId}: ${(err as Error).message}`);
  }
  const client: ReplicatedNexusClient = createNexusClient({ addresses, svid: provider, serverId });
  const sessions = sessionStore(sessionDir(process.env));

  const adminToken = async (): Promise<{ token: string; fromSession: boolean }> => {
    if (options.tokenFile) {
      try {
        return { token: (await readFile(options.tokenFile, "utf8")).trim(), fromSession: false };
      } catch (err) {
        throw CliError.usage(`cannot read --token-file ${options.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    }
    const session = await sessions.read(address, svid.spiffeId);
    if (session === undefined) throw new CliError(`not logged in to ${address} as ${svid.spiffeId}: run spike operator login`, EXIT.denied);
    if (Date.parse(session.expiresAt) <= Date.now()) {
      await sessions.remove(address, svid.spiffeId);
      throw new CliError("session expired: run spike operator login", EXIT.denied);
    }
    return { token: session.token, fromSession: true };
  };

  return {
    address,
    serverId,
    svid,
    sessions,
    async call<M extends DescMethodUnary>(method: M, request: MessageInitShape<M["input"]>, callOptions: CallOptions = {}): Promise<MessageShape<M["output"]>> {
      const credential = callOptions.admin ? await adminToken() : undefined;
      const result = await client.call(method, request, { bearerToken: credential?.token, deadlineMs: callOptions.deadlineMs ?? DEFAULT_DEADLINE_MS });
      // CallFailure's code is any status name, so "OK" does not narrow the union by itself.
      if (result.code === "OK") return result.response as MessageShape<M["output"]>;
      const failure = result as CallFailure;
      // The server forgets sessions it ended (logout elsewhere, expiry, restart of the store).
      if (credential?.fromSession && failure.code === "UNAUTHENTICATED" && failure.reason === "INVALID_ADMIN_CREDENTIAL") {
        throw new CliError("session expired: run spike operator login", EXIT.denied);
      }
      throw new CliError(failureMessage(failure, { address, callerId: svid.spiffeId, target: callOptions.target }), exitCodeFor(failure.code, failure.reason));
    },
    async *stream<M extends DescMethodServerStreaming>(method: M, request: MessageInitShape<M["input"]>, callOptions: CallOptions = {}) {
      const credential = callOptions.admin ? await adminToken() : undefined;
      try {
        // No deadline: a stream lasts as long as what it reports.
        yield* client.stream(method, request, { bearerToken: credential?.token });
      } catch (err) {
        if (!(err instanceof StreamFailure)) throw err;
        if (credential?.fromSession && err.code === "UNAUTHENTICATED" && err.reason === "INVALID_ADMIN_CREDENTIAL") {
          throw new CliError("session expired: run spike operator login", EXIT.denied);
        }
        throw new CliError(failureMessage(err, { address, callerId: svid.spiffeId, target: callOptions.target }), exitCodeFor(err.code, err.reason));
      }
    },
    close: () => client.close(),
  };
}

/** "https://host:port" and "host:port" both name the gRPC listener. */
function normalizeAddress(raw: string): string {
  return raw.trim().replace(/^[a-z]+:\/\//i, "").replace(/\/+$/, "");
}
