//! Time series for charts, already reduced to one point per bucket (a bucket is about
//! one pixel column of a chart), so pages never pull more rows than they can draw.
//! Short ranges read raw samples; longer ones read the 1-minute rollups, plus the
//! newest minutes the rollup job has not reached yet, rolled up from raw samples on
//! the fly, so a chart over rollups still reaches "now".

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Store;

/// Where a series was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SeriesSource)]
pub enum Source {
    /// Raw samples (5–10 s apart).
    Raw,
    /// 1-minute rollups (the minutes after the rollup job's watermark rolled up from raw
    /// samples in the query).
    Rollup1m,
    /// 15-minute rollups, then 1-minute rollups and raw samples for the newest minutes.
    Rollup15m,
}

/// One bucket of a host's metrics (means over the bucket).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HostPoint {
    pub host_name: String,
    pub ts: DateTime<Utc>,
    pub cpu_util_pct: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub disk_read_bytes_per_s: Option<f64>,
    pub disk_write_bytes_per_s: Option<f64>,
    pub net_rx_bytes_per_s: Option<f64>,
    pub net_tx_bytes_per_s: Option<f64>,
}

/// One bucket of a GPU's metrics (means, and maxima where kept). Metrics that the
/// rollups do not keep are null on long ranges.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GpuPoint {
    pub index: i16,
    pub ts: DateTime<Utc>,
    pub util_pct: Option<f64>,
    pub mem_util_pct: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub power_watts: Option<f64>,
    pub power_watts_max: Option<f64>,
    pub temp_celsius: Option<f64>,
    pub temp_celsius_max: Option<f64>,
    pub mem_temp_celsius: Option<f64>,
    pub sm_clock_mhz: Option<f64>,
    pub mem_clock_mhz: Option<f64>,
    pub fan_pct: Option<f64>,
    /// Some sample in the bucket had a clock-throttle reason set (raw ranges only).
    pub throttled: Option<bool>,
}

/// NVML clock-throttle reasons that mean "slowed down": SW power cap (0x4), HW slowdown
/// (0x8), SW thermal (0x20), HW thermal (0x40), HW power brake (0x80). Idle (0x1) and
/// application clocks (0x2) are not faults.
pub const THROTTLE_MASK: i64 = 0x4 | 0x8 | 0x20 | 0x40 | 0x80;

/// GPU metrics the chart queries read from rollups on long ranges (`GPU_ROLLUP` below).
pub const GPU_ROLLUP_CHART: &[&str] = &[
    "util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "power_watts",
    "temp_celsius",
    "sm_clock_mhz",
];

/// GPU metrics the charts show from raw samples only (null on rollup ranges).
pub const GPU_RAW_ONLY: &[&str] = &["mem_temp_celsius", "mem_clock_mhz", "fan_pct"];

/// What only raw GPU samples know, per bucket: the throttle reasons that held for at
/// least half of its samples (slowdown bits of [`THROTTLE_MASK`]; a brief cap in a long
/// bucket does not shade all of it), the mean fan speed and the enforced power limit.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GpuRawExtra {
    pub ts: DateTime<Utc>,
    pub reasons: Option<i64>,
    /// The slowdown bits any of its samples had.
    pub seen: Option<i64>,
    pub fan_pct: Option<f64>,
    pub power_limit_watts: Option<f64>,
}

/// A row of the inventory: a GPU with its host, or a host without GPUs (GPU fields null).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InventoryRow {
    pub host_name: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub agent_version: String,
    pub last_seen: Option<DateTime<Utc>>,
    pub index: Option<i16>,
    pub uuid: Option<String>,
    pub model: Option<String>,
    pub driver_version: Option<String>,
    pub memory_total_bytes: Option<i64>,
    pub gpu_last_seen: Option<DateTime<Utc>>,
}

/// Hardware events of the last period per GPU (index -1: host-wide).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FaultCount {
    pub host_name: String,
    pub index: i16,
    pub events: i64,
}

// Rollup sources of the chart queries (`host_series`, `gpu_series` over rollups): the
// `cuts` CTE says where each source of a query over `[from, to)` ends, and where its
// points start. With the 15-minute flag the quarter-hours from the first whole one in the
// range up to the rollup job's watermark come from 15-minute rollups, ending at a point's
// start (a point of 15-minute rows and minutes would weigh each of its minutes 15 times
// less than a quarter-hour); then 1-minute
// rollups up to the watermark (every minute before it is rolled up); then raw samples,
// rolled up to minutes in the query, up to `to`. The watermark is kept inside the range
// and never more than 6 hours before `to`, so a stalled job cannot make a page read days
// of raw samples. Points start at the range's start, or at its first quarter-hour, so that
// every 15-minute row falls inside one point. Means are sum over count: about half the
// work of `avg(float8)`, which also keeps a sum of squares per group, and rollup charts
// aggregate thousands of rows.
impl Store {
    /// Host metrics of `hosts` in `[from, to)`, one point per `bucket_secs`.
    pub async fn host_series(
        &self,
        hosts: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
        source: Source,
    ) -> Result<Vec<HostPoint>, sqlx::Error> {
        let secs = bucket_secs as f64;
        match source {
            Source::Raw => sqlx::query_as!(HostPoint, r#"
SELECT h.name AS host_name, date_bin(make_interval(secs => $4), s.ts, $2) AS "ts!",
       avg(s.cpu_util_pct)::float8 AS cpu_util_pct, avg(s.mem_used_bytes)::float8 AS mem_used_bytes,
       avg(s.disk_read_bytes_per_s) AS disk_read_bytes_per_s, avg(s.disk_write_bytes_per_s) AS disk_write_bytes_per_s,
       avg(s.net_rx_bytes_per_s) AS net_rx_bytes_per_s, avg(s.net_tx_bytes_per_s) AS net_tx_bytes_per_s
  FROM host_samples s JOIN hosts h ON h.id = s.host_id
 WHERE h.name = ANY($1) AND s.ts >= $2 AND s.ts < $3
 GROUP BY 1, 2 ORDER BY 1, 2"#, hosts, from, to, secs)
                .fetch_all(self.history())
                .await,
            // The rollup sources (`$5`: from 15-minute rollups), as described above `impl Store`.
            _ => sqlx::query_as!(
                HostPoint,
                r#"
WITH w AS (SELECT (SELECT watermark FROM job_state WHERE name = 'rollup_1m') AS w),
     c AS (SELECT LEAST($3::timestamptz, GREATEST($2::timestamptz, date_trunc('minute', $3::timestamptz - interval '6 hours'),
                         COALESCE(w.w, '-infinity'))) AS c1,
                  CASE WHEN $5::bool THEN rackwatch_quarter($2::timestamptz - interval '1 microsecond') + interval '15 minutes'
                       ELSE $2::timestamptz END AS origin
             FROM w),
     cuts AS (SELECT c1, origin,
                     CASE WHEN $5::bool THEN GREATEST(origin, date_bin(make_interval(secs => $4),
                                  LEAST(c1, COALESCE(rackwatch_quarter(w.w), origin)), origin))
                          ELSE $2::timestamptz END AS c15
                FROM c, w)
SELECT h.name AS host_name, date_bin(make_interval(secs => $4), s.bucket, (SELECT origin FROM cuts)) AS "ts!",
       sum(s.cpu_util_pct) / nullif(count(s.cpu_util_pct), 0) AS cpu_util_pct, sum(s.mem_used_bytes) / nullif(count(s.mem_used_bytes), 0) AS mem_used_bytes,
       sum(s.disk_read_bytes_per_s) / nullif(count(s.disk_read_bytes_per_s), 0) AS disk_read_bytes_per_s, sum(s.disk_write_bytes_per_s) / nullif(count(s.disk_write_bytes_per_s), 0) AS disk_write_bytes_per_s,
       sum(s.net_rx_bytes_per_s) / nullif(count(s.net_rx_bytes_per_s), 0) AS net_rx_bytes_per_s, sum(s.net_tx_bytes_per_s) / nullif(count(s.net_tx_bytes_per_s), 0) AS net_tx_bytes_per_s
  FROM (SELECT host_id, bucket, cpu_util_pct::float8, mem_used_bytes::float8, disk_read_bytes_per_s,
               disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s
          FROM host_samples_15m
         WHERE host_id IN (SELECT id FROM hosts WHERE name = ANY($1))
           AND bucket >= (SELECT origin FROM cuts) AND bucket < (SELECT c15 FROM cuts)
        UNION ALL
        SELECT host_id, bucket, cpu_util_pct::float8, mem_used_bytes::float8, disk_read_bytes_per_s,
               disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s
          FROM host_samples_1m
         WHERE host_id IN (SELECT id FROM hosts WHERE name = ANY($1))
           AND bucket >= (SELECT c15 FROM cuts) AND bucket < (SELECT c1 FROM cuts)
        UNION ALL
        SELECT host_id, date_trunc('minute', ts), avg(cpu_util_pct), avg(mem_used_bytes)::float8,
               avg(disk_read_bytes_per_s), avg(disk_write_bytes_per_s), avg(net_rx_bytes_per_s), avg(net_tx_bytes_per_s)
          FROM host_samples
         WHERE host_id IN (SELECT id FROM hosts WHERE name = ANY($1))
           AND ts >= (SELECT c1 FROM cuts) AND ts < $3
         GROUP BY 1, 2) s
  JOIN hosts h ON h.id = s.host_id
 GROUP BY 1, 2 ORDER BY 1, 2"#,
                hosts,
                from,
                to,
                secs,
                source == Source::Rollup15m,
            )
            .fetch_all(self.history())
            .await,
        }
    }

    /// GPU metrics of one host (one GPU if `index` is set), one point per bucket.
    pub async fn gpu_series(
        &self,
        host: &str,
        index: Option<i16>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
        source: Source,
    ) -> Result<Vec<GpuPoint>, sqlx::Error> {
        let (indexes, secs) = (index.map(|i| vec![i]), bucket_secs as f64);
        // The GPUs read: `$2` (one GPU), or every GPU of the host. An index array rather
        // than a range, so that the primary key (host, GPU, time) is searched once per GPU
        // for the time range instead of scanning all of the host's rows.
        match source {
            Source::Raw => sqlx::query_as!(
                GpuPoint,
                r#"
SELECT s.gpu_index AS "index!", date_bin(make_interval(secs => $5), s.ts, $3) AS "ts!",
       avg(s.util_pct)::float8 AS util_pct, avg(s.mem_util_pct)::float8 AS mem_util_pct,
       avg(s.mem_used_bytes)::float8 AS mem_used_bytes, avg(s.power_watts)::float8 AS power_watts,
       max(s.power_watts)::float8 AS power_watts_max, avg(s.temp_celsius)::float8 AS temp_celsius,
       max(s.temp_celsius)::float8 AS temp_celsius_max, avg(s.mem_temp_celsius)::float8 AS mem_temp_celsius,
       avg(s.sm_clock_mhz)::float8 AS sm_clock_mhz, avg(s.mem_clock_mhz)::float8 AS mem_clock_mhz,
       avg(s.fan_pct)::float8 AS fan_pct, bool_or(s.throttle_reasons & $6 <> 0) AS throttled
  FROM gpu_samples s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1)
   AND s.gpu_index = ANY(COALESCE($2::int2[], ARRAY(SELECT gpu_index FROM gpus
                                                   WHERE host_id = (SELECT id FROM hosts WHERE name = $1))))
   AND s.ts >= $3 AND s.ts < $4
 GROUP BY 1, 2 ORDER BY 1, 2"#,
                host,
                indexes.as_deref(),
                from,
                to,
                secs,
                THROTTLE_MASK,
            )
            .fetch_all(self.history())
            .await,
            // The rollup sources (`$7`: from 15-minute rollups), as described above `impl Store`.
            _ => sqlx::query_as!(
                GpuPoint,
                r#"
WITH w AS (SELECT (SELECT watermark FROM job_state WHERE name = 'rollup_1m') AS w),
     c AS (SELECT LEAST($4::timestamptz, GREATEST($3::timestamptz, date_trunc('minute', $4::timestamptz - interval '6 hours'),
                         COALESCE(w.w, '-infinity'))) AS c1,
                  CASE WHEN $7::bool THEN rackwatch_quarter($3::timestamptz - interval '1 microsecond') + interval '15 minutes'
                       ELSE $3::timestamptz END AS origin
             FROM w),
     cuts AS (SELECT c1, origin,
                     CASE WHEN $7::bool THEN GREATEST(origin, date_bin(make_interval(secs => $5),
                                  LEAST(c1, COALESCE(rackwatch_quarter(w.w), origin)), origin))
                          ELSE $3::timestamptz END AS c15
                FROM c, w)
SELECT s.gpu_index AS "index!", date_bin(make_interval(secs => $5), s.bucket, (SELECT origin FROM cuts)) AS "ts!",
       sum(s.util_pct) / nullif(count(s.util_pct), 0) AS util_pct, sum(s.mem_util_pct) / nullif(count(s.mem_util_pct), 0) AS mem_util_pct,
       sum(s.mem_used_bytes) / nullif(count(s.mem_used_bytes), 0) AS mem_used_bytes, sum(s.power_watts) / nullif(count(s.power_watts), 0) AS power_watts,
       max(s.power_watts_max) AS power_watts_max, sum(s.temp_celsius) / nullif(count(s.temp_celsius), 0) AS temp_celsius,
       max(s.temp_celsius_max) AS temp_celsius_max, NULL::float8 AS mem_temp_celsius,
       sum(s.sm_clock_mhz) / nullif(count(s.sm_clock_mhz), 0) AS sm_clock_mhz, NULL::float8 AS mem_clock_mhz,
       NULL::float8 AS fan_pct, NULL::bool AS throttled
  FROM (SELECT s.gpu_index, s.bucket, s.util_pct::float8, s.mem_util_pct::float8, s.mem_used_bytes::float8,
               s.power_watts::float8, s.power_watts_max::float8, s.temp_celsius::float8,
               s.temp_celsius_max::float8, s.sm_clock_mhz::float8
          FROM gpu_samples_15m s
         WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1)
   AND s.gpu_index = ANY(COALESCE($2::int2[], ARRAY(SELECT gpu_index FROM gpus
                                                   WHERE host_id = (SELECT id FROM hosts WHERE name = $1))))
           AND s.bucket >= (SELECT origin FROM cuts) AND s.bucket < (SELECT c15 FROM cuts)
        UNION ALL
        SELECT s.gpu_index, s.bucket, s.util_pct::float8, s.mem_util_pct::float8, s.mem_used_bytes::float8,
               s.power_watts::float8, s.power_watts_max::float8, s.temp_celsius::float8,
               s.temp_celsius_max::float8, s.sm_clock_mhz::float8
          FROM gpu_samples_1m s
         WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1)
   AND s.gpu_index = ANY(COALESCE($2::int2[], ARRAY(SELECT gpu_index FROM gpus
                                                   WHERE host_id = (SELECT id FROM hosts WHERE name = $1))))
           AND s.bucket >= (SELECT c15 FROM cuts) AND s.bucket < (SELECT c1 FROM cuts)
           AND $6::int8 IS NOT NULL
        UNION ALL
        SELECT s.gpu_index, date_trunc('minute', s.ts), avg(s.util_pct), avg(s.mem_util_pct),
               avg(s.mem_used_bytes)::float8, avg(s.power_watts), max(s.power_watts), avg(s.temp_celsius),
               max(s.temp_celsius), avg(s.sm_clock_mhz)
          FROM gpu_samples s
         WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1)
   AND s.gpu_index = ANY(COALESCE($2::int2[], ARRAY(SELECT gpu_index FROM gpus
                                                   WHERE host_id = (SELECT id FROM hosts WHERE name = $1))))
           AND s.ts >= (SELECT c1 FROM cuts) AND s.ts < $4
         GROUP BY 1, 2) s
 GROUP BY 1, 2 ORDER BY 1, 2"#,
                host,
                indexes.as_deref(),
                from,
                to,
                secs,
                THROTTLE_MASK,
                source == Source::Rollup15m,
            )
            .fetch_all(self.history())
            .await,
        }
    }

    /// Buckets of `bucket_secs` in which the GPU was throttled (read from raw samples).
    pub async fn throttled_buckets(
        &self,
        host: &str,
        index: i16,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
    ) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar!(
            r#"
SELECT date_bin(make_interval(secs => $5), s.ts, $3) AS "ts!"
  FROM gpu_samples s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1) AND s.gpu_index = $2
   AND s.ts >= $3 AND s.ts < $4 AND s.throttle_reasons & $6 <> 0
 GROUP BY 1 ORDER BY 1"#,
            host,
            index,
            from,
            to,
            bucket_secs as f64,
            THROTTLE_MASK,
        )
        .fetch_all(self.history())
        .await
    }

    /// Throttle reasons, fan speed and power limit of one GPU per bucket of `bucket_secs`,
    /// read from raw samples (rollups do not keep them).
    pub async fn gpu_raw_extras(
        &self,
        host: &str,
        index: i16,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
    ) -> Result<Vec<GpuRawExtra>, sqlx::Error> {
        sqlx::query_as!(
            GpuRawExtra,
            r#"
SELECT date_bin(make_interval(secs => $5), s.ts, $3) AS "ts!",
       -- Each slowdown bit (0x4, 0x8, 0x20, 0x40, 0x80) that held for half the samples.
       CASE WHEN count(s.throttle_reasons) > 0 THEN $6::int8 & (
            CASE WHEN 2 * count(*) FILTER (WHERE s.throttle_reasons & 4 <> 0) >= count(s.throttle_reasons) THEN 4 ELSE 0 END
          | CASE WHEN 2 * count(*) FILTER (WHERE s.throttle_reasons & 8 <> 0) >= count(s.throttle_reasons) THEN 8 ELSE 0 END
          | CASE WHEN 2 * count(*) FILTER (WHERE s.throttle_reasons & 32 <> 0) >= count(s.throttle_reasons) THEN 32 ELSE 0 END
          | CASE WHEN 2 * count(*) FILTER (WHERE s.throttle_reasons & 64 <> 0) >= count(s.throttle_reasons) THEN 64 ELSE 0 END
          | CASE WHEN 2 * count(*) FILTER (WHERE s.throttle_reasons & 128 <> 0) >= count(s.throttle_reasons) THEN 128 ELSE 0 END)::int8
       END AS reasons,
       bit_or(s.throttle_reasons & $6) AS seen,
       avg(s.fan_pct)::float8 AS fan_pct,
       max(s.power_limit_watts)::float8 AS power_limit_watts
  FROM gpu_samples s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1) AND s.gpu_index = $2
   AND s.ts >= $3 AND s.ts < $4
 GROUP BY 1 ORDER BY 1"#,
            host,
            index,
            from,
            to,
            bucket_secs as f64,
            THROTTLE_MASK,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Hardware events of the hosts named in `[from, to)`, newest first: all of them,
    /// or with `index`, those of that GPU and the host-wide ones.
    pub async fn events_between(
        &self,
        hosts: &[String],
        index: Option<i16>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<super::queries::EventRow>, sqlx::Error> {
        let rows = sqlx::query!(
            "SELECT h.name AS host_name, NULLIF(e.gpu_index, -1) AS index, e.ts, e.kind, e.code, e.message, e.count
               FROM hardware_events e JOIN hosts h ON h.id = e.host_id
              WHERE h.name = ANY($1) AND ($2::int2 IS NULL OR e.gpu_index = $2 OR e.gpu_index = -1)
                AND e.ts >= $3 AND e.ts < $4
              ORDER BY e.ts DESC LIMIT $5",
            hosts,
            index,
            from,
            to,
            limit,
        )
        .fetch_all(self.history())
        .await?;
        // `meaning` and `action` are not stored.
        Ok(rows
            .into_iter()
            .map(|r| super::queries::EventRow {
                host_name: r.host_name,
                index: r.index,
                ts: r.ts,
                kind: r.kind,
                code: r.code,
                message: r.message,
                count: r.count,
                meaning: String::new(),
                action: String::new(),
            })
            .collect())
    }

    /// Hardware events per GPU since `since` (of every host, or of the hosts named).
    pub async fn fault_counts(
        &self,
        since: DateTime<Utc>,
        hosts: Option<&[String]>,
    ) -> Result<Vec<FaultCount>, sqlx::Error> {
        sqlx::query_as!(
            FaultCount,
            r#"SELECT h.name AS host_name, e.gpu_index AS index, sum(e.count)::int8 AS "events!"
               FROM hardware_events e JOIN hosts h ON h.id = e.host_id
              WHERE e.ts >= $1 AND ($2::text[] IS NULL OR h.name = ANY($2)) GROUP BY 1, 2"#,
            since,
            hosts,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// GPU energy since 00:00 UTC in joules, summed over the fleet's GPUs that reported
    /// today (hosts taken out are not the fleet's, as in its host and GPU counts): each
    /// GPU's energy counter minus its value at the first sample of the day, both kept in
    /// `gpu_latest` by ingest (a counter reset does not lose what was counted).
    pub async fn energy_today(&self, now: DateTime<Utc>) -> Result<f64, sqlx::Error> {
        let j: Option<f64> = sqlx::query_scalar!(
            "SELECT sum(greatest(l.energy_joules_total - l.energy_day_start, 0))
               FROM gpu_latest l JOIN hosts h ON h.id = l.host_id
              WHERE h.removed_at IS NULL AND rackwatch_utc_day(l.ts) = rackwatch_utc_day($1)",
            now,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(j.unwrap_or(0.0))
    }

    /// Hosts and their GPUs, filtered by [`InventoryQuery`]: every word a case-insensitive
    /// substring of host name, site, rack, pool, GPU model, UUID, driver or agent version,
    /// and "GPU N" the GPU index.
    pub async fn inventory(&self, q: &str) -> Result<Vec<InventoryRow>, sqlx::Error> {
        let q = InventoryQuery::parse(q);
        let patterns: Vec<String> = q
            .words
            .iter()
            .map(|w| {
                format!(
                    "%{}%",
                    w.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                )
            })
            .collect();
        sqlx::query_as!(
            InventoryRow,
            r#"SELECT h.name AS host_name, h.site, h.rack, h.pool, h.agent_version, h.last_seen,
                    g.gpu_index AS "index?", g.uuid, g.model, g.driver_version, g.memory_total_bytes,
                    g.last_seen AS "gpu_last_seen?"
               FROM hosts h LEFT JOIN gpus g ON g.host_id = h.id
              WHERE h.removed_at IS NULL
                AND ($2::int IS NULL OR g.gpu_index = $2)
                AND NOT EXISTS (
                    SELECT 1 FROM unnest($1::text[]) AS w(p)
                     WHERE NOT coalesce(h.name ILIKE p OR h.site ILIKE p OR h.rack ILIKE p OR h.pool ILIKE p
                        OR h.agent_version ILIKE p OR g.model ILIKE p OR g.uuid ILIKE p
                        OR g.driver_version ILIKE p, false))
              ORDER BY h.site, h.rack, h.name, g.gpu_index
              LIMIT 5001"#,
            &patterns,
            q.gpu_index,
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// An inventory search as typed: words that must all match, and "GPU 5" (or "gpu5") for a
/// GPU index, as the page labels GPUs.
#[derive(Debug, Default, PartialEq)]
pub struct InventoryQuery {
    pub words: Vec<String>,
    pub gpu_index: Option<i32>,
}

impl InventoryQuery {
    pub fn parse(q: &str) -> InventoryQuery {
        let mut out = InventoryQuery::default();
        let mut words = q.split_whitespace().peekable();
        let index = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<i32>().ok())
                .flatten()
        };
        while let Some(w) = words.next() {
            let lower = w.to_ascii_lowercase();
            if out.gpu_index.is_none() {
                if lower == "gpu" {
                    if let Some(i) = words.peek().and_then(|n| index(n)) {
                        out.gpu_index = Some(i);
                        words.next();
                        continue;
                    }
                } else if let Some(i) = lower.strip_prefix("gpu").and_then(index) {
                    out.gpu_index = Some(i);
                    continue;
                }
            }
            out.words.push(w.to_string());
        }
        out
    }
}

#[cfg(test)]
mod inventory_query_tests {
    use super::InventoryQuery;

    #[test]
    fn words_must_all_match_and_gpu_n_names_an_index() {
        let q = |s: &str| InventoryQuery::parse(s);
        assert_eq!(
            q("  fra1   H100 "),
            InventoryQuery {
                words: vec!["fra1".into(), "H100".into()],
                gpu_index: None
            }
        );
        assert_eq!(q("GPU 5").gpu_index, Some(5));
        assert!(q("GPU 5").words.is_empty());
        assert_eq!(
            q("node-3 gpu7"),
            InventoryQuery {
                words: vec!["node-3".into()],
                gpu_index: Some(7)
            }
        );
        // A UUID or a host named gpu-… is a word; "gpu" alone too.
        assert_eq!(q("GPU-1a2b").gpu_index, None);
        assert_eq!(q("gpu-5").words, vec!["gpu-5"]);
        assert_eq!(q("gpu h100").words, vec!["gpu", "h100"]);
        assert_eq!(q("gpu 99999999999").gpu_index, None);
        assert_eq!(q("").words.len(), 0);
    }
}
