-- Rate limits shared across replicas (issue 17 §6). Every
-- NEXUS_RATE_LIMIT_SYNC_INTERVAL each replica writes, in one statement, the
-- tokens its callers took from their buckets since its last write, for callers
-- whose usage was significant (quiet callers are never written), as one batch
-- numbered `seq` (per replica, increasing), and reads the other replicas'
-- fresh batches it has not applied yet; each replica takes that usage from
-- its own buckets. Nothing on the call path reads this table.
--   instance_id: the replica's instance ID (the audit log's replica ID).
--   kind:        'calls' (key = the caller's SPIFFE ID) or 'auth_failures'
--                (key = a SPIFFE ID or a client certificate's SHA-256 fingerprint).
--   tokens:      tokens taken on that replica in the batch's interval.
-- Usage only ever takes tokens: a row written by anyone else can deny a
-- caller service for a while, never raise its rate (see threat-model.md).
-- Rows older than a few intervals are deleted by the replicas' writes.
CREATE TABLE rate_limit_usage (
    instance_id  text        NOT NULL CHECK (length(instance_id) BETWEEN 1 AND 128),
    seq          bigint      NOT NULL CHECK (seq > 0),
    kind         text        NOT NULL CHECK (kind IN ('calls', 'auth_failures')),
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 2048),
    tokens       integer     NOT NULL CHECK (tokens > 0),
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, seq, kind, key)
);
CREATE INDEX rate_limit_usage_published_at ON rate_limit_usage (published_at);
