// The key hierarchy in memory, and the seal state of this replica.
//
//   admin password -> scrypt -> KEK (dropped after use)
//     -> root key (root_keys.encrypted_key)
//       -> keyring: wrapping keys (wrap per-secret data keys) and integrity keys
//
// The active key of each purpose is the one with the highest id, whatever a
// row's `active` flag says, and a replica never moves to a lower id: a
// database writer cannot re-activate a retired key. Keys another replica adds
// (a rotation) are picked up with adoptKeyring/refreshKeyring.
//
// Sealed, this object holds no key material. Unsealed, it holds the root key
// and keyring in Buffers that seal() overwrites with zeros. Nothing above keys/
// ever sees a key; nothing below it sees plaintext.

import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import type { InitialKeys, KeyringKeyRow, RootKeyRow, RootKeyStore } from "../store/root-key-store.js";
import { associatedData, newKey, open, seal } from "./aead.js";
import { mac, macMatches } from "./integrity.js";
import { FIRST_INTEGRITY_KEY_ID, type IntegrityKeyRef } from "./keyed-mac.js";
import { boundedKdfParams, DEFAULT_KDF_PARAMS, derivePasswordKeys, newSalt, passwordCheck, passwordCheckMatches, type KdfParams } from "./password-kdf.js";

const MIN_PASSWORD_LENGTH = 12;
const FIRST_ROOT_KEY_ID = 1;
const FIRST_WRAPPING_KEY_ID = 1;
/** A failed password attempt costs this much more than the KDF itself. */
const FAILED_ATTEMPT_DELAY_MS = 1000;

interface Unsealed {
  readonly rootKeyId: number;
  readonly rootKey: Buffer;
  readonly wrappingKeys: Map<number, Buffer>;
  activeWrappingKeyId: number;
  /** Every integrity key held: the active one and retired ones (to verify what they MAC'd). */
  readonly integrityKeys: Map<number, Buffer>;
  activeIntegrityKeyId: number;
  /**
   * Whether per-secret rows may still be under the integrity key the running
   * rotation retired (its re-MAC is not done): "unknown" until read after an
   * unseal, then the retired and new key ids, or "closed".
   */
  integrityWindow: "unknown" | "closed" | { readonly oldId: number; readonly newId: number };
}

/** A running rotation's re-MAC window as stored: open for rows under `oldIntegrityKeyId`, MAC'd under the new key. */
export interface StoredIntegrityWindow {
  readonly oldIntegrityKeyId: number;
  readonly newIntegrityKeyId: number;
  readonly mac: Buffer;
}

const INTEGRITY_WINDOW_MAC_LABEL = "nexus/v1/integrity-window";

/** The MAC a rotation stores with its re-MAC window, under the new integrity key (a database writer cannot open one). */
export function integrityWindowMac(newKey: IntegrityKeyRef, oldIntegrityKeyId: number): Buffer {
  return mac(newKey.key, INTEGRITY_WINDOW_MAC_LABEL, [oldIntegrityKeyId, newKey.id]);
}

/** A keyring key sealed under the root key, as the database stores it. */
export interface WrappedKeyringKey {
  readonly id: number;
  readonly purpose: "wrapping" | "integrity";
  readonly rootKeyId: number;
  readonly wrappedKey: Buffer;
  readonly active: boolean;
}

export interface WrappingKey {
  readonly id: number;
  readonly key: Buffer;
}

export class KeyManager {
  private state: Unsealed | undefined;
  /** Counts seals and unseals: work that awaited in between must not use what it read before. */
  private changes = 0;
  /** Whether a root key exists, as last seen (false until checked: sealed errors then say how to start). */
  private initializedSeen = false;
  private kdfQueue: Promise<unknown> = Promise.resolve();
  private readonly sealListeners = new Set<(sealed: boolean) => void>();
  /**
   * The highest integrity key id whose re-MAC window this process has seen
   * closed: a window for it or below is never opened again, whatever the
   * database says later (a writer putting back an old rotation row).
   */
  private integrityWindowClosedThrough = 0;

  constructor(
    private readonly store: RootKeyStore,
    private readonly logger: Logger,
    private readonly kdfParams: KdfParams = DEFAULT_KDF_PARAMS,
    private readonly failedAttemptDelayMs = FAILED_ATTEMPT_DELAY_MS,
  ) {}

  get sealed(): boolean {
    return this.state === undefined;
  }

  /**
   * Changes with every seal and unseal. Code that awaits between taking keys
   * (or decisions made with them) and using them compares generations and
   * starts over when they differ: Seal zeroes key buffers in place.
   */
  get generation(): number {
    return this.changes;
  }

  /** Refreshes whether the database holds a root key (for the sealed error's advice). */
  async checkInitialized(): Promise<boolean> {
    this.initializedSeen = await this.store.isInitialized();
    return this.initializedSeen;
  }

  /**
   * The error for a call that needs keys while sealed: an uninitialized
   * server says how to Initialize, an initialized one how to Unseal.
   */
  sealedError(): NexusError {
    if (this.initializedSeen) return sealedError();
    // Another replica may have initialized since: look again for the next caller.
    void this.checkInitialized().catch(() => {});
    // Still reason SEALED (no keys are loaded, clients wait the same way), but
    // the message says what to do first.
    return new NexusError("failed_precondition", "Nexus is sealed because it is not initialized: call OperatorService/Initialize with the superuser SVID and a new admin password", {
      reason: "SEALED",
    });
  }

  /** 0 while sealed. */
  get activeKeyringKeyId(): number {
    return this.state?.activeWrappingKeyId ?? 0;
  }

  /** Wrapping keys in the unsealed keyring; 0 while sealed. */
  get keyringSize(): number {
    return this.state?.wrappingKeys.size ?? 0;
  }

  onSealChange(listener: (sealed: boolean) => void): void {
    this.sealListeners.add(listener);
  }

  async initialize(password: string): Promise<{ rootKeyId: number; activeKeyringKeyId: number }> {
    validatePassword(password);
    if (await this.store.isInitialized()) throw alreadyInitialized();
    const rootKey = newKey();
    const wrappingKey = newKey();
    const integrityKey = newKey();
    const salt = newSalt();
    const derived = await this.serializedKdf(() => derivePasswordKeys(password, salt, this.kdfParams));
    let initial: InitialKeys;
    try {
      initial = {
        root: {
          id: FIRST_ROOT_KEY_ID,
          encryptedKey: seal(derived.kek, FIRST_ROOT_KEY_ID, rootKey, rootKeyAad(FIRST_ROOT_KEY_ID)),
          kdfSalt: salt,
          kdfParams: this.kdfParams,
          passwordCheck: passwordCheck(derived.checkKey, salt),
        },
        keyring: [
          wrapKeyringKey(rootKey, FIRST_ROOT_KEY_ID, FIRST_WRAPPING_KEY_ID, "wrapping", wrappingKey),
          wrapKeyringKey(rootKey, FIRST_ROOT_KEY_ID, FIRST_INTEGRITY_KEY_ID, "integrity", integrityKey),
        ],
      };
    } finally {
      derived.kek.fill(0);
      derived.checkKey.fill(0);
    }
    if (!(await this.store.createInitial(initial))) {
      [rootKey, wrappingKey, integrityKey].forEach((k) => k.fill(0));
      this.initializedSeen = true;
      throw alreadyInitialized();
    }
    this.initializedSeen = true;
    this.install({
      rootKeyId: FIRST_ROOT_KEY_ID,
      rootKey,
      wrappingKeys: new Map([[FIRST_WRAPPING_KEY_ID, wrappingKey]]),
      activeWrappingKeyId: FIRST_WRAPPING_KEY_ID,
      integrityKeys: new Map([[FIRST_INTEGRITY_KEY_ID, integrityKey]]),
      activeIntegrityKeyId: FIRST_INTEGRITY_KEY_ID,
      integrityWindow: "closed",
    });
    this.logger.info("initialized: root key and keyring created", { rootKeyId: FIRST_ROOT_KEY_ID });
    return { rootKeyId: FIRST_ROOT_KEY_ID, activeKeyringKeyId: FIRST_WRAPPING_KEY_ID };
  }

  /** Verifies the password and loads the hierarchy; also verifies when already unsealed. */
  async unseal(password: string): Promise<void> {
    if (password.length === 0) throw NexusError.invalidArgument("admin_password", "must not be empty", "EMPTY_PASSWORD");
    const keys = await this.loadHierarchy();
    const params = keys.kdfParams;
    const derived = await this.serializedKdf(async () => {
      const d = await derivePasswordKeys(password, keys.root.kdfSalt, params);
      if (!passwordCheckMatches(d.checkKey, keys.root.kdfSalt, keys.root.passwordCheck)) {
        d.kek.fill(0);
        d.checkKey.fill(0);
        await new Promise((r) => setTimeout(r, this.failedAttemptDelayMs));
        return undefined;
      }
      return d;
    });
    if (derived === undefined) {
      this.logger.warn("unseal refused: wrong admin password");
      throw new NexusError("permission_denied", "the admin password is not correct", { reason: "WRONG_PASSWORD" });
    }
    let rootKey: Buffer;
    try {
      rootKey = open(derived.kek, keys.root.encryptedKey, rootKeyAad(keys.root.id));
    } finally {
      derived.kek.fill(0);
      derived.checkKey.fill(0);
    }
    this.installRootKey(rootKey, keys, "unsealed");
  }

  /**
   * Peer unseal, requester side: the stored hierarchy to unseal with, read
   * before the peer is asked (no key is held across this await).
   */
  async storedHierarchy(): Promise<InitialKeys> {
    return this.loadHierarchy();
  }

  /**
   * Peer unseal, requester side: installs the root key a peer handed over and
   * the keyring `keys` (read before) opened under it. The keyring's AEAD tags
   * prove it is the right root key. `rootKey` belongs to this call from now
   * on: installed or zeroed. Synchronous, so nothing awaits with it.
   */
  unsealWithRootKey(rootKeyId: number, rootKey: Buffer, keys: InitialKeys): void {
    if (keys.root.id !== rootKeyId) {
      rootKey.fill(0);
      throw rootKeyChanged();
    }
    this.installRootKey(rootKey, keys, "unsealed by a peer");
  }

  /**
   * Peer unseal, responder side: hands the root key to `encrypt`, which must
   * seal it synchronously and keep no reference; its result is returned.
   */
  withRootKey<T>(encrypt: (rootKeyId: number, rootKey: Buffer) => T): T {
    const s = this.unsealed();
    return encrypt(s.rootKeyId, s.rootKey);
  }

  /** Opens the keyring under `rootKey` and installs both; zeroes everything if that fails. */
  private installRootKey(rootKey: Buffer, keys: InitialKeys, message: string): void {
    // Keys opened so far; zeroed if unsealing fails before they are installed.
    const opened: Buffer[] = [rootKey];
    try {
      const wrappingKeys = new Map<number, Buffer>();
      const integrityKeys = new Map<number, Buffer>();
      for (const k of keys.keyring) {
        const key = open(rootKey, k.wrappedKey, keyringKeyAad(k.purpose, k.id, keys.root.id));
        opened.push(key);
        (k.purpose === "integrity" ? integrityKeys : wrappingKeys).set(k.id, key);
      }
      if (integrityKeys.size === 0 || wrappingKeys.size === 0) {
        throw new NexusError("internal", "the keyring is incomplete", { reason: "KEYRING_INCOMPLETE" });
      }
      // The highest id of each purpose, never the stored `active` flag.
      const activeWrappingKeyId = Math.max(...wrappingKeys.keys());
      const activeIntegrityKeyId = Math.max(...integrityKeys.keys());
      if (this.state !== undefined && this.state.rootKeyId === keys.root.id) {
        // Already unsealed under this root key (a peer handed it over while the
        // password file's scrypt ran, or Unseal on a serving replica): the keys
        // in memory stay, so policies and health do not flap through a re-seal.
        for (const key of opened) key.fill(0);
        opened.length = 0;
        this.logger.debug("already unsealed under this root key", { rootKeyId: keys.root.id });
        return;
      }
      if (this.state) this.seal("re-unsealed");
      this.install({ rootKeyId: keys.root.id, rootKey, wrappingKeys, activeWrappingKeyId, integrityKeys, activeIntegrityKeyId, integrityWindow: "unknown" });
      opened.length = 0; // installed: sealing zeroes them from now on
      this.logger.info(message, { rootKeyId: keys.root.id, activeKeyringKeyId: activeWrappingKeyId });
      // Until this is read, a row under a retired integrity key is answered UNAVAILABLE (retry), never accepted.
      void this.loadIntegrityWindow().catch((err) => this.logger.warn("could not read the key rotation's re-MAC window", { err }));
    } catch (err) {
      for (const key of opened) key.fill(0);
      throw err;
    }
  }

  /** The stored hierarchy, once `password` is verified against it (PERMISSION_DENIED otherwise). */
  private async checkedHierarchy(password: string, field: string): Promise<InitialKeys & { kdfParams: KdfParams }> {
    if (password.length === 0) throw NexusError.invalidArgument(field, "must not be empty", "EMPTY_PASSWORD");
    const keys = await this.loadHierarchy();
    const ok = await this.serializedKdf(async () => {
      const d = await derivePasswordKeys(password, keys.root.kdfSalt, keys.kdfParams);
      const matches = passwordCheckMatches(d.checkKey, keys.root.kdfSalt, keys.root.passwordCheck);
      d.kek.fill(0);
      d.checkKey.fill(0);
      if (!matches) await new Promise((r) => setTimeout(r, this.failedAttemptDelayMs));
      return matches;
    });
    if (!ok) throw new NexusError("permission_denied", "the admin password is not correct", { reason: "WRONG_PASSWORD" });
    return keys;
  }

  /** Checks the admin password without changing the seal state (Login). */
  async verifyPassword(password: string): Promise<void> {
    await this.checkedHierarchy(password, "admin_password");
  }

  /**
   * ChangeAdminPassword: checks `current`, then seals the root key held here
   * under a KEK derived from `next` with a new salt. The old password stops
   * working everywhere at once: every replica checks passwords against the
   * stored row. `store` writes the row (with the call's audit event) only if
   * the password check it replaces is still the one verified here.
   */
  async changePassword(current: string, next: string, store: (root: RootKeyRow, expectedCheck: Buffer) => Promise<boolean>): Promise<void> {
    const keys = await this.checkedHierarchy(current, "current_password");
    const rootKeyId = this.unsealed().rootKeyId;
    if (keys.root.id !== rootKeyId) throw rootKeyChanged();
    const salt = newSalt();
    const derived = await this.serializedKdf(() => derivePasswordKeys(next, salt, this.kdfParams));
    let root: RootKeyRow;
    try {
      // After the await: take the root key now and use it synchronously.
      const s = this.unsealed();
      if (s.rootKeyId !== rootKeyId) throw rootKeyChanged();
      root = {
        id: rootKeyId,
        encryptedKey: seal(derived.kek, rootKeyId, s.rootKey, rootKeyAad(rootKeyId)),
        kdfSalt: salt,
        kdfParams: this.kdfParams,
        passwordCheck: passwordCheck(derived.checkKey, salt),
      };
    } finally {
      derived.kek.fill(0);
      derived.checkKey.fill(0);
    }
    if (!(await store(root, keys.root.passwordCheck))) {
      throw new NexusError("aborted", "the admin password was changed concurrently; nothing was changed by this call", { reason: "CONCURRENT_PASSWORD_CHANGE" });
    }
    this.logger.info("admin password changed: the root key is sealed under the new one");
  }

  /**
   * RotateRootKey: checks `password`, creates a new root key sealed under it
   * (new salt), and has `store` put every keyring key held here, wrapped under
   * the new root key, in place of the old ones in one transaction. Then this
   * replica uses the new root key; others seal themselves when they see it.
   */
  async rotateRootKey(password: string, store: (oldId: number, root: RootKeyRow, keyring: KeyringKeyRow[]) => Promise<boolean>): Promise<number> {
    const keys = await this.checkedHierarchy(password, "admin_password");
    const oldId = this.unsealed().rootKeyId;
    if (keys.root.id !== oldId) throw rootKeyChanged();
    await this.refreshKeyring();
    const salt = newSalt();
    const derived = await this.serializedKdf(() => derivePasswordKeys(password, salt, this.kdfParams));
    const newId = oldId + 1;
    const rootKey = newKey();
    let root: RootKeyRow;
    let keyring: KeyringKeyRow[];
    const generation = this.changes;
    try {
      const s = this.unsealed();
      if (s.rootKeyId !== oldId) throw rootKeyChanged();
      root = { id: newId, encryptedKey: seal(derived.kek, newId, rootKey, rootKeyAad(newId)), kdfSalt: salt, kdfParams: this.kdfParams, passwordCheck: passwordCheck(derived.checkKey, salt) };
      keyring = [
        ...[...s.wrappingKeys].map(([id, key]) => wrapKeyringKey(rootKey, newId, id, "wrapping", key)),
        ...[...s.integrityKeys].map(([id, key]) => wrapKeyringKey(rootKey, newId, id, "integrity", key)),
      ];
    } catch (err) {
      rootKey.fill(0);
      throw err;
    } finally {
      derived.kek.fill(0);
      derived.checkKey.fill(0);
    }
    let stored = false;
    try {
      stored = await store(oldId, root, keyring);
    } finally {
      if (!stored) rootKey.fill(0);
    }
    if (!stored) {
      throw new NexusError("aborted", "the keyring or root key changed meanwhile, or a key rotation is running; nothing was changed: retry", { reason: "ROOT_KEY_ROTATION_CONFLICT" });
    }
    const s = this.state;
    if (s === undefined || this.changes !== generation) {
      // Sealed meanwhile: the new root key is stored; the next Unseal loads it.
      rootKey.fill(0);
      return newId;
    }
    s.rootKey.fill(0);
    this.state = { ...s, rootKeyId: newId, rootKey };
    this.logger.info("root key rotated", { rootKeyId: newId });
    return newId;
  }

  /** Overwrites every key in memory with zeros and forgets it. */
  seal(reason = "requested"): void {
    const s = this.state;
    if (s === undefined) return;
    this.state = undefined;
    this.changes++;
    s.rootKey.fill(0);
    s.integrityKeys.forEach((k) => k.fill(0));
    s.wrappingKeys.forEach((k) => k.fill(0));
    this.logger.info("sealed", { reason });
    this.sealListeners.forEach((l) => l(true));
  }

  activeWrappingKey(): WrappingKey {
    const s = this.unsealed();
    return { id: s.activeWrappingKeyId, key: s.wrappingKeys.get(s.activeWrappingKeyId)! };
  }

  wrappingKey(id: number): Buffer {
    const key = this.unsealed().wrappingKeys.get(id);
    if (key === undefined) throw new NexusError("internal", "stored data refers to an unknown key", { reason: "UNKNOWN_KEY" });
    return key;
  }

  /** The integrity key new MACs are made with (the highest id). */
  integrityKey(): Buffer {
    const s = this.unsealed();
    return s.integrityKeys.get(s.activeIntegrityKeyId)!;
  }

  /** 0 while sealed. */
  get activeIntegrityKeyId(): number {
    return this.state?.activeIntegrityKeyId ?? 0;
  }

  get rootKeyId(): number {
    return this.state?.rootKeyId ?? 0;
  }

  /** An integrity key this replica holds, retired or active; undefined if it holds no such key. */
  integrityKeyById(id: number): Buffer | undefined {
    return this.unsealed().integrityKeys.get(id);
  }

  /** Every integrity key held, highest id first (retired ones verify only what they MAC'd). */
  integrityKeys(): Array<{ id: number; key: Buffer }> {
    return [...this.unsealed().integrityKeys].map(([id, key]) => ({ id, key })).sort((a, b) => b.id - a.id);
  }

  hasWrappingKey(id: number): boolean {
    return this.state?.wrappingKeys.has(id) ?? false;
  }

  /** The keyring ids this replica holds, for GetStatus. */
  keyringIds(): Array<{ id: number; purpose: "wrapping" | "integrity"; active: boolean }> {
    const s = this.state;
    if (s === undefined) return [];
    return [
      ...[...s.wrappingKeys.keys()].map((id) => ({ id, purpose: "wrapping" as const, active: id === s.activeWrappingKeyId })),
      ...[...s.integrityKeys.keys()].map((id) => ({ id, purpose: "integrity" as const, active: id === s.activeIntegrityKeyId })),
    ].sort((a, b) => a.id - b.id);
  }

  /**
   * A new keyring key with the given id, sealed under the root key held. The
   * caller stores `row` and, once committed, hands it to adoptKeyring; `key`
   * is its plaintext for work done in the same transaction (zero it after).
   */
  newKeyringKey(id: number, purpose: "wrapping" | "integrity"): { row: WrappedKeyringKey; key: Buffer } {
    const s = this.unsealed();
    const key = newKey();
    return { row: wrapKeyringKey(s.rootKey, s.rootKeyId, id, purpose, key), key };
  }

  /**
   * Takes up keyring keys read from the database: keys under the root key this
   * replica holds and with an id above its active key of that purpose become
   * active; lower ids are never (re-)activated. Wrapping keys whose rows are
   * gone (retired) are dropped when `complete` says `rows` is the whole keyring.
   * Returns whether anything changed.
   */
  adoptKeyring(rows: readonly WrappedKeyringKey[], complete: boolean): boolean {
    const s = this.state;
    if (s === undefined) return false;
    let changed = false;
    for (const k of rows) {
      if (k.rootKeyId !== s.rootKeyId) continue;
      const held = k.purpose === "integrity" ? s.integrityKeys : s.wrappingKeys;
      const active = k.purpose === "integrity" ? s.activeIntegrityKeyId : s.activeWrappingKeyId;
      if (held.has(k.id) || k.id < active) continue;
      let key: Buffer;
      try {
        key = open(s.rootKey, k.wrappedKey, keyringKeyAad(k.purpose, k.id, s.rootKeyId));
      } catch {
        this.logger.error("a keyring key in the database does not open under the root key (written outside Nexus?); ignored", { keyId: k.id });
        continue;
      }
      held.set(k.id, key);
      if (k.purpose === "integrity") s.activeIntegrityKeyId = Math.max(s.activeIntegrityKeyId, k.id);
      else s.activeWrappingKeyId = Math.max(s.activeWrappingKeyId, k.id);
      changed = true;
      this.logger.info("keyring key taken up", { keyId: k.id, purpose: k.purpose });
    }
    if (complete) {
      const present = new Set(rows.filter((k) => k.purpose === "wrapping").map((k) => k.id));
      for (const [id, key] of s.wrappingKeys) {
        if (id < s.activeWrappingKeyId && !present.has(id)) {
          key.fill(0);
          s.wrappingKeys.delete(id);
          changed = true;
        }
      }
    }
    return changed;
  }

  /**
   * Reads the keyring again and takes up what changed (LISTEN/NOTIFY, or a key
   * id seen in a row). If another replica rotated the root key, this one seals
   * itself: it must never take a new root key from anything a database writer
   * can read, so it needs Unseal (with the admin password).
   */
  async refreshKeyring(): Promise<boolean> {
    const rootKeyId = this.rootKeyId;
    if (rootKeyId === 0) return false;
    const generation = this.changes;
    const [active, rows, window] = await Promise.all([this.store.activeRootKeyId(), this.store.loadKeyring(rootKeyId), this.store.integrityWindow()]);
    if (this.changes !== generation || this.rootKeyId !== rootKeyId) return false;
    if (active !== undefined && active !== rootKeyId) {
      this.seal("the root key was rotated on another replica; unseal with the admin password");
      return true;
    }
    // Keys and window together, synchronously: a new integrity key is never active here without its window.
    const changed = this.adoptKeyring(rows, true);
    this.applyIntegrityWindow(window);
    return changed;
  }

  /** Reads the running rotation's re-MAC window (after an unseal). */
  async loadIntegrityWindow(): Promise<void> {
    const generation = this.changes;
    const window = await this.store.integrityWindow();
    if (this.changes === generation) this.applyIntegrityWindow(window);
  }

  /**
   * Opens the re-MAC window if `stored` names the active integrity key, its MAC
   * verifies under that key, and this process has not seen that key's window
   * closed; otherwise closes it for good for the active key.
   */
  applyIntegrityWindow(stored: StoredIntegrityWindow | undefined): void {
    const s = this.state;
    if (s === undefined) return;
    const active = s.activeIntegrityKeyId;
    const valid =
      stored !== undefined &&
      stored.newIntegrityKeyId === active &&
      stored.oldIntegrityKeyId < active &&
      active > this.integrityWindowClosedThrough &&
      s.integrityKeys.has(stored.oldIntegrityKeyId) &&
      macMatches(s.integrityKeys.get(active)!, INTEGRITY_WINDOW_MAC_LABEL, [stored.oldIntegrityKeyId, active], stored.mac);
    if (valid) {
      s.integrityWindow = { oldId: stored.oldIntegrityKeyId, newId: active };
      return;
    }
    if (stored !== undefined && stored.newIntegrityKeyId === active) {
      this.logger.error("a key rotation's re-MAC window does not verify (written outside Nexus?); rows under retired integrity keys are refused");
    }
    s.integrityWindow = "closed";
    this.integrityWindowClosedThrough = Math.max(this.integrityWindowClosedThrough, active);
  }

  /** The active integrity key with its id, for MACs that name their key (keyed-mac.ts). */
  activeIntegrityKey(): IntegrityKeyRef {
    const s = this.unsealed();
    return { id: s.activeIntegrityKeyId, key: s.integrityKeys.get(s.activeIntegrityKeyId)! };
  }

  /**
   * The key a per-secret row MAC'd under integrity key `id` verifies with: the
   * active key; the one a running rotation retired, only while its re-MAC
   * window is open (rows not re-MAC'd yet); nothing else. Throws UNAVAILABLE
   * (retry) for a key not taken up yet or while the window is being read.
   */
  integrityKeyForRow(id: number): Buffer | undefined {
    const s = this.unsealed();
    const active = s.activeIntegrityKeyId;
    if (id === active) return s.integrityKeys.get(active);
    if (id > active || s.integrityWindow === "unknown") {
      void (id > active ? this.refreshKeyring() : this.loadIntegrityWindow()).catch(() => {});
      throw new NexusError("unavailable", "the keyring is changing (a key rotation on another replica); retry in a moment", { reason: "KEYRING_CHANGING" });
    }
    const w = s.integrityWindow;
    if (w === "closed" || w.oldId !== id || w.newId !== active) return undefined;
    return s.integrityKeys.get(id);
  }

  /** The stored hierarchy, its KDF parameters checked before scrypt sees them. */
  private async loadHierarchy(): Promise<InitialKeys & { kdfParams: KdfParams }> {
    const keys = await this.store.loadActive();
    if (keys === undefined) {
      this.initializedSeen = false;
      throw notInitialized();
    }
    this.initializedSeen = true;
    const kdfParams = boundedKdfParams(keys.root.kdfParams);
    if (kdfParams === undefined) {
      this.logger.error("the stored key-derivation parameters are out of bounds; refusing to run scrypt with them (altered in the database?)");
      throw new NexusError("internal", "the stored key-derivation parameters are invalid; Nexus stays sealed (see the server log)", { reason: "INVALID_KDF_PARAMS" });
    }
    return { ...keys, kdfParams };
  }

  private unsealed(): Unsealed {
    if (this.state === undefined) throw this.sealedError();
    return this.state;
  }

  private install(state: Unsealed): void {
    this.state = state;
    this.changes++;
    this.sealListeners.forEach((l) => l(false));
  }

  // One scrypt at a time: each takes 128 MiB and a pool thread, and password
  // guessing must not get parallelism for free.
  private serializedKdf<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.kdfQueue.then(fn, fn);
    this.kdfQueue = run.catch(() => undefined);
    return run;
  }
}

function rootKeyChanged(): NexusError {
  return new NexusError("aborted", "the root key changed meanwhile (rotated, or sealed and unsealed); nothing was changed: retry", { reason: "ROOT_KEY_CHANGED" });
}

function sealedError(): NexusError {
  return new NexusError("failed_precondition", "Nexus is sealed: unseal it with the admin password", { reason: "SEALED" });
}

function notInitialized(): NexusError {
  return new NexusError("failed_precondition", "Nexus is not initialized: call OperatorService/Initialize with the superuser SVID and a new admin password", { reason: "NOT_INITIALIZED" });
}

function alreadyInitialized(): NexusError {
  return new NexusError("failed_precondition", "Nexus is already initialized", { reason: "ALREADY_INITIALIZED" });
}

/** A new admin password's rule (Initialize, ChangeAdminPassword); `field` names it in the refusal. */
export function validatePassword(password: string, field = "admin_password"): void {
  if ([...password].length < MIN_PASSWORD_LENGTH) {
    throw NexusError.invalidArgument(field, `must be at least ${MIN_PASSWORD_LENGTH} characters`, "PASSWORD_TOO_SHORT");
  }
}

function rootKeyAad(rootKeyId: number): Buffer {
  return associatedData("nexus/v1/root-key", rootKeyId);
}

function keyringKeyAad(purpose: string, id: number, rootKeyId: number): Buffer {
  return associatedData("nexus/v1/keyring-key", purpose, id, rootKeyId);
}

function wrapKeyringKey(rootKey: Buffer, rootKeyId: number, id: number, purpose: "wrapping" | "integrity", key: Buffer) {
  return { id, purpose, rootKeyId, wrappedKey: seal(rootKey, rootKeyId, key, keyringKeyAad(purpose, id, rootKeyId)), active: true };
}
