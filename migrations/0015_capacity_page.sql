-- Capacity at fleet scale: rack power summed once per hour, and what the capacity page
-- lists stored with each pool's recommendation, so a page view reads one page of rows.

-- Power per rack and hour, W: the sum of `energy_hourly` over the rack's hosts, kept by
-- the energy accounting for every hour it (re)computes. The capacity job dates racks'
-- power budgets from it (28 days × 100 racks instead of 28 days × 16,000 GPUs).
CREATE TABLE rack_power_hourly (
    hour  TIMESTAMPTZ NOT NULL,
    site  TEXT NOT NULL,
    rack  TEXT NOT NULL,
    watts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (hour, site, rack)
);

-- Hours already summed per rack (an hour of hosts without a rack has no rows above).
CREATE TABLE rack_power_hours (
    hour TIMESTAMPTZ PRIMARY KEY
);

-- Sites of the pool's hosts (most GPUs first), the actions in words and how urgent the
-- first one is (0 order, 1 release, 2 no change, 3 no plan yet): the page's order.
ALTER TABLE capacity_recommendations
    ADD COLUMN sites   TEXT[]   NOT NULL DEFAULT '{}',
    ADD COLUMN actions TEXT[]   NOT NULL DEFAULT '{}',
    ADD COLUMN urgency SMALLINT NOT NULL DEFAULT 3;
CREATE INDEX capacity_recommendations_order ON capacity_recommendations (urgency, exhausted_at, pool);
