ALTER TABLE audit_checkpoints DROP COLUMN given_up;
CREATE INDEX audit_events_unsealed ON audit_events (replica_id) WHERE mac IS NULL;
ALTER TABLE audit_events DROP COLUMN signer, DROP COLUMN signature;
DROP TABLE audit_signers;
