-- Wide sample tables, one row per (host, ts) and (host, GPU, ts), partitioned by day.
-- The primary key makes ingest idempotent: a replayed batch is stored once.
-- Every big table carries host_id and ts and has no cross-host foreign key, so it can
-- be distributed by host_id later (Citus).

CREATE TABLE host_samples (
    host_id                BIGINT NOT NULL,
    ts                     TIMESTAMPTZ NOT NULL,
    cpu_util_pct           REAL,
    load1                  REAL,
    mem_used_bytes         BIGINT,
    mem_total_bytes        BIGINT,
    disk_read_bytes_per_s  DOUBLE PRECISION,
    disk_write_bytes_per_s DOUBLE PRECISION,
    net_rx_bytes_per_s     DOUBLE PRECISION,
    net_tx_bytes_per_s     DOUBLE PRECISION,
    PRIMARY KEY (host_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE gpu_samples (
    host_id             BIGINT NOT NULL,
    gpu_index           SMALLINT NOT NULL,
    ts                  TIMESTAMPTZ NOT NULL,
    util_pct            REAL,
    mem_util_pct        REAL,
    mem_used_bytes      BIGINT,
    mem_total_bytes     BIGINT,
    power_watts         REAL,
    energy_joules_total DOUBLE PRECISION,
    temp_celsius        REAL,
    mem_temp_celsius    REAL,
    sm_clock_mhz        REAL,
    mem_clock_mhz       REAL,
    fan_pct             REAL,
    throttle_reasons    BIGINT,
    PRIMARY KEY (host_id, gpu_index, ts)
) PARTITION BY RANGE (ts);

-- 1-minute rollups: mean and max of the metrics dashboards and analytics read.
CREATE TABLE host_samples_1m (
    host_id                BIGINT NOT NULL,
    bucket                 TIMESTAMPTZ NOT NULL,
    samples                INT NOT NULL,
    cpu_util_pct           REAL,
    cpu_util_pct_max       REAL,
    load1                  REAL,
    mem_used_bytes         BIGINT,
    mem_total_bytes        BIGINT,
    disk_read_bytes_per_s  DOUBLE PRECISION,
    disk_write_bytes_per_s DOUBLE PRECISION,
    net_rx_bytes_per_s     DOUBLE PRECISION,
    net_tx_bytes_per_s     DOUBLE PRECISION,
    PRIMARY KEY (host_id, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE gpu_samples_1m (
    host_id          BIGINT NOT NULL,
    gpu_index        SMALLINT NOT NULL,
    bucket           TIMESTAMPTZ NOT NULL,
    samples          INT NOT NULL,
    util_pct         REAL,
    util_pct_max     REAL,
    mem_util_pct     REAL,
    mem_used_bytes   BIGINT,
    power_watts      REAL,
    power_watts_max  REAL,
    -- Energy counter at the end of the minute; energy in the minute is the difference
    -- of consecutive values (reset-safe arithmetic happens in the analytics layer).
    energy_joules_total DOUBLE PRECISION,
    temp_celsius     REAL,
    temp_celsius_max REAL,
    sm_clock_mhz     REAL,
    PRIMARY KEY (host_id, gpu_index, bucket)
) PARTITION BY RANGE (bucket);

-- Hardware events: every occurrence kept; idempotent on (host, GPU, ts, kind, code).
CREATE TABLE hardware_events (
    host_id     BIGINT NOT NULL,
    -- -1 for host-wide events
    gpu_index   SMALLINT NOT NULL DEFAULT -1,
    ts          TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL,
    code        BIGINT NOT NULL DEFAULT 0,
    message     TEXT NOT NULL DEFAULT '',
    count       INT NOT NULL DEFAULT 1,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, gpu_index, ts, kind, code)
);
CREATE INDEX hardware_events_ts ON hardware_events (ts DESC);

-- Late data (an agent replaying its spool) marks the minutes whose rollups must be
-- recomputed; the rollup job drains this table.
CREATE TABLE rollup_dirty (
    host_id BIGINT NOT NULL,
    bucket  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (host_id, bucket)
);

-- Progress of periodic jobs (rollup watermark and friends).
CREATE TABLE job_state (
    name       TEXT PRIMARY KEY,
    watermark  TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Creates the daily partition of `parent` that holds `day` (UTC), if missing.
CREATE FUNCTION rackwatch_ensure_partition(parent TEXT, day DATE) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := parent || '_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            part, parent,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
END $$;
