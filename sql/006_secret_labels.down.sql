-- Back to "current = latest_version": labels, policies and schedules are dropped.
DROP INDEX secrets_next_rotation_at;
ALTER TABLE secrets
    DROP COLUMN current_version,
    DROP COLUMN pending_version,
    DROP COLUMN previous_version,
    DROP COLUMN label_epoch,
    DROP COLUMN labels_mac,
    DROP COLUMN rotation,
    DROP COLUMN rotation_mac,
    DROP COLUMN next_rotation_at,
    DROP COLUMN last_rotated_at;
