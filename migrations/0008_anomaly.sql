-- Anomaly detection per host (issue 7): the current model of every host and the score
-- of every minute it scored. Written by the anomaly job (src/analytics/anomaly.rs).

-- One row per host: its current model, or why it has none. The job retrains a model
-- when it is older than `anomaly.retrain_hours` and retries a host without one hourly.
CREATE TABLE anomaly_models (
    host_id       BIGINT PRIMARY KEY,
    -- 'trained', 'insufficient_history' (too few minutes of rollups) or 'failed'
    status        TEXT NOT NULL CHECK (status IN ('trained', 'insufficient_history', 'failed')),
    -- For people: what the training saw, or why it was skipped.
    note          TEXT NOT NULL DEFAULT '',
    -- When training was (last) attempted.
    trained_at    TIMESTAMPTZ NOT NULL,
    -- Training window [train_from, train_to) of 1-minute rollups, and the minutes in it used.
    train_from    TIMESTAMPTZ NOT NULL,
    train_to      TIMESTAMPTZ NOT NULL,
    train_minutes INT NOT NULL DEFAULT 0,
    -- Feature names in model column order (a subset of the documented feature list).
    metrics       TEXT[] NOT NULL DEFAULT '{}',
    -- The peaks-over-threshold alert level of the model (before the drift guard).
    threshold     DOUBLE PRECISION,
    -- The serialized rackwatch_anomaly::Detector as trained (scaling, weights, POT fit).
    params        JSONB,
    -- Streaming state after the last scored minute (detector history and EMA, the last
    -- value of every feature for gaps), rewritten every run.
    state         JSONB,
    -- Watermark: minutes before this are scored (exclusive end).
    scored_until  TIMESTAMPTZ,
    CHECK (status <> 'trained' OR (params IS NOT NULL AND threshold IS NOT NULL))
);

-- One row per host and scored minute, partitioned by day like the samples (dropped past
-- `retention.anomaly_scores_days` by the hourly maintenance job). No foreign key, host_id
-- first: distributable by host like the sample tables.
CREATE TABLE anomaly_scores (
    host_id      BIGINT NOT NULL,
    -- The minute (bucket of the 1-minute rollups) that was scored.
    ts           TIMESTAMPTZ NOT NULL,
    score        REAL NOT NULL,
    -- The level this minute's score was held to (the model's threshold, raised by the
    -- detector's drift guard); is_anomalous = score > threshold.
    threshold    REAL NOT NULL,
    is_anomalous BOOLEAN NOT NULL,
    -- Top contributing metrics, largest share first:
    -- [{"metric": "gpu_temp_max_celsius", "share": 0.61, "value": 91, "typical": 66, "gpu": 3}]
    top          JSONB NOT NULL DEFAULT '[]',
    PRIMARY KEY (host_id, ts)
) PARTITION BY RANGE (ts);

-- Recent scores of every host (the `anomaly` alert rule, fleet-wide API ranges): rows
-- arrive in time order, so a BRIN index is tiny and enough.
CREATE INDEX anomaly_scores_ts ON anomaly_scores USING brin (ts);
-- "What was anomalous lately, fleet-wide" without scanning every score.
CREATE INDEX anomaly_scores_anomalous ON anomaly_scores (ts DESC) WHERE is_anomalous;
