-- Drops the idempotency records: retries after this run again.
DROP TABLE idempotency_keys;
