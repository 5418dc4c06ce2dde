-- `GET /metrics/fleet` exposes the newest sample of every GPU as dcgm-exporter names it;
-- NVIDIA's Grafana dashboard charts the memory clock (DCGM_FI_DEV_MEM_CLOCK), so the
-- latest table keeps it too. Filled by ingest from the next sample on.
ALTER TABLE gpu_latest ADD COLUMN mem_clock_mhz REAL;

