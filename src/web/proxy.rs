//! Sign-on by an authenticating proxy (`server.auth_proxy`), the model of Grafana's auth
//! proxy behind oauth2-proxy: the proxy signs the person on with the identity provider
//! and passes the user name (and groups) in headers; Rackwatch believes those headers
//! from the proxies' addresses only.
//!
//! * From an address outside `server.auth_proxy.trusted`, a request carrying the header
//!   is refused (403), whatever else it carries: someone is trying to pass as a user.
//! * A trusted request names its user. Unknown users are created (`auto_create`) with a
//!   password nobody knows; with `groups_header`, the role follows the groups on every
//!   sign-on (checked at most once a minute per user and process).
//! * The audit trail gets `login` (method `proxy`) when a user signs on (first seen, or
//!   idle longer than `server.session_idle_secs`), `user.created` and
//!   `user.role_changed` with actor `proxy`, and refusals.
//! * State-changing requests need the same CSRF token as a session's: its basis is a
//!   keyed hash of the user name ([`CSRF_BASIS_HEADER`], set here for the handlers and
//!   stripped from what clients send).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::http::HeaderValue;

use super::access::Resolved;
use super::error::ApiError;
use super::AppState;
use crate::config::{AuthProxy, Cidr};
use crate::store::audit::{Entry, Outcome};
use crate::store::auth::{random_secret, Role, User};

/// Header the server sets on a proxy-signed request for the CSRF check (clients' own
/// copies are removed first).
pub const CSRF_BASIS_HEADER: &str = "x-rackwatch-proxy-csrf-basis";

/// A user's role is checked against the groups header at most this often.
const SYNC_EVERY: Duration = Duration::from_secs(60);
/// Users remembered at most (past it, all are forgotten and signed on again).
const MAX_USERS: usize = 10_000;

/// What a process remembers of proxy sign-ons.
#[derive(Default)]
pub struct ProxySignOn {
    trusted: Vec<Cidr>,
    seen: Mutex<HashMap<String, Seen>>,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

struct Seen {
    user: User,
    want: Want,
    synced: Instant,
    last: Instant,
}

/// The role the proxy's groups give a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// No groups header configured: the user keeps the role it has (a new one gets
    /// `default_role`).
    Keep,
    Set(Role),
    /// In none of the groups, and `default_role = "none"`.
    Refuse,
}

impl ProxySignOn {
    pub fn new(cfg: &AuthProxy) -> ProxySignOn {
        ProxySignOn {
            trusted: cfg
                .trusted
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
            ..Default::default()
        }
    }

    /// Forget what this process remembers of `name`'s sign-on: an admin changed or
    /// deleted the user here, and the next request reads the user again (other servers
    /// read it within [`SYNC_EVERY`]).
    pub fn forget(&self, name: &str) {
        self.seen.lock().expect("proxy lock").remove(name);
    }

    fn trusts(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.trusted.iter().any(|c| c.contains(ip)))
    }
}

fn want(cfg: &AuthProxy, parts: &Parts) -> Want {
    if cfg.groups_header.is_empty() {
        return Want::Keep;
    }
    let groups: Vec<&str> = parts
        .headers
        .get_all(cfg.groups_header.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    let member = |of: &[String]| groups.iter().any(|g| of.iter().any(|o| o == g));
    if member(&cfg.admin_groups) {
        Want::Set(Role::Admin)
    } else if member(&cfg.operator_groups) {
        Want::Set(Role::Operator)
    } else if cfg.default_role == "viewer" {
        Want::Set(Role::Viewer)
    } else {
        Want::Refuse
    }
}

/// Sign a proxied request on before the route's checks: for a request carrying the
/// header, either refuse it or record its user ([`Resolved`]) and its CSRF basis.
/// Requests without the header (or with the proxy off) pass unchanged.
pub async fn prepare(parts: &mut Parts, st: &AppState) -> Result<(), ApiError> {
    parts.headers.remove(CSRF_BASIS_HEADER);
    let cfg = &st.cfg.server.auth_proxy;
    if !cfg.enabled {
        return Ok(());
    }
    let Some(value) = parts.headers.get(cfg.header.as_str()) else {
        return Ok(());
    };
    let name: String = value.to_str().unwrap_or("").trim().to_string();
    let ip = super::serve::remote(&parts.extensions).map(|a| a.ip());
    let p = &st.proxy;
    if !p.trusts(ip) {
        // Recorded within the login limiter's per-address budget, so a flood of such
        // requests cannot flood the audit trail.
        if ip.is_some_and(|ip| st.login_limiter.take(ip).is_none()) {
            refused(
                st,
                &name,
                ip,
                "the sign-on header came from an untrusted address",
            )
            .await?;
        }
        return Err(ApiError::Forbidden(format!(
            "the {} header is accepted from server.auth_proxy.trusted addresses only",
            cfg.header
        )));
    }
    // The person's address (the proxy is the connection's): what audit rows record.
    let ip = super::serve::client(&parts.extensions);
    let user = sign_on(st, parts, &name, ip).await?;
    let basis = csrf_basis(st, &user.name).await?;
    if let Ok(v) = HeaderValue::from_str(&basis) {
        parts.headers.insert(CSRF_BASIS_HEADER, v);
    }
    parts.extensions.insert(Resolved(user));
    Ok(())
}

async fn sign_on(
    st: &AppState,
    parts: &Parts,
    name: &str,
    ip: Option<IpAddr>,
) -> Result<User, ApiError> {
    let cfg = &st.cfg.server.auth_proxy;
    let want = want(cfg, parts);
    let idle = Duration::from_secs(st.cfg.server.session_idle_secs.max(0) as u64);
    let signed_on_before = {
        let mut seen = st.proxy.seen.lock().expect("proxy lock");
        match seen.get_mut(name) {
            Some(s) if s.want == want && s.synced.elapsed() < SYNC_EVERY => {
                s.last = Instant::now();
                return Ok(s.user.clone());
            }
            Some(s) => s.last.elapsed() < idle,
            None => false,
        }
    };
    if let Err(e) = crate::store::auth::check_user_name(name) {
        refused(st, name, ip, "the sign-on header holds no valid user name").await?;
        return Err(ApiError::Forbidden(format!(
            "the {} header from the proxy: {e}",
            cfg.header
        )));
    }
    let row = st.store.password_row(name).await?;
    let user = match (row, want) {
        (_, Want::Refuse) => {
            refused(st, name, ip, "in none of server.auth_proxy's groups").await?;
            return Err(ApiError::Forbidden(format!(
                "{name} is in none of the groups that may use Rackwatch (server.auth_proxy)"
            )));
        }
        (None, _) if !cfg.auto_create => {
            refused(st, name, ip, "no such user (auto_create is off)").await?;
            return Err(ApiError::Forbidden(format!(
                "{name} has no Rackwatch user, and server.auth_proxy.auto_create is off"
            )));
        }
        (None, Want::Keep) if cfg.default_role == "none" => {
            refused(st, name, ip, "no such user, and no role for new users").await?;
            return Err(ApiError::Forbidden(format!(
                "{name} has no Rackwatch user, and server.auth_proxy.default_role is none"
            )));
        }
        (None, want) => {
            let role = match want {
                Want::Set(r) => r,
                _ => Role::Viewer,
            };
            // A password nobody knows: the user signs on through the proxy only (an
            // admin may set one for HTTP Basic).
            st.store
                .upsert_user(name, role, &random_secret())
                .await
                .map_err(ApiError::Internal)?;
            st.store
                .audit_user_saved(crate::store::audit::PROXY, ip, name, None, role)
                .await?;
            let (id, _, _) = st.store.password_row(name).await?.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("user {name} vanished after creation"))
            })?;
            User {
                id,
                name: name.to_string(),
                role,
            }
        }
        (Some((id, old, _)), want) => {
            let old: Role = old.parse().unwrap_or(Role::Viewer);
            let role = match want {
                Want::Set(r) => r,
                _ => old,
            };
            if role != old && st.store.set_role(id, role).await? {
                st.store
                    .audit(
                        Entry::ok(crate::store::audit::PROXY, "user.role_changed", name)
                            .from(ip)
                            .details(serde_json::json!({
                                "from": old.as_str(),
                                "to": role.as_str(),
                            })),
                    )
                    .await?;
            }
            User {
                id,
                name: name.to_string(),
                role,
            }
        }
    };
    if !signed_on_before {
        st.store
            .audit(
                Entry::ok(name, "login", name)
                    .from(ip)
                    .details(serde_json::json!({ "method": "proxy", "role": user.role.as_str() })),
            )
            .await?;
    }
    let mut seen = st.proxy.seen.lock().expect("proxy lock");
    if seen.len() >= MAX_USERS {
        seen.clear();
    }
    let now = Instant::now();
    seen.insert(
        name.to_string(),
        Seen {
            user: user.clone(),
            want,
            synced: now,
            last: now,
        },
    );
    Ok(user)
}

async fn refused(st: &AppState, name: &str, ip: Option<IpAddr>, why: &str) -> Result<(), ApiError> {
    let name: String = name.chars().take(64).collect();
    st.store
        .audit(
            Entry::ok(&name, "login", &name)
                .from(ip)
                .outcome(Outcome::Refused)
                .details(serde_json::json!({ "method": "proxy", "reason": why })),
        )
        .await?;
    Ok(())
}

/// The CSRF basis of a proxy-signed user: a keyed hash of the name, the same on every
/// replica (the key is a server secret in the database) and unknown to other sites.
async fn csrf_basis(st: &AppState, name: &str) -> Result<String, ApiError> {
    let key = st
        .proxy
        .key
        .get_or_try_init(|| async {
            let k = st.store.server_secret("proxy_csrf").await?;
            Ok::<_, sqlx::Error>(k.into_bytes())
        })
        .await?;
    Ok(hex::encode(super::auth::hmac_sha256(key, name.as_bytes())))
}
