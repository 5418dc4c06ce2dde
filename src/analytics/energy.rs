//! Energy accounting: the hourly job that turns 1-minute rollups into `energy_hourly`,
//! per GPU and per host (its non-GPU parts), which the weekly report sums up.
//!
//! - GPU energy is measured from the total-energy counter (the sum of the agent's
//!   reset-safe per-sample deltas, see `store::rollup`). Minutes of a GPU without a
//!   counter delta (no counter, or only a first reading with no predecessor within
//!   10 minutes) are estimated from sampled power: mean power × 60 s per sampled
//!   minute. Energy of a gap in sampling is in the first counter delta after it (the
//!   counter kept counting), so measured GPUs lose nothing to gaps; estimated ones do.
//! - Host (non-GPU) energy is measured where the host reports RAPL, otherwise modeled:
//!   `idle + (max − idle) × CPU utilization` watts of the host's power model (chosen by
//!   its label `model`) × 60 s per sampled minute.
//! - A GPU minute whose mean utilization is below `energy.idle_util_pct` is idle: its
//!   energy counts as idle energy.
//!
//! Hours are UTC hours, accounted once the rollups have finished them. The job redoes the
//! last hour on every run and any hour whose rollups were recomputed after late samples
//! (`energy_dirty`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::config::EnergyConfig;
use crate::store::Store;

/// Hours are accounted once their last minute's rollups are settled.
const SETTLE: i64 = 5;
/// A first run accounts this far back, so last week's report is complete.
const FIRST_RUN_LOOKBACK_DAYS: i64 = 8;
/// Hours per statement.
const CHUNK_HOURS: i64 = 24;

/// What one accounting run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AccountingRun {
    pub rows: u64,
    pub dirty_hours: u64,
    /// Hours are accounted up to (excluding) this time.
    pub until: Option<DateTime<Utc>>,
}

/// Account every settled hour since the last run (plus the last one again) and every
/// hour marked dirty by late samples.
pub async fn run(
    store: &Store,
    cfg: &EnergyConfig,
    now: DateTime<Utc>,
) -> Result<AccountingRun, sqlx::Error> {
    let mut end = (now - Duration::minutes(SETTLE))
        .duration_trunc(Duration::hours(1))
        .expect("hour truncation");
    // Only hours the 1-minute rollups have finished: after the rollup job fell behind (it
    // failed for a while, or the server was stopped and `report energy` runs), an hour
    // accounted from missing rollups would keep its gap for good.
    let rolled: Option<DateTime<Utc>> =
        sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
            .fetch_optional(&store.pool)
            .await?
            .flatten();
    if let Some(r) = rolled {
        end = end.min(
            r.duration_trunc(Duration::hours(1))
                .expect("hour truncation"),
        );
    }
    let watermark = watermark(store).await?;
    let start = match watermark {
        Some(w) => (w - Duration::hours(1)).min(end),
        None => end - Duration::days(FIRST_RUN_LOOKBACK_DAYS),
    };
    if watermark.is_none() {
        set_state(store, "energy_hourly_from", start).await?;
    }
    let mut run = AccountingRun::default();
    let mut from = start;
    while from < end {
        let to = (from + Duration::hours(CHUNK_HOURS)).min(end);
        run.rows += account_range(store, cfg, from, to, None).await?;
        from = to;
    }
    sqlx::query!(
        "INSERT INTO job_state (name, watermark, updated_at) VALUES ('energy_hourly', $1, now())
         ON CONFLICT (name) DO UPDATE SET watermark = GREATEST(job_state.watermark, EXCLUDED.watermark),
                                          updated_at = now()",
        end,
    )
    .execute(&store.pool)
    .await?;
    let until = end.max(watermark.unwrap_or(end));
    run.until = Some(until);

    // Late samples of hours not yet settled wait for them: an hour is accounted whole,
    // once, so a week's total never counts part of an hour the report leaves out.
    loop {
        let dirty: Vec<(i64, DateTime<Utc>)> = sqlx::query!(
            "DELETE FROM energy_dirty WHERE (host_id, hour) IN
                (SELECT host_id, hour FROM energy_dirty WHERE hour < $1 ORDER BY hour, host_id LIMIT 500)
             RETURNING host_id, hour",
            until,
        )
        .fetch_all(&store.pool)
        .await?
        .into_iter()
        .map(|r| (r.host_id, r.hour))
        .collect();
        if dirty.is_empty() {
            break;
        }
        run.dirty_hours += dirty.len() as u64;
        let mut by_hour: std::collections::BTreeMap<DateTime<Utc>, Vec<i64>> = Default::default();
        for (host, hour) in dirty {
            by_hour.entry(hour).or_default().push(host);
        }
        for (hour, hosts) in by_hour {
            run.rows +=
                account_range(store, cfg, hour, hour + Duration::hours(1), Some(hosts)).await?;
        }
    }
    Ok(run)
}

async fn set_state(store: &Store, name: &str, t: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO job_state (name, watermark, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
        name,
        t,
    )
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Make sure the hours in `[from, to)` are accounted: the job accounts forward from its
/// first run, so a report of an older week (rollups imported, a server that was down
/// when the job started) accounts the missing hours first, once. Returns rows written.
pub async fn ensure_accounted(
    store: &Store,
    cfg: &EnergyConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let from = from
        .duration_trunc(Duration::hours(1))
        .expect("hour truncation");
    let first: Option<DateTime<Utc>> =
        sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'energy_hourly_from'")
            .fetch_optional(&store.pool)
            .await?
            .flatten();
    let Some(first) = first else {
        return Ok(0); // the job has not run yet; its first run covers recent weeks
    };
    // Nothing to account before the oldest day of rollups still kept.
    let oldest: Option<chrono::NaiveDate> = sqlx::query_scalar!(
        "SELECT min(to_date(right(c.relname, 8), 'YYYYMMDD')) FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = 'gpu_samples_1m'",
    )
    .fetch_one(&store.pool)
    .await?;
    let from = match oldest.and_then(|d| d.and_hms_opt(0, 0, 0)) {
        Some(d) => from.max(d.and_utc()),
        None => return Ok(0),
    };
    if from >= first {
        return Ok(0);
    }
    let until = first.min(
        to.duration_trunc(Duration::hours(1))
            .expect("hour truncation"),
    );
    let mut rows = 0;
    let mut t = from;
    while t < until {
        let next = (t + Duration::hours(CHUNK_HOURS)).min(until);
        rows += account_range(store, cfg, t, next, None).await?;
        t = next;
    }
    if until == first {
        set_state(store, "energy_hourly_from", from).await?;
    }
    Ok(rows)
}

/// Where the job has accounted up to.
pub async fn watermark(store: &Store) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(
        sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'energy_hourly'")
            .fetch_optional(&store.pool)
            .await?
            .flatten(),
    )
}

/// (Re)compute the hours in `[from, to)` (whole UTC hours) of `hosts`, or of all hosts.
pub async fn account_range(
    store: &Store,
    cfg: &EnergyConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    hosts: Option<Vec<i64>>,
) -> Result<u64, sqlx::Error> {
    let models = sqlx::query!(
        r#"SELECT id, labels->>'model' AS model FROM hosts WHERE ($1::int8[] IS NULL OR id = ANY($1))"#,
        hosts.as_deref(),
    )
    .fetch_all(&store.pool)
    .await?;
    let (mut ids, mut idle, mut max) = (Vec::new(), Vec::new(), Vec::new());
    for r in models {
        let (id, model) = (r.id, r.model);
        let m = model
            .and_then(|m| cfg.host_models.get(&m))
            .unwrap_or(&cfg.default_host_model);
        ids.push(id);
        idle.push(m.idle_watts);
        max.push(m.max_watts);
    }
    let mut tx = store.pool.begin().await?;
    // Recomputed hours replace what was there, including rows of GPUs that are gone.
    sqlx::query!(
        "DELETE FROM energy_hourly WHERE hour >= $1 AND hour < $2 AND ($3::int8[] IS NULL OR host_id = ANY($3))",
        from,
        to,
        hosts.as_deref(),
    )
    .execute(&mut *tx)
    .await?;
    // GPU rows; `$3` is the idle utilization level.
    let g = sqlx::query!(
        "
INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j, estimated_j, modeled_j, idle_j,
    covered_minutes, idle_minutes, busy_minutes, util_sum, power_max_w, counter_resets,
    power_throttle_s, thermal_throttle_s)
SELECT host_id, gpu_index, date_trunc('hour', bucket, 'UTC'),
       COALESCE(sum(energy_joules) FILTER (WHERE energy_samples > 0), 0),
       COALESCE(sum(power_watts::float8 * 60) FILTER (WHERE COALESCE(energy_samples, 0) = 0), 0),
       0,
       COALESCE(sum(CASE WHEN energy_samples > 0 THEN energy_joules ELSE power_watts::float8 * 60 END)
                FILTER (WHERE util_pct < $3::float8), 0),
       count(*)::int, (count(*) FILTER (WHERE util_pct < $3::float8))::int, (count(*) FILTER (WHERE util_pct >= $3::float8))::int,
       COALESCE(sum(util_pct::float8), 0), max(power_watts_max), COALESCE(sum(counter_resets), 0)::int,
       COALESCE(sum(60.0 * power_throttle_samples / samples), 0),
       COALESCE(sum(60.0 * thermal_throttle_samples / samples), 0)
  FROM gpu_samples_1m
 WHERE bucket >= $1 AND bucket < $2 AND ($4::int8[] IS NULL OR host_id = ANY($4))
 GROUP BY 1, 2, 3
ON CONFLICT (hour, host_id, gpu_index) DO UPDATE SET measured_j = EXCLUDED.measured_j,
    estimated_j = EXCLUDED.estimated_j, modeled_j = EXCLUDED.modeled_j, idle_j = EXCLUDED.idle_j,
    covered_minutes = EXCLUDED.covered_minutes, idle_minutes = EXCLUDED.idle_minutes,
    busy_minutes = EXCLUDED.busy_minutes, util_sum = EXCLUDED.util_sum, power_max_w = EXCLUDED.power_max_w,
    counter_resets = EXCLUDED.counter_resets, power_throttle_s = EXCLUDED.power_throttle_s,
    thermal_throttle_s = EXCLUDED.thermal_throttle_s",
        from,
        to,
        cfg.idle_util_pct,
        hosts.as_deref(),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Host rows: `$3`, `$4`, `$5` are parallel arrays of host id, idle watts, max watts.
    let h = sqlx::query!(
        "
INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j, modeled_j, covered_minutes, util_sum)
SELECT r.host_id, -1, date_trunc('hour', r.bucket, 'UTC'),
       COALESCE(sum(r.energy_joules) FILTER (WHERE r.energy_samples > 0), 0),
       COALESCE(sum(60 * (m.idle_w + (m.max_w - m.idle_w) * r.cpu_util_pct::float8 / 100))
                FILTER (WHERE COALESCE(r.energy_samples, 0) = 0), 0),
       count(*)::int, COALESCE(sum(r.cpu_util_pct::float8), 0)
  FROM host_samples_1m r
  JOIN unnest($3::int8[], $4::float8[], $5::float8[]) AS m (host_id, idle_w, max_w) ON m.host_id = r.host_id
 WHERE r.bucket >= $1 AND r.bucket < $2
 GROUP BY 1, 2, 3
ON CONFLICT (hour, host_id, gpu_index) DO UPDATE SET measured_j = EXCLUDED.measured_j,
    modeled_j = EXCLUDED.modeled_j, covered_minutes = EXCLUDED.covered_minutes, util_sum = EXCLUDED.util_sum",
        from,
        to,
        &ids,
        &idle,
        &max,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    refresh_power_sums(store, from, to).await?;
    Ok(g + h)
}

/// Sum the hours in `[from, to)` per host (`host_power_hourly`) and per rack
/// (`rack_power_hourly`, W), and mark them summed. The capacity job dates racks' power
/// budgets from 28 days of these 100-odd rack rows an hour, and a pool's page reads its
/// hosts' 168 rows a week, instead of the 16,000 GPU rows an hour of a 2,000-host fleet.
/// Every hour accounted is summed again, so a recomputed hour never leaves a stale sum.
pub async fn refresh_power_sums(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = store.pool.begin().await?;
    // A plan over weeks of energy rows crosses jit_above_cost; compiling it takes longer
    // than running it (1.4 s of 4.0 s for 28 days of 16,000 GPUs).
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    // Read, then write: a plain SELECT scans in parallel, an INSERT … SELECT does not
    // (28 days of a 2,000-host fleet: 10.7 million rows).
    // Each GPU's mean power over the minutes it reported: an hour a host reported half of
    // (an outage, the agent's first hour) is not half its draw.
    type HostHour = (
        i64,
        DateTime<Utc>,
        f64,
        Option<f64>,
        Option<i64>,
        Option<f64>,
    );
    let mut sums: Vec<HostHour> = sqlx::query_as(concat!(
        "SELECT e.host_id, e.hour, sum(",
        hour_mean_watts!(),
        "),
                sum(e.util_sum) FILTER (WHERE e.gpu_index >= 0),
                sum(e.idle_minutes + e.busy_minutes) FILTER (WHERE e.gpu_index >= 0)::int8,
                sum(e.idle_j) FILTER (WHERE e.gpu_index >= 0)
           FROM energy_hourly e
          WHERE e.hour >= $1 AND e.hour < $2
          GROUP BY 1, 2",
    ))
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    let racks: HashMap<i64, (String, String)> = sqlx::query_as::<_, (i64, String, String)>(
        "SELECT id, site, rack FROM hosts WHERE rack <> ''",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, site, rack)| (id, (site, rack)))
    .collect();
    for sql in [
        "DELETE FROM host_power_hourly WHERE hour >= $1 AND hour < $2",
        "DELETE FROM rack_power_hourly WHERE hour >= $1 AND hour < $2",
    ] {
        sqlx::query(sql)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
    }
    let mut per_rack: BTreeMap<(DateTime<Utc>, &str, &str), f64> = BTreeMap::new();
    let mut cols: HostColumns = Default::default();
    // In hour order, as the energy job writes them: the hour index ranges stay narrow.
    sums.sort_unstable_by_key(|s| (s.1, s.0));
    for (host, hour, watts, util, minutes, idle) in sums {
        if let Some((site, rack)) = racks.get(&host) {
            *per_rack.entry((hour, site, rack)).or_default() += watts;
        }
        cols.0.push(hour);
        cols.1.push(host);
        cols.2.push(watts);
        cols.3.push(util);
        cols.4.push(minutes);
        cols.5.push(idle);
    }
    sqlx::query(
        "INSERT INTO host_power_hourly (hour, host_id, watts, gpu_util_sum, gpu_minutes, gpu_idle_j)
         SELECT * FROM UNNEST($1::timestamptz[], $2::int8[], $3::float8[], $4::float8[], $5::int8[], $6::float8[])",
    )
    .bind(&cols.0)
    .bind(&cols.1)
    .bind(&cols.2)
    .bind(&cols.3)
    .bind(&cols.4)
    .bind(&cols.5)
    .execute(&mut *tx)
    .await?;
    let (mut hours, mut sites, mut rack_names, mut watts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((hour, site, rack), w) in per_rack {
        hours.push(hour);
        sites.push(site);
        rack_names.push(rack);
        watts.push(w);
    }
    sqlx::query(
        "INSERT INTO rack_power_hourly (hour, site, rack, watts)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::float8[])",
    )
    .bind(&hours)
    .bind(&sites)
    .bind(&rack_names)
    .bind(&watts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO rack_power_hours (hour)
         SELECT generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour')
         ON CONFLICT DO NOTHING",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Columns of `host_power_hourly` rows, for one insert.
type HostColumns = (
    Vec<DateTime<Utc>>,
    Vec<i64>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<Option<i64>>,
    Vec<Option<f64>>,
);

/// Sum per host and rack the hours in `[from, to)` (whole UTC hours) not summed yet: energy
/// accounted before these sums were kept, or imported. From the first missing hour to the
/// last, a day at a time.
pub async fn ensure_power_sums(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let missing: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT min(h), max(h) FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 hour',
                                                   interval '1 hour') h
          WHERE NOT EXISTS (SELECT 1 FROM rack_power_hours r WHERE r.hour = h)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&store.pool)
    .await?;
    if let (Some(first), Some(last)) = missing {
        // A day at a time: each day's sums are kept as soon as they are made, and a fleet's
        // 28 days are not held in memory at once.
        let end = last + Duration::hours(1);
        let mut t = first;
        while t < end {
            let next = (t + Duration::hours(CHUNK_HOURS)).min(end);
            refresh_power_sums(store, t, next).await?;
            t = next;
        }
    }
    Ok(())
}
