-- A host's (or a pool's hosts') energy rows over recent days, by host: the capacity pool
-- page's host list and host peak, and the hosts to drain, read a few hosts' rows of 7
-- days instead of the whole fleet's (the primary key leads with the hour).
CREATE INDEX energy_hourly_host ON energy_hourly (host_id, hour);
