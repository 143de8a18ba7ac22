-- Drops the watch event log and the triggers that fill it.
DROP TRIGGER secret_events_insert ON secrets;
DROP TRIGGER secret_events_update ON secrets;
DROP TRIGGER secret_events_delete ON secrets;
DROP TRIGGER secret_events_versions_update ON secret_versions;
DROP TABLE secret_events;
DROP FUNCTION secret_events_on_secrets_insert();
DROP FUNCTION secret_events_on_secrets_update();
DROP FUNCTION secret_events_on_secrets_delete();
DROP FUNCTION secret_events_on_versions_update();
DROP FUNCTION secret_events_notify();
DROP FUNCTION secret_event_labels(integer, integer, integer, integer);
