//! Read queries for pages and the JSON API.

use chrono::{DateTime, Utc};
use serde::Serialize;

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::Store;
use crate::model::metrics::{Metric, Sample, SqlType, Value, GPU_METRICS, HOST_METRICS};
use crate::model::{GpuSample, HostSample};

/// A host with its latest sample (if any in the last 15 minutes).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HostLatest {
    pub name: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    /// The agent's free-form labels.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: serde_json::Value,
    pub agent_version: String,
    /// Time of the host's newest sample (the agent's clock).
    pub last_seen: Option<DateTime<Utc>>,
    /// When the server last received a sample from the host (the server's clock). Well
    /// after `last_seen` while the host reports: the agent's clock is behind, or it is
    /// replaying a backlog.
    pub last_heard: Option<DateTime<Utc>>,
    /// When an admin took the host out of the fleet (null: in the fleet); it returns when
    /// an agent reports for it again.
    pub removed_at: Option<DateTime<Utc>>,
    /// Who took it out.
    pub removed_by: Option<String>,
    /// When two agent processes were last seen reporting as this host (their batches
    /// alternating): its samples interleave and its energy counts twice until one stops.
    pub two_agents_at: Option<DateTime<Utc>>,
    /// How far the host's clock is behind the server's, s (negative: ahead): its last
    /// batch's `sent_at` against when it arrived; null for agents that do not send it.
    pub clock_behind_secs: Option<f64>,
    pub gpu_count: i64,
    /// Time of the latest sample; null (and the values with it) when older than 15 min.
    pub ts: Option<DateTime<Utc>>,
    pub cpu_util_pct: Option<f32>,
    pub load1: Option<f32>,
    pub mem_used_bytes: Option<i64>,
    pub mem_total_bytes: Option<i64>,
    pub disk_read_bytes_per_s: Option<f64>,
    pub disk_write_bytes_per_s: Option<f64>,
    pub net_rx_bytes_per_s: Option<f64>,
    pub net_tx_bytes_per_s: Option<f64>,
}

/// A GPU with its inventory and latest sample (values null when older than 15 min).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GpuLatest {
    pub host_name: String,
    pub index: i16,
    pub uuid: Option<String>,
    pub model: Option<String>,
    pub memory_total_bytes: Option<i64>,
    pub power_limit_watts: Option<f64>,
    pub ts: Option<DateTime<Utc>>,
    pub util_pct: Option<f32>,
    pub mem_util_pct: Option<f32>,
    pub mem_used_bytes: Option<i64>,
    pub power_watts: Option<f32>,
    pub temp_celsius: Option<f32>,
    pub sm_clock_mhz: Option<f32>,
}

/// A hardware event as shown and returned.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub host_name: String,
    /// The GPU; null for host-wide events.
    pub index: Option<i16>,
    pub ts: DateTime<Utc>,
    #[schema(schema_with = event_kinds)]
    pub kind: String,
    /// The XID number for `xid` events.
    pub code: i64,
    pub message: String,
    /// Occurrences collapsed into this event (a burst of the same code).
    pub count: i32,
    /// What the event means (XID catalog or event kind), filled after the query.
    #[sqlx(skip)]
    pub meaning: String,
    /// NVIDIA's recommended action, filled after the query.
    #[sqlx(skip)]
    pub action: String,
}

/// Hosts with their latest sample, from `host_latest` (kept by ingest). Samples older
/// than 15 minutes are not shown as current values. The checked query of the `WHERE` /
/// `ORDER BY` tail given, with its arguments.
macro_rules! host_latest_query {
    ($rest:tt $(, $arg:expr)*) => {
        sqlx::query_as!(
            HostLatest,
            r#"SELECT h.name, h.site, h.rack, h.pool, h.labels, h.agent_version, h.last_seen, h.last_heard,
                    h.removed_at, h.removed_by, h.two_agents_at,
                    EXTRACT(epoch FROM h.last_heard - (h.agent_stats->>'sent_at')::timestamptz)::float8
                        AS clock_behind_secs,
                    (SELECT count(*) FROM gpus g WHERE g.host_id = h.id) AS "gpu_count!",
                    s.ts AS "ts?", s.cpu_util_pct, s.load1, s.mem_used_bytes, s.mem_total_bytes, s.disk_read_bytes_per_s,
                    s.disk_write_bytes_per_s, s.net_rx_bytes_per_s, s.net_tx_bytes_per_s
               FROM hosts h
               LEFT JOIN host_latest s ON s.host_id = h.id AND s.ts > now() - interval '15 minutes' "#
                + $rest
            $(, $arg)*
        )
    };
}

/// GPU inventory with the latest sample (from `gpu_latest`, kept by ingest), as
/// [`host_latest_query`].
macro_rules! gpus_latest_query {
    ($rest:tt $(, $arg:expr)*) => {
        sqlx::query_as!(
            GpuLatest,
            r#"SELECT h.name AS host_name, g.gpu_index AS index, g.uuid, g.model, g.memory_total_bytes, g.power_limit_watts,
                    s.ts AS "ts?", s.util_pct, s.mem_util_pct, s.mem_used_bytes, s.power_watts, s.temp_celsius, s.sm_clock_mhz
               FROM gpus g JOIN hosts h ON h.id = g.host_id
               LEFT JOIN gpu_latest s ON s.host_id = g.host_id AND s.gpu_index = g.gpu_index
                     AND s.ts > now() - interval '15 minutes' "#
                + $rest
            $(, $arg)*
        )
    };
}

/// A pending, firing or recently resolved (24 h) alert whose host is the page's host (or
/// a host of the rack), GPU-level alerts included.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AlertTouching {
    pub fingerprint: String,
    pub rule: String,
    pub severity: String,
    #[schema(schema_with = touching_states)]
    pub state: String,
    pub host: String,
    /// The GPU, for GPU-level alerts.
    pub gpu: Option<i16>,
    pub summary: String,
    pub description: String,
    pub started_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub occurrences: i32,
    pub acknowledged_by: Option<String>,
    /// An active silence mutes its notifications (pending and firing alerts; a resolved
    /// one is never marked, whatever silences match it now).
    pub silenced: bool,
}

/// Alerts of one severity in one state: how many, and how many are handled.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCount {
    pub severity: String,
    pub state: String,
    pub total: i64,
    pub handled: i64,
}

fn event_kinds() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(crate::model::EVENT_KINDS)
}

fn touching_states() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["pending", "firing", "resolved"])
}

/// Most rows one samples request returns.
pub const MAX_SAMPLE_ROWS: i64 = 200_000;

impl Store {
    /// Every host with its latest sample, ordered by site, rack, name.
    pub async fn hosts_latest(&self) -> Result<Vec<HostLatest>, sqlx::Error> {
        host_latest_query!("WHERE h.removed_at IS NULL ORDER BY h.site, h.rack, h.name")
            .fetch_all(&self.pool)
            .await
    }

    /// Every GPU (in no particular order) or the GPUs of one host (by index), with
    /// their latest samples.
    pub async fn gpus_latest(&self, host: Option<&str>) -> Result<Vec<GpuLatest>, sqlx::Error> {
        match host {
            // Unordered: sorting a fleet's GPUs by three text keys took Postgres longer
            // than the join itself (the keys sit behind variable-width columns); callers
            // order them.
            None => {
                gpus_latest_query!("WHERE h.removed_at IS NULL")
                    .fetch_all(&self.pool)
                    .await
            }
            Some(h) => {
                gpus_latest_query!("WHERE h.name = $1 ORDER BY g.gpu_index", h)
                    .fetch_all(&self.pool)
                    .await
            }
        }
    }

    /// The GPUs of the hosts named, with their latest samples, by host name and index.
    pub async fn gpus_latest_of(&self, hosts: &[String]) -> Result<Vec<GpuLatest>, sqlx::Error> {
        gpus_latest_query!("WHERE h.name = ANY($1) ORDER BY h.name, g.gpu_index", hosts)
            .fetch_all(&self.pool)
            .await
    }

    /// One host's inventory row and latest sample.
    pub async fn host_latest(&self, name: &str) -> Result<Option<HostLatest>, sqlx::Error> {
        host_latest_query!("WHERE h.name = $1", name)
            .fetch_optional(&self.pool)
            .await
    }

    /// The hosts of one rack with their latest samples, by name.
    pub async fn hosts_in_rack(
        &self,
        site: &str,
        rack: &str,
    ) -> Result<Vec<HostLatest>, sqlx::Error> {
        host_latest_query!(
            "WHERE h.site = $1 AND h.rack = $2 AND h.removed_at IS NULL ORDER BY h.name",
            site,
            rack
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Firing alerts that still need someone (neither acknowledged nor silenced), and
    /// firing alerts that are acknowledged or silenced.
    pub async fn alerts_firing(&self) -> Result<(i64, i64), sqlx::Error> {
        let firing = self
            .alert_counts()
            .await?
            .into_iter()
            .filter(|c| c.state == "firing");
        Ok(firing.fold((0, 0), |(open, handled), c| {
            (open + c.total - c.handled, handled + c.handled)
        }))
    }

    /// Pending and firing alerts by severity and state, and of those the ones handled
    /// (acknowledged, or muted by an active silence).
    pub async fn alert_counts(&self) -> Result<Vec<AlertCount>, sqlx::Error> {
        sqlx::query_as!(
            AlertCount,
            r#"SELECT severity AS "severity!", state AS "state!", count(*) AS "total!",
                      count(*) FILTER (WHERE handled) AS "handled!"
               FROM (SELECT a.severity, a.state, a.acknowledged_by IS NOT NULL OR EXISTS (
                            SELECT 1 FROM silences s
                             WHERE s.starts_at <= now() AND s.ends_at > now()
                               AND a.labels || jsonb_build_object('rule', a.rule, 'severity', a.severity)
                                   @> s.matchers) AS handled
                       FROM alerts a WHERE a.state IN ('pending', 'firing')) x
              GROUP BY 1, 2"#
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Firing and pending alerts whose host is one of `hosts` (GPU-level alerts
    /// included), and those resolved since `resolved_since`: firing first, then pending,
    /// then resolved, most severe and newest first.
    pub async fn alerts_touching(
        &self,
        hosts: &[String],
        resolved_since: DateTime<Utc>,
    ) -> Result<Vec<AlertTouching>, sqlx::Error> {
        // `host` is matched against `$1`, so never null. An alert's earlier firings that
        // resolved since `resolved_since` come from its incidents: the alert's own row
        // holds only its latest.
        sqlx::query_as!(
            AlertTouching,
            r#"SELECT t.fingerprint AS "fingerprint!", t.rule AS "rule!", t.severity AS "severity!",
                    t.state AS "state!", t.host AS "host!", t.gpu, t.summary AS "summary!",
                    t.description AS "description!", t.started_at AS "started_at!", t.fired_at,
                    t.resolved_at, t.occurrences AS "occurrences!", t.acknowledged_by,
                    t.silenced AS "silenced!"
               FROM (
             SELECT a.fingerprint, a.rule, a.severity, a.state, a.labels->>'host' AS host,
                    CASE WHEN a.labels->>'gpu' ~ '^[0-9]{1,4}$' THEN (a.labels->>'gpu')::int2 END AS gpu,
                    a.summary, a.description, a.started_at, a.fired_at, a.resolved_at, a.occurrences,
                    a.acknowledged_by,
                    a.state IN ('pending', 'firing')
                    AND EXISTS (SELECT 1 FROM silences s WHERE s.starts_at <= now() AND s.ends_at > now()
                              AND (a.labels || jsonb_build_object('rule', a.rule, 'severity', a.severity)) @> s.matchers
                           ) AS silenced
               FROM alerts a
              WHERE a.labels->>'host' = ANY($1)
                AND (a.state IN ('pending', 'firing') OR a.resolved_at >= $2)
             UNION ALL
             SELECT i.fingerprint, i.rule, i.severity, 'resolved', i.labels->>'host',
                    CASE WHEN i.labels->>'gpu' ~ '^[0-9]{1,4}$' THEN (i.labels->>'gpu')::int2 END,
                    i.summary, i.description, i.started_at, NULL::timestamptz, i.resolved_at, 0, NULL::text, false
               FROM incidents i JOIN alerts a USING (fingerprint)
              WHERE i.labels->>'host' = ANY($1) AND i.resolved_at >= $2
                AND NOT (a.state = 'resolved' AND a.resolved_at = i.resolved_at)
             ) t
              ORDER BY CASE t.state WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,
                       CASE t.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                       COALESCE(t.resolved_at, t.started_at) DESC
              LIMIT 200"#,
            hosts,
            resolved_since,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Raw samples of one host in `[from, to)`, oldest first (GPU samples by GPU).
    pub async fn host_samples(
        &self,
        host: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<SampleRow<HostSample>>, Vec<SampleRow<GpuSample>>), sqlx::Error> {
        static HOST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT s.ts, {} FROM host_samples s JOIN hosts h ON h.id = s.host_id
                  WHERE h.name = $1 AND s.ts >= $2 AND s.ts < $3 ORDER BY s.ts LIMIT $4",
                select_list(HOST_METRICS)
            )
        });
        static GPU_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT s.ts, s.gpu_index, {} FROM gpu_samples s JOIN hosts h ON h.id = s.host_id
                  WHERE h.name = $1 AND s.ts >= $2 AND s.ts < $3 ORDER BY s.gpu_index, s.ts LIMIT $4",
                select_list(GPU_METRICS)
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(HOST_SQL.as_str()))
            .bind(host)
            .bind(from)
            .bind(to)
            .bind(MAX_SAMPLE_ROWS)
            .fetch_all(self.history())
            .await?;
        let hs = rows
            .iter()
            .map(|r| decode::<HostSample>(r).map(SampleRow))
            .collect::<Result<_, _>>()?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(GPU_SQL.as_str()))
            .bind(host)
            .bind(from)
            .bind(to)
            .bind(MAX_SAMPLE_ROWS)
            .fetch_all(self.history())
            .await?;
        let gs = rows
            .iter()
            .map(|r| {
                let mut g = decode::<GpuSample>(r)?;
                g.index = u8::try_from(r.try_get::<i16, _>("gpu_index")?).unwrap_or(u8::MAX);
                Ok(SampleRow(g))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((hs, gs))
    }

    /// Hardware events, newest first, optionally of one host, and of one of its GPUs (with
    /// the host-wide ones).
    pub async fn events(
        &self,
        host: Option<&str>,
        gpu: Option<i16>,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, &str, i16, &str, i64)>,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        let (a_ts, a_host, a_gpu, a_kind, a_code) = match after {
            Some((t, h, g, k, c)) => (Some(t), Some(h), Some(g), Some(k), Some(c)),
            None => (None, None, None, None, None),
        };
        // `after`: the events past that key in the answer's order (keyset paging).
        let rows = sqlx::query!(
            r#"SELECT h.name AS host_name, NULLIF(e.gpu_index, -1) AS index, e.ts, e.kind, e.code, e.message, e.count
               FROM hardware_events e JOIN hosts h ON h.id = e.host_id
              WHERE ($1::text IS NULL OR h.name = $1) AND e.ts >= $2
                AND ($4::timestamptz IS NULL OR e.ts <= $4)
                AND ($10::int2 IS NULL OR e.gpu_index = $10 OR e.gpu_index = -1)
                AND ($5::timestamptz IS NULL OR e.ts < $5
                     OR (e.ts = $5 AND (h.name, e.gpu_index, e.kind, e.code) > ($6::text, $7::int2, $8::text, $9::int8)))
              ORDER BY e.ts DESC, h.name, e.gpu_index, e.kind, e.code LIMIT $3"#,
            host,
            since,
            limit,
            until,
            a_ts,
            a_host,
            a_gpu,
            a_kind,
            a_code,
            gpu,
        )
        .fetch_all(self.history())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let d = crate::model::xid::describe_event(&r.kind, r.code);
                EventRow {
                    meaning: d.meaning.to_string(),
                    action: d.action.to_string(),
                    host_name: r.host_name,
                    index: r.index,
                    ts: r.ts,
                    kind: r.kind,
                    code: r.code,
                    message: r.message,
                    count: r.count,
                }
            })
            .collect())
    }

    /// Agents' spool state, for `/metrics`, with `two_agents`: 1 while two agent processes
    /// report as the host (seen in the last 10 minutes), else 0. Hosts not heard from in
    /// an hour are left out: what they last said of their spool is no longer so, and an
    /// alert on it should clear (the host-down alert says they are silent).
    pub async fn agent_stats(&self) -> Result<Vec<(String, serde_json::Value)>, sqlx::Error> {
        let rows = sqlx::query!(
            r#"SELECT name, agent_stats || jsonb_build_object('two_agents',
                      CASE WHEN two_agents_at > now() - interval '10 minutes' THEN 1 ELSE 0 END)
                      AS "agent_stats!"
                 FROM hosts WHERE agent_stats <> '{}'::jsonb AND removed_at IS NULL
                  AND last_heard > now() - interval '1 hour' ORDER BY name"#,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.name, r.agent_stats)).collect())
    }
}

/// `s.<metric>, …` of every metric of a table.
fn select_list(table: &[Metric]) -> String {
    table
        .iter()
        .map(|m| format!("s.{}", m.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A sample from a row that has `ts` and every metric of the sample's table, each read
/// in its column's type.
fn decode<S: Sample + Default>(row: &PgRow) -> Result<S, sqlx::Error> {
    let mut s = S::default();
    s.set_ts(row.try_get("ts")?);
    for (i, m) in S::METRICS.iter().enumerate() {
        let v = match m.sql {
            SqlType::Real => Value::F64(row.try_get::<Option<f32>, _>(m.name)?.map(f64::from)),
            SqlType::Double => Value::F64(row.try_get(m.name)?),
            // Counts are never negative; a bit mask takes back its 64 bits.
            SqlType::BigInt | SqlType::Bits => {
                Value::U64(row.try_get::<Option<i64>, _>(m.name)?.map(|v| v as u64))
            }
            SqlType::Boolean => Value::Bool(row.try_get(m.name)?),
        };
        s.set(i, v);
    }
    Ok(s)
}

/// A raw sample as the API returns it: the key, then every metric of its table in table
/// order, null when not measured. `REAL` columns print as the `f32` they are (`71.3`,
/// not `71.30000305175781`).
#[derive(Debug, Clone)]
pub struct SampleRow<S>(pub S);

/// A host sample as the API returns it (named for the OpenAPI document, whose derive
/// reads a generic field type as one to compose).
pub type HostSampleRow = SampleRow<HostSample>;
/// A GPU sample as the API returns it.
pub type GpuSampleRow = SampleRow<GpuSample>;

fn serialize_metrics<S: Sample, M: serde::ser::SerializeMap>(
    s: &S,
    map: &mut M,
) -> Result<(), M::Error> {
    s.try_for_each_value(|_, m, v| match (m.sql, v) {
        (SqlType::Real, Value::F64(x)) => map.serialize_entry(m.name, &x.map(|x| x as f32)),
        (SqlType::Bits, Value::U64(x)) => map.serialize_entry(m.name, &x.map(|x| x as i64)),
        (_, Value::F64(x)) => map.serialize_entry(m.name, &x),
        (_, Value::U64(x)) => map.serialize_entry(m.name, &x),
        (_, Value::Bool(x)) => map.serialize_entry(m.name, &x),
    })
}

impl utoipa::PartialSchema for SampleRow<HostSample> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::model::schema::{sample, FieldSchema, SampleUse};
        sample(
            "A raw host sample: every metric, null when not measured.",
            vec![("ts", DateTime::<Utc>::field_schema())],
            HOST_METRICS,
            SampleUse::Row,
        )
    }
}

impl utoipa::ToSchema for SampleRow<HostSample> {
    fn name() -> std::borrow::Cow<'static, str> {
        "HostSampleRow".into()
    }
}

impl utoipa::PartialSchema for SampleRow<GpuSample> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::model::schema::{sample, FieldSchema, SampleUse};
        sample(
            "A raw GPU sample: every metric, null when not measured.",
            vec![
                ("ts", DateTime::<Utc>::field_schema()),
                ("index", u8::field_schema()),
            ],
            GPU_METRICS,
            SampleUse::Row,
        )
    }
}

impl utoipa::ToSchema for SampleRow<GpuSample> {
    fn name() -> std::borrow::Cow<'static, str> {
        "GpuSampleRow".into()
    }
}

impl Serialize for SampleRow<HostSample> {
    fn serialize<Z: serde::Serializer>(&self, ser: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(1 + HOST_METRICS.len()))?;
        map.serialize_entry("ts", &self.0.ts)?;
        serialize_metrics(&self.0, &mut map)?;
        map.end()
    }
}

impl Serialize for SampleRow<GpuSample> {
    fn serialize<Z: serde::Serializer>(&self, ser: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(2 + GPU_METRICS.len()))?;
        map.serialize_entry("ts", &self.0.ts)?;
        map.serialize_entry("index", &self.0.index)?;
        serialize_metrics(&self.0, &mut map)?;
        map.end()
    }
}
