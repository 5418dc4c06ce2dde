-- Full NVML telemetry per GPU sample (issue 3). Every column is nullable: a GPU or
-- driver that cannot measure something leaves it empty.
--
-- Energy: `energy_joules_total` (0002) stays the raw NVML total-energy counter; the
-- agent adds `energy_joules`, the energy since that GPU's previous sample, computed
-- reset-safe (a counter that went backwards after a driver reload counts from zero).
-- Energy over a period is SUM(energy_joules), never a difference of the counter.
ALTER TABLE gpu_samples
    ADD COLUMN power_limit_watts           REAL,
    ADD COLUMN energy_joules               DOUBLE PRECISION,
    ADD COLUMN pcie_rx_bytes_per_s         DOUBLE PRECISION,
    ADD COLUMN pcie_tx_bytes_per_s         DOUBLE PRECISION,
    ADD COLUMN pcie_replay_total           BIGINT,
    ADD COLUMN ecc_sbe_total               BIGINT,
    ADD COLUMN ecc_dbe_total               BIGINT,
    ADD COLUMN retired_pages_sbe           BIGINT,
    ADD COLUMN retired_pages_dbe           BIGINT,
    ADD COLUMN retired_pages_pending       BOOLEAN,
    ADD COLUMN remapped_rows_correctable   BIGINT,
    ADD COLUMN remapped_rows_uncorrectable BIGINT,
    ADD COLUMN remapped_rows_pending       BOOLEAN,
    ADD COLUMN remapped_rows_failure       BOOLEAN,
    ADD COLUMN mig_enabled                 BOOLEAN;
