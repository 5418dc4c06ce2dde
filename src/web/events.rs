//! Hardware events: `GET /api/v1/events`, and the short labels host and GPU pages give
//! them (their meaning and recommended action come from the XID table in `model::xid`).

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
use crate::store::queries::EventRow;

/// `GET /api/v1/events`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(events))
}

/// A short label: `XID 79`, `ECC (double-bit)`.
pub fn title(kind: &str, code: i64) -> String {
    match kind {
        "xid" => format!("XID {code}"),
        "ecc_dbe" => "ECC double-bit".into(),
        "ecc_sbe" => "ECC single-bit".into(),
        "row_remap_failure" => "Row remap failed".into(),
        "row_remap_pending" => "Row remap pending".into(),
        "thermal_throttle" => "Thermal throttle".into(),
        "power_brake" => "Power brake".into(),
        "gpu_lost" => "GPU lost".into(),
        other => other.to_string(),
    }
}

/// Which events to return.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Host name (default or empty: all hosts; an unknown host is a 404).
    host: Option<String>,
    /// A GPU of `host` by index, 0–255 (needs `host`): that GPU's events and the host's
    /// own (GPU-less) ones, as the GPU's page lists them.
    gpu: Option<i16>,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default 7 days ago).
    #[param(example = "2026-11-16T00:00:00Z")]
    since: Option<String>,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC (default: now): events at or before it. With
    /// `until` more than 7 days back, give `since` too.
    #[param(example = "2026-11-17T00:00:00Z")]
    until: Option<String>,
    /// Most events returned, 1–10000 (default 1000; larger values are capped). A full
    /// answer has a `Link: <…>; rel="next"` header to the events after its last one.
    limit: Option<i64>,
    /// Where the answer before stopped: the cursor in its `Link` header (follow that link
    /// as it is). Every event comes once, however many share an instant.
    after: Option<String>,
}

/// Where a page of events stopped: the key of its last event, in the answer's order.
#[derive(Debug, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    ts: DateTime<Utc>,
    host: String,
    gpu: i16,
    kind: String,
    code: i64,
}

impl Cursor {
    fn of(e: &EventRow) -> Cursor {
        Cursor {
            ts: e.ts,
            host: e.host_name.clone(),
            gpu: e.index.unwrap_or(-1),
            kind: e.kind.clone(),
            code: e.code,
        }
    }
}

/// Hardware events, newest first (then by host, GPU, kind and code).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "The events.", body = Vec<EventRow>, headers(
            ("Link" = String, description = "On a full answer (`limit` events): `</api/v1/events?…&after=…>; rel=\"next\"`, the next page.")
        )),
        (status = 400, description = "A bad time, limit or GPU index, or `gpu` without `host`.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such host.", body = ErrorBody),
    )
)]
pub async fn events(
    State(st): State<AppState>,
    _u: ApiUser,
    uri: Uri,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let asked_at = Utc::now();
    let since = parse_rfc3339("since", q.since.as_deref(), asked_at - Duration::days(7))?;
    let until = q
        .until
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| parse_rfc3339("until", Some(u), since))
        .transpose()?;
    if let Some(u) = until.filter(|u| *u < since) {
        return Err(ApiError::BadRequest(format!(
            "`until` ({}) is before `since` ({}): nothing can match",
            u.to_rfc3339(),
            since.to_rfc3339()
        )));
    }
    let limit = super::params::limit(q.limit, 1000, 10_000)?;
    // As on the anomalies endpoint: an empty `host` is every host, an unknown one a 404
    // (not an empty list, which would read as a host without events).
    let host = q.host.as_deref().filter(|h| !h.is_empty());
    if let Some(h) = host {
        if st.store.host_latest(h).await?.is_none() {
            return Err(ApiError::NotFound(format!("no host named {h:?}")));
        }
    }
    let gpu = match (q.gpu, host) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::BadRequest(
                "`gpu` needs `host`: a GPU index names a GPU only on its host".into(),
            ))
        }
        (Some(g), Some(_)) if !(0..=255).contains(&g) => {
            return Err(ApiError::BadRequest(format!(
                "`gpu` is a GPU index, 0–255 (got {g})"
            )))
        }
        (Some(g), Some(_)) => Some(g),
    };
    let after: Option<Cursor> = q.after.as_deref().map(super::params::cursor).transpose()?;
    let rows = st
        .store
        .events(
            host,
            gpu,
            since,
            until,
            after
                .as_ref()
                .map(|c| (c.ts, c.host.as_str(), c.gpu, c.kind.as_str(), c.code)),
            limit,
        )
        .await?;
    let next = match rows.last() {
        Some(last) if rows.len() as i64 == limit => Some(super::params::next_page(
            &uri,
            &Cursor::of(last),
            &[
                ("since", rfc3339(since)),
                ("until", rfc3339(until.unwrap_or(asked_at))),
                ("limit", limit.to_string()),
            ],
        )),
        _ => None,
    };
    Ok(super::params::with_next(
        Json(rows).into_response(),
        next.as_deref(),
    ))
}
