-- Each host's GPUs and disk per hour, as the forecast job reads them: kept by the rollup
-- job for every quarter-hour it rolls up (late minutes and back-fills included), so the
-- hourly job reads 28 days × hosts instead of 28 days × GPUs × 4 quarter-hours (at 16,000
-- GPUs: 1.3 million rows instead of 43 million).
CREATE TABLE forecast_hourly (
    hour       TIMESTAMPTZ NOT NULL,
    host_id    BIGINT NOT NULL,
    -- GPUs with a utilization mean this hour, and the sum of those means (%).
    util_gpus  INT NOT NULL DEFAULT 0,
    util_sum   DOUBLE PRECISION,
    -- GPUs with a power mean this hour, and the sum of those means (W).
    power_gpus INT NOT NULL DEFAULT 0,
    power_sum  DOUBLE PRECISION,
    -- Mean filesystem space used (bytes), if the host reports it.
    disk_used  DOUBLE PRECISION,
    PRIMARY KEY (hour, host_id)
);

-- Hours summed for every host (the forecast job sums the ones missing here once: history
-- rolled up before this table existed, or imported).
CREATE TABLE forecast_hours (
    hour TIMESTAMPTZ PRIMARY KEY
);
