// The authorization decision, in one place and default deny. Each RPC has one
// rule:
//   any        any valid SVID of the trust domain (GetStatus; the superuser with a
//              live admin credential also gets the admin view: the grant names it)
//   superuser  the superuser SVID (Initialize, Unseal, Login: the password is the second factor)
//   admin      the superuser SVID and a live admin credential (policies, Seal, tokens, audit)
//   secret     a policy granting READ or WRITE on the request's path, or the superuser
//   list       a policy granting LIST somewhere; the listing is then filtered per path
//   watch      as list; each event is then shown only if the policies in force
//              when it is sent grant READ and LIST on its path (WatchSecrets)
//   server     the Nexus server's own SPIFFE ID only (ReplicaService: peer unseal)
// Policies never grant admin RPCs. While sealed, secret RPCs are refused as
// sealed for everyone (policies cannot be verified without the integrity key).

import type { DescService, Message } from "@bufbuild/protobuf";
import { OperatorService } from "../../gen/spike/nexus/v1/operator_pb.js";
import { PolicyService } from "../../gen/spike/nexus/v1/policy_pb.js";
import { ReplicaService } from "../../gen/spike/nexus/v1/replica_pb.js";
import { SecretService } from "../../gen/spike/nexus/v1/secret_pb.js";
import { NexusError } from "../errors/nexus-error.js";
import type { SpiffeId } from "../identity/spiffe-id.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { CredentialRow } from "../store/credential-store.js";
import type { AdminCredentials } from "./admin-credentials.js";
import type { Grant } from "./policy.js";
import type { PolicyEngine } from "./policy-engine.js";

export type Rule = { kind: "any" } | { kind: "superuser" } | { kind: "admin" } | { kind: "secret"; grant: Grant } | { kind: "list" } | { kind: "watch" } | { kind: "server" };

export interface AccessRequest {
  readonly caller: SpiffeId;
  /** Full method path, e.g. "/spike.nexus.v1.SecretService/GetSecret". */
  readonly method: string;
  readonly request: Message;
  readonly bearerToken: string | undefined;
}

export interface AccessGrant {
  /** For ListSecrets: whether a path may be shown to the caller. */
  readonly mayList: (path: string) => boolean;
  /**
   * For WatchSecrets: whether an event on a path may be sent to the caller,
   * asked as each event is sent (so a revoked grant stops the next event).
   */
  readonly mayWatch?: (path: string) => boolean;
  /** For admin RPCs: the credential that was presented. */
  readonly credential?: CredentialRow;
}

export interface AccessPolicy {
  /** Resolves with what the caller may do, or rejects with a NexusError. */
  authorize(request: AccessRequest): Promise<AccessGrant>;
  /**
   * The one SPIFFE ID that may call `method`, for methods that admit exactly
   * one (ReplicaService: the server ID), else undefined. To such a method an
   * SVID of a trust domain this server does not trust is refused as any other
   * caller is, PERMISSION_DENIED: no one but that ID is authorized, whoever
   * they are.
   */
  soleCaller?(method: string): string | undefined;
}

const ALL: AccessGrant = { mayList: () => true };
const NONE: AccessGrant = { mayList: () => false };

const METHOD_RULES: ReadonlyMap<string, Rule> = new Map([
  ...rules(OperatorService, { getStatus: { kind: "any" }, initialize: { kind: "superuser" }, unseal: { kind: "superuser" }, login: { kind: "superuser" } }, { kind: "admin" }),
  ...rules(PolicyService, {}, { kind: "admin" }),
  ...rules(ReplicaService, {}, { kind: "server" }),
  ...rules(
    SecretService,
    {
      getSecret: { kind: "secret", grant: "read" },
      getSecretMetadata: { kind: "secret", grant: "read" },
      listSecrets: { kind: "list" },
      watchSecrets: { kind: "watch" },
    },
    { kind: "secret", grant: "write" },
  ),
]);

export class AccessController implements AccessPolicy {
  constructor(
    private readonly superuserId: string,
    private readonly policies: PolicyEngine,
    private readonly credentials: AdminCredentials,
    private readonly keys: KeyManager,
    /** Whether the policies have been loaded since the last unseal: until then no policy decides. */
    private readonly policiesLoaded: () => boolean,
    /** The SPIFFE ID every replica serves with (NEXUS_SERVER_ID): the only caller of ReplicaService. */
    private readonly serverId?: string,
  ) {}

  soleCaller(method: string): string | undefined {
    return METHOD_RULES.get(method)?.kind === "server" ? this.serverId : undefined;
  }

  async authorize({ caller, method, request, bearerToken }: AccessRequest): Promise<AccessGrant> {
    const rule = METHOD_RULES.get(method);
    const superuser = caller.toString() === this.superuserId;
    switch (rule?.kind) {
      case "any":
        // The admin view of GetStatus: the superuser with a credential that
        // verifies. Anything else gets what every caller gets, never an error.
        if (superuser && bearerToken !== undefined && !this.keys.sealed) {
          const credential = await this.credentials.verify(bearerToken, caller).catch(() => undefined);
          if (credential !== undefined) return { mayList: NONE.mayList, credential };
        }
        return NONE;
      case "superuser":
        if (superuser) return NONE;
        break;
      case "server":
        if (this.serverId !== undefined && caller.toString() === this.serverId) return NONE;
        break;
      case "admin":
        if (!superuser) break;
        if (this.keys.sealed) throw this.keys.sealedError();
        return { mayList: NONE.mayList, credential: await this.credentials.verify(bearerToken, caller) };
      case "secret": {
        if (this.keys.sealed) throw this.keys.sealedError();
        if (superuser) return NONE;
        this.requirePolicies();
        const path = (request as Message & { path?: unknown }).path;
        if (typeof path === "string" && this.policies.allows(caller, rule.grant, path)) return NONE;
        break;
      }
      case "list": {
        if (this.keys.sealed) throw this.keys.sealedError();
        if (superuser) return ALL;
        this.requirePolicies();
        const mayList = this.policies.pathTest(caller, "list");
        if (mayList) return { mayList };
        break;
      }
      case "watch": {
        if (this.keys.sealed) throw this.keys.sealedError();
        if (superuser) return { mayList: ALL.mayList, mayWatch: ALL.mayList };
        this.requirePolicies();
        if (this.policies.pathTest(caller, "list") === undefined) break;
        // Not the list test taken now: the engine's current policies, at each event.
        const policies = this.policies;
        return { mayList: NONE.mayList, mayWatch: (path) => policies.allows(caller, "read", path) && policies.allows(caller, "list", path) };
      }
    }
    throw new NexusError("permission_denied", `${caller.toString()} may not call ${method}${rule?.kind === "secret" ? " on this path" : ""}`, { reason: "NOT_AUTHORIZED" });
  }

  // Right after an unseal the policies are still loading: no decision is made
  // by a set that is empty only because it has not been read yet.
  private requirePolicies(): void {
    if (!this.policiesLoaded()) {
      throw new NexusError("unavailable", "the policies are loading after an unseal; retry in a moment", { reason: "POLICIES_LOADING" });
    }
  }
}

function rules(service: DescService, specific: Record<string, Rule>, otherwise: Rule): Array<[string, Rule]> {
  return service.methods.map((m) => [`/${service.typeName}/${m.name}`, specific[m.localName] ?? otherwise]);
}
