//! Periodic work (rollups, partitions, retention, session cleanup, forecasts, anomaly
//! scores) on exactly one
//! server of a cluster: the one holding a Postgres advisory lock. If that server dies,
//! its connection closes, the lock is released and another replica takes over within
//! one tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::store::Store;

/// Advisory lock key of the job leader ("rackwatch" in ASCII, truncated to 63 bits).
pub const LEADER_LOCK: i64 = 0x7261_636b_7761_7463;
/// How often the scheduler wakes up.
const TICK: Duration = Duration::from_secs(5);
const ROLLUP_EVERY: Duration = Duration::from_secs(60);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
const FORECAST_EVERY: Duration = Duration::from_secs(3600);
/// Energy accounting redoes the last hour each run, so running more often than hourly
/// keeps the energy page fresh; it also checks whether the weekly report mail is due.
const ENERGY_EVERY: Duration = Duration::from_secs(300);
const ANOMALY_EVERY: Duration = Duration::from_secs(60);

/// Start the scheduler; it stops when `shutdown` turns true. `leader_flag` tells
/// other leader-only loops (alerting) whether this server holds the lock.
pub fn spawn(
    store: Store,
    db_url: String,
    cfg: Arc<Config>,
    leader_flag: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leader: Option<PgConnection> = None;
        let mut last_rollup: Option<Instant> = None;
        let mut last_maintenance: Option<Instant> = None;
        let mut last_forecast: Option<Instant> = None;
        let mut last_energy: Option<Instant> = None;
        let mut last_anomaly: Option<Instant> = None;
        let mut anomaly = crate::analytics::anomaly::AnomalyJob::default();
        loop {
            if leader.is_none() {
                leader = try_lead(&db_url).await;
                if leader.is_some() {
                    tracing::info!("this server runs the periodic jobs (leader)");
                    last_rollup = None;
                    last_maintenance = None;
                }
            } else if let Some(conn) = leader.as_mut() {
                if sqlx::query("SELECT 1").execute(&mut *conn).await.is_err() {
                    tracing::warn!(
                        "lost the leader connection; periodic jobs pause until re-elected"
                    );
                    leader = None;
                }
            }
            leader_flag.store(leader.is_some(), Ordering::Relaxed);
            if leader.is_some() {
                if last_maintenance.is_none_or(|t| t.elapsed() >= MAINTENANCE_EVERY) {
                    maintenance(&store, &cfg).await;
                    last_maintenance = Some(Instant::now());
                }
                if last_rollup.is_none_or(|t| t.elapsed() >= ROLLUP_EVERY) {
                    match store.run_rollups(Utc::now()).await {
                        Ok(r) => tracing::debug!(?r, "rollups"),
                        Err(e) => tracing::warn!("rollup job: {e}"),
                    }
                    last_rollup = Some(Instant::now());
                }
                if last_forecast.is_none_or(|t| t.elapsed() >= FORECAST_EVERY) {
                    match crate::analytics::forecast::run(&store, Utc::now()).await {
                        Ok(n) => tracing::info!(forecasts = n, "forecast job"),
                        Err(e) => tracing::warn!("forecast job: {e:#}"),
                    }
                    last_forecast = Some(Instant::now());
                }
                if last_energy.is_none_or(|t| t.elapsed() >= ENERGY_EVERY) {
                    energy(&store, &cfg).await;
                    last_energy = Some(Instant::now());
                }
                // After the rollups of the same tick, so the minutes it scores are rolled up.
                if cfg.anomaly.enabled && last_anomaly.is_none_or(|t| t.elapsed() >= ANOMALY_EVERY)
                {
                    match anomaly.run(&store, &cfg.anomaly, Utc::now()).await {
                        Ok(r) if r.trained + r.skipped > 0 || r.anomalous_minutes > 0 => {
                            tracing::info!(?r, "anomaly job")
                        }
                        Ok(r) => tracing::debug!(?r, "anomaly job"),
                        Err(e) => tracing::warn!("anomaly job: {e:#}"),
                    }
                    last_anomaly = Some(Instant::now());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        leader_flag.store(false, Ordering::Relaxed);
        if let Some(conn) = leader {
            let _ = conn.close().await;
        }
    })
}

async fn try_lead(db_url: &str) -> Option<PgConnection> {
    let mut conn = PgConnection::connect(db_url).await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut conn)
        .await
        .ok()?;
    got.then_some(conn)
}

async fn energy(store: &Store, cfg: &Config) {
    match crate::analytics::energy::run(store, &cfg.energy, Utc::now()).await {
        Ok(r) => tracing::debug!(?r, "energy accounting"),
        Err(e) => tracing::warn!("energy accounting: {e}"),
    }
    if let Err(e) = crate::report::mail::send_due(store, cfg, Utc::now()).await {
        tracing::warn!("weekly energy report mail: {e:#}");
    }
}

async fn maintenance(store: &Store, cfg: &Config) {
    let now = Utc::now();
    if let Err(e) = store
        .ensure_partitions(
            now,
            cfg.retention.raw_days,
            cfg.retention.partitions_ahead_days,
        )
        .await
    {
        tracing::warn!("partition job: {e:#}");
    }
    match store
        .drop_expired_partitions(
            now,
            cfg.retention.raw_days,
            cfg.retention.rollup_1m_days,
            cfg.retention.anomaly_scores_days,
        )
        .await
    {
        Ok(d) if !d.is_empty() => tracing::info!(dropped = ?d, "retention dropped partitions"),
        Ok(_) => {}
        Err(e) => tracing::warn!("retention job: {e:#}"),
    }
    if let Err(e) = sqlx::query("DELETE FROM energy_hourly WHERE hour < $1")
        .bind(now - chrono::Duration::days(i64::from(cfg.retention.energy_hourly_days)))
        .execute(&store.pool)
        .await
    {
        tracing::warn!("energy retention: {e}");
    }
    if let Err(e) = store.delete_expired_sessions().await {
        tracing::warn!("session cleanup: {e}");
    }
}
