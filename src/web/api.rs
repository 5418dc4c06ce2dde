//! JSON read API. Accepts a session cookie or HTTP Basic credentials.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::auth::{require, ApiUser};
use super::data;
use super::error::ApiError;
use super::range::RangeParams;
use super::AppState;
use crate::store::auth::{Role, TokenInfo, UserInfo};
use crate::store::queries::{EventRow, HostLatest};

pub async fn hosts(
    State(st): State<AppState>,
    _u: ApiUser,
) -> Result<Json<Vec<HostLatest>>, ApiError> {
    Ok(Json(st.store.hosts_latest().await?))
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Longest range the raw-samples endpoint serves in one request.
const MAX_RAW_RANGE_HOURS: i64 = 24;

fn parse_time(
    field: &str,
    v: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "`{field}` = {s:?} is not an RFC 3339 time (like 2026-11-23T12:00:00Z): {e}"
                ))
            }),
    }
}

pub async fn host_samples(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = Utc::now();
    let to = parse_time("to", q.to.as_deref(), now)?;
    let from = parse_time("from", q.from.as_deref(), to - Duration::hours(1))?;
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

#[derive(Deserialize)]
pub struct EventsQuery {
    host: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

pub async fn events(
    State(st): State<AppState>,
    _u: ApiUser,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventRow>>, ApiError> {
    let since = parse_time("since", q.since.as_deref(), Utc::now() - Duration::days(7))?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        st.store.events(q.host.as_deref(), since, limit).await?,
    ))
}

#[derive(Deserialize)]
pub struct ForecastQuery {
    scope: Option<String>,
    key: Option<String>,
    metric: Option<String>,
}

/// `GET /api/v1/forecasts?scope=pool|host&key=NAME&metric=gpu_util_pct|gpu_power_watts`:
/// the latest hourly forecasts with 80 %/95 % intervals and the model's backtest MASE.
pub async fn forecasts(
    State(st): State<AppState>,
    _u: ApiUser,
    Query(q): Query<ForecastQuery>,
) -> Result<Json<Vec<crate::analytics::forecast::StoredForecast>>, ApiError> {
    if let Some(s) = q.scope.as_deref() {
        if s != "pool" && s != "host" {
            return Err(ApiError::BadRequest(format!(
                "scope {s:?}: use pool or host"
            )));
        }
    }
    if let Some(m) = q.metric.as_deref() {
        if !crate::analytics::forecast::METRICS.contains(&m) {
            return Err(ApiError::BadRequest(format!(
                "metric {m:?}: use one of {}",
                crate::analytics::forecast::METRICS.join(", ")
            )));
        }
    }
    Ok(Json(
        st.store
            .forecasts(q.scope.as_deref(), q.key.as_deref(), q.metric.as_deref())
            .await?,
    ))
}
#[derive(Deserialize)]
pub struct AnomalyQuery {
    host: Option<String>,
    from: Option<String>,
    to: Option<String>,
    min_score: Option<String>,
    anomalous: Option<String>,
    limit: Option<String>,
}

/// Longest range of anomaly scores served in one request.
const MAX_ANOMALY_RANGE_DAYS: i64 = 31;
/// Most scores in one answer.
const MAX_ANOMALY_ROWS: i64 = 10_000;

/// The answer of `GET /api/v1/anomalies`.
#[derive(serde::Serialize)]
pub struct Anomalies {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// More scores matched than `limit`; narrow the range or raise `limit`.
    truncated: bool,
    scores: Vec<crate::analytics::anomaly::StoredScore>,
    /// The models of the hosts asked about, so a host without scores says why.
    models: Vec<crate::analytics::anomaly::ModelInfo>,
}

/// `GET /api/v1/anomalies?host=NAME&from=RFC3339&to=RFC3339&min_score=X&anomalous=true&limit=N`:
/// per-minute anomaly scores with their explanations, newest first (default: the last 24 h).
pub async fn anomalies(
    State(st): State<AppState>,
    _u: ApiUser,
    Query(q): Query<AnomalyQuery>,
) -> Result<Json<Anomalies>, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let to = parse_time("to", q.to.as_deref(), Utc::now())?;
    let from = parse_time("from", q.from.as_deref(), to - Duration::hours(24))?;
    if from >= to {
        return bad("`from` must be before `to`".into());
    }
    if to - from > Duration::days(MAX_ANOMALY_RANGE_DAYS) {
        return bad(format!(
            "at most {MAX_ANOMALY_RANGE_DAYS} days of scores per request; split the range"
        ));
    }
    let min_score = match q.min_score.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<f32>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => return bad(format!("`min_score` = {s:?} is not a number ≥ 0")),
        },
    };
    let anomalous = match q.anomalous.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(s) => return bad(format!("`anomalous` = {s:?}: use true or false")),
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => 1000,
        Some(s) => match s.parse::<i64>() {
            Ok(v) if (1..=MAX_ANOMALY_ROWS).contains(&v) => v,
            _ => {
                return bad(format!(
                    "`limit` = {s:?} is not a whole number from 1 to {MAX_ANOMALY_ROWS}"
                ))
            }
        },
    };
    let host = q.host.as_deref().filter(|h| !h.is_empty());
    if let Some(h) = host {
        if st.store.host_latest(h).await?.is_none() {
            return Err(ApiError::NotFound(format!("no host named {h:?}")));
        }
    }
    let mut scores = st
        .store
        .anomaly_scores(&crate::analytics::anomaly::ScoreFilter {
            host,
            from,
            to,
            min_score,
            anomalous,
            limit: limit + 1,
        })
        .await?;
    let truncated = scores.len() as i64 > limit;
    scores.truncate(limit as usize);
    Ok(Json(Anomalies {
        from,
        to,
        truncated,
        scores,
        models: st.store.anomaly_models(host).await?,
    }))
}

/// Fleet page data: KPIs and every GPU as a heatmap cell.
pub async fn fleet(
    State(st): State<AppState>,
    _u: ApiUser,
    Query(q): Query<RangeParams>,
) -> Result<Json<data::FleetData>, ApiError> {
    let metric = data::Metric::parse(q.metric.as_deref())?;
    Ok(Json(data::fleet(&st, metric).await?))
}

/// Host page data.
pub async fn host(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(name): Path<String>,
    Query(q): Query<RangeParams>,
) -> Result<Json<data::HostData>, ApiError> {
    let r = q.resolve_overview(Utc::now(), "1h")?;
    Ok(Json(data::host(&st, &name, r).await?))
}

/// GPU page data.
pub async fn gpu(
    State(st): State<AppState>,
    _u: ApiUser,
    Path((name, index)): Path<(String, i16)>,
    Query(q): Query<RangeParams>,
) -> Result<Json<data::GpuData>, ApiError> {
    let r = q.resolve(Utc::now(), "1h")?;
    Ok(Json(data::gpu(&st, &name, index, r).await?))
}

/// Rack page data.
pub async fn rack(
    State(st): State<AppState>,
    _u: ApiUser,
    Path((site, rack)): Path<(String, String)>,
    Query(q): Query<RangeParams>,
) -> Result<Json<data::RackData>, ApiError> {
    let r = q.resolve_overview(Utc::now(), "1h")?;
    let metric = data::Metric::parse(q.metric.as_deref())?;
    Ok(Json(data::rack(&st, &site, &rack, r, metric).await?))
}

/// Inventory page data.
pub async fn inventory(
    State(st): State<AppState>,
    _u: ApiUser,
    Query(q): Query<RangeParams>,
) -> Result<Json<data::InventoryData>, ApiError> {
    Ok(Json(
        data::inventory(&st, q.q.as_deref().unwrap_or("")).await?,
    ))
}

/// Users (admins only).
pub async fn users(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_users().await?))
}

/// Agent tokens without secrets (admins only).
pub async fn tokens(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_tokens().await?))
}

/// The OpenAPI 3.1 description of this API (hand-written; a test checks real responses
/// against it).
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_document_lists_every_feature() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let names: Vec<&str> = doc["components"]["schemas"]["AnomalyExplanation"]["properties"]
            ["metric"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            crate::analytics::anomaly::FEATURES
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        );
    }
}
