-- Freshness for rows that grant something, or vouch for something (hardening,
-- issue 10): the policies, the admin credentials, and each audit replica's
-- latest checkpoint (what VerifyAuditLog trusts as written). A row's own
-- MAC stops a database writer from forging or altering it, not from copying
-- back a row that was deleted (a removed policy, a revoked admin token). Each
-- such set is therefore bound
-- as a whole by one MAC'd row here: a counter that every change raises and a
-- digest of the MACs of every row in the set. A replica refuses a set whose
-- digest does not match, or whose epoch is lower than one it has seen.

CREATE TABLE grant_epochs (
    name   text   PRIMARY KEY CHECK (name IN ('policies', 'admin_credentials', 'audit_checkpoints')),
    epoch  bigint NOT NULL CHECK (epoch >= 0),
    digest bytea,           -- SHA-256 over the MACs of the set's rows, in key order
    mac    bytea            -- HMAC-SHA256 under the integrity key over (name, epoch, digest);
                            -- NULL only before the first change (epoch 0, an empty set)
);

INSERT INTO grant_epochs (name, epoch) VALUES ('policies', 0), ('admin_credentials', 0), ('audit_checkpoints', 0);

-- Every new epoch is announced, so each replica raises the epoch it will
-- accept no lower than at once (not only when it next reads the set); a new
-- policy epoch also makes every replica reload, as a policy change does.
CREATE FUNCTION notify_grant_epoch_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_grant_epochs', NEW.name);
    IF NEW.name = 'policies' THEN
        PERFORM pg_notify('nexus_policies', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER grant_epochs_changed AFTER UPDATE ON grant_epochs
    FOR EACH ROW EXECUTE FUNCTION notify_grant_epoch_changed();

-- Admin credential rows get a MAC of their own (covering their expiry), so a
-- revoked credential cannot come back with a later expiry. Credentials issued
-- before this migration carry none: they are revoked here, and admins log in
-- again.
DELETE FROM admin_credentials;
ALTER TABLE admin_credentials ADD COLUMN mac bytea NOT NULL;
ALTER TABLE admin_credentials ALTER COLUMN created_at DROP DEFAULT;
