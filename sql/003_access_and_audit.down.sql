DROP TABLE audit_checkpoints;
DROP TABLE audit_events;
DROP TABLE auth_failures;
DROP TABLE admin_credentials;
DROP TRIGGER policies_changed ON policies;
DROP FUNCTION notify_policies_changed();
DROP TABLE policies;
