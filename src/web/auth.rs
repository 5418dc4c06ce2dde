//! Who is asking: a session cookie (browser) or HTTP Basic (scripts). Pages redirect to
//! the login form; the JSON API answers 401.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::Engine;
use serde::Deserialize;
use std::sync::atomic::Ordering;

use super::error::ApiError;
use super::{pages, AppState};
use crate::store::auth::User;

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
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    pages::render(&pages::LoginPage {
        error: None,
        next: safe_next(q.next.as_deref()).to_string(),
        username: String::new(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn login_submit(
    State(st): State<AppState>,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let next = safe_next(f.next.as_deref()).to_string();
    let Some(user) = st.store.authenticate(&f.username, &f.password).await? else {
        st.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        let page = pages::LoginPage {
            error: Some("Wrong user name or password.".into()),
            next,
            username: f.username,
        };
        let mut resp = pages::render(&page);
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(resp);
    };
    let ttl = st.cfg.server.session_ttl_secs;
    let secret = st
        .store
        .create_session(user.id, chrono::Duration::seconds(ttl))
        .await?;
    let secure = if st.cfg.server.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={ttl}{secure}");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
}

pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        st.store.delete_session(secret).await?;
    }
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}
