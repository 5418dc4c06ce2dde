//! The fleet: every host and GPU at a glance (`/`, `GET /api/v1/fleet`). One data set
//! serves the page and its JSON twin.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{ApiUser, Csrf, PageUser};
use super::error::{ApiError, ErrorBody, PageError};
use super::heatmap::*;
use super::page::*;
use super::params::{ApiQuery, PageQuery};
use super::AppState;
use crate::model::format::num;
use crate::store::queries::{GpuLatest, HostLatest};
use crate::store::series::FaultCount;
use crate::store::Store;
use std::collections::HashMap;

/// `/`.
pub fn page_routes() -> Routes {
    Routes::new().get("/", page)
}

/// `GET /api/v1/fleet`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(json))
}

/// Fleet page data: KPIs and every GPU as a heatmap cell.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetData {
    pub generated_at: DateTime<Utc>,
    pub metric: Metric,
    pub hosts_total: usize,
    pub hosts_up: usize,
    pub gpus_total: usize,
    pub gpus_up: usize,
    pub mean_gpu_util_pct: Option<f64>,
    pub gpu_power_watts: f64,
    /// GPU energy since 00:00 UTC (energy counters, kept by ingest in `gpu_latest`).
    pub gpu_energy_today_kwh: f64,
    pub gpus_faulty: usize,
    /// Alerts firing now that nobody has acknowledged or silenced.
    pub alerts_firing: i64,
    /// Alerts firing now that are acknowledged or silenced (shown apart).
    pub alerts_handled: i64,
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<HeatCell>,
}

/// What the fleet page reads from the database: every query it runs, run concurrently.
pub struct FleetRows {
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub energy_today_j: f64,
    pub faults: Vec<FaultCount>,
    /// (needing someone, acknowledged or silenced)
    pub alerts_firing: (i64, i64),
}

/// The fleet page's queries (the dashboard benchmark times exactly these).
pub async fn rows(store: &Store, now: DateTime<Utc>) -> Result<FleetRows, sqlx::Error> {
    let (hosts, mut gpus, energy_today_j, faults, alerts_firing) = tokio::try_join!(
        store.hosts_latest(),
        store.gpus_latest(None),
        store.energy_today(now),
        store.fault_counts(now - Duration::hours(FAULT_WINDOW_HOURS), None),
        store.alerts_firing(),
    )?;
    // GPUs in the hosts' order (site, rack, name), then by index.
    let pos: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    gpus.sort_by_cached_key(|g| (pos.get(g.host_name.as_str()).copied(), g.index));
    Ok(FleetRows {
        hosts,
        gpus,
        energy_today_j,
        faults,
        alerts_firing,
    })
}

/// Everything the fleet page shows.
pub async fn load(st: &AppState, metric: Metric) -> Result<FleetData, ApiError> {
    let now = Utc::now();
    let FleetRows {
        hosts,
        gpus,
        energy_today_j,
        faults,
        alerts_firing,
    } = rows(&st.store, now).await?;
    let cells = heat_cells(&hosts, &gpus, &faults, metric, now);
    // Reporting: heard from within a minute (a GPU that fell off the bus drops out within
    // a minute), as each cell says.
    let reporting: Vec<&HeatCell> = cells.iter().filter(|c| c.reporting).collect();
    let utils: Vec<f64> = reporting
        .iter()
        .filter_map(|c| c.util_pct.map(f64::from))
        .collect();
    Ok(FleetData {
        generated_at: now,
        metric,
        hosts_total: hosts.len(),
        hosts_up: hosts.iter().filter(|h| host_reports(h, now)).count(),
        gpus_total: gpus.len(),
        gpus_up: reporting.len(),
        mean_gpu_util_pct: (!utils.is_empty())
            .then(|| utils.iter().sum::<f64>() / utils.len() as f64),
        gpu_power_watts: reporting
            .iter()
            .filter_map(|c| c.power_watts.map(f64::from))
            .fold(0.0, |a, b| a + b),
        gpu_energy_today_kwh: energy_today_j / 3.6e6,
        gpus_faulty: cells.iter().filter(|c| c.faults_24h > 0).count(),
        alerts_firing: alerts_firing.0,
        alerts_handled: alerts_firing.1,
        hosts,
        gpus: cells,
    })
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
    pub alerts_handled: i64,
    pub mean_gpu_util: String,
    pub gpu_power: String,
    pub energy_today: String,
    pub metrics: Vec<MetricLink>,
    pub metric_label: &'static str,
    pub legend: HeatLegend,
    pub sites: Vec<SiteGroup>,
    /// Pools whose demand outgrows their GPUs within the capacity lead time, and pools
    /// that could release hosts (links to /capacity).
    pub pools_short: usize,
    pub pools_spare: usize,
    pub pools_total: usize,
}

/// The fleet page's query: what the heatmap cells are coloured by.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetParams {
    metric: Option<String>,
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    PageQuery(q): PageQuery<FleetParams>,
) -> Result<Response, PageError> {
    let metric = Metric::parse(q.metric.as_deref())?;
    let (d, recs) = tokio::try_join!(load(&st, metric), async {
        Ok(st.store.recommendations(None).await?)
    })?;
    let lead = chrono::Duration::days(i64::from(st.cfg.capacity.lead_days));
    render_off(move || {
        let now = d.generated_at;
        let pools_short = recs
            .iter()
            .filter(|r| crate::analytics::capacity::short_within(r, lead, now))
            .count();
        // As the capacity page sorts them: pools whose first action releases GPUs (at
        // night, or hosts to drain for good).
        let pools_spare = recs.iter().filter(|r| r.urgency == 1).count();
        let rows = host_table_rows(&d.hosts, &d.gpus, now);
        let page = FleetPage {
            nav: Nav::new(&user, csrf, "fleet"),
            hosts_up: d.hosts_up,
            hosts: rows,
            gpus_up: d.gpus_up,
            gpus_total: d.gpus_total,
            gpus_faulty: d.gpus_faulty,
            alerts_firing: d.alerts_firing,
            alerts_handled: d.alerts_handled,
            mean_gpu_util: num(d.mean_gpu_util_pct, 1, "%"),
            gpu_power: watts(d.gpu_power_watts),
            energy_today: format!("{:.1} kWh", d.gpu_energy_today_kwh),
            metrics: metric_links(metric, None),
            metric_label: metric.label(),
            legend: legend(metric),
            sites: heatmap(&d.gpus, metric, "range=1h"),
            pools_short,
            pools_spare,
            pools_total: recs.len(),
        };
        render_sized(&page, heatmap_page_size(d.gpus.len()))
    })
    .await
}

/// Fleet page: KPIs and every GPU as a heatmap cell.
#[utoipa::path(
    get,
    path = "/api/v1/fleet",
    operation_id = "fleet",
    tag = "fleet",
    params(("metric" = Option<Metric>, Query, description = "What the heatmap cells are colored by (default util).")),
    responses(
        (status = 200, description = "The fleet's KPIs and one heatmap cell per GPU.", body = FleetData),
        (status = 400, description = "Unknown metric.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<FleetParams>,
) -> Result<Json<FleetData>, ApiError> {
    let metric = Metric::parse(q.metric.as_deref())?;
    Ok(Json(load(&st, metric).await?))
}
