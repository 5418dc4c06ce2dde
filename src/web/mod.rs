//! The HTTP surface: dashboard pages, the JSON API, ingest, health and metrics.

pub mod admin;
pub mod alerts;
pub mod anomalies;
pub mod auth;
pub mod capacity;
pub mod charts;
pub mod energy;
pub mod error;
pub mod events;
pub mod fleet;
pub mod forecasts;
pub mod gpu;
pub mod heatmap;
pub mod host;
pub mod ingest;
pub mod inventory;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod rack;
pub mod range;
pub mod serve;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
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
    /// The periodic jobs' last runs (filled on the job leader).
    pub jobs: Arc<crate::model::jobs::JobBoard>,
    /// Connection counters of the server loop.
    pub connections: Arc<serve::ConnStats>,
    /// Ingest requests being processed (`server.ingest_concurrency`).
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Password checks running or waiting (`server.password_checks`).
    pub password_slots: Arc<tokio::sync::Semaphore>,
    /// The threads that run them.
    pub passwords: Arc<crate::store::auth::PasswordPool>,
}

impl AppState {
    /// State for a server on `store` with `cfg`.
    pub fn new(store: Store, cfg: Arc<Config>) -> AppState {
        AppState {
            store,
            metrics: Arc::new(Metrics::default()),
            alert_wakeup: Arc::new(tokio::sync::Notify::new()),
            login_limiter: Arc::new(auth::LoginLimiter::default()),
            jobs: Default::default(),
            connections: Default::default(),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(cfg.server.ingest_concurrency)),
            password_slots: Arc::new(tokio::sync::Semaphore::new(cfg.server.password_checks)),
            passwords: Arc::new(crate::store::auth::PasswordPool::new(
                cfg.server.password_checks,
            )),
            cfg,
        }
    }
}

/// Every route: the pages, the API, ingest and the server's own endpoints, behind the
/// security headers. An unknown path answers 404 as a page, or as JSON under `/api/`.
pub fn router(state: AppState) -> Router {
    let s = &state.cfg.server;
    let body_timeout = std::time::Duration::from_secs(s.body_timeout_secs);
    let request_timeout = std::time::Duration::from_secs(s.request_timeout_secs);
    Router::new()
        .merge(page_router())
        .merge(api_router())
        .merge(ingest::api())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/assets/app.js", get(app_js))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            security_headers,
        ))
        // A body that stalls, or a request that takes too long in all, ends with 408.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

/// The pages people look at, by resource. Errors answer as HTML pages.
fn page_router() -> Router<AppState> {
    Router::new()
        .merge(fleet::page_routes())
        .merge(rack::page_routes())
        .merge(host::page_routes())
        .merge(gpu::page_routes())
        .merge(inventory::page_routes())
        .merge(capacity::page_routes())
        .merge(alerts::page_routes())
        .merge(energy::page_routes())
        .merge(admin::page_routes())
        .merge(auth::page_routes())
}

/// The JSON API (`/api/v1/…`), by resource. Errors answer as JSON.
fn api_router() -> Router<AppState> {
    Router::new()
        .merge(fleet::api_routes())
        .merge(rack::api_routes())
        .merge(host::api_routes())
        .merge(gpu::api_routes())
        .merge(inventory::api_routes())
        .merge(events::api_routes())
        .merge(alerts::api_routes())
        .merge(anomalies::api_routes())
        .merge(forecasts::api_routes())
        .merge(capacity::api_routes())
        .merge(energy::api_routes())
        .merge(admin::api_routes())
        .merge(openapi::api_routes())
}

/// 404 for a path no route knows: JSON for API clients, a page for people.
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let e = error::ApiError::NotFound(format!("no such page or endpoint: {}", uri.path()));
    if uri.path().starts_with("/api/") {
        e.into_response()
    } else {
        error::PageError(e).into_response()
    }
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
