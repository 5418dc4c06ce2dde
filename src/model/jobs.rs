//! What the periodic jobs report about themselves: the job runner (`jobs`) writes it, the
//! admin page and `/metrics` read it. Each server keeps its own board; only the job leader
//! runs jobs, so the other replicas show them as not run here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rackwatch_anomaly::SelectedBackend;

/// One job's record on this server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStatus {
    pub name: &'static str,
    /// How often it is due.
    pub every: Duration,
    pub last_start: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// How long the last run took, successful or not.
    pub last_duration: Option<Duration>,
    /// The last run's error (cleared by a success).
    pub last_error: Option<String>,
    /// What the last successful run did, in a few words.
    pub last_summary: String,
    pub runs: u64,
    pub failures: u64,
}

/// The jobs of this server, in the order they run.
#[derive(Debug, Default)]
pub struct JobBoard {
    jobs: Mutex<Vec<JobStatus>>,
    leader: std::sync::atomic::AtomicBool,
    /// The anomaly detector's backend on this server (when the job is enabled).
    anomaly_backend: Mutex<Option<Arc<SelectedBackend>>>,
}

impl JobBoard {
    /// Register a job (once, at start).
    pub fn register(&self, name: &'static str, every: Duration) {
        let mut jobs = self.jobs.lock().expect("job board");
        if !jobs.iter().any(|j| j.name == name) {
            jobs.push(JobStatus {
                name,
                every,
                ..Default::default()
            });
        }
    }

    /// Record a finished run.
    pub fn record(
        &self,
        name: &str,
        start: DateTime<Utc>,
        took: Duration,
        result: Result<String, String>,
    ) {
        let mut jobs = self.jobs.lock().expect("job board");
        let Some(j) = jobs.iter_mut().find(|j| j.name == name) else {
            return;
        };
        j.runs += 1;
        j.last_start = Some(start);
        j.last_duration = Some(took);
        match result {
            Ok(summary) => {
                j.last_success = Some(start + chrono::Duration::from_std(took).unwrap_or_default());
                j.last_error = None;
                j.last_summary = summary;
            }
            Err(e) => {
                j.failures += 1;
                j.last_error = Some(e);
            }
        }
    }

    /// Record the anomaly detector's backend (once, at start).
    pub fn set_anomaly_backend(&self, backend: Arc<SelectedBackend>) {
        *self.anomaly_backend.lock().expect("job board") = Some(backend);
    }

    /// The anomaly detector's backend, when the job is enabled.
    pub fn anomaly_backend(&self) -> Option<Arc<SelectedBackend>> {
        self.anomaly_backend.lock().expect("job board").clone()
    }

    /// Whether this server holds the job lock now.
    pub fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every job's record, in run order.
    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.jobs.lock().expect("job board").clone()
    }
}
