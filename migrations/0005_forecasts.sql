-- Forecasts made by the hourly job: the latest per (scope, key, metric), with the
-- intervals and the backtest error of the model that made them.
CREATE TABLE forecasts (
    -- 'pool' or 'host'
    scope         TEXT NOT NULL,
    -- pool name or host name
    key           TEXT NOT NULL,
    -- gpu_util_pct (mean over GPUs) or gpu_power_watts (sum over GPUs)
    metric        TEXT NOT NULL,
    generated_at  TIMESTAMPTZ NOT NULL,
    -- first forecast hour; point i is for start_at + i hours
    start_at      TIMESTAMPTZ NOT NULL,
    history_hours INT NOT NULL,
    model         TEXT NOT NULL,
    -- mean absolute scaled error of the chosen model in rolling-origin backtests
    backtest_mase DOUBLE PRECISION,
    point         DOUBLE PRECISION[] NOT NULL,
    lo80          DOUBLE PRECISION[] NOT NULL,
    hi80          DOUBLE PRECISION[] NOT NULL,
    lo95          DOUBLE PRECISION[] NOT NULL,
    hi95          DOUBLE PRECISION[] NOT NULL,
    PRIMARY KEY (scope, key, metric)
);
