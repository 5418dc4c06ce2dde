//! `GET /api/v1/forecasts`: the latest hourly forecasts per pool and host.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::ApiUser;
use super::error::{ApiError, ErrorBody};
use super::params::ApiQuery;
use super::AppState;
use crate::analytics::forecast::StoredForecast;

/// `GET /api/v1/forecasts`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(forecasts))
}

/// Which forecasts to return (each filter optional).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// `pool` or `host`.
    #[param(example = "pool")]
    scope: Option<String>,
    /// Pool or host name.
    key: Option<String>,
    /// `gpu_util_pct`, `gpu_power_watts`, `disk_used_bytes` or (pools) `demand_gpus`.
    #[param(example = "gpu_util_pct")]
    metric: Option<String>,
}

/// The latest hourly forecasts per pool and host, next 7 days, with 80 % / 95 %
/// intervals.
///
/// Refreshed hourly from up to 28 days of hourly history; each series gets the model that
/// did best on a backtest of its own last days.
#[utoipa::path(
    get,
    path = "/api/v1/forecasts",
    tag = "forecasts",
    params(ForecastQuery),
    responses(
        (status = 200, description = "The forecasts.", body = Vec<StoredForecast>),
        (status = 400, description = "Unknown scope or metric, or `demand_gpus` with `scope=host` (it is forecast for pools only).", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "`key` names no pool or host (of `scope`); one without a forecast yet gets an empty list.", body = ErrorBody),
    )
)]
pub async fn forecasts(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> Result<Json<Vec<StoredForecast>>, ApiError> {
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
    if q.scope.as_deref() == Some("host") && q.metric.as_deref() == Some("demand_gpus") {
        return Err(ApiError::BadRequest(
            "metric \"demand_gpus\" is forecast for pools only (scope=pool)".into(),
        ));
    }
    let found = st
        .store
        .forecasts(q.scope.as_deref(), q.key.as_deref(), q.metric.as_deref())
        .await?;
    // No forecast yet is an empty list; a key that names nothing is a 404, as elsewhere.
    if let Some(key) = q.key.as_deref().filter(|_| found.is_empty()) {
        let scope = q.scope.as_deref();
        let host = scope != Some("pool") && st.store.host_latest(key).await?.is_some();
        let pool = scope != Some("host") && st.store.pool_names().await?.iter().any(|p| p == key);
        if !host && !pool {
            return Err(ApiError::NotFound(format!(
                "no {} named {}",
                scope.unwrap_or("pool or host"),
                crate::model::validate::quoted(key)
            )));
        }
    }
    Ok(Json(found))
}
