//! Users (argon2id), login sessions and agent tokens.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::Store;

/// A user's role: what they may do in the dashboard (viewers look, operators also
/// acknowledge, silence and send readings, admins also manage users and tokens).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}; use viewer, operator or admin")),
        }
    }
}

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// A random secret: 32 bytes, hex.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Hash a password with argon2id (default parameters: 19 MiB, 2 passes). Blocking.
pub fn hash_password(pw: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .expect("argon2 hashing with default parameters")
        .to_string()
}

/// Check a password against a stored hash. Blocking.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
}

/// Password checks on a few dedicated threads, each keeping one argon2 work area (19 MiB
/// with the default parameters) for good. Checking on the shared blocking pool instead
/// left a work area behind in the allocator arena of every thread that ever checked one:
/// hundreds of MiB after a burst of logins. Here the memory is `threads` × 19 MiB, always.
pub struct PasswordPool {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<PasswordJob>>,
}

type PasswordJob = (String, String, tokio::sync::oneshot::Sender<bool>);

impl PasswordPool {
    /// Start `threads` checking threads.
    pub fn new(threads: usize) -> PasswordPool {
        let (tx, rx) = std::sync::mpsc::channel::<PasswordJob>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("rackwatch-password-{i}"))
                .spawn(move || {
                    let mut memory: Vec<argon2::Block> = Vec::new();
                    loop {
                        let job = rx.lock().map(|r| r.recv());
                        let Ok(Ok((pw, phc, reply))) = job else {
                            return;
                        };
                        let _ = reply.send(verify_reusing(&pw, &phc, &mut memory));
                    }
                });
        }
        PasswordPool {
            tx: std::sync::Mutex::new(tx),
        }
    }

    /// Check `pw` against a PHC string on the pool (callers bound how many wait).
    pub async fn verify(&self, pw: &str, phc: &str) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .lock()
            .map(|tx| tx.send((pw.to_string(), phc.to_string(), reply)).is_ok())
            .unwrap_or(false);
        sent && answer.await.unwrap_or(false)
    }
}

/// [`verify_password`] with a caller-kept work area.
fn verify_reusing(pw: &str, phc: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(alg), Ok(params), Some(expected), Some(salt)) = (
        argon2::Algorithm::try_from(hash.algorithm),
        argon2::Params::try_from(&hash),
        hash.hash,
        hash.salt,
    ) else {
        return false;
    };
    let version = hash
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    memory.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let ok = Argon2::new(alg, version, params)
        .hash_password_into_with_memory(pw.as_bytes(), salt, &mut out, &mut memory[..])
        .is_ok();
    ok && out.len() == expected.as_bytes().len()
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The longest password a user may set: longer than any passphrase, and bounded so a
/// password never costs more than a login form's worth of hashing.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A syntactically acceptable user name.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} must be 1–64 characters of ASCII letters, digits, _ . - @"
        ))
    }
}

/// The only admin stays an admin: a fleet with no admin cannot add users or mint tokens
/// from the dashboard. Locked, so two demotions at once cannot both pass.
async fn keep_an_admin(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    role: Role,
) -> anyhow::Result<()> {
    if role == Role::Admin {
        return Ok(());
    }
    let admins: Vec<String> =
        sqlx::query_scalar("SELECT name FROM users WHERE role = 'admin' ORDER BY name FOR UPDATE")
            .fetch_all(&mut **tx)
            .await?;
    if admins.len() == 1 && admins[0] == name {
        anyhow::bail!("{name} is the only admin: make another user admin first");
    }
    Ok(())
}

/// Seconds a throttle key is blocked after its n-th counted failure.
pub type Backoff = fn(i32) -> i64;

impl Store {
    /// Create a user, or set the password and role of an existing one. A changed password
    /// or role ends the user's sessions (a reset locks out whoever held the old one).
    pub async fn upsert_user(&self, name: &str, role: Role, password: &str) -> anyhow::Result<()> {
        check_user_name(name).map_err(anyhow::Error::msg)?;
        if password.chars().count() < 8 {
            anyhow::bail!("password must be at least 8 characters");
        }
        if password.trim().chars().count() < 8 {
            anyhow::bail!("password must be at least 8 characters besides spaces");
        }
        let n = password.chars().count();
        if n > MAX_PASSWORD_CHARS {
            anyhow::bail!("the password has {n} characters; at most {MAX_PASSWORD_CHARS}");
        }
        if password.trim().eq_ignore_ascii_case(name) {
            anyhow::bail!("the password must not be the user name");
        }
        if [super::audit::SYSTEM, super::audit::PROXY]
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r))
        {
            anyhow::bail!(
                "user name {name:?} is reserved for the server's own actions in the audit trail"
            );
        }
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw)).await?;
        let mut tx = self.pool.begin().await?;
        // "ADMIN" beside "admin" would read as one person in the audit trail.
        let twin: Option<String> = sqlx::query_scalar(
            "SELECT name FROM users WHERE lower(name) = lower($1) AND name <> $1 LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(t) = twin {
            anyhow::bail!("a user named {t:?} exists: names may not differ only in case");
        }
        keep_an_admin(&mut tx, name, role).await?;
        let id: i64 = sqlx::query_scalar!(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash
             RETURNING id",
            name,
            role.as_str(),
            hash,
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM sessions WHERE user_id = $1", id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Change an existing user's role and keep their password (the admin form without a
    /// password). A change ends their sessions. `None`: no user of that name; else the
    /// role they had.
    pub async fn change_role(&self, name: &str, role: Role) -> anyhow::Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        // The admins' rows first, then the user's, as every change of roles locks them:
        // two demotions at once wait for each other instead of deadlocking.
        keep_an_admin(&mut tx, name, role).await?;
        let Some(old) =
            sqlx::query_scalar!("SELECT role FROM users WHERE name = $1 FOR UPDATE", name)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        if old != role.as_str() {
            sqlx::query!(
                "WITH u AS (UPDATE users SET role = $2 WHERE name = $1 RETURNING id)
                 DELETE FROM sessions WHERE user_id IN (SELECT id FROM u)",
                name,
                role.as_str()
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(old))
    }

    /// Set a user's role. A change ends the user's sessions; returns whether it changed.
    pub async fn set_role(&self, id: i64, role: Role) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query!(
            "UPDATE users SET role = $2 WHERE id = $1 AND role <> $2",
            id,
            role.as_str()
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if changed {
            sqlx::query!("DELETE FROM sessions WHERE user_id = $1", id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// A user's id, role and password hash (PHC string), for a password check.
    pub async fn password_row(
        &self,
        name: &str,
    ) -> Result<Option<(i64, String, String)>, sqlx::Error> {
        let row = sqlx::query!(
            "SELECT id, role, password_hash FROM users WHERE name = $1",
            name
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.id, r.role, r.password_hash)))
    }

    /// Check a user's password; `None` for an unknown user or a wrong password. Runs
    /// argon2 with no limit: the HTTP layer calls its own guarded check instead.
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        let row = self.password_row(name).await?;
        let pw = password.to_string();
        let Some((id, role, hash)) = row else {
            // Spend the same time as a real check so user names cannot be probed by timing.
            let _ = tokio::task::spawn_blocking(move || verify_password(&pw, DUMMY_HASH)).await;
            return Ok(None);
        };
        let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .unwrap_or(false);
        Ok(ok.then(|| User {
            id,
            name: name.to_string(),
            role: role.parse().unwrap_or(Role::Viewer),
        }))
    }

    /// Start a session; returns the cookie secret.
    pub async fn create_session(&self, user_id: i64, ttl: Duration) -> Result<String, sqlx::Error> {
        let secret = random_secret();
        sqlx::query!(
            "INSERT INTO sessions (token_sha256, user_id, expires_at) VALUES ($1, $2, $3)",
            sha256(&secret),
            user_id,
            Utc::now() + ttl,
        )
        .execute(&self.pool)
        .await?;
        Ok(secret)
    }

    /// The user of a live session: not expired, and used within `idle`. Marks it used
    /// (at most once a minute, so pages do not write on every request).
    pub async fn session_user(
        &self,
        secret: &str,
        idle: Duration,
    ) -> Result<Option<User>, sqlx::Error> {
        let key = sha256(secret);
        let row = sqlx::query!(
            "SELECT u.id, u.name, u.role, s.last_seen_at FROM sessions s JOIN users u ON u.id = s.user_id
              WHERE s.token_sha256 = $1 AND s.expires_at > now() AND s.last_seen_at > now() - $2::text::interval",
            &key,
            format!("{} seconds", idle.num_seconds()),
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if Utc::now() - row.last_seen_at > Duration::seconds(60) {
            sqlx::query!(
                "UPDATE sessions SET last_seen_at = now() WHERE token_sha256 = $1",
                &key
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(Some(User {
            id: row.id,
            name: row.name,
            role: row.role.parse().unwrap_or(Role::Viewer),
        }))
    }

    /// Count an attempt at each of `keys` as failed before its password is checked
    /// (failures older than `window` are forgotten), and block each key for
    /// `backoff(failures)` seconds; unless one of them is blocked now, when nothing is
    /// counted and the answer is the wait, in seconds. Counting first means attempts sent
    /// at once are throttled as if sent one after another: each sees the ones before it,
    /// on every server, as the row lock orders them.
    pub async fn login_reserve(
        &self,
        keys: &[(&str, Backoff)],
        window: Duration,
    ) -> Result<Result<(), u64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for (key, backoff) in keys {
            let failures: Option<i32> = sqlx::query_scalar!(
                "INSERT INTO login_throttle (key, failures, updated_at) VALUES ($1, 1, now())
                 ON CONFLICT (key) DO UPDATE SET
                    failures = CASE WHEN login_throttle.updated_at < now() - $2::text::interval THEN 1
                                    ELSE login_throttle.failures + 1 END,
                    updated_at = now()
                  WHERE login_throttle.blocked_until IS NULL OR login_throttle.blocked_until <= now()
                 RETURNING failures",
                key,
                format!("{} seconds", window.num_seconds()),
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(failures) = failures else {
                let until: Option<DateTime<Utc>> = sqlx::query_scalar!(
                    "SELECT blocked_until FROM login_throttle WHERE key = $1",
                    key
                )
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
                tx.rollback().await?;
                let wait = until.map_or(1, |t| {
                    ((t - Utc::now()).num_milliseconds().max(0) as u64)
                        .div_ceil(1000)
                        .max(1)
                });
                return Ok(Err(wait));
            };
            let secs = backoff(failures);
            if secs > 0 {
                sqlx::query!(
                    "UPDATE login_throttle SET blocked_until = now() + $2::text::interval WHERE key = $1",
                    key,
                    format!("{secs} seconds"),
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Take back attempts [`Store::login_reserve`] counted that were not failures: the
    /// password was right (`cleared`, the key whose failures a success forgets, is
    /// deleted), or it was never checked. A key whose failures no longer call for a wait
    /// is unblocked: right passwords sent at once must not leave a block behind them.
    pub async fn login_release(
        &self,
        keys: &[(&str, Backoff)],
        cleared: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        if let Some(key) = cleared {
            sqlx::query!("DELETE FROM login_throttle WHERE key = $1", key)
                .execute(&self.pool)
                .await?;
        }
        for (key, backoff) in keys.iter().filter(|(k, _)| Some(*k) != cleared) {
            let left: Option<i32> = sqlx::query_scalar!(
                "UPDATE login_throttle SET failures = greatest(failures - 1, 0) WHERE key = $1
                 RETURNING failures",
                key,
            )
            .fetch_optional(&self.pool)
            .await?;
            if left.is_some_and(|f| backoff(f) == 0) {
                sqlx::query!(
                    "UPDATE login_throttle SET blocked_until = NULL WHERE key = $1",
                    key
                )
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// How long a client address a user logged in from stays known.
    pub const KNOWN_ADDRESS_DAYS: i64 = 30;

    /// Whether `user` (lower case) logged in from `address` within
    /// [`Store::KNOWN_ADDRESS_DAYS`].
    pub async fn login_address_known(
        &self,
        user: &str,
        address: std::net::IpAddr,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM login_known_addresses
                WHERE user_name = $1 AND address = $2
                  AND last_login_at > now() - make_interval(days => $3)) AS "known!""#,
            user,
            address.to_string(),
            Self::KNOWN_ADDRESS_DAYS as i32,
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Remember that `user` (lower case) logged in from `address`.
    pub async fn remember_login_address(
        &self,
        user: &str,
        address: std::net::IpAddr,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO login_known_addresses (user_name, address) VALUES ($1, $2)
             ON CONFLICT (user_name, address) DO UPDATE SET last_login_at = now()",
            user,
            address.to_string(),
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Throttle rows past their window, and login addresses not used for
    /// [`Store::KNOWN_ADDRESS_DAYS`] (maintenance).
    pub async fn delete_stale_login_throttles(&self, window: Duration) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query!(
            "DELETE FROM login_throttle WHERE updated_at < now() - $1::text::interval
               AND (blocked_until IS NULL OR blocked_until < now())",
            format!("{} seconds", window.num_seconds()),
        )
        .execute(&self.pool)
        .await?
        .rows_affected()
            + sqlx::query!(
                "DELETE FROM login_known_addresses WHERE last_login_at < now() - make_interval(days => $1)",
                Self::KNOWN_ADDRESS_DAYS as i32,
            )
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// A secret shared by the servers, made on first use (32 random bytes, hex).
    pub async fn server_secret(&self, name: &str) -> Result<String, sqlx::Error> {
        sqlx::query!(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            name,
            random_secret(),
        )
        .execute(&self.pool)
        .await?;
        sqlx::query_scalar!("SELECT value FROM server_secrets WHERE name = $1", name)
            .fetch_one(&self.pool)
            .await
    }

    pub async fn delete_session(&self, secret: &str) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "DELETE FROM sessions WHERE token_sha256 = $1",
            sha256(secret)
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mint an agent token for `host_name`; only its hash is stored. Returns the token.
    pub async fn create_agent_token(
        &self,
        host_name: &str,
        note: &str,
    ) -> Result<String, sqlx::Error> {
        let token = format!("rwa_{}", random_secret());
        sqlx::query!(
            "INSERT INTO agent_tokens (host_name, token_sha256, note) VALUES ($1, $2, $3)",
            host_name,
            sha256(&token),
            note,
        )
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Mint a token a scheduler uses to report `pool`'s queue; only its hash is stored.
    pub async fn create_pool_token(&self, pool: &str, note: &str) -> Result<String, sqlx::Error> {
        let token = format!("rwp_{}", random_secret());
        sqlx::query!(
            "INSERT INTO agent_tokens (host_name, pool, token_sha256, note) VALUES ('', $1, $2, $3)",
            pool,
            sha256(&token),
            note,
        )
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// The pool a live scheduler token is scoped to.
    pub async fn token_pool(&self, token: &str) -> Result<Option<String>, sqlx::Error> {
        let hash = sha256(token);
        // `pool` is a nullable column the WHERE clause rules out.
        let pool = sqlx::query_scalar!(
            r#"SELECT pool AS "pool!" FROM agent_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL AND pool IS NOT NULL"#,
            &hash,
        )
        .fetch_optional(&self.pool)
        .await?;
        if pool.is_some() {
            self.touch_token(&hash).await?;
        }
        Ok(pool)
    }

    /// The host a live agent token is scoped to, and when the token was issued.
    pub async fn token_host(&self, token: &str) -> Result<Option<TokenHost>, sqlx::Error> {
        let hash = sha256(token);
        if let Some((host, at)) = self.cache.tokens.lock().expect("token cache").get(&hash) {
            if at.elapsed() < super::TOKEN_TTL {
                return Ok(Some(host.clone()));
            }
        }
        let emptied = self
            .cache
            .tokens_emptied
            .load(std::sync::atomic::Ordering::SeqCst);
        let host = sqlx::query_as!(
            TokenHost,
            r#"SELECT host_name AS "name", created_at AS "issued" FROM agent_tokens
                WHERE token_sha256 = $1 AND revoked_at IS NULL AND pool IS NULL
                AND write_site IS NULL AND write_hosts IS NULL"#,
            &hash,
        )
        .fetch_optional(&self.pool)
        .await?;
        if let Some(h) = &host {
            self.touch_token(&hash).await?;
            let mut tokens = self.cache.tokens.lock().expect("token cache");
            // Not when a revocation emptied the cache meanwhile: the answer read before
            // it may be the revoked token's.
            if self
                .cache
                .tokens_emptied
                .load(std::sync::atomic::Ordering::SeqCst)
                == emptied
            {
                tokens.insert(hash, (h.clone(), std::time::Instant::now()));
            }
        }
        Ok(host)
    }

    /// Empty the token cache (a token revoked, a host removed): lookups in flight do not
    /// fill it again with what they read before.
    pub(crate) fn forget_tokens(&self) {
        let mut tokens = self.cache.tokens.lock().expect("token cache");
        tokens.clear();
        self.cache
            .tokens_emptied
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The id of a token just minted (the audit trail names it, as `token list` and
    /// `token revoke` do).
    pub async fn token_id(&self, token: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar!(
            "SELECT id FROM agent_tokens WHERE token_sha256 = $1",
            sha256(token)
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Mint a Prometheus remote-write token with `scope`; only its hash is stored.
    pub async fn create_write_token(
        &self,
        scope: &WriteScope,
        note: &str,
    ) -> Result<String, sqlx::Error> {
        let token = format!("rww_{}", random_secret());
        let (site, hosts) = match scope {
            WriteScope::Site(s) => (Some(s.as_str()), None),
            WriteScope::Hosts(h) => (None, Some(h.as_slice())),
        };
        sqlx::query!(
            "INSERT INTO agent_tokens (host_name, write_site, write_hosts, token_sha256, note)
             VALUES ('', $1, $2, $3, $4)",
            site,
            hosts,
            sha256(&token),
            note,
        )
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// What a live remote-write token may write.
    pub async fn token_write_scope(&self, token: &str) -> Result<Option<WriteScope>, sqlx::Error> {
        let hash = sha256(token);
        let row = sqlx::query!(
            "SELECT write_site, write_hosts FROM agent_tokens
              WHERE token_sha256 = $1 AND revoked_at IS NULL
                AND (write_site IS NOT NULL OR write_hosts IS NOT NULL)",
            &hash,
        )
        .fetch_optional(&self.pool)
        .await?;
        let scope = match row.map(|r| (r.write_site, r.write_hosts)) {
            Some((Some(site), _)) => WriteScope::Site(site),
            Some((None, Some(hosts))) => WriteScope::Hosts(hosts),
            _ => return Ok(None),
        };
        self.touch_token(&hash).await?;
        Ok(Some(scope))
    }

    /// Record a token's use. Last use is shown to admins; a minute of precision saves a
    /// write per request.
    async fn touch_token(&self, hash: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE agent_tokens SET last_used_at = now()
              WHERE token_sha256 = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            hash,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revoke every token minted with `note` for these hosts (the demo's own tokens).
    pub async fn revoke_tokens_with_note(&self, note: &str) -> Result<u64, sqlx::Error> {
        self.forget_tokens();
        let r = sqlx::query!(
            "UPDATE agent_tokens SET revoked_at = now() WHERE note = $1 AND revoked_at IS NULL",
            note,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        // Clear again: a lookup racing the UPDATE may have cached the token.
        self.forget_tokens();
        Ok(r)
    }

    /// Agent tokens (without secrets) for the admin page and CLI.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, sqlx::Error> {
        sqlx::query_as!(
            TokenInfo,
            r#"SELECT id, CASE WHEN pool IS NOT NULL THEN 'pool:' || pool
                             WHEN write_site IS NOT NULL THEN 'write:site:' || write_site
                             WHEN write_hosts IS NOT NULL THEN 'write:hosts:' || array_to_string(write_hosts, ',')
                             ELSE host_name END AS "host_name!",
                    CASE WHEN pool IS NOT NULL THEN 'scheduler'
                         WHEN write_site IS NOT NULL OR write_hosts IS NOT NULL THEN 'remote_write'
                         ELSE 'agent' END AS "kind!", note, created_at,
                    last_used_at, revoked_at
               FROM agent_tokens ORDER BY 2, id"#,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Revoke a token by id; `None` when no live token has it, else the token as listed
    /// (its kind and scope, for the audit trail).
    pub async fn revoke_token(&self, id: i64) -> Result<Option<TokenInfo>, sqlx::Error> {
        self.forget_tokens();
        let r = sqlx::query!(
            "UPDATE agent_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            id,
        )
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        // Clear again: a lookup racing the UPDATE may have cached the token.
        self.forget_tokens();
        if !r {
            return Ok(None);
        }
        Ok(self.list_tokens().await?.into_iter().find(|t| t.id == id))
    }

    /// The details of a `token.revoked` audit row: the token's kind and scope.
    pub fn revoked_details(t: &TokenInfo) -> serde_json::Value {
        serde_json::json!({ "kind": t.kind, "scope": t.host_name })
    }

    /// When a batch for the host last arrived (None: no such host, or none yet).
    pub async fn host_last_heard(&self, name: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(
            sqlx::query_scalar!("SELECT last_heard FROM hosts WHERE name = $1", name)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// The audit trail's target for a host taken out: `host gpu-17 (1 agent token revoked)`.
    pub fn removed_host_target(name: &str, tokens: u64) -> String {
        let s = if tokens == 1 { "" } else { "s" };
        format!("host {name} ({tokens} agent token{s} revoked)")
    }

    /// Take a host out of the fleet: it leaves the fleet, rack and inventory pages and the
    /// absent rule (its "stopped reporting" alert resolves), and its agent tokens are
    /// revoked; its history stays (charts, energy reports). An agent reporting for it again
    /// with a token issued afterwards (or a client certificate) brings it back; a revoked
    /// token that another server still trusts (for up to a minute) writes history but
    /// leaves the host out. `None`: no such host in the fleet; else the number of tokens
    /// revoked.
    pub async fn remove_host(&self, name: &str, by: &str) -> Result<Option<u64>, sqlx::Error> {
        self.forget_tokens();
        let mut tx = self.pool.begin().await?;
        let hosts = sqlx::query!(
            "UPDATE hosts SET removed_at = now(), removed_by = $2 WHERE name = $1 AND removed_at IS NULL",
            name,
            by,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if hosts == 0 {
            return Ok(None);
        }
        let tokens = sqlx::query!(
            "UPDATE agent_tokens SET revoked_at = now() WHERE host_name = $1 AND revoked_at IS NULL",
            name,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        self.forget_tokens();
        Ok(Some(tokens))
    }
}

/// The host an agent token writes, and when the token was issued: a token issued before
/// its host was taken out of the fleet cannot bring it back (a server may still trust it
/// for up to a minute after the revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHost {
    /// The host's name.
    pub name: String,
    /// When the token was minted.
    pub issued: DateTime<Utc>,
}

/// What a Prometheus remote-write token may write (`POST /api/v1/write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteScope {
    /// Any host of this site; new hosts are placed in it, hosts of other sites refused.
    Site(String),
    /// These hosts only.
    Hosts(Vec<String>),
}

impl WriteScope {
    /// As `rackwatch token list` shows it.
    pub fn label(&self) -> String {
        match self {
            WriteScope::Site(s) => format!("site {s}"),
            WriteScope::Hosts(h) => format!("hosts {}", h.join(", ")),
        }
    }
}

/// A user as listed on the admin page (never the hash).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub id: i64,
    pub name: String,
    #[schema(value_type = Role)]
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, sqlx::Error> {
        sqlx::query_as!(
            UserInfo,
            "SELECT id, name, role, created_at FROM users ORDER BY name"
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Delete a user by name (the command line's `user remove`, the admin page), unless
    /// they are the last admin: nobody could then manage users or tokens from the dashboard. Their sessions
    /// end with them.
    pub async fn delete_user_named(&self, name: &str) -> Result<UserRemoval, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Locks the admins' rows: two removals at once cannot leave none.
        let admins = sqlx::query_scalar!("SELECT name FROM users WHERE role = 'admin' FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
        if admins.len() == 1 && admins[0] == name {
            return Ok(UserRemoval::LastAdmin);
        }
        let role = sqlx::query_scalar!("DELETE FROM users WHERE name = $1 RETURNING role", name)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(match role {
            Some(role) => UserRemoval::Removed { role },
            None => UserRemoval::NoSuchUser,
        })
    }
}

/// What [`Store::delete_user_named`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum UserRemoval {
    Removed {
        role: String,
    },
    /// The user is the only admin; nothing was deleted.
    LastAdmin,
    NoSuchUser,
}

/// An agent token as listed (never the secret).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    /// What the token may do: `agent` (ingest for one host), `scheduler` (report one
    /// pool's queue) or `remote_write` (Prometheus remote write for a site or hosts).
    #[schema(example = "agent")]
    pub kind: String,
    /// What the token is bound to: the host of an agent token, `pool:NAME` for a
    /// scheduler token, `write:site:SITE` or `write:hosts:A,B` for a remote-write token.
    pub host_name: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An argon2id hash of a random password, verified against when a user does not exist.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0o4nEBr3EHR8Ow3q1LiZ0dLWbvbIcV1SQX4/FNR66cQ";

#[cfg(test)]
mod tests {
    #[test]
    fn the_pool_check_agrees_with_the_library_check() {
        let phc = super::hash_password("correct horse");
        let mut mem = Vec::new();
        for (pw, want) in [
            ("correct horse", true),
            ("correct hors", false),
            ("", false),
        ] {
            assert_eq!(super::verify_password(pw, &phc), want, "{pw}");
            assert_eq!(super::verify_reusing(pw, &phc, &mut mem), want, "{pw}");
        }
        assert!(!super::verify_reusing("x", "not a phc string", &mut mem));
        assert!(!super::verify_reusing("x", super::DUMMY_HASH, &mut mem));
    }
}
