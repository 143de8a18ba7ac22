// The key hierarchy in memory, and the seal state of this replica.
//
//   admin password -> scrypt -> KEK (dropped after use)
//     -> root key (root_keys.encrypted_key)
//       -> keyring: wrapping keys (wrap per-secret data keys) and the integrity key
//
// Sealed, this object holds no key material. Unsealed, it holds the root key
// and keyring in Buffers that seal() overwrites with zeros. Nothing above keys/
// ever sees a key; nothing below it sees plaintext.

import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import type { InitialKeys, RootKeyStore } from "../store/root-key-store.js";
import { associatedData, newKey, open, seal } from "./aead.js";
import { boundedKdfParams, DEFAULT_KDF_PARAMS, derivePasswordKeys, newSalt, passwordCheck, passwordCheckMatches, type KdfParams } from "./password-kdf.js";

const MIN_PASSWORD_LENGTH = 12;
const FIRST_ROOT_KEY_ID = 1;
const FIRST_WRAPPING_KEY_ID = 1;
const FIRST_INTEGRITY_KEY_ID = 2;
/** A failed password attempt costs this much more than the KDF itself. */
const FAILED_ATTEMPT_DELAY_MS = 1000;

interface Unsealed {
  readonly rootKeyId: number;
  readonly rootKey: Buffer;
  readonly wrappingKeys: ReadonlyMap<number, Buffer>;
  readonly activeWrappingKeyId: number;
  readonly integrityKey: Buffer;
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
      integrityKey,
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
    // Keys opened so far; zeroed if unsealing fails before they are installed.
    const opened: Buffer[] = [];
    try {
      const rootKey = open(derived.kek, keys.root.encryptedKey, rootKeyAad(keys.root.id));
      opened.push(rootKey);
      const wrappingKeys = new Map<number, Buffer>();
      let activeWrappingKeyId = 0;
      let integrityKey: Buffer | undefined;
      for (const k of keys.keyring) {
        const key = open(rootKey, k.wrappedKey, keyringKeyAad(k.purpose, k.id, keys.root.id));
        opened.push(key);
        if (k.purpose === "integrity") integrityKey = key;
        else {
          wrappingKeys.set(k.id, key);
          if (k.active) activeWrappingKeyId = k.id;
        }
      }
      if (integrityKey === undefined || activeWrappingKeyId === 0) {
        throw new NexusError("internal", "the keyring is incomplete", { reason: "KEYRING_INCOMPLETE" });
      }
      if (this.state) this.seal("re-unsealed");
      this.install({ rootKeyId: keys.root.id, rootKey, wrappingKeys, activeWrappingKeyId, integrityKey });
      opened.length = 0; // installed: sealing zeroes them from now on
      this.logger.info("unsealed", { rootKeyId: keys.root.id, activeKeyringKeyId: activeWrappingKeyId });
    } catch (err) {
      for (const key of opened) key.fill(0);
      throw err;
    } finally {
      derived.kek.fill(0);
      derived.checkKey.fill(0);
    }
  }

  /** Checks the admin password without changing the seal state (Login). */
  async verifyPassword(password: string): Promise<void> {
    if (password.length === 0) throw NexusError.invalidArgument("admin_password", "must not be empty", "EMPTY_PASSWORD");
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
  }

  /** Overwrites every key in memory with zeros and forgets it. */
  seal(reason = "requested"): void {
    const s = this.state;
    if (s === undefined) return;
    this.state = undefined;
    this.changes++;
    s.rootKey.fill(0);
    s.integrityKey.fill(0);
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

  integrityKey(): Buffer {
    return this.unsealed().integrityKey;
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

function sealedError(): NexusError {
  return new NexusError("failed_precondition", "Nexus is sealed: unseal it with the admin password", { reason: "SEALED" });
}

function notInitialized(): NexusError {
  return new NexusError("failed_precondition", "Nexus is not initialized: call OperatorService/Initialize with the superuser SVID and a new admin password", { reason: "NOT_INITIALIZED" });
}

function alreadyInitialized(): NexusError {
  return new NexusError("failed_precondition", "Nexus is already initialized", { reason: "ALREADY_INITIALIZED" });
}

function validatePassword(password: string): void {
  if ([...password].length < MIN_PASSWORD_LENGTH) {
    throw NexusError.invalidArgument("admin_password", `must be at least ${MIN_PASSWORD_LENGTH} characters`, "PASSWORD_TOO_SHORT");
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
