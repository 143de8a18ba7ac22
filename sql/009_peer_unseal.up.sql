-- Peer unseal (issue 16 §3, ADR 0012). Replicas advertise the address other
-- replicas dial for ReplicaService/RequestUnsealKeys, with a heartbeat; a
-- sealed replica tries only adverts with a fresh heartbeat. An advert is a
-- hint, never a credential: the requester accepts keys only from an endpoint
-- that proves the server's SPIFFE ID (mTLS and a signed handshake), so a row
-- written by anyone else can only make it try a wrong address.
CREATE TABLE replica_adverts (
    instance_id  text        PRIMARY KEY CHECK (length(instance_id) BETWEEN 1 AND 128),
    address      text        NOT NULL CHECK (length(address) BETWEEN 3 AND 300),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- The cluster seal: one row, changed by Seal(scope CLUSTER) (sealed) and by an
-- Unseal with the admin password (lifted). `epoch` counts the changes; `mac`
-- is a keyed MAC (key id + HMAC, keys/keyed-mac.ts) under an integrity key
-- over (epoch, sealed, changed_by), so only a replica holding the keys can
-- write a row that verifies. A replica holding keys refuses every handover
-- while the row is sealed, does not verify, or is older than one it has seen;
-- a sealed replica does not ask while the row says sealed. A database writer
-- can therefore deny peer unseal, but not lift a seal (see threat-model.md).
CREATE TABLE cluster_seal (
    id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch      bigint      NOT NULL CHECK (epoch > 0),
    sealed     boolean     NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text        NOT NULL,
    mac        bytea       NOT NULL
);
