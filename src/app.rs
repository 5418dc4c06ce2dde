//! Starting the pieces: the HTTP server, the jobs, the local agent and the simulated
//! fleet. `serve`, `demo` and the tests all start them through here.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DurationRound, Utc};
use sha2::Digest as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::collect::agent::{self, Timing};
use crate::collect::nvml::NvmlSource;
use crate::collect::shipper::Shipper;
use crate::collect::simulator::SimulatedHost;
use crate::collect::spool::Spool;
use crate::collect::system::SystemSource;
use crate::collect::Source;
use crate::config::Config;
use crate::model::jobs::JobBoard;
use crate::model::telemetry::Telemetry;
use crate::model::{Batch, HostInfo};
use crate::store::Store;
use crate::web::{self, AppState};

/// A running HTTP server.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Whether it speaks HTTPS (`server.tls`).
    pub tls: bool,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Its base URL on the bound address (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// What the HTTP server shares with the background work of the same process: the alert
/// evaluator's wake-up signal, the job board and the instruments `/metrics` exposes.
#[derive(Clone, Default)]
pub struct Shared {
    pub alert_wakeup: Arc<tokio::sync::Notify>,
    pub jobs: Arc<JobBoard>,
    pub telemetry: Arc<Telemetry>,
}

/// Bind `cfg.server.listen` (port 0 picks a free port) and serve until `shutdown`.
pub async fn start_server(
    cfg: Arc<Config>,
    store: Store,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningServer> {
    start_server_with(cfg, store, Shared::default(), shutdown).await
}

/// As [`start_server`], sharing signals and state with the background work.
pub async fn start_server_with(
    cfg: Arc<Config>,
    store: Store,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningServer> {
    crate::alloc::tune();
    crate::alloc::spawn_trimmer(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let tls = if cfg.server.tls.enabled() {
        let t = web::tls::load(&cfg.server.tls).map_err(anyhow::Error::msg)?;
        Some((Arc::new(t), Duration::from_secs(cfg.server.tls.reload_secs)))
    } else {
        None
    };
    let limits = web::serve::ServeLimits::from_config(&cfg.server);
    // The audit trail notes each start with a hash of the configuration. Secrets are
    // redacted in its Debug form, so the hash changes when settings change but cannot be
    // used to test guesses of a password.
    let config_sha256 = hex::encode(sha2::Sha256::digest(format!("{cfg:?}").as_bytes()));
    store
        .audit(
            crate::store::audit::Entry::ok(
                crate::store::audit::SYSTEM,
                "server.started",
                &addr.to_string(),
            )
            .details(serde_json::json!({
                "config_sha256": config_sha256,
                "version": env!("CARGO_PKG_VERSION"),
            })),
        )
        .await
        .context("recording the server start in the audit trail")?;
    let mut state = AppState::new(store, cfg);
    state.alert_wakeup = shared.alert_wakeup;
    state.jobs = shared.jobs;
    state.metrics = shared.telemetry;
    let stats = state.connections.clone();
    let app = web::router(state);
    let is_tls = tls.is_some();
    let task = tokio::spawn(async move {
        web::serve::serve(listener, app, limits, stats, tls, shutdown).await
    });
    Ok(RunningServer {
        addr,
        tls: is_tls,
        task,
    })
}

/// The identity of this machine's agent, from config with the hostname as default.
pub fn local_identity(cfg: &Config) -> HostInfo {
    let h = &cfg.agent.host;
    HostInfo {
        name: if h.name.is_empty() {
            SystemSource::host_name()
        } else {
            h.name.clone()
        },
        site: h.site.clone(),
        rack: h.rack.clone(),
        pool: h.pool.clone(),
        labels: h.labels.clone(),
    }
}

/// The agent token from config (`agent.token` or `agent.token_file`).
pub fn agent_token(cfg: &Config) -> anyhow::Result<String> {
    if !cfg.agent.token.is_empty() {
        if !cfg.agent.token_file.is_empty() {
            tracing::warn!(
                token_file = cfg.agent.token_file,
                "agent.token and agent.token_file are both set: agent.token is used, the file is not read"
            );
        }
        return Ok(cfg.agent.token.expose().to_string());
    }
    if !cfg.agent.token_file.is_empty() {
        let t =
            crate::config::read_secret_file(Path::new(&cfg.agent.token_file), "agent.token_file")
                .map_err(anyhow::Error::msg)?;
        return Ok(t.trim().to_string());
    }
    // A client certificate is the agent's credential instead (the server maps its name to
    // the host).
    if !cfg.agent.tls.cert_file.is_empty() {
        return Ok(String::new());
    }
    anyhow::bail!("no agent token: set agent.token (RACKWATCH_AGENT__TOKEN), agent.token_file, or pass --token (or a client certificate, agent.tls.cert_file); mint one with `rackwatch token create --host NAME`")
}

/// Where the agent's token came from, for messages that ask to check it.
pub fn agent_token_source(cfg: &Config) -> String {
    if cfg.agent.token.is_empty() && !cfg.agent.token_file.is_empty() {
        format!("the token in agent.token_file = {}", cfg.agent.token_file)
    } else {
        "agent.token (or --token)".to_string()
    }
}

/// Build a shipper with its spool.
pub fn shipper(
    cfg: &Config,
    server: &str,
    token: &str,
    spool_dir: &Path,
) -> anyhow::Result<Shipper> {
    let spool = Spool::open(spool_dir, cfg.agent.spool_max_bytes).with_context(|| {
        format!(
            "agent.spool_dir: cannot keep batches in {}",
            spool_dir.display()
        )
    })?;
    let waiting = (spool.len(), spool.bytes());
    let shipper = Shipper::new(
        server,
        token,
        spool,
        Duration::from_secs(cfg.agent.request_timeout_secs),
        &cfg.agent.tls,
    )?;
    if waiting.0 > 0 {
        tracing::info!(
            batches = waiting.0,
            bytes = waiting.1,
            "replaying spooled batches"
        );
    }
    Ok(shipper)
}

/// The sources of a real agent on this machine: the OS, and NVML when present.
pub fn local_sources(cfg: &Config) -> anyhow::Result<Vec<Box<dyn Source>>> {
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(SystemSource::new()?)];
    // NVML first: it tells the kernel-log source which GPU sits at which PCI address.
    let ledger = crate::collect::kernel_log::XidLedger::shared();
    let lib = &cfg.agent.nvml_lib_path;
    // `off`: no GPUs read on purpose. A configured library that is not there is a typo:
    // a GPU host would report no GPUs.
    if lib != "off" {
        if !lib.is_empty() && !std::path::Path::new(lib).exists() {
            anyhow::bail!(
                "agent.nvml_lib_path = {lib:?}: no such file; give the path of libnvidia-ml.so, leave it empty for the system's, or write off"
            );
        }
        match NvmlSource::open_with(lib, ledger.clone()) {
            Some(n) => sources.push(Box::new(n)),
            None if !lib.is_empty() => tracing::warn!(
                path = %lib,
                "agent.nvml_lib_path is set but NVML did not start (see above); this agent reports no GPUs"
            ),
            None => {}
        }
    }
    if let Some(k) =
        crate::collect::kernel_log::KernelLogSource::open(&cfg.agent.kernel_log, ledger)
            .map_err(anyhow::Error::msg)?
    {
        sources.push(Box::new(
            k.keep_boot_time(&cfg.spool_dir().join("kmsg-boot")),
        ));
    }
    Ok(sources)
}

/// Timing from config.
pub fn timing(cfg: &Config) -> Timing {
    Timing {
        interval: Duration::from_secs(cfg.agent.interval_secs),
        ship_interval: Duration::from_secs(cfg.agent.ship_interval_secs),
    }
}

/// What [`backfill_history`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// Host and GPU samples stored.
    pub samples: u64,
    /// 1-minute rollup rows (host + GPU) made from them.
    pub rollup_rows: u64,
}

/// Deep history for the simulated fleet: `simulator.history_days` days up to
/// `backfill_minutes` ago, one sample per minute, written through the store's batch path
/// and rolled up range by range (not minute by minute as late samples would be), so
/// forecasts, anomaly models and the energy report have data from the first minute of a
/// demo. Skipped when the fleet already has rollups older than a day (a restarted demo).
/// Simulated hardware events start with the recent back-fill, so old XIDs do not reach
/// the alerting engine as new ones. The hosts keep their state (energy counters run on).
pub async fn backfill_history(
    cfg: &Config,
    store: &Store,
    fleet: &mut [SimulatedHost],
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<Backfill> {
    let mut out = Backfill::default();
    let days = i64::from(cfg.simulator.history_days);
    if days == 0 || fleet.is_empty() {
        return Ok(out);
    }
    let day = chrono::Duration::days(1);
    if store
        .has_rollups_before(now - day)
        .await
        .context("looking for earlier history")?
    {
        return Ok(out);
    }
    tracing::info!(
        days,
        hosts = fleet.len(),
        "writing the simulated fleet's history (first start only)"
    );
    let hour = chrono::Duration::hours(1);
    let step = chrono::Duration::minutes(1);
    let from = (now - chrono::Duration::days(days))
        .duration_trunc(hour)
        .context("hour")?;
    let to = (now - chrono::Duration::minutes(i64::from(cfg.simulator.backfill_minutes)))
        .duration_trunc(step)
        .context("minute")?;
    // Six hours per batch: about 3,000 GPU rows for an 8-GPU host.
    let chunk = chrono::Duration::hours(6);
    for host in fleet.iter_mut() {
        let mut t = from;
        while t < to {
            let end = (t + chunk).min(to);
            let c = host.history(t, end, step);
            let batch = Batch {
                host: host.info.clone(),
                gpus: c.gpus,
                host_samples: c.host_samples,
                gpu_samples: c.gpu_samples,
                events: Vec::new(),
                agent: None,
            };
            let w = store
                .write_batch(&batch, end)
                .await
                .with_context(|| format!("back-filling {}", host.info.name))?;
            out.samples += w.stored as u64;
            t = end;
        }
    }
    let mut t = from;
    while t < to {
        let end = (t + hour).min(to);
        let (h, g) = store.rollup_range(t, end, None).await?;
        out.rollup_rows += h + g;
        t = end;
    }
    store
        .rollup_quarters(
            crate::store::rollup::quarter(from),
            crate::store::rollup::quarter(to),
            None,
        )
        .await?;
    // The training pool's scheduler queue over the same history, every 5 minutes.
    let mut q = from;
    while q < to {
        store
            .record_queue(
                crate::collect::simulator::QUEUED_POOL,
                q,
                crate::collect::simulator::simulated_queue(q),
                "simulator",
            )
            .await?;
        q += chrono::Duration::minutes(5);
    }
    // The minutes were marked as late ones for the rollup job; they are rolled up now.
    store.forget_late_minutes(from, to).await?;
    // The energy job accounts the hours it is told about.
    store.mark_energy_hours(from, to).await?;
    Ok(out)
}

/// Start the simulated fleet: back-fill the last `backfill_minutes` (after what a previous
/// run stored) at the agent interval through the real ingest path, then run every
/// simulated host as an agent shipping to `server` with its own token.
pub async fn start_simulator(
    cfg: &Config,
    store: &Store,
    server: &str,
    fleet: Vec<SimulatedHost>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<Shipper>>>> {
    let mut tasks = Vec::new();
    for mut host in fleet {
        let token = store.create_agent_token(&host.info.name, "demo").await?;
        let spool_dir = cfg.spool_dir().join(format!("sim-{}", host.info.name));
        let mut shipper = shipper(cfg, server, &token, &spool_dir)?;
        let now = Utc::now();
        let minutes = i64::from(cfg.simulator.backfill_minutes);
        // A restarted demo fills only the minutes it was down: samples over the ones
        // stored before would interleave two runs' counters.
        let stored_until = store
            .host_latest(&host.info.name)
            .await?
            .and_then(|h| h.last_seen);
        // Right after the deep history (written up to `minutes` before the start, and
        // taking a while), from its end: no hole between the two.
        let window = now - chrono::Duration::minutes(minutes);
        let from = match stored_until {
            Some(t) if t >= window - chrono::Duration::minutes(10) => {
                t + chrono::Duration::seconds(1)
            }
            Some(t) => window.max(t + chrono::Duration::seconds(1)),
            None => window,
        };
        // The GPUs' energy counters run on from the last run's.
        let counters: Vec<(i16, f64)> = sqlx::query_as(
            "SELECT g.gpu_index, g.energy_joules_total FROM gpu_latest g JOIN hosts h ON h.id = g.host_id
              WHERE h.name = $1 AND g.energy_joules_total IS NOT NULL",
        )
        .bind(&host.info.name)
        .fetch_all(&store.pool)
        .await?;
        host.resume_energy(&counters);
        if minutes > 0 && from < now {
            let c = host.history(
                from,
                now,
                chrono::Duration::seconds(cfg.agent.interval_secs as i64),
            );
            let batch = Batch {
                host: host.info.clone(),
                gpus: c.gpus,
                host_samples: c.host_samples,
                gpu_samples: c.gpu_samples,
                events: c.events,
                agent: None,
            };
            shipper.ship(batch).await;
        }
        let identity = host.info.clone();
        tasks.push(tokio::spawn(agent::run(
            identity,
            vec![Box::new(host)],
            shipper,
            timing(cfg),
            shutdown.clone(),
        )));
    }
    // The scheduler's queue over the minutes the demo was down, as its exporter would
    // catch up after an outage: without it those slots read as a pool with no queue.
    let pool = crate::collect::simulator::QUEUED_POOL;
    let now = Utc::now();
    let earliest = now - chrono::Duration::minutes(i64::from(cfg.simulator.backfill_minutes));
    if let Some(last) = store.last_queue_report(pool).await? {
        let mut q = (last + chrono::Duration::minutes(5)).max(earliest);
        while q < now {
            let queued = crate::collect::simulator::simulated_queue(q);
            store.record_queue(pool, q, queued, "simulator").await?;
            q += chrono::Duration::minutes(5);
        }
    }
    let token = store.create_pool_token(pool, "demo").await?;
    tokio::spawn(simulated_scheduler(
        format!(
            "{server}/api/v1/pools/{}/demand",
            crate::collect::simulator::QUEUED_POOL
        ),
        token,
        cfg.agent.tls.clone(),
        shutdown,
    ));
    Ok(tasks)
}

/// The simulated fleet's scheduler: reports the training pool's queue once a minute, as
/// a Slurm or Kubernetes exporter would (docs/capacity.md).
async fn simulated_scheduler(
    url: String,
    token: String,
    tls: crate::config::AgentTls,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(http) = crate::collect::shipper::client(&tls) else {
        return;
    };
    let http = http
        .pool_idle_timeout(crate::collect::shipper::IDLE_CONNECTION)
        .build()
        .unwrap_or_default();
    loop {
        let now = Utc::now();
        let body = serde_json::json!({
            "pending_gpus": crate::collect::simulator::simulated_queue(now),
            "source": "simulator",
        });
        if let Err(e) = http.post(&url).bearer_auth(&token).json(&body).send().await {
            tracing::debug!("simulated scheduler: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

/// Everything a server process runs besides HTTP: the job scheduler and the alerting
/// loops (both act only on the leader).
pub struct Background {
    pub jobs: JoinHandle<()>,
    pub alerts: JoinHandle<()>,
    pub shared: Shared,
}

/// Start the scheduler and alerting. Fails on an invalid rules file.
pub fn start_background(
    cfg: Arc<Config>,
    store: Store,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Background> {
    start_background_with(cfg, store, Shared::default(), shutdown)
}

/// [`start_background`] with the state a server started earlier already shares (the
/// demo starts its server first, so the simulated agents can ship their recent history
/// before alerting looks at who is silent).
pub fn start_background_with(
    cfg: Arc<Config>,
    store: Store,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Background> {
    let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if cfg.anomaly.enabled {
        shared
            .jobs
            .set_anomaly_backend(crate::analytics::anomaly::open_backend(&cfg.anomaly)?);
    }
    let alert_wakeup = shared.alert_wakeup.clone();
    let alerts = crate::alert::spawn(
        store.clone(),
        cfg.clone(),
        leader.clone(),
        alert_wakeup.clone(),
        shared.telemetry.clone(),
        shutdown.clone(),
    )
    .map_err(|e| anyhow::anyhow!("alerting.rules_file: {e}"))?;
    let jobs = crate::jobs::spawn(
        store,
        cfg,
        leader,
        shared.jobs.clone(),
        shared.telemetry.clone(),
        shutdown,
    );
    Ok(Background {
        jobs,
        alerts,
        shared,
    })
}
