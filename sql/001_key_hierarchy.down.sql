DROP TABLE keyring_keys;
DROP TABLE root_keys;
