// Envelope encryption of secret versions. Each secret has its own data key,
// wrapped by a keyring key; each version is sealed by the data key. Associated
// data binds a version to (format, data-key id, secret id, path, version) and a
// wrapped data key to (secret id, path, keyring key id), so ciphertext moved to
// another row, version or path fails to open.
//
// Unwrapped data keys are cached (bounded, LRU) to keep reads to one round trip
// and one AES operation; an entry is used only if the wrapped key in the row is
// byte-identical to the one it came from. Plaintext values are never cached.
// An entry holds the five fields of its reference in memory of its own, never
// the object it was given: a row read by the driver carries its ciphertext,
// labels and dates as slices of shared buffers, and 10,000 entries that kept
// rows held ~58 MB (heap snapshot under load, bench/results/experiments/memory.md).

import { associatedData, newKey, open, ownedCopy, seal, sealedKeyId, undecryptable, FORMAT_V1 } from "./aead.js";
import type { KeyManager } from "./key-manager.js";

export interface DataKeyRef {
  readonly secretId: string;
  readonly path: string;
  readonly dataKeyId: number;
  readonly keyringKeyId: number;
  readonly wrappedDataKey: Buffer;
}

export interface NewDataKey {
  readonly dataKeyId: number;
  readonly keyringKeyId: number;
  readonly wrappedDataKey: Buffer;
  readonly dataKey: Buffer;
}

type SecretData = Record<string, string>;

const FIRST_DATA_KEY_ID = 1;

export class SecretCipher {
  private readonly cache = new Map<string, { ref: DataKeyRef; key: Buffer }>();

  constructor(
    private readonly keys: KeyManager,
    private readonly cacheSize = 10_000,
  ) {
    keys.onSealChange((sealed) => sealed && this.clear());
  }

  newDataKey(secretId: string, path: string, dataKeyId = FIRST_DATA_KEY_ID): NewDataKey {
    const wrapping = this.keys.activeWrappingKey();
    const dataKey = newKey();
    const wrappedDataKey = seal(wrapping.key, wrapping.id, dataKey, dataKeyAad(secretId, path, wrapping.id));
    this.remember({ secretId, path, dataKeyId, keyringKeyId: wrapping.id, wrappedDataKey }, dataKey);
    return { dataKeyId, keyringKeyId: wrapping.id, wrappedDataKey, dataKey };
  }

  /**
   * A fresh data key for a secret (the next id) and its versions re-encrypted
   * under it: after a key rotation, so no version stays under a data key that
   * existed before. Synchronous; the old data key is taken and used here.
   */
  replaceDataKey(ref: DataKeyRef, versions: ReadonlyArray<{ version: number; ciphertext: Buffer }>): { key: NewDataKey; versions: Array<{ version: number; ciphertext: Buffer }> } {
    const oldKey = this.dataKey(ref);
    const opened = versions.map((v) => {
      if (sealedKeyId(v.ciphertext) !== ref.dataKeyId) throw undecryptable();
      return { version: v.version, plaintext: open(oldKey, v.ciphertext, versionAad(ref.dataKeyId, ref.secretId, ref.path, v.version)) };
    });
    try {
      const key = this.newDataKey(ref.secretId, ref.path, ref.dataKeyId + 1);
      const next = { secretId: ref.secretId, path: ref.path, dataKeyId: key.dataKeyId };
      return { key, versions: opened.map((o) => ({ version: o.version, ciphertext: this.encryptVersion(next, key.dataKey, o.version, o.plaintext) })) };
    } finally {
      opened.forEach((o) => o.plaintext.fill(0));
    }
  }

  dataKey(ref: DataKeyRef): Buffer {
    const cached = this.cache.get(ref.secretId);
    // A hit must match the whole binding, not just the bytes: a row whose path or
    // key ids were changed in SQL has to go through the real unwrap (and fail).
    if (cached && sameBinding(cached.ref, ref)) {
      this.cache.delete(ref.secretId);
      this.cache.set(ref.secretId, cached);
      return cached.key;
    }
    if (sealedKeyId(ref.wrappedDataKey) !== ref.keyringKeyId) throw undecryptable();
    const opened = open(this.keys.wrappingKey(ref.keyringKeyId), ref.wrappedDataKey, dataKeyAad(ref.secretId, ref.path, ref.keyringKeyId));
    const key = ownedCopy(opened);
    opened.fill(0);
    this.remember(ref, key);
    return key;
  }

  /**
   * The data key of `ref` wrapped again under the active wrapping key (key
   * rotation); the data key itself, and so every version, stays as it is.
   * Synchronous: keys are taken and used here, never across an await.
   */
  rewrap(ref: DataKeyRef): { keyringKeyId: number; wrappedDataKey: Buffer } {
    if (sealedKeyId(ref.wrappedDataKey) !== ref.keyringKeyId) throw undecryptable();
    const wrapping = this.keys.activeWrappingKey();
    const dataKey = open(this.keys.wrappingKey(ref.keyringKeyId), ref.wrappedDataKey, dataKeyAad(ref.secretId, ref.path, ref.keyringKeyId));
    try {
      return { keyringKeyId: wrapping.id, wrappedDataKey: seal(wrapping.key, wrapping.id, dataKey, dataKeyAad(ref.secretId, ref.path, wrapping.id)) };
    } finally {
      dataKey.fill(0);
    }
  }

  encryptVersion(ref: Omit<DataKeyRef, "keyringKeyId" | "wrappedDataKey">, dataKey: Buffer, version: number, plaintext: Buffer): Buffer {
    return seal(dataKey, ref.dataKeyId, plaintext, versionAad(ref.dataKeyId, ref.secretId, ref.path, version));
  }

  decryptVersion(ref: DataKeyRef, version: number, ciphertext: Buffer): SecretData {
    if (sealedKeyId(ciphertext) !== ref.dataKeyId) throw undecryptable();
    const plaintext = open(this.dataKey(ref), ciphertext, versionAad(ref.dataKeyId, ref.secretId, ref.path, version));
    try {
      return JSON.parse(plaintext.toString("utf8")) as SecretData;
    } finally {
      plaintext.fill(0);
    }
  }

  forget(secretId: string): void {
    const entry = this.cache.get(secretId);
    if (entry) {
      entry.key.fill(0);
      this.cache.delete(secretId);
    }
  }

  private remember(ref: DataKeyRef, key: Buffer): void {
    const secretId = ref.secretId;
    this.forget(secretId);
    const kept: DataKeyRef = { secretId, path: ref.path, dataKeyId: ref.dataKeyId, keyringKeyId: ref.keyringKeyId, wrappedDataKey: ownedCopy(ref.wrappedDataKey) };
    this.cache.set(secretId, { ref: kept, key });
    if (this.cache.size > this.cacheSize) {
      const oldest = this.cache.keys().next().value as string;
      this.forget(oldest);
    }
  }

  private clear(): void {
    for (const entry of this.cache.values()) entry.key.fill(0);
    this.cache.clear();
  }
}

function sameBinding(a: DataKeyRef, b: DataKeyRef): boolean {
  return a.path === b.path && a.keyringKeyId === b.keyringKeyId && a.dataKeyId === b.dataKeyId && a.wrappedDataKey.equals(b.wrappedDataKey);
}

function dataKeyAad(secretId: string, path: string, keyringKeyId: number): Buffer {
  return associatedData("nexus/v1/data-key", uuidBytes(secretId), path, keyringKeyId);
}

function versionAad(dataKeyId: number, secretId: string, path: string, version: number): Buffer {
  return associatedData("nexus/v1/secret-version", FORMAT_V1, dataKeyId, uuidBytes(secretId), path, version);
}

function uuidBytes(id: string): Buffer {
  return Buffer.from(id.replace(/-/g, ""), "hex");
}

