//! Who is asking: a session cookie (browser) or HTTP Basic (scripts). Pages redirect to
//! the login form; the JSON API answers 401.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::{ApiError, PageError};
use super::page::render;
use super::AppState;
use crate::store::auth::{random_secret, Role, User};

/// Logging in and out.
pub fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
}

/// Cookie holding the login form's CSRF secret (there is no session yet to tie it to).
pub const LOGIN_CSRF_COOKIE: &str = "rw_login_csrf";
/// Failed logins allowed per user name (and per client address, ×4) in the window.
pub const LOGIN_FAILURES_ALLOWED: usize = 5;
/// The rate-limit window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rw_session";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

async fn resolve(parts: &Parts, st: &AppState) -> Result<Option<User>, ApiError> {
    if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
        if let Some(u) = st.store.session_user(secret).await? {
            return Ok(Some(u));
        }
    }
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(pair) = basic {
        if let Some((name, pw)) = pair.split_once(':') {
            let u = st.store.authenticate(name, pw).await?;
            if u.is_none() {
                st.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(u);
        }
    }
    Ok(None)
}

/// The CSRF token of the requester's session: a hash of the session secret (or of the
/// Basic credentials), so it needs no storage and dies with the session. Forms carry it
/// in a hidden `csrf` field; a cross-site page cannot read it.
pub fn csrf_token(headers: &HeaderMap) -> String {
    let basis = cookie(headers, SESSION_COOKIE)
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    match basis {
        Some(b) => hex::encode(Sha256::digest(format!("rackwatch-csrf\0{b}").as_bytes())),
        None => String::new(),
    }
}

fn same(a: &str, b: &str) -> bool {
    // Constant time in the length of the tokens.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A cross-origin POST is refused even before the token is looked at.
fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split("://").nth(1).unwrap_or("");
    if origin == "null" || origin_host != host {
        return Err(ApiError::Forbidden(format!(
            "cross-origin form post refused (Origin {origin}, Host {host})"
        )));
    }
    Ok(())
}

/// Check the `csrf` field of a form posted by a logged-in user.
pub fn verify_csrf(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    check_origin(headers)?;
    let expected = csrf_token(headers);
    if expected.is_empty() || !same(&expected, token) {
        return Err(ApiError::Forbidden(
            "the form's CSRF token is missing or stale; reload the page and try again".into(),
        ));
    }
    Ok(())
}

/// The requester's CSRF token, for pages that render forms.
pub struct Csrf(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Csrf(csrf_token(&parts.headers)))
    }
}

/// Refuse with 403 unless `user` has at least `role`.
pub fn require(user: &User, role: Role) -> Result<(), ApiError> {
    if user.role >= role {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this needs the {} role; {} is {}",
            role.as_str(),
            user.name,
            user.role.as_str()
        )))
    }
}

/// Failed logins per user name and per client address in a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn keys(user: &str, ip: Option<std::net::IpAddr>) -> [(String, usize); 2] {
        [
            (
                format!("user:{}", user.to_lowercase()),
                LOGIN_FAILURES_ALLOWED,
            ),
            (
                format!("ip:{}", ip.map(|i| i.to_string()).unwrap_or_default()),
                LOGIN_FAILURES_ALLOWED * 4,
            ),
        ]
    }

    /// Seconds to wait before the next attempt, if over the limit.
    pub fn blocked(&self, user: &str, ip: Option<std::net::IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let mut m = self.failures.lock().expect("limiter lock");
        let mut wait = None;
        for (k, allowed) in Self::keys(user, ip) {
            if let Some(v) = m.get_mut(&k) {
                v.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
                if v.len() >= allowed {
                    let oldest = v[v.len() - allowed];
                    let w = LOGIN_WINDOW
                        .saturating_sub(now.duration_since(oldest))
                        .as_secs()
                        + 1;
                    wait = Some(wait.map_or(w, |x: u64| x.max(w)));
                }
            }
        }
        m.retain(|_, v| !v.is_empty());
        wait
    }

    pub fn failed(&self, user: &str, ip: Option<std::net::IpAddr>) {
        let mut m = self.failures.lock().expect("limiter lock");
        // Sprayed user names must not grow the map without bound: drop expired entries.
        if m.len() > 10_000 {
            let now = Instant::now();
            m.retain(|_, v| {
                v.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
                !v.is_empty()
            });
        }
        for (k, _) in Self::keys(user, ip) {
            m.entry(k).or_default().push(Instant::now());
        }
    }

    pub fn succeeded(&self, user: &str) {
        let mut m = self.failures.lock().expect("limiter lock");
        m.remove(&format!("user:{}", user.to_lowercase()));
    }
}

/// A logged-in user of a page; anonymous visitors are sent to `/login`.
pub struct PageUser(pub User);

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        match resolve(parts, st).await {
            Ok(Some(u)) => Ok(PageUser(u)),
            Ok(None) => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let target = format!("/login?next={}", urlencode(next));
                Err(Redirect::to(&target).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A user of the JSON API (session or HTTP Basic).
pub struct ApiUser(pub User);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        resolve(parts, st).await?.map(ApiUser).ok_or_else(|| {
            ApiError::Unauthorized(
                "log in (session cookie) or send HTTP Basic credentials of a Rackwatch user".into(),
            )
        })
    }
}

/// Percent-encode for a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(b))
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Only same-site paths are followed after login (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

fn cookie_flags(st: &AppState) -> &'static str {
    if st.cfg.server.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

/// The login form, with a fresh CSRF secret in a cookie and in the form.
pub async fn login_form(State(st): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let secret = random_secret();
    let mut resp = render(&LoginPage {
        error: None,
        next: safe_next(q.next.as_deref()).to_string(),
        username: String::new(),
        csrf: secret.clone(),
    });
    let c = format!(
        "{LOGIN_CSRF_COOKIE}={secret}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        cookie_flags(&st)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
    #[serde(default)]
    csrf: String,
}

fn login_error(f: LoginForm, next: String, status: StatusCode, msg: String) -> Response {
    let page = LoginPage {
        error: Some(msg),
        next,
        username: f.username,
        csrf: f.csrf,
    };
    let mut resp = render(&page);
    *resp.status_mut() = status;
    resp
}

pub async fn login_submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let next = safe_next(f.next.as_deref()).to_string();
    check_origin(&headers)?;
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !same(expected, &f.csrf) {
        return Ok(login_error(
            f,
            next,
            StatusCode::FORBIDDEN,
            "This login form expired (CSRF check). Reload the page and log in again.".into(),
        ));
    }
    let ip = ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(wait) = st.login_limiter.blocked(&f.username, ip) {
        st.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        let mut resp = login_error(
            f,
            next,
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed logins. Try again in {wait} s."),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(resp);
    }
    let Some(user) = st.store.authenticate(&f.username, &f.password).await? else {
        st.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        st.login_limiter.failed(&f.username, ip);
        return Ok(login_error(
            f,
            next,
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.".into(),
        ));
    };
    st.login_limiter.succeeded(&f.username);
    let ttl = st.cfg.server.session_ttl_secs;
    let secret = st
        .store
        .create_session(user.id, chrono::Duration::seconds(ttl))
        .await?;
    let secure = cookie_flags(&st);
    let session =
        format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={ttl}{secure}");
    let clear = format!("{LOGIN_CSRF_COOKIE}=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut resp = Redirect::to(&next).into_response();
    for c in [session, clear] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    verify_csrf(&headers, &f.csrf)?;
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        st.store.delete_session(secret).await?;
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        cookie_flags(&st)
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

#[derive(askama::Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub next: String,
    pub username: String,
    pub csrf: String,
}
