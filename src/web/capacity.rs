//! Capacity: what each pool should hold and when things run out.
//!
//! * `/capacity` and `GET /api/v1/capacity`: every pool's recommendation in words, with
//!   its backtest evidence; when pools, racks' power budgets and hosts' disks run out;
//!   hosts that could be drained.
//! * `/capacity/pools/{pool}` and `GET /api/v1/capacity/pools/{pool}`: one pool's demand
//!   over 4 weeks and the recommended capacity over them and the next week, with the
//!   forecast's 80 / 95 % bands.
//! * `GET /api/v1/capacity/recommendations`: what an autoscaler reads.
//! * `POST /api/v1/pools/{pool}/demand`: a scheduler reports its queue.
//!
//! Everything comes from the rows the capacity job stored, so the page, the API, the
//! Prometheus gauges and the capacity alert agree.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{require, ApiUser, Csrf, MaybeUser, PageUser};
use super::charts::{Axis, Band, Overlay, Series};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::{chart, rack_path, render, render_off, seg, ChartView, Nav};
use super::params::{ApiQuery, NoParams, PageQuery};
use super::AppState;
use crate::analytics::capacity::{
    actions, DemandPoint, DrainCandidate, EvidenceView, ExhaustionRow, PoolDrains,
    PoolRecommendation, SitePools,
};
use crate::model::format::{bytes, num};
use crate::store::auth::Role;

/// `/capacity` and one pool's page.
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/capacity", page)
        .get("/capacity/pools/{pool}", pool_page)
}

/// The capacity data as JSON, the autoscalers' view, and queue reports in.
pub fn api_routes() -> Routes {
    Routes::new()
        .routes(routes!(json))
        .routes(routes!(pool_json))
        .routes(routes!(recommendations))
        .routes(routes!(demand))
}

/// One pool on the capacity page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolSummary {
    pub pool: String,
    pub installed_gpus: i32,
    /// GPUs per host: recommendations are whole hosts.
    pub host_size: i32,
    /// Demand (work + queue) over the 5 minutes before `decided_at`, GPUs.
    pub demand_now: Option<f64>,
    /// GPUs to hold for the next hour (the autoscaling advice, revised every hour; null
    /// until the pool has an hour of demand, `note` says why).
    pub next_hour: Option<i32>,
    /// The highest hour of the week's plan, GPUs (null: no plan yet).
    pub week_peak: Option<i32>,
    /// The lowest hour of the week's plan, GPUs (null: no plan yet).
    pub week_low: Option<i32>,
    /// Start of the week planned ahead (now + `capacity.lead_days`).
    pub lead_start: DateTime<Utc>,
    /// The highest hour of that week, GPUs (null: no plan ahead yet, `note` says why).
    pub lead_peak: Option<i32>,
    /// The lowest hour of that week, GPUs (null: no plan ahead yet).
    pub lead_low: Option<i32>,
    /// When the demand trend reaches the installed GPUs (null: not within the horizon).
    pub exhausted_at: Option<DateTime<Utc>>,
    /// The demand trend's growth per day, as a fraction of its level (0.02: 2 %/day).
    pub growth_per_day: Option<f64>,
    /// What to do, in words, most urgent first.
    pub actions: Vec<String>,
    /// The methods the backtests chose for the next hour, the week and the week ahead.
    pub methods: crate::analytics::capacity::Methods,
    pub evidence: EvidenceView,
    /// Hosts that could be drained.
    pub consolidation: Vec<DrainCandidate>,
    /// The decision time (end of the last 5-minute slot of demand).
    pub decided_at: DateTime<Utc>,
    /// Why a part is missing (short history), for people.
    pub note: String,
    /// Sites of the pool's hosts, the one with most GPUs first.
    pub sites: Vec<String>,
}

/// Demand in GPUs as every answer gives it: to 3 decimals (a sum of utilizations, whose
/// float noise means nothing).
fn demand3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn summary(r: &PoolRecommendation, lead_days: u32, now: DateTime<Utc>) -> PoolSummary {
    let has_plan = !r.week_schedule.is_empty();
    PoolSummary {
        pool: r.pool.clone(),
        installed_gpus: r.installed_gpus,
        host_size: r.host_size,
        demand_now: r.demand_now.map(demand3),
        next_hour: r.next_hour,
        week_peak: r.week_schedule.iter().copied().max(),
        week_low: r.week_schedule.iter().copied().min(),
        lead_start: r.lead_start,
        lead_peak: r.lead_plan.iter().copied().max(),
        lead_low: r.lead_plan.iter().copied().min(),
        exhausted_at: r.exhausted_at,
        growth_per_day: r.growth_per_day,
        // Stored by the job; rows from before it stored them are worded here.
        actions: if !r.actions.is_empty() {
            r.actions.clone()
        } else if has_plan {
            actions(r, lead_days, now)
        } else {
            vec![r.note.clone()]
        },
        methods: r.methods.0.clone(),
        evidence: r.evidence.0.clone(),
        consolidation: r.consolidation.0.clone(),
        decided_at: r.decided_at,
        note: r.note.clone(),
        sites: r.sites.clone(),
    }
}

/// Which part of the capacity overview: a site, and a page of its pools.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// Only pools with hosts at this site, and its racks and disks (default: all sites).
    pub site: Option<String>,
    /// Page of pools, from 1 (24 a page, most urgent first).
    #[param(minimum = 1)]
    pub page: Option<u32>,
}

/// Everything the capacity page shows: one page of pools, most urgent first (orders,
/// then releases, then no change), with the site's racks, disks and hosts to drain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CapacityData {
    pub generated_at: DateTime<Utc>,
    /// `capacity.lead_days`: how far ahead the lead plan starts.
    pub lead_days: u32,
    /// `capacity.price`: the cost of an unserved GPU-hour in idle GPU-hours.
    pub price: f64,
    /// The site shown (null: all).
    pub site: Option<String>,
    /// Pools in all (site null), then per site, with how many need GPUs or can release some.
    pub sites: Vec<SitePools>,
    /// This page, from 1, of `pages`.
    pub page: u32,
    pub pages: u32,
    /// Pools at the site, on all pages.
    pub total_pools: i64,
    pub pools: Vec<PoolSummary>,
    /// Racks with a power budget, soonest to run out first (at most 50 of `racks_total`).
    pub racks: Vec<ExhaustionRow>,
    pub racks_total: i64,
    /// Hosts whose disks fill within the horizon, soonest first (at most 50 of `disks_total`).
    pub disks: Vec<ExhaustionRow>,
    pub disks_total: i64,
    /// Hosts that could be drained, per pool (of every page).
    pub consolidation: Vec<PoolDrains>,
}

/// Pools on a page: 2, 3 or 4 columns of cards.
pub const POOLS_PER_PAGE: u32 = 24;
/// Most racks and disks listed.
const MAX_DATED: i64 = 50;

/// The capacity page's data: a handful of small reads of what the job stored.
pub async fn load(st: &AppState, q: &OverviewQuery) -> Result<CapacityData, ApiError> {
    let now = Utc::now();
    let site = q.site.as_deref().filter(|s| !s.is_empty());
    if q.page == Some(0) {
        return Err(ApiError::BadRequest("page counts from 1".into()));
    }
    let page = q.page.unwrap_or(1);
    let offset = i64::from(page - 1) * i64::from(POOLS_PER_PAGE);
    let (sites, recs, (racks, racks_total), (disks, disks_total), consolidation) = tokio::try_join!(
        st.store.capacity_sites(),
        st.store
            .recommendations_page(site, i64::from(POOLS_PER_PAGE), offset),
        st.store.exhaustions_at("rack", site, false, MAX_DATED),
        st.store.exhaustions_at("disk", site, true, MAX_DATED),
        st.store.drains(site),
    )?;
    let total_pools = sites
        .iter()
        .find(|c| c.site.as_deref() == site)
        .map(|c| c.pools);
    let Some(total_pools) = total_pools.or(site.is_none().then_some(0)) else {
        return Err(ApiError::NotFound(format!(
            "no pool has hosts at site {}",
            crate::model::validate::quoted(site.unwrap_or_default())
        )));
    };
    let pages = (total_pools.max(1) as u32).div_ceil(POOLS_PER_PAGE);
    if page > pages {
        return Err(ApiError::NotFound(format!(
            "no page {page}: {total_pools} pools make {pages} page{} of {POOLS_PER_PAGE}",
            if pages == 1 { "" } else { "s" }
        )));
    }
    let lead = st.cfg.capacity.lead_days;
    Ok(CapacityData {
        generated_at: now,
        lead_days: lead,
        price: st.cfg.capacity.price,
        site: site.map(str::to_string),
        sites,
        page,
        pages,
        total_pools,
        pools: recs.iter().map(|r| summary(r, lead, now)).collect(),
        racks,
        racks_total,
        disks,
        disks_total,
        consolidation,
    })
}

/// A pool row of the page.
pub struct PoolView {
    pub pool: String,
    pub link: String,
    pub installed: String,
    pub demand_now: String,
    pub next_hour: String,
    pub week: String,
    pub lead: String,
    pub exhausted: String,
    pub actions: Vec<String>,
    pub evidence: String,
    pub note: String,
    /// On a site's tab, for a pool with hosts at other sites too: that its figures are
    /// the whole pool's.
    pub spans: String,
}

/// A dated resource row (rack power, disk).
pub struct DateView {
    pub what: String,
    pub link: String,
    pub now: String,
    pub capacity: String,
    pub growth: String,
    pub date: String,
}

/// A host to drain.
pub struct DrainView {
    pub pool: String,
    pub host: String,
    pub link: String,
    pub gpus: i64,
    pub util: String,
    pub idle: String,
}

#[derive(Template)]
#[template(path = "capacity.html")]
pub struct CapacityPage {
    pub nav: Nav,
    /// All sites, then each site: (label, link, current).
    pub tabs: Vec<(String, String, bool)>,
    /// "Pools 1–24 of 200 at dc0, most urgent first", with the other pages' links.
    pub shown: String,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub pools: Vec<PoolView>,
    pub racks: Vec<DateView>,
    /// "50 of 100 racks, soonest first" when not all are listed.
    pub racks_more: String,
    pub disks: Vec<DateView>,
    pub disks_more: String,
    pub drains: Vec<DrainView>,
    pub lead_days: u32,
    /// How far ahead exhaustion is dated (`capacity.horizon_days`).
    pub horizon_days: u32,
    pub price: String,
    /// "at dc0" or "".
    pub at: String,
    /// " with hosts at SITE" on a site's tab.
    pub pools_at: String,
    /// The newest decision time of the pools listed (RFC 3339), empty without pools.
    pub decided: String,
    /// Said when that is over two hours old: the figures are not of now.
    pub stale: String,
    /// This page's JSON twin.
    pub json: String,
}

/// The newest decision time of `pools` and, when it is more than two hours before `now`,
/// what that means: the job is hourly, so demand older than that says the rollups or the
/// job are behind.
fn freshness(pools: &[PoolSummary], now: DateTime<Utc>) -> (String, String) {
    let Some(t) = pools.iter().map(|p| p.decided_at).max() else {
        return (String::new(), String::new());
    };
    let hours = (now - t).num_minutes() as f64 / 60.0;
    let stale = if hours > 2.0 {
        format!(
            " — {hours:.0} h ago: the demand rollups or the capacity job are behind (Admin, Periodic jobs), so these figures are not of now"
        )
    } else {
        String::new()
    };
    (super::page::time_attr(t), stale)
}

/// When a capacity runs out: a date, "already" once it has passed (the trend is above the
/// capacity now), or "not within N days" (`capacity.horizon_days`).
fn date(t: Option<DateTime<Utc>>, horizon_days: u32) -> String {
    match t {
        Some(t) if t <= Utc::now() => "already".into(),
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => format!("not within {horizon_days} days"),
    }
}

/// A week's range of capacities: "24–64 GPUs", or "32 GPUs" when it is flat.
fn gpu_range(low: i32, peak: i32) -> String {
    if low == peak {
        format!("{peak} GPUs")
    } else {
        format!("{low}–{peak} GPUs")
    }
}

/// What the power table of a pool page says about room for more of its hosts.
fn power_note(p: &crate::analytics::capacity::HostPower, sites: &[String]) -> String {
    let at = if sites.is_empty() {
        "its sites".to_string()
    } else {
        sites.join(", ")
    };
    match (p.host_peak_kw, p.racks.is_empty()) {
        (_, true) => format!(
            "No rack at {at} has a power budget: set [capacity.racks] (\"site/rack\" = kW) or the host label rack_power_kw to see where more hosts fit."
        ),
        (None, false) => "This pool's hosts have no power accounted yet: the racks' headroom is below, the hosts each takes once a host's draw is known.".into(),
        (Some(kw), false) => {
            let total: i64 = p.racks.iter().filter_map(|r| r.hosts).sum();
            format!(
                "A host of this pool draws up to {kw:.1} kW (its busiest hour over 7 days). The racks with a power budget at {at} take {total} more in all, at their daily peak now."
            )
        }
    }
}

/// "N GPUs", or a dash where there is no recommendation yet.
fn gpus_or_dash(g: Option<i32>) -> String {
    g.map_or_else(|| "–".into(), |g| format!("{g} GPUs"))
}

/// The week's plan as "low–peak GPUs", or a dash without a plan.
fn week_range(p: &PoolSummary) -> String {
    match (p.week_low, p.week_peak) {
        (Some(low), Some(peak)) => gpu_range(low, peak),
        _ => "–".into(),
    }
}

/// The plan ahead as "N GPUs from date", or a dash without one.
fn lead_text(p: &PoolSummary) -> String {
    p.lead_peak.map_or_else(
        || "–".into(),
        |peak| {
            let range = gpu_range(p.lead_low.unwrap_or(peak), peak);
            format!("{range}, week from {}", p.lead_start.format("%Y-%m-%d"))
        },
    )
}

/// GPU-hours for people: two decimals below 1, so a shortage of 0.2 % is not "0.0 GPU-h".
fn gpu_hours(h: f64) -> String {
    if h > 0.0 && h < 1.0 {
        format!("{h:.2}")
    } else {
        format!("{h:.1}")
    }
}

/// Said after a baseline's cost that beat the recommender's on this pool's past: the
/// evidence does not back the method there, and the reader should know.
fn baseline_won(cost: f64, baseline_cost: f64) -> &'static str {
    if baseline_cost < cost {
        ", which did better here"
    } else {
        ""
    }
}

fn evidence_text(e: &EvidenceView) -> String {
    let mut parts = Vec::new();
    if e.next_hour.hours > 0.0 {
        parts.push(format!(
            "next-hour advice {:.3} over {:.0} days (slack {:.0} %, short {:.1} %, {} GPU-h unserved) against {:.3} for the {}{}",
            e.next_hour.cost,
            e.next_hour.hours / 24.0,
            e.next_hour.slack_pct,
            e.next_hour.shortage_pct,
            gpu_hours(e.next_hour.unserved_gpu_hours),
            e.next_hour.baseline_cost,
            e.next_hour.baseline,
            baseline_won(e.next_hour.cost, e.next_hour.baseline_cost)
        ));
    }
    if e.week.hours > 0.0 {
        parts.push(format!(
            "week plan {:.3} against {:.3} for {}{}",
            e.week.cost,
            e.week.baseline_cost,
            e.week.baseline,
            baseline_won(e.week.cost, e.week.baseline_cost)
        ));
    }
    if e.lead.hours > 0.0 {
        parts.push(format!(
            "plan ahead {:.3} against {:.3} for {}{}",
            e.lead.cost,
            e.lead.baseline_cost,
            e.lead.baseline,
            baseline_won(e.lead.cost, e.lead.baseline_cost)
        ));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "Replayed on this pool's past (cost per GPU of typical demand, lower is better): {}.",
        parts.join("; ")
    )
}

fn date_view(e: &ExhaustionRow, link: String, horizon_days: u32) -> DateView {
    let fmt = |v: f64| match e.unit.as_str() {
        "W" => format!("{:.1} kW", v / 1000.0),
        "B" => bytes(Some(v)),
        u => format!("{v:.1} {u}"),
    };
    DateView {
        what: e.key.clone(),
        link,
        now: fmt(e.level_now),
        capacity: fmt(e.capacity),
        // "-0.00 %/day" reads as a sign that means nothing: flat is flat.
        growth: match e.growth_per_day * 100.0 {
            g if g.abs() < 0.005 => "flat".to_string(),
            g => format!("{g:+.2} %/day"),
        },
        date: date(e.exhausted_at, horizon_days),
    }
}

fn overview_link(site: Option<&str>, page: u32) -> String {
    let mut q = Vec::new();
    if let Some(site) = site {
        q.push(format!("site={}", super::auth::urlencode(site)));
    }
    if page > 1 {
        q.push(format!("page={page}"));
    }
    if q.is_empty() {
        "/capacity".into()
    } else {
        format!("/capacity?{}", q.join("&"))
    }
}

fn pool_view(p: &PoolSummary, site: Option<&str>, horizon_days: u32) -> PoolView {
    let spans = match site {
        Some(_) if p.sites.len() > 1 => format!(
            "The whole pool's figures: its hosts are at {}.",
            p.sites
                .iter()
                .map(|s| if s.is_empty() { "no site" } else { s.as_str() })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    };
    PoolView {
        spans,
        pool: p.pool.clone(),
        link: format!("/capacity/pools/{}", seg(&p.pool)),
        installed: format!("{} GPUs", p.installed_gpus),
        demand_now: num(p.demand_now, 1, "GPUs"),
        next_hour: gpus_or_dash(p.next_hour),
        week: week_range(p),
        lead: lead_text(p),
        exhausted: date(p.exhausted_at, horizon_days),
        actions: p.actions.clone(),
        evidence: evidence_text(&p.evidence),
        // Without a week's plan the actions already say why.
        note: if p.week_peak.is_some() {
            p.note.clone()
        } else {
            String::new()
        },
    }
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    PageQuery(q): PageQuery<OverviewQuery>,
) -> Result<Response, PageError> {
    let d = load(&st, &q).await?;
    let horizon = st.cfg.capacity.horizon_days;
    render_off(move || {
        let site = d.site.as_deref();
        let tabs = d
            .sites
            .iter()
            .map(|c| {
                let name = c.site.as_deref().map_or("All sites", |s| {
                    if s.is_empty() {
                        "no site"
                    } else {
                        s
                    }
                });
                let mut label = format!(
                    "{name}: {}",
                    crate::model::format::count(c.pools, "pool")
                );
                if c.to_order > 0 {
                    label.push_str(&format!(", {} to grow", c.to_order));
                }
                if c.to_release > 0 {
                    label.push_str(&format!(", {} to release", c.to_release));
                }
                (
                    label,
                    overview_link(c.site.as_deref(), 1),
                    c.site.as_deref() == site,
                )
            })
            .collect();
        let at = site.map(|s| format!(" at {s}")).unwrap_or_default();
        // A pool may span sites: a site's tab lists the pools with hosts there.
        let pools_at = site
            .map(|s| format!(" with hosts at {s}"))
            .unwrap_or_default();
        let first = (d.page - 1) * POOLS_PER_PAGE + 1;
        let shown = if d.total_pools == 0 {
            String::new()
        } else {
            format!(
                "Pools {first}–{} of {}{pools_at}, most urgent first: orders, then GPUs to release, then no change (page {} of {}).",
                first as usize + d.pools.len() - 1,
                d.total_pools,
                d.page,
                d.pages
            )
        };
        let more = |shown: usize, total: i64, what: &str| {
            if (shown as i64) < total {
                format!("{shown} of {total} {what}, soonest first; all of them in the JSON.")
            } else {
                String::new()
            }
        };
        let racks: Vec<DateView> = d
            .racks
            .iter()
            .map(|r| {
                let (site, rack) = r.key.split_once('/').unwrap_or(("", &r.key));
                date_view(r, rack_path(site, rack), horizon)
            })
            .collect();
        let disks: Vec<DateView> = d
            .disks
            .iter()
            .map(|r| date_view(r, format!("/hosts/{}", seg(&r.key)), horizon))
            .collect();
        let drains = d
            .consolidation
            .iter()
            .flat_map(|p| {
                p.hosts.iter().map(|c| DrainView {
                    pool: p.pool.clone(),
                    host: c.host.clone(),
                    link: format!("/hosts/{}", seg(&c.host)),
                    gpus: c.gpus,
                    util: format!("{:.1} %", c.util_pct),
                    idle: format!("{:.1} kWh", c.idle_kwh_7d),
                })
            })
            .collect();
        let (decided, stale) = freshness(&d.pools, Utc::now());
        render(&CapacityPage {
            decided,
            stale,
            nav: Nav::new(&user, csrf, "capacity"),
            tabs,
            shown,
            prev: (d.page > 1).then(|| overview_link(site, d.page - 1)),
            next: (d.page < d.pages).then(|| overview_link(site, d.page + 1)),
            pools: d.pools.iter().map(|p| pool_view(p, site, horizon)).collect(),
            racks_more: more(racks.len(), d.racks_total, "racks"),
            racks,
            disks_more: more(disks.len(), d.disks_total, "disks"),
            disks,
            drains,
            lead_days: d.lead_days,
            horizon_days: horizon,
            price: format!("{}", d.price),
            at,
            pools_at,
            json: overview_link(site, d.page).replacen("/capacity", "/api/v1/capacity", 1),
        })
    })
    .await
}

/// Capacity: a page of pools' recommendations (most urgent first) with their backtest
/// evidence, when racks' power budgets and hosts' disks run out, and hosts that could be
/// drained; for all sites or one.
#[utoipa::path(
    get,
    path = "/api/v1/capacity",
    operation_id = "capacity",
    tag = "capacity",
    params(OverviewQuery),
    responses(
        (status = 200, description = "The capacity page's data.", body = CapacityData),
        (status = 400, description = "Page 0 (pages count from 1).", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No pool has hosts at the site, or no such page.", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<OverviewQuery>,
) -> Result<Json<CapacityData>, ApiError> {
    Ok(Json(load(&st, &q).await?))
}

/// One pool: its summary, 4 weeks of demand, the advice over them and the plans ahead.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolData {
    pub summary: PoolSummary,
    /// Start of the chart: 4 weeks back, or the day the pool's demand starts if later.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Demand per point (the highest 5-minute demand in it); points start on whole
    /// multiples of their width since 1970-01-01 UTC.
    pub demand: Vec<DemandPoint>,
    /// The next-hour advice given for each past hour.
    pub advised: Vec<(DateTime<Utc>, i32)>,
    /// The pool's demand (work + queue, hourly mean) the forecast engine expects, GPUs,
    /// with 80 / 95 % intervals:
    /// (hour, point, lo80, hi80, lo95, hi95).
    pub forecast: Vec<(DateTime<Utc>, f64, f64, f64, f64, f64)>,
    /// The schedule for the week from `summary.decided_at`, one value per hour, GPUs.
    pub week_schedule: Vec<i32>,
    /// The plan for the week from `summary.lead_start`, one value per hour, GPUs.
    pub lead_plan: Vec<i32>,
    /// The pool's hosts in the fleet, least busy over the last 7 days first.
    pub hosts: Vec<crate::analytics::capacity::PoolHost>,
    /// Where more of its hosts could go: racks with a power budget at its sites.
    pub power: crate::analytics::capacity::HostPower,
}

/// Days of past shown on a pool's page.
const PAST_DAYS: i64 = 28;

async fn load_pool(st: &AppState, pool: &str) -> Result<PoolData, ApiError> {
    let now = Utc::now();
    let rec = st
        .store
        .recommendations(Some(pool))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no pool named {} (or the capacity job has not run since it appeared)",
                crate::model::validate::quoted(pool)
            ))
        })?;
    let to = now + Duration::days(i64::from(st.cfg.capacity.lead_days) + 7);
    // About one point per pixel column over the past part of the chart, in whole
    // 5-minute slots, and points start on multiples of their width: a point's start does
    // not depend on when it was asked for.
    let bucket =
        (PAST_DAYS * 86_400 / super::charts::Size::WIDE.plot_px() as i64 / 300).max(1) * 300;
    let from = now - Duration::days(PAST_DAYS);
    let from = from
        .duration_trunc(Duration::seconds(bucket))
        .unwrap_or(from);
    let pools = [pool.to_string()];
    let (demand, advised, forecasts, hosts, racks) = tokio::try_join!(
        st.store.pool_demand_series(pool, from, now, bucket),
        st.store.capacity_history(pool, from, now),
        st.store
            .forecasts(Some("pool"), Some(pool), Some("demand_gpus")),
        st.store.pool_hosts(&pools, now),
        st.store.exhaustions(Some("rack")),
    )?;
    // A pool younger than the window starts its chart on the day its demand does (at
    // least a day back), so a new fleet's chart is not three weeks of nothing.
    let from = demand.first().map_or(from, |p| {
        let day = p
            .bucket
            .duration_trunc(Duration::days(1))
            .unwrap_or(p.bucket);
        day.clamp(from, now - Duration::days(1))
    });
    let forecast = forecasts
        .first()
        .map(|f| {
            (0..f.point.len())
                .map(|i| {
                    let g = |v: &[f64]| demand3(v.get(i).copied().unwrap_or(0.0));
                    (
                        f.start_at + Duration::hours(i as i64),
                        g(&f.point),
                        g(&f.lo80),
                        g(&f.hi80),
                        g(&f.lo95),
                        g(&f.hi95),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // To 3 decimals, as every capacity answer gives demand.
    let r3 = |v: f32| demand3(f64::from(v)) as f32;
    let demand = demand
        .into_iter()
        .map(|p| crate::analytics::capacity::DemandPoint {
            busy_gpus: r3(p.busy_gpus),
            util_gpus: r3(p.util_gpus),
            queued_gpus: r3(p.queued_gpus),
            ..p
        })
        .collect();
    Ok(PoolData {
        summary: summary(&rec, st.cfg.capacity.lead_days, now),
        from,
        to,
        demand,
        advised,
        forecast,
        week_schedule: rec.week_schedule.clone(),
        lead_plan: rec.lead_plan.clone(),
        power: crate::analytics::capacity::rack_room(
            &racks,
            &rec.sites,
            crate::analytics::capacity::host_peak_w(hosts.iter().map(|(_, h)| h)),
        ),
        hosts: hosts.into_iter().map(|(_, h)| h).collect(),
    })
}

#[derive(Template)]
#[template(path = "capacity_pool.html")]
pub struct PoolPage {
    pub nav: Nav,
    pub pool: String,
    pub summary: PoolView,
    pub chart: ChartView,
    /// The same chart drawn for a desktop page's width.
    pub wide_svg: String,
    pub methods: String,
    pub evidence: Vec<(String, String, String, String)>,
    pub hosts: Vec<PoolHostView>,
    /// How many of them are marked to drain.
    pub drains: usize,
    /// "A host of this pool draws up to 5.2 kW …", and the racks' rows.
    pub power_note: String,
    pub power_racks: Vec<RoomView>,
}

/// A rack's row of a pool page's power table.
pub struct RoomView {
    pub rack: String,
    pub link: String,
    pub budget: String,
    pub peak: String,
    pub headroom: String,
    pub hosts: String,
}

/// A row of a pool page's host table.
pub struct PoolHostView {
    pub host: String,
    pub link: String,
    pub place: String,
    pub gpus: i64,
    pub util: String,
    pub idle: String,
    pub peak: String,
    pub seen: String,
    /// The capacity job lists it as a host to drain.
    pub drain: bool,
}

async fn pool_page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path(pool): Path<String>,
    _q: PageQuery<NoParams>,
) -> Result<Response, PageError> {
    let d = load_pool(&st, &pool).await?;
    render_off(move || {
        let s = &d.summary;
        // `v[i]` covers the hour from `start` + i hours, as in the API and the CSV plan:
        // `start` is the end of the demand, not a clock hour.
        let hourly = |start: DateTime<Utc>, v: &[i32]| -> Vec<(DateTime<Utc>, f64)> {
            v.iter()
                .enumerate()
                .flat_map(|(i, g)| {
                    let t = start + Duration::hours(i as i64);
                    // Steps: the value holds for its whole hour.
                    [
                        (t, f64::from(*g)),
                        (t + Duration::minutes(59), f64::from(*g)),
                    ]
                })
                .collect()
        };
        // Installed GPUs as measured, then held through the coming weeks (a point an hour,
        // so the line is drawn, not a lone dot at the end).
        let last = d.demand.last().map_or(d.from, |p| p.bucket);
        let installed_ahead = std::iter::successors(Some(last + Duration::hours(1)), |t| {
            Some(*t + Duration::hours(1))
        })
        .take_while(|t| *t < d.to)
        .chain([d.to])
        .map(|t| (t, f64::from(s.installed_gpus)));
        let mut advised: Vec<(DateTime<Utc>, f64)> =
            d.advised.iter().map(|(t, g)| (*t, f64::from(*g))).collect();
        advised.extend(hourly(s.decided_at, &d.week_schedule));
        let series = vec![
            Series {
                label: "demand (work + queue, highest 5 min per point)".into(),
                points: d.demand.iter().map(|p| (p.bucket, p.demand())).collect(),
            },
            Series {
                label: "installed".into(),
                points: d
                    .demand
                    .iter()
                    .map(|p| (p.bucket, f64::from(p.installed_gpus)))
                    .chain(installed_ahead)
                    .collect(),
            },
            Series {
                label: "recommended (past advice, then the week's schedule)".into(),
                points: advised,
            },
            Series {
                label: format!("plan from {}", s.lead_start.format("%Y-%m-%d")),
                points: hourly(s.lead_start, &d.lead_plan),
            },
            Series {
                label: "forecast of demand (hourly mean)".into(),
                points: d.forecast.iter().map(|f| (f.0, f.1)).collect(),
            },
        ];
        let ov = Overlay {
            bands: vec![
                Band {
                    label: "95 % interval".into(),
                    points: d.forecast.iter().map(|f| (f.0, f.4, f.5)).collect(),
                    opacity: 0.10,
                },
                Band {
                    label: "80 % interval".into(),
                    points: d.forecast.iter().map(|f| (f.0, f.2, f.3)).collect(),
                    opacity: 0.18,
                },
            ],
            marks: vec![(Utc::now(), "now".into())],
            // Demand (and installed) at their highest per pixel column, as the legend
            // says: a phone's chart shows the same peaks as a desktop's. The schedules keep
            // the column mean, so their night lows still show on a phone.
            peaks: vec![0, 1],
            ..Overlay::default()
        };
        let range = super::range::TimeRange::fixed(d.from, d.to, 3600);
        let title = format!("Pool {}: GPUs", s.pool);
        // Drawn twice: across a desktop page, and at the usual size for narrower screens.
        let wide_svg = super::charts::line_chart_sized(
            &title,
            &series,
            range.from,
            range.to,
            Axis::Unit("GPUs"),
            range.gap_secs(),
            &ov,
            super::charts::Size::WIDE,
        );
        let chart = chart(&title, series, &range, Axis::Unit("GPUs"), &ov);
        let ev = |name: &str, b: &crate::analytics::capacity::BacktestView| {
            if b.hours == 0.0 {
                return (
                    name.to_string(),
                    b.method.clone(),
                    "not enough history yet to replay it".to_string(),
                    String::new(),
                );
            }
            // The next hour is replayed hour by hour; the plans from daily starts, each
            // over the hours of its week that have passed, so their hours overlap.
            let over = if name == "next hour" {
                format!("over {:.0} h", b.hours)
            } else {
                format!(
                    "over {:.0} planned hours of overlapping daily replays",
                    b.hours
                )
            };
            (
                name.to_string(),
                b.method.clone(),
                format!(
                    "{:.3} {over} (slack {:.0} %, short {:.1} %, {} GPU-h unserved)",
                    b.cost,
                    b.slack_pct,
                    b.shortage_pct,
                    gpu_hours(b.unserved_gpu_hours)
                ),
                format!(
                    "{:.3} ({}{})",
                    b.baseline_cost,
                    b.baseline,
                    baseline_won(b.cost, b.baseline_cost)
                ),
            )
        };
        let hosts: Vec<PoolHostView> = d
            .hosts
            .iter()
            .map(|h| PoolHostView {
                host: h.host.clone(),
                link: format!("/hosts/{}", seg(&h.host)),
                place: match (h.site.as_str(), h.rack.as_str()) {
                    ("", "") => "–".into(),
                    (site, "") => site.into(),
                    (site, rack) => format!("{site} / {rack}"),
                },
                gpus: h.gpus,
                util: num(h.util_pct, 1, "%"),
                idle: num(h.idle_kwh_7d, 1, "kWh"),
                peak: num(h.peak_kw_7d, 1, "kW"),
                seen: crate::model::format::age(h.last_seen, Utc::now()),
                drain: s.consolidation.iter().any(|c| c.host == h.host),
            })
            .collect();
        let page = PoolPage {
            nav: Nav::new(&user, csrf, "capacity"),
            pool: s.pool.clone(),
            summary: PoolView {
                pool: s.pool.clone(),
                link: String::new(),
                installed: format!("{} GPUs ({} per host)", s.installed_gpus, s.host_size),
                demand_now: num(s.demand_now, 1, "GPUs"),
                next_hour: gpus_or_dash(s.next_hour),
                week: week_range(s),
                lead: lead_text(s),
                exhausted: date(s.exhausted_at, st.cfg.capacity.horizon_days),
                actions: s.actions.clone(),
                evidence: evidence_text(&s.evidence),
                note: s.note.clone(),
                spans: String::new(),
            },
            chart,
            wide_svg,
            methods: {
                let or_none = |m: &str| {
                    if m.is_empty() {
                        "none yet".to_string()
                    } else {
                        m.to_string()
                    }
                };
                format!(
                    "next hour: {}; week: {}; plan ahead: {}",
                    or_none(&s.methods.next_hour),
                    or_none(&s.methods.week),
                    or_none(&s.methods.lead)
                )
            },
            evidence: if s.evidence.next_hour.method.is_empty() {
                Vec::new()
            } else {
                vec![
                    ev("next hour", &s.evidence.next_hour),
                    ev("week schedule", &s.evidence.week),
                    ev("plan ahead", &s.evidence.lead),
                ]
            },
            power_note: power_note(&d.power, &s.sites),
            power_racks: d
                .power
                .racks
                .iter()
                .map(|r| {
                    let (site, rack) = r.rack.split_once('/').unwrap_or(("", &r.rack));
                    RoomView {
                        rack: r.rack.clone(),
                        link: super::page::rack_path(site, rack),
                        budget: format!("{:.1} kW", r.budget_kw),
                        peak: format!("{:.1} kW", r.peak_kw),
                        headroom: format!("{:.1} kW", r.headroom_kw),
                        hosts: r.hosts.map_or("–".into(), |n| n.to_string()),
                    }
                })
                .collect(),
            drains: hosts.iter().filter(|h| h.drain).count(),
            hosts,
        };
        render(&page)
    })
    .await
}

/// One pool: demand over 4 weeks, the recommended capacity over them and the next week,
/// with the forecast's 80 / 95 % bands.
#[utoipa::path(
    get,
    path = "/api/v1/capacity/pools/{pool}",
    tag = "capacity",
    params(("pool" = String, Path, description = "Pool name.")),
    responses(
        (status = 200, description = "The pool page's data.", body = PoolData),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such pool, or the capacity job has not run since it appeared.", body = ErrorBody),
    )
)]
async fn pool_json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(pool): Path<String>,
    _q: ApiQuery<NoParams>,
) -> Result<Json<PoolData>, ApiError> {
    Ok(Json(load_pool(&st, &pool).await?))
}

/// What an autoscaler reads: per pool, the GPUs to hold next hour and the week's peak.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AutoscalerView {
    pub pool: String,
    /// The sites the pool's hosts are at.
    pub sites: Vec<String>,
    pub installed_gpus: i32,
    /// Demand (work + queue) over the 5 minutes before `decided_at`, GPUs.
    pub demand_gpus: Option<f64>,
    /// GPUs for the next hour: the autoscaling advice, made from the last hours' demand
    /// and revised every hour. Scale on this one. Null until the pool has an hour of
    /// demand (`note` says why); the gauges then leave the pool's series out.
    pub recommended_1h: Option<i32>,
    /// The peak of the week's schedule (null: no plan yet).
    pub recommended_7d: Option<i32>,
    /// GPUs for each of the next 168 hours, from `decided_at`: the weekly plan, from the
    /// last weeks' demand with one margin for the whole week (planned again every hour),
    /// so `schedule[0]` can differ from `recommended_1h` (either way). For reservations
    /// and partition sizes.
    pub schedule: Vec<i32>,
    pub decided_at: DateTime<Utc>,
    /// Why a part is missing (a young pool: no recommendation or no plan ahead yet).
    pub note: String,
}

/// Which pools.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PoolQuery {
    /// One pool (default: all).
    pool: Option<String>,
    /// The pools with hosts at this site (default: every site).
    site: Option<String>,
}

/// What autoscalers read: per pool, the GPUs to hold next hour, the week's peak and the
/// hourly schedule.
#[utoipa::path(
    get,
    path = "/api/v1/capacity/recommendations",
    tag = "capacity",
    params(PoolQuery),
    responses(
        (status = 200, description = "The recommendations.", body = Vec<AutoscalerView>),
        (status = 400, description = "An unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No recommendation for the pool asked for, or no pool with hosts at the site.", body = ErrorBody),
    )
)]
async fn recommendations(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<PoolQuery>,
) -> Result<Json<Vec<AutoscalerView>>, ApiError> {
    let mut recs = st.store.recommendations(q.pool.as_deref()).await?;
    if let Some(site) = &q.site {
        recs.retain(|r| r.sites.iter().any(|s| s == site));
    }
    let quoted = crate::model::validate::quoted;
    let missing = match (&q.pool, &q.site) {
        _ if !recs.is_empty() => None,
        (Some(p), Some(s)) => Some(format!(
            "no recommendation for pool {} at site {}",
            quoted(p),
            quoted(s)
        )),
        (Some(p), None) => Some(format!("no recommendation for pool {}", quoted(p))),
        (None, Some(s)) => Some(format!("no pool has hosts at site {}", quoted(s))),
        // No filter: an empty fleet is an empty list.
        (None, None) => None,
    };
    if let Some(m) = missing {
        return Err(ApiError::NotFound(m));
    }
    Ok(Json(recs.iter().map(autoscaler_view).collect()))
}

/// A recommendation as autoscalers and the Prometheus gauges see it.
pub fn autoscaler_view(r: &PoolRecommendation) -> AutoscalerView {
    AutoscalerView {
        pool: r.pool.clone(),
        sites: r.sites.clone(),
        installed_gpus: r.installed_gpus,
        // Measured as single-precision sums: three decimals are all it holds, without
        // the digits of the widening (14.905, not 14.904500961303711).
        demand_gpus: r.demand_now.map(demand3),
        recommended_1h: r.next_hour,
        recommended_7d: r.week_schedule.iter().copied().max(),
        schedule: r.week_schedule.clone(),
        decided_at: r.decided_at,
        note: r.note.clone(),
    }
}

/// A scheduler's report of a pool's queue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"pending_gpus": 12, "source": "slurm"}))]
pub struct DemandReport {
    /// GPUs requested by jobs or pods waiting to run; at most 100 × the pool's installed
    /// GPUs (at least 1,000 is always taken).
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub pending_gpus: f64,
    /// When the queue was read (default: now): from a day behind the server's clock to
    /// 5 minutes ahead. A late report (an exporter catching up after an outage) counts
    /// for the 5-minute demand slots it covers from the capacity job's next run.
    #[serde(default)]
    pub ts: Option<DateTime<Utc>>,
    /// Who reports (`slurm`, `kubernetes`, …).
    #[serde(default)]
    pub source: String,
}

/// The queue a report recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DemandRecorded {
    pub pool: String,
    pub ts: DateTime<Utc>,
    pub pending_gpus: f64,
}

/// A scheduler reports a pool's queue: GPUs requested by work waiting to run.
///
/// Demand is the work the GPUs did plus this queue, so a pool whose jobs wait is seen as
/// short even while its GPUs are busy. Send the pool's scheduler token, or an operator's
/// credentials.
#[utoipa::path(
    post,
    path = "/api/v1/pools/{pool}/demand",
    tag = "capacity",
    params(("pool" = String, Path, description = "Pool name.")),
    request_body = DemandReport,
    security(("scheduler_token" = []), ("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "Recorded.", body = DemandRecorded),
        (status = 429, description = "The pool's reports are over their rate: a burst of 60, then one a second; retry after Retry-After.", body = ErrorBody),
        (status = 400, description = "Not the expected body, `pending_gpus` out of 0–10,000,000 or above 100 × the pool's installed GPUs (at least 1,000), a `ts` off the server's clock, or a `source` over 64 characters or with control characters.", body = ErrorBody),
        (status = 401, description = "No token or credentials, or a token that is not a pool token (the message says which).", body = ErrorBody),
        (status = 403, description = "A token of another pool, or a user below operator.", body = ErrorBody),
        (status = 404, description = "No host belongs to the pool.", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
    )
)]
async fn demand(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(pool): Path<String>,
    MaybeUser(user): MaybeUser,
    _q: super::params::ApiQuery<super::params::NoParams>,
    body: axum::body::Body,
) -> Result<Json<DemandRecorded>, ApiError> {
    let token_pool = match super::ingest::bearer(&headers) {
        Some(t) => st.store.token_pool(t).await?,
        None => None,
    };
    match (&token_pool, &user) {
        (Some(p), _) if *p == pool => {}
        (Some(p), _) => {
            return Err(ApiError::Forbidden(format!(
                "this token reports pool {}; the request names pool {}",
                crate::model::validate::quoted(p),
                crate::model::validate::quoted(&pool)
            )))
        }
        (None, Some(u)) => require(u, Role::Operator)?,
        (None, None) => match super::ingest::bearer(&headers) {
            Some(t) if st.store.token_host(t).await?.is_some() => {
                return Err(ApiError::Unauthorized(
                    "this is an agent token, which sends samples; a scheduler reports a pool's queue with a pool token: mint one with `rackwatch token create --pool POOL`"
                        .into(),
                ))
            }
            Some(_) => {
                return Err(ApiError::Unauthorized(
                    "unknown or revoked pool token: mint one with `rackwatch token create --pool POOL`"
                        .into(),
                ))
            }
            None if super::ingest::auth_param(&headers, "Basic").is_some() => {
                return Err(super::auth::unauthorized(&headers))
            }
            None => return Err(ApiError::Unauthorized(
                "send the pool's scheduler token (Authorization: Bearer) or an operator's credentials"
                    .into(),
            )),
        },
    }
    let r: DemandReport = super::body::json(
        &st,
        &headers,
        body,
        super::body::Shape::Object,
        r#"{"pending_gpus": N, "ts": RFC 3339 (optional), "source": "…" (optional)}"#,
    )
    .await?;
    if let Some(wait) = st
        .queue_reports
        .take(super::ingest::limit_key(b"queue", pool.as_bytes()))
    {
        return Err(ApiError::TooMany {
            message: format!(
                "pool {} is over its queue reports (a burst of 60, then one a second); retry in {wait} s",
                crate::model::validate::quoted(&pool)
            ),
            retry_after: wait,
        });
    }
    let Some(installed) = st.store.pool_gpus(&pool).await? else {
        return Err(ApiError::NotFound(format!(
            "no host belongs to pool {}",
            crate::model::validate::quoted(&pool)
        )));
    };
    if !(r.pending_gpus.is_finite() && (0.0..=1e7).contains(&r.pending_gpus)) {
        return Err(ApiError::BadRequest(format!(
            "pending_gpus = {} must be a number from 0 to 10,000,000",
            // Short either way: 1e308 and -1e-300 are not written out in full.
            match r.pending_gpus.to_string() {
                s if s.len() > 24 => format!("{:e}", r.pending_gpus),
                s => s,
            }
        )));
    }
    let bound = crate::analytics::capacity::queue_bound(installed);
    if r.pending_gpus > bound {
        return Err(ApiError::BadRequest(format!(
            "pending_gpus = {} is more than {bound} (100 × the pool's {installed} installed GPUs, at least 1,000): \
             report GPUs requested by waiting work, not jobs, pods or bytes",
            r.pending_gpus
        )));
    }
    // -0 is stored and echoed as 0.
    let pending_gpus = r.pending_gpus + 0.0;
    let now = Utc::now();
    let ts = r.ts.unwrap_or(now);
    if ts > now + Duration::minutes(5) {
        return Err(ApiError::BadRequest(format!(
            "ts {} is more than 5 minutes ahead of the server's clock ({}): is the sender's clock right?",
            ts.to_rfc3339(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    if ts < now - Duration::days(1) {
        return Err(ApiError::BadRequest(format!(
            "ts {} is more than a day old (the server's clock reads {}): report the queue as it is now",
            ts.to_rfc3339(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    if r.source.chars().count() > 64 || r.source.chars().any(crate::model::validate::hidden_char) {
        return Err(ApiError::BadRequest(
            "source must be at most 64 printable characters".into(),
        ));
    }
    st.store
        .record_queue(&pool, ts, pending_gpus, &r.source)
        .await?;
    Ok(Json(DemandRecorded {
        pool,
        ts,
        pending_gpus,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::capacity::BacktestView;

    #[test]
    fn evidence_says_when_the_baseline_did_better() {
        let b = |cost: f64, baseline_cost: f64| BacktestView {
            method: "quantile".into(),
            cost,
            hours: 240.0,
            baseline: "VPA-style p95".into(),
            baseline_cost,
            ..Default::default()
        };
        let e = EvidenceView {
            next_hour: b(0.130, 0.189),
            week: b(0.330, 0.330),
            lead: b(0.469, 0.468),
        };
        let text = evidence_text(&e);
        assert!(
            text.contains(
                "plan ahead 0.469 against 0.468 for VPA-style p95, which did better here"
            ),
            "{text}"
        );
        assert_eq!(text.matches("did better").count(), 1, "{text}");
    }
}
