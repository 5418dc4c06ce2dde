//! Alerting: rules → evaluator (pending → firing → resolved) → outbox → email.
//!
//! Runs on the job leader only (Postgres advisory lock), so two server replicas never
//! send the same mail. Hardware events wake the evaluator the moment they are stored.

pub mod channels;
pub mod eval;
pub mod notify;
pub mod rules;
pub mod silence;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::store::Store;
use rules::RuleSet;

/// Labels of an alert: site, rack, pool, host, gpu (as present), plus rule and severity.
pub type Labels = BTreeMap<String, String>;

/// Where an alert is, for people: `fra1 / r12 / gpu-17 / GPU 3`, or `pool train-a` for an
/// alert about a pool (a capacity alert).
pub fn location(labels: &Labels) -> String {
    let mut parts: Vec<String> = ["site", "rack", "host"]
        .iter()
        .filter_map(|k| labels.get(*k).cloned())
        .collect();
    if let Some(g) = labels.get("gpu") {
        parts.push(format!("GPU {g}"));
    }
    if parts.is_empty() {
        if let Some(p) = labels.get("pool") {
            parts.push(format!("pool {p}"));
        }
    }
    parts.join(" / ")
}

fn alert_states() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["pending", "firing"])
}

/// Stable identity of an alert: rule + labels.
pub fn fingerprint(rule: &str, labels: &Labels) -> String {
    let mut s = String::from(rule);
    for (k, v) in labels {
        if k != "rule" && k != "severity" {
            s.push('|');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
    }
    s
}

/// An alert as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AlertRow {
    /// The rule and the labels: one alert per rule and GPU, host, rack or pool.
    pub fingerprint: String,
    pub rule: String,
    pub severity: String,
    #[schema(schema_with = alert_states)]
    pub state: String,
    /// site, rack, pool, host, gpu, event, xid as present.
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: sqlx::types::Json<Labels>,
    pub summary: String,
    pub description: String,
    /// The observed value that crossed the rule's threshold.
    pub value: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub occurrences: i32,
    /// Firing → resolved transitions in the last hour; 3 or more is flapping.
    pub flaps: i32,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Pending and firing alerts, most severe first, then those of hosts and GPUs before
    /// the planning ones (a pool's or a rack's capacity), then oldest first.
    pub async fn current_alerts(&self) -> Result<Vec<AlertRow>, sqlx::Error> {
        sqlx::query_as!(
            AlertRow,
            r#"SELECT fingerprint, rule, severity, state, labels AS "labels: sqlx::types::Json<Labels>", summary,
                    description, value, started_at, fired_at, occurrences, flaps, acknowledged_by, acknowledged_at
               FROM alerts WHERE state IN ('pending', 'firing')
              ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                       NOT (labels ? 'host'), started_at"#,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// [`Store::current_alerts`], each with whether an active silence mutes it (matched on
    /// its labels, its rule and its severity).
    pub async fn current_alerts_silenced(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(AlertRow, bool)>, sqlx::Error> {
        let rows = self.current_alerts().await?;
        let mut out = Vec::with_capacity(rows.len());
        for a in rows {
            let mut l = a.labels.0.clone();
            l.insert("rule".into(), a.rule.clone());
            l.insert("severity".into(), a.severity.clone());
            let silenced = silence::silenced(&self.pool, &l, now).await?;
            out.push((a, silenced));
        }
        Ok(out)
    }
}

/// Rules from `alerting.rules_file`, re-read when the file changes. A broken file is
/// reported and the last good rules stay in force.
pub struct RuleSource {
    path: String,
    loaded_mtime: Option<SystemTime>,
    pub rules: Arc<RuleSet>,
    /// `alerting.channels`, which the routes' channels must name.
    channels: std::collections::BTreeMap<String, crate::config::ChannelConfig>,
}

/// What a look at the rules file found, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub enum Reload {
    Unchanged,
    /// New rules are in force.
    Loaded {
        sha256: String,
        rules: usize,
        routes: usize,
    },
    /// The file changed but does not parse; the previous rules stay in force.
    Refused {
        sha256: String,
        error: String,
    },
}

fn file_sha256(path: &str) -> String {
    use sha2::Digest;
    std::fs::read(path)
        .map(|b| hex::encode(sha2::Sha256::digest(&b)))
        .unwrap_or_default()
}

impl RuleSource {
    pub fn new(
        path: &str,
        channels: &std::collections::BTreeMap<String, crate::config::ChannelConfig>,
    ) -> Result<RuleSource, rules::RuleError> {
        let mut s = RuleSource {
            path: path.to_string(),
            loaded_mtime: None,
            rules: Arc::new(RuleSet::default()),
            channels: channels.clone(),
        };
        if !path.is_empty() {
            s.rules = Arc::new(RuleSet::load_checked(std::path::Path::new(path), channels)?);
            s.loaded_mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        }
        Ok(s)
    }

    /// The rules in force, as a [`Reload::Loaded`] (the start's audit row); `None`
    /// without a rules file.
    pub fn current(&self) -> Option<Reload> {
        (!self.path.is_empty()).then(|| Reload::Loaded {
            sha256: file_sha256(&self.path),
            rules: self.rules.rules.len(),
            routes: self.rules.routes.len(),
        })
    }

    /// Reload if the file changed.
    pub fn refresh(&mut self) -> Reload {
        if self.path.is_empty() {
            return Reload::Unchanged;
        }
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime == self.loaded_mtime {
            return Reload::Unchanged;
        }
        self.loaded_mtime = mtime;
        let sha256 = file_sha256(&self.path);
        match RuleSet::load_checked(std::path::Path::new(&self.path), &self.channels) {
            Ok(r) => {
                tracing::info!(
                    rules = r.rules.len(),
                    routes = r.routes.len(),
                    "alert rules reloaded"
                );
                let (rules, routes) = (r.rules.len(), r.routes.len());
                self.rules = Arc::new(r);
                Reload::Loaded {
                    sha256,
                    rules,
                    routes,
                }
            }
            Err(e) => {
                tracing::error!("alert rules not reloaded, keeping the previous ones: {e}");
                Reload::Refused {
                    sha256,
                    error: e.to_string(),
                }
            }
        }
    }

    /// Record a load or a refusal in the audit trail (actor `system`, target the file).
    async fn audit(&self, store: &Store, what: &Reload) {
        use crate::store::audit::{Entry, Outcome, SYSTEM};
        let entry = match what {
            Reload::Unchanged => return,
            Reload::Loaded {
                sha256,
                rules,
                routes,
            } => Entry::ok(SYSTEM, "rules.loaded", &self.path).details(serde_json::json!({
                "sha256": sha256, "rules": rules, "routes": routes,
            })),
            Reload::Refused { sha256, error } => Entry::ok(SYSTEM, "rules.refused", &self.path)
                .outcome(Outcome::Refused)
                .details(serde_json::json!({ "sha256": sha256, "error": error })),
        };
        if let Err(e) = store.audit(entry).await {
            tracing::warn!("audit: {e}");
        }
    }
}

/// Start the evaluator and the mail sender. They act only while `leader` is true.
pub fn spawn(
    store: Store,
    cfg: Arc<Config>,
    leader: Arc<AtomicBool>,
    wakeup: Arc<Notify>,
    telemetry: Arc<crate::model::telemetry::Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, rules::RuleError> {
    let mut source = RuleSource::new(&cfg.alerting.rules_file, &cfg.alerting.channels)?;
    telemetry.rules_reloaded(true);
    // The sender runs apart from the evaluator: a mail server that hangs (each attempt
    // waits out its timeout) must not hold up evaluation, nor the channels' deliveries
    // behind the evaluation round.
    let queued = Arc::new(Notify::new());
    let sender_task = tokio::spawn({
        let (store, cfg, leader, queued) =
            (store.clone(), cfg.clone(), leader.clone(), queued.clone());
        let mut sender = notify::Sender::new(&cfg, telemetry.clone());
        let mut shutdown = shutdown.clone();
        async move {
            loop {
                if leader.load(Ordering::Relaxed) {
                    if let Err(e) = sender.send_due(&store, store.clock().await).await {
                        tracing::warn!("alert notifications: {e:#}");
                    }
                }
                tokio::select! {
                    _ = queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
                }
            }
        }
    });
    Ok(tokio::spawn(async move {
        if let Some(loaded) = source.current() {
            source.audit(&store, &loaded).await;
        }
        let eval_every = Duration::from_secs(cfg.alerting.eval_interval_secs);
        let mut last_full = Instant::now() - eval_every;
        // When this replica became the leader: hosts are judged silent from then at most.
        let mut watching_since = None;
        let mut round = RoundLock::default();
        loop {
            if !leader.load(Ordering::Relaxed) {
                watching_since = None;
            } else {
                let since = match watching_since {
                    Some(t) => t,
                    // The database's clock, as the rounds go by.
                    None => *watching_since.insert(store.clock().await),
                };
                let reload = source.refresh();
                match reload {
                    Reload::Unchanged => {}
                    Reload::Loaded { .. } => telemetry.rules_reloaded(true),
                    Reload::Refused { .. } => telemetry.rules_reloaded(false),
                }
                source.audit(&store, &reload).await;
                let rules = source.rules.clone();
                let full = last_full.elapsed() >= eval_every;
                if full {
                    last_full = Instant::now();
                }
                // One round at a time across servers: a second leader for a moment (the
                // lock's connection died mid-job, a failover) skips its round while the
                // first one's runs, and the next one reads what it committed, instead of
                // firing and mailing the same alerts again.
                match round.begin(&store).await {
                    Ok(true) => {
                        if let Err(e) =
                            eval::evaluate(&store, &rules, &cfg, store.clock().await, since, full)
                                .await
                        {
                            tracing::warn!("alert evaluation: {e:#}");
                        }
                        round.end().await;
                    }
                    Ok(false) => {
                        tracing::debug!("another server is evaluating alerts; this round skipped")
                    }
                    Err(e) => tracing::warn!("alert evaluation: {e:#}"),
                }
                queued.notify_one();
            }
            tokio::select! {
                _ = wakeup.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        let _ = sender_task.await;
    }))
}

/// The advisory lock key one evaluation round holds ("rwevalrn").
pub const EVAL_ROUND_LOCK: i64 = 0x7277_6576_616c_726e;

/// Holds [`EVAL_ROUND_LOCK`] for the length of a round, on a connection of its own (taken
/// once and kept; a broken one is replaced at the next round).
#[derive(Default)]
struct RoundLock {
    conn: Option<sqlx::PgConnection>,
}

impl RoundLock {
    /// Take the lock: false when another server's round holds it. A connection that died
    /// while idle (an idle timeout, a failover) is replaced once, at once.
    async fn begin(&mut self, store: &Store) -> anyhow::Result<bool> {
        match self.try_begin(store).await {
            Err(_) if self.conn.is_none() => self.try_begin(store).await,
            r => r,
        }
    }

    async fn try_begin(&mut self, store: &Store) -> anyhow::Result<bool> {
        if self.conn.is_none() {
            self.conn = Some(store.dedicated_connection().await?);
        }
        let conn = self.conn.as_mut().expect("just set");
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(EVAL_ROUND_LOCK)
                .fetch_one(&mut *conn),
        )
        .await;
        match got {
            Ok(Ok(got)) => Ok(got),
            Ok(Err(e)) => {
                self.conn = None;
                Err(anyhow::anyhow!("taking the evaluation lock: {e}"))
            }
            Err(_) => {
                self.conn = None;
                Err(anyhow::anyhow!(
                    "taking the evaluation lock: no answer in 5 s"
                ))
            }
        }
    }

    /// Let the lock go; a connection that fails to is dropped, which lets it go too.
    async fn end(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let done = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(EVAL_ROUND_LOCK)
                .execute(&mut *conn),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            self.conn = None;
        }
    }
}
