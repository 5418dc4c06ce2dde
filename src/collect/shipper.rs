//! Delivers batches to the server. New batches wait behind spooled ones, so the
//! server sees each host's samples oldest-first. Failures back off with jitter, capped at
//! a few seconds, and a server's `Retry-After` is honoured ([`Backoff`]).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use tokio::sync::watch;

use super::spool::Spool;
use crate::config::{check_base_url, AgentTls};
use crate::model::{AgentStats, Batch, IngestResponse};

/// How long one replay of the spool runs before new batches get their turn.
const REPLAY_SLICE: Duration = Duration::from_secs(1);

/// Outcome of one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    /// The server stored the batch (some samples may have been rejected; see the answer).
    Delivered(IngestResponse),
    /// Try again later (network error, a server certificate that fails the check, 5xx,
    /// 429, wrong token); `after` is the server's
    /// `Retry-After`, when it sent one.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The server refuses this batch for good (400, 415, 422).
    Refused(String),
    /// The batch is over the server's size limit (413): sent again as two halves.
    TooLarge(String),
    /// The server refuses this batch because it names another host than the token's
    /// (403): set aside until the agent starts again (with the name or token fixed).
    WrongHost(String),
}

/// Ships batches to one server with one agent token.
pub struct Shipper {
    client: reqwest::Client,
    /// The TLS files the client was built from, read again when they change (a renewed
    /// certificate), at most every [`TLS_CHECK_EVERY`].
    tls: AgentTls,
    tls_stamp: TlsStamp,
    tls_checked: Instant,
    url: String,
    /// One shipment's HTTP timeout (`agent.request_timeout_secs`).
    timeout: Duration,
    token: String,
    /// Where the token came from, named when the server refuses it.
    token_source: String,
    pub spool: Spool,
    failures: u32,
    retry_at: Option<Instant>,
    backoff: Backoff,
    pub replayed_total: u64,
    pub delivered_total: u64,
    /// This process's random id, sent with every batch ([`AgentStats::instance`]).
    instance: String,
    /// Turns true when the agent shuts down: a request in flight then gets
    /// [`SHUTDOWN_GRACE`] before its batch is spooled.
    stop: Option<watch::Receiver<bool>>,
    /// Failed deliveries, refusals and spool write errors: logged when an episode starts,
    /// then at most every [`LOG_EVERY`] while it lasts.
    retry_log: Episode,
    refusal_log: Episode,
    spool_log: Episode,
    /// Batches delivered with samples the server rejected, and those samples since the
    /// last log line.
    rejected_log: Episode,
    rejected_samples: u64,
}

/// How long a request in flight when the agent shuts down may still take: its batch is
/// spooled after that, so a stop takes seconds even with a server that hangs.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// While a failure goes on, it is logged again at most this often (with a count).
pub const LOG_EVERY: Duration = Duration::from_secs(300);

/// A repeated condition (the server unreachable, batches refused, the spool failing),
/// logged once when it starts, then at most every [`LOG_EVERY`] with how often it
/// happened in between, instead of once per attempt.
#[derive(Debug, Default)]
struct Episode {
    since: Option<Instant>,
    logged_at: Option<Instant>,
    /// Occurrences not logged yet.
    unlogged: u64,
    total: u64,
}

impl Episode {
    /// Count one occurrence; returns `Some(occurrences since the last log line)` when this
    /// one should be logged.
    fn occur(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.since.get_or_insert(now);
        self.total += 1;
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// End the episode; returns how long it lasted and how many occurrences it had, if
    /// one was going on.
    fn end(&mut self) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let total = std::mem::take(&mut self.total);
        self.logged_at = None;
        self.unlogged = 0;
        Some((since.elapsed(), total))
    }
}

/// What the server said, for a log line: the first line, at most 300 characters (an
/// HTML error page from a proxy or a wrong path is not copied into the log whole).
fn brief(text: &str) -> String {
    let text = text.trim();
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(300).collect();
    if out.len() < text.len() {
        out.push_str(" …");
    }
    out
}

/// Longest wait between retries of our own choosing. A fleet that lost its server is
/// back within this long of the server's return; Prometheus remote-write caps its
/// backoff at 5 s for the same reason. (It was 60 s: after a 3-minute outage agents
/// took up to 37 s to drain.)
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failure, and the shortest.
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest `Retry-After` obeyed: a server asking for more is waited on for this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The wait between attempts while the server cannot take a batch.
///
/// Decorrelated jitter: each wait is drawn uniformly between `base` and three times the
/// previous wait, capped at `cap` (the AWS architecture blog's "exponential backoff and
/// jitter"). The waits grow quickly to the cap, never exceed it, and agents that failed
/// together spread out instead of retrying in lockstep. When the server says when to come
/// back (`Retry-After` on 503 and 429), the wait is never shorter than that: it is drawn
/// between the server's figure and a fifth more (at most [`MAX_RETRY_AFTER`]), which
/// spreads the agents it turned away at once.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    prev: Option<Duration>,
    rng: StdRng,
}

impl Backoff {
    /// A schedule from `base` up to `cap`, with its own random seed.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Self::seeded(base, cap, rand::thread_rng().gen())
    }

    /// As [`Backoff::new`] with a fixed seed (tests).
    pub fn seeded(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base: base.min(cap),
            cap,
            prev: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The wait after one more failure; `retry_after` is the server's request, if any.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let base = self.base.as_secs_f64();
        let hi = self.prev.map_or(base * 3.0, |p| p.as_secs_f64() * 3.0);
        let own = self
            .rng
            .gen_range(base..=hi.max(base))
            .min(self.cap.as_secs_f64());
        let own = Duration::from_secs_f64(own);
        self.prev = Some(own);
        match retry_after {
            Some(ra) => {
                let ra = ra.min(MAX_RETRY_AFTER).as_secs_f64();
                Duration::from_secs_f64(self.rng.gen_range(ra..=ra * 1.2)).max(own)
            }
            None => own,
        }
    }

    /// The server answered: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.prev = None;
    }
}

/// The seconds of a `Retry-After` header: a number of seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

/// An HTTP client that speaks TLS 1.2 or 1.3 and checks the server as `tls` says: the
/// Mozilla roots and the system's store, or only the private CA of `tls.ca_file`; with
/// `tls.cert_file`, it presents this agent's certificate.
pub fn client(tls: &AgentTls) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2);
    if !tls.ca_file.is_empty() {
        let pem = std::fs::read(&tls.ca_file)
            .with_context(|| format!("agent.tls.ca_file = {}", tls.ca_file))?;
        let cas = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("agent.tls.ca_file = {}", tls.ca_file))?;
        anyhow::ensure!(
            !cas.is_empty(),
            "agent.tls.ca_file = {}: no PEM certificate in it",
            tls.ca_file
        );
        for c in cas {
            b = b.add_root_certificate(c);
        }
        // A private CA is the only one trusted: a certificate any public CA would sign
        // for the server's name is not enough.
        b = b.tls_built_in_root_certs(false);
    }
    if !tls.cert_file.is_empty() {
        crate::config::check_private_file(Path::new(&tls.key_file), "agent.tls.key_file")
            .map_err(anyhow::Error::msg)?;
        let mut pem = std::fs::read(&tls.cert_file)
            .with_context(|| format!("agent.tls.cert_file = {}", tls.cert_file))?;
        pem.push(b'\n');
        pem.extend(
            std::fs::read(&tls.key_file)
                .with_context(|| format!("agent.tls.key_file = {}", tls.key_file))?,
        );
        let id = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "agent.tls.cert_file = {} with agent.tls.key_file = {}",
                tls.cert_file, tls.key_file
            )
        })?;
        b = b.identity(id);
    }
    Ok(b)
}

/// An error with its causes, which for TLS say what was wrong with the certificate.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// How long the agent keeps an idle connection to the server.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(4);

/// The agent's HTTP client for `tls`, each request limited to `timeout`.
fn http_client(tls: &AgentTls, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(client(tls)?
        .timeout(timeout)
        // Drop an idle connection well before the server does (it closes keep-alive
        // connections idle for server.header_read_timeout_secs, 10 s by default):
        // reusing one the server is closing fails the request.
        .pool_idle_timeout(IDLE_CONNECTION)
        .user_agent(concat!("rackwatch-agent/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// How often the agent looks at its TLS files for a renewal.
const TLS_CHECK_EVERY: Duration = Duration::from_secs(60);

/// The stamps of the agent's TLS files (a renewal changes them).
type TlsStamp = Vec<crate::config::FileStamp>;

fn tls_stamp(tls: &AgentTls) -> TlsStamp {
    [&tls.ca_file, &tls.cert_file, &tls.key_file]
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| crate::config::file_stamp(Path::new(f.as_str())))
        .collect()
}

impl Shipper {
    pub fn new(
        server: &str,
        token: &str,
        spool: Spool,
        timeout: Duration,
        tls: &AgentTls,
    ) -> anyhow::Result<Shipper> {
        // A typo in `agent.server` / `--server` is refused at start instead of spooling every
        // batch while retrying a URL that can never work.
        check_base_url("agent.server", server).map_err(anyhow::Error::msg)?;
        // A path is a reverse proxy's prefix; the API's own path is the usual slip.
        if let Some(i) = server.find("/api/") {
            anyhow::bail!(
                "agent.server = {server:?}: give the server's base URL ({}), without the API's path; the agent adds /api/v1/ingest",
                &server[..i]
            );
        }
        // Checked here, where the server the agent talks to is known (`--server`, or the
        // demo's own): over plain HTTP the TLS settings do nothing.
        if (!tls.ca_file.is_empty() || !tls.cert_file.is_empty())
            && server.trim().to_ascii_lowercase().starts_with("http://")
        {
            tracing::warn!(
                server,
                "agent.tls is set but the server is plain HTTP: the server is not verified, no certificate is sent, and the token travels in the clear; use https://"
            );
        }
        let client = http_client(tls, timeout)?;
        Ok(Shipper {
            client,
            tls: tls.clone(),
            tls_stamp: tls_stamp(tls),
            tls_checked: Instant::now(),
            url: format!("{}/api/v1/ingest", server.trim_end_matches('/')),
            timeout,
            token: token.to_string(),
            token_source: "agent.token".to_string(),
            spool,
            failures: 0,
            retry_at: None,
            backoff: Backoff::new(BASE_BACKOFF, MAX_BACKOFF),
            replayed_total: 0,
            delivered_total: 0,
            instance: format!("{:016x}", rand::random::<u64>()),
            stop: None,
            retry_log: Episode::default(),
            refusal_log: Episode::default(),
            spool_log: Episode::default(),
            rejected_log: Episode::default(),
            rejected_samples: 0,
        })
    }

    /// Build the client again when the TLS files changed since it was built: a renewed
    /// agent certificate (or CA) is presented from the next request. A renewal that does
    /// not load (a key and certificate that do not match, a key others may read) keeps
    /// the client as it was and says why.
    pub fn reload_tls(&mut self) {
        self.tls_checked = Instant::now();
        let stamp = tls_stamp(&self.tls);
        if stamp == self.tls_stamp {
            return;
        }
        self.tls_stamp = stamp;
        match http_client(&self.tls, self.timeout) {
            Ok(c) => {
                self.client = c;
                tracing::info!("agent TLS files changed: using them from the next request");
            }
            Err(e) => tracing::error!(
                "agent TLS files changed but cannot be used ({e:#}); the ones read before stay in use"
            ),
        }
    }

    /// [`Shipper::reload_tls`] when it is due.
    fn reload_tls_when_due(&mut self) {
        if self.tls_checked.elapsed() >= TLS_CHECK_EVERY {
            self.reload_tls();
        }
    }

    /// Name where the token came from (`agent.token_file = PATH`) in the message of a
    /// refused token.
    pub fn with_token_source(mut self, source: String) -> Shipper {
        self.token_source = source;
        self
    }

    /// Cut requests short when `stop` turns true (see [`SHUTDOWN_GRACE`]).
    pub fn stop_on(&mut self, stop: watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    fn stats(&self) -> AgentStats {
        AgentStats {
            version: env!("CARGO_PKG_VERSION").into(),
            spool_batches: self.spool.len() as u64,
            spool_bytes: self.spool.bytes(),
            replayed_batches_total: self.replayed_total,
            dropped_batches_total: self.spool.dropped_total,
            corrupt_batches_total: self.spool.corrupt_total,
            sent_at: Some(chrono::Utc::now()),
            instance: Some(self.instance.clone()),
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
        let body = match gz.write_all(&json).and_then(|()| gz.finish()) {
            Ok(b) => b,
            Err(e) => return Delivery::Refused(format!("cannot compress batch: {e}")),
        };
        let exchange = async {
            let mut req = self.client.post(&self.url);
            // Without a token the client certificate is the credential.
            if !self.token.is_empty() {
                req = req.bearer_auth(&self.token);
            }
            let resp = req
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, after, text))
        };
        let answer = match self.stop.clone() {
            None => exchange.await,
            Some(mut stop) => {
                let stopped = async {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                };
                tokio::select! {
                    a = exchange => a,
                    () = stopped => {
                        return Delivery::Retry {
                            why: format!(
                                "shutting down: the server did not answer within {} s",
                                SHUTDOWN_GRACE.as_secs()
                            ),
                            after: None,
                        };
                    }
                }
            }
        };
        let (status, after, text) = match answer {
            Ok(a) => a,
            Err(e) if e.is_timeout() => {
                return Delivery::Retry {
                    why: format!(
                        "no answer from {} within {} s (agent.request_timeout_secs): the server is overloaded or the network drops packets",
                        self.url,
                        self.timeout.as_secs_f64()
                    ),
                    after: None,
                };
            }
            Err(e) => {
                // The URL is said once, not again inside reqwest's message.
                let mut why = format!("cannot reach {}: {}", self.url, chain(&e.without_url()));
                if why.contains("InvalidContentType") && self.url.starts_with("https:") {
                    why.push_str(" (the server does not speak TLS there: use http:// in agent.server, or enable server.tls)");
                }
                return Delivery::Retry { why, after: None };
            }
        };
        // The whole answer is read (a batch with rejected samples lists each one); only
        // log lines get the brief form.
        if status.is_success() {
            if let Ok(r) = serde_json::from_str::<IngestResponse>(&text) {
                return Delivery::Delivered(r);
            }
        }
        let text = brief(&text);
        let retry = |why: String| Delivery::Retry { why, after };
        match status.as_u16() {
            200..=299 => retry(format!(
                "unexpected answer from {} (not a Rackwatch ingest answer): {text}",
                self.url
            )),
            400 | 415 | 422 => Delivery::Refused(format!("{status}: {text}")),
            413 => Delivery::TooLarge(format!("{status}: {text}")),
            // The token belongs to another host: this batch is not accepted as it is, so it
            // must not block the ones behind it; it waits in rejected/wrong-host/ and is
            // sent again, under the configured name, when the agent next starts.
            403 => Delivery::WrongHost(format!(
                "{status}: {text} (set agent.host.name to the token's host, or create a token for this host, and restart the agent: the refused batches are sent again then)"
            )),
            401 => retry(format!(
                "{status}: {text} (check {}: revoked, mistyped, or from another server; batches are kept in the spool)",
                self.token_source
            )),
            404 => retry(format!(
                "{status}: {text} ({} has no Rackwatch ingest: agent.server must be a Rackwatch server's base URL, without a path; batches are kept in the spool)",
                self.url
            )),
            _ => retry(format!("{status}: {text}")),
        }
    }

    fn note_failure(&mut self, why: &str, retry_after: Option<Duration>) {
        self.failures += 1;
        let wait = self.backoff.next(retry_after);
        self.retry_at = Some(Instant::now() + wait);
        match self.retry_log.occur() {
            Some(1) => tracing::warn!(
                retry_in_s = (wait.as_secs_f64() * 10.0).round() / 10.0,
                spooled = self.spool.len(),
                "shipping failed: {why} (retrying; logged again every {} s while it fails)",
                LOG_EVERY.as_secs()
            ),
            Some(n) => tracing::warn!(
                spooled = self.spool.len(),
                "shipping still failing ({n} attempts since the last report): {why}"
            ),
            None => {}
        }
    }

    fn note_success(&mut self) {
        // Once, so an installer sees that the host reports (the log is quiet after).
        if self.delivered_total == 1 {
            tracing::info!(url = self.url, "first batch delivered: this host reports");
        }
        if let Some((lasted, attempts)) = self.retry_log.end() {
            tracing::info!(
                failed_attempts = attempts,
                spooled = self.spool.len(),
                "server reachable again after {:.0} s",
                lasted.as_secs_f64()
            );
        }
        self.failures = 0;
        self.retry_at = None;
        self.backoff.reset();
    }

    /// A batch the server will never take, moved to `rejected/`.
    fn note_refusal(&mut self, why: &str, kept: &str) {
        match self.refusal_log.occur() {
            Some(1) => tracing::error!(
                "server refused a batch ({why}); kept in {kept} (further refusals are logged every {} s)",
                LOG_EVERY.as_secs()
            ),
            Some(n) => tracing::error!(
                "server refused {n} batches since the last report ({why}); the latest kept in {kept}"
            ),
            None => {}
        }
    }

    fn backing_off(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// Log what the server rejected of a delivered batch: the first batch's reasons (up
    /// to five), then at most every [`LOG_EVERY`] how many samples since and the latest
    /// reason. A clock minutes fast has every sample rejected, every batch.
    fn report(&mut self, resp: &IngestResponse) {
        if resp.rejected == 0 {
            return;
        }
        self.rejected_samples += resp.rejected as u64;
        let Some(batches) = self.rejected_log.occur() else {
            return;
        };
        let samples = std::mem::take(&mut self.rejected_samples);
        if batches == 1 {
            for r in resp.errors.iter().take(5) {
                tracing::warn!(section = %r.section, index = r.index, field = r.field.as_deref().unwrap_or("-"), "sample rejected: {}", r.reason);
            }
        } else {
            let latest = resp.errors.first().map_or("-", |r| r.reason.as_str());
            tracing::warn!(
                batches,
                samples,
                "samples rejected by the server since the last report (logged every {} s); the latest: {latest}",
                LOG_EVERY.as_secs(),
            );
        }
    }

    /// Deliver a new batch: directly when nothing is waiting, otherwise behind the
    /// spooled ones. Never loses it: anything not acknowledged goes to the spool.
    pub async fn ship(&mut self, batch: Batch) {
        if batch.is_empty() && batch.gpus.is_empty() {
            return;
        }
        self.reload_tls_when_due();
        if !self.spool.is_empty() || self.backing_off() {
            self.spool_batch(&batch);
            self.drain().await;
            return;
        }
        let mut delivery = self.send(&batch).await;
        if let Delivery::TooLarge(why) = delivery {
            // Both halves wait in the spool and go out behind nothing.
            match batch.halves() {
                Some((a, b)) => {
                    tracing::warn!("a batch of {} samples is over the server's size limit ({why}); sending it as two halves", batch.len());
                    self.spool_batch(&a);
                    self.spool_batch(&b);
                    self.drain().await;
                    return;
                }
                None => delivery = Delivery::Refused(why),
            }
        }
        let wrong_host = matches!(delivery, Delivery::WrongHost(_));
        match delivery {
            Delivery::Delivered(r) => {
                self.report(&r);
                self.delivered_total += 1;
                self.refusal_log.end();
                self.note_success();
            }
            Delivery::Retry { why, after } => {
                self.spool_batch(&batch);
                self.note_failure(&why, after);
            }
            Delivery::Refused(why) | Delivery::WrongHost(why) | Delivery::TooLarge(why) => {
                // Keep it for inspection (or the next start) rather than dropping it.
                match self.spool.push(&batch) {
                    Ok(seq) => {
                        let to = if wrong_host {
                            self.spool.set_aside_wrong_host(seq)
                        } else {
                            self.spool.quarantine(seq)
                        };
                        self.note_refusal(&why, &to);
                    }
                    Err(e) => self.note_refusal(&why, &format!("nowhere ({e})")),
                }
            }
        }
    }

    fn spool_batch(&mut self, batch: &Batch) {
        match self.spool.push(batch) {
            Ok(_) => {
                if let Some((lasted, n)) = self.spool_log.end() {
                    tracing::info!(
                        dropped = n,
                        "the spool takes batches again after {:.0} s",
                        lasted.as_secs_f64()
                    );
                }
            }
            Err(e) => {
                // A read-only or full disk: count the batch as dropped, keep collecting.
                self.spool.dropped_total += 1;
                match self.spool_log.occur() {
                    Some(1) => tracing::error!(
                        "cannot write to the spool: {e}; this batch is dropped (counted in dropped_batches_total; logged again every {} s while it fails)",
                        LOG_EVERY.as_secs()
                    ),
                    Some(n) => tracing::error!(
                        "cannot write to the spool: {e}; {n} batches dropped since the last report"
                    ),
                    None => {}
                }
            }
        }
    }

    /// Replay spooled batches oldest-first until one fails, for up to [`REPLAY_SLICE`]:
    /// new batches wait in memory (and the collector on them once 64 wait) while this
    /// runs, so a long spool is replayed in slices between them. Returns true when the
    /// spool is empty afterwards.
    pub async fn drain(&mut self) -> bool {
        self.reload_tls_when_due();
        let started = Instant::now();
        while !self.backing_off() && started.elapsed() < REPLAY_SLICE {
            let Some(entry) = self.spool.oldest() else {
                return true;
            };
            let (seq, batch) = match entry {
                Ok(x) => x,
                Err(e @ super::spool::SpoolError::Corrupt(_)) => {
                    tracing::error!("{e}");
                    continue;
                }
                Err(e @ super::spool::SpoolError::Unreadable { .. }) => {
                    self.note_failure(&e.to_string(), None);
                    return false;
                }
            };
            match self.send(&batch).await {
                Delivery::Delivered(r) => {
                    self.report(&r);
                    self.spool.remove(seq);
                    self.replayed_total += 1;
                    self.delivered_total += 1;
                    self.refusal_log.end();
                    self.note_success();
                }
                Delivery::Retry { why, after } => {
                    self.note_failure(&why, after);
                    return false;
                }
                Delivery::TooLarge(why) => match batch.halves() {
                    Some((a, b)) => {
                        tracing::warn!("a spooled batch of {} samples is over the server's size limit ({why}); sending it as two halves", batch.len());
                        // Written before the whole one goes: a crash between sends some
                        // samples twice, which the server stores once.
                        if self.spool.push(&a).is_ok() && self.spool.push(&b).is_ok() {
                            self.spool.remove(seq);
                        } else {
                            let to = self.spool.quarantine(seq);
                            self.note_refusal(&why, &to);
                        }
                    }
                    None => {
                        let to = self.spool.quarantine(seq);
                        self.note_refusal(&why, &to);
                    }
                },
                Delivery::Refused(why) => {
                    let to = self.spool.quarantine(seq);
                    self.note_refusal(&why, &to);
                }
                Delivery::WrongHost(why) => {
                    let to = self.spool.set_aside_wrong_host(seq);
                    self.note_refusal(&why, &to);
                }
            }
        }
        self.spool.is_empty()
    }

    /// Whether anything waits in the spool.
    pub fn pending(&self) -> bool {
        !self.spool.is_empty()
    }

    /// Whether spooled batches could be replayed now (nothing to wait out).
    pub fn replay_now(&self) -> bool {
        self.pending() && !self.backing_off()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn a_server_url_that_cannot_work_is_refused_with_what_is_wrong() {
        for ok in [
            "http://127.0.0.1:8080",
            "https://rackwatch.example",
            "https://rackwatch.example/monitoring/",
            "http://[::1]:8080",
        ] {
            check_base_url("agent.server", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("htp://127.0.0.1:8080", "the scheme must be http or https"),
            ("rackwatch.example:8080", "the scheme must be http or https"),
            ("127.0.0.1:8080", "not a URL"),
            ("", "not a URL"),
            ("http://", "not a URL"),
            ("https://rackwatch.example/?x=1", "no query or fragment"),
        ] {
            let e = check_base_url("agent.server", bad).expect_err(bad);
            assert!(e.contains(says) && e.contains("agent.server"), "{bad}: {e}");
        }
    }

    #[test]
    fn waits_stay_between_the_base_and_the_cap_and_reach_the_cap_quickly() {
        let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, 1);
        let waits: Vec<f64> = (0..10_000).map(|_| secs(b.next(None))).collect();
        assert!(waits.iter().all(|&w| (0.5..=5.0).contains(&w)), "{waits:?}");
        // Drawn up to 3× the previous wait: the first is at most 1.5 s.
        let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, 2);
        assert!(secs(b.next(None)) <= 1.5);
        // In the long run the waits sit near the cap but are not all equal to it.
        let tail = &waits[100..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        assert!((2.5..5.0).contains(&mean), "mean wait {mean:.2} s");
        let at_cap = tail.iter().filter(|&&w| w >= 4.999).count();
        assert!(
            at_cap < tail.len() * 9 / 10,
            "{at_cap} of {} at the cap",
            tail.len()
        );
    }

    #[test]
    fn a_failure_that_goes_on_is_logged_when_it_starts_then_every_few_minutes() {
        let mut e = Episode::default();
        assert_eq!(e.occur(), Some(1));
        for _ in 0..50 {
            assert_eq!(e.occur(), None);
        }
        // Five minutes on, the next occurrence is logged with those in between.
        e.logged_at = Some(Instant::now() - LOG_EVERY);
        assert_eq!(e.occur(), Some(51));
        let (_, total) = e.end().unwrap();
        assert_eq!(total, 52);
        assert!(e.end().is_none());
        assert_eq!(e.occur(), Some(1), "a new episode is logged at once");
    }

    #[test]
    fn a_server_page_is_cut_to_its_first_line() {
        let page = format!("<!doctype html>\n<html>{}</html>", "x".repeat(5000));
        assert_eq!(brief(&page), "<!doctype html> …");
        assert_eq!(brief(&"y".repeat(400)).chars().count(), 302);
        assert_eq!(brief(" {\"error\":\"bad\"} "), "{\"error\":\"bad\"}");
    }

    #[test]
    fn a_success_starts_the_schedule_over() {
        let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, 3);
        for _ in 0..50 {
            b.next(None);
        }
        b.reset();
        for seed in 0..1000 {
            let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, seed);
            for _ in 0..20 {
                b.next(None);
            }
            b.reset();
            assert!(secs(b.next(None)) <= 1.5);
        }
    }

    #[test]
    fn agents_that_fail_together_do_not_retry_in_lockstep() {
        // 100 agents lose the server at the same instant; when does each retry?
        let mut at: Vec<Vec<f64>> = (0..100)
            .map(|seed| {
                let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, seed);
                let mut t = 0.0;
                (0..8)
                    .map(|_| {
                        t += secs(b.next(None));
                        t
                    })
                    .collect()
            })
            .collect();
        for k in [0, 3, 7] {
            let mut ts: Vec<f64> = at.iter_mut().map(|a| a[k]).collect();
            ts.sort_by(f64::total_cmp);
            // Retries spread out, not one instant: the first over the second after
            // `base` (0.5 to 1.5 s), later ones over seconds.
            let spread = if k == 0 { 0.5 } else { 1.0 };
            assert!(
                ts[89] - ts[10] > spread,
                "attempt {k}: {:.2}..{:.2}",
                ts[10],
                ts[89]
            );
        }
        // Within the cap of the server's return: no agent waits longer than 5 s between
        // attempts, so each tries within 5 s of any moment.
        for a in &at {
            for w in a.windows(2) {
                assert!(w[1] - w[0] <= 5.0 + 1e-9);
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_with_a_spread_and_a_ceiling() {
        let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, 4);
        for _ in 0..1000 {
            let w = secs(b.next(Some(Duration::from_secs(30))));
            assert!((30.0..=36.0).contains(&w), "{w}");
        }
        // Shorter than our own wait: ours wins (the server asked for at least that).
        let mut b = Backoff::seeded(BASE_BACKOFF, MAX_BACKOFF, 5);
        for _ in 0..20 {
            b.next(None);
        }
        for _ in 0..100 {
            assert!(secs(b.next(Some(Duration::ZERO))) >= 0.5);
        }
        // A server asking for a day is waited on for MAX_RETRY_AFTER.
        let w = b.next(Some(Duration::from_secs(86_400)));
        assert!(w >= MAX_RETRY_AFTER && secs(w) <= secs(MAX_RETRY_AFTER) * 1.2);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 10:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
