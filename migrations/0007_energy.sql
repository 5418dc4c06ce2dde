-- Energy accounting (weekly energy-efficiency report).
--
-- Host energy measured by the host (RAPL via powercap): energy since the previous
-- sample, computed by the agent and safe across counter wrap-around.
ALTER TABLE host_samples ADD COLUMN energy_joules DOUBLE PRECISION;
ALTER TABLE host_samples_1m
    ADD COLUMN energy_joules  DOUBLE PRECISION,
    ADD COLUMN energy_samples INT;

-- Per minute and GPU: measured energy (sum of the agent's counter deltas, or counter
-- differences where an agent sends only the counter), how many samples carried it,
-- how many carried a power reading (the estimate where the counter is unsupported),
-- counter resets seen (the counter went backwards), and samples throttled by power
-- (software power cap, hardware power brake) or heat (software/hardware thermal).
ALTER TABLE gpu_samples_1m
    ADD COLUMN energy_joules            DOUBLE PRECISION,
    ADD COLUMN energy_samples           INT,
    ADD COLUMN power_samples            INT,
    ADD COLUMN counter_resets           INT,
    ADD COLUMN power_throttle_samples   INT,
    ADD COLUMN thermal_throttle_samples INT;

-- Hourly energy per GPU (gpu_index >= 0) and per host outside its GPUs (gpu_index = -1),
-- kept by the energy accounting job from the 1-minute rollups. Joules split by how they
-- were obtained: measured (GPU counter, host RAPL), estimated (GPU power integrated
-- over the minutes sampled, where the counter is unsupported) and modeled (host power
-- from CPU utilization and the configured idle/max watts of its model).
CREATE TABLE energy_hourly (
    host_id            BIGINT NOT NULL,
    gpu_index          SMALLINT NOT NULL,
    hour               TIMESTAMPTZ NOT NULL,
    measured_j         DOUBLE PRECISION NOT NULL DEFAULT 0,
    estimated_j        DOUBLE PRECISION NOT NULL DEFAULT 0,
    modeled_j          DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- Energy of minutes whose mean GPU utilization was below the idle threshold.
    idle_j             DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- Minutes with at least one sample, and of those the idle and busy ones.
    covered_minutes    INT NOT NULL DEFAULT 0,
    idle_minutes       INT NOT NULL DEFAULT 0,
    busy_minutes       INT NOT NULL DEFAULT 0,
    -- Sum of the per-minute mean utilization (mean = util_sum / covered_minutes).
    util_sum           DOUBLE PRECISION NOT NULL DEFAULT 0,
    power_max_w        DOUBLE PRECISION,
    counter_resets     INT NOT NULL DEFAULT 0,
    power_throttle_s   DOUBLE PRECISION NOT NULL DEFAULT 0,
    thermal_throttle_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, host_id, gpu_index)
);

-- Hours whose rollups were recomputed after late samples; the accounting job redoes them.
CREATE TABLE energy_dirty (
    host_id BIGINT NOT NULL,
    hour    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (host_id, hour)
);

-- Facility meter readings: energy a site drew from the grid over an interval. Where a
-- site has them, facility energy and PUE are measured instead of configured.
CREATE TABLE facility_readings (
    site        TEXT NOT NULL,
    start_ts    TIMESTAMPTZ NOT NULL,
    end_ts      TIMESTAMPTZ NOT NULL CHECK (end_ts > start_ts),
    energy_kwh  DOUBLE PRECISION NOT NULL CHECK (energy_kwh >= 0),
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (site, start_ts)
);

-- Hourly grid carbon intensity per site (imported from CSV); hours without a row use
-- the site's configured constant.
CREATE TABLE grid_intensity (
    site        TEXT NOT NULL,
    hour        TIMESTAMPTZ NOT NULL,
    g_co2_per_kwh DOUBLE PRECISION NOT NULL CHECK (g_co2_per_kwh >= 0),
    PRIMARY KEY (site, hour)
);

-- Weekly report mails: one row per week once the SMTP server accepted the mail, so a
-- restart never sends a week twice.
CREATE TABLE report_deliveries (
    kind       TEXT NOT NULL,
    period     TEXT NOT NULL,
    recipients TEXT NOT NULL,
    sent_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, period)
);
