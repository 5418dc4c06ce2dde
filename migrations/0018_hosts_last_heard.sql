-- When the server last received a sample from each host, by the server's clock.
-- `last_seen` is the newest sample's own time, by the agent's clock: a host whose clock
-- runs a minute behind sends samples that are a minute old on arrival, and judged by
-- `last_seen` it looked silent while it reported every few seconds. The absent rule
-- (alert/eval.rs) judges silence by `last_heard`.
ALTER TABLE hosts ADD COLUMN last_heard TIMESTAMPTZ;
UPDATE hosts SET last_heard = last_seen;
