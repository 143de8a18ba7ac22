-- Drops the replica adverts and the cluster seal record (peer unseal, ADR 0012).
DROP TABLE cluster_seal;
DROP TABLE replica_adverts;
