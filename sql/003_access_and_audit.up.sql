-- Access policies, admin credentials (sessions and admin tokens), failed
-- password attempts, and the audit log. Rows that grant or prove anything carry
-- a MAC under the integrity key, so writing the database is not enough to
-- grant access or rewrite history.

CREATE TABLE policies (
    id                uuid        PRIMARY KEY,
    name              text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    spiffe_id_pattern text        NOT NULL,
    path_pattern      text        NOT NULL,
    permissions       text[]      NOT NULL,
    created_at        timestamptz NOT NULL,
    created_by        text        NOT NULL,
    updated_at        timestamptz NOT NULL,
    mac               bytea       NOT NULL    -- HMAC-SHA256 under the integrity key over every column above
);

-- Names are unique regardless of case.
CREATE UNIQUE INDEX policies_name_ci ON policies (lower(name));

-- Every policy change notifies the replicas, which reload their compiled policies.
CREATE FUNCTION notify_policies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_policies', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION notify_policies_changed();

-- Admin sessions (Login) and named admin tokens. The token itself is never
-- stored: token_hmac = HMAC-SHA256(integrity key, token).
CREATE TABLE admin_credentials (
    token_hmac    bytea       PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('session', 'token')),
    name          text,                                  -- admin tokens only
    spiffe_id     text        NOT NULL,                  -- only this SPIFFE ID may present it
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    last_activity timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT admin_credentials_expiry CHECK (expires_at > created_at),
    CONSTRAINT admin_credentials_token_name CHECK ((kind = 'token') = (name IS NOT NULL))
);

CREATE UNIQUE INDEX admin_credentials_token_name ON admin_credentials (lower(name)) WHERE kind = 'token';
CREATE INDEX admin_credentials_expires_at ON admin_credentials (expires_at);

-- Failed Login/Unseal attempts per caller: exponential backoff every replica enforces.
CREATE TABLE auth_failures (
    spiffe_id       text        PRIMARY KEY,
    failures        integer     NOT NULL,
    last_failure_at timestamptz NOT NULL,
    locked_until    timestamptz NOT NULL
);

-- The audit log: one row per RPC (except health and reflection). Each replica
-- numbers its events gaplessly (replica_id, sequence); mac covers every column
-- but id. (replica_id, sequence) is deliberately not unique, so a duplicated
-- event is visible to verification instead of being refused by a constraint
-- an attacker could drop anyway.
CREATE TABLE audit_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica_id  text        NOT NULL,
    sequence    bigint      NOT NULL,
    time        timestamptz NOT NULL,
    request_id  text        NOT NULL,
    caller      text        NOT NULL,
    rpc         text        NOT NULL,
    path        text,
    version     integer,
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
    code        text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    mac         bytea                                    -- NULL while recorded sealed; MAC'd once unsealed
);

CREATE INDEX audit_events_replica_sequence ON audit_events (replica_id, sequence);
CREATE INDEX audit_events_time ON audit_events (time, id);
CREATE INDEX audit_events_unsealed ON audit_events (replica_id) WHERE mac IS NULL;

-- Per replica, the highest sequence known written and the lowest one kept
-- (after pruning), MAC'd; exportable to keep a copy outside the database.
CREATE TABLE audit_checkpoints (
    replica_id     text        NOT NULL,
    written_at     timestamptz NOT NULL,
    first_sequence bigint      NOT NULL,
    last_sequence  bigint      NOT NULL,
    final          boolean     NOT NULL DEFAULT false,   -- written at shutdown: nothing follows
    mac            bytea       NOT NULL,
    PRIMARY KEY (replica_id, written_at)
);
