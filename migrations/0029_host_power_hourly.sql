-- Power and GPU use per host and hour, summed from `energy_hourly` by the energy
-- accounting for every hour it (re)computes, next to the racks' sums (which are summed
-- from these). A pool's page and the capacity job read a pool's hosts' last 7 days as 168
-- rows a host instead of 168 × (GPUs + 1).
CREATE TABLE host_power_hourly (
    hour         TIMESTAMPTZ NOT NULL,
    host_id      BIGINT NOT NULL,
    -- Mean power of the host's GPUs and the rest of it, W: each row's mean over the
    -- minutes it reported, held to its busiest minute (`analytics::hour_mean_watts!`).
    watts        DOUBLE PRECISION NOT NULL,
    -- Its GPUs (null: no GPU row that hour): the sum of their per-minute mean
    -- utilization, their minutes with samples, and the energy of their idle minutes, J.
    gpu_util_sum DOUBLE PRECISION,
    gpu_minutes  BIGINT,
    gpu_idle_j   DOUBLE PRECISION,
    PRIMARY KEY (host_id, hour)
);
-- Rows are written hour after hour: a block range index finds an hour's rows (to sum it
-- again, or drop it at retention) at a fraction of a second B-tree's cost per write.
CREATE INDEX host_power_hourly_hour ON host_power_hourly USING brin (hour);

-- Hours summed before hosts' sums were kept are summed again, racks and hosts together
-- (the capacity job sums the missing hours of its window once).
DELETE FROM rack_power_hours;
