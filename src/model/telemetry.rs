//! The server's own instruments: what ingest, the pages, the jobs and the mailers count
//! and time, for `/metrics`. Every stage records into one [`Telemetry`] per server (the
//! HTTP handlers through `AppState`, the jobs and mailers through what `app` hands them);
//! `web::metrics` exposes it with the values read at scrape time (pool, jobs, agents).
//!
//! Histogram buckets are in seconds and listed in docs/metrics.md; change both.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Ingest requests: a batch of a few hundred samples is answered in milliseconds; waiting
/// for an ingest slot can take 10 s and a whole request up to `server.request_timeout_secs`
/// (60 s by default).
pub const INGEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Pages, from request to rendered HTML. 0.15 s is the dashboard's p95 goal
/// (docs/BENCHMARKS.md, dashboard), so the share of pages within it is one bucket.
pub const PAGE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Periodic jobs: rollups take milliseconds, forecasts and anomaly training minutes.
pub const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// One mail handed to the SMTP server; `alerting.smtp.timeout_secs` (10 s by default)
/// ends a send that takes longer.
pub const SMTP_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Why an ingest request was refused (`reason` on `rackwatch_ingest_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestRefusal {
    BadRequest,
    Unauthorized,
    Forbidden,
    TooLarge,
    DbUnavailable,
    Internal,
    Busy,
    RateLimited,
}

impl IngestRefusal {
    /// Every reason, so each has a series from the start (at 0).
    pub const ALL: [IngestRefusal; 8] = [
        IngestRefusal::BadRequest,
        IngestRefusal::Unauthorized,
        IngestRefusal::Forbidden,
        IngestRefusal::TooLarge,
        IngestRefusal::DbUnavailable,
        IngestRefusal::Internal,
        IngestRefusal::Busy,
        IngestRefusal::RateLimited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestRefusal::BadRequest => "bad_request",
            IngestRefusal::Unauthorized => "unauthorized",
            IngestRefusal::Forbidden => "forbidden",
            IngestRefusal::TooLarge => "too_large",
            IngestRefusal::DbUnavailable => "db_unavailable",
            IngestRefusal::Internal => "internal",
            IngestRefusal::Busy => "busy",
            IngestRefusal::RateLimited => "rate_limited",
        }
    }
}

impl EncodeLabelValue for IngestRefusal {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), e)
    }
}

/// How an ingest request ended (`outcome` on the ingest latency histogram): `ok`, or the
/// refusal's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestOutcome {
    Ok,
    Refused(IngestRefusal),
}

impl EncodeLabelValue for IngestOutcome {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        let v = match self {
            IngestOutcome::Ok => "ok",
            IngestOutcome::Refused(r) => r.as_str(),
        };
        EncodeLabelValue::encode(&v, e)
    }
}

/// Which mail went to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// A group of alert notifications from the outbox.
    Alert,
    /// The weekly energy report.
    Report,
}

impl EncodeLabelValue for MailKind {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        let v = match self {
            MailKind::Alert => "alert",
            MailKind::Report => "report",
        };
        EncodeLabelValue::encode(&v, e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: IngestRefusal,
}

/// Why remote-write series were dropped: `unmapped`, `unplaced`, `out_of_scope`, `own`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: IngestOutcome,
}

/// A page by its route template (`/hosts/{name}`), never its path: one series per page
/// whatever names clients ask for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabel {
    /// Not `job`: Prometheus sets that label on every scraped series itself.
    pub job_name: &'static str,
}

/// An alert notification's destination: `email`, `webhook:NAME`, `slack:NAME`,
/// `pagerduty:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MailLabels {
    pub mail: MailKind,
    /// `sent`, or `failed` (refused, timed out, unreachable).
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + Eq + std::hash::Hash>(buckets: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(buckets)
}

/// Ingest's counters and its latency.
#[derive(Debug)]
pub struct IngestTelemetry {
    pub requests: Counter,
    /// Body bytes as received (compressed when the agent compressed).
    pub bytes: Counter,
    pub seconds: Counter<f64, AtomicU64>,
    pub samples_accepted: Counter,
    pub samples_stored: Counter,
    pub samples_rejected: Counter,
    pub events_received: Counter,
    pub errors: Family<ReasonLabel, Counter>,
    pub duration: Histograms<OutcomeLabel>,
}

/// Prometheus remote write's own counters (what it accepts, stores and rejects is
/// counted with ingest's).
#[derive(Debug, Default)]
pub struct RemoteWriteTelemetry {
    pub requests: Counter,
    pub bytes: Counter,
    /// Samples the requests carried, mapped or not.
    pub samples: Counter,
    pub series_dropped: Family<DropLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
}

/// Every instrument of one server, and the registry that exposes them.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    pub ingest: IngestTelemetry,
    pub remote_write: RemoteWriteTelemetry,
    pub logins_failed: Counter,
    pub page_duration: Histograms<RouteLabel>,
    pub job_duration: Histograms<JobLabel>,
    pub smtp_duration: Histograms<MailLabels>,
    /// Alert notifications (outbox rows) this server delivered since it started.
    pub notifications_delivered: Family<ChannelLabel, Counter>,
    /// The newest scheduled backup: when it was made (0: none seen) and its size.
    pub backup_time: Gauge<f64, AtomicU64>,
    pub backup_bytes: Gauge<i64, AtomicI64>,
    /// 1 while the alert rules in force are the rules file on disk, 0 once a change to it
    /// was refused (the previous rules stay in force).
    pub rules_reload_ok: Gauge<i64, AtomicI64>,
    /// When the rules file was last loaded (Unix time).
    pub rules_reload_time: Gauge<f64, AtomicU64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// The instruments, registered under their `rackwatch_…` names (counters without the
    /// `_total` the exposition adds).
    pub fn new() -> Telemetry {
        let ingest = IngestTelemetry {
            requests: Counter::default(),
            bytes: Counter::default(),
            seconds: Counter::default(),
            samples_accepted: Counter::default(),
            samples_stored: Counter::default(),
            samples_rejected: Counter::default(),
            events_received: Counter::default(),
            errors: Family::default(),
            duration: histograms(|| Histogram::new(INGEST_BUCKETS.iter().copied())),
        };
        // Every outcome's series from the start: a query by outcome reads 0, not nothing.
        for outcome in std::iter::once(IngestOutcome::Ok)
            .chain(IngestRefusal::ALL.into_iter().map(IngestOutcome::Refused))
        {
            drop(ingest.duration.get_or_create(&OutcomeLabel { outcome }));
        }
        for reason in IngestRefusal::ALL {
            drop(ingest.errors.get_or_create(&ReasonLabel { reason }));
        }
        let remote_write = RemoteWriteTelemetry::default();
        for reason in IngestRefusal::ALL {
            drop(remote_write.errors.get_or_create(&ReasonLabel { reason }));
        }
        for reason in ["unmapped", "unplaced", "out_of_scope", "own"] {
            drop(
                remote_write
                    .series_dropped
                    .get_or_create(&DropLabel { reason }),
            );
        }
        let t = Telemetry {
            registry: Registry::default(),
            ingest,
            remote_write,
            logins_failed: Counter::default(),
            page_duration: histograms(|| Histogram::new(PAGE_BUCKETS.iter().copied())),
            job_duration: histograms(|| Histogram::new(JOB_BUCKETS.iter().copied())),
            smtp_duration: histograms(|| Histogram::new(SMTP_BUCKETS.iter().copied())),
            notifications_delivered: Family::default(),
            backup_time: Gauge::default(),
            backup_bytes: Gauge::default(),
            rules_reload_ok: Gauge::default(),
            rules_reload_time: Gauge::default(),
        };
        let mut r = Registry::default();
        let i = &t.ingest;
        r.register(
            "rackwatch_ingest_requests",
            "Ingest requests received",
            i.requests.clone(),
        );
        r.register(
            "rackwatch_ingest_bytes",
            "Ingest body bytes received (on the wire)",
            i.bytes.clone(),
        );
        r.register(
            "rackwatch_ingest_seconds",
            "Time spent handling ingest requests",
            i.seconds.clone(),
        );
        r.register(
            "rackwatch_ingest_request_duration_seconds",
            "Time to answer one ingest request, by outcome (ok or the refusal's reason)",
            i.duration.clone(),
        );
        r.register(
            "rackwatch_samples_accepted",
            "Samples and events that passed validation",
            i.samples_accepted.clone(),
        );
        r.register(
            "rackwatch_samples_stored",
            "Accepted samples that were new (not replays)",
            i.samples_stored.clone(),
        );
        r.register(
            "rackwatch_samples_rejected",
            "Samples rejected by validation",
            i.samples_rejected.clone(),
        );
        r.register(
            "rackwatch_hardware_events_received",
            "Hardware events received",
            i.events_received.clone(),
        );
        r.register(
            "rackwatch_ingest_errors",
            "Ingest requests refused, by reason",
            i.errors.clone(),
        );
        let w = &t.remote_write;
        r.register(
            "rackwatch_remote_write_requests",
            "Prometheus remote-write requests received",
            w.requests.clone(),
        );
        r.register(
            "rackwatch_remote_write_bytes",
            "Remote-write body bytes received (snappy-compressed)",
            w.bytes.clone(),
        );
        r.register(
            "rackwatch_remote_write_samples",
            "Samples received by remote write, mapped or not",
            w.samples.clone(),
        );
        r.register(
            "rackwatch_remote_write_series_dropped",
            "Remote-write series dropped, by reason: a metric Rackwatch does not map, no host or GPU label, a host out of the token's scope",
            w.series_dropped.clone(),
        );
        r.register(
            "rackwatch_remote_write_errors",
            "Remote-write requests refused, by reason",
            w.errors.clone(),
        );
        r.register(
            "rackwatch_logins_failed",
            "Failed dashboard logins",
            t.logins_failed.clone(),
        );
        r.register(
            "rackwatch_page_render_duration_seconds",
            "Time to answer a page (GET), queries and template included, by route template",
            t.page_duration.clone(),
        );
        r.register(
            "rackwatch_job_run_duration_seconds",
            "Time each run of a periodic job took on this server, successful or not",
            t.job_duration.clone(),
        );
        r.register(
            "rackwatch_smtp_send_duration_seconds",
            "Time to hand one mail to the SMTP server, by mail and outcome",
            t.smtp_duration.clone(),
        );
        r.register(
            "rackwatch_notifications_delivered",
            "Alert notifications delivered by this server since it started, by channel (sum over servers for the fleet's)",
            t.notifications_delivered.clone(),
        );
        r.register(
            "rackwatch_backup_last_success_timestamp_seconds",
            "When the newest scheduled backup in backup.dir was made (0: none yet), on the job leader",
            t.backup_time.clone(),
        );
        r.register(
            "rackwatch_backup_last_size_bytes",
            "Size of the newest scheduled backup archive",
            t.backup_bytes.clone(),
        );
        r.register(
            "rackwatch_alert_rules_last_reload_successful",
            "1 while the alert rules in force are the rules file on disk; 0 once a change to it was refused (the previous rules stay in force), on the job leader",
            t.rules_reload_ok.clone(),
        );
        r.register(
            "rackwatch_alert_rules_last_reload_success_timestamp_seconds",
            "When the alert rules file was last loaded (at start, or a change the job leader took)",
            t.rules_reload_time.clone(),
        );
        Telemetry { registry: r, ..t }
    }

    /// The alert rules file was loaded (true) or a change to it refused (false).
    pub fn rules_reloaded(&self, ok: bool) {
        self.rules_reload_ok.set(i64::from(ok));
        if ok {
            self.rules_reload_time
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    /// The registered instruments, for the exposition.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record one ingest request's answer and how long it took.
    pub fn ingest_answered(&self, outcome: IngestOutcome, seconds: f64) {
        self.ingest.seconds.inc_by(seconds);
        self.ingest
            .duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
        if let IngestOutcome::Refused(reason) = outcome {
            self.ingest
                .errors
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// Record one periodic job's run.
    pub fn job_ran(&self, job: &'static str, seconds: f64) {
        self.job_duration
            .get_or_create(&JobLabel { job_name: job })
            .observe(seconds);
    }

    /// The newest scheduled backup, as found or just made.
    pub fn backup_seen(&self, made: chrono::DateTime<chrono::Utc>, bytes: u64) {
        self.backup_time.set(made.timestamp() as f64);
        self.backup_bytes.set(bytes as i64);
    }

    /// Record one mail handed to the SMTP server (or not).
    pub fn mail_sent(&self, mail: MailKind, sent: bool, seconds: f64) {
        let outcome = if sent { "sent" } else { "failed" };
        self.smtp_duration
            .get_or_create(&MailLabels { mail, outcome })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(t: &Telemetry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, t.registry()).unwrap();
        out
    }

    #[test]
    fn counters_are_typed_counters_under_their_total_names() {
        let t = Telemetry::new();
        t.ingest.requests.inc_by(2);
        t.ingest_answered(IngestOutcome::Refused(IngestRefusal::Unauthorized), 0.002);
        let text = exposition(&t);
        assert!(text.contains("# TYPE rackwatch_ingest_requests_total counter\n"));
        assert!(
            text.contains("\nrackwatch_ingest_requests_total 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rackwatch_ingest_seconds_total counter\n"));
        assert!(
            text.contains("rackwatch_ingest_seconds_total 0.002\n"),
            "{text}"
        );
        assert!(text.contains("rackwatch_ingest_errors_total{reason=\"unauthorized\"} 1\n"));
        // Every reason is there before it first happens.
        assert!(text.contains("rackwatch_ingest_errors_total{reason=\"rate_limited\"} 0\n"));
        // And every outcome's latency.
        assert!(
            text.contains(
                "rackwatch_ingest_request_duration_seconds_count{outcome=\"rate_limited\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("rackwatch_ingest_request_duration_seconds_count{outcome=\"ok\"} 0\n")
        );
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn histograms_count_observations_into_the_stated_buckets() {
        let t = Telemetry::new();
        t.ingest_answered(IngestOutcome::Ok, 0.003);
        t.job_ran("rollups", 2.0);
        t.mail_sent(MailKind::Alert, true, 0.04);
        let text = exposition(&t);
        let name = "rackwatch_ingest_request_duration_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "{name}_bucket{{outcome=\"ok\",le=\"0.0025\"}} 0\n"
        )));
        assert!(text.contains(&format!("{name}_bucket{{outcome=\"ok\",le=\"0.005\"}} 1\n")));
        assert!(text.contains(&format!("{name}_bucket{{outcome=\"ok\",le=\"+Inf\"}} 1\n")));
        assert!(text.contains(&format!("{name}_count{{outcome=\"ok\"}} 1\n")));
        assert!(text.contains(
            "rackwatch_job_run_duration_seconds_bucket{job_name=\"rollups\",le=\"1\"} 0\n"
        ));
        assert!(text.contains(
            "rackwatch_job_run_duration_seconds_bucket{job_name=\"rollups\",le=\"5\"} 1\n"
        ));
        assert!(text.contains(
            "rackwatch_smtp_send_duration_seconds_count{mail=\"alert\",outcome=\"sent\"} 1\n"
        ));
    }
}
