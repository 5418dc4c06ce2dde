-- The newest sample of every host and GPU, kept by ingest in the same transaction as the
-- samples (issue 5). Pages that show "now" (fleet KPIs and heatmap, host and GPU
-- headers) read one row per host / GPU here instead of searching the time-partitioned
-- sample tables once per GPU. A row only ever moves forward in time: a late or replayed
-- sample older than the stored one leaves it alone.
-- Keyed by host_id like the sample tables (no cross-host foreign key, Citus-ready).

-- The UTC calendar day of a time (used to restart the daily energy count).
CREATE FUNCTION rackwatch_utc_day(t TIMESTAMPTZ) RETURNS DATE
LANGUAGE sql IMMUTABLE AS $$ SELECT (t AT TIME ZONE 'UTC')::date $$;

CREATE TABLE host_latest (
    host_id                BIGINT PRIMARY KEY,
    ts                     TIMESTAMPTZ NOT NULL,
    cpu_util_pct           REAL,
    load1                  REAL,
    mem_used_bytes         BIGINT,
    mem_total_bytes        BIGINT,
    disk_read_bytes_per_s  DOUBLE PRECISION,
    disk_write_bytes_per_s DOUBLE PRECISION,
    net_rx_bytes_per_s     DOUBLE PRECISION,
    net_tx_bytes_per_s     DOUBLE PRECISION
);

CREATE TABLE gpu_latest (
    host_id        BIGINT NOT NULL,
    gpu_index      SMALLINT NOT NULL,
    ts             TIMESTAMPTZ NOT NULL,
    util_pct       REAL,
    mem_util_pct   REAL,
    mem_used_bytes BIGINT,
    power_watts    REAL,
    temp_celsius   REAL,
    sm_clock_mhz   REAL,
    -- NVML total-energy counter at `ts`, and its value at the GPU's first sample of
    -- ts's UTC day (moved back by what was counted before a counter reset), so that
    -- energy since 00:00 UTC is energy_joules_total - energy_day_start.
    energy_joules_total DOUBLE PRECISION,
    energy_day_start    DOUBLE PRECISION,
    PRIMARY KEY (host_id, gpu_index)
);

-- Pages only show samples of the last 15 minutes; older history is not needed here.
INSERT INTO host_latest
SELECT DISTINCT ON (host_id) host_id, ts, cpu_util_pct, load1, mem_used_bytes, mem_total_bytes,
       disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s
  FROM host_samples WHERE ts > now() - interval '15 minutes'
 ORDER BY host_id, ts DESC;

INSERT INTO gpu_latest
SELECT DISTINCT ON (host_id, gpu_index) host_id, gpu_index, ts, util_pct, mem_util_pct, mem_used_bytes,
       power_watts, temp_celsius, sm_clock_mhz, energy_joules_total, NULL
  FROM gpu_samples WHERE ts > now() - interval '15 minutes'
 ORDER BY host_id, gpu_index, ts DESC;
UPDATE gpu_latest l SET energy_day_start = (
    SELECT s.energy_joules_total FROM gpu_samples s
     WHERE s.host_id = l.host_id AND s.gpu_index = l.gpu_index AND s.energy_joules_total IS NOT NULL
       AND rackwatch_utc_day(s.ts) = rackwatch_utc_day(l.ts)
     ORDER BY s.ts LIMIT 1);

-- Charts over rollups read one GPU (or host) over days. Rollup rows are written minute
-- by minute for the whole fleet, so one GPU's rows sit on a different heap page each
-- minute; with the charted columns in the primary key, those reads are index-only
-- scans of adjacent index entries (the visibility map of finished days is set by
-- autovacuum). Replacing the key rather than adding an index keeps one index to write.
ALTER TABLE gpu_samples_1m DROP CONSTRAINT gpu_samples_1m_pkey,
    ADD PRIMARY KEY (host_id, gpu_index, bucket)
        INCLUDE (util_pct, mem_util_pct, mem_used_bytes, power_watts, power_watts_max, temp_celsius,
                 temp_celsius_max, sm_clock_mhz);
ALTER TABLE host_samples_1m DROP CONSTRAINT host_samples_1m_pkey,
    ADD PRIMARY KEY (host_id, bucket)
        INCLUDE (cpu_util_pct, mem_used_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s,
                 net_rx_bytes_per_s, net_tx_bytes_per_s);

-- 15-minute rollups of the 1-minute rollups (mean of the minutes, max of the maxima,
-- last energy counter), kept by the rollup job for every completed quarter-hour.
-- Charts whose pixel column spans a quarter-hour or more (ranges of 6 days and up)
-- read these: a GPU's week is 672 rows instead of 10,080.
CREATE TABLE gpu_samples_15m (LIKE gpu_samples_1m INCLUDING DEFAULTS) PARTITION BY RANGE (bucket);
ALTER TABLE gpu_samples_15m ADD PRIMARY KEY (host_id, gpu_index, bucket)
    INCLUDE (util_pct, mem_util_pct, mem_used_bytes, power_watts, power_watts_max, temp_celsius,
             temp_celsius_max, sm_clock_mhz);
CREATE TABLE host_samples_15m (LIKE host_samples_1m INCLUDING DEFAULTS) PARTITION BY RANGE (bucket);
ALTER TABLE host_samples_15m ADD PRIMARY KEY (host_id, bucket)
    INCLUDE (cpu_util_pct, mem_used_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s,
             net_rx_bytes_per_s, net_tx_bytes_per_s);

-- The quarter-hour that holds a time.
CREATE FUNCTION rackwatch_quarter(t TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE AS $$ SELECT date_bin('15 minutes', t, TIMESTAMPTZ '2000-01-01 00:00:00+00') $$;

-- Existing 1-minute history, rolled up once (the job keeps it from here on).
DO $$
DECLARE
    d DATE;
BEGIN
    FOR d IN SELECT DISTINCT (bucket AT TIME ZONE 'UTC')::date FROM host_samples_1m
             UNION SELECT DISTINCT (bucket AT TIME ZONE 'UTC')::date FROM gpu_samples_1m LOOP
        PERFORM rackwatch_ensure_partition('gpu_samples_15m', d);
        PERFORM rackwatch_ensure_partition('host_samples_15m', d);
    END LOOP;
END $$;
INSERT INTO gpu_samples_15m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, mem_util_pct,
    mem_used_bytes, power_watts, power_watts_max, energy_joules_total, temp_celsius, temp_celsius_max, sm_clock_mhz)
SELECT host_id, gpu_index, rackwatch_quarter(bucket), sum(samples)::int, avg(util_pct), max(util_pct_max),
       avg(mem_util_pct), avg(mem_used_bytes)::bigint, avg(power_watts), max(power_watts_max),
       (array_agg(energy_joules_total ORDER BY bucket DESC) FILTER (WHERE energy_joules_total IS NOT NULL))[1],
       avg(temp_celsius), max(temp_celsius_max), avg(sm_clock_mhz)
  FROM gpu_samples_1m GROUP BY 1, 2, 3;
INSERT INTO host_samples_15m (host_id, bucket, samples, cpu_util_pct, cpu_util_pct_max, load1, mem_used_bytes,
    mem_total_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s,
    disk_used_bytes, disk_total_bytes)
SELECT host_id, rackwatch_quarter(bucket), sum(samples)::int, avg(cpu_util_pct), max(cpu_util_pct_max), avg(load1),
       avg(mem_used_bytes)::bigint, max(mem_total_bytes), avg(disk_read_bytes_per_s), avg(disk_write_bytes_per_s),
       avg(net_rx_bytes_per_s), avg(net_tx_bytes_per_s), avg(disk_used_bytes)::bigint, max(disk_total_bytes)
  FROM host_samples_1m GROUP BY 1, 2;

-- Host and rack pages list the alerts touching their hosts.
CREATE INDEX alerts_host ON alerts ((labels->>'host'));
