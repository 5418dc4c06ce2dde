-- Filesystem usage per host (summed over local disks, each device once), for capacity
-- forecasts ("disk full by …").
ALTER TABLE host_samples ADD COLUMN disk_used_bytes BIGINT, ADD COLUMN disk_total_bytes BIGINT;
ALTER TABLE host_samples_1m ADD COLUMN disk_used_bytes BIGINT, ADD COLUMN disk_total_bytes BIGINT;
