//! Who is asking: a session cookie (browser) or HTTP Basic (scripts). Pages redirect to
//! the login form; the JSON API answers 401.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::access::Routes;
use super::error::{ApiError, PageError};
use super::page::render;
use super::params::{PageForm, PageQuery};
use super::AppState;
use crate::store::audit::{Entry, Outcome};
use crate::store::auth::{random_secret, Role, User};

/// Logging in and out.
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/login", login_form)
        .post("/login", login_submit)
        .post("/logout", logout)
}

/// Cookie holding the login form's CSRF secret (there is no session yet to tie it to).
pub const LOGIN_CSRF_COOKIE: &str = "rw_login_csrf";
/// Cookie that marks a browser as one a user has logged in from (see [`check_password`]).
pub const DEVICE_COOKIE: &str = "rw_device";

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rw_session";

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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

pub(crate) async fn resolve(parts: &Parts, st: &AppState) -> Result<Option<User>, ApiError> {
    if let Some(super::access::Resolved(u)) = parts.extensions.get() {
        return Ok(Some(u.clone()));
    }
    if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
        let idle = chrono::Duration::seconds(st.cfg.server.session_idle_secs);
        if let Some(u) = st.store.session_user(secret, idle).await? {
            return Ok(Some(u));
        }
    }
    let basic = super::ingest::auth_param(&parts.headers, "Basic")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(pair) = basic {
        if let Some((name, pw)) = pair.split_once(':') {
            let ip = super::serve::client(&parts.extensions);
            let r = check_password(st, name, pw, ip, None).await;
            // Refusals are recorded as the form's are: a wrong password, and an attempt
            // throttled or turned away while the password checks are all busy.
            let refused = match &r {
                Ok(None) => Some("wrong user name or password".to_string()),
                Err(e @ (ApiError::TooMany { .. } | ApiError::Busy(_))) => {
                    refusal_to_record(st, e, ip)
                }
                _ => None,
            };
            if let Some(reason) = refused {
                audit_login(st, name, ip, Outcome::Refused, "basic", &reason).await?;
            }
            return r;
        }
    }
    Ok(None)
}

/// How a refusal by the per-address bucket begins.
const ADDRESS_LIMITED: &str = "too many login attempts from this address";

/// The reason to record for a throttled or turned-away login, if it is recorded: every
/// one, except the per-address bucket's, recorded once a minute per address (a flood from
/// one address would otherwise write a row per request).
fn refusal_to_record(st: &AppState, e: &ApiError, ip: Option<IpAddr>) -> Option<String> {
    let why = e.to_string();
    if !why.starts_with(ADDRESS_LIMITED) {
        return Some(why);
    }
    ip.filter(|ip| st.login_limiter.refusal_due(*ip))
        .map(|_| format!("{why} (more from this address within a minute are not recorded)"))
}

/// Failed attempts at one user name from one address before each next one waits (1 s,
/// doubling to 60 s): a guesser at one address is slowed to a crawl.
const PAIR_FREE_FAILURES: i32 = 5;
/// Failed attempts at one user name from anywhere before each next one waits (1 s,
/// doubling every two failures to 30 s). A browser that has logged in as that user
/// before (its device cookie), and an address that has (in the last 30 days: a script's
/// or Prometheus's HTTP Basic), skip this wait, so a distributed guesser cannot lock the
/// owner out.
const USER_FREE_FAILURES: i32 = 10;
/// Failures older than this are forgotten.
const THROTTLE_WINDOW_MINUTES: i64 = 15;

fn pair_backoff(failures: i32) -> i64 {
    if failures < PAIR_FREE_FAILURES {
        0
    } else {
        (1i64 << (failures - PAIR_FREE_FAILURES).min(6)).min(60)
    }
}

fn user_backoff(failures: i32) -> i64 {
    if failures < USER_FREE_FAILURES {
        0
    } else {
        (1i64 << ((failures - USER_FREE_FAILURES) / 2).min(5)).min(30)
    }
}

/// Check a user's password, for a form login or HTTP Basic, behind every guard:
/// * a (name, password) pair recently verified from the same client address is answered
///   from memory, with no argon2;
/// * each client address gets a bucket of attempts (30, refilled at one per 2 s);
/// * per (name, address) and per name, failures make the next attempt wait (see
///   [`PAIR_FREE_FAILURES`], [`USER_FREE_FAILURES`]); `device` is the browser's device
///   cookie, which skips the per-name wait for the user it was issued to;
/// * at most `server.password_checks` argon2 checks run at once; more answer 503.
///
/// A refused attempt costs the server a few microseconds and a database read; it costs
/// the client a round trip and a wait.
pub async fn check_password(
    st: &AppState,
    name: &str,
    password: &str,
    ip: Option<IpAddr>,
    device: Option<&str>,
) -> Result<Option<User>, ApiError> {
    let limiter = &st.login_limiter;
    let row = st.store.password_row(name).await?;
    if let Some((id, role, phc)) = &row {
        if limiter.is_verified(name, password, phc, ip) {
            return Ok(Some(user(*id, name, role)));
        }
    }
    if let Some(wait) = ip.and_then(|ip| limiter.take(ip)) {
        return Err(ApiError::TooMany {
            message: format!("{ADDRESS_LIMITED}; try again in {wait} s"),
            retry_after: wait,
        });
    }
    // No user can have a name that is not a user name (e.g. 10,000 characters): a wrong
    // name or password, with nothing to look up or throttle by name.
    if crate::store::auth::check_user_name(name).is_err() {
        st.metrics.logins_failed.inc();
        return Ok(None);
    }
    let lower = name.to_lowercase();
    let trusted_device = match device {
        Some(d) => match &row {
            Some((_, _, phc)) => limiter.device_ok(&st.store, &lower, phc, d).await?,
            None => false,
        },
        None => false,
    };
    // An address the user logged in from before is not slowed by what others try
    // against the name from elsewhere (only by its own failures).
    let known_address = match (trusted_device, ip) {
        (false, Some(ip)) => st.store.login_address_known(&lower, ip).await?,
        _ => false,
    };
    // A browser the user logged in from before is counted on its own: what others try
    // against the name, or from its address, does not slow it down.
    let keys = if trusted_device {
        vec![format!(
            "device:{lower}|{}",
            hex::encode(&Sha256::digest(device.unwrap_or("").as_bytes())[..16])
        )]
    } else if known_address {
        vec![format!(
            "pair:{lower}|{}",
            ip.map(|i| i.to_string()).unwrap_or_default()
        )]
    } else {
        vec![
            format!(
                "pair:{lower}|{}",
                ip.map(|i| i.to_string()).unwrap_or_default()
            ),
            format!("user:{lower}"),
        ]
    };
    let pair_key = keys[0].clone();
    let window = chrono::Duration::minutes(THROTTLE_WINDOW_MINUTES);
    // Each key with its own back-off: the first is per browser or per (name, address),
    // the second (if any) per name.
    let throttled: Vec<(&str, crate::store::auth::Backoff)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let backoff: crate::store::auth::Backoff =
                if i == 0 { pair_backoff } else { user_backoff };
            (k.as_str(), backoff)
        })
        .collect();
    if let Err(wait) = st.store.login_reserve(&throttled, window).await? {
        st.metrics.logins_failed.inc();
        return Err(too_many(wait));
    }
    let Ok(Ok(_slot)) = tokio::time::timeout(
        Duration::from_secs(2),
        st.password_slots.clone().acquire_owned(),
    )
    .await
    else {
        st.store.login_release(&throttled, None).await?;
        return Err(ApiError::Busy(
            "too many password checks at once; retry in a few seconds".into(),
        ));
    };
    let ok = match &row {
        Some((_, _, phc)) => st.passwords.verify(password, phc).await,
        None => {
            // Spend the same time as a real check so user names cannot be probed by timing.
            let _ = st
                .passwords
                .verify(password, crate::store::auth::DUMMY_HASH)
                .await;
            false
        }
    };
    match (ok, row) {
        (true, Some((id, role, phc))) => {
            st.store.login_release(&throttled, Some(&pair_key)).await?;
            if let Some(ip) = ip {
                st.store.remember_login_address(&lower, ip).await?;
            }
            limiter.remember(name, password, &phc, ip);
            Ok(Some(user(id, name, &role)))
        }
        _ => {
            // Counted already, by the reservation.
            st.metrics.logins_failed.inc();
            Ok(None)
        }
    }
}

/// Record a login attempt. The name is what was typed, cut to 64 characters (a refused
/// attempt may carry anything); the password never appears.
async fn audit_login(
    st: &AppState,
    name: &str,
    ip: Option<IpAddr>,
    outcome: Outcome,
    method: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let name: String = name.chars().take(64).collect();
    let mut details = serde_json::json!({ "method": method });
    if !reason.is_empty() {
        details["reason"] = reason.into();
    }
    // A refused attempt was made by someone who did not prove to be the user: its actor
    // is nobody's name (an anonymous client cannot write rows that read as `admin`'s).
    let actor = if matches!(outcome, Outcome::Ok) {
        name.as_str()
    } else {
        ANONYMOUS
    };
    st.store
        .audit(
            Entry::ok(actor, "login", &name)
                .from(ip)
                .outcome(outcome)
                .details(details),
        )
        .await?;
    Ok(())
}

/// The actor of a refused login in the audit trail: no user can have this name.
pub const ANONYMOUS: &str = "(anonymous)";

fn user(id: i64, name: &str, role: &str) -> User {
    User {
        id,
        name: name.to_string(),
        role: role.parse().unwrap_or(Role::Viewer),
    }
}

fn too_many(wait: u64) -> ApiError {
    ApiError::TooMany {
        message: format!("too many failed logins; try again in {wait} s"),
        retry_after: wait,
    }
}

/// The CSRF token of the requester's session: a hash of the session secret (or of a
/// proxy-signed user's keyed name, or of the Basic credentials), so it needs no storage
/// and dies with the session. Forms carry it
/// in a hidden `csrf` field; a cross-site page cannot read it.
pub fn csrf_token(headers: &HeaderMap) -> String {
    let basis = cookie(headers, SESSION_COOKIE)
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(super::proxy::CSRF_BASIS_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|b| format!("proxy:{b}"))
        })
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

pub(crate) fn same(a: &str, b: &str) -> bool {
    // Constant time in the length of the tokens.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A cross-origin POST is refused even before the token is looked at.
pub(crate) fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
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

/// The in-memory part of login protection: per-address attempt buckets, recently
/// verified credentials, and the device-cookie key (read once from the database).
pub struct LoginLimiter {
    addrs: super::limit::Buckets<IpAddr>,
    /// When each address's last bucket refusal was recorded.
    recorded: Mutex<HashMap<IpAddr, Instant>>,
    /// SHA-256(salt, name, password) → (password hash it was checked against, when).
    verified: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    salt: [u8; 32],
    device_key: tokio::sync::OnceCell<Vec<u8>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        LoginLimiter {
            addrs: super::limit::Buckets::new(ADDR_REFILL_PER_SEC, ADDR_BURST),
            recorded: Default::default(),
            verified: Default::default(),
            salt,
            device_key: Default::default(),
        }
    }
}

/// Attempts an address may make at once, and how fast its bucket refills (per second).
const ADDR_BURST: f64 = 30.0;
const ADDR_REFILL_PER_SEC: f64 = 0.5;
/// How long a verified (name, password) pair is trusted without argon2.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Entries kept in each map; past it, stale ones are dropped first, then all.
const MAX_ENTRIES: usize = 10_000;

impl LoginLimiter {
    /// Take one attempt from `ip`'s bucket; the wait in seconds when it is empty.
    pub(crate) fn take(&self, ip: IpAddr) -> Option<u64> {
        self.addrs.take(ip)
    }

    /// Whether a bucket refusal of `ip` is to be recorded: the first in a minute.
    fn refusal_due(&self, ip: IpAddr) -> bool {
        let mut m = self.recorded.lock().expect("limiter lock");
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
        }
        match m.get(&ip) {
            Some(at) if at.elapsed() < Duration::from_secs(60) => false,
            _ => {
                m.insert(ip, Instant::now());
                true
            }
        }
    }

    /// A verified pair is remembered for the client address it was verified from: the
    /// same script or Prometheus skips argon2 on its next requests, while the right
    /// password guessed from another address meets the back-off like any other guess.
    fn key(&self, name: &str, password: &str, ip: Option<IpAddr>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.update([0]);
        h.update(ip.map(|i| i.to_string()).unwrap_or_default().as_bytes());
        h.finalize().into()
    }

    /// Whether this pair was verified from this address against this very password hash
    /// recently.
    fn is_verified(&self, name: &str, password: &str, phc: &str, ip: Option<IpAddr>) -> bool {
        let k = self.key(name, password, ip);
        let m = self.verified.lock().expect("limiter lock");
        m.get(&k)
            .is_some_and(|(h, at)| h == phc && at.elapsed() < VERIFIED_TTL)
    }

    fn remember(&self, name: &str, password: &str, phc: &str, ip: Option<IpAddr>) {
        let k = self.key(name, password, ip);
        let mut m = self.verified.lock().expect("limiter lock");
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (_, at)| at.elapsed() < VERIFIED_TTL);
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
        }
        m.insert(k, (phc.to_string(), Instant::now()));
    }

    async fn key_bytes(&self, store: &crate::store::Store) -> Result<&[u8], ApiError> {
        let k = self
            .device_key
            .get_or_try_init(|| async {
                let hex = store.server_secret("device_cookie").await?;
                Ok::<_, sqlx::Error>(hex.into_bytes())
            })
            .await?;
        Ok(k.as_slice())
    }

    /// The device cookie value for a user (lower-case name) with password hash `phc`: a
    /// new password (a reset after a leak, a departed colleague's account) ends the trust
    /// of every browser that logged in with the old one.
    async fn device_cookie(
        &self,
        store: &crate::store::Store,
        user: &str,
        phc: &str,
    ) -> Result<String, ApiError> {
        let key = self.key_bytes(store).await?;
        Ok(format!(
            "{}.{}",
            urlencode(user),
            hex::encode(hmac_sha256(key, format!("{user}\n{phc}").as_bytes()))
        ))
    }

    async fn device_ok(
        &self,
        store: &crate::store::Store,
        user: &str,
        phc: &str,
        cookie: &str,
    ) -> Result<bool, ApiError> {
        let want = self.device_cookie(store, user, phc).await?;
        Ok(same(&want, cookie))
    }
}

/// HMAC-SHA-256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
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

/// The user of a request, if it carries credentials (for routes that also take other
/// credentials, like a scheduler's token).
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        Ok(MaybeUser(resolve(parts, st).await?))
    }
}

/// The 401 for a request that names no user, saying what it sent that did not work: a
/// wrong password and a session that ended each get their reason (without saying which
/// of name and password was wrong).
pub fn unauthorized(headers: &axum::http::HeaderMap) -> ApiError {
    let why = if super::ingest::auth_param(headers, "Basic").is_some() {
        "the HTTP Basic user name or password is wrong (or the user was deleted)"
    } else if super::ingest::bearer(headers).is_some() {
        "a bearer token does not log in a user here: tokens are for agents, schedulers and Prometheus; send HTTP Basic credentials of a Rackwatch user or log in"
    } else if cookie(headers, SESSION_COOKIE).is_some() {
        "the session has ended (logged out, idle too long or expired); log in again"
    } else {
        "log in (session cookie) or send HTTP Basic credentials of a Rackwatch user"
    };
    ApiError::Unauthorized(why.into())
}

/// A user of the JSON API (session or HTTP Basic).
pub struct ApiUser(pub User);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        resolve(parts, st)
            .await?
            .map(ApiUser)
            .ok_or_else(|| unauthorized(&parts.headers))
    }
}

/// Someone allowed to read `/metrics`: anyone when `server.metrics_public`, else the
/// holder of `server.metrics_token` (a Prometheus bearer token) or a user.
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        if st.cfg.server.metrics_public {
            return Ok(MetricsReader);
        }
        let token = st.cfg.server.metrics_token.expose();
        let bearer = super::ingest::bearer(&parts.headers);
        if !token.is_empty() && bearer.is_some_and(|b| same(b, token)) {
            return Ok(MetricsReader);
        }
        if resolve(parts, st).await?.is_some() {
            return Ok(MetricsReader);
        }
        Err(ApiError::Unauthorized(
            "/metrics needs server.metrics_token (Authorization: Bearer) or a user's credentials"
                .into(),
        ))
    }
}

/// Someone allowed to read `/metrics/fleet` (every GPU and host of the fleet): the
/// holder of `server.metrics_token` (a Prometheus bearer token) or a user (session or
/// HTTP Basic, e.g. Prometheus's `basic_auth`), even when `server.metrics_public` is on.
pub struct FleetMetricsReader;

impl FromRequestParts<AppState> for FleetMetricsReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let token = st.cfg.server.metrics_token.expose();
        let bearer = super::ingest::bearer(&parts.headers);
        if !token.is_empty() && bearer.is_some_and(|b| same(b, token)) {
            return Ok(FleetMetricsReader);
        }
        if resolve(parts, st).await?.is_some() {
            return Ok(FleetMetricsReader);
        }
        Err(ApiError::Unauthorized(
            "/metrics/fleet needs server.metrics_token (Authorization: Bearer) or a user's credentials (HTTP Basic)"
                .into(),
        ))
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

/// Only same-origin paths are followed after login (no open redirect): `next` is
/// resolved as a URL against this server, and kept only when it stays here and reads
/// back the same (no control characters, backslashes or protocol-relative tricks that a
/// browser would resolve elsewhere).
fn safe_next(next: Option<&str>) -> String {
    let Some(n) = next else {
        return "/".into();
    };
    let plain = n.starts_with('/')
        && !n.starts_with("//")
        && !n
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if !plain {
        return "/".into();
    }
    let base = url::Url::parse("http://rackwatch.invalid/").expect("static URL");
    match base.join(n) {
        // `/.//evil.example` normalizes to `//evil.example`, which a browser reads as
        // another host.
        Ok(u) if u.origin() == base.origin() && !u.path().starts_with("//") => {
            let mut out = u.path().to_string();
            if let Some(q) = u.query() {
                out.push('?');
                out.push_str(q);
            }
            out
        }
        _ => "/".into(),
    }
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    next: Option<String>,
}

fn cookie_flags(st: &AppState) -> &'static str {
    if st.cfg.server.https_only() {
        "; Secure"
    } else {
        ""
    }
}

/// The login form, with a fresh CSRF secret in a cookie and in the form.
pub async fn login_form(
    State(st): State<AppState>,
    PageQuery(q): PageQuery<LoginQuery>,
) -> Response {
    let secret = random_secret();
    let mut resp = render(&LoginPage {
        error: None,
        next: safe_next(q.next.as_deref()),
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
#[serde(deny_unknown_fields)]
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
    PageForm(f): PageForm<LoginForm>,
) -> Result<Response, PageError> {
    let next = safe_next(f.next.as_deref());
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
    let ip = super::serve::client(&ext);
    let device = cookie(&headers, DEVICE_COOKIE);
    let user = match check_password(&st, &f.username, &f.password, ip, device).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            audit_login(
                &st,
                &f.username,
                ip,
                Outcome::Refused,
                "form",
                "wrong user name or password",
            )
            .await?;
            return Ok(login_error(
                f,
                next,
                StatusCode::UNAUTHORIZED,
                "Wrong user name or password.".into(),
            ));
        }
        Err(e @ (ApiError::TooMany { .. } | ApiError::Busy(_))) => {
            if let Some(reason) = refusal_to_record(&st, &e, ip) {
                audit_login(&st, &f.username, ip, Outcome::Refused, "form", &reason).await?;
            }
            let status = e.status();
            let wait = match &e {
                ApiError::TooMany { retry_after, .. } => *retry_after,
                _ => super::error::RETRY_AFTER_SECS.into(),
            };
            let mut resp = login_error(
                f,
                next,
                status,
                format!("Too many login attempts. Try again in {wait} s."),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return Ok(resp);
        }
        Err(e) => return Err(e.into()),
    };
    audit_login(&st, &user.name, ip, Outcome::Ok, "form", "").await?;
    let ttl = st.cfg.server.session_ttl_secs;
    let secret = st
        .store
        .create_session(user.id, chrono::Duration::seconds(ttl))
        .await?;
    let secure = cookie_flags(&st);
    let session =
        format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={ttl}{secure}");
    let clear = format!("{LOGIN_CSRF_COOKIE}=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0");
    let phc = st
        .store
        .password_row(&user.name)
        .await?
        .map(|(_, _, phc)| phc)
        .unwrap_or_default();
    let device = format!(
        "{DEVICE_COOKIE}={}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=31536000{secure}",
        st.login_limiter
            .device_cookie(&st.store, &user.name.to_lowercase(), &phc)
            .await?
    );
    let mut resp = Redirect::to(&next).into_response();
    for c in [session, clear, device] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<CsrfForm>,
) -> Result<Response, PageError> {
    verify_csrf(&headers, &f.csrf)?;
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        st.store.delete_session(secret).await?;
    }
    st.store
        .audit(Entry::ok(&user.name, "logout", &user.name).from(ip))
        .await?;
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

/// The client's address (the connection's peer), for the audit trail.
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(super::serve::client(&parts.extensions)))
    }
}
