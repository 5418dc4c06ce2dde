//! `GET /metrics`: Prometheus text exposition of the server's own counters, the
//! database pool and the agents' spool state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::error::ApiError;
use super::AppState;

/// Counters updated by handlers; all monotonic.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ingest_requests: AtomicU64,
    pub ingest_bytes: AtomicU64,
    pub ingest_micros: AtomicU64,
    pub samples_accepted: AtomicU64,
    pub samples_stored: AtomicU64,
    pub samples_rejected: AtomicU64,
    pub events_received: AtomicU64,
    pub err_bad_request: AtomicU64,
    pub err_unauthorized: AtomicU64,
    pub err_forbidden: AtomicU64,
    pub err_too_large: AtomicU64,
    pub err_unavailable: AtomicU64,
    pub err_internal: AtomicU64,
    pub err_busy: AtomicU64,
    pub err_rate_limited: AtomicU64,
    pub logins_failed: AtomicU64,
}

impl Metrics {
    /// Count a failed ingest request by its kind.
    pub fn count_ingest_error(&self, e: &ApiError) {
        let c = match e {
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMedia(_)
            | ApiError::NotFound(_)
            | ApiError::RequestTimeout(_) => &self.err_bad_request,
            ApiError::Unauthorized(_) => &self.err_unauthorized,
            ApiError::Forbidden(_) => &self.err_forbidden,
            ApiError::TooLarge(_) => &self.err_too_large,
            ApiError::Unavailable => &self.err_unavailable,
            ApiError::Busy(_) => &self.err_busy,
            ApiError::TooMany { .. } => &self.err_rate_limited,
            ApiError::Internal(_) => &self.err_internal,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// The periodic jobs as this server ran them (only the job leader runs them).
fn job_metrics(out: &mut String, jobs: &[crate::model::jobs::JobStatus], leader: bool) {
    gauge_header(
        out,
        "rackwatch_job_leader",
        "1 when this server holds the job lock and runs the periodic jobs.",
    );
    let _ = writeln!(out, "rackwatch_job_leader {}", u8::from(leader));
    gauge_header(
        out,
        "rackwatch_job_last_success_timestamp_seconds",
        "When each periodic job last finished without error (Unix time).",
    );
    for j in jobs {
        if let Some(t) = j.last_success {
            let _ = writeln!(
                out,
                "rackwatch_job_last_success_timestamp_seconds{{job=\"{}\"}} {:.3}",
                j.name,
                t.timestamp_millis() as f64 / 1e3
            );
        }
    }
    gauge_header(
        out,
        "rackwatch_job_duration_seconds",
        "How long each periodic job's last run took.",
    );
    for j in jobs {
        if let Some(d) = j.last_duration {
            let _ = writeln!(
                out,
                "rackwatch_job_duration_seconds{{job=\"{}\"}} {:.6}",
                j.name,
                d.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP rackwatch_job_runs_total Periodic job runs on this server, by outcome.\n# TYPE rackwatch_job_runs_total counter"
    );
    for j in jobs {
        let _ = writeln!(
            out,
            "rackwatch_job_runs_total{{job=\"{}\",outcome=\"success\"}} {}\nrackwatch_job_runs_total{{job=\"{}\",outcome=\"error\"}} {}",
            j.name,
            j.runs - j.failures,
            j.name,
            j.failures
        );
    }
}

/// The capacity gauges an autoscaler reads (KEDA, HPA external metrics): the same
/// numbers as `GET /api/v1/capacity/recommendations`.
fn pool_metrics(out: &mut String, recs: &[crate::analytics::capacity::PoolRecommendation]) {
    let views: Vec<_> = recs.iter().map(super::capacity::autoscaler_view).collect();
    gauge_header(
        out,
        "rackwatch_pool_demand_gpus",
        "A pool's demand in its last 5 minutes: GPU-equivalents of work plus GPUs queued.",
    );
    for v in &views {
        if let Some(d) = v.demand_gpus {
            let _ = writeln!(
                out,
                "rackwatch_pool_demand_gpus{{pool=\"{}\"}} {d:.3}",
                label(&v.pool)
            );
        }
    }
    gauge_header(
        out,
        "rackwatch_pool_recommended_gpus",
        "GPUs the capacity job recommends: for the next hour (1h) and the week's peak (7d).",
    );
    for v in &views {
        let p = label(&v.pool);
        let _ = writeln!(
            out,
            "rackwatch_pool_recommended_gpus{{pool=\"{p}\",horizon=\"1h\"}} {}\nrackwatch_pool_recommended_gpus{{pool=\"{p}\",horizon=\"7d\"}} {}",
            v.recommended_1h, v.recommended_7d
        );
    }
    gauge_header(
        out,
        "rackwatch_pool_installed_gpus",
        "GPUs installed in a pool (seen in the last day).",
    );
    for v in &views {
        let _ = writeln!(
            out,
            "rackwatch_pool_installed_gpus{{pool=\"{}\"}} {}",
            label(&v.pool),
            v.installed_gpus
        );
    }
}

/// Which backend the anomaly detector runs on, on which adapter, and the work a GPU left to
/// the CPU.
fn anomaly_backend_metrics(out: &mut String, b: &rackwatch_anomaly::SelectedBackend) {
    use rackwatch_anomaly::Backend;
    let info = b.info();
    gauge_header(
        out,
        "rackwatch_anomaly_backend_info",
        "The anomaly detector's backend on this server (cpu or gpu), its adapter and device type; always 1.",
    );
    let _ = writeln!(
        out,
        "rackwatch_anomaly_backend_info{{backend=\"{}\",adapter=\"{}\",device_type=\"{}\",api=\"{}\"}} 1",
        info.kind.as_str(),
        label(&info.device),
        label(&info.device_type),
        label(info.api.as_deref().unwrap_or(""))
    );
    counter(
        out,
        "rackwatch_anomaly_cpu_fallback_hosts_total",
        "Host trainings or scorings the GPU could not take (too large for its buffers, a device fault) that ran on the CPU.",
        b.cpu_fallback_hosts(),
    );
    counter(
        out,
        "rackwatch_anomaly_cpu_scoring_calls_total",
        "Scoring runs a GPU backend left to the CPU because they were too small to gain from it.",
        b.cpu_scoring_calls(),
    );
}

/// Escape a label value per the exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(
    State(st): State<AppState>,
    _r: super::auth::MetricsReader,
) -> impl IntoResponse {
    let m = &st.metrics;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    counter(
        &mut out,
        "rackwatch_ingest_requests_total",
        "Ingest requests received.",
        l(&m.ingest_requests),
    );
    counter(
        &mut out,
        "rackwatch_ingest_bytes_total",
        "Ingest body bytes received (on the wire).",
        l(&m.ingest_bytes),
    );
    counter(
        &mut out,
        "rackwatch_ingest_seconds_total",
        "Time spent handling ingest requests.",
        l(&m.ingest_micros) as f64 / 1e6,
    );
    counter(
        &mut out,
        "rackwatch_samples_accepted_total",
        "Samples and events that passed validation.",
        l(&m.samples_accepted),
    );
    counter(
        &mut out,
        "rackwatch_samples_stored_total",
        "Accepted samples that were new (not replays).",
        l(&m.samples_stored),
    );
    counter(
        &mut out,
        "rackwatch_samples_rejected_total",
        "Samples rejected by validation.",
        l(&m.samples_rejected),
    );
    counter(
        &mut out,
        "rackwatch_hardware_events_received_total",
        "Hardware events received.",
        l(&m.events_received),
    );
    let _ = writeln!(out, "# HELP rackwatch_ingest_errors_total Ingest requests refused, by reason.\n# TYPE rackwatch_ingest_errors_total counter");
    for (reason, v) in [
        ("bad_request", l(&m.err_bad_request)),
        ("unauthorized", l(&m.err_unauthorized)),
        ("forbidden", l(&m.err_forbidden)),
        ("too_large", l(&m.err_too_large)),
        ("db_unavailable", l(&m.err_unavailable)),
        ("internal", l(&m.err_internal)),
        ("busy", l(&m.err_busy)),
        ("rate_limited", l(&m.err_rate_limited)),
    ] {
        let _ = writeln!(
            out,
            "rackwatch_ingest_errors_total{{reason=\"{reason}\"}} {v}"
        );
    }
    counter(
        &mut out,
        "rackwatch_logins_failed_total",
        "Failed dashboard logins.",
        l(&m.logins_failed),
    );
    gauge_header(
        &mut out,
        "rackwatch_db_pool_connections",
        "Database pool connections by state.",
    );
    let size = st.store.pool.size();
    let idle = st.store.pool.num_idle() as u32;
    let _ = writeln!(
        out,
        "rackwatch_db_pool_connections{{state=\"idle\"}} {idle}"
    );
    let _ = writeln!(
        out,
        "rackwatch_db_pool_connections{{state=\"busy\"}} {}",
        size.saturating_sub(idle)
    );
    let _ = writeln!(
        out,
        "rackwatch_db_pool_max_connections {}",
        st.cfg.database.max_connections
    );
    job_metrics(&mut out, &st.jobs.snapshot(), st.jobs.is_leader());
    if let Some(b) = st.jobs.anomaly_backend() {
        anomaly_backend_metrics(&mut out, &b);
    }
    if let Ok(recs) = st.store.recommendations(None).await {
        pool_metrics(&mut out, &recs);
    }
    if let Ok(agents) = st.store.agent_stats().await {
        for (name, key, help) in [
            (
                "rackwatch_agent_spool_batches",
                "spool_batches",
                "Batches waiting in the agent's disk spool.",
            ),
            (
                "rackwatch_agent_spool_bytes",
                "spool_bytes",
                "Bytes in the agent's disk spool.",
            ),
            (
                "rackwatch_agent_replayed_batches_total",
                "replayed_batches_total",
                "Spooled batches the agent delivered later.",
            ),
            (
                "rackwatch_agent_dropped_batches_total",
                "dropped_batches_total",
                "Batches the agent dropped because its spool was full.",
            ),
        ] {
            gauge_header(&mut out, name, help);
            for (host, stats) in &agents {
                let v = stats.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                let _ = writeln!(out, "{name}{{host=\"{}\"}} {v}", label(host));
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
