-- When an outbox row last reached one of its recipients: a mail that reached part of its
-- route (one address still deferred) counts for the group's `group_interval_secs` from
-- then, as a mail sent to all would.
ALTER TABLE notification_outbox ADD COLUMN delivered_at TIMESTAMPTZ;

-- The weekly report's addresses still waiting after a temporary failure (a 4xx, a server
-- that stopped answering partway): they are sent the week again, the others are not.
ALTER TABLE report_deliveries ADD COLUMN pending TEXT[] NOT NULL DEFAULT '{}';
