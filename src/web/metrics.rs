//! `GET /metrics`: the server's own instruments (`model::telemetry`) and what is read at
//! scrape time (database pool, connections, the job board, the capacity gauges, the
//! agents' spools), in the Prometheus text format 0.0.4 that `promtool check metrics`
//! lints. The exposition is prometheus-client's; nothing here writes the format.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::AppState;
use crate::model::jobs::JobStatus;
use crate::model::telemetry::{IngestRefusal, RouteLabel};

/// The `reason` an ingest refusal is counted under.
pub fn refusal(e: &ApiError) -> IngestRefusal {
    match e {
        ApiError::BadRequest(_)
        | ApiError::UnsupportedMedia(_)
        | ApiError::MethodNotAllowed(_)
        | ApiError::NotFound(_)
        | ApiError::Conflict(_)
        | ApiError::RequestTimeout(_) => IngestRefusal::BadRequest,
        ApiError::Unauthorized(_) => IngestRefusal::Unauthorized,
        ApiError::Forbidden(_) => IngestRefusal::Forbidden,
        ApiError::TooLarge(_) => IngestRefusal::TooLarge,
        ApiError::Unavailable => IngestRefusal::DbUnavailable,
        ApiError::Busy(_) => IngestRefusal::Busy,
        ApiError::TooMany { .. } | ApiError::BusyFor { .. } => IngestRefusal::RateLimited,
        ApiError::Internal(_) => IngestRefusal::Internal,
    }
}

/// Middleware on the page routes: times each page load (GET) under its route template.
pub async fn time_page(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = (req.method() == Method::GET)
        .then(|| req.extensions().get::<MatchedPath>())
        .flatten()
        .map(|p| p.as_str().to_string());
    let started = Instant::now();
    let res = next.run(req).await;
    if let Some(route) = route {
        st.metrics
            .page_duration
            .get_or_create(&RouteLabel { route })
            .observe(started.elapsed().as_secs_f64());
    }
    res
}

pub async fn metrics(
    State(st): State<AppState>,
    _r: super::auth::MetricsReader,
) -> Result<Response, ApiError> {
    // Pools not yet recommended are read before the recommendations, and a pool in both
    // is listed once: a capacity job committing between the two reads would otherwise
    // give its first pool two series, or none, in this scrape.
    let pools = async {
        let new_pools = st.store.pools_not_yet_recommended().await;
        let recs = st.store.recommendations(None).await;
        let new_pools = new_pools.map(|mut n| {
            if let Ok(r) = &recs {
                n.retain(|(pool, _)| !r.iter().any(|rec| rec.pool == *pool));
            }
            n
        });
        (recs, new_pools)
    };
    let ((recs, new_pools), agents, channels, alerts) = tokio::join!(
        pools,
        st.store.agent_stats(),
        crate::alert::notify::channel_states(&st.store),
        st.store.alert_counts()
    );
    let pool = &st.store.pool;
    let idle = pool.num_idle() as u32;
    let c = &st.connections;
    let read = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let scraped = Scraped {
        db_idle: idle,
        db_busy: pool.size().saturating_sub(idle),
        db_max: st.cfg.database.max_connections,
        conns_accepted: read(&c.accepted),
        conns_refused: read(&c.refused),
        conns_refused_per_client: read(&c.refused_per_client),
        tls_failures: read(&c.tls_handshake_failures),
        conns_open: read(&c.open),
        leader: st.jobs.is_leader(),
        jobs: st.jobs.snapshot(),
        // A failed query leaves its series out of this scrape, as before.
        pools: recs
            .map(|r| r.iter().map(super::capacity::autoscaler_view).collect())
            .unwrap_or_default(),
        new_pools: new_pools.unwrap_or_default(),
        agents: agents.unwrap_or_default(),
        channels: channels.unwrap_or_default(),
        alerts: alerts.ok(),
        anomaly: st.jobs.anomaly_backend().map(|b| {
            use rackwatch_anomaly::Backend as _;
            let info = b.info();
            AnomalyBackend {
                backend: info.kind.as_str().to_string(),
                adapter: info.device.clone(),
                device_type: info.device_type.clone(),
                api: info.api.clone().unwrap_or_default(),
                cpu_fallback_hosts: b.cpu_fallback_hosts(),
                cpu_scoring_calls: b.cpu_scoring_calls(),
            }
        }),
    };
    let mut at_scrape = Registry::default();
    at_scrape.register_collector(Box::new(scraped));
    let mut out = String::new();
    prometheus_text::encode(&mut out, st.metrics.registry())
        .and_then(|()| prometheus_text::encode(&mut out, &at_scrape))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding /metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out).into_response())
}

/// What one scrape reads from the pool, the server loop, the job board and the database.
#[derive(Debug)]
struct Scraped {
    db_idle: u32,
    db_busy: u32,
    db_max: u32,
    conns_accepted: u64,
    conns_refused: u64,
    conns_refused_per_client: u64,
    tls_failures: u64,
    conns_open: u64,
    leader: bool,
    jobs: Vec<JobStatus>,
    pools: Vec<super::capacity::AutoscalerView>,
    /// Pools the capacity job has not seen yet, with their GPUs: installed gauge only.
    new_pools: Vec<(String, i64)>,
    agents: Vec<(String, serde_json::Value)>,
    channels: Vec<crate::alert::notify::ChannelState>,
    /// None when the count failed: the series are left out of this scrape.
    alerts: Option<Vec<crate::store::queries::AlertCount>>,
    anomaly: Option<AnomalyBackend>,
}

/// Which backend the anomaly detector runs on, on which adapter, and the work a GPU left
/// to the CPU.
#[derive(Debug)]
struct AnomalyBackend {
    backend: String,
    adapter: String,
    device_type: String,
    api: String,
    cpu_fallback_hosts: u64,
    cpu_scoring_calls: u64,
}

/// A HELP text ending in one full stop, as the registry writes those of the families
/// registered with it.
fn sentence(help: &str) -> String {
    format!("{}.", help.trim_end_matches('.'))
}

/// A gauge family read at scrape time: its descriptor, then one sample per label set.
fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, &sentence(help), None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family read at scrape time (`name` without the `_total` the format adds).
fn counters<L: EncodeLabelSet, N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, &sentence(help), None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

type NoLabels = [(&'static str, &'static str); 0];

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        gauges(
            e,
            "rackwatch_build_info",
            "This server's Rackwatch version; always 1 (servers of two versions on one database are not supported)",
            [([("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;
        gauges(
            e,
            "rackwatch_db_pool_connections",
            "Database pool connections by state",
            [
                ([("state", "idle")], u64::from(self.db_idle)),
                ([("state", "busy")], u64::from(self.db_busy)),
            ],
        )?;
        gauges(
            e,
            "rackwatch_db_pool_max_connections",
            "Database pool size limit (database.max_connections)",
            [(NoLabels::default(), u64::from(self.db_max))],
        )?;
        counters(
            e,
            "rackwatch_http_connections_accepted",
            "HTTP connections accepted by the server loop",
            [(NoLabels::default(), self.conns_accepted)],
        )?;
        counters(
            e,
            "rackwatch_http_connections_refused",
            "HTTP connections closed at once because server.max_connections were open",
            [(NoLabels::default(), self.conns_refused)],
        )?;
        counters(
            e,
            "rackwatch_http_connections_refused_per_client",
            "HTTP connections closed at once because their client address had server.max_connections_per_client open",
            [(NoLabels::default(), self.conns_refused_per_client)],
        )?;
        counters(
            e,
            "rackwatch_tls_handshake_failures",
            "TLS handshakes that failed or timed out (server.tls)",
            [(NoLabels::default(), self.tls_failures)],
        )?;
        gauges(
            e,
            "rackwatch_http_connections_open",
            "HTTP connections open now",
            [(NoLabels::default(), self.conns_open)],
        )?;
        self.encode_jobs(e)?;
        self.encode_pools(e)?;
        self.encode_notifications(e)?;
        self.encode_alerts(e)?;
        self.encode_anomaly_backend(e)?;
        self.encode_agents(e)
    }
}

impl Scraped {
    /// The periodic jobs as this server ran them (only the job leader runs them).
    fn encode_jobs(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        gauges(
            e,
            "rackwatch_job_leader",
            "1 when this server holds the job lock and runs the periodic jobs",
            [(NoLabels::default(), u64::from(self.leader))],
        )?;
        // `job_name`, not `job`: Prometheus sets `job` on every scraped series itself.
        let job = |j: &JobStatus| [("job_name", j.name)];
        gauges(
            e,
            "rackwatch_job_last_success_timestamp_seconds",
            "When each periodic job last finished without error (Unix time)",
            self.jobs.iter().filter_map(|j| {
                let t = j.last_success?;
                Some((job(j), t.timestamp_millis() as f64 / 1e3))
            }),
        )?;
        gauges(
            e,
            "rackwatch_job_duration_seconds",
            "How long each periodic job's last run took",
            self.jobs
                .iter()
                .filter_map(|j| Some((job(j), j.last_duration?.as_secs_f64()))),
        )?;
        counters(
            e,
            "rackwatch_job_runs",
            "Periodic job runs on this server, by outcome",
            self.jobs.iter().flat_map(|j| {
                [
                    (
                        [("job_name", j.name), ("outcome", "success")],
                        j.runs - j.failures,
                    ),
                    ([("job_name", j.name), ("outcome", "error")], j.failures),
                ]
            }),
        )
    }

    /// The capacity gauges an autoscaler reads (KEDA, HPA external metrics): the same
    /// numbers as `GET /api/v1/capacity/recommendations`.
    fn encode_pools(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let pool = |v: &super::capacity::AutoscalerView| [("pool", v.pool.clone())];
        gauges(
            e,
            "rackwatch_pool_demand_gpus",
            "A pool's demand over the 5 minutes before the capacity job's last (hourly) run: GPU-equivalents of work plus GPUs queued",
            self.pools
                .iter()
                .filter_map(|v| Some((pool(v), v.demand_gpus?))),
        )?;
        gauges(
            e,
            "rackwatch_pool_recommended_gpus",
            "GPUs the capacity job recommends: for the next hour (1h) and the week's peak (7d)",
            self.pools.iter().flat_map(|v| {
                [("1h", v.recommended_1h), ("7d", v.recommended_7d)]
                    .into_iter()
                    .filter_map(|(horizon, g)| {
                        Some((
                            [("pool", v.pool.clone()), ("horizon", horizon.into())],
                            i64::from(g?),
                        ))
                    })
            }),
        )?;
        gauges(
            e,
            "rackwatch_pool_recommendation_timestamp_seconds",
            "End of the demand the pool's recommendation was made from (Unix seconds): an autoscaler should hold its size when this is more than two hours old",
            self.pools
                .iter()
                .map(|v| (pool(v), v.decided_at.timestamp())),
        )?;
        gauges(
            e,
            "rackwatch_pool_installed_gpus",
            "GPUs installed in a pool (seen in the last day)",
            self.pools
                .iter()
                .map(|v| (pool(v), i64::from(v.installed_gpus)))
                .chain(
                    self.new_pools
                        .iter()
                        .map(|(p, gpus)| ([("pool", p.clone())], *gpus)),
                ),
        )
    }

    /// Each agent's spool, as it last reported it with a batch: sizes now, and its counts
    /// since it started (counters: an agent's restart resets them).
    /// Alert notifications by destination (`email`, `webhook:NAME`, `slack:NAME`,
    /// `pagerduty:NAME`), from the outbox.
    fn encode_notifications(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        // (Delivered ones are counted by the server that delivers them, in its telemetry:
        // the outbox forgets rows past retention, and a count of rows would go down.)
        let ch = |c: &crate::alert::notify::ChannelState| [("channel", c.channel.clone())];
        gauges(
            e,
            "rackwatch_notifications_pending",
            "Alert notifications waiting in the outbox, by channel (failing: after a failed attempt)",
            self.channels.iter().flat_map(|c| {
                [
                    (
                        [("channel", c.channel.clone()), ("state", "waiting".into())],
                        (c.pending - c.failing).max(0) as u64,
                    ),
                    (
                        [("channel", c.channel.clone()), ("state", "failing".into())],
                        c.failing.max(0) as u64,
                    ),
                ]
            }),
        )?;
        gauges(
            e,
            "rackwatch_notifications_refused_recent",
            "Notifications sent in the last 24 h that a recipient's mail server refused for good (the other recipients got them)",
            self.channels
                .iter()
                .map(|c| (ch(c), c.refused.max(0) as u64)),
        )?;
        gauges(
            e,
            "rackwatch_notifications_last_delivered_timestamp_seconds",
            "When a channel last delivered a notification (Unix time)",
            self.channels.iter().filter_map(|c| {
                let t = c.last_delivered_at?;
                Some((ch(c), t.timestamp_millis() as f64 / 1e3))
            }),
        )
    }

    /// Pending and firing alerts by severity, every severity and state always present (a
    /// rule on them reads 0, not an absent series), and the firing ones nobody handles.
    fn encode_alerts(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(counts) = &self.alerts else {
            return Ok(());
        };
        let find = |sev: &str, state: &str| {
            counts
                .iter()
                .find(|c| c.severity == sev && c.state == state)
                .map_or((0, 0), |c| (c.total.max(0) as u64, c.handled.max(0) as u64))
        };
        let sevs = crate::alert::rules::SEVERITIES;
        gauges(
            e,
            "rackwatch_alerts",
            "Alerts pending or firing now, by severity and state",
            sevs.iter().flat_map(|sev| {
                ["pending", "firing"]
                    .map(|state| ([("severity", *sev), ("state", state)], find(sev, state).0))
            }),
        )?;
        gauges(
            e,
            "rackwatch_alerts_unhandled",
            "Firing alerts nobody has acknowledged or silenced, by severity (the dashboard's \"Alerts firing, unhandled\")",
            sevs.iter().map(|sev| {
                let (total, handled) = find(sev, "firing");
                ([("severity", *sev)], total.saturating_sub(handled))
            }),
        )
    }

    fn encode_anomaly_backend(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(b) = &self.anomaly else {
            return Ok(());
        };
        gauges(
            e,
            "rackwatch_anomaly_backend_info",
            "The anomaly detector's backend on this server (cpu or gpu), its adapter and device type; always 1",
            [(
                [
                    ("backend", b.backend.clone()),
                    ("adapter", b.adapter.clone()),
                    ("device_type", b.device_type.clone()),
                    ("api", b.api.clone()),
                ],
                1u64,
            )],
        )?;
        counters(
            e,
            "rackwatch_anomaly_cpu_fallback_hosts",
            "Host trainings or scorings the GPU could not take (too large for its buffers, a device fault) that ran on the CPU",
            [(NoLabels::default(), b.cpu_fallback_hosts)],
        )?;
        counters(
            e,
            "rackwatch_anomaly_cpu_scoring_calls",
            "Scoring runs a GPU backend left to the CPU because they were too small to gain from it",
            [(NoLabels::default(), b.cpu_scoring_calls)],
        )
    }

    fn encode_agents(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let stat = |key: &'static str| {
            self.agents.iter().map(move |(host, stats)| {
                let v = stats.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                ([("host", host.as_str())], v)
            })
        };
        gauges(
            e,
            "rackwatch_agent_two_agents",
            "1 while two agent processes report as this host (seen in the last 10 minutes): its samples interleave and its energy counts twice",
            stat("two_agents"),
        )?;
        gauges(
            e,
            "rackwatch_agent_spool_batches",
            "Batches waiting in the agent's disk spool",
            stat("spool_batches"),
        )?;
        gauges(
            e,
            "rackwatch_agent_spool_bytes",
            "Bytes in the agent's disk spool",
            stat("spool_bytes"),
        )?;
        counters(
            e,
            "rackwatch_agent_replayed_batches",
            "Spooled batches the agent delivered later",
            stat("replayed_batches_total"),
        )?;
        counters(
            e,
            "rackwatch_agent_dropped_batches",
            "Batches the agent dropped because its spool was full",
            stat("dropped_batches_total"),
        )?;
        counters(
            e,
            "rackwatch_agent_corrupt_batches",
            "Spool files the agent could not read back (torn or damaged) and set aside",
            stat("corrupt_batches_total"),
        )
    }
}
