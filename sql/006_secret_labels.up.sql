-- Secret rotation (issue 12): CURRENT / PENDING / PREVIOUS labels and rotation
-- policies, on the secrets row so that a read finds its version and the labels
-- that name it in the row it already joins (no extra round trip).
--
-- Labels are bound by labels_mac: HMAC-SHA256 under the integrity key over
-- (secret id, path, current, pending, previous, label_epoch, latest_version).
-- label_epoch rises with every label change, and each replica remembers the
-- highest epoch it has seen per secret, so a replayed older row is refused.
--
-- SQL cannot compute a MAC, so rows that exist before this migration are
-- unbound (labels_mac NULL, label_epoch 0). An unbound row is accepted only in
-- the one shape this migration gives it — CURRENT = latest_version, no
-- PENDING, no PREVIOUS, epoch 0 — which is what a read meant before labels
-- existed; the first label change (a put, a promotion, a rotation) MACs it.
ALTER TABLE secrets
    ADD COLUMN current_version  integer CHECK (current_version >= 1),
    ADD COLUMN pending_version  integer CHECK (pending_version >= 1),
    ADD COLUMN previous_version integer CHECK (previous_version >= 1),
    ADD COLUMN label_epoch      bigint  NOT NULL DEFAULT 0 CHECK (label_epoch >= 0),
    ADD COLUMN labels_mac       bytea,
    -- The rotation policy as canonical JSON, and its MAC over (secret id, path,
    -- policy). NULL: not rotated.
    ADD COLUMN rotation         jsonb,
    ADD COLUMN rotation_mac     bytea,
    -- Scheduling hints, not MAC'd: altering them changes only when a verified
    -- policy runs. A claimed rotation pushes next_rotation_at out by a lease.
    ADD COLUMN next_rotation_at timestamptz,
    ADD COLUMN last_rotated_at  timestamptz;

UPDATE secrets SET current_version = latest_version WHERE latest_version > 0;

-- The scheduler's scan for due rotations.
CREATE INDEX secrets_next_rotation_at ON secrets (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
