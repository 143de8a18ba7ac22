// Peer unseal (issue 16 §3, ADR 0012): a sealed replica takes the root key
// from an unsealed one, and the cluster seal that stops it.
//
// Every replica advertises where its gRPC listener is reachable
// (NEXUS_ADVERTISE_ADDRESS) with a heartbeat. A sealed replica that was not
// sealed on request reads the live adverts and asks each peer in turn, with
// backoff, over mTLS: the client accepts only a server presenting
// NEXUS_SERVER_ID, and the server admits only that ID (authorization/). On top
// of TLS both sides sign ephemeral X25519 keys with their SVID keys
// (keys/peer-handover.ts), and each checks the other's signature against a
// chain that leads to the trust bundle and names the server ID: an address
// from the database proves nothing. Both sides write an audit event.
//
// A cluster seal (Seal with scope CLUSTER) is a MAC'd row plus a NOTIFY:
// every replica seals itself, none hands out keys, and none asks, until a
// person unseals one replica with the admin password (which lifts it).

import { randomUUID, X509Certificate } from "node:crypto";
import { ReplicaService, type RequestUnsealKeysRequest } from "../../gen/spike/nexus/v1/replica_pb.js";
import type { AuditLog } from "../audit/audit-log.js";
import { grpcNexusClient } from "../client/nexus-client.js";
import { NexusError } from "../errors/nexus-error.js";
import { SvidSigner, verifySvidSignature } from "../identity/svid-signature.js";
import { inspectSvid } from "../identity/x509-svid.js";
import { ClusterSealGuard, type ClusterSealVerdict } from "../keys/cluster-seal.js";
import type { KeyManager } from "../keys/key-manager.js";
import {
  ephemeralKey,
  HANDOVER_NONCE_BYTES,
  handoverNonce,
  openRootKeyFromPeer,
  requestTranscript,
  responseTranscript,
  sealRootKeyForPeer,
  X25519_PUBLIC_KEY_BYTES,
  type RequestHalf,
  type ResponseHalf,
} from "../keys/peer-handover.js";
import type { Logger } from "../log/logger.js";
import type { SealCoordinator } from "../services/operator-service.js";
import type { UnsealKeysResponder } from "../services/replica-service.js";
import type { ReplicaAdvert, PeerUnsealStore } from "../store/peer-unseal-store.js";
import { backoffDelay, sleep } from "../timing/backoff.js";
import type { TlsMaterialSource } from "../transport/certificate-source.js";

const RPC = "/spike.nexus.v1.ReplicaService/RequestUnsealKeys";
/** Heartbeat of an advert, and how often an unsealed replica re-reads the cluster seal (a NOTIFY can be lost). */
const HEARTBEAT_MS = 2_000;
/** An advert older than this is a replica that went away. */
const FRESH_MS = 10_000;
/** Between rounds over every live peer while still sealed. */
const BACKOFF = { initialMs: 250, maxMs: 5_000 };
const CALL_DEADLINE_MS = 3_000;

export interface PeerUnsealOptions {
  readonly serverId: string;
  /** NEXUS_PEER_UNSEAL: off, this replica neither asks nor hands out keys (a cluster seal still seals it). */
  readonly enabled: boolean;
  /** host:port other replicas dial; undefined: not advertised (it can still ask). */
  readonly advertiseAddress: string | undefined;
  /** This replica's advert key (the audit log's replica id). */
  readonly instanceId: string;
  readonly keys: KeyManager;
  readonly store: PeerUnsealStore;
  readonly certificates: TlsMaterialSource;
  readonly auditLog: AuditLog;
  readonly logger: Logger;
}

export class PeerUnseal implements SealCoordinator, UnsealKeysResponder {
  private readonly guard: ClusterSealGuard;
  private readonly signer: SvidSigner;
  private readonly stopping = new AbortController();
  /** Sealed on request (scope REPLICA): peers do not unseal it until an Unseal or a restart. */
  private heldSealed = false;
  /**
   * Key generations that a running Unseal with the password produces when it
   * succeeds (it started while this replica was sealed): the cluster seal it
   * is about to lift must not seal the replica again at that generation.
   * Keyed by generation, not a count of calls, so Unseal calls that fail (a
   * wrong password) or reach an already unsealed replica hold nothing off.
   */
  private readonly passwordUnseals = new Set<number>();
  private wake: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private sealCheck: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly o: PeerUnsealOptions) {
    this.guard = new ClusterSealGuard(o.keys);
    this.signer = new SvidSigner(() => o.certificates.material);
  }

  /** Whether this replica takes part: on, and serving with the server ID itself (else no peer would accept it). */
  private get active(): boolean {
    return this.o.enabled && this.ownId() === this.o.serverId;
  }

  async start(): Promise<void> {
    const { keys, logger } = this.o;
    keys.onSealChange((sealed) => {
      if (!sealed) {
        this.heldSealed = false;
        // However it was unsealed (the password file at start included), a cluster seal in force applies.
        setImmediate(() => void this.clusterSealChanged());
      }
      this.wake?.();
    });
    this.unlisten = (await this.o.store.listen(() => void this.clusterSealChanged())).unlisten;
    // A NOTIFY lost (a reconnect) must not leave this replica serving through a cluster seal, peer unseal on or off.
    this.sealCheck = setInterval(() => void (this.o.keys.sealed ? undefined : this.clusterSealChanged()), HEARTBEAT_MS);
    this.sealCheck.unref();
    if (!this.o.enabled) {
      logger.info("peer unseal is off (NEXUS_PEER_UNSEAL=off): this replica stays sealed until Unseal");
      return;
    }
    if (this.ownId() !== this.o.serverId) {
      logger.warn("peer unseal is off: this replica's SVID is not NEXUS_SERVER_ID", { serverId: this.o.serverId, svid: this.ownId() });
      return;
    }
    if (this.o.advertiseAddress === undefined) logger.warn("NEXUS_ADVERTISE_ADDRESS is not set (and NEXUS_LISTEN names no dialable host): peers cannot unseal from this replica");
    const tick = () => void this.heartbeat().catch((err) => logger.debug("peer unseal heartbeat failed", { err }));
    tick();
    this.timer = setInterval(tick, HEARTBEAT_MS);
    this.timer.unref();
    this.running = this.run();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.wake?.();
    clearInterval(this.timer);
    clearInterval(this.sealCheck);
    await this.running?.catch(() => {});
    await this.unlisten?.().catch(() => {});
    if (this.active && this.o.advertiseAddress !== undefined) await this.o.store.withdraw(this.o.instanceId).catch(() => {});
  }

  // --- Seal scopes (OperatorService) ---

  sealReplica(): void {
    this.heldSealed = true;
    this.o.keys.seal("sealed on request");
  }

  async sealCluster(by: string): Promise<void> {
    const previous = await this.o.store.clusterSeal();
    const row = this.guard.next(previous, true, by);
    if (!(await this.o.store.writeClusterSeal(previous?.epoch ?? 0, row))) {
      throw new NexusError("aborted", "the cluster seal changed concurrently; nothing was changed: retry", { reason: "CLUSTER_SEAL_CONFLICT" });
    }
    this.guard.observe(row);
    this.o.keys.seal("cluster seal");
    this.o.logger.warn("cluster sealed: every replica seals itself; an Unseal with the admin password lifts it", { by });
  }

  async unsealWithPassword(by: string, unseal: () => Promise<void>): Promise<void> {
    const { keys } = this.o;
    const expected = keys.sealed ? keys.generation + 1 : undefined;
    if (expected !== undefined) this.passwordUnseals.add(expected);
    try {
      await unseal();
      await this.liftClusterSeal(by);
    } finally {
      if (expected !== undefined) this.passwordUnseals.delete(expected);
    }
  }

  /** Whether the keys in memory come from an Unseal with the password that is lifting the cluster seal now. */
  private get lifting(): boolean {
    return this.passwordUnseals.has(this.o.keys.generation);
  }

  private async liftClusterSeal(by: string): Promise<void> {
    const previous = await this.o.store.clusterSeal();
    if (previous === undefined || this.guard.judge(previous) === "open") return;
    const row = this.guard.next(previous, false, by);
    if (await this.o.store.writeClusterSeal(previous.epoch, row)) {
      this.guard.observe(row);
      this.o.logger.info("cluster seal lifted by an Unseal with the admin password: the other replicas unseal from this one", { by });
    }
  }

  // --- Responder (ReplicaService/RequestUnsealKeys) ---

  async respond(req: RequestUnsealKeysRequest, caller: string) {
    const { keys, serverId } = this.o;
    // Authorization admitted only the server ID; checked again where the keys are.
    if (caller !== serverId) throw new NexusError("permission_denied", `${caller} may not ask for the unseal keys`, { reason: "NOT_AUTHORIZED" });
    if (!this.o.enabled) throw new NexusError("failed_precondition", "peer unseal is off on this replica (NEXUS_PEER_UNSEAL=off)", { reason: "PEER_UNSEAL_OFF" });
    if (req.requesterNonce.length !== HANDOVER_NONCE_BYTES) throw NexusError.invalidArgument("requester_nonce", `must be ${HANDOVER_NONCE_BYTES} bytes`, "INVALID_NONCE");
    if (req.requesterPublicKey.length !== X25519_PUBLIC_KEY_BYTES) throw NexusError.invalidArgument("requester_public_key", `must be a raw X25519 key (${X25519_PUBLIC_KEY_BYTES} bytes)`, "INVALID_PUBLIC_KEY");
    const half: RequestHalf = { requesterId: serverId, responderId: serverId, requesterNonce: req.requesterNonce, requesterPublicKey: req.requesterPublicKey };
    if (!verifySvidSignature(req.requesterCertificateChain, this.o.certificates.material.bundle, serverId, requestTranscript(half), req.requesterSignature)) {
      throw new NexusError("permission_denied", `the handshake is not signed by an X.509-SVID of ${serverId}`, { reason: "PEER_SIGNATURE_INVALID" });
    }
    if (keys.sealed) throw new NexusError("failed_precondition", "this replica is sealed too", { reason: "SEALED" });
    const verdict = this.guard.judge(await this.o.store.clusterSeal());
    if (verdict === "sealed" && !this.lifting) keys.seal("cluster seal");
    if (verdict !== "open") throw clusterSealRefusal(verdict);
    const own = ephemeralKey();
    const nonce = handoverNonce();
    // Synchronous from here: the root key is read and sealed within this call.
    const { response, transcript } = keys.withRootKey((rootKeyId, rootKey) => {
      const s: ResponseHalf = { responderNonce: nonce, responderPublicKey: own.publicKey, rootKeyId };
      const t = responseTranscript(half, s);
      return { transcript: t, response: { ...s, sealedRootKey: sealRootKeyForPeer(own.privateKey, req.requesterPublicKey, t, rootKeyId, rootKey) } };
    });
    const signature = this.signer.sign(transcript);
    this.o.logger.info("root key handed to a peer replica", { rootKeyId: response.rootKeyId });
    return {
      responderNonce: response.responderNonce,
      responderPublicKey: response.responderPublicKey,
      rootKeyId: response.rootKeyId,
      sealedRootKey: response.sealedRootKey,
      responderCertificateChain: signature.certificateChainPem,
      responderSignature: signature.signature,
    };
  }

  // --- Requester ---

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopping.signal.aborted) {
      if (!this.o.keys.sealed || this.heldSealed) {
        attempt = 0;
        await this.pause(HEARTBEAT_MS);
        continue;
      }
      let unsealed = false;
      try {
        unsealed = await this.askPeers();
      } catch (err) {
        this.o.logger.debug("peer unseal round failed", { err });
      }
      if (!unsealed) await this.pause(backoffDelay(BACKOFF, attempt++));
    }
  }

  /** Waits `ms`, or less if the seal state or the cluster seal changes. */
  private async pause(ms: number): Promise<void> {
    const woken = new AbortController();
    const wake = () => woken.abort();
    this.wake = wake;
    const stop = () => woken.abort();
    this.stopping.signal.addEventListener("abort", stop, { once: true });
    try {
      await sleep(ms, woken.signal);
    } finally {
      this.stopping.signal.removeEventListener("abort", stop);
      if (this.wake === wake) this.wake = undefined;
    }
  }

  /** One round over the live peers; true once unsealed (by a peer or otherwise). */
  private async askPeers(): Promise<boolean> {
    const { store, keys } = this.o;
    // Sealed, this replica cannot verify the row: a cluster seal (or a forged one: denial only) stops it asking.
    const row = await store.clusterSeal();
    if (row?.sealed) return false;
    // A row older than one it saw (or none after one): a rollback by a database writer, which a peer that
    // restarted since cannot tell. Only an Unseal with the password goes on from here.
    if (this.guard.isStale(row)) {
      this.o.logger.error("the cluster-seal row is older than one this replica has seen (or gone): it asks no peer for the keys; Unseal with the admin password");
      return false;
    }
    if (!(await keys.checkInitialized())) return false;
    const peers = shuffled(await store.liveAdverts(this.o.instanceId, FRESH_MS));
    for (const peer of peers) {
      if (!keys.sealed || this.heldSealed || this.stopping.signal.aborted) return !keys.sealed;
      try {
        if (await this.askPeer(peer)) return true;
      } catch (err) {
        this.o.logger.debug("peer unseal attempt failed", { peer: peer.address, err });
      }
    }
    return false;
  }

  private async askPeer(peer: ReplicaAdvert): Promise<boolean> {
    const { keys, serverId, logger } = this.o;
    // Read before asking: nothing awaits once the root key is here.
    const hierarchy = await keys.storedHierarchy();
    const material = this.o.certificates.material;
    const own = ephemeralKey();
    const half: RequestHalf = { requesterId: serverId, responderId: serverId, requesterNonce: handoverNonce(), requesterPublicKey: own.publicKey };
    const signed = this.signer.sign(requestTranscript(half));
    const client = grpcNexusClient(peer.address, { cert: material.cert, key: material.key, ca: material.bundle.allAuthoritiesPem(), serverId });
    const result = await client
      .call(
        ReplicaService.method.requestUnsealKeys,
        { requesterNonce: half.requesterNonce, requesterPublicKey: half.requesterPublicKey, requesterCertificateChain: signed.certificateChainPem, requesterSignature: signed.signature },
        { deadlineMs: CALL_DEADLINE_MS },
      )
      .finally(() => client.close());
    if (result.response === undefined) {
      // An endpoint that is not the server ID is worth an event: a database writer may have pointed us there.
      if (result.reason === "SERVER_IDENTITY_REJECTED") await this.audit("denied", "PERMISSION_DENIED", { handover: "refused", peer: peer.address, why: result.message });
      logger.debug("a peer did not hand over the keys", { peer: peer.address, code: result.code, reason: result.reason });
      return false;
    }
    const r = result.response;
    const s: ResponseHalf = { responderNonce: r.responderNonce, responderPublicKey: r.responderPublicKey, rootKeyId: r.rootKeyId };
    const transcript = responseTranscript(half, s);
    if (
      r.responderNonce.length !== HANDOVER_NONCE_BYTES ||
      r.responderPublicKey.length !== X25519_PUBLIC_KEY_BYTES ||
      !verifySvidSignature(r.responderCertificateChain, material.bundle, serverId, transcript, r.responderSignature)
    ) {
      await this.audit("denied", "PERMISSION_DENIED", { handover: "refused", peer: peer.address, why: "the handshake is not signed by an SVID of the server ID" });
      logger.warn("a peer's handshake is not signed by an X.509-SVID of the server ID; its keys are refused", { peer: peer.address });
      return false;
    }
    if (!keys.sealed || this.heldSealed) return !keys.sealed;
    // Opened and installed (or zeroed) synchronously.
    keys.unsealWithRootKey(r.rootKeyId, openRootKeyFromPeer(own.privateKey, r.responderPublicKey, transcript, r.sealedRootKey), hierarchy);
    await this.audit("ok", "OK", { handover: "received", peer: peer.address, rootKeyId: r.rootKeyId }).catch((err) => logger.error("audit event of a peer unseal not written", { err }));
    return true;
  }

  private async audit(outcome: "ok" | "denied", code: string, detail: Record<string, unknown>): Promise<void> {
    const record = this.o.auditLog.begin({ requestId: randomUUID(), rpc: RPC, time: new Date() });
    record.identify(this.o.serverId);
    await record.finish(outcome, code, detail);
  }

  // --- Both ---

  private async heartbeat(): Promise<void> {
    if (this.o.advertiseAddress !== undefined) await this.o.store.heartbeat(this.o.instanceId, this.o.advertiseAddress);
  }

  private async clusterSealChanged(): Promise<void> {
    try {
      const generation = this.o.keys.generation;
      const row = await this.o.store.clusterSeal();
      if (this.o.keys.sealed) {
        this.wake?.();
        return;
      }
      // Unsealed while the row was read: judge it again (the check after every unseal does).
      if (this.o.keys.generation !== generation) return;
      const verdict = this.guard.judge(row);
      if ((verdict === "sealed" || verdict === "stale") && this.lifting) return;
      // A rolled-back row fails closed too: this replica saw a newer state than the database now shows.
      if (verdict === "sealed" || verdict === "stale") this.o.keys.seal(verdict === "sealed" ? "cluster seal" : "cluster-seal row rolled back");
      else if (verdict !== "open") this.o.logger.error("the cluster-seal row does not verify (written outside Nexus?); this replica hands no keys to peers", { verdict });
    } catch (err) {
      this.o.logger.debug("cluster seal check failed", { err });
    }
  }

  private ownId(): string | undefined {
    try {
      return inspectSvid(new X509Certificate(this.o.certificates.material.cert).raw).id.toString();
    } catch {
      return undefined;
    }
  }
}

function clusterSealRefusal(verdict: Exclude<ClusterSealVerdict, "open">): NexusError {
  if (verdict === "sealed") return new NexusError("failed_precondition", "the cluster is sealed: unseal one replica with the admin password", { reason: "CLUSTER_SEALED" });
  return new NexusError("failed_precondition", "the cluster-seal record does not verify; no keys are handed out until an Unseal with the admin password", { reason: "CLUSTER_SEAL_UNVERIFIED" });
}

function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** host:port as a peer dials it (IPv6 hosts in brackets). */
export function dialAddress(address: { host: string; port: number }): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
