-- Audit events recorded while sealed are signed with the server's own
-- X.509-SVID key instead of MAC'd (the integrity key is not in memory then);
-- the signer's certificate chain is stored once, keyed by the SHA-256 of its
-- leaf. Checkpoints record the sequence numbers a replica gave up (a write
-- whose fate was unknown), so those are not reported as deleted. See
-- docs/adr/0003-audit-log.md. (Merge note: this migration follows 004 of the
-- main branch and must be numbered 005 there.)

CREATE TABLE audit_signers (
    certificate_sha256 bytea       PRIMARY KEY,         -- SHA-256 of the leaf certificate's DER
    certificate_chain  text        NOT NULL,            -- PEM: the leaf, then any intermediates
    added_at           timestamptz NOT NULL DEFAULT now()
);

-- Deliberately no foreign key: a row naming an unknown signer is reported by
-- VerifyAuditLog, which is where a database writer's work must show up.
ALTER TABLE audit_events
    ADD COLUMN signature bytea,                         -- over the event's canonical fields, sealed-time events only
    ADD COLUMN signer    bytea;                         -- audit_signers.certificate_sha256

-- Nothing is MAC'd after the fact any more: the index that found such rows goes.
DROP INDEX audit_events_unsealed;

-- Pairs (first, last) of inclusive ranges of sequence numbers given up; covered by the MAC.
ALTER TABLE audit_checkpoints ADD COLUMN given_up bigint[] NOT NULL DEFAULT '{}';
