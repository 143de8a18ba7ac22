-- Key rotation (issue 11). The active keyring key of each purpose is the one
-- with the highest id; the `active` flag is kept for people reading the table
-- and is never trusted by a replica. Retired integrity keys stay (only to
-- verify audit events MAC'd under them); a retired wrapping key's row is
-- deleted once no data key references it.

-- One row per rotation: where it stands, so a rotation survives kill -9 and is
-- resumed by the next replica to unseal. At most one runs at a time.
CREATE TABLE key_rotations (
    id                   bigserial   PRIMARY KEY,
    phase                text        NOT NULL CHECK (phase IN ('creating_keys', 'rewrapping', 'remacing', 'retiring', 'done')),
    reencrypt            boolean     NOT NULL DEFAULT false,
    old_wrapping_key_id  integer     NOT NULL,
    new_wrapping_key_id  integer     NOT NULL,
    new_integrity_key_id integer     NOT NULL,
    done                 bigint      NOT NULL DEFAULT 0,
    total                bigint      NOT NULL DEFAULT 0,
    resume_after         uuid,                    -- keyset cursor of the re-wrap (secrets.id order)
    started_at           timestamptz NOT NULL DEFAULT now(),
    started_by           text        NOT NULL,
    finished_at          timestamptz,
    worker               text,                    -- the replica driving it, while its lease lasts
    lease_until          timestamptz
);
CREATE UNIQUE INDEX key_rotations_one_running ON key_rotations ((true)) WHERE phase <> 'done';

-- Which integrity key sealed each grant set (its rows and its epoch are
-- re-MAC'd together, in the rotation's key transaction). 2 is the first
-- integrity key Initialize creates.
ALTER TABLE grant_epochs ADD COLUMN integrity_key_id integer NOT NULL DEFAULT 2;

-- Encryptions under each wrapping key (AES-GCM with random nonces must stay
-- far below 2^32 per key); the scheduler rotates past a limit.
ALTER TABLE keyring_keys ADD COLUMN encryptions bigint NOT NULL DEFAULT 0;

-- Every unsealed replica picks up keyring keys another replica created (and
-- seals itself when it sees the keyring moved under a new root key).
CREATE FUNCTION notify_keyring_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_keyring', '');
    RETURN NULL;
END $$;
CREATE TRIGGER keyring_keys_changed AFTER INSERT OR UPDATE OR DELETE ON keyring_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_keyring_changed();

-- The wrapping key that was active when each secret's data key was made (a
-- re-wrap changes keyring_key_id, not this): a data key older than the active
-- wrapping key is replaced, with every live version re-encrypted, on the
-- secret's next write after a rotation.
-- A row inserted without it (tools, restores of older dumps) takes its wrapping key.
ALTER TABLE secrets ADD COLUMN data_key_origin_key_id integer;
UPDATE secrets SET data_key_origin_key_id = keyring_key_id;
ALTER TABLE secrets ALTER COLUMN data_key_origin_key_id SET NOT NULL;
CREATE FUNCTION secrets_default_data_key_origin() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.data_key_origin_key_id := coalesce(NEW.data_key_origin_key_id, NEW.keyring_key_id);
    RETURN NEW;
END $$;
CREATE TRIGGER secrets_data_key_origin BEFORE INSERT ON secrets
    FOR EACH ROW EXECUTE FUNCTION secrets_default_data_key_origin();

-- Label states and rotation policies (per-secret rows) are re-MAC'd in
-- batches in the rotation's remacing phase; their stored MACs name their key
-- (4-byte key id, then the HMAC). While that runs, a replica accepts rows
-- under the retired integrity key only if the rotation's window is open:
-- integrity_window_mac, MAC'd under the new key over (old id, new id), set in
-- the start transaction and cleared when the re-MAC is done.
ALTER TABLE key_rotations
    ADD COLUMN old_integrity_key_id integer,
    ADD COLUMN integrity_window_mac bytea;
