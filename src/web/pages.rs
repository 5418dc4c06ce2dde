//! Server-rendered pages (askama). View models hold display strings with units, so
//! templates stay free of logic. All strings from agents are escaped by askama.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};

use super::auth::{urlencode, PageUser};
use super::charts::{line_chart, Axis, Series, PALETTE};
use super::error::ApiError;
use super::format::{age, bytes, num, rate};
use super::AppState;
use crate::store::queries::{GpuLatest, HostLatest};

/// Render a template into a response (500 with a log line if it fails).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(s) => Html(s).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub next: String,
    pub username: String,
}

/// A host as a table row.
pub struct HostRow {
    pub name: String,
    pub link: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub age: String,
    pub stale: bool,
    pub cpu: String,
    pub load: String,
    pub mem: String,
    pub disk_read: String,
    pub disk_write: String,
    pub net_rx: String,
    pub net_tx: String,
    pub gpus: Vec<GpuCell>,
}

/// A GPU's latest values.
pub struct GpuCell {
    pub index: i16,
    pub model: String,
    pub uuid: String,
    pub util: String,
    pub mem: String,
    pub power: String,
    pub temp: String,
    pub clock: String,
    /// Hot or throttling-prone (≥ 85 °C): outlined in the fleet table.
    pub hot: bool,
}

/// A sample older than this marks the host stale.
const STALE_SECS: i64 = 60;

fn gpu_cell(g: &GpuLatest) -> GpuCell {
    GpuCell {
        index: g.index,
        model: g.model.clone().unwrap_or_default(),
        uuid: g.uuid.clone().unwrap_or_default(),
        util: num(g.util_pct.map(f64::from), 0, "%"),
        mem: bytes(g.mem_used_bytes.map(|v| v as f64)),
        power: num(g.power_watts.map(f64::from), 0, "W"),
        temp: num(g.temp_celsius.map(f64::from), 0, "°C"),
        clock: num(g.sm_clock_mhz.map(f64::from), 0, "MHz"),
        hot: g.temp_celsius.is_some_and(|t| t >= 85.0),
    }
}

fn host_row(h: &HostLatest, gpus: &[GpuLatest], now: DateTime<Utc>) -> HostRow {
    let mem = match (h.mem_used_bytes, h.mem_total_bytes) {
        (Some(u), Some(t)) => format!("{} / {}", bytes(Some(u as f64)), bytes(Some(t as f64))),
        (Some(u), None) => bytes(Some(u as f64)),
        _ => "–".into(),
    };
    HostRow {
        name: h.name.clone(),
        link: urlencode(&h.name).replace('/', "%2F"),
        site: h.site.clone(),
        rack: h.rack.clone(),
        pool: h.pool.clone(),
        age: age(h.last_seen, now),
        stale: h
            .last_seen
            .is_none_or(|t| (now - t).num_seconds() > STALE_SECS),
        cpu: num(h.cpu_util_pct.map(f64::from), 1, "%"),
        load: num(h.load1.map(f64::from), 2, ""),
        mem,
        disk_read: rate(h.disk_read_bytes_per_s),
        disk_write: rate(h.disk_write_bytes_per_s),
        net_rx: rate(h.net_rx_bytes_per_s),
        net_tx: rate(h.net_tx_bytes_per_s),
        gpus: gpus
            .iter()
            .filter(|g| g.host_name == h.name)
            .map(gpu_cell)
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    pub user_name: String,
    pub user_role: &'static str,
    pub hosts: Vec<HostRow>,
    pub hosts_up: usize,
    pub gpus_up: usize,
    pub gpus_total: usize,
    pub mean_gpu_util: String,
    pub gpu_power: String,
}

pub async fn fleet(
    State(st): State<AppState>,
    PageUser(user): PageUser,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let hosts = st.store.hosts_latest().await?;
    let gpus = st.store.gpus_latest(None).await?;
    let reporting: Vec<&GpuLatest> = gpus.iter().filter(|g| g.ts.is_some()).collect();
    let utils: Vec<f64> = reporting
        .iter()
        .filter_map(|g| g.util_pct.map(f64::from))
        .collect();
    let mean = (!utils.is_empty()).then(|| utils.iter().sum::<f64>() / utils.len() as f64);
    let power: f64 = reporting
        .iter()
        .filter_map(|g| g.power_watts.map(f64::from))
        .sum();
    let rows: Vec<HostRow> = hosts.iter().map(|h| host_row(h, &gpus, now)).collect();
    let page = FleetPage {
        user_name: user.name,
        user_role: user.role.as_str(),
        hosts_up: rows.iter().filter(|r| !r.stale).count(),
        hosts: rows,
        gpus_up: reporting.len(),
        gpus_total: gpus.len(),
        mean_gpu_util: num(mean, 1, "%"),
        gpu_power: if power >= 1000.0 {
            format!("{:.1} kW", power / 1000.0)
        } else {
            format!("{power:.0} W")
        },
    };
    Ok(render(&page))
}

/// A chart and its legend (label, color).
pub struct ChartView {
    pub title: String,
    pub svg: String,
    pub legend: Vec<(String, &'static str)>,
}

/// A hardware event row.
pub struct EventView {
    pub ts: String,
    pub gpu: String,
    pub kind: String,
    pub code: i64,
    pub count: i32,
    pub message: String,
    /// What it means and NVIDIA's recommended action (`model::xid`).
    pub meaning: String,
    pub action: String,
}

#[derive(Template)]
#[template(path = "host.html")]
pub struct HostPage {
    pub user_name: String,
    pub user_role: &'static str,
    pub host: HostRow,
    pub agent_version: String,
    pub range_label: String,
    pub charts: Vec<ChartView>,
    pub gpus: Vec<GpuCell>,
    pub events: Vec<EventView>,
}

fn chart(
    title: &str,
    series: Vec<Series>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    axis: Axis,
) -> ChartView {
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.label.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    // Samples come every few seconds; a hole longer than a minute is a real gap.
    ChartView {
        title: title.to_string(),
        svg: line_chart(title, &series, from, to, axis, 60),
        legend,
    }
}

fn fmt_bytes_axis(v: f64) -> String {
    bytes(Some(v))
}
fn fmt_rate_axis(v: f64) -> String {
    rate(Some(v))
}
fn fmt_watts_axis(v: f64) -> String {
    format!("{v:.0} W")
}
fn fmt_celsius_axis(v: f64) -> String {
    format!("{v:.0} °C")
}

pub async fn host(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let Some(h) = st.store.host_latest(&name).await? else {
        return Err(ApiError::NotFound(format!("no host named {name:?}")));
    };
    let gpus = st.store.gpus_latest(Some(&name)).await?;
    let to = now;
    let from = now - Duration::hours(1);
    let (hs, gs) = st.store.host_samples(&name, from, to).await?;
    let pts = |f: &dyn Fn(&crate::store::queries::HostSampleRow) -> Option<f64>| -> Vec<(DateTime<Utc>, f64)> {
        hs.iter().filter_map(|s| f(s).map(|v| (s.ts, v))).collect()
    };
    let mut charts = vec![
        chart(
            "CPU utilization",
            vec![Series {
                label: "CPU".into(),
                points: pts(&|s| s.cpu_util_pct.map(f64::from)),
            }],
            from,
            to,
            Axis::Percent,
        ),
        chart(
            "Memory used",
            vec![Series {
                label: "used".into(),
                points: pts(&|s| s.mem_used_bytes.map(|v| v as f64)),
            }],
            from,
            to,
            Axis::Auto(fmt_bytes_axis),
        ),
        chart(
            "Disk throughput",
            vec![
                Series {
                    label: "read".into(),
                    points: pts(&|s| s.disk_read_bytes_per_s),
                },
                Series {
                    label: "write".into(),
                    points: pts(&|s| s.disk_write_bytes_per_s),
                },
            ],
            from,
            to,
            Axis::Auto(fmt_rate_axis),
        ),
        chart(
            "Network throughput",
            vec![
                Series {
                    label: "rx".into(),
                    points: pts(&|s| s.net_rx_bytes_per_s),
                },
                Series {
                    label: "tx".into(),
                    points: pts(&|s| s.net_tx_bytes_per_s),
                },
            ],
            from,
            to,
            Axis::Auto(fmt_rate_axis),
        ),
    ];
    if !gs.is_empty() {
        let mut indexes: Vec<i16> = gs.iter().map(|g| g.index).collect();
        indexes.dedup();
        let per_gpu =
            |f: &dyn Fn(&crate::store::queries::GpuSampleRow) -> Option<f64>| -> Vec<Series> {
                indexes
                    .iter()
                    .map(|i| Series {
                        label: format!("GPU {i}"),
                        points: gs
                            .iter()
                            .filter(|g| g.index == *i)
                            .filter_map(|g| f(g).map(|v| (g.ts, v)))
                            .collect(),
                    })
                    .collect()
            };
        charts.push(chart(
            "GPU utilization",
            per_gpu(&|g| g.util_pct.map(f64::from)),
            from,
            to,
            Axis::Percent,
        ));
        charts.push(chart(
            "GPU power",
            per_gpu(&|g| g.power_watts.map(f64::from)),
            from,
            to,
            Axis::Auto(fmt_watts_axis),
        ));
        charts.push(chart(
            "GPU temperature",
            per_gpu(&|g| g.temp_celsius.map(f64::from)),
            from,
            to,
            Axis::Auto(fmt_celsius_axis),
        ));
        charts.push(chart(
            "GPU memory used",
            per_gpu(&|g| g.mem_used_bytes.map(|v| v as f64)),
            from,
            to,
            Axis::Auto(fmt_bytes_axis),
        ));
    }
    let events = st
        .store
        .events(Some(&name), now - Duration::days(7), 200)
        .await?
        .into_iter()
        .map(|e| EventView {
            ts: e.ts.to_rfc3339(),
            gpu: e
                .index
                .map(|i| format!("#{i}"))
                .unwrap_or_else(|| "host".into()),
            kind: e.kind,
            code: e.code,
            count: e.count,
            message: e.message,
            meaning: e.meaning,
            action: e.action,
        })
        .collect();
    let page = HostPage {
        user_name: user.name,
        user_role: user.role.as_str(),
        agent_version: if h.agent_version.is_empty() {
            "unknown".into()
        } else {
            h.agent_version.clone()
        },
        range_label: format!("{} raw samples", hs.len() + gs.len()),
        host: host_row(&h, &gpus, now),
        charts,
        gpus: gpus.iter().map(gpu_cell).collect(),
        events,
    };
    Ok(render(&page))
}
