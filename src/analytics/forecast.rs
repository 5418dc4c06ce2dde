//! The hourly forecast job: per pool and per host, GPU utilization (mean over GPUs),
//! GPU power (sum over GPUs) and filesystem space used (sum over hosts), and per pool its
//! demand (GPU work plus the scheduler's queue, as the capacity job measures it), for the
//! next 7 days, from hourly means of the quarter-hour rollups over the last 28 days (per
//! host and hour in `forecast_hourly`, which the rollup job keeps), with 80 % / 95 %
//! intervals and the chosen model's backtest error (rackwatch-forecast).

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use crate::store::Store;

/// Hours of history fed to the models.
pub const HISTORY_HOURS: i64 = 28 * 24;
/// Hours forecast.
pub const HORIZON_HOURS: usize = 168;
/// Series with fewer hours than this are not forecast (the engine needs a day).
pub const MIN_HOURS: usize = 24;
/// A series with no data in its last this many hours is not forecast.
pub const MAX_SILENT_HOURS: usize = 24;

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
    /// Mean absolute scaled error on the last days, against repeating the day before (below 1
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
    ensure_hours(store, start, end).await?;
    let mut tx = store.pool.begin().await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    // Per host and hour, as the rollup job keeps them (`forecast_hourly`), for the hosts in
    // the fleet (a pool's series are those of its hosts now); a host's
    // utilization is the mean over its GPUs, a pool's the mean over all of its GPUs; power
    // and disk are sums. A GPU may report power without utilization, or the other way round.
    let rows = sqlx::query!(
        r#"SELECT 'host' AS "scope!", h.name AS "key!", f.hour AS "hour!",
                  f.util_sum / NULLIF(f.util_gpus, 0) AS "util?", f.power_sum AS "power?", f.disk_used AS "disk?"
             FROM forecast_hourly f JOIN hosts h ON h.id = f.host_id AND h.removed_at IS NULL
            WHERE f.hour >= $1 AND f.hour < $2
         UNION ALL
         SELECT 'pool', h.pool, f.hour, sum(f.util_sum) / NULLIF(sum(f.util_gpus), 0), sum(f.power_sum), sum(f.disk_used)
           FROM forecast_hourly f JOIN hosts h ON h.id = f.host_id AND h.removed_at IS NULL
          WHERE f.hour >= $1 AND f.hour < $2 AND h.pool <> ''
          GROUP BY h.pool, f.hour
         ORDER BY 1, 2, 3"#,
        start,
        end,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Gather::default();
    for r in rows {
        for (metric, v) in [
            ("gpu_util_pct", r.util),
            ("gpu_power_watts", r.power),
            ("disk_used_bytes", r.disk),
        ] {
            if let Some(v) = v {
                out.push(&r.scope, &r.key, metric, r.hour, v);
            }
        }
    }
    // Pools' demand in GPUs: the 5-minute slots the capacity job keeps, hourly means, for
    // the pools that still have hosts (as the capacity job plans them).
    let demand = sqlx::query!(
        r#"SELECT pool AS "key!", date_trunc('hour', bucket) AS "hour!",
                  avg(util_gpus + queued_gpus)::float8 AS "gpus!"
             FROM pool_demand WHERE bucket >= $1 AND bucket < $2
              AND pool IN (SELECT pool FROM hosts WHERE removed_at IS NULL)
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

/// Sum the hours in `[from, to)` that `forecast_hourly` has not summed for every host yet
/// (history rolled up before it was kept, or imported), in one pass over the missing span,
/// and forget the hours before `from`.
async fn ensure_hours(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let missing = sqlx::query!(
        r#"SELECT min(h) AS first, max(h) AS last
             FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour') h
            WHERE NOT EXISTS (SELECT 1 FROM forecast_hours f WHERE f.hour = h)"#,
        from,
        to,
    )
    .fetch_one(&store.pool)
    .await?;
    if let (Some(first), Some(last)) = (missing.first, missing.last) {
        store
            .refresh_forecast_hours(first, last + Duration::hours(1), None)
            .await?;
    }
    sqlx::query!("DELETE FROM forecast_hourly WHERE hour < $1", from)
        .execute(&store.pool)
        .await?;
    sqlx::query!("DELETE FROM forecast_hours WHERE hour < $1", from)
        .execute(&store.pool)
        .await?;
    Ok(())
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
            // A series silent for the last day (a host down, a pool whose demand is no
            // longer measured) gets no forecast: the engine would fill the silence from
            // the week before and it would read as a forecast of now.
            let recent = grid.len().saturating_sub(MAX_SILENT_HOURS);
            (grid.iter().filter(|v| v.is_some()).count() >= MIN_HOURS
                && grid[recent..].iter().any(Option::is_some))
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
    // Series that no longer qualify (a host taken out of the fleet, or silent for the
    // last day; a pool left without hosts) keep no forecast from an earlier run.
    sqlx::query!("DELETE FROM forecasts WHERE generated_at < $1", now)
        .execute(&store.pool)
        .await?;
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
