-- PLACEHOLDER on branch ops-limits only: the migration runner wants contiguous numbers,
-- and 009 belongs to the peer-unseal work. Delete this pair when merging (010_idempotency follows 009).
SELECT 1;
