//! One rack: its hosts, their GPUs as a heatmap, host charts, events and alerts
//! (`/racks/{site}/{rack}`, `GET /api/v1/racks/{site}/{rack}`).

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{ApiUser, Csrf, PageUser};
use super::charts::{strip_chart, Axis, Overlay, Series, StripRow};
use super::error::{ApiError, ErrorBody, PageError};
use super::heatmap::*;
use super::page::*;
use super::params::{ApiQuery, PageQuery};
use super::range::{RangeDoc, RangeParams, TimeRange};
use super::AppState;
use crate::store::queries::{AlertTouching, EventRow, GpuLatest, HostLatest};
use crate::store::series::{FaultCount, GpuPoint, HostPoint};
use crate::store::Store;

/// `/racks/{site}/{rack}`.
pub fn page_routes() -> Routes {
    Routes::new().get("/racks/{site}/{rack}", page)
}

/// `GET /api/v1/racks/{site}/{rack}`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(json))
}

/// Rack page data: hosts, heatmap cells, host series, events and alerts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RackData {
    pub site: String,
    pub rack: String,
    pub range: TimeRange,
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<HeatCell>,
    pub host_series: Vec<HostPoint>,
    pub events: Vec<ExplainedEvent>,
    /// More hardware events than listed are in the range: the newest 200 are listed, and
    /// `GET /api/v1/events` has them all.
    pub events_truncated: bool,
    /// Firing, pending and recently resolved alerts of the rack's hosts and their GPUs.
    pub alerts: Vec<AlertTouching>,
    /// Power the rack's GPUs draw now (latest sample of each).
    pub gpu_power_watts: f64,
    /// The rack's power budget as the capacity job last dated it: budget (`capacity`, W),
    /// the trend's power now and when it reaches the budget. Null without a budget
    /// (`[capacity.racks]` or the host label `rack_power_kw`) or before the job ran.
    pub power_budget: Option<crate::analytics::capacity::ExhaustionRow>,
    /// The rack's power (GPUs and hosts, mean of each hour, W) over the capacity job's
    /// history, from the energy accounting: what its budget is dated from. Empty without
    /// a budget.
    pub power_hourly: Vec<RackPowerPoint>,
    /// Each host's GPU series, for the page's power and temperature charts.
    #[serde(skip)]
    pub gpu_series: Vec<(String, Vec<GpuPoint>)>,
}

/// A rack's mean power in one hour.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RackPowerPoint {
    pub hour: DateTime<Utc>,
    pub watts: f64,
}

/// What the rack page reads from the database: its hosts, then the rest concurrently.
pub struct RackRows {
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub faults: Vec<FaultCount>,
    pub host_series: Vec<HostPoint>,
    pub events: Vec<EventRow>,
    pub alerts: Vec<AlertTouching>,
    pub gpu_series: Vec<(String, Vec<GpuPoint>)>,
}

/// The rack page's queries.
pub async fn rows(
    store: &Store,
    site: &str,
    rack: &str,
    range: &TimeRange,
    now: DateTime<Utc>,
) -> Result<RackRows, sqlx::Error> {
    let hosts = store.hosts_in_rack(site, rack).await?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    if names.is_empty() {
        return Ok(RackRows {
            hosts,
            gpus: Vec::new(),
            faults: Vec::new(),
            host_series: Vec::new(),
            events: Vec::new(),
            alerts: Vec::new(),
            gpu_series: Vec::new(),
        });
    }
    let (gpus, faults, host_series, events, alerts) = tokio::try_join!(
        store.gpus_latest_of(&names),
        store.fault_counts(now - Duration::hours(FAULT_WINDOW_HOURS), Some(&names)),
        store.host_series(
            &names,
            range.from,
            range.to,
            range.bucket_secs,
            range.source
        ),
        store.events_between(&names, None, range.from, range.to, EVENTS_SHOWN as i64 + 1),
        store.alerts_touching(&names, now - Duration::hours(RESOLVED_RECENT_HOURS)),
    )?;
    // Each host's GPUs, four hosts' queries at a time (a rack holds a handful of hosts;
    // "hosts without a rack" may hold many, and the pool serves other pages too).
    let mut gpu_series = Vec::with_capacity(names.len());
    for chunk in names.chunks(4) {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in chunk.iter().enumerate() {
            let (store, n, r) = (store.clone(), n.clone(), range.clone());
            set.spawn(async move {
                let s = store
                    .gpu_series(&n, None, r.from, r.to, r.bucket_secs, r.source)
                    .await;
                (i, n, s)
            });
        }
        let mut done = Vec::with_capacity(chunk.len());
        while let Some(r) = set.join_next().await {
            let (i, n, s) =
                r.map_err(|e| sqlx::Error::Protocol(format!("GPU series of a rack: {e}")))?;
            done.push((i, n, s?));
        }
        done.sort_by_key(|d| d.0);
        gpu_series.extend(done.into_iter().map(|(_, n, s)| (n, s)));
    }
    Ok(RackRows {
        hosts,
        gpus,
        faults,
        host_series,
        events,
        alerts,
        gpu_series,
    })
}

/// Everything the rack page shows.
pub async fn load(
    st: &AppState,
    site: &str,
    rack: &str,
    range: TimeRange,
    metric: Metric,
) -> Result<RackData, ApiError> {
    let budget_key = crate::analytics::capacity::rack_key(site, rack);
    let now = Utc::now();
    let (r, power_budget) = tokio::try_join!(
        rows(&st.store, site, rack, &range, now),
        st.store.exhaustion("rack", &budget_key),
    )?;
    let power_hourly = match &power_budget {
        Some(_) => {
            // The complete hours the capacity job dates the budget from.
            let end = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
            let from = end - Duration::days(i64::from(st.cfg.capacity.history_days));
            st.store
                .rack_power_series(site, rack, from, end)
                .await?
                .into_iter()
                .map(|(hour, watts)| RackPowerPoint { hour, watts })
                .collect()
        }
        None => Vec::new(),
    };
    if r.hosts.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no host in rack {rack:?} of site {site:?}"
        )));
    }
    let cells = heat_cells(&r.hosts, &r.gpus, &r.faults, metric, now);
    let gpu_power_watts = cells
        .iter()
        .filter(|c| c.reporting)
        .filter_map(|c| c.power_watts.map(f64::from))
        .fold(0.0, |a, b| a + b);
    let (events, events_truncated) = newest_events(r.events);
    Ok(RackData {
        gpu_power_watts,
        power_budget,
        power_hourly,
        gpu_series: r.gpu_series,
        site: site.to_string(),
        rack: rack.to_string(),
        range,
        hosts: r.hosts,
        gpus: cells,
        host_series: r.host_series,
        events: events.into_iter().map(explained).collect(),
        events_truncated,
        alerts: r.alerts,
    })
}

#[derive(Template)]
#[template(path = "rack.html")]
pub struct RackPage {
    pub nav: Nav,
    /// "Rack r01", or "Hosts without a rack" for the hosts whose agent sets none.
    pub heading: String,
    pub site: String,
    pub rack: String,
    pub picker: Picker,
    pub hosts: Vec<HostRow>,
    pub metrics: Vec<MetricLink>,
    pub metric_label: &'static str,
    pub legend: HeatLegend,
    pub sites: Vec<SiteGroup>,
    pub charts: Vec<ChartView>,
    /// Rack GPU power over time, and per host GPU power and temperature.
    pub gpu_charts: Vec<ChartView>,
    pub gpu_power: String,
    /// "12.3 kW" and "rack trend 10.6 kW now; the budget runs out on 2027-01-10".
    pub power_budget: Option<(String, String)>,
    /// The rack's hourly power over the weeks its budget is dated from, the budget and
    /// the trend ahead.
    pub budget_chart: Option<ChartView>,
    /// GPUs of the rack's hosts, and those reporting now (as the fleet page counts).
    pub gpus_total: usize,
    pub gpus_reporting: usize,
    pub events: Vec<EventView>,
    /// The events API's link to all of them, when the list is cut (a host's or GPU's).
    pub events_all: String,
    pub events_truncated: bool,
    pub alerts: Vec<AlertTouchView>,
    /// Resolved alerts left out of `alerts` (the Alerts page has them).
    pub alerts_hidden: usize,
}

/// The rack page's query: a range and the heatmap's metric.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackParams {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
    tzo: Option<i32>,
    metric: Option<String>,
}

impl RackParams {
    fn range(&self) -> RangeParams {
        RangeParams {
            range: self.range.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            tzo: self.tzo,
        }
    }
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path((site, rack)): Path<(String, String)>,
    PageQuery(q): PageQuery<RackParams>,
) -> Result<Response, PageError> {
    let (site, rack) = (place_from_seg(site), place_from_seg(rack));
    let now = Utc::now();
    let (r, problem) = q.range().resolve_page(now, "1h", true)?;
    let metric = Metric::parse(q.metric.as_deref())?;
    let d = load(&st, &site, &rack, r.clone(), metric).await?;
    render_off(move || {
        let query = r.query();
        let path = rack_path(&site, &rack);
        let (alerts, alerts_hidden) = alert_views(&d.alerts, true, &query);
        let page = RackPage {
            alerts,
            alerts_hidden,
            nav: Nav::new(&user, csrf, ""),
            picker: picker(path, &r, vec![("metric", metric.key().to_string())])
                .with_problem(problem),
            hosts: host_table_rows(&d.hosts, &d.gpus, now),
            metrics: metric_links(metric, Some(&query)),
            metric_label: metric.label(),
            legend: legend(metric),
            sites: heatmap(&d.gpus, metric, &query),
            charts: host_charts(&d.host_series, &r, true),
            gpu_charts: rack_gpu_charts(&d.gpu_series, &r, &query),
            gpu_power: watts(d.gpu_power_watts),
            power_budget: d.power_budget.as_ref().map(|b| {
                (
                    watts(b.capacity),
                    format!(
                        "rack trend {} now; the budget {}",
                        watts(b.level_now),
                        crate::analytics::capacity::budget_outlook(
                            b.exhausted_at,
                            now,
                            st.cfg.capacity.horizon_days
                        )
                    ),
                )
            }),
            budget_chart: d
                .power_budget
                .as_ref()
                .map(|b| budget_chart(b, &d.power_hourly, now)),
            gpus_total: d.gpus.len(),
            gpus_reporting: d.gpus.iter().filter(|c| c.reporting).count(),
            events: event_views(&d.events, &query, true),
            events_all: String::new(),
            events_truncated: d.events_truncated,

            heading: if rack.is_empty() {
                "Hosts without a rack".into()
            } else {
                format!("Rack {rack}")
            },
            site: place_label(&site, "no site"),
            rack: place_label(&rack, "no rack"),
        };
        render_sized(&page, heatmap_page_size(d.gpus.len()) + 64 * 1024)
    })
    .await
}

/// The rack's power and its budget: the hourly mean power (GPUs and hosts) since the data
/// starts (at most the capacity job's history), the budget as a line, and the trend of the
/// daily peak from now until a few days past the date it reaches the budget (at least a
/// week, at most four weeks ahead), with that date marked.
fn budget_chart(
    b: &crate::analytics::capacity::ExhaustionRow,
    hourly: &[RackPowerPoint],
    now: DateTime<Utc>,
) -> ChartView {
    let from = hourly
        .first()
        .map_or(now - Duration::days(1), |p| p.hour)
        .min(now - Duration::days(1));
    let ahead = b
        .exhausted_at
        .filter(|d| *d > now)
        .map_or(Duration::days(7), |d| d - now + Duration::days(3))
        .clamp(Duration::days(7), Duration::days(28));
    let to = now + ahead;
    let trend: Vec<(DateTime<Utc>, f64)> = (0..=ahead.num_hours())
        .map(|h| {
            let at = now + Duration::hours(h);
            (at, b.level_at(at) / 1000.0)
        })
        .collect();
    let series = vec![
        Series {
            label: "rack power (GPUs and hosts, hourly mean)".into(),
            points: hourly.iter().map(|p| (p.hour, p.watts / 1000.0)).collect(),
        },
        Series {
            label: "trend of the daily peak".into(),
            points: trend,
        },
    ];
    let mut marks = vec![(now, "now".to_string())];
    if let Some(d) = b.exhausted_at.filter(|d| *d > now && *d <= to) {
        marks.push((d, format!("budget runs out {}", d.format("%Y-%m-%d"))));
    }
    let ov = Overlay {
        refs: vec![(b.capacity / 1000.0, format!("budget {}", watts(b.capacity)))],
        marks,
        ..Overlay::default()
    };
    chart_between(
        "Rack power and its budget",
        series,
        from,
        to,
        Axis::Unit("kW"),
        3 * 3600,
        &ov,
    )
}

/// The rack's GPU power summed over time (kW), and each host's GPU power (sum) and
/// hottest GPU as small multiples, one row per host.
fn rack_gpu_charts(
    series: &[(String, Vec<GpuPoint>)],
    r: &TimeRange,
    query: &str,
) -> Vec<ChartView> {
    use std::collections::BTreeMap;
    if series.iter().all(|(_, s)| s.is_empty()) {
        return Vec::new();
    }
    let per_host = |f: fn(&GpuPoint) -> Option<f64>, sum: bool| -> Vec<StripRow> {
        series
            .iter()
            .map(|(host, pts)| {
                let mut by: BTreeMap<DateTime<Utc>, f64> = BTreeMap::new();
                for p in pts {
                    if let Some(v) = f(p) {
                        let e = by.entry(p.ts).or_insert(if sum { 0.0 } else { f64::MIN });
                        *e = if sum { *e + v } else { e.max(v) };
                    }
                }
                StripRow {
                    label: host.clone(),
                    href: format!("/hosts/{}?{query}", seg(host)),
                    points: by.into_iter().collect(),
                }
            })
            .collect()
    };
    // Hosts draw kilowatts: per-host power in kW, as the rack's total and its KPI.
    let power = per_host(|p| p.power_watts.map(|w| w / 1000.0), true);
    let temp = per_host(|p| p.temp_celsius, false);
    // The rack's total at each time any host has a point: a host without one in that
    // bucket (agents sample every few seconds, not in step) counts with its last value
    // of the two buckets before, so the total does not dip by a host's share.
    let carry = Duration::seconds(r.bucket_secs.max(30) * 2);
    let times: std::collections::BTreeSet<DateTime<Utc>> = power
        .iter()
        .flat_map(|row| row.points.iter().map(|p| p.0))
        .collect();
    let mut total: BTreeMap<DateTime<Utc>, f64> = BTreeMap::new();
    for row in &power {
        let mut pts = row.points.iter().peekable();
        let mut last: Option<(DateTime<Utc>, f64)> = None;
        for t in &times {
            while let Some(p) = pts.next_if(|p| p.0 <= *t) {
                last = Some(*p);
            }
            if let Some((_, v)) = last.filter(|(at, _)| *t - *at <= carry) {
                *total.entry(*t).or_insert(0.0) += v;
            }
        }
    }
    let peak = |rows: &[StripRow]| {
        rows.iter()
            .flat_map(|r| r.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
    };
    // Color scales end on round numbers (the power one at the next 1-2-5 step).
    let round_up = |v: f64| {
        crate::model::format::axis_ticks(v)
            .0
            .last()
            .copied()
            .unwrap_or(v)
    };
    let (ptop, ttop) = (
        round_up(peak(&power).max(0.1)),
        peak(&temp).max(90.0).ceil(),
    );
    vec![
        chart(
            "Rack GPU power (all GPUs)",
            vec![Series {
                label: "GPU power".into(),
                points: total.into_iter().collect(),
            }],
            r,
            Axis::Unit("kW"),
            &Overlay::default(),
        ),
        ChartView {
            title: format!("GPU power per host (0–{} kW)", trim_float(ptop)),
            svg: strip_chart(
                "GPU power per host",
                &power,
                r.from,
                r.to,
                (0.0, ptop),
                "kW",
            ),
            legend: Vec::new(),
            note: String::new(),
        },
        ChartView {
            title: format!("Hottest GPU per host (20–{ttop:.0} °C)"),
            svg: strip_chart(
                "Hottest GPU per host",
                &temp,
                r.from,
                r.to,
                (20.0, ttop),
                "°C",
            ),
            legend: Vec::new(),
            note: String::new(),
        },
    ]
}

/// Rack page: hosts, heatmap cells, host series, events and alerts.
#[utoipa::path(
    get,
    path = "/api/v1/racks/{site}/{rack}",
    operation_id = "rack",
    tag = "racks",
    params(
        ("site" = String, Path, description = "Site name; `-` for hosts whose agent sets no site."),
        ("rack" = String, Path, description = "Rack name; `-` for hosts whose agent sets no rack."),
        RangeDoc,
        ("metric" = Option<Metric>, Query, description = "What the heatmap cells are colored by (default util)."),
    ),
    responses(
        (status = 200, description = "The rack page's data.", body = RackData),
        (status = 400, description = "A bad range or metric.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such rack.", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path((site, rack)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RackParams>,
) -> Result<Json<RackData>, ApiError> {
    let (site, rack) = (place_from_seg(site), place_from_seg(rack));
    let r = q.range().resolve_overview(Utc::now(), "1h")?;
    let metric = Metric::parse(q.metric.as_deref())?;
    Ok(Json(load(&st, &site, &rack, r, metric).await?))
}

/// A round number as written: `6`, `0.5`, `2.5`.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
