//! Server-rendered pages (askama). View models hold display strings with units, so
//! templates stay free of logic. All strings from agents are escaped by askama.

use std::collections::HashMap;
use std::fmt::Write as _;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::auth::{urlencode, Csrf, PageUser};
use super::charts::{
    heat_step_css, line_chart_with, sequential_gradient, sequential_step, sparkline, Axis, Overlay,
    Series, HEAT_STEP_CLASS, PALETTE,
};
use super::data::{self, ExplainedEvent, Health, HeatCell, Metric};
use super::error::ApiError;
use super::range::{preset_links, PresetLink, RangeParams, TimeRange};
use super::AppState;
use crate::model::format::{age, bytes, num, push_fixed, rate};
use crate::store::auth::{Role, User};
use crate::store::queries::{AlertTouching, GpuLatest, HostLatest};
use crate::store::series::{GpuPoint, HostPoint};

/// Render a template into a response (500 with a log line if it fails).
pub fn render<T: Template>(t: &T) -> Response {
    render_sized(t, T::SIZE_HINT)
}

/// Render into a buffer of `capacity` bytes: pages that grow with the fleet say how
/// big they will be, instead of being copied on every doubling of the buffer.
pub fn render_sized<T: Template>(t: &T, capacity: usize) -> Response {
    let mut s = String::with_capacity(capacity);
    match t.render_into(&mut s) {
        Ok(()) => Html(s).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

/// Build and render a page on the blocking pool: a fleet's page takes milliseconds of
/// CPU, which on an async worker would stall every other connection it serves (other
/// pages, ingest) for that long.
async fn render_off<F>(f: F) -> Result<Response, ApiError>
where
    F: FnOnce() -> Response + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("rendering a page: {e}")))
}

/// About what a page with this many heatmap cells (and per-host GPU summaries) weighs:
/// 242 KiB for 1,000 GPUs on 125 hosts.
fn heatmap_page_size(cells: usize) -> usize {
    32 * 1024 + 224 * cells
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub next: String,
    pub username: String,
    pub csrf: String,
}

/// What the header of every logged-in page needs.
pub struct Nav {
    pub user_name: String,
    pub user_role: &'static str,
    pub is_admin: bool,
    /// Token for the logout form (and any other form on the page).
    pub csrf: String,
    /// Which nav link is the current page.
    pub current: &'static str,
}

impl Nav {
    pub fn new(user: &User, csrf: Csrf, current: &'static str) -> Nav {
        Nav {
            user_name: user.name.clone(),
            user_role: user.role.as_str(),
            is_admin: user.role >= Role::Admin,
            csrf: csrf.0,
            current,
        }
    }
}

/// Path segment for a name from an agent (hostnames may hold anything).
pub fn seg(s: &str) -> String {
    urlencode(s).replace('/', "%2F")
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
    pub gpus: GpuSummary,
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

/// A host's GPUs in one cell of the fleet's host table: count, utilization (mean and
/// max), power and the hottest GPU. Each GPU's own values are one hover away in the
/// heatmap above; one summary per host keeps a thousand-GPU page small.
#[derive(Default)]
pub struct GpuSummary {
    /// `8 GPUs · util 45 % (max 97 %) · 2.4 kW · max 91 °C · ▲ 1 hot`
    pub text: String,
    /// At least one GPU ≥ 85 °C: outlined.
    pub hot: bool,
}

/// A host as a table row, with its GPUs' summary.
fn host_row(h: &HostLatest, gpus: GpuSummary, now: DateTime<Utc>) -> HostRow {
    let mem = match (h.mem_used_bytes, h.mem_total_bytes) {
        (Some(u), Some(t)) => format!("{} / {}", bytes(Some(u as f64)), bytes(Some(t as f64))),
        (Some(u), None) => bytes(Some(u as f64)),
        _ => "–".into(),
    };
    HostRow {
        name: h.name.clone(),
        link: seg(&h.name),
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
        gpus,
    }
}

/// Host rows with their GPUs' summaries (heatmap cells, grouped by host once).
fn host_rows(hosts: &[HostLatest], cells: &[HeatCell], now: DateTime<Utc>) -> Vec<HostRow> {
    let mut by_host: HashMap<&str, Vec<&HeatCell>> = HashMap::new();
    for c in cells {
        by_host.entry(c.host_name.as_str()).or_default().push(c);
    }
    hosts
        .iter()
        .map(|h| {
            let gpus = by_host
                .remove(h.name.as_str())
                .map(|g| gpu_summary(&g))
                .unwrap_or_default();
            host_row(h, gpus, now)
        })
        .collect()
}

/// The range picker: preset links, a custom from/to form, what the charts read.
pub struct Picker {
    pub path: String,
    pub links: Vec<PresetLink>,
    /// Extra query (`&metric=temp`) kept by the links.
    pub keep: String,
    /// `YYYY-MM-DDTHH:MM` in UTC; the page script shows them in the viewer's zone.
    pub from_value: String,
    pub to_value: String,
    pub label: String,
    pub source_label: String,
    pub live: bool,
    pub query: String,
    /// RFC 3339 ends, shown in the viewer's zone by the page script.
    pub from_iso: String,
    pub to_iso: String,
}

fn picker(path: String, r: &TimeRange, keep: String) -> Picker {
    Picker {
        path,
        links: preset_links(r),
        keep,
        from_value: r.from.format("%Y-%m-%dT%H:%M").to_string(),
        to_value: r.to.format("%Y-%m-%dT%H:%M").to_string(),
        label: r.label(),
        source_label: r.source_label(),
        live: r.is_live(),
        query: r.query(),
        from_iso: r.from.to_rfc3339(),
        to_iso: r.to.to_rfc3339(),
    }
}

/// A heatmap cell.
pub struct CellView {
    pub href: String,
    /// Color class: a heatmap step (`q0` … `q32`) or a health color (`h-ok`, …).
    pub tone: &'static str,
    pub class: &'static str,
    pub text: String,
    pub label: String,
}

pub struct HostGroup {
    pub name: String,
    pub link: String,
    /// The host's URL segment, for its cells' links.
    host_seg: String,
    pub cells: Vec<CellView>,
}

pub struct RackGroup {
    pub site: String,
    pub name: String,
    pub link: String,
    pub hosts: Vec<HostGroup>,
}

pub struct SiteGroup {
    pub name: String,
    pub racks: Vec<RackGroup>,
}

/// Legend of the heatmap: a gradient with its ends, or the health swatches.
pub struct HeatLegend {
    pub gradient: String,
    /// CSS of the color steps the cells' classes name (see `heat_step_css`).
    pub step_css: &'static str,
    pub low: &'static str,
    pub high: &'static str,
    pub health: bool,
}

/// Okabe–Ito colors for health, each with a glyph so color is never the only cue.
fn health_style(h: Health) -> (&'static str, &'static str, &'static str) {
    // (class with the health colors (see heatmap.html), glyph, word)
    match h {
        Health::Ok => ("h-ok", "", "ok"),
        Health::Hot => ("h-hot", "▲", "hot"),
        Health::Fault => ("h-fault", "✖", "fault"),
        Health::Stale => ("h-stale", "?", "no data"),
    }
}

/// One heatmap cell; `host_seg` is the host's URL segment (computed once per host).
fn cell_view(c: &HeatCell, metric: Metric, query: &str, host_seg: &str) -> CellView {
    let (health_tone, glyph, word) = health_style(c.health);
    let tone = match (metric, c.scale) {
        (Metric::Health, _) | (_, None) => health_tone,
        (_, Some(f)) => HEAT_STEP_CLASS[sequential_step(f)],
    };
    let class = match c.health {
        Health::Ok => "cell",
        Health::Hot => "cell hot",
        Health::Fault => "cell fault",
        Health::Stale => "cell stale",
    };
    // `gpu-7 GPU 1: 97 % util, 91 °C, 350 W, memory 60.0 GiB; hot`, written in place:
    // the fleet page has a thousand of these.
    let mut label = String::with_capacity(c.host_name.len() + 96);
    let value = |label: &mut String, v: Option<f32>, unit: &str| match v {
        Some(v) => {
            push_fixed(label, f64::from(v), 0);
            label.push_str(unit);
        }
        None => label.push('–'),
    };
    let _ = write!(label, "{} GPU {}: ", c.host_name, c.index);
    value(&mut label, c.util_pct, " % util");
    label.push_str(", ");
    value(&mut label, c.temp_celsius, " °C");
    label.push_str(", ");
    value(&mut label, c.power_watts, " W");
    let _ = write!(
        label,
        ", memory {}; {word}",
        bytes(c.mem_used_bytes.map(|v| v as f64))
    );
    if c.faults_24h > 0 {
        let _ = write!(label, ", {} hardware events in 24 h", c.faults_24h);
    }
    CellView {
        href: format!("/hosts/{host_seg}/gpus/{}?{query}", c.index),
        tone,
        class,
        text: format!("{}{glyph}", c.index),
        label,
    }
}

/// Group cells by site, rack and host (cells arrive ordered that way).
fn heatmap(cells: &[HeatCell], metric: Metric, query: &str) -> Vec<SiteGroup> {
    let mut sites: Vec<SiteGroup> = Vec::new();
    for c in cells {
        if sites.last().is_none_or(|s| s.name != c.site) {
            sites.push(SiteGroup {
                name: c.site.clone(),
                racks: Vec::new(),
            });
        }
        let site = sites.last_mut().expect("pushed");
        if site.racks.last().is_none_or(|r| r.name != c.rack) {
            site.racks.push(RackGroup {
                site: c.site.clone(),
                name: c.rack.clone(),
                link: format!("/racks/{}/{}?{query}", seg(&c.site), seg(&c.rack)),
                hosts: Vec::new(),
            });
        }
        let rack = site.racks.last_mut().expect("pushed");
        if rack.hosts.last().is_none_or(|h| h.name != c.host_name) {
            let host_seg = seg(&c.host_name);
            rack.hosts.push(HostGroup {
                name: c.host_name.clone(),
                link: format!("/hosts/{host_seg}?{query}"),
                host_seg,
                cells: Vec::new(),
            });
        }
        let host = rack.hosts.last_mut().expect("pushed");
        let cell = cell_view(c, metric, query, &host.host_seg);
        host.cells.push(cell);
    }
    sites
}

fn legend(metric: Metric) -> HeatLegend {
    let (low, high) = metric.scale();
    HeatLegend {
        gradient: sequential_gradient(),
        step_css: heat_step_css(),
        low,
        high,
        health: metric == Metric::Health,
    }
}

/// A metric tab of the heatmap.
pub struct MetricLink {
    pub key: &'static str,
    pub label: &'static str,
    pub current: bool,
    /// `?metric=temp`, plus the page's range where it has one.
    pub href: String,
}

fn metric_links(m: Metric, range_query: Option<&str>) -> Vec<MetricLink> {
    Metric::ALL
        .iter()
        .map(|x| MetricLink {
            key: x.key(),
            label: x.label(),
            current: *x == m,
            href: match range_query {
                Some(q) => format!("?metric={}&{q}", x.key()),
                None => format!("?metric={}", x.key()),
            },
        })
        .collect()
}

#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    pub nav: Nav,
    pub hosts: Vec<HostRow>,
    pub hosts_up: usize,
    pub gpus_up: usize,
    pub gpus_total: usize,
    pub gpus_faulty: usize,
    pub alerts_firing: i64,
    pub mean_gpu_util: String,
    pub gpu_power: String,
    pub energy_today: String,
    pub metrics: Vec<MetricLink>,
    pub metric_label: &'static str,
    pub legend: HeatLegend,
    pub sites: Vec<SiteGroup>,
}

fn watts(w: f64) -> String {
    if w >= 1000.0 {
        format!("{:.1} kW", w / 1000.0)
    } else {
        format!("{w:.0} W")
    }
}

pub async fn fleet(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Query(q): Query<RangeParams>,
) -> Result<Response, ApiError> {
    let metric = Metric::parse(q.metric.as_deref())?;
    let d = data::fleet(&st, metric).await?;
    render_off(move || {
        let now = d.generated_at;
        let rows = host_rows(&d.hosts, &d.gpus, now);
        let page = FleetPage {
            nav: Nav::new(&user, csrf, "fleet"),
            hosts_up: d.hosts_up,
            hosts: rows,
            gpus_up: d.gpus_up,
            gpus_total: d.gpus_total,
            gpus_faulty: d.gpus_faulty,
            alerts_firing: d.alerts_firing,
            mean_gpu_util: num(d.mean_gpu_util_pct, 1, "%"),
            gpu_power: watts(d.gpu_power_watts),
            energy_today: format!("{:.1} kWh", d.gpu_energy_today_kwh),
            metrics: metric_links(metric, None),
            metric_label: metric.label(),
            legend: legend(metric),
            sites: heatmap(&d.gpus, metric, "range=1h"),
        };
        render_sized(&page, heatmap_page_size(d.gpus.len()))
    })
    .await
}

/// The fleet host table's summary of one host's GPUs.
fn gpu_summary(cells: &[&HeatCell]) -> GpuSummary {
    let utils: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.util_pct.map(f64::from))
        .collect();
    let max_util = utils.iter().copied().reduce(f64::max);
    let max_temp = cells
        .iter()
        .filter_map(|c| c.temp_celsius.map(f64::from))
        .reduce(f64::max);
    let powers: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.power_watts.map(f64::from))
        .collect();
    let hot = cells
        .iter()
        .filter(|c| c.temp_celsius.is_some_and(|t| t >= data::HOT_CELSIUS))
        .count();
    let faulty = cells.iter().filter(|c| c.health == Health::Fault).count();
    let mut text = String::with_capacity(64);
    let _ = write!(
        text,
        "{} GPU{}",
        cells.len(),
        if cells.len() == 1 { "" } else { "s" }
    );
    if let Some(max) = max_util {
        text.push_str(" · util ");
        push_fixed(&mut text, utils.iter().sum::<f64>() / utils.len() as f64, 0);
        text.push_str(" % (max ");
        push_fixed(&mut text, max, 0);
        text.push_str(" %)");
    }
    if !powers.is_empty() {
        let _ = write!(text, " · {}", watts(powers.iter().sum()));
    }
    if let Some(t) = max_temp {
        text.push_str(" · max ");
        push_fixed(&mut text, t, 0);
        text.push_str(" °C");
    }
    if hot > 0 {
        let _ = write!(text, " · ▲ {hot} hot");
    }
    if faulty > 0 {
        let _ = write!(text, " · ✖ {faulty} with hardware events");
    }
    GpuSummary { text, hot: hot > 0 }
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
    pub gpu_link: String,
    pub title: String,
    pub count: i32,
    pub message: String,
    pub meaning: String,
    pub action: String,
}

fn event_views(events: &[ExplainedEvent], query: &str) -> Vec<EventView> {
    events
        .iter()
        .map(|e| EventView {
            ts: e.ts.to_rfc3339(),
            gpu: e
                .index
                .map(|i| format!("GPU {i}"))
                .unwrap_or_else(|| "host".into()),
            gpu_link: e
                .index
                .map(|i| format!("/hosts/{}/gpus/{i}?{query}", seg(&e.host_name)))
                .unwrap_or_default(),
            title: e.title.clone(),
            count: e.count,
            message: e.message.clone(),
            meaning: e.meaning.clone(),
            action: e.action.clone(),
        })
        .collect()
}

/// An alert touching the page's host (or a host of the rack), for the alerts section.
pub struct AlertTouchView {
    pub state: String,
    pub severity: String,
    pub summary: String,
    pub description: String,
    /// `GPU 1` / `host` on a host page, `gpu-node-7 / GPU 1` on a rack page.
    pub location: String,
    pub location_link: String,
    pub since: String,
    pub resolved: String,
    pub note: String,
}

fn alert_views(alerts: &[AlertTouching], with_host: bool, query: &str) -> Vec<AlertTouchView> {
    alerts
        .iter()
        .map(|a| {
            let what = a
                .gpu
                .map_or_else(|| "host".to_string(), |i| format!("GPU {i}"));
            let mut note = Vec::new();
            if a.silenced {
                note.push("silenced".to_string());
            }
            if let Some(by) = &a.acknowledged_by {
                note.push(format!("acknowledged by {by}"));
            }
            if a.occurrences > 1 {
                note.push(format!("{} occurrences", a.occurrences));
            }
            AlertTouchView {
                state: a.state.clone(),
                severity: a.severity.clone(),
                summary: a.summary.clone(),
                description: a.description.clone(),
                location: if with_host {
                    format!("{} / {what}", a.host)
                } else {
                    what
                },
                location_link: match a.gpu {
                    Some(i) => format!("/hosts/{}/gpus/{i}?{query}", seg(&a.host)),
                    None => format!("/hosts/{}?{query}", seg(&a.host)),
                },
                since: a.started_at.to_rfc3339(),
                resolved: a.resolved_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                note: note.join(", "),
            }
        })
        .collect()
}

fn chart(title: &str, series: Vec<Series>, r: &TimeRange, axis: Axis, ov: &Overlay) -> ChartView {
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.label.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    ChartView {
        title: title.to_string(),
        svg: line_chart_with(title, &series, r.from, r.to, axis, r.gap_secs(), ov),
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
fn fmt_mhz_axis(v: f64) -> String {
    format!("{v:.0} MHz")
}
fn fmt_score_axis(v: f64) -> String {
    format!("{v:.1}")
}

type HostField = fn(&HostPoint) -> Option<f64>;

/// Host charts (CPU, memory, disk, network), one line per host.
fn host_charts(points: &[HostPoint], r: &TimeRange, per_host: bool) -> Vec<ChartView> {
    let mut names: Vec<&str> = points.iter().map(|p| p.host_name.as_str()).collect();
    names.dedup();
    let lines = |fields: &[(&str, HostField)]| -> Vec<Series> {
        let mut out = Vec::new();
        for n in &names {
            for (label, f) in fields {
                out.push(Series {
                    label: if per_host {
                        format!("{n} {label}")
                    } else {
                        label.to_string()
                    },
                    points: points
                        .iter()
                        .filter(|p| p.host_name == *n)
                        .filter_map(|p| f(p).map(|v| (p.ts, v)))
                        .collect(),
                });
            }
        }
        out
    };
    let ov = Overlay::default();
    vec![
        chart(
            "CPU utilization",
            lines(&[("CPU", |p| p.cpu_util_pct)]),
            r,
            Axis::Percent,
            &ov,
        ),
        chart(
            "Memory used",
            lines(&[("used", |p| p.mem_used_bytes)]),
            r,
            Axis::Auto(fmt_bytes_axis),
            &ov,
        ),
        chart(
            "Disk throughput",
            lines(&[
                ("read", |p| p.disk_read_bytes_per_s),
                ("write", |p| p.disk_write_bytes_per_s),
            ]),
            r,
            Axis::Auto(fmt_rate_axis),
            &ov,
        ),
        chart(
            "Network throughput",
            lines(&[
                ("rx", |p| p.net_rx_bytes_per_s),
                ("tx", |p| p.net_tx_bytes_per_s),
            ]),
            r,
            Axis::Auto(fmt_rate_axis),
            &ov,
        ),
    ]
}

type GpuField = fn(&GpuPoint) -> Option<f64>;

fn gpu_points(points: &[GpuPoint], index: i16, f: GpuField) -> Vec<(DateTime<Utc>, f64)> {
    points
        .iter()
        .filter(|p| p.index == index)
        .filter_map(|p| f(p).map(|v| (p.ts, v)))
        .collect()
}

/// A GPU row of the host page, with a utilization sparkline.
pub struct GpuRow {
    pub cell: GpuCell,
    pub link: String,
    pub spark: String,
}

#[derive(Template)]
#[template(path = "host.html")]
pub struct HostPage {
    pub nav: Nav,
    pub host: HostRow,
    pub rack_link: String,
    pub agent_version: String,
    pub picker: Picker,
    pub charts: Vec<ChartView>,
    pub gpus: Vec<GpuRow>,
    pub events: Vec<EventView>,
    pub alerts: Vec<AlertTouchView>,
    /// The host's anomaly model in a sentence.
    pub anomaly_note: String,
    pub anomalies: Vec<AnomalyView>,
    /// The API query with every anomalous minute of the range.
    pub anomalies_link: String,
    pub anomalies_max: i64,
}

/// An anomalous minute on the host page.
pub struct AnomalyView {
    pub ts: String,
    pub score: String,
    pub level: String,
    pub detail: String,
}

/// The host's anomaly model, or why it has none, for people.
fn anomaly_note(models: &[crate::analytics::anomaly::ModelInfo], now: DateTime<Utc>) -> String {
    match models.first() {
        None => "No anomaly model yet: the anomaly job has not looked at this host.".into(),
        Some(m) if m.status == "trained" => format!(
            "Scored every minute against a model of this host's normal behaviour, trained {} on \
             {} minutes of {} metrics; alert level {:.2}.",
            age(Some(m.trained_at), now),
            m.train_minutes,
            m.metrics.len(),
            m.threshold.unwrap_or_default()
        ),
        Some(m) => format!("No anomaly model yet: {}.", m.note),
    }
}

pub async fn host(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path(name): Path<String>,
    Query(q): Query<RangeParams>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let r = q.resolve_overview(now, "1h")?;
    let d = data::host(&st, &name, r.clone()).await?;
    render_off(move || {
        let query = r.query();
        let mut charts = host_charts(&d.host_series, &r, false);
        let mut indexes: Vec<i16> = d.gpu_series.iter().map(|g| g.index).collect();
        indexes.dedup();
        let per_gpu = |f: GpuField| -> Vec<Series> {
            indexes
                .iter()
                .map(|i| Series {
                    label: format!("GPU {i}"),
                    points: gpu_points(&d.gpu_series, *i, f),
                })
                .collect()
        };
        if !indexes.is_empty() {
            let ov = Overlay::default();
            charts.push(chart(
                "GPU utilization",
                per_gpu(|g| g.util_pct),
                &r,
                Axis::Percent,
                &ov,
            ));
            charts.push(chart(
                "GPU power",
                per_gpu(|g| g.power_watts),
                &r,
                Axis::Auto(fmt_watts_axis),
                &ov,
            ));
            charts.push(chart(
                "GPU temperature",
                per_gpu(|g| g.temp_celsius),
                &r,
                Axis::Auto(fmt_celsius_axis),
                &ov,
            ));
            charts.push(chart(
                "GPU memory used",
                per_gpu(|g| g.mem_used_bytes),
                &r,
                Axis::Auto(fmt_bytes_axis),
                &ov,
            ));
        }
        // The anomaly score next to the level it must stay above to alert: where the
        // host left its usual behaviour, on the same time axis as the metrics above.
        if !d.anomaly_series.is_empty() {
            let line = |f: fn(&crate::analytics::anomaly::ScorePoint) -> f32| -> Vec<_> {
                d.anomaly_series
                    .iter()
                    .map(|p| (p.ts, f64::from(f(p))))
                    .collect()
            };
            charts.push(chart(
                "Anomaly score",
                vec![
                    Series {
                        label: "score (highest per point)".into(),
                        points: line(|p| p.score),
                    },
                    Series {
                        label: "alert level".into(),
                        points: line(|p| p.level),
                    },
                ],
                &r,
                Axis::Auto(fmt_score_axis),
                &Overlay::default(),
            ));
        }
        let gpus = d
            .gpus
            .iter()
            .map(|g| GpuRow {
                link: format!("/hosts/{}/gpus/{}?{query}", seg(&name), g.index),
                spark: sparkline(
                    &gpu_points(&d.gpu_series, g.index, |p| p.util_pct),
                    r.from,
                    r.to,
                    100.0,
                    &format!("GPU {} utilization, {}", g.index, r.label()),
                ),
                cell: gpu_cell(g),
            })
            .collect();
        let page = HostPage {
            nav: Nav::new(&user, csrf, ""),
            agent_version: if d.host.agent_version.is_empty() {
                "unknown".into()
            } else {
                d.host.agent_version.clone()
            },
            rack_link: format!("/racks/{}/{}?{query}", seg(&d.host.site), seg(&d.host.rack)),
            host: host_row(&d.host, GpuSummary::default(), now),
            picker: picker(format!("/hosts/{}", seg(&name)), &r, String::new()),
            charts,
            gpus,
            events: event_views(&d.events, &query),
            alerts: alert_views(&d.alerts, false, &query),
            anomaly_note: anomaly_note(&d.anomaly_models, now),
            anomalies: d
                .anomalies
                .iter()
                .map(|a| AnomalyView {
                    ts: a.ts.to_rfc3339(),
                    score: format!("{:.1}", a.score),
                    level: format!("{:.1}", a.threshold),
                    detail: crate::analytics::anomaly::anomaly_explanation(&a.top),
                })
                .collect(),
            anomalies_link: format!(
                "/api/v1/anomalies?host={}&anomalous=true&from={}&to={}",
                urlencode(&name),
                urlencode(&r.from.to_rfc3339()),
                urlencode(&r.to.to_rfc3339())
            ),
            anomalies_max: data::HOST_PAGE_ANOMALIES,
        };
        render(&page)
    })
    .await
}

#[derive(Template)]
#[template(path = "gpu.html")]
pub struct GpuPage {
    pub nav: Nav,
    pub host: HostRow,
    pub host_link: String,
    pub rack_link: String,
    pub gpu: GpuCell,
    pub driver_note: String,
    pub picker: Picker,
    pub charts: Vec<ChartView>,
    pub throttle_note: String,
    pub events: Vec<EventView>,
}

pub async fn gpu(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path((name, index)): Path<(String, i16)>,
    Query(q): Query<RangeParams>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let r = q.resolve(now, "1h")?;
    let d = data::gpu(&st, &name, index, r.clone()).await?;
    render_off(move || {
        let query = r.query();
        let ov = Overlay {
            shaded: d
                .throttled
                .iter()
                .flatten()
                .map(|s| (s.from, s.to))
                .collect(),
            marks: d
                .events
                .iter()
                .map(|e| (e.ts, format!("{}: {}", e.title, e.meaning)))
                .collect(),
        };
        let one = |label: &str, f: GpuField| Series {
            label: label.to_string(),
            points: gpu_points(&d.series, index, f),
        };
        let mut charts = vec![
            chart(
                "Utilization",
                vec![one("SM", |p| p.util_pct), one("memory", |p| p.mem_util_pct)],
                &r,
                Axis::Percent,
                &ov,
            ),
            chart(
                "Memory used",
                vec![one("used", |p| p.mem_used_bytes)],
                &r,
                Axis::Auto(fmt_bytes_axis),
                &ov,
            ),
            chart(
                "Power",
                vec![
                    one("mean", |p| p.power_watts),
                    one("max", |p| p.power_watts_max),
                ],
                &r,
                Axis::Auto(fmt_watts_axis),
                &ov,
            ),
            chart(
                "Temperature",
                vec![
                    one("GPU", |p| p.temp_celsius),
                    one("GPU max", |p| p.temp_celsius_max),
                    one("memory", |p| p.mem_temp_celsius),
                ],
                &r,
                Axis::Auto(fmt_celsius_axis),
                &ov,
            ),
            chart(
                "Clocks",
                vec![
                    one("SM", |p| p.sm_clock_mhz),
                    one("memory", |p| p.mem_clock_mhz),
                ],
                &r,
                Axis::Auto(fmt_mhz_axis),
                &ov,
            ),
        ];
        if d.series.iter().any(|p| p.fan_pct.is_some()) {
            charts.push(chart(
                "Fan speed",
                vec![one("fan", |p| p.fan_pct)],
                &r,
                Axis::Percent,
                &ov,
            ));
        }
        let throttle_note = match &d.throttled {
            Some(s) if s.is_empty() => "No clock throttling in this range.".to_string(),
            Some(s) => format!(
                "Shaded: clocks throttled (power cap, thermal or power brake), {} period{}.",
                s.len(),
                if s.len() == 1 { "" } else { "s" }
            ),
            None => format!(
                "Throttle shading is shown for ranges up to {} h (it is read from raw samples).",
                data::THROTTLE_MAX_SECS / 3600
            ),
        };
        let page = GpuPage {
            nav: Nav::new(&user, csrf, ""),
            host_link: format!("/hosts/{}?{query}", seg(&name)),
            rack_link: format!("/racks/{}/{}?{query}", seg(&d.host.site), seg(&d.host.rack)),
            host: host_row(&d.host, GpuSummary::default(), now),
            gpu: gpu_cell(&d.gpu),
            driver_note: d
                .gpu
                .memory_total_bytes
                .map(|b| format!("{} memory", bytes(Some(b as f64))))
                .unwrap_or_default(),
            picker: picker(
                format!("/hosts/{}/gpus/{index}", seg(&name)),
                &r,
                String::new(),
            ),
            charts,
            throttle_note,
            events: event_views(&d.events, &query),
        };
        render(&page)
    })
    .await
}

#[derive(Template)]
#[template(path = "rack.html")]
pub struct RackPage {
    pub nav: Nav,
    pub site: String,
    pub rack: String,
    pub picker: Picker,
    pub hosts: Vec<HostRow>,
    pub metrics: Vec<MetricLink>,
    pub metric_label: &'static str,
    pub legend: HeatLegend,
    pub sites: Vec<SiteGroup>,
    pub charts: Vec<ChartView>,
    pub events: Vec<EventView>,
    pub alerts: Vec<AlertTouchView>,
}

pub async fn rack(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path((site, rack)): Path<(String, String)>,
    Query(q): Query<RangeParams>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let r = q.resolve_overview(now, "1h")?;
    let metric = Metric::parse(q.metric.as_deref())?;
    let d = data::rack(&st, &site, &rack, r.clone(), metric).await?;
    render_off(move || {
        let query = r.query();
        let path = format!("/racks/{}/{}", seg(&site), seg(&rack));
        let page = RackPage {
            nav: Nav::new(&user, csrf, ""),
            picker: picker(path, &r, format!("&metric={}", metric.key())),
            hosts: host_rows(&d.hosts, &d.gpus, now),
            metrics: metric_links(metric, Some(&query)),
            metric_label: metric.label(),
            legend: legend(metric),
            sites: heatmap(&d.gpus, metric, &query),
            charts: host_charts(&d.host_series, &r, true),
            events: event_views(&d.events, &query),
            alerts: alert_views(&d.alerts, true, &query),
            site,
            rack,
        };
        render_sized(&page, heatmap_page_size(d.gpus.len()) + 64 * 1024)
    })
    .await
}

/// A row of the inventory page.
pub struct InventoryView {
    pub host: String,
    pub host_link: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub agent_version: String,
    pub last_seen: String,
    pub gpu: String,
    pub gpu_link: String,
    pub model: String,
    pub uuid: String,
    pub driver: String,
    pub memory: String,
}

#[derive(Template)]
#[template(path = "inventory.html")]
pub struct InventoryPage {
    pub nav: Nav,
    pub q: String,
    pub rows: Vec<InventoryView>,
    pub hosts: usize,
    pub gpus: usize,
}

pub async fn inventory(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Query(q): Query<RangeParams>,
) -> Result<Response, ApiError> {
    let d = data::inventory(&st, q.q.as_deref().unwrap_or("")).await?;
    let mut hosts: Vec<&str> = d.rows.iter().map(|r| r.host_name.as_str()).collect();
    hosts.dedup();
    let rows: Vec<InventoryView> = d
        .rows
        .iter()
        .map(|r| InventoryView {
            host: r.host_name.clone(),
            host_link: format!("/hosts/{}", seg(&r.host_name)),
            site: r.site.clone(),
            rack: r.rack.clone(),
            pool: r.pool.clone(),
            agent_version: r.agent_version.clone(),
            last_seen: r.last_seen.map(|t| t.to_rfc3339()).unwrap_or_default(),
            gpu: r.index.map(|i| format!("GPU {i}")).unwrap_or_default(),
            gpu_link: r
                .index
                .map(|i| format!("/hosts/{}/gpus/{i}", seg(&r.host_name)))
                .unwrap_or_default(),
            model: r.model.clone().unwrap_or_default(),
            uuid: r.uuid.clone().unwrap_or_default(),
            driver: r.driver_version.clone().unwrap_or_default(),
            memory: r
                .memory_total_bytes
                .map(|b| bytes(Some(b as f64)))
                .unwrap_or_default(),
        })
        .collect();
    let page = InventoryPage {
        nav: Nav::new(&user, csrf, "inventory"),
        q: d.q,
        hosts: hosts.len(),
        gpus: d.rows.iter().filter(|r| r.index.is_some()).count(),
        rows,
    };
    Ok(render(&page))
}
