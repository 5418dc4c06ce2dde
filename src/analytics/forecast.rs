//! The hourly forecast job: per pool and per host, GPU utilization (mean over GPUs),
//! GPU power (sum over GPUs) and filesystem space used (sum over hosts), and per pool its
//! demand (GPU work plus the scheduler's queue, as the capacity job measures it), for the
//! next 7 days, from hourly means of the quarter-hour rollups over the last 28 days, with
//! 80 % / 95 % intervals and the chosen model's backtest error (rackwatch-forecast).

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use crate::store::Store;

/// Hours of history fed to the models.
pub const HISTORY_HOURS: i64 = 28 * 24;
/// Hours forecast.
pub const HORIZON_HOURS: usize = 168;
/// Series with fewer hours than this are not forecast (the engine needs a day).
pub const MIN_HOURS: usize = 24;

/// The metrics forecast.
pub const METRICS: [&str; 4] = [
    "gpu_util_pct",
    "gpu_power_watts",
    "disk_used_bytes",
    "demand_gpus",
];

/// An hourly forecast of one metric of a pool or host, from `start_at` for
/// `point.length` hours, with 80 % and 95 % intervals.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StoredForecast {
    #[schema(schema_with = scopes)]
    pub scope: String,
    /// Pool or host name.
    pub key: String,
    #[schema(schema_with = metrics)]
    pub metric: String,
    pub generated_at: DateTime<Utc>,
    /// The hour of `point[0]`.
    pub start_at: DateTime<Utc>,
    /// Hours of history the model saw.
    pub history_hours: i32,
    /// The model chosen by backtest, or the fallback for short or flat history.
    pub model: String,
    /// Mean absolute scaled error on the last days, against repeating last week (below 1
    /// is better).
    pub backtest_mase: Option<f64>,
    /// The forecast, one value per hour, in the metric's unit.
    pub point: Vec<f64>,
    pub lo80: Vec<f64>,
    pub hi80: Vec<f64>,
    pub lo95: Vec<f64>,
    pub hi95: Vec<f64>,
}

fn scopes() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["pool", "host"])
}

fn metrics() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&METRICS)
}

/// Hourly series per (scope, key, metric) ending at `end` (exclusive, whole hour).
/// (scope, key, metric, hourly points).
type Series = (String, String, String, Vec<(DateTime<Utc>, f64)>);

/// The series being gathered, in first-seen order, found by (scope, key, metric) in a map
/// (a fleet has thousands of series and a row for each of their hours).
#[derive(Default)]
struct Gather {
    series: Vec<Series>,
    index: std::collections::HashMap<(String, String, &'static str), usize>,
}

impl Gather {
    fn push(&mut self, scope: &str, key: &str, metric: &'static str, hour: DateTime<Utc>, v: f64) {
        let series = &mut self.series;
        let i = *self
            .index
            .entry((scope.to_string(), key.to_string(), metric))
            .or_insert_with(|| {
                series.push((
                    scope.to_string(),
                    key.to_string(),
                    metric.to_string(),
                    Vec::new(),
                ));
                series.len() - 1
            });
        series[i].3.push((hour, v));
    }
}

async fn hourly_series(store: &Store, end: DateTime<Utc>) -> Result<Vec<Series>, sqlx::Error> {
    let start = end - Duration::hours(HISTORY_HOURS);
    let mut tx = store.pool.begin().await?;
    // A plan over weeks of rollups crosses jit_above_cost; compiling it costs more than it
    // saves.
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    // Per GPU and hour, then per host and hour, on integer keys; names and pools are joined
    // to the hosts' hours only. From the quarter-hour rollups (a fleet's 28 days of 16,000
    // GPUs are 43 million of them, 645 million minutes). A pool's utilization is the mean
    // over its GPUs' hours, its power their sum.
    let rows = sqlx::query!(
        r#"WITH g AS (
            SELECT r.host_id, date_bin('1 hour', r.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
                   avg(r.util_pct)::float8 AS util, avg(r.power_watts)::float8 AS power
              FROM gpu_samples_15m r
             WHERE r.bucket >= $1 AND r.bucket < $2
             GROUP BY r.host_id, r.gpu_index, 2),
         hh AS (
            SELECT host_id, hour, avg(util) AS util, sum(power) AS power, count(util) AS n
              FROM g GROUP BY host_id, hour)
         SELECT 'host' AS "scope!", h.name AS "key!", hh.hour AS "hour!", hh.util AS "util?", hh.power AS "power?"
           FROM hh JOIN hosts h ON h.id = hh.host_id
         UNION ALL
         SELECT 'pool', h.pool, hh.hour, sum(hh.util * hh.n) / sum(hh.n), sum(hh.power)
           FROM hh JOIN hosts h ON h.id = hh.host_id
          WHERE h.pool <> '' GROUP BY h.pool, hh.hour
         ORDER BY 1, 2, 3"#,
        start,
        end,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Gather::default();
    // A GPU may report power without utilization, or the other way round.
    for r in rows {
        if let Some(util) = r.util {
            out.push(&r.scope, &r.key, "gpu_util_pct", r.hour, util);
        }
        if let Some(power) = r.power {
            out.push(&r.scope, &r.key, "gpu_power_watts", r.hour, power);
        }
    }
    let disks = sqlx::query!(
        r#"WITH d AS (
            SELECT r.host_id, date_bin('1 hour', r.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
                   avg(r.disk_used_bytes)::float8 AS used
              FROM host_samples_15m r
             WHERE r.bucket >= $1 AND r.bucket < $2 AND r.disk_used_bytes IS NOT NULL
             GROUP BY 1, 2)
         SELECT 'host' AS "scope!", h.name AS "key!", d.hour AS "hour!", d.used AS "used!"
           FROM d JOIN hosts h ON h.id = d.host_id
         UNION ALL
         SELECT 'pool', h.pool, d.hour, sum(d.used)
           FROM d JOIN hosts h ON h.id = d.host_id
          WHERE h.pool <> '' GROUP BY h.pool, d.hour
         ORDER BY 1, 2, 3"#,
        start,
        end,
    )
    .fetch_all(&mut *tx)
    .await?;
    for r in disks {
        out.push(&r.scope, &r.key, "disk_used_bytes", r.hour, r.used);
    }
    // Pools' demand in GPUs: the 5-minute slots the capacity job keeps, hourly means.
    let demand = sqlx::query!(
        r#"SELECT pool AS "key!", date_trunc('hour', bucket) AS "hour!",
                  avg(util_gpus + queued_gpus)::float8 AS "gpus!"
             FROM pool_demand WHERE bucket >= $1 AND bucket < $2
            GROUP BY 1, 2 ORDER BY 1, 2"#,
        start,
        end,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for r in demand {
        out.push("pool", &r.key, "demand_gpus", r.hour, r.gpus);
    }
    Ok(out.series)
}

/// Regular hourly grid from the first hour seen to `end`, gaps as None.
fn to_grid(
    points: &[(DateTime<Utc>, f64)],
    end: DateTime<Utc>,
) -> (DateTime<Utc>, Vec<Option<f64>>) {
    let first = points[0].0;
    let n = ((end - first).num_hours()).max(0) as usize;
    let mut grid = vec![None; n];
    for (t, v) in points {
        let i = (*t - first).num_hours() as usize;
        if i < n && v.is_finite() {
            grid[i] = Some(*v);
        }
    }
    (first, grid)
}

/// Series forecast together on all cores before they are written: bounds what the job
/// holds (a fleet has thousands of series).
const CHUNK: usize = 256;

/// What a run of the job did, and where its time went.
#[derive(Debug, Default)]
pub struct Run {
    /// Forecasts written.
    pub written: usize,
    /// Reading the hourly series from the rollups.
    pub read: std::time::Duration,
    /// Fitting and forecasting (on all cores).
    pub fit: std::time::Duration,
    /// Storing the forecasts.
    pub write: std::time::Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} forecasts (read {:.2} s, fit {:.2} s, write {:.2} s)",
            self.written,
            self.read.as_secs_f64(),
            self.fit.as_secs_f64(),
            self.write.as_secs_f64()
        )
    }
}

/// Forecast everything and store it.
pub async fn run(store: &Store, now: DateTime<Utc>) -> anyhow::Result<Run> {
    let end = now.duration_trunc(Duration::hours(1))?;
    let mut took = Run::default();
    let t = std::time::Instant::now();
    let series = hourly_series(store, end).await?;
    took.read = t.elapsed();
    let series: Vec<_> = series
        .into_iter()
        .filter_map(|(scope, key, metric, points)| {
            let (first, grid) = to_grid(&points, end);
            (grid.iter().filter(|v| v.is_some()).count() >= MIN_HOURS)
                .then_some((scope, key, metric, first, grid))
        })
        .collect();
    let mut rest = series.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(CHUNK).collect();
        let t = std::time::Instant::now();
        let done = super::on_all_cores(chunk, |(scope, key, metric, first, grid)| {
            let f = rackwatch_forecast::forecast(&grid, Some(first), HORIZON_HOURS);
            (scope, key, metric, first, f)
        })
        .await?;
        took.fit += t.elapsed();
        let t = std::time::Instant::now();
        for (scope, key, metric, first, f) in done {
            sqlx::query!(
                "INSERT INTO forecasts (scope, key, metric, generated_at, start_at, history_hours, model, backtest_mase,
                                        point, lo80, hi80, lo95, hi95)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (scope, key, metric) DO UPDATE SET generated_at = EXCLUDED.generated_at,
                    start_at = EXCLUDED.start_at, history_hours = EXCLUDED.history_hours, model = EXCLUDED.model,
                    backtest_mase = EXCLUDED.backtest_mase, point = EXCLUDED.point, lo80 = EXCLUDED.lo80,
                    hi80 = EXCLUDED.hi80, lo95 = EXCLUDED.lo95, hi95 = EXCLUDED.hi95",
                &scope,
                &key,
                &metric,
                now,
                end,
                ((end - first).num_hours()) as i32,
                &f.model,
                f.backtest_mase,
                &f.point,
                &f.lo80,
                &f.hi80,
                &f.lo95,
                &f.hi95,
            )
            .execute(&store.pool)
            .await?;
            took.written += 1;
        }
        took.write += t.elapsed();
    }
    Ok(took)
}

impl Store {
    /// Stored forecasts, optionally filtered.
    pub async fn forecasts(
        &self,
        scope: Option<&str>,
        key: Option<&str>,
        metric: Option<&str>,
    ) -> Result<Vec<StoredForecast>, sqlx::Error> {
        sqlx::query_as!(
            StoredForecast,
            "SELECT scope, key, metric, generated_at, start_at, history_hours, model, backtest_mase,
                    point, lo80, hi80, lo95, hi95
               FROM forecasts
              WHERE ($1::text IS NULL OR scope = $1) AND ($2::text IS NULL OR key = $2) AND ($3::text IS NULL OR metric = $3)
              ORDER BY scope, key, metric",
            scope,
            key,
            metric,
        )
        .fetch_all(&self.pool)
        .await
    }
}
