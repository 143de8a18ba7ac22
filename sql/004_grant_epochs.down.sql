ALTER TABLE admin_credentials ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE admin_credentials DROP COLUMN mac;
DROP TRIGGER grant_epochs_changed ON grant_epochs;
DROP FUNCTION notify_grant_epoch_changed();
DROP TABLE grant_epochs;
