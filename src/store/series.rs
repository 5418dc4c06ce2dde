//! Time series for charts, already reduced to one point per bucket (a bucket is about
//! one pixel column of a chart), so pages never pull more rows than they can draw.
//! Short ranges read raw samples; longer ones read the 1-minute rollups.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Store;

/// Where a series was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Raw samples (5–10 s apart).
    Raw,
    /// 1-minute rollups.
    Rollup1m,
}

/// One bucket of a host's metrics (means over the bucket).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

const HOST_RAW: &str = "
SELECT h.name AS host_name, date_bin(make_interval(secs => $4), s.ts, $2) AS ts,
       avg(s.cpu_util_pct)::float8 AS cpu_util_pct, avg(s.mem_used_bytes)::float8 AS mem_used_bytes,
       avg(s.disk_read_bytes_per_s) AS disk_read_bytes_per_s, avg(s.disk_write_bytes_per_s) AS disk_write_bytes_per_s,
       avg(s.net_rx_bytes_per_s) AS net_rx_bytes_per_s, avg(s.net_tx_bytes_per_s) AS net_tx_bytes_per_s
  FROM host_samples s JOIN hosts h ON h.id = s.host_id
 WHERE h.name = ANY($1) AND s.ts >= $2 AND s.ts < $3
 GROUP BY 1, 2 ORDER BY 1, 2";

const HOST_1M: &str = "
SELECT h.name AS host_name, date_bin(make_interval(secs => $4), s.bucket, $2) AS ts,
       avg(s.cpu_util_pct)::float8 AS cpu_util_pct, avg(s.mem_used_bytes)::float8 AS mem_used_bytes,
       avg(s.disk_read_bytes_per_s) AS disk_read_bytes_per_s, avg(s.disk_write_bytes_per_s) AS disk_write_bytes_per_s,
       avg(s.net_rx_bytes_per_s) AS net_rx_bytes_per_s, avg(s.net_tx_bytes_per_s) AS net_tx_bytes_per_s
  FROM host_samples_1m s JOIN hosts h ON h.id = s.host_id
 WHERE h.name = ANY($1) AND s.bucket >= $2 AND s.bucket < $3
 GROUP BY 1, 2 ORDER BY 1, 2";

const GPU_RAW: &str = "
SELECT s.gpu_index AS index, date_bin(make_interval(secs => $5), s.ts, $3) AS ts,
       avg(s.util_pct)::float8 AS util_pct, avg(s.mem_util_pct)::float8 AS mem_util_pct,
       avg(s.mem_used_bytes)::float8 AS mem_used_bytes, avg(s.power_watts)::float8 AS power_watts,
       max(s.power_watts)::float8 AS power_watts_max, avg(s.temp_celsius)::float8 AS temp_celsius,
       max(s.temp_celsius)::float8 AS temp_celsius_max, avg(s.mem_temp_celsius)::float8 AS mem_temp_celsius,
       avg(s.sm_clock_mhz)::float8 AS sm_clock_mhz, avg(s.mem_clock_mhz)::float8 AS mem_clock_mhz,
       avg(s.fan_pct)::float8 AS fan_pct, bool_or(s.throttle_reasons & $6 <> 0) AS throttled
  FROM gpu_samples s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1) AND s.gpu_index BETWEEN $2 AND $7
   AND s.ts >= $3 AND s.ts < $4
 GROUP BY 1, 2 ORDER BY 1, 2";

const GPU_1M: &str = "
SELECT s.gpu_index AS index, date_bin(make_interval(secs => $5), s.bucket, $3) AS ts,
       avg(s.util_pct)::float8 AS util_pct, avg(s.mem_util_pct)::float8 AS mem_util_pct,
       avg(s.mem_used_bytes)::float8 AS mem_used_bytes, avg(s.power_watts)::float8 AS power_watts,
       max(s.power_watts_max)::float8 AS power_watts_max, avg(s.temp_celsius)::float8 AS temp_celsius,
       max(s.temp_celsius_max)::float8 AS temp_celsius_max, NULL::float8 AS mem_temp_celsius,
       avg(s.sm_clock_mhz)::float8 AS sm_clock_mhz, NULL::float8 AS mem_clock_mhz,
       NULL::float8 AS fan_pct, NULL::bool AS throttled
  FROM gpu_samples_1m s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1) AND s.gpu_index BETWEEN $2 AND $7
   AND s.bucket >= $3 AND s.bucket < $4 AND $6::int8 IS NOT NULL
 GROUP BY 1, 2 ORDER BY 1, 2";

/// Throttled stretches of one GPU from raw samples, as (start, end) bucket times.
const THROTTLE_RAW: &str = "
SELECT date_bin(make_interval(secs => $5), s.ts, $3) AS ts
  FROM gpu_samples s
 WHERE s.host_id = (SELECT id FROM hosts WHERE name = $1) AND s.gpu_index = $2
   AND s.ts >= $3 AND s.ts < $4 AND s.throttle_reasons & $6 <> 0
 GROUP BY 1 ORDER BY 1";

/// A row of the inventory.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
        let sql = match source {
            Source::Raw => HOST_RAW,
            Source::Rollup1m => HOST_1M,
        };
        sqlx::query_as(sql)
            .bind(hosts)
            .bind(from)
            .bind(to)
            .bind(bucket_secs as f64)
            .fetch_all(&self.pool)
            .await
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
        let sql = match source {
            Source::Raw => GPU_RAW,
            Source::Rollup1m => GPU_1M,
        };
        // An index range rather than `$2 IS NULL OR …`, so that the cached generic plan
        // still uses the primary key for one GPU.
        let (lo, hi) = index.map_or((0, i16::MAX), |i| (i, i));
        sqlx::query_as(sql)
            .bind(host)
            .bind(lo)
            .bind(from)
            .bind(to)
            .bind(bucket_secs as f64)
            .bind(THROTTLE_MASK)
            .bind(hi)
            .fetch_all(&self.pool)
            .await
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
        sqlx::query_scalar(THROTTLE_RAW)
            .bind(host)
            .bind(index)
            .bind(from)
            .bind(to)
            .bind(bucket_secs as f64)
            .bind(THROTTLE_MASK)
            .fetch_all(&self.pool)
            .await
    }

    /// Hardware events of a host (one GPU, or all) in `[from, to)`, newest first.
    pub async fn events_between(
        &self,
        host: &str,
        index: Option<i16>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<super::queries::EventRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT h.name AS host_name, NULLIF(e.gpu_index, -1) AS index, e.ts, e.kind, e.code, e.message, e.count
               FROM hardware_events e JOIN hosts h ON h.id = e.host_id
              WHERE h.name = $1 AND ($2::int2 IS NULL OR e.gpu_index = $2 OR e.gpu_index = -1)
                AND e.ts >= $3 AND e.ts < $4
              ORDER BY e.ts DESC LIMIT $5",
        )
        .bind(host)
        .bind(index)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Hardware events per GPU since `since`.
    pub async fn fault_counts(&self, since: DateTime<Utc>) -> Result<Vec<FaultCount>, sqlx::Error> {
        sqlx::query_as(
            "SELECT h.name AS host_name, e.gpu_index AS index, sum(e.count)::int8 AS events
               FROM hardware_events e JOIN hosts h ON h.id = e.host_id
              WHERE e.ts >= $1 GROUP BY 1, 2",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
    }

    /// GPU energy since `since` in joules, from the rollups' energy counters (last minus
    /// first per GPU; a counter reset only makes it an underestimate).
    pub async fn energy_since(&self, since: DateTime<Utc>) -> Result<f64, sqlx::Error> {
        let j: Option<f64> = sqlx::query_scalar(
            "SELECT sum(greatest(l.e - f.e, 0)) FROM gpus g
               JOIN LATERAL (SELECT energy_joules_total e FROM gpu_samples_1m s
                              WHERE s.host_id = g.host_id AND s.gpu_index = g.gpu_index AND s.bucket >= $1
                                AND s.energy_joules_total IS NOT NULL ORDER BY s.bucket LIMIT 1) f ON true
               JOIN LATERAL (SELECT energy_joules_total e FROM gpu_samples_1m s
                              WHERE s.host_id = g.host_id AND s.gpu_index = g.gpu_index AND s.bucket >= $1
                                AND s.energy_joules_total IS NOT NULL ORDER BY s.bucket DESC LIMIT 1) l ON true",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(j.unwrap_or(0.0))
    }

    /// Hosts and their GPUs, filtered by a case-insensitive substring of host name, site,
    /// rack, pool, GPU model, UUID, driver or agent version.
    pub async fn inventory(&self, q: &str) -> Result<Vec<InventoryRow>, sqlx::Error> {
        let pattern = format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        sqlx::query_as(
            "SELECT h.name AS host_name, h.site, h.rack, h.pool, h.agent_version, h.last_seen,
                    g.gpu_index AS index, g.uuid, g.model, g.driver_version, g.memory_total_bytes,
                    g.last_seen AS gpu_last_seen
               FROM hosts h LEFT JOIN gpus g ON g.host_id = h.id
              WHERE $1 = '%%' OR h.name ILIKE $1 OR h.site ILIKE $1 OR h.rack ILIKE $1 OR h.pool ILIKE $1
                 OR h.agent_version ILIKE $1 OR g.model ILIKE $1 OR g.uuid ILIKE $1 OR g.driver_version ILIKE $1
              ORDER BY h.site, h.rack, h.name, g.gpu_index
              LIMIT 5000",
        )
        .bind(pattern)
        .fetch_all(&self.pool)
        .await
    }
}
