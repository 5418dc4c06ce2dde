//! `GET /api/v1/anomalies`: per-minute anomaly scores with their explanations.

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::ApiUser;
use super::error::{ApiError, ErrorBody};
use super::params::{rfc3339, ApiQuery};
use super::range::parse_rfc3339;
use super::AppState;

/// `GET /api/v1/anomalies`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(anomalies))
}

/// Which scores to return. Read as text and checked here, so a bad value gets a message
/// that names it.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnomalyQuery {
    /// Host name (default or empty: the hosts in the fleet, not those taken out of it;
    /// an unknown host is a 404).
    host: Option<String>,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default `to` − 24 h); minutes at or after it.
    #[param(example = "2026-11-22T12:00:00Z")]
    from: Option<String>,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default now); minutes before it; at most 31
    /// days after `from`.
    to: Option<String>,
    /// Only scores at or above this.
    #[param(value_type = Option<f32>, minimum = 0)]
    min_score: Option<String>,
    /// true: only minutes above their alert level; false: only the others.
    #[param(value_type = Option<bool>)]
    anomalous: Option<String>,
    /// Most scores returned, 1–10000 (default 1000; larger values are capped).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
    /// Where the answer before stopped: the cursor of its `next` link (follow that link as
    /// it is).
    after: Option<String>,
}

/// Where a page of scores stopped: its last (minute, host).
#[derive(serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    ts: DateTime<Utc>,
    host: String,
}

/// Longest range of anomaly scores served in one request.
const MAX_ANOMALY_RANGE_DAYS: i64 = 31;

/// Most scores in one answer.
const MAX_ANOMALY_ROWS: i64 = 10_000;

/// The answer of `GET /api/v1/anomalies`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Anomalies {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// More scores matched than `limit`: `next` has them.
    truncated: bool,
    /// The next page (this request with `after` set), when `truncated`; also sent as
    /// `Link: <…>; rel="next"`.
    next: Option<String>,
    /// Newest first.
    scores: Vec<crate::analytics::anomaly::StoredScore>,
    /// The models of the hosts asked about, so a host without scores says why.
    models: Vec<crate::analytics::anomaly::ModelInfo>,
}

/// Per-minute anomaly scores of hosts with their explanations, newest first, and the
/// hosts' models.
///
/// Every host is scored once a minute against a model of its own normal behaviour
/// (trained on its 1-minute rollups, retrained daily). A host without scores is listed in
/// `models` with the reason (e.g. status `insufficient_history`).
#[utoipa::path(
    get,
    path = "/api/v1/anomalies",
    tag = "anomalies",
    params(AnomalyQuery),
    responses(
        (status = 200, description = "Scores and models.", body = Anomalies, headers(
            ("Link" = String, description = "On a truncated answer: `<next>; rel=\"next\"`, the same link as `next`.")
        )),
        (status = 400, description = "A bad parameter, named in the message.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such host.", body = ErrorBody),
    )
)]
pub async fn anomalies(
    State(st): State<AppState>,
    _u: ApiUser,
    uri: Uri,
    ApiQuery(q): ApiQuery<AnomalyQuery>,
) -> Result<Response, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let to = parse_rfc3339("to", q.to.as_deref(), Utc::now())?;
    let from = parse_rfc3339("from", q.from.as_deref(), to - Duration::hours(24))?;
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
    // As on the other list endpoints: below 1 is refused, above the most is capped.
    let limit = match q.limit.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return bad(format!(
                    "`limit` = {s:?} is not a whole number (use 1 to {MAX_ANOMALY_ROWS}; larger values are capped)"
                ))
            }
        },
    };
    let limit = super::params::limit(limit, 1000, MAX_ANOMALY_ROWS)?;
    let after: Option<Cursor> = q.after.as_deref().map(super::params::cursor).transpose()?;
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
            after: after.as_ref().map(|c| (c.ts, c.host.as_str())),
            limit: limit + 1,
        })
        .await?;
    let truncated = scores.len() as i64 > limit;
    scores.truncate(limit as usize);
    let next = match scores.last() {
        Some(last) if truncated => Some(super::params::next_page(
            &uri,
            &Cursor {
                ts: last.ts,
                host: last.host.clone(),
            },
            &[
                ("from", rfc3339(from)),
                ("to", rfc3339(to)),
                ("limit", limit.to_string()),
            ],
        )),
        _ => None,
    };
    let body = Json(Anomalies {
        from,
        to,
        truncated,
        next: next.clone(),
        scores,
        models: st.store.anomaly_models(host).await?,
    });
    Ok(super::params::with_next(
        body.into_response(),
        next.as_deref(),
    ))
}
