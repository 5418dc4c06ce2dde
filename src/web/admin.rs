//! The admin page: users and agent tokens (the same operations as `rackwatch user` and
//! `rackwatch token`). Admins only; every form carries the session's CSRF token.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{require, verify_csrf, ApiUser, ClientAddr, Csrf, PageUser};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::{render, Nav};
use super::params::{ApiQuery, NoParams, PageForm, PageQuery};
use super::AppState;
use crate::store::audit::{AuditRow, Entry, Filter};
use crate::store::auth::UserRemoval;
use crate::store::auth::{Role, TokenInfo, UserInfo};

/// The admin page and its forms (users, agent tokens).
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/admin", page)
        .get("/admin/audit", audit_page)
        .post("/admin/users", create_user)
        .post("/admin/users/{id}/delete", delete_user)
        .post("/admin/tokens", create_token)
        .post("/admin/tokens/{id}/revoke", revoke_token)
}

/// Users and agent tokens as JSON (admins only).
pub fn api_routes() -> Routes {
    Routes::new()
        .routes(routes!(users))
        .routes(routes!(tokens))
        .routes(routes!(audit_api))
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    pub nav: Nav,
    pub users: Vec<UserInfo>,
    /// Live tokens.
    pub tokens: Vec<TokenView>,
    /// Revoked tokens, kept for the record (shown folded: every restart of the demo
    /// rotates its agents' tokens).
    pub revoked_tokens: Vec<TokenView>,
    /// A token just minted: shown once, never stored in clear.
    pub new_token: Option<(String, String)>,
    /// The forms after a submit: what happened next to each, and what was typed.
    pub forms: AdminForms,
    pub jobs: Vec<JobView>,
    /// Whether this server runs the periodic jobs.
    pub leader: bool,
    /// The anomaly detector's backend, when the job is enabled.
    pub anomaly_backend: Option<BackendView>,
}

/// What the admin page's forms show after a submit: the outcome next to the form that
/// was sent, and what was typed in it (never a password).
#[derive(Default)]
pub struct AdminForms {
    /// What a deletion or revocation did, at the top of the page.
    pub notice: Option<String>,
    pub user_message: Option<String>,
    pub user_error: Option<String>,
    pub user_name: String,
    pub user_role: String,
    pub token_error: Option<String>,
    pub token_host: String,
    pub token_note: String,
}

/// Which backend the anomaly detector runs on.
pub struct BackendView {
    /// The backend, and for a GPU the adapter and how it runs (`cpu (2 threads)`,
    /// `gpu: NVIDIA H200 (discrete GPU, Vulkan, …)`).
    pub device: String,
    /// Why `auto` runs on the CPU; empty when it got what it asked for.
    pub fallback: String,
}

fn backend_view(b: &rackwatch_anomaly::SelectedBackend) -> BackendView {
    use rackwatch_anomaly::Backend;
    let info = b.info();
    BackendView {
        device: info.to_string(),
        fallback: b.fallback_reason().unwrap_or_default().to_string(),
    }
}

/// A periodic job's last run on this server.
pub struct JobView {
    pub name: &'static str,
    pub every: String,
    pub last_success: String,
    pub duration: String,
    pub runs: u64,
    pub failures: u64,
    pub error: String,
    pub summary: String,
}

fn job_views(jobs: &[crate::model::jobs::JobStatus]) -> Vec<JobView> {
    jobs.iter()
        .map(|j| JobView {
            name: j.name,
            every: match j.every.as_secs() {
                s if s % 3600 == 0 => format!("{} h", s / 3600),
                s if s % 60 == 0 => format!("{} min", s / 60),
                s => format!("{s} s"),
            },
            last_success: j
                .last_success
                .map(super::page::time_attr)
                .unwrap_or_default(),
            duration: j
                .last_duration
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_default(),
            runs: j.runs,
            failures: j.failures,
            error: j.last_error.clone().unwrap_or_default(),
            summary: j.last_summary.clone(),
        })
        .collect()
}

/// A token row.
pub struct TokenView {
    pub info: TokenInfo,
    pub created: String,
    pub last_used: String,
    pub revoked: String,
}

async fn page_with(
    st: &AppState,
    nav: Nav,
    new_token: Option<(String, String)>,
    forms: AdminForms,
) -> Result<AdminPage, ApiError> {
    let (tokens, revoked_tokens): (Vec<_>, Vec<_>) = st
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenView {
            created: super::page::time_attr(t.created_at),
            last_used: t
                .last_used_at
                .map(super::page::time_attr)
                .unwrap_or_default(),
            revoked: t.revoked_at.map(super::page::time_attr).unwrap_or_default(),
            info: t,
        })
        .partition(|t| t.revoked.is_empty());
    Ok(AdminPage {
        nav,
        users: st.store.list_users().await?,
        tokens,
        revoked_tokens,
        new_token,
        forms,
        jobs: job_views(&st.jobs.snapshot()),
        leader: st.jobs.is_leader(),
        anomaly_backend: st.jobs.anomaly_backend().as_deref().map(backend_view),
    })
}

pub async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    _q: PageQuery<NoParams>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    let p = page_with(
        &st,
        Nav::new(&user, csrf, "admin"),
        None,
        AdminForms::default(),
    )
    .await?;
    Ok(render(&p))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[serde(default)]
    csrf: String,
    name: String,
    role: String,
    password: String,
}

pub async fn create_user(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<NewUser>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let nav = Nav::new(&user, csrf, "admin");
    let before = st.store.password_row(&f.name).await?.map(|r| r.1);
    let existed = before.is_some();
    let outcome = match f.role.parse::<Role>() {
        Err(e) => Err(e),
        // An existing user without a password: their role changes, their password stays.
        Ok(role) if existed && f.password.is_empty() => {
            match st.store.change_role(&f.name, role).await {
                Ok(Some(old)) => {
                    st.store
                        .audit_role_changed(&user.name, ip, &f.name, &old, role.as_str())
                        .await?;
                    Ok(Some(old))
                }
                Ok(None) => Err(format!("no user named {:?} any more", f.name)),
                Err(e) => Err(format!("{e:#}")),
            }
        }
        Ok(_) if f.password.is_empty() => Err(format!(
            "{:?} is a new user: give a password of at least 8 characters",
            f.name
        )),
        Ok(role) => match st.store.upsert_user(&f.name, role, &f.password).await {
            Ok(()) => {
                st.store
                    .audit_user_saved(&user.name, ip, &f.name, before, role)
                    .await?;
                Ok(None)
            }
            Err(e) => Err(format!("{e:#}")),
        },
    };
    // A proxy-signed user's remembered role goes with any change made here.
    st.proxy.forget(&f.name);
    let mut forms = AdminForms {
        user_name: f.name.clone(),
        user_role: f.role.clone(),
        ..Default::default()
    };
    let status = match outcome {
        Ok(Some(old)) => {
            forms.user_message = Some(if old == f.role {
                format!(
                    "User {} already is {old}; nothing changed (give a password to reset theirs).",
                    f.name
                )
            } else {
                format!(
                    "User {} is now {} (was {old}); password unchanged; their sessions ended (they log in again).",
                    f.name, f.role
                )
            });
            forms.user_name.clear();
            StatusCode::OK
        }
        Ok(None) => {
            forms.user_message = Some(if existed {
                format!(
                    "User {} updated: role {}, new password; their sessions ended (they log in again).",
                    f.name, f.role
                )
            } else {
                format!("User {} created as {}.", f.name, f.role)
            });
            forms.user_name.clear();
            StatusCode::OK
        }
        Err(e) => {
            audit_admin_refusal(&st, &user.name, ip, "user.saved", &f.name, &e).await;
            forms.user_error = Some(e);
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    let mut resp = render(&page_with(&st, nav, None, forms).await?);
    *resp.status_mut() = status;
    Ok(resp)
}

/// An admin's change the server refused (deleting yourself, a password too weak, a token
/// for a bad host name), in the audit trail as `admin.refused`: what was tried, on what,
/// and why. A failed write of the row is logged, not answered: the refusal stands.
async fn audit_admin_refusal(
    st: &AppState,
    actor: &str,
    ip: Option<std::net::IpAddr>,
    attempt: &str,
    target: &str,
    error: &str,
) {
    let target: String = target.chars().take(200).collect();
    let entry = Entry::ok(actor, "admin.refused", &target)
        .from(ip)
        .outcome(crate::store::audit::Outcome::Refused)
        .details(serde_json::json!({ "attempt": attempt, "error": error }));
    if let Err(e) = st.store.audit(entry).await {
        tracing::warn!("audit row of a refused admin change not written: {e}");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn delete_user(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    csrf: Csrf,
    Path(id): Path<String>,
    PageForm(f): PageForm<CsrfOnly>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let id = path_id("user", &id)?;
    if id == user.id {
        let why = "you cannot delete yourself; ask another admin";
        audit_admin_refusal(&st, &user.name, ip, "user.deleted", &user.name, why).await;
        return Err(ApiError::BadRequest(why.into()).into());
    }
    let name = st
        .store
        .list_users()
        .await?
        .into_iter()
        .find(|u| u.id == id)
        .map(|u| u.name);
    let not_found = || PageError::from(ApiError::NotFound(format!("no user with id {id}")));
    let Some(name) = name else {
        return Err(not_found());
    };
    // Under the admins' lock: two admins deleting each other at once leave one.
    match st.store.delete_user_named(&name).await? {
        // What proxy sign-on remembers of the user goes too.
        UserRemoval::Removed { .. } => st.proxy.forget(&name),
        UserRemoval::NoSuchUser => return Err(not_found()),
        UserRemoval::LastAdmin => {
            let why = format!("{name} is the only admin left: make another user admin first");
            audit_admin_refusal(&st, &user.name, ip, "user.deleted", &name, &why).await;
            return Err(ApiError::BadRequest(why).into());
        }
    }
    st.store
        .audit(Entry::ok(&user.name, "user.deleted", &name).from(ip))
        .await?;
    let forms = AdminForms {
        notice: Some(format!("User {name} deleted; their sessions ended.")),
        ..Default::default()
    };
    Ok(render(
        &page_with(&st, Nav::new(&user, csrf, "admin"), None, forms).await?,
    ))
}

/// A numeric id from the path, or a clear 400 (`/admin/users/abc/delete`).
fn path_id(what: &str, id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "{what} id {id:?} is not a number: the path takes the id the admin page lists"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    csrf: String,
    host: String,
    #[serde(default)]
    note: String,
}

pub async fn create_token(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<NewToken>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let host = f.host.trim();
    let checked = crate::model::validate::host_name(host)
        .map_err(|e| format!("a token is scoped to one host: give its name ({e})"))
        .and_then(|()| crate::model::validate::token_note(&f.note));
    if let Err(e) = checked {
        audit_admin_refusal(&st, &user.name, ip, "token.created", host, &e).await;
        // Said next to the form, with what was typed.
        let forms = AdminForms {
            token_error: Some(e),
            token_host: f.host.clone(),
            token_note: f.note.clone(),
            ..Default::default()
        };
        let p = page_with(&st, Nav::new(&user, csrf, "admin"), None, forms).await?;
        return Ok((StatusCode::BAD_REQUEST, render(&p)).into_response());
    }
    let token = st.store.create_agent_token(host, f.note.trim()).await?;
    let id = st.store.token_id(&token).await?;
    st.store
        .audit(
            Entry::ok(&user.name, "token.created", host)
                .from(ip)
                .details(serde_json::json!({ "note": f.note.trim(), "token_id": id })),
        )
        .await?;
    let nav = Nav::new(&user, csrf, "admin");
    let p = page_with(
        &st,
        nav,
        Some((host.to_string(), token)),
        AdminForms::default(),
    )
    .await?;
    let mut resp = render(&p);
    // The page holds a secret: keep it out of caches.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

pub async fn revoke_token(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    csrf: Csrf,
    Path(id): Path<String>,
    PageForm(f): PageForm<CsrfOnly>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let id = path_id("token", &id)?;
    let Some(t) = st.store.revoke_token(id).await? else {
        return Err(
            ApiError::NotFound(format!("no live token with id {id} (already revoked?)")).into(),
        );
    };
    st.store
        .audit(
            Entry::ok(&user.name, "token.revoked", &format!("token {id}"))
                .from(ip)
                .details(crate::store::Store::revoked_details(&t)),
        )
        .await?;
    let forms = AdminForms {
        notice: Some(format!(
            "Token {id} ({}, {}) revoked: whatever sends with it is refused from now on (on other server replicas within a minute).",
            t.kind, t.host_name
        )),
        ..Default::default()
    };
    Ok(render(
        &page_with(&st, Nav::new(&user, csrf, "admin"), None, forms).await?,
    ))
}

/// Users (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    responses(
        (status = 200, description = "Every user, by name.", body = Vec<UserInfo>),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
    )
)]
pub async fn users(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_users().await?))
}

/// Agent tokens without secrets (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/admin/tokens",
    tag = "admin",
    responses(
        (status = 200, description = "Every token, revoked ones included.", body = Vec<TokenInfo>),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
    )
)]
pub async fn tokens(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_tokens().await?))
}

/// The audit trail's filter, from the query string (page and API alike).
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// User name (in any case), `cli:USER` or `system` (default: everyone).
    #[serde(default)]
    actor: String,
    /// E.g. `login`, `user.role_changed`, `token.created`, `silence.created` (exact;
    /// default: every action).
    #[serde(default)]
    action: String,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC.
    #[serde(default)]
    since: String,
    /// RFC 3339, or YYYY-MM-DDTHH:MM in UTC.
    #[serde(default)]
    until: String,
    /// Most rows (default 500 on the API, 200 a page on the page; at most 10,000).
    limit: Option<i64>,
    /// The next page: rows older than the row with this id (the last `id` of a page).
    before: Option<i64>,
}

impl AuditQuery {
    /// `path` with this filter, from the row before `before` (None: the newest rows).
    fn link(&self, path: &str, before: Option<i64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.trim().is_empty() {
                q.append_pair(k, v);
            }
        }
        if let Some(n) = self.limit {
            q.append_pair("limit", &n.to_string());
        }
        if let Some(id) = before {
            q.append_pair("before", &id.to_string());
        }
        format!("{path}?{}", q.finish())
    }

    /// A full page has a next one, maybe: rows older than its last, with the same filter.
    fn older(&self, path: &str, rows: &[AuditRow], limit: i64) -> Option<String> {
        match rows.last() {
            Some(last) if rows.len() as i64 >= limit => Some(self.link(path, Some(last.id))),
            _ => None,
        }
    }

    fn filter(&self, default_limit: i64) -> Result<Filter, ApiError> {
        if let Some(b) = self.before.filter(|b| *b < 1) {
            return Err(ApiError::BadRequest(format!(
                "`before` is {b}: it takes a row's id (a positive number), the last `id` of the page before"
            )));
        }
        let time = |key: &str, v: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
            if v.trim().is_empty() {
                return Ok(None);
            }
            super::range::parse_time(key, v.trim(), 0).map(Some)
        };
        let text = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
        let (since, until) = (time("since", &self.since)?, time("until", &self.until)?);
        if let (Some(s), Some(u)) = (since, until) {
            if u < s {
                return Err(ApiError::BadRequest(format!(
                    "`until` ({}) is before `since` ({}): nothing can match",
                    u.to_rfc3339(),
                    s.to_rfc3339()
                )));
            }
        }
        Ok(Filter {
            actor: text(&self.actor),
            action: text(&self.action),
            since,
            until,
            before: self.before,
            limit: super::params::limit(self.limit, default_limit, 10_000)?,
        })
    }
}

/// The actions the server records, for the filter's suggestions.
pub const AUDIT_ACTIONS: &[&str] = &[
    "login",
    "access.refused",
    "logout",
    "session.expired",
    "user.created",
    "user.password_reset",
    "user.role_changed",
    "user.deleted",
    "token.created",
    "token.revoked",
    "host.removed",
    "silence.created",
    "silence.expired",
    "silence.cancelled",
    "alert.acknowledged",
    "alert.unacknowledged",
    "admin.refused",
    "rules.loaded",
    "rules.refused",
    "report.mailed",
    "backup.made",
    "backup.restored",
    "server.started",
];

/// A row as the page shows it.
pub struct AuditView {
    pub at: String,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
pub struct AuditPage {
    pub nav: Nav,
    pub rows: Vec<AuditView>,
    pub actor: String,
    pub action: String,
    pub since: String,
    pub until: String,
    pub actions: &'static [&'static str],
    pub keep_days: u32,
    pub error: Option<String>,
    /// The next page's address, when this one is full.
    pub older: Option<String>,
    /// On a later page, the first page's address (the newest rows, same filter).
    pub newest: Option<String>,
}

/// Rows on a page of the audit trail.
const AUDIT_PAGE_ROWS: i64 = 200;

/// `GET /admin/audit`: the audit trail, filtered by actor, action and time.
pub async fn audit_page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    PageQuery(q): PageQuery<AuditQuery>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    let (rows, error, limit) = match q.filter(AUDIT_PAGE_ROWS) {
        Ok(f) => (st.store.audit_rows(&f).await?, None, f.limit),
        Err(e) => (Vec::new(), Some(e.to_string()), AUDIT_PAGE_ROWS),
    };
    let newest = q.link("/admin/audit", None);
    let older = q.older("/admin/audit", &rows, limit);
    let rows = rows
        .into_iter()
        .map(|r| AuditView {
            at: super::page::time_attr(r.at),
            actor: r.actor,
            source: r.source.unwrap_or_default(),
            action: r.action,
            target: shortened(&r.target, 300),
            outcome: r.outcome,
            // No details (`{}`) show as none.
            details: match &r.details {
                serde_json::Value::Object(m) if m.is_empty() => String::new(),
                d => shortened(&d.to_string(), 2000),
            },
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut resp = render(&AuditPage {
        nav: Nav::new(&user, csrf, "admin"),
        rows,
        actor: q.actor,
        action: q.action,
        since: q.since,
        until: q.until,
        actions: AUDIT_ACTIONS,
        keep_days: st.cfg.retention.audit_days,
        error,
        older,
        newest: q.before.is_some().then_some(newest),
    });
    *resp.status_mut() = status;
    Ok(resp)
}

/// The audit trail, newest first (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Matching rows, newest first.", body = Vec<AuditRow>, headers(
            ("Link" = String, description = "On a full answer (`limit` rows): `</api/v1/audit?…&before=…>; rel=\"next\"`, the older rows.")
        )),
        (status = 400, description = "A bad parameter (e.g. a time that is not RFC 3339).", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
    )
)]
pub async fn audit_api(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    require(&u, Role::Admin)?;
    let f = q.filter(500)?;
    let rows = st.store.audit_rows(&f).await?;
    let next = q.older("/api/v1/audit", &rows, f.limit);
    Ok(super::params::with_next(
        Json(rows).into_response(),
        next.as_deref(),
    ))
}

/// `s` cut to its first `max` characters, saying how long it was (the API has it whole).
fn shortened(s: &str, max: usize) -> String {
    match crate::model::format::longer_than(s, max) {
        Some(head) => format!(
            "{head}… ({} characters; the API has all)",
            s.chars().count()
        ),
        None => s.to_string(),
    }
}
