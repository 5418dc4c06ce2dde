//! What every page shares: rendering (off the async workers), the header, the range
//! picker, charts, and the rows that several pages show (hosts, GPUs, events, alerts).
//! Resource modules (`fleet`, `host`, `gpu`, `rack`, …) build their pages from these.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::auth::{urlencode, Csrf};
use super::charts::{line_chart_sized, Axis, Band, Overlay, Series, Size, PALETTE};
use super::error::ApiError;
use super::events::title;
use super::range::{preset_links, PresetLink, TimeRange};
use crate::model::format::{age, bytes, num, rate};
use crate::store::auth::{Role, User};
use crate::store::queries::{AlertTouching, EventRow, GpuLatest, HostLatest};
use crate::store::series::{GpuPoint, HostPoint};

/// Render a template into a response (500 with a log line if it fails).
/// A time for a page's `<time datetime>`: to the second, in UTC (`2026-12-06T06:02:34Z`).
/// The script shows it in the viewer's zone; without the script it reads as it is.
pub fn time_attr(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

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
pub async fn render_off<F, E>(f: F) -> Result<Response, E>
where
    F: FnOnce() -> Response + Send + 'static,
    E: From<ApiError>,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("rendering a page: {e}")).into())
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

/// The segment that stands for "none" in a rack page's path: a host whose agent sets no
/// site or rack is listed under `/racks/-/-` (a path segment cannot be empty).
pub const NO_PLACE_SEG: &str = "-";

/// A rack page's path; a missing site or rack is [`NO_PLACE_SEG`].
pub fn rack_path(site: &str, rack: &str) -> String {
    let part = |s: &str| {
        if s.is_empty() {
            NO_PLACE_SEG.to_string()
        } else {
            seg(s)
        }
    };
    format!("/racks/{}/{}", part(site), part(rack))
}

/// The site or rack a rack page's path segment names ([`NO_PLACE_SEG`]: none).
pub fn place_from_seg(s: String) -> String {
    if s == NO_PLACE_SEG {
        String::new()
    } else {
        s
    }
}

/// A site, rack or pool name as shown, with `none` for a host whose agent sets none.
pub fn place_label(s: &str, none: &str) -> String {
    if s.is_empty() {
        none.to_string()
    } else {
        s.to_string()
    }
}

/// A host reports when the server received a sample from it within [`STALE_SECS`], by
/// the server's clock: a host whose clock is behind reports all the same.
pub fn host_reports(h: &HostLatest, now: DateTime<Utc>) -> bool {
    h.last_heard
        .or(h.last_seen)
        .is_some_and(|t| (now - t).num_seconds() <= STALE_SECS)
}

/// A GPU reports when its host does and its newest sample is within [`STALE_SECS`] of the
/// host's newest sample (both by the agent's clock): a GPU that fell off the bus drops out
/// within a minute while its host goes on reporting.
pub fn gpu_reports(g: &GpuLatest, host: Option<&HostLatest>, now: DateTime<Utc>) -> bool {
    match (g.ts, host) {
        (Some(t), Some(h)) => {
            host_reports(h, now)
                && h.last_seen
                    .is_some_and(|s| (s - t).num_seconds() <= STALE_SECS)
        }
        _ => false,
    }
}

/// When two agents were last seen reporting as `h`, if within the hour the host page and
/// `rackwatch host list` name it for.
pub fn two_agents_seen(h: &HostLatest, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    h.two_agents_at
        .filter(|t| now - *t < chrono::Duration::hours(1))
}

/// Samples that arrive this much after their own time make a host "late".
pub const LATE_SECS: i64 = 30;

/// A note for a host that reports (heard from within [`STALE_SECS`]) whose clock is off
/// by more than [`LATE_SECS`] (when its agent sends its clock), or whose samples are older
/// than that on arrival.
pub fn late_note(h: &HostLatest, now: DateTime<Utc>) -> String {
    let span = |secs: f64| {
        age(
            Some(now - chrono::Duration::seconds(secs.abs() as i64)),
            now,
        )
        .trim_end_matches(" ago")
        .to_string()
    };
    let (Some(seen), Some(heard)) = (h.last_seen, h.last_heard) else {
        return String::new();
    };
    if (now - heard).num_seconds() > STALE_SECS {
        return String::new();
    }
    let late = (heard - seen).num_seconds();
    match h.clock_behind_secs {
        Some(b) if b.abs() > LATE_SECS as f64 => format!(
            "the agent's clock is {} {} the server's: check its NTP",
            span(b),
            if b > 0.0 { "behind" } else { "ahead of" }
        ),
        Some(_) if late > LATE_SECS => format!(
            "it is replaying a backlog: its newest sample was {} old on arrival",
            span(late as f64)
        ),
        None if late > LATE_SECS => format!(
            "its samples arrive {} after their own time: the agent's clock is behind (check its NTP), or it is replaying a backlog",
            span(late as f64)
        ),
        _ => String::new(),
    }
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
    /// Said when the host reports but its samples arrive late (its clock is behind, or it
    /// replays a backlog); empty otherwise.
    pub late: String,
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
    /// Hot or throttling-prone (≥ 85 °C): marked in the host's GPU table.
    pub hot: bool,
}

pub fn gpu_cell(g: &GpuLatest) -> GpuCell {
    GpuCell {
        index: g.index,
        model: g.model.clone().unwrap_or_default(),
        uuid: g.uuid.clone().unwrap_or_default(),
        util: num(g.util_pct.map(f64::from), 0, "%"),
        mem: bytes(g.mem_used_bytes.map(|v| v as f64)),
        power: num(g.power_watts.map(f64::from), 0, "W"),
        temp: num(g.temp_celsius.map(f64::from), 0, "°C"),
        clock: num(g.sm_clock_mhz.map(f64::from), 0, "MHz"),
        hot: g.temp_celsius.is_some_and(|t| t >= HOT_CELSIUS),
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
pub fn host_row(h: &HostLatest, gpus: GpuSummary, now: DateTime<Utc>) -> HostRow {
    let mem = match (h.mem_used_bytes, h.mem_total_bytes) {
        (Some(u), Some(t)) => format!("{} / {}", bytes(Some(u as f64)), bytes(Some(t as f64))),
        (Some(u), None) => bytes(Some(u as f64)),
        _ => "–".into(),
    };
    HostRow {
        name: h.name.clone(),
        link: seg(&h.name),
        site: place_label(&h.site, "no site"),
        rack: place_label(&h.rack, "no rack"),
        pool: place_label(&h.pool, "–"),
        age: age(h.last_seen, now),
        stale: !host_reports(h, now),
        late: late_note(h, now),
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

/// The range picker: preset links, a custom from/to form, what the charts read.
pub struct Picker {
    pub path: String,
    pub links: Vec<PresetLink>,
    /// Other parameters of the page (`metric`) that the preset links and the custom
    /// range form carry along.
    pub keep: Vec<(&'static str, String)>,
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
    /// A custom range that could not be shown, and why (the page shows the default).
    pub error: Option<String>,
    /// Said under the picker when the range holds no samples (a range in the future, or
    /// before the host reported).
    pub empty: bool,
}

pub fn picker(path: String, r: &TimeRange, keep: Vec<(&'static str, String)>) -> Picker {
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
        error: None,
        empty: false,
    }
}

impl Picker {
    /// Say that the range holds no samples.
    pub fn empty_if(mut self, empty: bool) -> Picker {
        self.empty = empty;
        self
    }

    /// Show a custom range that could not be shown: its times as typed in the form, and
    /// why, next to it.
    pub fn with_problem(mut self, problem: Option<super::range::RangeProblem>) -> Picker {
        if let Some(p) = problem {
            let typed =
                |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string());
            self.from_value = typed(p.from).unwrap_or(self.from_value);
            self.to_value = typed(p.to).unwrap_or(self.to_value);
            let mut why = p.why;
            if let Some(c) = why.get(..1) {
                why.replace_range(..1, &c.to_uppercase());
            }
            self.error = Some(format!("{why}; showing {} instead.", self.label));
        }
        self
    }

    /// The kept parameters as a query suffix (`&metric=temp`), for the preset links.
    pub fn keep_query(&self) -> String {
        self.keep
            .iter()
            .map(|(k, v)| format!("&{k}={}", urlencode(v)))
            .collect()
    }
}

/// A chart and its legend (label, color).
pub struct ChartView {
    pub title: String,
    pub svg: String,
    pub legend: Vec<(String, &'static str)>,
    /// A line under the chart (how a forecast was made); empty for most charts.
    pub note: String,
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

/// Events as rows; `with_host` names each one's host too (a rack's events, of several
/// hosts).
pub fn event_views(events: &[ExplainedEvent], query: &str, with_host: bool) -> Vec<EventView> {
    events
        .iter()
        .map(|e| EventView {
            ts: time_attr(e.ts),
            gpu: match (with_host, e.index) {
                (false, Some(i)) => format!("GPU {i}"),
                (false, None) => "host".into(),
                (true, Some(i)) => format!("{} / GPU {i}", e.host_name),
                (true, None) => e.host_name.clone(),
            },
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
    /// The Alerts page at the alert's row while it fires, else the page.
    pub link: String,
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

/// A firing alert's row id on the Alerts page: `alert-` and 16 hex digits of its
/// fingerprint's hash (a fingerprint holds label values: any characters).
pub fn alert_anchor(fingerprint: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(fingerprint.as_bytes());
    format!("alert-{}", hex::encode(&h[..8]))
}

/// Resolved alerts a host or rack page lists before it points to the Alerts page: a GPU
/// that failed again and again would push the page's GPUs out of sight.
pub const RESOLVED_SHOWN: usize = 4;

/// The link to a host's rack page; none for a host taken out of the fleet (it is on no
/// rack page, and its rack may have no host left).
pub fn rack_link_of(h: &HostLatest, query: &str) -> String {
    if h.removed_at.is_some() {
        String::new()
    } else {
        format!("{}?{query}", rack_path(&h.site, &h.rack))
    }
}

/// What the host and GPU pages say of a host taken out of the fleet; empty for others.
pub fn removed_note(h: &HostLatest) -> String {
    match &h.removed_at {
        Some(t) => format!(
            "Taken out of the fleet by {} at {}: it is not on the fleet, rack and inventory pages and never alerts as silent. An agent reporting for it again (with a new token) brings it back.",
            h.removed_by.as_deref().unwrap_or("an admin"),
            t.format("%Y-%m-%d %H:%M UTC")
        ),
        None => String::new(),
    }
}

/// Hardware events a host, GPU or rack page lists: the newest of its range. One more is
/// fetched, to say when there are more.
pub const EVENTS_SHOWN: usize = 200;

/// The newest [`EVENTS_SHOWN`] of `rows` (newest first), and whether there were more.
pub fn newest_events(
    mut rows: Vec<crate::store::queries::EventRow>,
) -> (Vec<crate::store::queries::EventRow>, bool) {
    let more = rows.len() > EVENTS_SHOWN;
    rows.truncate(EVENTS_SHOWN);
    (rows, more)
}

/// Where all of a host's events of `[from, to)` are (with `gpu`, those its GPU page lists):
/// the events API, for the note under a cut list.
pub fn all_events_link(
    host: &str,
    gpu: Option<i16>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    format!(
        "/api/v1/events?host={}{}&since={}&until={}",
        seg(host),
        gpu.map(|g| format!("&gpu={g}")).unwrap_or_default(),
        time_attr(from),
        time_attr(to)
    )
}

/// The alerts section's rows (pending and firing ones, and the first [`RESOLVED_SHOWN`]
/// resolved ones, most severe and newest first) and how many resolved ones were left out.
pub fn alert_views(
    alerts: &[AlertTouching],
    with_host: bool,
    query: &str,
) -> (Vec<AlertTouchView>, usize) {
    let resolved = alerts.iter().filter(|a| a.state == "resolved").count();
    let hidden = resolved.saturating_sub(RESOLVED_SHOWN);
    // Resolved ones come last, newest first (`alerts_touching`).
    let rows = alerts
        .iter()
        .take(alerts.len() - hidden)
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
                link: if a.state == "firing" {
                    format!("/alerts#{}", alert_anchor(&a.fingerprint))
                } else {
                    "/alerts".into()
                },
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
                since: time_attr(a.started_at),
                resolved: a.resolved_at.map(time_attr).unwrap_or_default(),
                note: note.join(", "),
            }
        })
        .collect();
    (rows, hidden)
}

pub fn chart(
    title: &str,
    series: Vec<Series>,
    r: &TimeRange,
    axis: Axis,
    ov: &Overlay,
) -> ChartView {
    chart_between(title, series, r.from, r.to, axis, r.gap_secs(), ov)
}

/// [`chart`] over any span, with points up to `gap_secs` apart drawn as connected.
pub fn chart_between(
    title: &str,
    series: Vec<Series>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    axis: Axis,
    gap_secs: i64,
    ov: &Overlay,
) -> ChartView {
    // A series with nothing in this range (one kept only in raw samples, on a rollup
    // range) is left out, legend included, unless the chart has nothing at all.
    let series: Vec<Series> = if series.iter().any(|s| !s.points.is_empty()) {
        series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect()
    } else {
        series
    };
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.label.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    // The chart, and its phone twin right after it (the stylesheet shows one of them).
    let [normal, phone] = [Size::NORMAL, Size::PHONE]
        .map(|size| line_chart_sized(title, &series, from, to, axis, gap_secs, ov, size));
    ChartView {
        title: title.to_string(),
        svg: normal + &phone,
        legend,
        note: String::new(),
    }
}

/// A stored forecast as a chart: the hourly point forecast over its horizon, the 80 % and
/// 95 % intervals as bands, and a mark at now. The note under it says in words how the
/// forecast was made and how well the method did on its backtest.
pub fn forecast_chart(f: &crate::analytics::forecast::StoredForecast) -> ChartView {
    let (what, axis) = match f.metric.as_str() {
        "gpu_util_pct" => ("GPU utilization", Axis::Percent),
        "gpu_power_watts" => ("GPU power", Axis::Unit("W")),
        "disk_used_bytes" => ("Disk used", Axis::Bytes),
        "demand_gpus" => ("Demand (work + queue)", Axis::Unit("GPUs")),
        other => (other, Axis::Unit("")),
    };
    let at = |i: usize| f.start_at + chrono::Duration::hours(i as i64);
    let to = at(f.point.len().max(1));
    let band = |lo: &[f64], hi: &[f64], label: &str, opacity: f64| Band {
        label: label.into(),
        points: lo
            .iter()
            .zip(hi)
            .enumerate()
            .map(|(i, (l, h))| (at(i), *l, *h))
            .collect(),
        opacity,
    };
    let ov = Overlay {
        bands: vec![
            band(&f.lo95, &f.hi95, "95 % interval", 0.10),
            band(&f.lo80, &f.hi80, "80 % interval", 0.18),
        ],
        marks: vec![(f.generated_at, "forecast made".into())],
        ..Overlay::default()
    };
    let title = format!("{what}, next {} days", f.point.len() / 24);
    let series = vec![Series {
        label: "forecast".into(),
        points: f
            .point
            .iter()
            .enumerate()
            .map(|(i, v)| (at(i), *v))
            .collect(),
    }];
    let mut view = chart(
        &title,
        series,
        &TimeRange::fixed(f.start_at, to, 3600),
        axis,
        &ov,
    );
    // The bands' blue (the palette's first colour at 30 %) over white, as drawn.
    view.legend
        .push(("80 % / 95 % intervals".into(), "#b3d5e8"));
    view.note = forecast_note(&f.model, f.backtest_mase);
    view
}

/// How a forecast was made, in words, from the engine's model name
/// (`"h1-24:snaive24 h25-168:level"`, `"ridge-log"`), and its backtest error as a multiple
/// of repeating the day before's hours (MASE).
pub fn forecast_note(model: &str, mase: Option<f64>) -> String {
    fn method(name: &str) -> String {
        let one = |n: &str| match n {
            "snaive24" => "the same hour yesterday".to_string(),
            "snaive168" => "the same hour last week".to_string(),
            "level" => "the level of the last 3 hours".to_string(),
            "drift" => "the level of the last 3 hours and the trend of the daily mean".to_string(),
            "ridge" => "a regression on the recent hours".to_string(),
            "ridge-log" => "a regression on the recent hours (log scale)".to_string(),
            other => other.to_string(),
        };
        match name.split_once('+') {
            Some((a, b)) => format!("the mean of {} and {}", one(a), one(b)),
            None => one(name),
        }
    }
    // Blocks of hours ahead, each with its method.
    let blocks: Vec<(&str, &str)> = model
        .split_whitespace()
        .map(|b| match b.split_once(':') {
            Some((hours, m)) => (hours, m),
            None => ("", b),
        })
        .collect();
    let how = match blocks.as_slice() {
        [(_, m)] => format!("Made from {}.", method(m)),
        [(_, a), (_, b)] if a == b => format!("Made from {}.", method(a)),
        [("h1-24", a), (_, b)] => format!(
            "The next day from {}; the days after from {}.",
            method(a),
            method(b)
        ),
        _ => format!("Model: {model}."),
    };
    match mase {
        Some(m) if m.is_finite() => {
            let rough = if m < 1.0 { "" } else { " Read it as rough." };
            format!(
                "{how} On its backtest it erred {m:.2}× as much as repeating the day before's hours would have.{rough}"
            )
        }
        _ => how,
    }
}

pub type HostField = fn(&HostPoint) -> Option<f64>;

/// Host charts (CPU, memory, disk, network), one line per host.
pub fn host_charts(points: &[HostPoint], r: &TimeRange, per_host: bool) -> Vec<ChartView> {
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
            Axis::Bytes,
            &ov,
        ),
        chart(
            "Disk throughput",
            lines(&[
                ("read", |p| p.disk_read_bytes_per_s),
                ("write", |p| p.disk_write_bytes_per_s),
            ]),
            r,
            Axis::Rate,
            &ov,
        ),
        chart(
            "Network throughput",
            lines(&[
                ("rx", |p| p.net_rx_bytes_per_s),
                ("tx", |p| p.net_tx_bytes_per_s),
            ]),
            r,
            Axis::Rate,
            &ov,
        ),
    ]
}

pub type GpuField = fn(&GpuPoint) -> Option<f64>;

pub fn gpu_points(points: &[GpuPoint], index: i16, f: GpuField) -> Vec<(DateTime<Utc>, f64)> {
    points
        .iter()
        .filter(|p| p.index == index)
        .filter_map(|p| f(p).map(|v| (p.ts, v)))
        .collect()
}

pub fn watts(w: f64) -> String {
    if w >= 1000.0 {
        format!("{:.1} kW", w / 1000.0)
    } else {
        format!("{w:.0} W")
    }
}

/// Temperature at which a GPU is flagged hot.
pub const HOT_CELSIUS: f32 = 85.0;

/// A sample older than this marks a host stale.
pub const STALE_SECS: i64 = 60;

/// A hardware event with what it means and what to do.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExplainedEvent {
    pub host_name: String,
    /// The GPU; null for host-wide events.
    pub index: Option<i16>,
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub code: i64,
    pub count: i32,
    pub message: String,
    /// A short label: `XID 79`, `ECC double-bit`.
    pub title: String,
    /// What it means, from the XID table in `model::xid`.
    pub meaning: String,
    /// Recommended action for an operator (NVIDIA's, for XIDs).
    pub action: String,
}

pub fn explained(e: EventRow) -> ExplainedEvent {
    let d = crate::model::xid::describe_event(&e.kind, e.code);
    ExplainedEvent {
        title: title(&e.kind, e.code),
        meaning: d.meaning.to_string(),
        action: d.action.to_string(),
        host_name: e.host_name,
        index: e.index,
        ts: e.ts,
        kind: e.kind,
        code: e.code,
        count: e.count,
        message: e.message,
    }
}

/// Alerts resolved this recently still show on host and rack pages.
pub const RESOLVED_RECENT_HOURS: i64 = 24;

#[cfg(test)]
mod tests {
    use super::forecast_note;

    #[test]
    fn forecast_notes_say_the_method_in_words() {
        assert_eq!(
            forecast_note("h1-24:snaive24 h25-168:level", Some(0.07)),
            "The next day from the same hour yesterday; the days after from the level of the \
             last 3 hours. On its backtest it erred 0.07× as much as repeating the day before's \
             hours would have."
        );
        assert_eq!(
            forecast_note("h1-24:snaive24 h25-168:snaive24", Some(1.3)),
            "Made from the same hour yesterday. On its backtest it erred 1.30× as much as \
             repeating the day before's hours would have. Read it as rough."
        );
        assert_eq!(
            forecast_note("h1-24:level+ridge h25-168:level", None),
            "The next day from the mean of the level of the last 3 hours and a regression on \
             the recent hours; the days after from the level of the last 3 hours."
        );
        assert_eq!(
            forecast_note("ridge-log", None),
            "Made from a regression on the recent hours (log scale)."
        );
        assert_eq!(
            forecast_note("drift", None),
            "Made from the level of the last 3 hours and the trend of the daily mean."
        );
        assert_eq!(forecast_note("a b c", Some(f64::NAN)), "Model: a b c.");
    }
}
