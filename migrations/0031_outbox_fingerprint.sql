-- Whether an alert's firing notice was sent, looked up when its resolve is due: a resolve
-- whose firing was mailed goes out even under a silence set meanwhile.
CREATE INDEX outbox_fingerprint ON notification_outbox (fingerprint, id) WHERE kind = 'firing' AND message_id IS NOT NULL;
