-- Versioned secrets. A secret row holds its path, bookkeeping and its data key
-- wrapped by a keyring key; each version row holds ciphertext under that data
-- key. Versions are rows keyed by (secret, version), never reused.

CREATE TABLE secrets (
    id               uuid        PRIMARY KEY,                 -- chosen by Nexus: it is bound into every ciphertext
    path             text        COLLATE "C" NOT NULL,        -- byte order: listing and keyset pagination
    latest_version   integer     NOT NULL DEFAULT 0 CHECK (latest_version >= 0),
    max_versions     integer     NOT NULL DEFAULT 10 CHECK (max_versions BETWEEN 1 AND 1000),
    custom_metadata  jsonb       NOT NULL DEFAULT '{}'::jsonb, -- not secret, stored in clear so it can be filtered
    data_key_id      integer     NOT NULL DEFAULT 1,
    wrapped_data_key bytea       NOT NULL,                    -- AES-256-GCM under keyring key keyring_key_id
    keyring_key_id   integer     NOT NULL REFERENCES keyring_keys (id) ON DELETE RESTRICT,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    CONSTRAINT secrets_path_length CHECK (char_length(path) BETWEEN 1 AND 255)
);

-- Lookups by path, prefix range scans and keyset pagination (ORDER BY path).
CREATE UNIQUE INDEX secrets_path ON secrets (path);
-- The expiry job.
CREATE INDEX secrets_expires_at ON secrets (expires_at) WHERE expires_at IS NOT NULL;
-- Keyring rotation finds the data keys a keyring key wraps.
CREATE INDEX secrets_keyring_key_id ON secrets (keyring_key_id);

CREATE TABLE secret_versions (
    secret_id  uuid        NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version    integer     NOT NULL CHECK (version >= 1),
    ciphertext bytea,                                          -- NULL once destroyed
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text        NOT NULL,                           -- SPIFFE ID of the writer
    deleted_at timestamptz,                                    -- soft delete
    PRIMARY KEY (secret_id, version)
);
