//! Delivers batches to the server. New batches wait behind spooled ones, so the
//! server sees each host's samples oldest-first. Failures back off exponentially.

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::spool::Spool;
use crate::model::{AgentStats, Batch, IngestResponse};

/// Outcome of one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    /// The server stored the batch (some samples may have been rejected; see the answer).
    Delivered(IngestResponse),
    /// Try again later (network error, 5xx, 429, wrong token).
    Retry(String),
    /// The server refuses this batch for good (400, 413, 415, 422).
    Refused(String),
}

/// Ships batches to one server with one agent token.
pub struct Shipper {
    client: reqwest::Client,
    url: String,
    token: String,
    pub spool: Spool,
    failures: u32,
    retry_at: Option<Instant>,
    base_backoff: Duration,
    pub replayed_total: u64,
    pub delivered_total: u64,
}

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long the agent keeps an idle connection to the server.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(4);

impl Shipper {
    pub fn new(
        server: &str,
        token: &str,
        spool: Spool,
        timeout: Duration,
        base_backoff: Duration,
    ) -> anyhow::Result<Shipper> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // Drop an idle connection well before the server does (it closes keep-alive
            // connections idle for server.header_read_timeout_secs, 10 s by default):
            // reusing one the server is closing fails the request.
            .pool_idle_timeout(IDLE_CONNECTION)
            .user_agent(concat!("rackwatch-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Shipper {
            client,
            url: format!("{}/api/v1/ingest", server.trim_end_matches('/')),
            token: token.to_string(),
            spool,
            failures: 0,
            retry_at: None,
            base_backoff,
            replayed_total: 0,
            delivered_total: 0,
        })
    }

    fn stats(&self) -> AgentStats {
        AgentStats {
            version: env!("CARGO_PKG_VERSION").into(),
            spool_batches: self.spool.len() as u64,
            spool_bytes: self.spool.bytes(),
            replayed_batches_total: self.replayed_total,
            dropped_batches_total: self.spool.dropped_total,
        }
    }

    /// One POST of a batch, gzip-compressed.
    pub async fn send(&self, batch: &Batch) -> Delivery {
        let mut b = batch.clone();
        b.agent = Some(self.stats());
        let json = match serde_json::to_vec(&b) {
            Ok(j) => j,
            Err(e) => return Delivery::Refused(format!("cannot encode batch: {e}")),
        };
        let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
        if let Err(e) = gz.write_all(&json) {
            return Delivery::Retry(format!("gzip: {e}"));
        }
        let body = match gz.finish() {
            Ok(b) => b,
            Err(e) => return Delivery::Retry(format!("gzip: {e}")),
        };
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Delivery::Retry(format!("cannot reach {}: {e}", self.url)),
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            200..=299 => match serde_json::from_str::<IngestResponse>(&text) {
                Ok(r) => Delivery::Delivered(r),
                Err(e) => Delivery::Retry(format!("unexpected answer from server ({e}): {text}")),
            },
            400 | 413 | 415 | 422 => Delivery::Refused(format!("{status}: {text}")),
            // The token belongs to another host: this batch will never be accepted, so it
            // must not block the ones behind it (a fixed config ships them).
            403 => Delivery::Refused(format!(
                "{status}: {text} (set agent.host.name to the token's host, or create a token for this host)"
            )),
            401 => Delivery::Retry(format!(
                "{status}: {text} (check agent.token; batches are kept in the spool)"
            )),
            _ => Delivery::Retry(format!("{status}: {text}")),
        }
    }

    fn note_failure(&mut self, why: &str) {
        self.failures += 1;
        let wait = self
            .base_backoff
            .saturating_mul(1 << self.failures.min(10).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + wait);
        tracing::warn!(
            retry_in_s = wait.as_secs_f64(),
            spooled = self.spool.len(),
            "shipping failed: {why}"
        );
    }

    fn note_success(&mut self) {
        if self.failures > 0 {
            tracing::info!("server reachable again");
        }
        self.failures = 0;
        self.retry_at = None;
    }

    fn backing_off(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    fn report(resp: &IngestResponse) {
        if resp.rejected > 0 {
            for r in resp.errors.iter().take(5) {
                tracing::warn!(section = %r.section, index = r.index, field = r.field.as_deref().unwrap_or("-"), "sample rejected: {}", r.reason);
            }
        }
    }

    /// Deliver a new batch: directly when nothing is waiting, otherwise behind the
    /// spooled ones. Never loses it: anything not acknowledged goes to the spool.
    pub async fn ship(&mut self, batch: Batch) {
        if batch.is_empty() && batch.gpus.is_empty() {
            return;
        }
        if !self.spool.is_empty() || self.backing_off() {
            self.spool_batch(&batch);
            self.drain().await;
            return;
        }
        match self.send(&batch).await {
            Delivery::Delivered(r) => {
                Self::report(&r);
                self.delivered_total += 1;
                self.note_success();
            }
            Delivery::Retry(why) => {
                self.spool_batch(&batch);
                self.note_failure(&why);
            }
            Delivery::Refused(why) => {
                // Keep it for inspection rather than dropping it.
                match self.spool.push(&batch) {
                    Ok(seq) => {
                        let to = self.spool.quarantine(seq);
                        tracing::error!("server refused a batch ({why}); kept in {to}");
                    }
                    Err(e) => {
                        tracing::error!("server refused a batch ({why}); cannot keep it: {e}")
                    }
                }
            }
        }
    }

    fn spool_batch(&mut self, batch: &Batch) {
        if let Err(e) = self.spool.push(batch) {
            tracing::error!("cannot write to the spool: {e}; this batch is lost");
        }
    }

    /// Replay spooled batches oldest-first until one fails. Returns true when the spool
    /// is empty afterwards.
    pub async fn drain(&mut self) -> bool {
        while !self.backing_off() {
            let Some(entry) = self.spool.oldest() else {
                return true;
            };
            let (seq, batch) = match entry {
                Ok(x) => x,
                Err(corrupt) => {
                    tracing::error!("{corrupt}");
                    continue;
                }
            };
            match self.send(&batch).await {
                Delivery::Delivered(r) => {
                    Self::report(&r);
                    self.spool.remove(seq);
                    self.replayed_total += 1;
                    self.delivered_total += 1;
                    self.note_success();
                }
                Delivery::Retry(why) => {
                    self.note_failure(&why);
                    return false;
                }
                Delivery::Refused(why) => {
                    let to = self.spool.quarantine(seq);
                    tracing::error!("server refused a spooled batch ({why}); moved to {to}");
                }
            }
        }
        self.spool.is_empty()
    }

    /// Whether anything waits in the spool.
    pub fn pending(&self) -> bool {
        !self.spool.is_empty()
    }
}
