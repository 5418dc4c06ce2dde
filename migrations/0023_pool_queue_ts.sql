-- Scheduler queue reports are deleted by age with pool demand (the maintenance job's
-- retention): by time, over all pools.
CREATE INDEX pool_queue_ts ON pool_queue (ts);
