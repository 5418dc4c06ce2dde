//! `GET /api/v1/forecasts`: the latest hourly forecasts per pool and host.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::access::Routes;
use super::auth::ApiUser;
use super::error::ApiError;
use super::AppState;

/// `GET /api/v1/forecasts`.
pub fn api_routes() -> Routes {
    Routes::new().get("/api/v1/forecasts", forecasts)
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
