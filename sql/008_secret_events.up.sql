-- WatchSecrets (issue 12): a log of what happened to secrets, written by
-- triggers on secrets and secret_versions so that no write path changes and
-- no write costs a round trip more. Events name a path, versions and labels,
-- never a value. A statement trigger NOTIFYs nexus_secret_events; each
-- replica LISTENs once and fans events out to its watchers.
--
-- Delivery order is (xid, id), not id: a sequence number is taken before
-- commit, so a transaction that took 10 can commit after one that took 11,
-- and a reader that had passed 11 would skip 10. Each event stores its
-- transaction's id; readers deliver only events whose xid is below
-- pg_snapshot_xmin(pg_current_snapshot()) — every such transaction has ended,
-- so nothing can appear behind a cursor. A long-running transaction (any that
-- holds an xid) delays delivery of everything newer until it ends.
CREATE TABLE secret_events (
    xid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id       bigint      GENERATED ALWAYS AS IDENTITY,
    time     timestamptz NOT NULL DEFAULT statement_timestamp(),
    type     text        NOT NULL CHECK (type IN ('VERSION_CREATED', 'PROMOTED', 'DELETED', 'UNDELETED', 'DESTROYED',
                                                  'PURGED', 'EXPIRED', 'METADATA_UPDATED', 'ROTATION_DUE')),
    path     text        COLLATE "C" NOT NULL,
    versions integer[]   NOT NULL DEFAULT '{}',
    labels   text[]      NOT NULL DEFAULT '{}',  -- CURRENT, PENDING, PREVIOUS: the labels versions[1] carries
    PRIMARY KEY (xid, id)
);
-- Retention cleanup.
CREATE INDEX secret_events_time ON secret_events (time);

-- The labels of version v on a secrets row.
CREATE FUNCTION secret_event_labels(v integer, cur integer, pend integer, prev integer) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_remove(ARRAY[CASE WHEN v = cur THEN 'CURRENT' END, CASE WHEN v = pend THEN 'PENDING' END,
                              CASE WHEN v = prev THEN 'PREVIOUS' END], NULL)
$$;

CREATE FUNCTION secret_events_on_secrets_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO secret_events (type, path, versions, labels)
    SELECT 'VERSION_CREATED', n.path, ARRAY[n.latest_version],
           secret_event_labels(n.latest_version, n.current_version, n.pending_version, n.previous_version)
    FROM new_rows n WHERE n.latest_version > 0;
    -- A first version staged PENDING is a value waiting to be promoted.
    INSERT INTO secret_events (type, path, versions, labels)
    SELECT 'ROTATION_DUE', n.path, ARRAY[n.pending_version], ARRAY['PENDING']
    FROM new_rows n WHERE n.pending_version > coalesce(n.current_version, 0);
    RETURN NULL;
END $$;

CREATE FUNCTION secret_events_on_secrets_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO secret_events (type, path, versions, labels)
    SELECT e.type, n.path, e.versions, e.labels
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    CROSS JOIN LATERAL (
        -- A put or rotation: latest_version rises (its label change is part of it).
        SELECT 'VERSION_CREATED' AS type, ARRAY[n.latest_version] AS versions,
               secret_event_labels(n.latest_version, n.current_version, n.pending_version, n.previous_version) AS labels
        WHERE n.latest_version > o.latest_version
        UNION ALL
        -- A promotion: labels move, no version is written.
        SELECT 'PROMOTED', ARRAY[n.current_version],
               secret_event_labels(n.current_version, n.current_version, n.pending_version, n.previous_version)
        WHERE n.latest_version = o.latest_version AND n.current_version IS NOT NULL
          AND (n.current_version, n.pending_version, n.previous_version) IS DISTINCT FROM (o.current_version, o.pending_version, o.previous_version)
        UNION ALL
        -- A newly staged PENDING version waits to be tested and promoted
        -- (GetSecretMetadata's rotation_due).
        SELECT 'ROTATION_DUE', ARRAY[n.pending_version], ARRAY['PENDING']
        WHERE n.pending_version > coalesce(n.current_version, 0) AND n.pending_version IS DISTINCT FROM o.pending_version
        UNION ALL
        -- An external rotation came due: the scheduler marks it by setting
        -- next_rotation_at to the due time it announces (at most once per CURRENT).
        SELECT 'ROTATION_DUE', ARRAY[n.current_version], ARRAY['CURRENT']
        WHERE n.rotation->'generator'->>'kind' = 'external' AND n.next_rotation_at IS DISTINCT FROM o.next_rotation_at
          AND n.next_rotation_at <= now()
        UNION ALL
        SELECT 'METADATA_UPDATED', '{}'::integer[], '{}'::text[]
        WHERE (n.max_versions, n.custom_metadata, n.expires_at, n.rotation) IS DISTINCT FROM (o.max_versions, o.custom_metadata, o.expires_at, o.rotation)
    ) e;
    RETURN NULL;
END $$;

CREATE FUNCTION secret_events_on_secrets_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO secret_events (type, path)
    SELECT CASE WHEN o.expires_at <= now() THEN 'EXPIRED' ELSE 'PURGED' END, o.path FROM old_rows o;
    RETURN NULL;
END $$;

CREATE FUNCTION secret_events_on_versions_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO secret_events (type, path, versions)
    SELECT c.type, s.path, array_agg(c.version ORDER BY c.version)
    FROM (
        SELECT n.secret_id, n.version,
               CASE WHEN o.ciphertext IS NOT NULL AND n.ciphertext IS NULL THEN 'DESTROYED'
                    WHEN o.deleted_at IS NULL AND n.deleted_at IS NOT NULL THEN 'DELETED'
                    WHEN o.deleted_at IS NOT NULL AND n.deleted_at IS NULL THEN 'UNDELETED' END AS type
        FROM old_rows o JOIN new_rows n ON n.secret_id = o.secret_id AND n.version = o.version
    ) c JOIN secrets s ON s.id = c.secret_id
    WHERE c.type IS NOT NULL
    GROUP BY c.type, s.path;
    RETURN NULL;
END $$;

CREATE FUNCTION secret_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Statement triggers fire for statements that inserted nothing too (every
    -- UPDATE of secrets runs the insert above); only real events notify, once
    -- per transaction (PostgreSQL folds identical notifications).
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('nexus_secret_events', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER secret_events_insert AFTER INSERT ON secrets
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION secret_events_on_secrets_insert();
CREATE TRIGGER secret_events_update AFTER UPDATE ON secrets
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION secret_events_on_secrets_update();
CREATE TRIGGER secret_events_delete AFTER DELETE ON secrets
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION secret_events_on_secrets_delete();
CREATE TRIGGER secret_events_versions_update AFTER UPDATE ON secret_versions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION secret_events_on_versions_update();
CREATE TRIGGER secret_events_notify AFTER INSERT ON secret_events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION secret_events_notify();
