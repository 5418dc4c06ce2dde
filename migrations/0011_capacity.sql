-- Capacity planning: pool demand, queued demand pushed by schedulers, and the capacity
-- job's recommendations and exhaustion dates.

-- Demand per pool and 5-minute slot, kept by the capacity job from the 1-minute rollups
-- (one hour of new minutes per run, so a run never rescans history): GPUs busy (above
-- the idle threshold), GPU-equivalents of utilization (sum of util / 100), GPUs queued
-- (the latest scheduler report in the slot), and GPUs installed. A small aggregate table:
-- on Citus it is a reference table.
CREATE TABLE pool_demand (
    pool           TEXT NOT NULL,
    bucket         TIMESTAMPTZ NOT NULL,
    busy_gpus      REAL NOT NULL,
    util_gpus      REAL NOT NULL,
    queued_gpus    REAL NOT NULL DEFAULT 0,
    installed_gpus INT NOT NULL,
    PRIMARY KEY (pool, bucket)
);
CREATE INDEX pool_demand_bucket ON pool_demand (bucket);

-- Pending GPU requests of a pool as its scheduler reports them (Slurm, Kubernetes).
CREATE TABLE pool_queue (
    pool         TEXT NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,
    pending_gpus DOUBLE PRECISION NOT NULL CHECK (pending_gpus >= 0),
    source       TEXT NOT NULL DEFAULT '',
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, ts)
);

-- The latest recommendation per pool.
CREATE TABLE capacity_recommendations (
    pool           TEXT PRIMARY KEY,
    computed_at    TIMESTAMPTZ NOT NULL,
    decided_at     TIMESTAMPTZ NOT NULL,
    installed_gpus INT NOT NULL,
    host_size      INT NOT NULL,
    demand_now     DOUBLE PRECISION,
    next_hour      INT NOT NULL,
    week_schedule  INT[] NOT NULL,
    lead_start     TIMESTAMPTZ NOT NULL,
    lead_plan      INT[] NOT NULL,
    methods        JSONB NOT NULL,
    evidence       JSONB NOT NULL,
    -- When the demand trend outgrows the installed GPUs (NULL: not within the horizon).
    exhausted_at   TIMESTAMPTZ,
    growth_per_day DOUBLE PRECISION,
    note           TEXT NOT NULL DEFAULT ''
);

-- When a resource runs out: a pool's GPUs, a rack's power budget, a host's disk.
CREATE TABLE capacity_exhaustion (
    kind           TEXT NOT NULL CHECK (kind IN ('pool', 'rack', 'disk')),
    key            TEXT NOT NULL,
    computed_at    TIMESTAMPTZ NOT NULL,
    capacity       DOUBLE PRECISION NOT NULL,
    level_now      DOUBLE PRECISION NOT NULL,
    growth_per_day DOUBLE PRECISION NOT NULL,
    unit           TEXT NOT NULL,
    exhausted_at   TIMESTAMPTZ,
    PRIMARY KEY (kind, key)
);

-- The next-hour capacity recommended for each hour, for the page's chart of past advice.
CREATE TABLE capacity_history (
    pool        TEXT NOT NULL,
    hour        TIMESTAMPTZ NOT NULL,
    recommended INT NOT NULL,
    PRIMARY KEY (pool, hour)
);

-- Hosts the capacity job lists for draining, with their idle energy (JSON).
ALTER TABLE capacity_recommendations ADD COLUMN consolidation JSONB NOT NULL DEFAULT '[]';

-- Tokens for schedulers that report a pool's queue: scoped to one pool, never to a host.
ALTER TABLE agent_tokens ADD COLUMN pool TEXT;
