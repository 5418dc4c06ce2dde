//! Periodic work on exactly one server of a cluster: the one holding a Postgres advisory
//! lock. If that server dies, its connection closes, the lock is released and another
//! replica takes over within one tick.
//!
//! The jobs are one table ([`JOBS`]): a name, how often, and what to run. Within a tick
//! they run in table order, so a job can rely on the ones above it (the anomaly job scores
//! minutes the rollup job has just made). Each run is recorded on the server's
//! [`JobBoard`]: last success, duration and error show on `/metrics` and the admin page.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::analytics::anomaly::AnomalyJob;
use crate::config::Config;
use crate::model::format::count;
use crate::model::jobs::JobBoard;
use crate::model::telemetry::Telemetry;
use crate::store::Store;

pub use crate::store::LEADER_LOCK;
/// How often the scheduler wakes up.
const TICK: Duration = Duration::from_secs(5);

/// What a job runs with.
pub struct JobContext {
    pub store: Store,
    pub cfg: Arc<Config>,
    /// Where runs and mails are timed, for `/metrics`.
    pub telemetry: Arc<Telemetry>,
    /// The anomaly job's models, kept between runs.
    anomaly: tokio::sync::Mutex<AnomalyJob>,
}

/// A job's run: a few words on what it did, or why it failed.
pub type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + 'a>>;

/// One periodic job.
pub struct Job {
    pub name: &'static str,
    pub every: Duration,
    /// Whether the configuration turns it on.
    pub enabled: fn(&Config) -> bool,
    pub run: for<'a> fn(&'a JobContext) -> Run<'a>,
    /// Log successful runs at debug level only (frequent, routine work).
    pub quiet: bool,
}

fn always(_: &Config) -> bool {
    true
}

/// Every periodic job, in the order they run within a tick.
pub const JOBS: &[Job] = &[
    Job {
        name: "maintenance",
        every: Duration::from_secs(3600),
        enabled: always,
        run: |c| Box::pin(maintenance(c)),
        quiet: true,
    },
    Job {
        name: "rollups",
        every: Duration::from_secs(60),
        enabled: always,
        run: |c| Box::pin(rollups(c)),
        quiet: true,
    },
    Job {
        name: "forecasts",
        every: Duration::from_secs(3600),
        enabled: always,
        run: |c| Box::pin(forecasts(c)),
        quiet: false,
    },
    // Energy accounting redoes the last hour each run, so running more often than hourly
    // keeps the energy page fresh; it also mails the weekly report when due. Before the
    // capacity job, whose rack budgets are dated from its hourly rack power.
    Job {
        name: "energy",
        every: Duration::from_secs(300),
        enabled: always,
        run: |c| Box::pin(energy(c)),
        quiet: true,
    },
    // After the forecasts and the energy accounting: recommendations, exhaustion dates,
    // consolidation.
    Job {
        name: "capacity",
        every: Duration::from_secs(3600),
        enabled: |cfg| cfg.capacity.enabled,
        run: |c| Box::pin(capacity(c)),
        quiet: false,
    },
    // After the rollups of the same tick, so the minutes it scores are rolled up.
    Job {
        name: "anomaly",
        every: Duration::from_secs(60),
        enabled: |cfg| cfg.anomaly.enabled,
        run: |c| Box::pin(anomaly(c)),
        quiet: true,
    },
    // Looks every 10 minutes whether the newest archive is `backup.every_hours` old, so a
    // restart or a new leader neither skips a backup nor makes an extra one.
    Job {
        name: "backup",
        every: Duration::from_secs(600),
        enabled: |cfg| cfg.backup.enabled(),
        run: |c| Box::pin(backup(c)),
        quiet: true,
    },
];

/// Start the scheduler; it stops when `shutdown` turns true. `leader_flag` tells
/// other leader-only loops (alerting) whether this server holds the lock; `board`
/// records every run, `telemetry` times it.
pub fn spawn(
    store: Store,
    cfg: Arc<Config>,
    leader_flag: Arc<AtomicBool>,
    board: Arc<JobBoard>,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    for j in JOBS.iter().filter(|j| (j.enabled)(&cfg)) {
        board.register(j.name, j.every);
    }
    let ctx = JobContext {
        store,
        cfg,
        telemetry,
        anomaly: tokio::sync::Mutex::new(match board.anomaly_backend() {
            Some(backend) => AnomalyJob::new(backend),
            None => AnomalyJob::default(),
        }),
    };
    tokio::spawn(async move {
        let mut leader: Option<PgConnection> = None;
        let mut last: Vec<Option<Instant>> = vec![None; JOBS.len()];
        loop {
            if leader.is_none() {
                leader = try_lead(&ctx.store).await;
                if leader.is_some() {
                    tracing::info!("this server runs the periodic jobs (leader)");
                    // A new leader runs every job at once: the old one may have died
                    // mid-period.
                    last.iter_mut().for_each(|l| *l = None);
                }
            } else {
                still_leads(&mut leader).await;
            }
            leader_flag.store(leader.is_some(), Ordering::Relaxed);
            board.set_leader(leader.is_some());
            if leader.is_some() {
                for (job, last) in JOBS.iter().zip(last.iter_mut()) {
                    if !(job.enabled)(&ctx.cfg) || last.is_some_and(|t| t.elapsed() < job.every) {
                        continue;
                    }
                    // A stop waits for the job running, not for the rest of the tick's.
                    if *shutdown.borrow() {
                        break;
                    }
                    // Checked before each job, not only each tick: a long job (a backup,
                    // the forecasts) may outlast the lock, and another server then leads.
                    if !still_leads(&mut leader).await {
                        leader_flag.store(false, Ordering::Relaxed);
                        board.set_leader(false);
                        break;
                    }
                    // While it runs, the lock is checked every LEAD_CHECK: a job whose
                    // server lost the lock stops (its open transaction rolls back), so
                    // two servers never run the same job for long.
                    let started = (Utc::now(), Instant::now());
                    let run = run_one(job, &ctx, &board);
                    tokio::pin!(run);
                    let ok = loop {
                        tokio::select! {
                            ok = &mut run => break Some(ok),
                            _ = tokio::time::sleep(LEAD_CHECK) => {
                                if !still_leads(&mut leader).await {
                                    break None;
                                }
                            }
                        }
                    };
                    let Some(ok) = ok else {
                        tracing::warn!(
                            job = job.name,
                            "job stopped: this server no longer holds the leader lock"
                        );
                        board.record(
                            job.name,
                            started.0,
                            started.1.elapsed(),
                            Err("stopped: this server lost the leader lock while it ran".into()),
                        );
                        leader_flag.store(false, Ordering::Relaxed);
                        board.set_leader(false);
                        break;
                    };
                    *last = Some(counted_from(ok, job.every, Instant::now()));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        leader_flag.store(false, Ordering::Relaxed);
        board.set_leader(false);
        if let Some(conn) = leader {
            let _ = conn.close().await;
        }
    })
}

/// How often the leader lock is checked while a job runs.
const LEAD_CHECK: Duration = Duration::from_secs(10);

/// The soonest a failed job with a longer period runs again.
const FAILED_RETRY: Duration = Duration::from_secs(300);

/// When a job that ended at `now` counts as last run, for its next run one `every` after:
/// `now` when it succeeded. A failed one (the database away for a moment) runs again
/// after a twelfth of its period, 5 minutes at least: an hourly job in 5 minutes, a daily
/// one in 2 hours, not a whole period later.
fn counted_from(ok: bool, every: Duration, now: Instant) -> Instant {
    let retry = (every / 12).max(FAILED_RETRY);
    if ok || every <= retry {
        return now;
    }
    now.checked_sub(every - retry).unwrap_or(now)
}

/// Run a job once, log and record the outcome; whether it succeeded.
async fn run_one(job: &Job, ctx: &JobContext, board: &JobBoard) -> bool {
    let start = Utc::now();
    let t = Instant::now();
    let result = (job.run)(ctx).await;
    let took = t.elapsed();
    ctx.telemetry.job_ran(job.name, took.as_secs_f64());
    match &result {
        Ok(summary) if job.quiet => {
            tracing::debug!(job = job.name, ms = took.as_millis() as u64, "{summary}")
        }
        Ok(summary) => tracing::info!(job = job.name, ms = took.as_millis() as u64, "{summary}"),
        Err(e) => tracing::warn!(job = job.name, "job failed: {e:#}"),
    }
    let ok = result.is_ok();
    board.record(job.name, start, took, result.map_err(|e| format!("{e:#}")));
    ok
}

/// Whether the lock's connection still answers, within 5 s, from a primary: a connection
/// that died (its lock with it) or hangs on a primary cut off by a failover, where
/// another server may lead already, ends this server's leadership at once.
async fn still_leads(leader: &mut Option<PgConnection>) -> bool {
    let Some(conn) = leader.as_mut() else {
        return false;
    };
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()").fetch_one(&mut *conn),
    )
    .await;
    match answer {
        Ok(Ok(true)) => true,
        Ok(Ok(false)) => {
            tracing::warn!(
                "the leader's database is a standby now; periodic jobs pause until re-elected"
            );
            *leader = None;
            false
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("lost the leader connection; periodic jobs pause until re-elected");
            *leader = None;
            false
        }
    }
}

/// The lock is held on a connection of its own to the current primary (after a failover,
/// the new one: the old leader's connection died with the old primary).
async fn try_lead(store: &Store) -> Option<PgConnection> {
    let mut conn = store.dedicated_connection().await.ok()?;
    let got: bool =
        sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "got!""#, LEADER_LOCK)
            .fetch_one(&mut conn)
            .await
            .ok()?;
    got.then_some(conn)
}

async fn rollups(c: &JobContext) -> anyhow::Result<String> {
    // By the database's clock, as ingest stores samples: a leader whose clock runs ahead
    // would set the watermark in the future and skip minutes.
    let r = c.store.run_rollups(c.store.clock().await).await?;
    Ok(format!(
        "{} host and {} GPU minutes, {} quarter-hours, {} late minutes",
        r.host_rows, r.gpu_rows, r.quarter_rows, r.dirty_buckets
    ))
}

async fn forecasts(c: &JobContext) -> anyhow::Result<String> {
    // Pools' demand is forecast from the capacity job's demand slots: bring them up to
    // the rollups first (the capacity job, after this one, finds them current). If that
    // fails, the other series are still forecast and the capacity job tries again.
    if c.cfg.capacity.enabled {
        if let Err(e) =
            crate::analytics::capacity::update_demand(&c.store, &c.cfg, Utc::now()).await
        {
            tracing::warn!("pool demand not brought up to date before the forecasts: {e:#}");
        }
    }
    let run = crate::analytics::forecast::run(&c.store, Utc::now()).await?;
    Ok(run.to_string())
}

async fn anomaly(c: &JobContext) -> anyhow::Result<String> {
    let mut job = c.anomaly.lock().await;
    let r = job.run(&c.store, &c.cfg.anomaly, Utc::now()).await?;
    let summary = format!(
        "{} scored ({} anomalous), {} trained, {} without a model",
        count(r.scored_minutes, "minute"),
        r.anomalous_minutes,
        count(r.trained, "model"),
        count(r.skipped, "host")
    );
    // The job runs every minute and logs at debug; a run that trained or found something
    // is worth a line at info.
    if r.trained + r.skipped > 0 || r.anomalous_minutes > 0 {
        tracing::info!(job = "anomaly", "{summary}");
    }
    Ok(summary)
}

async fn capacity(c: &JobContext) -> anyhow::Result<String> {
    let r = crate::analytics::capacity::run(&c.store, &c.cfg, Utc::now()).await?;
    Ok(format!(
        "{} recommended ({} without a plan yet), {} and {} dated, {}",
        count(r.pools, "pool"),
        r.skipped,
        count(r.racks, "rack"),
        count(r.disks, "disk"),
        count(r.demand_slots, "demand slot")
    ))
}

/// Energy accounting, then the weekly report mail when it is due. Both run; either
/// failing fails the job.
async fn energy(c: &JobContext) -> anyhow::Result<String> {
    let accounting = crate::analytics::energy::run(&c.store, &c.cfg.energy, Utc::now()).await;
    let mail = crate::report::mail::send_due(&c.store, &c.cfg, Utc::now(), &c.telemetry).await;
    let r = accounting.map_err(|e| anyhow::anyhow!("energy accounting: {e}"))?;
    mail.map_err(|e| anyhow::anyhow!("weekly energy report mail: {e:#}"))?;
    Ok(format!(
        "{} GPU hours accounted ({} redone after late data)",
        r.rows, r.dirty_hours
    ))
}

/// A scheduled backup when the newest archive is due, then the oldest beyond `keep`
/// deleted. The newest archive's time is on `/metrics` either way.
async fn backup(c: &JobContext) -> anyhow::Result<String> {
    use crate::store::audit::{Entry, Outcome, SYSTEM};
    use crate::store::backup as b;
    let cfg = &c.cfg.backup;
    let dir = c.cfg.data_dir.join(&cfg.dir);
    let now = Utc::now();
    let archives = b::archives(&dir)?;
    for a in archives.iter().filter(|a| !a.valid) {
        tracing::warn!(file = %a.path.display(), "not a backup archive (empty or cut short, as a crash while it was written leaves it): it counts as no backup and is not pruned; delete it once looked at");
    }
    // The newest good archive; one stamped in the future (made while the clock was ahead)
    // would put the next backup off until then, so it does not count.
    let ahead = now + chrono::Duration::hours(1);
    let (future, past): (Vec<&b::Archive>, Vec<&b::Archive>) = archives
        .iter()
        .filter(|a| a.valid)
        .partition(|a| a.made > ahead);
    let newest = past.last();
    if let Some(future) = future.last() {
        tracing::warn!(file = %future.path.display(), "a backup archive is stamped in the future (the clock was ahead when it was made): backups go by the others");
    }
    if let Some(newest) = newest {
        c.telemetry.backup_seen(newest.made, newest.bytes);
        let due = newest.made + chrono::Duration::hours(i64::from(cfg.every_hours));
        if due > now {
            return Ok(format!(
                "next backup due at {}",
                due.format("%Y-%m-%d %H:%M UTC")
            ));
        }
    }
    let out = dir.join(b::archive_name(now));
    let target = out.display().to_string();
    let done = b::backup(&c.cfg.database.managed_bin_dir, c.store.url.expose(), &out).await;
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            let entry = Entry::ok(SYSTEM, "backup.made", &target)
                .outcome(Outcome::Failed)
                .details(serde_json::json!({ "error": format!("{e:#}") }));
            if let Err(ae) = c.store.audit(entry).await {
                tracing::warn!("audit row for a failed backup: {ae}");
            }
            return Err(e.context(format!("scheduled backup to {target}")));
        }
    };
    let pruned = b::prune(&dir, cfg.keep as usize)?;
    c.telemetry.backup_seen(now, done.bytes);
    c.store
        .audit(
            Entry::ok(SYSTEM, "backup.made", &target).details(serde_json::json!({
                "bytes": done.bytes,
                "seconds": done.seconds,
                "deleted": pruned.len(),
            })),
        )
        .await?;
    Ok(format!(
        "backup {} ({:.1} MB in {:.1} s), {} old archives deleted",
        target,
        done.bytes as f64 / 1e6,
        done.seconds,
        pruned.len()
    ))
}

/// Partitions ahead, retention behind, expired sessions and login throttles. Every step runs; the errors are
/// reported together.
async fn maintenance(c: &JobContext) -> anyhow::Result<String> {
    let (store, cfg) = (&c.store, &c.cfg);
    let now = Utc::now();
    let r = &cfg.retention;
    let mut errors = Vec::new();
    let mut done = Vec::new();
    if let Err(e) = store
        .ensure_partitions(now, r.raw_days, r.partitions_ahead_days)
        .await
    {
        errors.push(format!("partitions: {e}"));
    }
    match store
        .drop_expired_partitions(now, r.raw_days, r.rollup_1m_days, r.anomaly_scores_days)
        .await
    {
        Ok(d) if !d.is_empty() => {
            tracing::info!(dropped = ?d, "retention dropped partitions");
            done.push(format!("{} partitions dropped", d.len()));
        }
        Ok(_) => {}
        Err(e) => errors.push(format!("retention: {e:#}")),
    }
    let cutoff = now - chrono::Duration::days(i64::from(r.energy_hourly_days));
    if let Err(e) = store.drop_energy_hours_before(cutoff).await {
        errors.push(format!("energy retention: {e}"));
    }
    // Pool demand is measured from the 1-minute rollups and kept as long as they are, or as
    // long as the capacity job looks back if that is longer.
    let days = r.rollup_1m_days.max(cfg.capacity.history_days);
    let cutoff = now - chrono::Duration::days(i64::from(days));
    match store.drop_capacity_history_before(cutoff).await {
        Ok(n) if n > 0 => done.push(format!("{n} capacity rows past retention deleted")),
        Ok(_) => {}
        Err(e) => errors.push(format!("capacity retention: {e}")),
    }
    let days = |d: u32| now - chrono::Duration::days(i64::from(d));
    match store
        .delete_history(days(r.events_days), days(r.alert_history_days))
        .await
    {
        Ok(d) if d.total() > 0 => {
            tracing::info!(deleted = ?d, "retention deleted history");
            done.push(format!("{} history rows past retention deleted", d.total()));
        }
        Ok(_) => {}
        Err(e) => errors.push(format!("history retention: {e}")),
    }
    match store.delete_old_audit(r.audit_days).await {
        Ok(n) if n > 0 => done.push(format!("{n} audit rows past retention deleted")),
        Ok(_) => {}
        Err(e) => errors.push(format!("audit retention: {e}")),
    }
    let idle = chrono::Duration::seconds(cfg.server.session_idle_secs.max(0));
    match store.expire_sessions(idle).await {
        Ok(n) if n > 0 => done.push(format!("{n} sessions expired")),
        Ok(_) => {}
        Err(e) => errors.push(format!("session expiry: {e}")),
    }
    if let Err(e) = store.record_ended_silences().await {
        errors.push(format!("silence ends: {e}"));
    }
    if let Err(e) = store
        .delete_stale_login_throttles(chrono::Duration::hours(1))
        .await
    {
        errors.push(format!("login throttle cleanup: {e}"));
    }
    if errors.is_empty() {
        Ok(done.join(", "))
    } else {
        anyhow::bail!("{}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_runs_again_after_a_twelfth_of_its_period() {
        let now = Instant::now() + Duration::from_secs(86_400);
        let due = |ok, every: u64| {
            let from = counted_from(ok, Duration::from_secs(every), now);
            (from + Duration::from_secs(every)) - now
        };
        assert_eq!(due(true, 3600), Duration::from_secs(3600));
        assert_eq!(due(false, 3600), Duration::from_secs(300));
        assert_eq!(due(false, 86_400), Duration::from_secs(7200));
        // A job every minute runs again in a minute either way.
        assert_eq!(due(false, 60), Duration::from_secs(60));
    }
}
