//! The audit trail: who did what, from where, with what outcome (`audit_log`).
//!
//! Rows are only ever added (a trigger refuses updates) and deleted by retention
//! (`retention.audit_days`). Details never hold passwords, tokens or session ids.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Store;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused: wrong password, not allowed, bad input.
    Refused,
    /// Tried and failed (mail not delivered, backup failed).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// The actor of things the server does on its own.
pub const SYSTEM: &str = "system";
/// The actor of users created or changed by proxy sign-on.
pub const PROXY: &str = "proxy";

/// One action to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// A user name, `agent:HOST`, or [`SYSTEM`].
    pub actor: &'a str,
    /// The client address, for actions that came over HTTP.
    pub source: Option<String>,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

impl<'a> Entry<'a> {
    /// An action that succeeded, with no details.
    pub fn ok(actor: &'a str, action: &'a str, target: &'a str) -> Entry<'a> {
        Entry {
            actor,
            source: None,
            action,
            target,
            outcome: Outcome::Ok,
            details: serde_json::json!({}),
        }
    }

    pub fn from(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source.map(|a| a.to_string());
        self
    }

    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }

    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

/// A recorded action.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// A user name, `cli:USER`, an agent's host, or `system`.
    pub actor: String,
    /// The client address, where there is one.
    pub source: Option<String>,
    /// E.g. `login`, `user.role_changed`, `token.created`, `silence.created`.
    #[schema(example = "login")]
    pub action: String,
    /// What the action was done to (a user, a token, an alert…).
    pub target: String,
    /// `ok`, `refused` or `failed`.
    #[schema(pattern = "^(ok|refused|failed)$")]
    pub outcome: String,
    /// What else the action recorded (never a secret).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// Which rows to list; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only rows older than this row (by time, then id): the next page after it.
    pub before: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// Record one action.
    pub async fn audit(&self, e: Entry<'_>) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO audit_log (actor, source, action, target, outcome, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            e.actor,
            e.source,
            e.action,
            e.target,
            e.outcome.as_str(),
            e.details,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest rows matching `f`, newest first. A `before` row that retention has
    /// deleted matches nothing: every older row went with it.
    pub async fn audit_rows(&self, f: &Filter) -> Result<Vec<AuditRow>, sqlx::Error> {
        sqlx::query_as!(
            AuditRow,
            "SELECT id, at, actor, source, action, target, outcome, details FROM audit_log \
             WHERE ($1::text IS NULL OR actor = COALESCE((SELECT name FROM users WHERE lower(name) = lower($1) ORDER BY name = $1 DESC LIMIT 1), $1)) \
               AND ($2::text IS NULL OR action = $2) \
               AND ($3::timestamptz IS NULL OR at >= $3) AND ($4::timestamptz IS NULL OR at < $4) \
               AND ($6::bigint IS NULL OR (at, id) < (SELECT at, id FROM audit_log WHERE id = $6)) \
             ORDER BY at DESC, id DESC LIMIT $5",
            f.actor,
            f.action,
            f.since,
            f.until,
            f.limit.clamp(1, 10_000),
            f.before,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// End the sessions past their absolute timeout or idle for `idle`, recording one
    /// `session.expired` row per session (actor `system`, target the user). Returns how
    /// many ended. The deletion and its record are one statement.
    pub async fn expire_sessions(&self, idle: chrono::Duration) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query!(
            "WITH gone AS (
                 DELETE FROM sessions s
                  WHERE s.expires_at <= now() OR s.last_seen_at <= now() - $1::text::interval
              RETURNING s.user_id, s.expires_at <= now() AS absolute)
             INSERT INTO audit_log (actor, action, target, outcome, details)
             SELECT $2, 'session.expired', u.name, 'ok',
                    jsonb_build_object('reason', CASE WHEN g.absolute THEN 'absolute timeout' ELSE 'idle timeout' END)
               FROM gone g JOIN users u ON u.id = g.user_id",
            format!("{} seconds", idle.num_seconds()),
            SYSTEM,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Record each silence that has ended on its own since the last call, once
    /// (`silence.expired`, actor `system`). One ended by an operator is recorded by the
    /// handler that ended it and is not recorded again here.
    pub async fn record_ended_silences(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query!(
            "WITH ended AS (
                 UPDATE silences SET end_recorded = true
                  WHERE ends_at <= now() AND NOT end_recorded
              RETURNING id, author, ends_at)
             INSERT INTO audit_log (actor, action, target, outcome, details)
             SELECT $1, 'silence.expired', 'silence ' || id, 'ok',
                    jsonb_build_object('reason', 'ended', 'author', author, 'ends_at', ends_at)
               FROM ended",
            SYSTEM,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Retention: delete rows older than `days`.
    pub async fn delete_old_audit(&self, days: u32) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query!(
            "DELETE FROM audit_log WHERE at < now() - make_interval(days => $1)",
            days as i32
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

impl Store {
    /// Record a user saved by `actor` (the admin page or `rackwatch user add`): created,
    /// or its password reset and, when it changed, its role. `before` is the user's role
    /// before the change (`None`: it did not exist).
    pub async fn audit_user_saved(
        &self,
        actor: &str,
        source: Option<std::net::IpAddr>,
        name: &str,
        before: Option<String>,
        role: super::auth::Role,
    ) -> Result<(), sqlx::Error> {
        let role = role.as_str();
        match before {
            None => {
                self.audit(
                    Entry::ok(actor, "user.created", name)
                        .from(source)
                        .details(serde_json::json!({ "role": role })),
                )
                .await
            }
            Some(old) => {
                self.audit(Entry::ok(actor, "user.password_reset", name).from(source))
                    .await?;
                self.audit_role_changed(actor, source, name, &old, role)
                    .await
            }
        }
    }

    /// `user.role_changed`, when `old` is not `role`.
    pub async fn audit_role_changed(
        &self,
        actor: &str,
        source: Option<std::net::IpAddr>,
        name: &str,
        old: &str,
        role: &str,
    ) -> Result<(), sqlx::Error> {
        if old == role {
            return Ok(());
        }
        self.audit(
            Entry::ok(actor, "user.role_changed", name)
                .from(source)
                .details(serde_json::json!({ "from": old, "to": role })),
        )
        .await
    }
}
