//! One host: its metrics, GPUs, hardware events, alerts and anomaly scores
//! (`/hosts/{name}`, `GET /api/v1/hosts/{name}`), the host list and raw samples.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::urlencode;
use super::auth::{require, verify_csrf, ApiUser, ClientAddr, Csrf, PageUser};
use super::charts::{sequential_gradient, sparkline, strip_chart, Axis, Overlay, Series, StripRow};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::*;
use super::params::{ApiQuery, NoParams, PageForm, PageQuery};
use super::range::parse_rfc3339;
use super::range::{RangeDoc, RangeParams, TimeRange};
use super::AppState;
use crate::analytics::anomaly::{Episode, ModelInfo, ScoreFilter, ScorePoint, StoredScore};
use crate::analytics::forecast::StoredForecast;
use crate::model::format::age;
use crate::store::audit::Entry;
use crate::store::auth::Role;
use crate::store::queries::{
    AlertTouching, EventRow, GpuLatest, GpuSampleRow, HostLatest, HostSampleRow,
};
use crate::store::series::{GpuPoint, HostPoint};
use crate::store::Store;
use axum::response::IntoResponse;
use serde::Deserialize;

/// `/hosts/{name}`.
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/hosts/{name}", page)
        .post("/hosts/{name}/remove", remove)
}

/// The host page's "take out of the fleet" form: the host's name typed as confirmation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// Take a host out of the fleet (admins; [`Store::remove_host`]), from its page.
async fn remove(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
    PageForm(f): PageForm<RemoveForm>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    if f.confirm.trim() != name {
        return Err(ApiError::BadRequest(format!(
            "confirm: type the host's name ({name:?}) to take it out of the fleet; got {:?}",
            f.confirm
        ))
        .into());
    }
    remove_host(&st, &user.name, ip, &name).await?;
    Ok(axum::response::Redirect::to(&format!("/hosts/{}", seg(&name))).into_response())
}

/// The host list, one host's page data and its raw samples.
pub fn api_routes() -> Routes {
    Routes::new()
        .routes(routes!(list))
        .routes(routes!(json, remove_api))
        .routes(routes!(samples))
}

/// Host page data: latest values, series over the range, GPUs, hardware events, alerts,
/// anomalies and forecasts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostData {
    pub host: HostLatest,
    pub range: TimeRange,
    pub gpus: Vec<GpuLatest>,
    pub host_series: Vec<HostPoint>,
    pub gpu_series: Vec<GpuPoint>,
    pub events: Vec<ExplainedEvent>,
    /// More hardware events than listed are in the range: the newest 200 are listed, and
    /// `GET /api/v1/events` has them all.
    pub events_truncated: bool,
    /// Firing, pending and recently resolved alerts of the host and its GPUs.
    pub alerts: Vec<AlertTouching>,
    /// Anomalous minutes in the range, newest first (at most 30, `HOST_PAGE_ANOMALIES`;
    /// `GET /api/v1/anomalies` has them all).
    pub anomalies: Vec<StoredScore>,
    /// The same minutes as episodes, newest first (at most 30): minutes at most 5 apart
    /// are one episode.
    pub anomaly_episodes: Vec<Episode>,
    /// The host's anomaly model, or why it has none (empty before the job saw the host).
    pub anomaly_models: Vec<ModelInfo>,
    /// Anomaly score and level over the range, one point per pixel column (at most one
    /// per minute: scores are per minute).
    pub anomaly_series: Vec<ScorePoint>,
    /// The forecast engine's latest forecasts of the host (GPU utilization, GPU power,
    /// disk space used) for the next 7 days, with 80 / 95 % intervals.
    pub forecasts: Vec<StoredForecast>,
}

/// Anomalous minutes (and episodes) listed on a host page; the API has them all.
pub const HOST_PAGE_ANOMALIES: i64 = 30;

/// What the host page reads from the database, queried concurrently.
pub struct HostRows {
    pub host: Option<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub host_series: Vec<HostPoint>,
    pub gpu_series: Vec<GpuPoint>,
    pub events: Vec<EventRow>,
    pub alerts: Vec<AlertTouching>,
    pub anomalies: Vec<StoredScore>,
    pub anomaly_episodes: Vec<Episode>,
    pub anomaly_models: Vec<ModelInfo>,
    pub anomaly_series: Vec<ScorePoint>,
    pub forecasts: Vec<StoredForecast>,
}

/// The host page's queries (the dashboard benchmark times exactly these).
pub async fn rows(
    store: &Store,
    name: &str,
    range: &TimeRange,
    now: DateTime<Utc>,
) -> Result<HostRows, sqlx::Error> {
    let names = [name.to_string()];
    let filter = ScoreFilter {
        host: Some(name),
        from: range.from,
        to: range.to,
        min_score: None,
        anomalous: Some(true),
        after: None,
        limit: HOST_PAGE_ANOMALIES,
    };
    let (
        host,
        gpus,
        host_series,
        gpu_series,
        events,
        alerts,
        anomalies,
        anomaly_episodes,
        anomaly_models,
        anomaly_series,
        forecasts,
    ) = tokio::try_join!(
        store.host_latest(name),
        store.gpus_latest(Some(name)),
        store.host_series(
            &names,
            range.from,
            range.to,
            range.bucket_secs,
            range.source
        ),
        store.gpu_series(
            name,
            None,
            range.from,
            range.to,
            range.bucket_secs,
            range.source,
        ),
        store.events_between(&names, None, range.from, range.to, EVENTS_SHOWN as i64 + 1),
        store.alerts_touching(&names, now - Duration::hours(RESOLVED_RECENT_HOURS)),
        store.anomaly_scores(&filter),
        store.anomaly_episodes(name, range.from, range.to, HOST_PAGE_ANOMALIES),
        store.anomaly_models(Some(name)),
        store.anomaly_score_series(name, range.from, range.to, range.bucket_secs),
        store.forecasts(Some("host"), Some(name), None),
    )?;
    Ok(HostRows {
        host,
        gpus,
        host_series,
        gpu_series,
        events,
        alerts,
        anomalies,
        anomaly_episodes,
        anomaly_models,
        anomaly_series,
        forecasts,
    })
}

/// Everything the host page shows.
pub async fn load(st: &AppState, name: &str, range: TimeRange) -> Result<HostData, ApiError> {
    let r = rows(&st.store, name, &range, Utc::now()).await?;
    let host = r
        .host
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?}")))?;
    let (events, events_truncated) = newest_events(r.events);
    Ok(HostData {
        host,
        range,
        gpus: r.gpus,
        host_series: r.host_series,
        gpu_series: r.gpu_series,
        events: events.into_iter().map(explained).collect(),
        events_truncated,
        alerts: r.alerts,
        anomalies: r.anomalies,
        anomaly_episodes: r.anomaly_episodes,
        anomaly_models: r.anomaly_models,
        anomaly_series: r.anomaly_series,
        forecasts: r.forecasts,
    })
}

/// A GPU row of the host page, with a utilization sparkline.
pub struct GpuRow {
    pub cell: GpuCell,
    pub link: String,
    pub spark: String,
    /// When the GPU does not report now: its newest sample's time (RFC 3339, "-" for
    /// none), which its last values are from; empty when it reports.
    pub silent_since: String,
}

#[derive(Template)]
#[template(path = "host.html")]
pub struct HostPage {
    pub nav: Nav,
    pub host: HostRow,
    /// Said when an admin took the host out of the fleet; empty otherwise.
    pub removed: String,
    /// The form that takes it out (admins, while it is in the fleet); empty otherwise.
    pub remove_action: String,
    /// Empty for a host taken out of the fleet (no rack page lists it).
    pub rack_link: String,
    /// Two agents reporting as this host within the last hour, in words (else empty).
    pub two_agents: String,
    pub agent_version: String,
    /// The agent's labels (`agent.host.labels`), `key=value` in key order.
    pub labels: Vec<String>,
    pub picker: Picker,
    pub charts: Vec<ChartView>,
    /// GPU metrics as small multiples (one row per GPU).
    pub strips: Vec<ChartView>,
    /// CSS gradient of the strips' color scale.
    pub strip_scale: String,
    pub gpus: Vec<GpuRow>,
    pub events: Vec<EventView>,
    /// The events API's link to all of them, when the list is cut (a host's or GPU's).
    pub events_all: String,
    pub events_truncated: bool,
    pub alerts: Vec<AlertTouchView>,
    /// Resolved alerts left out of `alerts` (the Alerts page has them).
    pub alerts_hidden: usize,
    /// The host's anomaly model in a sentence.
    pub anomaly_note: String,
    pub anomalies: Vec<AnomalyView>,
    /// The API query with every anomalous minute of the range.
    pub anomalies_link: String,
    pub anomalies_max: i64,
    pub episode_gap: i32,
    /// Forecasts of the next 7 days.
    pub forecasts: Vec<ChartView>,
}

/// An anomalous minute on the host page.
pub struct AnomalyView {
    /// First and last anomalous minute (no end for a single minute).
    pub start: String,
    pub end: Option<String>,
    pub minutes: String,
    pub score: String,
    pub level: String,
    pub detail: String,
}

/// The host's anomaly model, or why it has none, for people.
/// The level is the one the scores were held to (the chart's line and the API's
/// `threshold`): it follows the host's recent scores and never drops below the model's
/// trained threshold, which the note gives as the floor.
fn anomaly_note(
    models: &[crate::analytics::anomaly::ModelInfo],
    level_now: Option<f32>,
    now: DateTime<Utc>,
) -> String {
    match models.first() {
        None => "No anomaly model yet: the anomaly job has not looked at this host.".into(),
        Some(m) if m.status == "trained" => format!(
            "Scored every minute against a model of this host's normal behaviour, trained {} on \
             {} minutes of {} metrics; {}.",
            age(Some(m.trained_at), now),
            m.train_minutes,
            m.metrics.len(),
            match level_now {
                Some(l) => format!(
                    "alert level {l:.2} at the end of this range (it follows the host's recent \
                     scores; the model's floor is {:.2})",
                    m.threshold.unwrap_or_default()
                ),
                None => format!(
                    "alert level at least {:.2} (no score in this range)",
                    m.threshold.unwrap_or_default()
                ),
            }
        ),
        Some(m) => format!("No anomaly model yet: {}.", m.note),
    }
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path(name): Path<String>,
    PageQuery(q): PageQuery<RangeParams>,
) -> Result<Response, PageError> {
    let now = Utc::now();
    let (r, problem) = q.resolve_page(now, "1h", true)?;
    let d = load(&st, &name, r.clone()).await?;
    render_off(move || {
        let query = r.query();
        let mut charts = host_charts(&d.host_series, &r, false);
        let mut indexes: Vec<i16> = d.gpu_series.iter().map(|g| g.index).collect();
        indexes.dedup();
        // One row per GPU, time across: eight GPUs side by side read at a glance where
        // eight lines in one chart tangle.
        let strip = |title: &str, f: GpuField, lo: f64, hi: f64, unit: &str| ChartView {
            title: format!("{title} ({lo:.0}–{hi:.0} {unit})"),
            svg: strip_chart(
                title,
                &indexes
                    .iter()
                    .map(|i| StripRow {
                        label: format!("GPU {i}"),
                        href: format!("/hosts/{}/gpus/{i}?{query}", seg(&name)),
                        points: gpu_points(&d.gpu_series, *i, f),
                    })
                    .collect::<Vec<_>>(),
                r.from,
                r.to,
                (lo, hi),
                unit,
            ),
            legend: Vec::new(),
            note: String::new(),
        };
        let mut strips = Vec::new();
        if !indexes.is_empty() {
            let peak = |f: GpuField| d.gpu_series.iter().filter_map(f).fold(0.0f64, f64::max);
            let power_top = d
                .gpus
                .iter()
                .filter_map(|g| g.power_limit_watts)
                .fold(peak(|g| g.power_watts), f64::max);
            let mem_top = d
                .gpus
                .iter()
                .filter_map(|g| g.memory_total_bytes.map(|b| b as f64 / 1024f64.powi(3)))
                .fold(peak(|g| g.mem_used_bytes) / 1024f64.powi(3), f64::max);
            strips.push(strip("GPU utilization", |g| g.util_pct, 0.0, 100.0, "%"));
            strips.push(strip(
                "GPU power",
                |g| g.power_watts,
                0.0,
                power_top.max(1.0).ceil(),
                "W",
            ));
            strips.push(strip(
                "GPU temperature",
                |g| g.temp_celsius,
                20.0,
                peak(|g| g.temp_celsius).max(90.0).ceil(),
                "°C",
            ));
            strips.push(strip(
                "GPU memory used",
                |g| g.mem_used_bytes.map(|b| b / 1024f64.powi(3)),
                0.0,
                mem_top.max(1.0).ceil(),
                "GiB",
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
                Axis::Unit(""),
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
                    r.gap_secs(),
                    100.0,
                    &format!("GPU {} utilization, {}", g.index, r.label()),
                ),
                cell: gpu_cell(g),
                silent_since: if super::page::gpu_reports(g, Some(&d.host), now) {
                    String::new()
                } else {
                    g.ts.map(super::page::time_attr).unwrap_or_else(|| "-".into())
                },
            })
            .collect();
        let (alerts, alerts_hidden) = alert_views(&d.alerts, false, &query);
        let page = HostPage {
            alerts,
            alerts_hidden,
            nav: Nav::new(&user, csrf, ""),
            strips,
            strip_scale: sequential_gradient(),
            labels: d
                .host
                .labels
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| match v.as_str() {
                            Some(v) => format!("{k}={v}"),
                            None => format!("{k}={v}"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            agent_version: if d.host.agent_version.is_empty() {
                "unknown".into()
            } else {
                d.host.agent_version.clone()
            },
            rack_link: rack_link_of(&d.host, &query),
            host: host_row(&d.host, GpuSummary::default(), now),
            two_agents: match two_agents_seen(&d.host, now) {
                Some(t) => format!(
                    "Two agents report as this host (last seen {}): their samples interleave and its energy counts twice. Stop one, or give each machine its own name and token (agent.host.name; rackwatch token create --host NAME).",
                    age(Some(t), now)
                ),
                None => String::new(),
            },
            removed: removed_note(&d.host),
            remove_action: if user.role >= Role::Admin && d.host.removed_at.is_none() {
                format!("/hosts/{}/remove", seg(&name))
            } else {
                String::new()
            },
            picker: picker(format!("/hosts/{}", seg(&name)), &r, Vec::new())
                .with_problem(problem)
                .empty_if(d.host_series.is_empty() && d.gpu_series.is_empty()),
            charts,
            gpus,
            events: event_views(&d.events, &query, false),
            events_all: if d.events_truncated {
                all_events_link(&name, None, r.from, r.to)
            } else {
                String::new()
            },
            events_truncated: d.events_truncated,

            anomaly_note: anomaly_note(
                &d.anomaly_models,
                d.anomaly_series.last().map(|p| p.level),
                now,
            ),
            anomalies: d
                .anomaly_episodes
                .iter()
                .map(|a| AnomalyView {
                    start: super::page::time_attr(a.start),
                    end: (a.end > a.start).then(|| super::page::time_attr(a.end)),
                    minutes: crate::model::format::count(a.minutes, "anomalous minute"),
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
            anomalies_max: HOST_PAGE_ANOMALIES,
            episode_gap: crate::analytics::anomaly::EPISODE_GAP_MINUTES,
            forecasts: d
                .forecasts
                .iter()
                .map(super::page::forecast_chart)
                .collect(),
        };
        render(&page)
    })
    .await
}

/// What taking a host out of the fleet did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostRemoved {
    pub host: String,
    /// Its agent tokens revoked.
    pub tokens_revoked: u64,
}

/// Take a host out of the fleet (a decommissioned, renamed or reinstalled host): it leaves
/// the fleet, rack and inventory pages, the absent rule (its alert resolves), the anomaly
/// job and its pool's installed GPUs; its agent tokens are revoked; its history stays. An
/// agent reporting for it again (with a new token) brings it back. Audited as
/// `host.removed`.
#[utoipa::path(
    delete,
    path = "/api/v1/hosts/{name}",
    tag = "hosts",
    params(("name" = String, Path, description = "Host name.")),
    responses(
        (status = 200, description = "Taken out.", body = HostRemoved),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the admin role.", body = ErrorBody),
        (status = 404, description = "No such host in the fleet (or already taken out).", body = ErrorBody),
    )
)]
async fn remove_api(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    ClientAddr(ip): ClientAddr,
    Path(name): Path<String>,
    _q: ApiQuery<NoParams>,
) -> Result<Json<HostRemoved>, ApiError> {
    require(&user, Role::Admin)?;
    let tokens = remove_host(&st, &user.name, ip, &name).await?;
    Ok(Json(HostRemoved {
        host: name,
        tokens_revoked: tokens,
    }))
}

/// [`Store::remove_host`] and its audit row; 404 when the host is not in the fleet.
async fn remove_host(
    st: &AppState,
    by: &str,
    ip: Option<std::net::IpAddr>,
    name: &str,
) -> Result<u64, ApiError> {
    let Some(tokens) = st.store.remove_host(name, by).await? else {
        return Err(ApiError::NotFound(format!(
            "no host {name:?} in the fleet (never reported, or already taken out)"
        )));
    };
    st.store
        .audit(
            Entry::ok(
                by,
                "host.removed",
                &Store::removed_host_target(name, tokens),
            )
            .from(ip),
        )
        .await?;
    Ok(tokens)
}

/// Every host with its latest sample, by site, rack and name.
#[utoipa::path(
    get,
    path = "/api/v1/hosts",
    tag = "hosts",
    responses(
        (status = 200, description = "The hosts.", body = Vec<HostLatest>),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
    )
)]
async fn list(
    State(st): State<AppState>,
    _u: ApiUser,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Vec<HostLatest>>, ApiError> {
    Ok(Json(st.store.hosts_latest().await?))
}

/// The range of a raw-samples request.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default: `to` − 1 h).
    #[param(example = "2026-11-23T11:00:00Z")]
    from: Option<String>,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default: now); at most 24 h after `from`.
    #[param(example = "2026-11-23T12:00:00Z")]
    to: Option<String>,
}

/// Longest range the raw-samples endpoint serves in one request.
const MAX_RAW_RANGE_HOURS: i64 = 24;

/// Raw samples of a host, as stored.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HostSamples {
    pub host: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Host samples in time order.
    pub host_samples: Vec<HostSampleRow>,
    /// GPU samples by GPU, then in time order.
    pub gpu_samples: Vec<GpuSampleRow>,
}

/// Raw samples of a host (at most 24 h per request), every metric as the agent sent it.
#[utoipa::path(
    get,
    path = "/api/v1/hosts/{name}/samples",
    tag = "hosts",
    params(("name" = String, Path, description = "Host name."), RangeQuery),
    responses(
        (status = 200, description = "The samples.", body = HostSamples),
        (status = 400, description = "A bad time, `from` not before `to`, or more than 24 h.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such host.", body = ErrorBody),
        (status = 503, description = "Other large answers are being sent; retry after Retry-After.", body = ErrorBody),
    )
)]
async fn samples(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<axum::response::Response, ApiError> {
    let now = Utc::now();
    let to = parse_rfc3339("to", q.to.as_deref(), now)?;
    let from = parse_rfc3339("from", q.from.as_deref(), to - Duration::hours(1))?;
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    if to - from > Duration::hours(MAX_RAW_RANGE_HOURS) {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_RAW_RANGE_HOURS} h of raw samples per request; split the range"
        )));
    }
    if st.store.host_latest(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no host named {name:?}")));
    }
    // A day of an 8-GPU host is about 55 MB of JSON: a few at a time.
    let turn = super::body::bulk_turn(&st).await?;
    let (host_samples, gpu_samples) = st.store.host_samples(&name, from, to).await?;
    super::body::json_with_turn(
        &HostSamples {
            host: name,
            from,
            to,
            host_samples,
            gpu_samples,
        },
        turn,
    )
}

/// Host page: latest values, series over the range, GPUs, hardware events, alerts,
/// anomalies and forecasts.
#[utoipa::path(
    get,
    path = "/api/v1/hosts/{name}",
    operation_id = "host",
    tag = "hosts",
    params(("name" = String, Path, description = "Host name."), RangeDoc),
    responses(
        (status = 200, description = "The host page's data.", body = HostData),
        (status = 400, description = "A bad range.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such host.", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RangeParams>,
) -> Result<Json<HostData>, ApiError> {
    let r = q.resolve_overview(Utc::now(), "1h")?;
    Ok(Json(load(&st, &name, r).await?))
}
