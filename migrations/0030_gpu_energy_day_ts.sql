-- When each GPU's count of energy since 00:00 UTC starts (the sample whose counter is
-- energy_day_start): a sample of the same day from before it that arrives late (a spool
-- replayed after live samples, a back-fill) moves the start back to itself.
ALTER TABLE gpu_latest ADD COLUMN energy_day_ts TIMESTAMPTZ;
