-- Idempotent writes (issue 17 §5): one row per (caller SPIFFE ID, idempotency
-- key), written by the same statement or transaction as the change it
-- records, so a committed change always has its row and a change that rolled
-- back has none. The primary key is what makes a concurrent duplicate wait:
-- its insert blocks on the first call's uncommitted row, then fails once that
-- commits (the duplicate is answered with the first result).
--   request_mac:  keyed MAC (key id + HMAC-SHA-256 under a key derived from the integrity key,
--                 label nexus/v1/idempotency-request) of caller, method and
--                 the request's canonical JSON (map entries sorted): never a plain hash of a secret value.
--   response:     the response message's bytes (never a credential).
--   response_mac: keyed MAC binding caller, key, method, request_mac,
--                 response and created_at, so a database writer cannot make a
--                 retry return a result of its choosing, nor keep a record
--                 alive past 24 h or pick the time a replay reports.
--   created_at:   chosen by the server (in milliseconds) when the change is
--                 prepared, under response_mac; a version the change writes
--                 gets the same created_at.
-- Rows older than 24 h are ignored, and deleted by one replica at a time (advisory lock).
CREATE TABLE idempotency_keys (
  caller text NOT NULL,
  key text NOT NULL,
  rpc text NOT NULL,
  request_mac bytea NOT NULL,
  response bytea NOT NULL,
  response_mac bytea NOT NULL,
  created_at timestamptz NOT NULL,
  PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
