//! 1-minute rollups and 15-minute rollups of those, kept by the rollup job.
//! Dashboards and analytics read these instead of scanning raw history.

use chrono::{DateTime, Duration, DurationRound, Utc};

use std::sync::LazyLock;

use super::Store;
use crate::model::metrics::{Metric, Rollup, SqlType, GPU_METRICS, HOST_METRICS};

/// Recent minutes recomputed on every run, to absorb samples that arrive a little late
/// (batching delays the newest samples by up to one ship interval).
const REDO_MINUTES: i64 = 5;
/// A late-minute mark claimed this long ago by a run that never finished is taken again.
const CLAIM_EXPIRES: Duration = Duration::minutes(15);
/// A first run (empty watermark) starts this far back.
const FIRST_RUN_LOOKBACK_HOURS: i64 = 24;

/// The rollup columns of a metric table: (column, aggregate over raw samples, aggregate
/// over 1-minute rows), from each metric's [`Rollup`].
fn rollup_columns(table: &[Metric]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for m in table {
        let n = m.name;
        // Means of integer columns are stored as integers.
        let cast = if m.sql == SqlType::BigInt {
            "::bigint"
        } else {
            ""
        };
        match m.rollup {
            Rollup::Mean => out.push((
                n.into(),
                format!("avg({n}){cast}"),
                format!("avg({n}){cast}"),
            )),
            Rollup::MeanMax => {
                out.push((
                    n.into(),
                    format!("avg({n}){cast}"),
                    format!("avg({n}){cast}"),
                ));
                out.push((
                    format!("{n}_max"),
                    format!("max({n})"),
                    format!("max({n}_max)"),
                ));
            }
            Rollup::Max => out.push((n.into(), format!("max({n})"), format!("max({n})"))),
            Rollup::Last => {
                let last = |order: &str| {
                    format!(
                        "(array_agg({n} ORDER BY {order} DESC) FILTER (WHERE {n} IS NOT NULL))[1]"
                    )
                };
                out.push((n.into(), last("ts"), last("bucket")));
            }
            Rollup::No | Rollup::Custom => {}
        }
    }
    out
}

/// `INSERT INTO table (key, samples, columns…) SELECT … ON CONFLICT (key) DO UPDATE` of
/// rollup rows: `select` yields the key, the sample count and `columns` in order.
fn upsert(table: &str, key: &[&str], columns: &[String], select: &str) -> String {
    let mut cols: Vec<&str> = key.to_vec();
    cols.push("samples");
    cols.extend(columns.iter().map(String::as_str));
    let set: Vec<String> = cols[key.len()..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({})\n{select}\nON CONFLICT ({}) DO UPDATE SET {}",
        cols.join(", "),
        key.join(", "),
        set.join(", ")
    )
}

/// Host energy in the 1-minute rows: the agent's per-sample energy summed, and how many
/// samples carried it (the energy job scales partial minutes by it).
const HOST_CUSTOM: [(&str, &str); 2] = [
    ("energy_joules", "sum(energy_joules)"),
    ("energy_samples", "count(energy_joules)::int"),
];

/// GPU minutes' hand-made columns. Energy per sample (`e`, computed below) is the
/// difference of the total-energy counter to the GPU's previous sample (within
/// `COUNTER_LOOKBACK`, whichever sender sent it), where a counter that went backwards
/// counts from zero; else the agent's own reset-safe delta (`energy_joules`), which covers
/// a longer gap. Differencing across senders counts a GPU reported by both an agent and
/// Prometheus remote write once (the agent's deltas and the remote counter's differences
/// would overlap). A difference no GPU could draw, more than [`MAX_GPU_WATTS`] since the
/// previous sample, is no energy but two counters mixed (two machines reporting as one
/// host, GPUs renumbered after a reboot, an agent restarted over its own recent samples):
/// the agent's delta stands instead, or, without one, the energy job estimates that
/// sample's share of the minute from sampled power.
/// Throttle bits: power = software power cap (0x4) | hardware power brake (0x80);
/// thermal = software (0x20) | hardware (0x40) thermal slowdown.
const GPU_CUSTOM: [(&str, &str); 6] = [
    ("energy_joules", "sum(e)"),
    ("energy_samples", "count(e)::int"),
    ("power_samples", "count(power_watts)::int"),
    (
        "counter_resets",
        "count(*) FILTER (WHERE energy_joules_total < prev_total)::int",
    ),
    (
        "power_throttle_samples",
        "count(*) FILTER (WHERE throttle_reasons & 132 <> 0)::int",
    ),
    (
        "thermal_throttle_samples",
        "count(*) FILTER (WHERE throttle_reasons & 96 <> 0)::int",
    ),
];

/// Raw GPU columns the custom columns read besides the rolled-up ones.
const GPU_CUSTOM_INPUTS: [&str; 3] = ["energy_joules_total", "throttle_reasons", "energy_joules"];

/// Host minutes from raw samples: `$1..$2`, of hosts `$3` (all when NULL).
static HOST_ROLLUP: LazyLock<String> = LazyLock::new(|| {
    let cols = rollup_columns(HOST_METRICS);
    let mut names: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
    let mut aggs: Vec<String> = cols.iter().map(|c| c.1.clone()).collect();
    for (c, a) in HOST_CUSTOM {
        names.push(c.into());
        aggs.push(a.into());
    }
    upsert(
        "host_samples_1m",
        &["host_id", "bucket"],
        &names,
        &format!(
            "SELECT host_id, date_trunc('minute', ts), count(*)::int, {}
  FROM host_samples
 WHERE ts >= $1 AND ts < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
 GROUP BY 1, 2",
            aggs.join(", ")
        ),
    )
});

/// GPU minutes from raw samples: `$1..$2`, of hosts `$3`, counters looking back `$4`.
static GPU_ROLLUP: LazyLock<String> = LazyLock::new(|| {
    let cols = rollup_columns(GPU_METRICS);
    let mut inputs: Vec<&str> = GPU_METRICS
        .iter()
        .filter(|m| !matches!(m.rollup, Rollup::No | Rollup::Custom))
        .map(|m| m.name)
        .collect();
    for c in GPU_CUSTOM_INPUTS {
        if !inputs.contains(&c) {
            inputs.push(c);
        }
    }
    let mut names: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
    let mut aggs: Vec<String> = cols.iter().map(|c| c.1.clone()).collect();
    for (c, a) in GPU_CUSTOM {
        names.push(c.into());
        aggs.push(a.into());
    }
    let select = format!(
        "SELECT host_id, gpu_index, date_trunc('minute', ts), count(*)::int, {}
  FROM (SELECT *, CASE WHEN d <= {MAX_GPU_WATTS} * extract(epoch FROM ts - prev_ts) THEN d
                       ELSE energy_joules END AS e
          FROM (SELECT *, CASE WHEN energy_joules_total >= prev_total
                               THEN energy_joules_total - prev_total
                               ELSE energy_joules_total END AS d
                  FROM s WHERE ts >= $1) c) m
 GROUP BY 1, 2, 3",
        aggs.join(", "),
    );
    format!(
        "WITH s AS (
  SELECT host_id, gpu_index, ts, {},
         lag(energy_joules_total) OVER (PARTITION BY host_id, gpu_index ORDER BY ts) AS prev_total,
         lag(ts) OVER (PARTITION BY host_id, gpu_index ORDER BY ts) AS prev_ts
    FROM gpu_samples
   WHERE ts >= $1 - $4::interval AND ts < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
)
{}",
        inputs.join(", "),
        upsert(
            "gpu_samples_1m",
            &["host_id", "gpu_index", "bucket"],
            &names,
            &select
        )
    )
});

/// The most a GPU board draws, as ingest bounds `power_watts`: a counter difference
/// above it per second since the previous sample is not energy.
const MAX_GPU_WATTS: f64 = 5_000.0;

/// How far back a counter-only GPU sample looks for its predecessor.
const COUNTER_LOOKBACK: &str = "10 minutes";

/// Quarter-hours from minutes (`$1..$2`, hosts `$3`): the mean of the minutes (as charts
/// average them), the maximum of their maxima, the last counter.
fn quarter_rollup(table: &[Metric], from: &str, to: &str, key: &[&str]) -> String {
    let cols = rollup_columns(table);
    let names: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
    let aggs: Vec<&str> = cols.iter().map(|c| c.2.as_str()).collect();
    let group: Vec<String> = (1..=key.len()).map(|i| i.to_string()).collect();
    let key_sel = key[..key.len() - 1].join(", ");
    upsert(
        to,
        key,
        &names,
        &format!(
            "SELECT {key_sel}, rackwatch_quarter(bucket), sum(samples)::int, {}
  FROM {from}
 WHERE bucket >= $1 AND bucket < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
 GROUP BY {}",
            aggs.join(", "),
            group.join(", ")
        ),
    )
}

static HOST_ROLLUP_15M: LazyLock<String> = LazyLock::new(|| {
    quarter_rollup(
        HOST_METRICS,
        "host_samples_1m",
        "host_samples_15m",
        &["host_id", "bucket"],
    )
});

static GPU_ROLLUP_15M: LazyLock<String> = LazyLock::new(|| {
    quarter_rollup(
        GPU_METRICS,
        "gpu_samples_1m",
        "gpu_samples_15m",
        &["host_id", "gpu_index", "bucket"],
    )
});

/// The rollup columns of the host (`gpu = false`) or GPU table, custom ones included,
/// as they appear in the 1-minute table.
pub fn minute_columns(gpu: bool) -> Vec<String> {
    let (table, custom): (&[Metric], &[(&str, &str)]) = if gpu {
        (GPU_METRICS, &GPU_CUSTOM)
    } else {
        (HOST_METRICS, &HOST_CUSTOM)
    };
    let mut v: Vec<String> = rollup_columns(table).into_iter().map(|c| c.0).collect();
    v.extend(custom.iter().map(|c| c.0.to_string()));
    v
}

/// The rollup columns that 15-minute rows carry.
pub fn quarter_columns(gpu: bool) -> Vec<String> {
    rollup_columns(if gpu { GPU_METRICS } else { HOST_METRICS })
        .into_iter()
        .map(|c| c.0)
        .collect()
}

/// A quarter-hour, the unit of the 15-minute rollups.
pub const QUARTER: Duration = Duration::minutes(15);

/// The start of the quarter-hour that holds `t` (quarter-hours start at :00, :15, …).
pub fn quarter(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(QUARTER).expect("quarter-hour truncation")
}

/// What one rollup run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollupRun {
    pub host_rows: u64,
    pub gpu_rows: u64,
    pub dirty_buckets: u64,
    /// 15-minute rows written (hosts and GPUs).
    pub quarter_rows: u64,
}

impl Store {
    /// Roll up every minute completed since the last run (plus a few recent ones again)
    /// and every minute marked dirty by late samples; then every quarter-hour those
    /// minutes complete or change. The watermark (every minute before it is rolled up)
    /// also tells charts where 15-minute rows end: at its quarter-hour.
    pub async fn run_rollups(&self, now: DateTime<Utc>) -> Result<RollupRun, sqlx::Error> {
        let end = now
            .duration_trunc(Duration::minutes(1))
            .expect("minute truncation");
        let watermark: Option<DateTime<Utc>> =
            sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        // From the recent minutes before the watermark; or, where `end` is behind the
        // watermark (a leader whose clock is behind the last one's), before `end`.
        let start = match watermark {
            Some(w) => w.min(end) - Duration::minutes(REDO_MINUTES),
            None => end - Duration::hours(FIRST_RUN_LOOKBACK_HOURS),
        };
        let mut run = RollupRun::default();
        // One hour per statement keeps transactions short after a long pause.
        let mut from = start;
        while from < end {
            let to = (from + Duration::hours(1)).min(end);
            let (h, g) = self.rollup_range(from, to, None).await?;
            run.host_rows += h;
            run.gpu_rows += g;
            from = to;
        }
        // The completed quarter-hours among the minutes just rolled up.
        run.quarter_rows += self
            .rollup_quarters(quarter(start), quarter(end), None)
            .await?;
        sqlx::query!(
            "INSERT INTO job_state (name, watermark, updated_at) VALUES ('rollup_1m', $1, now())
             ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
            end,
        )
        .execute(&self.pool)
        .await?;

        // Late minutes: recompute per host, in bounded chunks. A chunk's marks are
        // claimed, redone, then deleted with their hours marked for the energy job; a
        // run that dies between leaves them claimed, to be taken again after
        // CLAIM_EXPIRES.
        loop {
            // Claimed at the database's time, which the expiry is judged by.
            let rows = sqlx::query!(
                r#"WITH c AS (SELECT host_id, bucket FROM rollup_dirty
                               WHERE claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $1)
                               ORDER BY host_id, bucket LIMIT 1000 FOR UPDATE SKIP LOCKED)
                   UPDATE rollup_dirty d SET claimed_at = now() FROM c
                    WHERE d.host_id = c.host_id AND d.bucket = c.bucket
                   RETURNING d.host_id AS "host_id!", d.bucket AS "bucket!", d.claimed_at AS "claimed_at!""#,
                CLAIM_EXPIRES.num_seconds() as f64,
            )
            .fetch_all(&self.pool)
            .await?;
            let Some(claim) = rows.first().map(|r| r.claimed_at) else {
                break;
            };
            let dirty: Vec<(i64, DateTime<Utc>)> =
                rows.into_iter().map(|r| (r.host_id, r.bucket)).collect();
            run.dirty_buckets += dirty.len() as u64;
            if let Err(e) = self.redo_minutes(&dirty, end, &mut run).await {
                // Given back for the next run (or, if that fails too, taken again once
                // the claim expires).
                if let Err(m) = sqlx::query!(
                    "UPDATE rollup_dirty SET claimed_at = NULL WHERE claimed_at = $1",
                    claim
                )
                .execute(&self.pool)
                .await
                {
                    tracing::warn!(
                        minutes = dirty.len(),
                        "late minutes could not be rolled up again ({e}) nor given back ({m}); they are taken again in {} minutes",
                        CLAIM_EXPIRES.num_minutes()
                    );
                }
                return Err(e);
            }
            // Done: the marks go (those set again meanwhile lost their claim and stay),
            // and the hours of the redone minutes need their energy accounted again.
            sqlx::query!(
                r#"WITH d AS (DELETE FROM rollup_dirty WHERE claimed_at = $1 RETURNING host_id, bucket)
                   INSERT INTO energy_dirty (host_id, hour)
                   SELECT DISTINCT host_id, date_trunc('hour', bucket, 'UTC') FROM d ON CONFLICT DO NOTHING"#,
                claim,
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(run)
    }

    /// Roll up the late minutes `dirty` again, then their quarter-hours that are complete
    /// by `end` (the others are rolled up when they are).
    async fn redo_minutes(
        &self,
        dirty: &[(i64, DateTime<Utc>)],
        end: DateTime<Utc>,
        run: &mut RollupRun,
    ) -> Result<(), sqlx::Error> {
        let mut quarters: Vec<(i64, DateTime<Utc>)> = Vec::new();
        for &(host, bucket) in dirty {
            let (h, g) = self
                .rollup_range(bucket, bucket + Duration::minutes(1), Some(vec![host]))
                .await?;
            run.host_rows += h;
            run.gpu_rows += g;
            quarters.push((host, quarter(bucket)));
        }
        quarters.sort_unstable();
        quarters.dedup();
        for (host, q) in quarters.into_iter().filter(|(_, q)| *q + QUARTER <= end) {
            run.quarter_rows += self
                .rollup_quarters(q, q + QUARTER, Some(vec![host]))
                .await?;
        }
        Ok(())
    }

    /// Roll up the 1-minute rows of the quarter-hours in `[from, to)` (quarter-aligned)
    /// into 15-minute rows; returns the rows written.
    pub async fn rollup_quarters(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        hosts: Option<Vec<i64>>,
    ) -> Result<u64, sqlx::Error> {
        let mut n = 0;
        let mut q = from;
        // A day per statement keeps transactions short (and backfills bounded).
        while q < to {
            let next = (q + Duration::days(1)).min(to);
            for sql in [&*HOST_ROLLUP_15M, &*GPU_ROLLUP_15M] {
                n += sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(q)
                    .bind(next)
                    .bind(hosts.clone())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            q = next;
        }
        self.refresh_forecast_hours(from, to, hosts).await?;
        Ok(n)
    }

    /// Sum again the hours that hold `[from, to)` (of `hosts`, or all) into
    /// `forecast_hourly`, from the quarter-hours: per host and hour, how many GPUs have a
    /// utilization and a power mean and the sums of those means, and the mean disk space
    /// used. Hours summed for every host are marked in `forecast_hours`. A day per
    /// statement.
    pub async fn refresh_forecast_hours(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        hosts: Option<Vec<i64>>,
    ) -> Result<(), sqlx::Error> {
        if from >= to {
            return Ok(());
        }
        let end = to.duration_round_up(Duration::hours(1)).expect("hour");
        let mut h = from.duration_trunc(Duration::hours(1)).expect("hour");
        while h < end {
            let next = (h + Duration::days(1)).min(end);
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
            sqlx::query!(
                r#"INSERT INTO forecast_hourly (hour, host_id, util_gpus, util_sum, power_gpus, power_sum)
                   SELECT hour, host_id, count(util)::int, sum(util), count(power)::int, sum(power)
                     FROM (SELECT host_id, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
                                  avg(util_pct)::float8 AS util, avg(power_watts)::float8 AS power
                             FROM gpu_samples_15m
                            WHERE bucket >= $1 AND bucket < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
                            GROUP BY host_id, gpu_index, 2) g
                    GROUP BY hour, host_id
                   ON CONFLICT (hour, host_id) DO UPDATE SET util_gpus = EXCLUDED.util_gpus,
                      util_sum = EXCLUDED.util_sum, power_gpus = EXCLUDED.power_gpus, power_sum = EXCLUDED.power_sum"#,
                h,
                next,
                hosts.as_deref(),
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                r#"INSERT INTO forecast_hourly (hour, host_id, disk_used)
                   SELECT date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), host_id,
                          avg(disk_used_bytes)::float8
                     FROM host_samples_15m
                    WHERE bucket >= $1 AND bucket < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
                      AND disk_used_bytes IS NOT NULL
                    GROUP BY 1, 2
                   ON CONFLICT (hour, host_id) DO UPDATE SET disk_used = EXCLUDED.disk_used"#,
                h,
                next,
                hosts.as_deref(),
            )
            .execute(&mut *tx)
            .await?;
            if hosts.is_none() {
                sqlx::query!(
                    "INSERT INTO forecast_hours (hour)
                     SELECT generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour')
                     ON CONFLICT DO NOTHING",
                    h,
                    next,
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            h = next;
        }
        Ok(())
    }

    /// Roll up the minutes in `[from, to)` (of `hosts`, or all); returns host and GPU
    /// rows written. Used by the job and to rebuild history after a bulk import.
    pub async fn rollup_range(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        hosts: Option<Vec<i64>>,
    ) -> Result<(u64, u64), sqlx::Error> {
        let h = sqlx::query(sqlx::AssertSqlSafe(HOST_ROLLUP.as_str()))
            .bind(from)
            .bind(to)
            .bind(hosts.clone())
            .execute(&self.pool)
            .await?
            .rows_affected();
        let g = sqlx::query(sqlx::AssertSqlSafe(GPU_ROLLUP.as_str()))
            .bind(from)
            .bind(to)
            .bind(hosts)
            .bind(COUNTER_LOOKBACK)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((h, g))
    }
}

impl Store {
    /// Whether any 1-minute host rollup is older than `t` (history was written before).
    pub async fn has_rollups_before(&self, t: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM host_samples_1m WHERE bucket < $1) AS "exists!""#,
            t
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Drop the late-minute marks in `[from, to)`: those minutes were rolled up in bulk.
    pub async fn forget_late_minutes(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "DELETE FROM rollup_dirty WHERE bucket >= $1 AND bucket < $2",
            from,
            to
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tell the energy job to account every host hour with rollups in `[from, to)`.
    pub async fn mark_energy_hours(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO energy_dirty (host_id, hour)
             SELECT DISTINCT host_id, date_trunc('hour', bucket, 'UTC') FROM host_samples_1m
              WHERE bucket >= $1 AND bucket < $2 ON CONFLICT DO NOTHING",
            from,
            to,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Energy accounting rows (and their host and rack sums, facility meter readings and grid
    /// intensities) older than `cutoff` (retention).
    pub async fn drop_energy_hours_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        for sums in [
            "DELETE FROM rack_power_hourly WHERE hour < $1",
            "DELETE FROM host_power_hourly WHERE hour < $1",
            "DELETE FROM rack_power_hours WHERE hour < $1",
            "DELETE FROM facility_readings WHERE end_ts < $1",
            "DELETE FROM grid_intensity WHERE hour < $1",
        ] {
            sqlx::query(sums).bind(cutoff).execute(&self.pool).await?;
        }
        Ok(
            sqlx::query!("DELETE FROM energy_hourly WHERE hour < $1", cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
