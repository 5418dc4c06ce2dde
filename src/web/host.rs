//! One host: its metrics, GPUs, hardware events, alerts and anomaly scores
//! (`/hosts/{name}`, `GET /api/v1/hosts/{name}`), the host list and raw samples.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::auth::urlencode;
use super::auth::{ApiUser, Csrf, PageUser};
use super::charts::{sparkline, Axis, Overlay, Series};
use super::error::{ApiError, PageError};
use super::page::*;
use super::range::parse_rfc3339;
use super::range::{RangeParams, TimeRange};
use super::AppState;
use crate::analytics::anomaly::{ModelInfo, ScoreFilter, ScorePoint, StoredScore};
use crate::analytics::forecast::StoredForecast;
use crate::model::format::age;
use crate::store::queries::{AlertTouching, EventRow, GpuLatest, HostLatest};
use crate::store::series::{GpuPoint, HostPoint};
use crate::store::Store;
use serde::Deserialize;

/// `/hosts/{name}`.
pub fn page_routes() -> Router<AppState> {
    Router::new().route("/hosts/{name}", get(page))
}

/// The host list, one host's page data and its raw samples.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/hosts", get(list))
        .route("/api/v1/hosts/{name}", get(json))
        .route("/api/v1/hosts/{name}/samples", get(samples))
}

/// Host page data.
#[derive(Debug, Clone, Serialize)]
pub struct HostData {
    pub host: HostLatest,
    pub range: TimeRange,
    pub gpus: Vec<GpuLatest>,
    pub host_series: Vec<HostPoint>,
    pub gpu_series: Vec<GpuPoint>,
    pub events: Vec<ExplainedEvent>,
    /// Firing, pending and recently resolved alerts of the host and its GPUs.
    pub alerts: Vec<AlertTouching>,
    /// Anomalous minutes in the range, newest first (at most [`HOST_PAGE_ANOMALIES`]).
    pub anomalies: Vec<StoredScore>,
    /// The host's anomaly model, or why it has none (empty before the job saw the host).
    pub anomaly_models: Vec<ModelInfo>,
    /// Anomaly score and level over the range, one point per pixel column (at most one
    /// per minute: scores are per minute).
    pub anomaly_series: Vec<ScorePoint>,
    /// The forecast engine's latest forecasts of the host (GPU utilization, GPU power,
    /// disk space used) for the next 7 days, with 80 / 95 % intervals.
    pub forecasts: Vec<StoredForecast>,
}

/// Anomalous minutes listed on a host page; the API has them all.
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
        store.events_between(&names, None, range.from, range.to, 200),
        store.alerts_touching(&names, now - Duration::hours(RESOLVED_RECENT_HOURS)),
        store.anomaly_scores(&filter),
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
    Ok(HostData {
        host,
        range,
        gpus: r.gpus,
        host_series: r.host_series,
        gpu_series: r.gpu_series,
        events: r.events.into_iter().map(explained).collect(),
        alerts: r.alerts,
        anomalies: r.anomalies,
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
    /// Forecasts of the next 7 days.
    pub forecasts: Vec<ChartView>,
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

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path(name): Path<String>,
    Query(q): Query<RangeParams>,
) -> Result<Response, PageError> {
    let now = Utc::now();
    let r = q.resolve_overview(now, "1h")?;
    let d = load(&st, &name, r.clone()).await?;
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
            anomalies_max: HOST_PAGE_ANOMALIES,
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

async fn list(State(st): State<AppState>, _u: ApiUser) -> Result<Json<Vec<HostLatest>>, ApiError> {
    Ok(Json(st.store.hosts_latest().await?))
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Longest range the raw-samples endpoint serves in one request.
const MAX_RAW_RANGE_HOURS: i64 = 24;

async fn samples(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    let (hs, gs) = st.store.host_samples(&name, from, to).await?;
    Ok(Json(
        serde_json::json!({ "host": name, "from": from, "to": to, "host_samples": hs, "gpu_samples": gs }),
    ))
}

/// Host page data.
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    Query(q): Query<RangeParams>,
) -> Result<Json<HostData>, ApiError> {
    let r = q.resolve_overview(Utc::now(), "1h")?;
    Ok(Json(load(&st, &name, r).await?))
}
