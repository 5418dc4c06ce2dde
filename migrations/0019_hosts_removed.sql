-- A host taken out of the fleet by an admin (decommissioned, renamed, reinstalled): hidden
-- from the fleet, racks, inventory and the absent rule, its agent tokens revoked, its
-- history kept (charts, energy reports). An agent reporting for it again brings it back.
ALTER TABLE hosts ADD COLUMN removed_at TIMESTAMPTZ;
ALTER TABLE hosts ADD COLUMN removed_by TEXT;
