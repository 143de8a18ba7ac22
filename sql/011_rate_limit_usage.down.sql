-- Drops the shared rate-limit usage: replicas limit alone until it is back.
DROP TABLE rate_limit_usage;
