-- The key hierarchy (seed 000): the root key sealed with a key derived from the
-- admin password, and the keyring of keys the root key wraps. Nothing here is
-- usable without the password: every key column holds AES-256-GCM ciphertext.

CREATE TABLE root_keys (
    id              integer     PRIMARY KEY,            -- key term, 1, 2, 3… across rotations
    encrypted_key   bytea       NOT NULL,               -- root key sealed under the KEK = scrypt(password)
    kdf_salt        bytea       NOT NULL,
    kdf_params      jsonb       NOT NULL,               -- {"alg":"scrypt","N":131072,"r":8,"p":1}
    password_check  bytea       NOT NULL,               -- HMAC-SHA256 keyed by a key derived from the KEK
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_rotated_at timestamptz
);

-- One active root key; any number of retired ones (seed 000's UNIQUE (active)
-- also forbade a second inactive key).
CREATE UNIQUE INDEX root_keys_one_active ON root_keys (active) WHERE active;

CREATE TABLE keyring_keys (
    id          integer     PRIMARY KEY,                -- referenced by every wrapped data key
    purpose     text        NOT NULL CHECK (purpose IN ('wrapping', 'integrity')),
    root_key_id integer     NOT NULL REFERENCES root_keys (id) ON DELETE RESTRICT,
    wrapped_key bytea       NOT NULL,                   -- sealed by the root key; AAD binds id and purpose
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One active key per purpose; retired wrapping keys stay until no data key uses them.
CREATE UNIQUE INDEX keyring_keys_one_active ON keyring_keys (purpose) WHERE active;
CREATE INDEX keyring_keys_root_key_id ON keyring_keys (root_key_id);
