//! `GET /metrics/fleet`: the newest sample of every GPU and host in Prometheus text format,
//! GPU series named and labelled as dcgm-exporter does, so that NVIDIA's Grafana
//! dashboard and existing alert rules read Rackwatch unchanged.
//!
//! Which series exist comes from the metric table (`model::metrics`): every metric the
//! latest tables keep, GPU ones under their DCGM field name ([`dcgm_field`]) in DCGM's
//! unit, host ones as `rackwatch_host_<column>` with the unit in the name. Three series
//! are derived: `DCGM_FI_DEV_FB_FREE` (installed minus used frame buffer), `DCGM_FI_PROF_GR_ENGINE_ACTIVE`
//! (NVML utilization as a ratio, what NVIDIA's dashboard charts) and
//! `DCGM_FI_DEV_XID_ERRORS`, which here is the **number** of XID errors in the
//! staleness window, falling back to 0, instead of dcgm-exporter's last XID code that
//! stays set until the exporter restarts. The code of the newest XID is in
//! `rackwatch_gpu_last_xid_code`.
//!
//! Samples older than `server.fleet_metrics_stale_secs` are left out, so a host that
//! stops reporting goes stale in Prometheus instead of repeating its last value; every
//! line carries its sample's timestamp (the XID count carries the scrape's).
//!
//! Labels: `gpu`, `UUID`, `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`
//! as dcgm-exporter sets them, plus `site`, `rack`, `pool`, and `hpc_job` where the host
//! carries a `hpc_job` (or `job`) label, and `exporter="rackwatch"` on every series:
//! remote write drops series with it, so a Prometheus that scrapes this endpoint and
//! remote-writes `DCGM_FI_*` to Rackwatch does not feed them back. `?labels=snake_case` renames the three
//! camel-case ones (`uuid`, `model_name`, `hostname`) for setups whose linters insist.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::error::ApiError;
use super::params::ApiQuery;
use super::AppState;
use crate::ingest::remote_write::OWN_EXPORT_LABEL;
use crate::model::metrics::{
    dcgm_field, prometheus_name, Metric, SqlType, GPU_METRICS, HOST_METRICS,
};
use crate::store::Store;

/// Label names: dcgm-exporter's, or all snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelStyle {
    #[default]
    Dcgm,
    SnakeCase,
}

impl LabelStyle {
    fn names(self) -> [&'static str; 3] {
        match self {
            LabelStyle::Dcgm => ["UUID", "modelName", "Hostname"],
            LabelStyle::SnakeCase => ["uuid", "model_name", "hostname"],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetQuery {
    /// `dcgm` (the default) or `snake_case`.
    #[serde(default)]
    pub labels: Option<String>,
}

/// `GET /metrics/fleet`.
pub async fn fleet_metrics(
    State(st): State<AppState>,
    _r: super::auth::FleetMetricsReader,
    ApiQuery(q): ApiQuery<FleetQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let style = match q.labels.as_deref() {
        None | Some("dcgm") => LabelStyle::Dcgm,
        Some("snake_case") => LabelStyle::SnakeCase,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "labels={other:?}: use labels=dcgm (the default, dcgm-exporter's label names) or labels=snake_case"
            )))
        }
    };
    let stale = chrono::Duration::seconds(st.cfg.server.fleet_metrics_stale_secs as i64);
    let out = render(&st.store, Utc::now(), stale, style)
        .await
        .map_err(|e| {
            tracing::warn!("fleet metrics: {e}");
            ApiError::Unavailable
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

/// A number as read from its column, printed in its own precision (an `f32` column's
/// 71.3 prints as 71.3, not 71.30000305175781).
#[derive(Debug, Clone, Copy)]
enum Num {
    F32(f32),
    F64(f64),
    I64(i64),
}

impl Num {
    fn get(row: &PgRow, i: usize, sql: SqlType) -> Result<Option<Num>, sqlx::Error> {
        Ok(match sql {
            SqlType::Real => row.try_get::<Option<f32>, _>(i)?.map(Num::F32),
            SqlType::Double => row.try_get::<Option<f64>, _>(i)?.map(Num::F64),
            SqlType::BigInt | SqlType::Bits => row.try_get::<Option<i64>, _>(i)?.map(Num::I64),
            SqlType::Boolean => row
                .try_get::<Option<bool>, _>(i)?
                .map(|b| Num::I64(i64::from(b))),
        })
    }

    /// Write `self × scale`.
    fn write(self, out: &mut String, scale: f64) {
        let _ = match self {
            _ if scale != 1.0 => write!(out, "{}", self.as_f64() * scale),
            Num::F32(v) => write!(out, "{v}"),
            Num::F64(v) => write!(out, "{v}"),
            Num::I64(v) => write!(out, "{v}"),
        };
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::F32(v) => f64::from(v),
            Num::F64(v) => v,
            Num::I64(v) => v as f64,
        }
    }
}

/// One GPU or host: its label set, the time of its sample, and the table metrics'
/// values in `latest` order.
struct Subject {
    labels: String,
    ts_ms: i64,
    values: Vec<Option<Num>>,
    /// GPUs: installed frame buffer (bytes), XID count and newest XID code.
    fb_total: Option<i64>,
    xid_count: i64,
    xid_last: Option<i64>,
}

fn latest(table: &'static [Metric]) -> Vec<&'static Metric> {
    table.iter().filter(|m| m.latest).collect()
}

/// The GPU query: inventory, latest sample (the table's `latest` columns) and the XID
/// count of the window, for GPUs whose sample is newer than `$1`.
static GPU_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cols: Vec<String> = latest(GPU_METRICS)
        .iter()
        .map(|m| format!("s.{}", m.name))
        .collect();
    format!(
        "SELECT h.name, h.site, h.rack, h.pool,
                COALESCE(h.labels->>'hpc_job', h.labels->>'job', '') AS job,
                s.gpu_index, g.uuid, g.model, g.driver_version, g.memory_total_bytes,
                s.ts, COALESCE(x.n, 0) AS xid_count, x.last_code, {}
           FROM gpu_latest s
           JOIN gpus g ON g.host_id = s.host_id AND g.gpu_index = s.gpu_index
           JOIN hosts h ON h.id = s.host_id
           LEFT JOIN (SELECT host_id, gpu_index, sum(count)::int8 AS n,
                             (array_agg(code ORDER BY ts DESC))[1] AS last_code
                        FROM hardware_events WHERE kind = 'xid' AND ts > $1
                       GROUP BY host_id, gpu_index) x
                  ON x.host_id = s.host_id AND x.gpu_index = s.gpu_index
          WHERE s.ts > $1",
        cols.join(", ")
    )
});

const GPU_FIXED: usize = 13;

static HOST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cols: Vec<String> = latest(HOST_METRICS)
        .iter()
        .map(|m| format!("s.{}", m.name))
        .collect();
    format!(
        "SELECT h.name, h.site, h.rack, h.pool,
                COALESCE(h.labels->>'hpc_job', h.labels->>'job', '') AS job, s.ts, {}
           FROM host_latest s JOIN hosts h ON h.id = s.host_id
          WHERE s.ts > $1",
        cols.join(", ")
    )
});

const HOST_FIXED: usize = 6;

/// Escape a label value per the exposition format.
fn esc(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_label(out: &mut String, first: &mut bool, name: &str, value: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    out.push_str(name);
    out.push_str("=\"");
    esc(out, value);
    out.push('"');
}

/// site, rack, pool and job, where set, and `exporter="rackwatch"`, by which remote
/// write knows these series if a Prometheus sends them back.
fn place_labels(out: &mut String, first: &mut bool, row: &PgRow) -> Result<(), sqlx::Error> {
    for (name, col) in [("site", 1), ("rack", 2), ("pool", 3), ("hpc_job", 4)] {
        let v: &str = row.try_get(col)?;
        if !v.is_empty() {
            push_label(out, first, name, v);
        }
    }
    push_label(out, first, OWN_EXPORT_LABEL, "rackwatch");
    Ok(())
}

fn gpu_row(row: &PgRow, metrics: &[&Metric], style: LabelStyle) -> Result<Subject, sqlx::Error> {
    let [uuid_l, model_l, host_l] = style.names();
    let host: &str = row.try_get(0)?;
    let index: i16 = row.try_get(5)?;
    let uuid: Option<&str> = row.try_get(6)?;
    let model: Option<&str> = row.try_get(7)?;
    let driver: Option<&str> = row.try_get(8)?;
    let mut labels = String::with_capacity(192);
    let mut first = true;
    let mut idx = index.to_string();
    push_label(&mut labels, &mut first, "gpu", &idx);
    push_label(&mut labels, &mut first, uuid_l, uuid.unwrap_or(""));
    idx.insert_str(0, "nvidia");
    push_label(&mut labels, &mut first, "device", &idx);
    push_label(&mut labels, &mut first, model_l, model.unwrap_or(""));
    push_label(&mut labels, &mut first, host_l, host);
    if let Some(d) = driver.filter(|d| !d.is_empty()) {
        push_label(&mut labels, &mut first, "DCGM_FI_DRIVER_VERSION", d);
    }
    place_labels(&mut labels, &mut first, row)?;
    let ts: DateTime<Utc> = row.try_get(10)?;
    let mut values = Vec::with_capacity(metrics.len());
    for (k, m) in metrics.iter().enumerate() {
        values.push(Num::get(row, GPU_FIXED + k, m.sql)?);
    }
    Ok(Subject {
        labels,
        ts_ms: ts.timestamp_millis(),
        values,
        fb_total: row.try_get(9)?,
        xid_count: row.try_get(11)?,
        xid_last: row.try_get(12)?,
    })
}

fn host_row(row: &PgRow, metrics: &[&Metric], style: LabelStyle) -> Result<Subject, sqlx::Error> {
    let host: &str = row.try_get(0)?;
    let mut labels = String::with_capacity(96);
    let mut first = true;
    push_label(&mut labels, &mut first, style.names()[2], host);
    place_labels(&mut labels, &mut first, row)?;
    let ts: DateTime<Utc> = row.try_get(5)?;
    let mut values = Vec::with_capacity(metrics.len());
    for (k, m) in metrics.iter().enumerate() {
        values.push(Num::get(row, HOST_FIXED + k, m.sql)?);
    }
    Ok(Subject {
        labels,
        ts_ms: ts.timestamp_millis(),
        values,
        fb_total: None,
        xid_count: 0,
        xid_last: None,
    })
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn line(out: &mut String, name: &str, labels: &str, value: impl FnOnce(&mut String), ts_ms: i64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str("} ");
    value(out);
    let _ = writeln!(out, " {ts_ms}");
}

/// One family per table metric, all rows that have a value.
fn families(out: &mut String, rows: &[Subject], metrics: &[&Metric], gpu: bool) {
    for (k, m) in metrics.iter().enumerate() {
        let (name, scale, help) = match (gpu, dcgm_field(m.name)) {
            (true, Some(f)) => (f.name.to_string(), f.scale, f.help.to_string()),
            (true, None) => (
                prometheus_name("gpu", m.name),
                1.0,
                m.doc.trim().to_string(),
            ),
            (false, _) => (
                prometheus_name("host", m.name),
                1.0,
                m.doc.trim().to_string(),
            ),
        };
        let help = if m.unit.is_empty() || dcgm_field(m.name).is_some() {
            help
        } else {
            format!("{} (in {}).", help.trim_end_matches('.'), m.unit)
        };
        header(out, &name, &help);
        for r in rows {
            if let Some(v) = r.values[k] {
                line(out, &name, &r.labels, |o| v.write(o, scale), r.ts_ms);
            }
        }
    }
}

/// The whole exposition at `now`: GPUs and hosts whose latest sample is newer than
/// `now - stale`.
pub async fn render(
    store: &Store,
    now: DateTime<Utc>,
    stale: chrono::Duration,
    style: LabelStyle,
) -> Result<String, sqlx::Error> {
    let since = now - stale;
    let (gpu_rows, host_rows) = tokio::try_join!(
        sqlx::query(sqlx::AssertSqlSafe(GPU_SQL.as_str()))
            .bind(since)
            .fetch_all(&store.pool),
        sqlx::query(sqlx::AssertSqlSafe(HOST_SQL.as_str()))
            .bind(since)
            .fetch_all(&store.pool),
    )?;
    let gm = latest(GPU_METRICS);
    let hm = latest(HOST_METRICS);
    let gpus = gpu_rows
        .iter()
        .map(|r| gpu_row(r, &gm, style))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts = host_rows
        .iter()
        .map(|r| host_row(r, &hm, style))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::with_capacity(gpus.len() * 2600 + hosts.len() * 1200 + 4096);
    families(&mut out, &gpus, &gm, true);
    // Derived GPU series.
    let used = gm.iter().position(|m| m.name == "mem_used_bytes");
    header(
        &mut out,
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB).",
    );
    for r in &gpus {
        if let (Some(total), Some(Some(used))) = (r.fb_total, used.map(|k| r.values[k])) {
            let free = (total as f64 - used.as_f64()).max(0.0) / 1_048_576.0;
            line(
                &mut out,
                "DCGM_FI_DEV_FB_FREE",
                &r.labels,
                |o| {
                    let _ = write!(o, "{free}");
                },
                r.ts_ms,
            );
        }
    }
    // NVIDIA's dashboard charts GPU utilization as the profiling field "graphics engine
    // active" (a ratio). NVML's utilization is the same quantity sampled coarser: the
    // share of time a kernel ran.
    let util = gm.iter().position(|m| m.name == "util_pct");
    header(
        &mut out,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "Ratio of time the graphics engine is active (Rackwatch: NVML GPU utilization / 100).",
    );
    for r in &gpus {
        if let Some(Some(u)) = util.map(|k| r.values[k]) {
            let ratio = u.as_f64() / 100.0;
            line(
                &mut out,
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
                &r.labels,
                |o| {
                    let _ = write!(o, "{ratio}");
                },
                r.ts_ms,
            );
        }
    }
    header(
        &mut out,
        "DCGM_FI_DEV_XID_ERRORS",
        "Number of XID errors in the staleness window (Rackwatch: a count that returns to 0, not the last XID code).",
    );
    let now_ms = now.timestamp_millis();
    for r in &gpus {
        line(
            &mut out,
            "DCGM_FI_DEV_XID_ERRORS",
            &r.labels,
            |o| {
                let _ = write!(o, "{}", r.xid_count);
            },
            now_ms.max(r.ts_ms),
        );
    }
    header(
        &mut out,
        "rackwatch_gpu_last_xid_code",
        "Code of the newest XID error in the staleness window.",
    );
    for r in &gpus {
        if let Some(code) = r.xid_last {
            line(
                &mut out,
                "rackwatch_gpu_last_xid_code",
                &r.labels,
                |o| {
                    let _ = write!(o, "{code}");
                },
                now_ms.max(r.ts_ms),
            );
        }
    }
    families(&mut out, &hosts, &hm, false);
    Ok(out)
}
