//! 1-minute rollups and 15-minute rollups of those, kept by the rollup job.
//! Dashboards and analytics read these instead of scanning raw history.

use chrono::{DateTime, Duration, DurationRound, Utc};

use super::Store;

/// Recent minutes recomputed on every run, to absorb samples that arrive a little late
/// (batching delays the newest samples by up to one ship interval).
const REDO_MINUTES: i64 = 5;
/// A first run (empty watermark) starts this far back.
const FIRST_RUN_LOOKBACK_HOURS: i64 = 24;

/// `INSERT INTO <table> (columns) … ON CONFLICT DO UPDATE` around a SELECT of host rollup
/// rows, for the 15-minute rows (the 1-minute rows below also carry energy columns).
macro_rules! host_rollup_upsert {
    ($table:literal, $select:literal) => {
        concat!(
            "INSERT INTO ", $table, " (host_id, bucket, samples, cpu_util_pct, cpu_util_pct_max, load1,
    mem_used_bytes, mem_total_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s,
    net_tx_bytes_per_s, disk_used_bytes, disk_total_bytes)
", $select, "
ON CONFLICT (host_id, bucket) DO UPDATE SET samples = EXCLUDED.samples, cpu_util_pct = EXCLUDED.cpu_util_pct,
    cpu_util_pct_max = EXCLUDED.cpu_util_pct_max, load1 = EXCLUDED.load1, mem_used_bytes = EXCLUDED.mem_used_bytes,
    mem_total_bytes = EXCLUDED.mem_total_bytes, disk_read_bytes_per_s = EXCLUDED.disk_read_bytes_per_s,
    disk_write_bytes_per_s = EXCLUDED.disk_write_bytes_per_s, net_rx_bytes_per_s = EXCLUDED.net_rx_bytes_per_s,
    net_tx_bytes_per_s = EXCLUDED.net_tx_bytes_per_s, disk_used_bytes = EXCLUDED.disk_used_bytes,
    disk_total_bytes = EXCLUDED.disk_total_bytes"
        )
    };
}

/// The same for GPU rollup rows.
macro_rules! gpu_rollup_upsert {
    ($table:literal, $select:literal) => {
        concat!(
            "INSERT INTO ", $table, " (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, mem_util_pct,
    mem_used_bytes, power_watts, power_watts_max, energy_joules_total, temp_celsius, temp_celsius_max, sm_clock_mhz)
", $select, "
ON CONFLICT (host_id, gpu_index, bucket) DO UPDATE SET samples = EXCLUDED.samples, util_pct = EXCLUDED.util_pct,
    util_pct_max = EXCLUDED.util_pct_max, mem_util_pct = EXCLUDED.mem_util_pct, mem_used_bytes = EXCLUDED.mem_used_bytes,
    power_watts = EXCLUDED.power_watts, power_watts_max = EXCLUDED.power_watts_max,
    energy_joules_total = EXCLUDED.energy_joules_total, temp_celsius = EXCLUDED.temp_celsius,
    temp_celsius_max = EXCLUDED.temp_celsius_max, sm_clock_mhz = EXCLUDED.sm_clock_mhz"
        )
    };
}

const HOST_ROLLUP: &str = "
INSERT INTO host_samples_1m (host_id, bucket, samples, cpu_util_pct, cpu_util_pct_max, load1, mem_used_bytes,
    mem_total_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s,
    disk_used_bytes, disk_total_bytes, energy_joules, energy_samples)
SELECT host_id, date_trunc('minute', ts), count(*)::int, avg(cpu_util_pct), max(cpu_util_pct), avg(load1),
       avg(mem_used_bytes)::bigint, max(mem_total_bytes), avg(disk_read_bytes_per_s), avg(disk_write_bytes_per_s),
       avg(net_rx_bytes_per_s), avg(net_tx_bytes_per_s), avg(disk_used_bytes)::bigint, max(disk_total_bytes),
       sum(energy_joules), count(energy_joules)::int
  FROM host_samples
 WHERE ts >= $1 AND ts < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
 GROUP BY 1, 2
ON CONFLICT (host_id, bucket) DO UPDATE SET samples = EXCLUDED.samples, cpu_util_pct = EXCLUDED.cpu_util_pct,
    cpu_util_pct_max = EXCLUDED.cpu_util_pct_max, load1 = EXCLUDED.load1, mem_used_bytes = EXCLUDED.mem_used_bytes,
    mem_total_bytes = EXCLUDED.mem_total_bytes, disk_read_bytes_per_s = EXCLUDED.disk_read_bytes_per_s,
    disk_write_bytes_per_s = EXCLUDED.disk_write_bytes_per_s, net_rx_bytes_per_s = EXCLUDED.net_rx_bytes_per_s,
    net_tx_bytes_per_s = EXCLUDED.net_tx_bytes_per_s, disk_used_bytes = EXCLUDED.disk_used_bytes,
    disk_total_bytes = EXCLUDED.disk_total_bytes, energy_joules = EXCLUDED.energy_joules,
    energy_samples = EXCLUDED.energy_samples";

/// GPU minutes. Energy per sample is the agent's reset-safe delta (`energy_joules`);
/// for agents that send only the counter, the difference to the GPU's previous sample
/// (within `COUNTER_LOOKBACK`), where a counter that went backwards counts from zero.
/// Throttle bits: power = software power cap (0x4) | hardware power brake (0x80);
/// thermal = software (0x20) | hardware (0x40) thermal slowdown.
const GPU_ROLLUP: &str = "
WITH s AS (
  SELECT host_id, gpu_index, ts, util_pct, mem_util_pct, mem_used_bytes, power_watts, energy_joules_total,
         temp_celsius, sm_clock_mhz, throttle_reasons, energy_joules,
         lag(energy_joules_total) OVER (PARTITION BY host_id, gpu_index ORDER BY ts) AS prev_total
    FROM gpu_samples
   WHERE ts >= $1 - $4::interval AND ts < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
)
INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, mem_util_pct,
    mem_used_bytes, power_watts, power_watts_max, energy_joules_total, temp_celsius, temp_celsius_max, sm_clock_mhz,
    energy_joules, energy_samples, power_samples, counter_resets, power_throttle_samples, thermal_throttle_samples)
SELECT host_id, gpu_index, date_trunc('minute', ts), count(*)::int, avg(util_pct), max(util_pct), avg(mem_util_pct),
       avg(mem_used_bytes)::bigint, avg(power_watts), max(power_watts),
       (array_agg(energy_joules_total ORDER BY ts DESC) FILTER (WHERE energy_joules_total IS NOT NULL))[1],
       avg(temp_celsius), max(temp_celsius), avg(sm_clock_mhz),
       sum(e), count(e)::int, count(power_watts)::int,
       count(*) FILTER (WHERE energy_joules_total < prev_total)::int,
       count(*) FILTER (WHERE throttle_reasons & 132 <> 0)::int,
       count(*) FILTER (WHERE throttle_reasons & 96 <> 0)::int
  FROM (SELECT *, CASE WHEN energy_joules IS NOT NULL THEN energy_joules
                       WHEN energy_joules_total IS NULL OR prev_total IS NULL THEN NULL
                       WHEN energy_joules_total >= prev_total THEN energy_joules_total - prev_total
                       ELSE energy_joules_total END AS e
          FROM s WHERE ts >= $1) m
 GROUP BY 1, 2, 3
ON CONFLICT (host_id, gpu_index, bucket) DO UPDATE SET samples = EXCLUDED.samples, util_pct = EXCLUDED.util_pct,
    util_pct_max = EXCLUDED.util_pct_max, mem_util_pct = EXCLUDED.mem_util_pct, mem_used_bytes = EXCLUDED.mem_used_bytes,
    power_watts = EXCLUDED.power_watts, power_watts_max = EXCLUDED.power_watts_max,
    energy_joules_total = EXCLUDED.energy_joules_total, temp_celsius = EXCLUDED.temp_celsius,
    temp_celsius_max = EXCLUDED.temp_celsius_max, sm_clock_mhz = EXCLUDED.sm_clock_mhz,
    energy_joules = EXCLUDED.energy_joules, energy_samples = EXCLUDED.energy_samples,
    power_samples = EXCLUDED.power_samples, counter_resets = EXCLUDED.counter_resets,
    power_throttle_samples = EXCLUDED.power_throttle_samples,
    thermal_throttle_samples = EXCLUDED.thermal_throttle_samples";

/// How far back a counter-only GPU sample looks for its predecessor.
const COUNTER_LOOKBACK: &str = "10 minutes";

// Quarter-hours from minutes: the mean of the minutes (as charts average them), the
// maximum of their maxima, the last energy counter.
const HOST_ROLLUP_15M: &str = host_rollup_upsert!(
    "host_samples_15m",
    "SELECT host_id, rackwatch_quarter(bucket), sum(samples)::int, avg(cpu_util_pct), max(cpu_util_pct_max),
       avg(load1), avg(mem_used_bytes)::bigint, max(mem_total_bytes), avg(disk_read_bytes_per_s),
       avg(disk_write_bytes_per_s), avg(net_rx_bytes_per_s), avg(net_tx_bytes_per_s), avg(disk_used_bytes)::bigint,
       max(disk_total_bytes)
  FROM host_samples_1m
 WHERE bucket >= $1 AND bucket < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
 GROUP BY 1, 2"
);

const GPU_ROLLUP_15M: &str = gpu_rollup_upsert!(
    "gpu_samples_15m",
    "SELECT host_id, gpu_index, rackwatch_quarter(bucket), sum(samples)::int, avg(util_pct), max(util_pct_max),
       avg(mem_util_pct), avg(mem_used_bytes)::bigint, avg(power_watts), max(power_watts_max),
       (array_agg(energy_joules_total ORDER BY bucket DESC) FILTER (WHERE energy_joules_total IS NOT NULL))[1],
       avg(temp_celsius), max(temp_celsius_max), avg(sm_clock_mhz)
  FROM gpu_samples_1m
 WHERE bucket >= $1 AND bucket < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))
 GROUP BY 1, 2, 3"
);

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
            sqlx::query_scalar("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        let start = match watermark {
            Some(w) => (w - Duration::minutes(REDO_MINUTES)).min(end),
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
        sqlx::query(
            "INSERT INTO job_state (name, watermark, updated_at) VALUES ('rollup_1m', $1, now())
             ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
        )
        .bind(end)
        .execute(&self.pool)
        .await?;

        // Late minutes: recompute per host, in bounded chunks.
        loop {
            // The hours of recomputed minutes need their energy accounted again.
            let dirty: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
                "WITH d AS (DELETE FROM rollup_dirty WHERE (host_id, bucket) IN
                    (SELECT host_id, bucket FROM rollup_dirty ORDER BY host_id, bucket LIMIT 1000)
                    RETURNING host_id, bucket),
                 e AS (INSERT INTO energy_dirty (host_id, hour)
                       SELECT DISTINCT host_id, date_trunc('hour', bucket, 'UTC') FROM d ON CONFLICT DO NOTHING)
                 SELECT host_id, bucket FROM d",
            )
            .fetch_all(&self.pool)
            .await?;
            if dirty.is_empty() {
                break;
            }
            run.dirty_buckets += dirty.len() as u64;
            let mut quarters: Vec<(i64, DateTime<Utc>)> = Vec::new();
            for (host, bucket) in dirty {
                let (h, g) = self
                    .rollup_range(bucket, bucket + Duration::minutes(1), Some(vec![host]))
                    .await?;
                run.host_rows += h;
                run.gpu_rows += g;
                quarters.push((host, quarter(bucket)));
            }
            // Their quarter-hours, if complete (the others are rolled up when they are).
            quarters.sort_unstable();
            quarters.dedup();
            for (host, q) in quarters.into_iter().filter(|(_, q)| *q + QUARTER <= end) {
                run.quarter_rows += self
                    .rollup_quarters(q, q + QUARTER, Some(vec![host]))
                    .await?;
            }
        }
        Ok(run)
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
            for sql in [HOST_ROLLUP_15M, GPU_ROLLUP_15M] {
                n += sqlx::query(sql)
                    .bind(q)
                    .bind(next)
                    .bind(hosts.clone())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            q = next;
        }
        Ok(n)
    }

    /// Roll up the minutes in `[from, to)` (of `hosts`, or all); returns host and GPU
    /// rows written. Used by the job and to rebuild history after a bulk import.
    pub async fn rollup_range(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        hosts: Option<Vec<i64>>,
    ) -> Result<(u64, u64), sqlx::Error> {
        let h = sqlx::query(HOST_ROLLUP)
            .bind(from)
            .bind(to)
            .bind(hosts.clone())
            .execute(&self.pool)
            .await?
            .rows_affected();
        let g = sqlx::query(GPU_ROLLUP)
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
