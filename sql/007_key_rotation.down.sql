DROP TRIGGER secrets_data_key_origin ON secrets;
DROP FUNCTION secrets_default_data_key_origin();
ALTER TABLE secrets DROP COLUMN data_key_origin_key_id;
DROP TRIGGER keyring_keys_changed ON keyring_keys;
DROP FUNCTION notify_keyring_changed();
ALTER TABLE keyring_keys DROP COLUMN encryptions;
ALTER TABLE grant_epochs DROP COLUMN integrity_key_id;
DROP TABLE key_rotations;
