DROP TABLE secret_versions;
DROP TABLE secrets;
