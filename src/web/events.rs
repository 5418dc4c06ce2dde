//! Hardware events: `GET /api/v1/events`, and the short labels host and GPU pages give
//! them (their meaning and recommended action come from the XID table in `model::xid`).

use axum::extract::{Query, State};
use axum::Json;
use chrono::{Duration, Utc};
use serde::Deserialize;

use super::access::Routes;
use super::auth::ApiUser;
use super::error::ApiError;
use super::range::parse_rfc3339;
use super::AppState;
use crate::store::queries::EventRow;

/// `GET /api/v1/events`.
pub fn api_routes() -> Routes {
    Routes::new().get("/api/v1/events", events)
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
    let since = parse_rfc3339("since", q.since.as_deref(), Utc::now() - Duration::days(7))?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        st.store.events(q.host.as_deref(), since, limit).await?,
    ))
}
