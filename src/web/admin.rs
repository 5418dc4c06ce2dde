//! The admin page: users and agent tokens (the same operations as `rackwatch user` and
//! `rackwatch token`). Admins only; every form carries the session's CSRF token.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;

use super::auth::{require, verify_csrf, ApiUser, Csrf, PageUser};
use super::error::{ApiError, PageError};
use super::page::{render, Nav};
use super::AppState;
use crate::store::auth::{Role, TokenInfo, UserInfo};

/// The admin page and its forms (users, agent tokens).
pub fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/users", post(create_user))
        .route("/admin/users/{id}/delete", post(delete_user))
        .route("/admin/tokens", post(create_token))
        .route("/admin/tokens/{id}/revoke", post(revoke_token))
}

/// Users and agent tokens as JSON (admins only).
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/users", get(users))
        .route("/api/v1/admin/tokens", get(tokens))
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    pub nav: Nav,
    pub users: Vec<UserInfo>,
    pub tokens: Vec<TokenView>,
    /// A token just minted: shown once, never stored in clear.
    pub new_token: Option<(String, String)>,
    pub message: Option<String>,
    pub error: Option<String>,
    pub jobs: Vec<JobView>,
    /// Whether this server runs the periodic jobs.
    pub leader: bool,
    /// The anomaly detector's backend, when the job is enabled.
    pub anomaly_backend: Option<BackendView>,
}

/// Which backend the anomaly detector runs on.
pub struct BackendView {
    /// `cpu` or `gpu`.
    pub kind: &'static str,
    /// The adapter and how it runs (`gpu: NVIDIA H200 (discrete GPU, Vulkan, …)`).
    pub device: String,
    /// Why `auto` runs on the CPU; empty when it got what it asked for.
    pub fallback: String,
}

fn backend_view(b: &rackwatch_anomaly::SelectedBackend) -> BackendView {
    use rackwatch_anomaly::Backend;
    let info = b.info();
    BackendView {
        kind: info.kind.as_str(),
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
            last_success: j.last_success.map(|t| t.to_rfc3339()).unwrap_or_default(),
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
    message: Option<String>,
    error: Option<String>,
) -> Result<AdminPage, ApiError> {
    let tokens = st
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenView {
            created: t.created_at.to_rfc3339(),
            last_used: t.last_used_at.map(|x| x.to_rfc3339()).unwrap_or_default(),
            revoked: t.revoked_at.map(|x| x.to_rfc3339()).unwrap_or_default(),
            info: t,
        })
        .collect();
    Ok(AdminPage {
        nav,
        users: st.store.list_users().await?,
        tokens,
        new_token,
        message,
        error,
        jobs: job_views(&st.jobs.snapshot()),
        leader: st.jobs.is_leader(),
        anomaly_backend: st.jobs.anomaly_backend().as_deref().map(backend_view),
    })
}

pub async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    let p = page_with(&st, Nav::new(&user, csrf, "admin"), None, None, None).await?;
    Ok(render(&p))
}

#[derive(Deserialize)]
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
    headers: HeaderMap,
    Form(f): Form<NewUser>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let nav = Nav::new(&user, csrf, "admin");
    let outcome = match f.role.parse::<Role>() {
        Err(e) => Err(e),
        Ok(role) => st
            .store
            .upsert_user(&f.name, role, &f.password)
            .await
            .map_err(|e| format!("{e:#}")),
    };
    let (msg, err, status) = match outcome {
        Ok(()) => (
            Some(format!("User {} saved as {}.", f.name, f.role)),
            None,
            StatusCode::OK,
        ),
        Err(e) => (None, Some(e), StatusCode::UNPROCESSABLE_ENTITY),
    };
    let mut resp = render(&page_with(&st, nav, None, msg, err).await?);
    *resp.status_mut() = status;
    Ok(resp)
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn delete_user(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    if id == user.id {
        return Err(
            ApiError::BadRequest("you cannot delete yourself; ask another admin".into()).into(),
        );
    }
    if !st.store.delete_user(id).await? {
        return Err(ApiError::NotFound(format!("no user with id {id}")).into());
    }
    Ok(Redirect::to("/admin").into_response())
}

#[derive(Deserialize)]
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
    headers: HeaderMap,
    Form(f): Form<NewToken>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    let host = f.host.trim();
    if host.is_empty() || host.len() > 253 {
        return Err(ApiError::BadRequest(
            "a token is scoped to one host: give its name (1–253 characters)".into(),
        )
        .into());
    }
    let token = st.store.create_agent_token(host, f.note.trim()).await?;
    let nav = Nav::new(&user, csrf, "admin");
    let p = page_with(&st, nav, Some((host.to_string(), token)), None, None).await?;
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
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    require(&user, Role::Admin)?;
    verify_csrf(&headers, &f.csrf)?;
    if !st.store.revoke_token(id).await? {
        return Err(
            ApiError::NotFound(format!("no live token with id {id} (already revoked?)")).into(),
        );
    }
    Ok(Redirect::to("/admin").into_response())
}

/// Users (admins only).
pub async fn users(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_users().await?))
}

/// Agent tokens without secrets (admins only).
pub async fn tokens(
    State(st): State<AppState>,
    ApiUser(u): ApiUser,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require(&u, Role::Admin)?;
    Ok(Json(st.store.list_tokens().await?))
}
