DROP TRIGGER keyring_keys_changed ON keyring_keys;
DROP FUNCTION notify_keyring_changed();
ALTER TABLE keyring_keys DROP COLUMN encryptions;
ALTER TABLE grant_epochs DROP COLUMN integrity_key_id;
DROP TABLE key_rotations;
