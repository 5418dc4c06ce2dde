//! Who may call which route: one table, [`ROUTES`].
//!
//! The router is built from it: every handler is registered through [`Routes`], which
//! refuses (panics at start-up) a route that has no row here, so a route cannot be added
//! without saying who may call it. [`enforce`] then checks the row's user role on every
//! request before the handler runs, and refuses state-changing requests made with a
//! session cookie from another origin or, for the JSON API, without the session's CSRF
//! token in `X-CSRF-Token`. Token-holding callers (agents, schedulers, Prometheus) are
//! checked by their handlers, which know the token's scope (an agent token writes its own
//! host only). `rackwatch routes` prints this table, `tests/it/access.rs` walks it with
//! every kind of caller, and docs/security.md shows it.

use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Router;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::auth::{self, SESSION_COOKIE};
use super::error::{ApiError, PageError};
use super::AppState;
use crate::store::auth::Role;

/// What a caller needs to call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials.
    Public,
    /// A user with at least this role (session cookie, HTTP Basic or proxy sign-on).
    User(Role),
    /// An agent token or agent certificate; it writes data for its own host only.
    AgentToken,
    /// A Prometheus remote-write token; it writes the hosts of its site or list.
    WriteToken,
    /// A pool's scheduler token (its own pool only), or an operator.
    PoolTokenOrOperator,
    /// The scrape token (`server.metrics_token`), or any user; anyone when
    /// `server.metrics_public`.
    ScrapeTokenOrUser,
}

impl Access {
    /// The short name printed by `rackwatch routes` and in docs/security.md.
    pub fn label(self) -> &'static str {
        match self {
            Access::Public => "anyone",
            Access::User(Role::Viewer) => "viewer",
            Access::User(Role::Operator) => "operator",
            Access::User(Role::Admin) => "admin",
            Access::AgentToken => "agent token or certificate (own host)",
            Access::WriteToken => "remote-write token (its hosts)",
            Access::PoolTokenOrOperator => "pool token (own pool) or operator",
            Access::ScrapeTokenOrUser => "scrape token or viewer",
        }
    }
}

/// One route and who may call it.
#[derive(Clone, Copy, Debug)]
pub struct RouteRule {
    pub method: &'static str,
    /// The path as the router spells it (`{name}` for a parameter).
    pub path: &'static str,
    pub access: Access,
    /// Whether an anonymous caller is sent to the login form (pages) rather than
    /// answered 401 (the API, downloads).
    pub login_redirect: bool,
    /// What the route is for (one line).
    pub what: &'static str,
}

const fn page(path: &'static str, role: Role, what: &'static str) -> RouteRule {
    RouteRule {
        method: "GET",
        path,
        access: Access::User(role),
        login_redirect: true,
        what,
    }
}

const fn form(path: &'static str, role: Role, what: &'static str) -> RouteRule {
    RouteRule {
        method: "POST",
        path,
        access: Access::User(role),
        login_redirect: true,
        what,
    }
}

const fn api(
    method: &'static str,
    path: &'static str,
    access: Access,
    what: &'static str,
) -> RouteRule {
    RouteRule {
        method,
        path,
        access,
        login_redirect: false,
        what,
    }
}

use Access::{AgentToken, PoolTokenOrOperator, Public, ScrapeTokenOrUser, User, WriteToken};
use Role::{Admin, Operator, Viewer};

/// Every route of the server, and who may call it.
pub const ROUTES: &[RouteRule] = &[
    api("GET", "/login", Public, "the login form"),
    api(
        "POST",
        "/login",
        Public,
        "log in (form, with the login CSRF cookie)",
    ),
    form(
        "/logout",
        Viewer,
        "log out (ends the session on the server)",
    ),
    api("GET", "/healthz", Public, "200 when the database answers"),
    api("GET", "/assets/app.js", Public, "the pages' script"),
    api("GET", "/favicon.ico", Public, "the site icon"),
    api("GET", "/assets/icon.svg", Public, "the site icon"),
    api(
        "GET",
        "/api/v1/openapi.json",
        Public,
        "the API's OpenAPI document",
    ),
    api(
        "GET",
        "/metrics",
        ScrapeTokenOrUser,
        "Prometheus metrics of the server",
    ),
    api(
        "GET",
        "/metrics/fleet",
        ScrapeTokenOrUser,
        "every GPU's latest sample, in dcgm-exporter's names",
    ),
    // Pages.
    page("/", Viewer, "fleet overview"),
    page("/racks/{site}/{rack}", Viewer, "rack page"),
    page("/hosts/{name}", Viewer, "host page"),
    form(
        "/hosts/{name}/remove",
        Admin,
        "take a host out of the fleet (revokes its agent tokens)",
    ),
    page("/hosts/{name}/gpus/{index}", Viewer, "GPU page"),
    page("/inventory", Viewer, "inventory"),
    page("/capacity", Viewer, "capacity overview"),
    page("/capacity/pools/{pool}", Viewer, "pool page"),
    page("/alerts", Viewer, "alerts, silences and history"),
    form("/alerts/ack", Operator, "acknowledge a firing alert"),
    form("/alerts/unack", Operator, "take back an acknowledgement"),
    form("/silences", Operator, "create a silence"),
    form("/silences/expire", Operator, "expire a silence"),
    page("/energy", Viewer, "energy report"),
    page("/docs/energy", Viewer, "the energy report's definitions"),
    RouteRule {
        login_redirect: false,
        ..page(
            "/energy/reports/{file}",
            Viewer,
            "a mailed energy report (download)",
        )
    },
    page("/admin", Admin, "users, tokens and jobs"),
    page("/admin/audit", Admin, "the audit trail"),
    form(
        "/admin/users",
        Admin,
        "create a user or change a role or password",
    ),
    form("/admin/users/{id}/delete", Admin, "delete a user"),
    form("/admin/tokens", Admin, "mint an agent token"),
    form("/admin/tokens/{id}/revoke", Admin, "revoke a token"),
    // The JSON API.
    api("GET", "/api/v1/fleet", User(Viewer), "fleet overview"),
    api(
        "GET",
        "/api/v1/racks/{site}/{rack}",
        User(Viewer),
        "one rack",
    ),
    api(
        "GET",
        "/api/v1/hosts",
        User(Viewer),
        "hosts and their latest sample",
    ),
    api("GET", "/api/v1/hosts/{name}", User(Viewer), "one host"),
    api(
        "DELETE",
        "/api/v1/hosts/{name}",
        User(Admin),
        "take a host out of the fleet (revokes its agent tokens)",
    ),
    api(
        "GET",
        "/api/v1/hosts/{name}/samples",
        User(Viewer),
        "a host's samples",
    ),
    api(
        "GET",
        "/api/v1/hosts/{name}/gpus/{index}",
        User(Viewer),
        "one GPU",
    ),
    api("GET", "/api/v1/inventory", User(Viewer), "inventory"),
    api("GET", "/api/v1/events", User(Viewer), "hardware events"),
    api(
        "GET",
        "/api/v1/alerts",
        User(Viewer),
        "pending and firing alerts",
    ),
    api(
        "POST",
        "/api/v1/alerts/{fingerprint}/ack",
        User(Operator),
        "acknowledge a firing alert",
    ),
    api(
        "DELETE",
        "/api/v1/alerts/{fingerprint}/ack",
        User(Operator),
        "take back an acknowledgement",
    ),
    api("GET", "/api/v1/silences", User(Viewer), "active silences"),
    api(
        "POST",
        "/api/v1/silences",
        User(Operator),
        "create a silence",
    ),
    api(
        "DELETE",
        "/api/v1/silences/{id}",
        User(Operator),
        "end a silence now",
    ),
    api("GET", "/api/v1/anomalies", User(Viewer), "anomaly scores"),
    api("GET", "/api/v1/forecasts", User(Viewer), "forecasts"),
    api("GET", "/api/v1/capacity", User(Viewer), "capacity overview"),
    api(
        "GET",
        "/api/v1/capacity/pools/{pool}",
        User(Viewer),
        "one pool",
    ),
    api(
        "GET",
        "/api/v1/capacity/recommendations",
        User(Viewer),
        "capacity recommendations",
    ),
    api(
        "GET",
        "/api/v1/energy/weekly",
        User(Viewer),
        "weekly energy figures",
    ),
    api(
        "POST",
        "/api/v1/facility/readings",
        User(Operator),
        "facility meter readings",
    ),
    api(
        "POST",
        "/api/v1/pools/{pool}/demand",
        PoolTokenOrOperator,
        "a scheduler's pending GPUs",
    ),
    api("POST", "/api/v1/ingest", AgentToken, "an agent's batch"),
    api(
        "POST",
        "/api/v1/write",
        WriteToken,
        "Prometheus remote write (dcgm-exporter, node_exporter)",
    ),
    api("GET", "/api/v1/admin/users", User(Admin), "users"),
    api(
        "GET",
        "/api/v1/admin/tokens",
        User(Admin),
        "tokens (without secrets)",
    ),
    api("GET", "/api/v1/audit", User(Admin), "the audit trail"),
];

/// The row of `method path` (the path as the router spells it).
pub fn rule(method: &str, path: &str) -> Option<&'static RouteRule> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// Routes registered against [`ROUTES`]: a handler without a row panics at start-up.
/// API handlers are registered with `routes!(handler)` through [`Routes::routes`], which
/// checks each method and path their `#[utoipa::path]` declares and adds them to the
/// OpenAPI document; pages and the server's own endpoints through [`Routes::get`] and
/// [`Routes::post`].
#[derive(Default)]
pub struct Routes(OpenApiRouter<AppState>);

impl Routes {
    pub fn new() -> Routes {
        Routes(OpenApiRouter::new())
    }

    /// Routes whose document starts from `doc` (the API's description as a whole).
    pub fn with_openapi(doc: utoipa::openapi::OpenApi) -> Routes {
        Routes(OpenApiRouter::with_openapi(doc))
    }

    pub fn get<H, T>(self, path: &'static str, h: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        check("GET", path);
        Routes(self.0.route(path, axum::routing::get(h)))
    }

    pub fn post<H, T>(self, path: &'static str, h: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        check("POST", path);
        Routes(self.0.route(path, axum::routing::post(h)))
    }

    /// A documented handler, `routes!(handler)`: every operation it declares needs a row.
    pub fn routes(self, r: UtoipaMethodRouter<AppState>) -> Routes {
        for (path, item) in &r.1.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
                ("TRACE", &item.trace),
            ] {
                if op.is_some() {
                    check(method, path);
                }
            }
        }
        Routes(self.0.routes(r))
    }

    pub fn merge(self, other: Routes) -> Routes {
        Routes(self.0.merge(other.0))
    }

    /// The router and the OpenAPI document of the documented handlers.
    pub fn split_for_parts(self) -> (Router<AppState>, utoipa::openapi::OpenApi) {
        self.0.split_for_parts()
    }

    /// The OpenAPI document of the documented handlers.
    pub fn into_openapi(self) -> utoipa::openapi::OpenApi {
        self.0.into_openapi()
    }
}

impl From<Routes> for Router<AppState> {
    fn from(r: Routes) -> Router<AppState> {
        r.0.split_for_parts().0
    }
}

fn check(method: &str, path: &str) {
    if rule(method, path).is_none() {
        panic!(
            "route {method} {path} has no row in web::access::ROUTES: add one saying who may call it"
        );
    }
}

/// The router answers a known path with another method with an empty 405 (it adds
/// `Allow` on the way out); give it the body every other error has, JSON under `/api/`,
/// else a page, naming the methods the path takes.
fn method_not_allowed(method: &Method, path: &str, api: bool) -> Response {
    let takes: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    let e = ApiError::MethodNotAllowed(format!(
        "method {method} is not allowed here; this path takes {}",
        takes.join(", ")
    ));
    if api {
        e.into_response()
    } else {
        PageError(e).into_response()
    }
}

/// A user [`enforce`] has already resolved, for the handler's extractor.
#[derive(Clone)]
pub struct Resolved(pub crate::store::auth::User);

/// Check the route's row before its handler runs (see the module comment).
/// A logged-in user tried to change something their role does not allow: recorded, as the
/// changes that succeed are (a viewer probing admin forms shows up in the audit trail).
async fn audit_refusal(
    st: &AppState,
    parts: &axum::http::request::Parts,
    u: &crate::store::auth::User,
    needs: Role,
) {
    use crate::store::audit::{Entry, Outcome};
    let key = super::ingest::limit_key(b"refused", u.name.as_bytes());
    if st.refusal_audit.take_n(key, 1.0).is_some() {
        return;
    }
    let target = format!("{} {}", parts.method, parts.uri.path());
    let entry = Entry::ok(&u.name, "access.refused", &target)
        .from(super::serve::client(&parts.extensions))
        .outcome(Outcome::Refused)
        .details(serde_json::json!({ "needs": needs.as_str(), "role": u.role.as_str() }));
    if let Err(e) = st.store.audit(entry).await {
        tracing::warn!("audit row of a refused request not written: {e}");
    }
}

pub async fn enforce(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(row) = path.and_then(|p| rule(req.method().as_str(), p.as_str())) else {
        // Only 404 and 405 answers get here (a registered route always has a row).
        let (method, api) = (req.method().clone(), req.uri().path().starts_with("/api/"));
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let resp = next.run(req).await;
        return match matched {
            Some(p) if resp.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED => {
                method_not_allowed(&method, p.as_str(), api)
            }
            _ => resp,
        };
    };
    let refuse = |e: ApiError| -> Response {
        if row.login_redirect {
            PageError(e).into_response()
        } else {
            e.into_response()
        }
    };
    let (mut parts, body) = req.into_parts();
    // Proxy sign-on first: it refuses the header from untrusted addresses, and its
    // user's CSRF basis is needed by the check below.
    if let Err(e) = super::proxy::prepare(&mut parts, &st).await {
        return refuse(e);
    }
    if row.method != "GET" {
        if let Err(e) = cookie_post_ok(&parts.headers, row) {
            return refuse(e);
        }
    }
    // A user without a pool token is held to the operator role here, so that a refusal
    // is in the audit trail as any other; the handler answers the token cases.
    if row.access == Access::PoolTokenOrOperator && super::ingest::bearer(&parts.headers).is_none()
    {
        match auth::resolve(&parts, &st).await {
            Ok(Some(u)) => {
                if let Err(e) = auth::require(&u, Role::Operator) {
                    audit_refusal(&st, &parts, &u, Role::Operator).await;
                    return refuse(e);
                }
                parts.extensions.insert(Resolved(u));
            }
            // Basic credentials that did not check out: refused here, once (the
            // handler would check them again).
            Ok(None) if super::ingest::auth_param(&parts.headers, "Basic").is_some() => {
                return refuse(auth::unauthorized(&parts.headers))
            }
            Ok(None) => {}
            Err(e) => return refuse(e),
        }
    }
    let Access::User(role) = row.access else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let user = match auth::resolve(&parts, &st).await {
        Ok(Some(u)) => {
            if let Err(e) = auth::require(&u, role) {
                if row.method != "GET" {
                    audit_refusal(&st, &parts, &u, role).await;
                }
                return super::error::with_nav(refuse(e), &u, &parts.headers);
            }
            parts.extensions.insert(Resolved(u.clone()));
            u
        }
        Ok(None) if row.login_redirect => {
            let next = match parts.method {
                Method::GET => parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
                _ => "/",
            };
            return Redirect::to(&format!("/login?next={}", auth::urlencode(next))).into_response();
        }
        Ok(None) => return refuse(auth::unauthorized(&parts.headers)),
        Err(e) => return refuse(e),
    };
    // A page's error (no such host, a bad parameter) keeps the signed-in header.
    let headers = parts.headers.clone();
    let resp = next.run(Request::from_parts(parts, body)).await;
    super::error::with_nav(resp, &user, &headers)
}

/// Header that carries the session's CSRF token on JSON API posts and deletes made with a
/// cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A state-changing request made with a session cookie (or signed on by the proxy, whose
/// credentials ride along the same way) must come from this server's own
/// pages: no foreign `Origin`, and on the JSON API the session's CSRF token in
/// [`CSRF_HEADER`] (forms carry it in their `csrf` field, which their handlers check).
/// One made with HTTP Basic credentials must not come from another site either: a
/// browser that was given the password once sends it with any site's form post. Scripts
/// and Prometheus send no `Origin`.
fn cookie_post_ok(headers: &HeaderMap, row: &RouteRule) -> Result<(), ApiError> {
    if auth::cookie(headers, SESSION_COOKIE).is_none()
        && !headers.contains_key(super::proxy::CSRF_BASIS_HEADER)
    {
        if super::ingest::auth_param(headers, "Basic").is_some() {
            auth::check_origin(headers)?;
        }
        return Ok(());
    }
    auth::check_origin(headers)?;
    if row.path.starts_with("/api/") {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let expected = auth::csrf_token(headers);
        if sent.is_empty() || !auth::same(sent, &expected) {
            return Err(ApiError::Forbidden(format!(
                "a JSON API post or delete made with a session cookie needs the session's CSRF token in the {CSRF_HEADER} header (or send HTTP Basic or a token instead of the cookie)"
            )));
        }
    }
    Ok(())
}

/// The [`CSRF_HEADER`] value for a `Cookie` header value holding a session cookie (for
/// scripts and tests that post JSON with a cookie).
pub fn csrf_for_cookie(cookie: &str) -> String {
    let mut h = HeaderMap::new();
    if let Ok(v) = cookie.parse() {
        h.insert(header::COOKIE, v);
    }
    auth::csrf_token(&h)
}

/// The table as text, for `rackwatch routes`.
pub fn table() -> String {
    let w = ROUTES.iter().map(|r| r.path.len()).max().unwrap_or(0);
    let mut out = format!(
        "{:<6} {:<w$}  {:<38} {}\n",
        "METHOD", "PATH", "WHO MAY CALL IT", "WHAT"
    );
    for r in ROUTES {
        out.push_str(&format!(
            "{:<6} {:<w$}  {:<38} {}\n",
            r.method,
            r.path,
            r.access.label(),
            r.what
        ));
    }
    out
}

/// The kinds of caller the matrix in docs/security.md has a column for.
pub const CALLERS: [&str; 9] = [
    "anonymous",
    "viewer",
    "operator",
    "admin",
    "agent token, its host",
    "agent token, other host",
    "pool token",
    "scrape token",
    "remote-write token",
];

/// Whether caller `CALLERS[i]` may call a route with `access`.
fn may(access: Access, i: usize) -> bool {
    let role = match i {
        1 => Some(Role::Viewer),
        2 => Some(Role::Operator),
        3 => Some(Role::Admin),
        _ => None,
    };
    match access {
        Access::Public => true,
        Access::User(need) => role.is_some_and(|r| r >= need),
        Access::AgentToken => i == 4,
        Access::PoolTokenOrOperator => i == 6 || role.is_some_and(|r| r >= Role::Operator),
        Access::ScrapeTokenOrUser => i == 7 || role.is_some(),
        Access::WriteToken => i == 8,
    }
}

/// The matrix as a Markdown table (docs/security.md holds it; a test checks it is the
/// current one).
pub fn markdown() -> String {
    let mut out = format!("| route | {} |\n", CALLERS.join(" | "));
    out.push_str(&format!("|---|{}\n", "---|".repeat(CALLERS.len())));
    for r in ROUTES {
        let cells: Vec<&str> = (0..CALLERS.len())
            .map(|i| if may(r.access, i) { "yes" } else { "–" })
            .collect();
        out.push_str(&format!(
            "| `{} {}` | {} |\n",
            r.method,
            r.path,
            cells.join(" | ")
        ));
    }
    out
}
