//! The HTTP surface: dashboard pages, the JSON API, ingest, health and metrics.

pub mod access;
pub mod admin;
pub mod alerts;
pub mod anomalies;
pub mod auth;
pub mod body;
pub mod capacity;
pub mod charts;
pub mod energy;
pub mod error;
pub mod events;
pub mod fleet;
pub mod fleet_metrics;
pub mod forecasts;
pub mod gpu;
pub mod heatmap;
pub mod host;
pub mod ingest;
pub mod inventory;
pub mod limit;
pub mod linger;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod params;
pub mod proxy;
pub mod rack;
pub mod range;
pub mod remote_write;
pub mod serve;
pub mod tls;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::Router;
use tower_http::compression::Predicate;
use utoipa::OpenApi as _;

use crate::config::Config;
use crate::model::telemetry::Telemetry;
use crate::store::Store;
use access::Routes;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cfg: Arc<Config>,
    /// The server's counters and histograms, exposed on `/metrics`.
    pub metrics: Arc<Telemetry>,
    /// Wakes the alert evaluator when hardware events arrive (the fast lane).
    pub alert_wakeup: Arc<tokio::sync::Notify>,
    pub login_limiter: Arc<auth::LoginLimiter>,
    /// The periodic jobs' last runs (filled on the job leader).
    pub jobs: Arc<crate::model::jobs::JobBoard>,
    /// Connection counters of the server loop.
    pub connections: Arc<serve::ConnStats>,
    /// Ingest requests being processed (`server.ingest_concurrency`).
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Memory for inflated ingest bodies (`server.inflate_budget_bytes`).
    pub inflate_budget: crate::ingest::InflateBudget,
    /// Password checks running or waiting (`server.password_checks`).
    pub password_slots: Arc<tokio::sync::Semaphore>,
    /// The threads that run them.
    pub passwords: Arc<crate::store::auth::PasswordPool>,
    /// Ingest requests per agent token or certificate (`ingest.token_rate_per_sec`);
    /// `None` when off.
    pub ingest_limiter: Option<Arc<limit::Buckets<[u8; 16]>>>,
    /// Samples stored per agent token or certificate (`ingest.token_samples_per_sec`);
    /// `None` when off.
    pub ingest_volume: Option<Arc<limit::Buckets<[u8; 16]>>>,
    /// Samples sent per remote-write token (`ingest.remote_write_samples_per_sec`);
    /// `None` when off.
    pub remote_write_volume: Option<Arc<limit::Buckets<[u8; 16]>>>,
    /// Ingest and remote-write uploads in flight per token or certificate, so one caller
    /// cannot hold every ingest slot.
    pub uploads: Arc<limit::InFlight<[u8; 16]>>,
    /// Large answers being built or sent ([`body::BULK_ANSWERS`]).
    pub bulk_answers: Arc<tokio::sync::Semaphore>,
    /// Sign-on by an authenticating proxy (`server.auth_proxy`).
    pub proxy: Arc<proxy::ProxySignOn>,
    /// `access.refused` audit rows per user: a burst of 20, then one per 10 s, so a
    /// viewer's script cannot flood the audit trail.
    pub refusal_audit: Arc<limit::Buckets<[u8; 16]>>,
    /// Remote write's memory between requests (counters' previous points, XID codes).
    pub remote_write: Arc<crate::ingest::remote_write::SeriesState>,
    /// Scheduler queue reports per pool: a burst of 60 (an hour of minutely reports
    /// caught up after an outage), then one a second.
    pub queue_reports: Arc<limit::Buckets<[u8; 16]>>,
    /// Weekly energy reports of complete weeks, built in the last minutes.
    pub energy_reports: Arc<energy::ReportCache>,
}

impl AppState {
    /// State for a server on `store` with `cfg`.
    pub fn new(store: Store, cfg: Arc<Config>) -> AppState {
        AppState {
            store,
            metrics: Arc::new(Telemetry::new()),
            alert_wakeup: Arc::new(tokio::sync::Notify::new()),
            login_limiter: Arc::new(auth::LoginLimiter::default()),
            jobs: Default::default(),
            connections: Default::default(),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(cfg.server.ingest_concurrency)),
            inflate_budget: crate::ingest::InflateBudget::new(cfg.server.inflate_budget_bytes),
            password_slots: Arc::new(tokio::sync::Semaphore::new(cfg.server.password_checks)),
            passwords: Arc::new(crate::store::auth::PasswordPool::new(
                cfg.server.password_checks,
            )),
            proxy: Arc::new(proxy::ProxySignOn::new(&cfg.server.auth_proxy)),
            energy_reports: Default::default(),
            ingest_limiter: (cfg.ingest.token_rate_per_sec > 0.0).then(|| {
                Arc::new(limit::Buckets::new(
                    cfg.ingest.token_rate_per_sec,
                    f64::from(cfg.ingest.token_burst),
                ))
            }),
            ingest_volume: (cfg.ingest.token_samples_per_sec > 0.0).then(|| {
                Arc::new(limit::Buckets::new(
                    cfg.ingest.token_samples_per_sec,
                    f64::from(cfg.ingest.token_samples_burst),
                ))
            }),
            remote_write_volume: (cfg.ingest.remote_write_samples_per_sec > 0.0).then(|| {
                Arc::new(limit::Buckets::new(
                    cfg.ingest.remote_write_samples_per_sec,
                    f64::from(cfg.ingest.remote_write_samples_burst),
                ))
            }),
            refusal_audit: Arc::new(limit::Buckets::new(0.1, 20.0)),
            queue_reports: Arc::new(limit::Buckets::new(1.0, 60.0)),
            remote_write: Default::default(),
            uploads: Default::default(),
            bulk_answers: Arc::new(tokio::sync::Semaphore::new(body::BULK_ANSWERS)),
            cfg,
        }
    }
}

/// Every route: the pages, the API, ingest and the server's own endpoints, behind the
/// standard layers. An unknown path answers 404 as a page, or as JSON under `/api/`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes behind the same layers. The server passes none; tests
/// add handlers that stall or panic, to see what the layers make of them.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
    let s = &state.cfg.server;
    let body_timeout = std::time::Duration::from_secs(s.body_timeout_secs);
    let request_timeout = std::time::Duration::from_secs(s.request_timeout_secs);
    routes(&state)
        .merge(extra)
        // Who may call what: each route's row of the authorization table, before its
        // handler (routes without a row, such as `extra`'s, pass through).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::enforce,
        ))
        .fallback(not_found)
        // Innermost: a panicking handler becomes a 500 and the connection lives on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(panic_as_page))
        .layer(axum::middleware::from_fn(plain_errors))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            security_headers,
        ))
        .layer(compression())
        // A small body a handler refused without reading is read before the answer, so
        // the client sees the answer instead of a broken pipe (inside the body timeout).
        .layer(axum::middleware::from_fn(linger::linger))
        // A body that stalls, or a request that takes too long in all, ends with 408.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            s.request_timeout_secs,
            timed_out,
        ))
        // Outermost: credentials are marked sensitive before anything can print them
        // (a header marked so shows as "Sensitive" in debug output and traces).
        .layer(
            tower_http::sensitive_headers::SetSensitiveHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                header::SET_COOKIE,
            ]),
        )
        .with_state(state)
}

/// Every route, without the layers: the pages, the API (built with its document),
/// ingest, and the server's own endpoints.
pub fn routes(state: &AppState) -> Router<AppState> {
    let (api, _document) = api_router().split_for_parts();
    let own: Router<AppState> = Routes::new()
        .get("/healthz", healthz)
        .get("/metrics", metrics::metrics)
        .get("/metrics/fleet", fleet_metrics::fleet_metrics)
        .get("/assets/app.js", app_js)
        .get("/favicon.ico", icon)
        .get("/assets/icon.svg", icon)
        .into();
    Router::new()
        .merge(Router::<AppState>::from(page_router()).route_layer(
            axum::middleware::from_fn_with_state(state.clone(), metrics::time_page),
        ))
        .merge(api)
        .merge(own)
}

/// gzip or brotli, as the client asks, for pages and JSON: the fleet page's HTML
/// compresses about 10:1. Below 1 KiB a response fits one packet anyway, and Parquet
/// files are compressed already.
fn compression() -> tower_http::compression::CompressionLayer<impl Predicate> {
    use tower_http::compression::predicate::{NotForContentType, SizeAbove};
    let when = SizeAbove::new(1024)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
        .and(NotForContentType::const_new(
            crate::report::export::Format::Parquet.content_type(),
        ));
    tower_http::compression::CompressionLayer::new().compress_when(when)
}

/// The timeout layer answers 408 with no body; an API client gets the error body the
/// document promises, naming the limit.
async fn timed_out(
    State(secs): State<u64>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let api = req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    if api
        && res.status() == StatusCode::REQUEST_TIMEOUT
        && !res.headers().contains_key(header::CONTENT_TYPE)
    {
        return (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(error::ErrorBody {
                error: format!(
                    "the request took longer than {secs} s (server.request_timeout_secs)"
                ),
            }),
        )
            .into_response();
    }
    res
}

/// The framework's own refusals (a path segment that is not UTF-8 or not a number, a
/// query it cannot split) answer in plain text; the API promises its JSON error body and
/// people get the error page. The text is kept: it says what was wrong.
async fn plain_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let api = path.starts_with("/api/");
    let page = !api
        && !["/metrics", "/healthz", "/assets/", "/favicon.ico"]
            .iter()
            .any(|p| path.starts_with(p));
    let res = next.run(req).await;
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if !(api || page) || !plain || !res.status().is_client_error() {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let text = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_string()
    } else {
        text
    };
    let e = match parts.status {
        StatusCode::NOT_FOUND => error::ApiError::NotFound(text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => error::ApiError::UnsupportedMedia(text),
        StatusCode::PAYLOAD_TOO_LARGE => error::ApiError::TooLarge(text),
        StatusCode::UNAUTHORIZED => error::ApiError::Unauthorized(text),
        StatusCode::FORBIDDEN => error::ApiError::Forbidden(text),
        StatusCode::METHOD_NOT_ALLOWED => error::ApiError::MethodNotAllowed(text),
        StatusCode::CONFLICT => error::ApiError::Conflict(text),
        _ => error::ApiError::BadRequest(text),
    };
    let mut out = if api {
        e.into_response()
    } else {
        error::error_page(e)
    };
    // The status as the framework chose it (a 422 stays 422), and its Allow header.
    *out.status_mut() = parts.status;
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// Marks the answer to a request whose handler panicked.
#[derive(Clone, Copy)]
struct Panicked;

/// A handler panicked: one log line, and a 500 with the API's error body (people get
/// the error page from [`panic_as_page`]).
fn panicked(payload: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    tracing::error!("a handler panicked ({what}); answered 500");
    let mut res = (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(error::ErrorBody {
            error: "internal error".into(),
        }),
    )
        .into_response();
    res.extensions_mut().insert(Panicked);
    res
}

/// The error page, instead of JSON, for a panic outside `/api/`.
async fn panic_as_page(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let api = req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    if !api && res.extensions().get::<Panicked>().is_some() {
        return error::error_page(error::ApiError::Internal(anyhow::anyhow!("panic")));
    }
    res
}

/// The pages people look at, by resource. Errors answer as HTML pages.
fn page_router() -> Routes {
    Routes::new()
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

/// The JSON API (`/api/v1/…`) by resource, ingest included: each route registered with
/// its documented handler, so this one list builds the router and the OpenAPI document.
/// Each is checked against its row of [`access::ROUTES`] as it is registered.
/// Errors answer as JSON.
pub fn api_router() -> Routes {
    Routes::with_openapi(openapi::ApiDoc::openapi())
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
        .merge(ingest::api_routes())
        .merge(remote_write::api_routes())
        .merge(openapi::api_routes())
}

/// 404 for a path no route knows: JSON for API clients, a page for people.
async fn not_found(
    State(st): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let e = error::ApiError::NotFound(format!(
        "no such page or endpoint: {}{}",
        uri.path(),
        where_instead(uri.path())
    ));
    if wants_json(uri.path(), &headers) {
        return e.into_response();
    }
    let page = error::PageError(e).into_response();
    // A signed-in browser keeps its header (a session only: no password is checked for
    // a page that does not exist).
    let idle = chrono::Duration::seconds(st.cfg.server.session_idle_secs);
    match auth::cookie(&headers, auth::SESSION_COOKIE) {
        Some(secret) => match st.store.session_user(secret, idle).await {
            Ok(Some(u)) => error::with_nav(page, &u, &headers),
            _ => page,
        },
        None => page,
    }
}

/// Where a list someone looks for by its obvious address is: hosts, racks, pools,
/// events, anomalies and forecasts have no list page of their own.
fn where_instead(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/hosts" | "/racks" | "/sites" | "/gpus" => {
            " (hosts, racks and sites are on the fleet page, /, and in the inventory, /inventory)"
        }
        "/pools" | "/capacity/pools" => " (pools are on the capacity page, /capacity)",
        "/events" | "/anomalies" | "/forecasts" => {
            " (a host's events, anomalies and forecasts are on its page; the fleet's in the API, /api/v1/events, /api/v1/anomalies and /api/v1/forecasts)"
        }
        _ => "",
    }
}

/// An unknown path is answered as JSON when it looks like the API's (`/api`, `//api/…`,
/// `/API/…`) or the client asks for JSON and not HTML; else as a page.
fn wants_json(path: &str, headers: &axum::http::HeaderMap) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    first.eq_ignore_ascii_case("api")
        || (accept.contains("application/json") && !accept.contains("text/html"))
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

/// The tab icon: a rack of four GPUs, one of them hot (SVG; browsers take it for
/// `/favicon.ico` as well, so no request of a page fails).
const ICON_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#1b1f24"/><rect x="3" y="2.5" width="10" height="2" fill="#009E73"/><rect x="3" y="5.5" width="10" height="2" fill="#009E73"/><rect x="3" y="8.5" width="10" height="2" fill="#E69F00"/><rect x="3" y="11.5" width="10" height="2" fill="#009E73"/></svg>"##;

async fn icon() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        ICON_SVG,
    )
}

/// What every response says to browsers: scripts only from this server (no inline or
/// injected ones), no framing (the forms acknowledge alerts and mint tokens), no MIME
/// sniffing, no full URLs in Referer headers to other sites. Inline styles stay allowed:
/// pages and the printable energy report carry their CSS inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// HSTS for deployments behind TLS (`server.secure_cookies` or `server.tls`): browsers keep to HTTPS for a
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
    if st.cfg.server.https_only() {
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
    match sqlx::query_scalar!("SELECT 1 AS alive")
        .fetch_one(&st.store.pool)
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}
