-- A pool with less than an hour of demand has no recommendation yet: its next hour is
-- null (no gauge, null in the API, a dash on the page), not its installed GPUs.
ALTER TABLE capacity_recommendations ALTER COLUMN next_hour DROP NOT NULL;
UPDATE capacity_recommendations SET next_hour = NULL WHERE cardinality(week_schedule) = 0;
