//! The HTTP surface: dashboard pages, the JSON API, ingest, health and metrics.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod charts;
pub mod data;
pub mod energy;
pub mod error;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod pages;
pub mod range;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::store::Store;
use metrics::Metrics;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Wakes the alert evaluator when hardware events arrive (the fast lane).
    pub alert_wakeup: Arc<tokio::sync::Notify>,
    pub login_limiter: Arc<auth::LoginLimiter>,
}

impl AppState {
    /// State for a server on `store` with `cfg`.
    pub fn new(store: Store, cfg: Arc<Config>) -> AppState {
        AppState {
            store,
            cfg,
            metrics: Arc::new(Metrics::default()),
            alert_wakeup: Arc::new(tokio::sync::Notify::new()),
            login_limiter: Arc::new(auth::LoginLimiter::default()),
        }
    }
}

/// All routes in one readable list.
pub fn router(state: AppState) -> Router {
    let ingest_limit = state.cfg.server.max_body_bytes;
    Router::new()
        .route("/", get(pages::fleet))
        .route("/hosts/{name}", get(pages::host))
        .route("/alerts", get(alerts::page))
        .route("/alerts/ack", post(alerts::acknowledge))
        .route("/silences", post(alerts::silence))
        .route("/silences/expire", post(alerts::expire))
        .route("/api/v1/alerts", get(alerts::api))
        .route("/api/v1/forecasts", get(api::forecasts))
        .route("/api/v1/anomalies", get(api::anomalies))
        .route("/hosts/{name}/gpus/{index}", get(pages::gpu))
        .route("/racks/{site}/{rack}", get(pages::rack))
        .route("/inventory", get(pages::inventory))
        .route("/energy", get(energy::page))
        .route("/energy/reports/{file}", get(energy::file))
        .route("/api/v1/energy/weekly", get(energy::api))
        .route("/api/v1/facility/readings", post(energy::readings))
        .route("/admin", get(admin::page))
        .route("/admin/users", post(admin::create_user))
        .route("/admin/users/{id}/delete", post(admin::delete_user))
        .route("/admin/tokens", post(admin::create_token))
        .route("/admin/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/login", get(auth::login_form).post(auth::login_submit))
        .route("/logout", post(auth::logout))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/hosts", get(api::hosts))
        .route("/api/v1/hosts/{name}/samples", get(api::host_samples))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/fleet", get(api::fleet))
        .route("/api/v1/hosts/{name}", get(api::host))
        .route("/api/v1/hosts/{name}/gpus/{index}", get(api::gpu))
        .route("/api/v1/racks/{site}/{rack}", get(api::rack))
        .route("/api/v1/inventory", get(api::inventory))
        .route("/api/v1/admin/users", get(api::users))
        .route("/api/v1/admin/tokens", get(api::tokens))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/assets/app.js", get(app_js))
        .merge(ingest::api(ingest_limit))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// The pages' one script, compiled into the binary.
const APP_JS: &str = include_str!("../../assets/app.js");

async fn app_js() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        APP_JS,
    )
}

/// What every response says to browsers: scripts only from this server (no inline or
/// injected ones), no framing (the forms acknowledge alerts and mint tokens), no MIME
/// sniffing, no full URLs in Referer headers to other sites. Inline styles stay allowed:
/// pages and the printable energy report carry their CSS inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// HSTS for deployments behind TLS (`server.secure_cookies`): browsers keep to HTTPS for a
/// year. Never sent on plain HTTP setups, where it would lock browsers out.
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

async fn security_headers(
    State(st): State<AppState>,
    mut res: axum::response::Response,
) -> axum::response::Response {
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k)
            .or_insert(axum::http::HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    if st.cfg.server.secure_cookies {
        set(
            h,
            header::STRICT_TRANSPORT_SECURITY,
            STRICT_TRANSPORT_SECURITY,
        );
    }
    res
}

/// 200 when the database answers, 503 otherwise.
async fn healthz(State(st): State<AppState>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(&st.store.pool).await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}
