//! One typed configuration for every subcommand.
//!
//! Layers, later wins: built-in defaults → `--config FILE` (TOML) → `RACKWATCH_*`
//! environment variables. Nested keys use a double underscore in the variable name:
//! `RACKWATCH_DATABASE__URL`, `RACKWATCH_AGENT__INTERVAL_SECS`, `RACKWATCH_DATA_DIR`.
//! A variable's text is read as its key's type (a password of digits stays a string).
//! `config/default.toml` documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rackwatch_anomaly::BackendChoice;
use serde::Deserialize;

mod env;

/// A string that never prints its value (passwords, tokens, database URLs with secrets).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the managed Postgres cluster, the agent spool and other state live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub retention: RetentionConfig,
    pub ingest: IngestConfig,
    pub agent: AgentConfig,
    pub simulator: SimulatorConfig,
    pub alerting: AlertingConfig,
    pub energy: EnergyConfig,
    pub anomaly: AnomalyConfig,
    pub capacity: CapacityConfig,
    pub backup: BackupConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("rackwatch-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            retention: RetentionConfig::default(),
            ingest: IngestConfig::default(),
            agent: AgentConfig::default(),
            simulator: SimulatorConfig::default(),
            alerting: AlertingConfig::default(),
            energy: EnergyConfig::default(),
            anomaly: AnomalyConfig::default(),
            capacity: CapacityConfig::default(),
            backup: BackupConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds, e.g. "127.0.0.1:8080" or "0.0.0.0:8080".
    pub listen: String,
    /// URL operators use to reach the dashboard (links in mails, printed by `demo`).
    pub public_url: String,
    /// Largest request body accepted on the wire (compressed size), in bytes.
    pub max_body_bytes: usize,
    /// Largest ingest body after gzip decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Inflated ingest bodies held at once, across all requests, in bytes. A body that
    /// would go past it gets 503 with Retry-After. At least `max_decompressed_bytes`.
    pub inflate_budget_bytes: usize,
    /// Mark session cookies `Secure` and send HSTS (set when a proxy serves the dashboard
    /// over TLS; `server.tls` implies it).
    pub secure_cookies: bool,
    /// How long a login session lasts, in seconds.
    pub session_ttl_secs: i64,
    /// A session unused this long ends, in seconds.
    pub session_idle_secs: i64,
    /// Most connections open at once; one more is closed on accept.
    pub max_connections: usize,
    /// Most connections open at once from one client address (an IPv6 client's /64); one
    /// more is closed on accept, so one client cannot take every connection.
    pub max_connections_per_client: usize,
    /// Addresses or CIDR ranges without the per-client cap: a reverse proxy or load
    /// balancer in front of the server, whose connections carry many clients.
    pub per_client_exempt: Vec<String>,
    /// Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For` names the
    /// client: login throttles, known addresses and audit rows then go by the client's
    /// address (the last one in the header that is not itself such a proxy). Empty: the
    /// header is ignored, as anyone can send it.
    pub trusted_proxies: Vec<String>,
    /// A response the client does not read for this many seconds closes the connection
    /// (the answer is not held in memory for a client that stopped reading).
    pub write_timeout_secs: u64,
    /// Request headers must arrive within this many seconds (also the keep-alive idle
    /// timeout).
    pub header_read_timeout_secs: u64,
    /// A request body that sends nothing for this many seconds is cut off.
    pub body_timeout_secs: u64,
    /// A whole request (body and handler) must finish within this many seconds (408).
    pub request_timeout_secs: u64,
    /// Ingest requests processed at once; more wait up to 5 s, then
    /// get 503 with Retry-After. Bounds the memory that bodies and their parsing hold.
    pub ingest_concurrency: usize,
    /// Password checks (argon2id, 19 MiB each) run at once. More are answered 503 at once.
    pub password_checks: usize,
    /// Serve `/metrics` without credentials. Off: it needs `metrics_token` or a user.
    pub metrics_public: bool,
    /// Bearer token that may read `/metrics` (a Prometheus scrape).
    pub metrics_token: Secret,
    /// `/metrics/fleet` leaves out samples older than this many seconds (a host that
    /// stopped reporting disappears from Prometheus instead of repeating its last value),
    /// and counts XID errors over the same window.
    pub fleet_metrics_stale_secs: u64,
    /// HTTPS (and optional client certificates for agents). Off unless `cert_file` is set.
    pub tls: ServerTls,
    /// Sign-on by a trusted authenticating proxy (oauth2-proxy and the like).
    pub auth_proxy: AuthProxy,
}

/// TLS in the server. With `cert_file` and `key_file` set the server speaks HTTPS only
/// (TLS 1.2 and 1.3); the files are re-read when they change, so a renewed certificate
/// is served without a restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// PEM certificate chain, the server's certificate first. Empty: plain HTTP.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate. Refused when other
    /// users may read it.
    pub key_file: String,
    /// PEM certificates of the CA that issues agent certificates. Set: agents may present
    /// a certificate whose DNS name (or, without one, subject common name) is their host
    /// name, and ingest for that host alone without a token. Tokens keep working.
    pub client_ca_file: String,
    /// Seconds between checks of the certificate and key files for a change.
    pub reload_secs: u64,
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            reload_secs: 10,
        }
    }
}

impl ServerTls {
    /// Whether the server speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

impl ServerConfig {
    /// Whether browsers reach the server over HTTPS only: `secure_cookies`, or the
    /// server's own TLS. Cookies are then `Secure` and HSTS is sent.
    pub fn https_only(&self) -> bool {
        self.secure_cookies || self.tls.enabled()
    }
}

/// Sign-on by an authenticating proxy in front of the server (Grafana's "auth proxy"):
/// a request from one of the `trusted` addresses that carries `header` is the user it
/// names. The same header from any other address is refused.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthProxy {
    pub enabled: bool,
    /// Header holding the user name, e.g. `X-Forwarded-User` (oauth2-proxy) or
    /// `X-WEBAUTH-USER`.
    pub header: String,
    /// Header holding the user's groups, separated by commas (`X-Forwarded-Groups`).
    /// Empty: roles are not taken from the proxy.
    pub groups_header: String,
    /// Addresses or CIDR ranges of the proxies, e.g. ["127.0.0.1", "10.0.0.0/24"].
    pub trusted: Vec<String>,
    /// Members of any of these groups are admins.
    pub admin_groups: Vec<String>,
    /// Members of any of these groups are operators (unless admins).
    pub operator_groups: Vec<String>,
    /// Role of a signed-on user in none of the groups above (without `groups_header`: of
    /// a user created at sign-on): "viewer", or "none" to refuse them.
    pub default_role: String,
    /// Create users the proxy names that do not exist yet (with no usable password).
    /// Off: only existing users may sign on.
    pub auto_create: bool,
}

impl Default for AuthProxy {
    fn default() -> Self {
        AuthProxy {
            enabled: false,
            header: "X-Forwarded-User".into(),
            groups_header: String::new(),
            trusted: vec!["127.0.0.1".into(), "::1".into()],
            admin_groups: Vec::new(),
            operator_groups: Vec::new(),
            default_role: "viewer".into(),
            auto_create: true,
        }
    }
}

/// An address range: an address and the length of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// "10.0.0.0/24", "::1/128", or a single address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 ..= {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 64 << 20,
            inflate_budget_bytes: 128 << 20,
            secure_cookies: false,
            session_ttl_secs: 12 * 3600,
            session_idle_secs: 3600,
            max_connections: 1024,
            max_connections_per_client: 64,
            per_client_exempt: Vec::new(),
            trusted_proxies: Vec::new(),
            write_timeout_secs: 30,
            header_read_timeout_secs: 10,
            body_timeout_secs: 10,
            request_timeout_secs: 60,
            ingest_concurrency: 8,
            password_checks: 2,
            metrics_public: false,
            metrics_token: Secret::default(),
            fleet_metrics_stale_secs: 300,
            tls: ServerTls::default(),
            auth_proxy: AuthProxy::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Postgres URL. Empty: run a managed local Postgres under `data_dir/postgres`.
    pub url: Secret,
    /// Connection pool size of one server process.
    pub max_connections: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub acquire_timeout_secs: u64,
    /// Directory holding `initdb`, `pg_ctl` and `postgres` for the managed cluster.
    /// Empty: search PATH, then `/usr/lib/postgresql/*/bin` (newest first).
    pub managed_bin_dir: String,
    /// Unix user that runs the managed cluster when Rackwatch runs as root.
    pub managed_user: String,
    /// `url` is a Citus coordinator: at start, make the big tables distributed by host
    /// and the inventory reference tables (see docs/scale.md). Idempotent.
    pub distributed: bool,
    /// A streaming replica of `url` for history reads (charts, raw samples, events).
    /// Empty: everything reads `url`.
    pub read_url: Secret,
    /// The replica serves history reads while its measured lag is at most this many
    /// seconds; beyond it (or unreachable) they go to the primary.
    pub read_max_lag_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::default(),
            max_connections: 16,
            acquire_timeout_secs: 3,
            managed_bin_dir: String::new(),
            managed_user: "postgres".into(),
            distributed: false,
            read_url: Secret::default(),
            read_max_lag_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw samples kept (daily partitions older than this are dropped).
    pub raw_days: u32,
    /// Days of 1-minute rollups (and of the 15-minute rollups made from them) kept; pool
    /// demand, scheduler queue reports and past capacity advice are kept as long (or
    /// `capacity.history_days`, if longer).
    pub rollup_1m_days: u32,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// Days of hourly energy accounting kept (what weekly energy reports read).
    pub energy_hourly_days: u32,
    /// Days of per-minute anomaly scores kept.
    pub anomaly_scores_days: u32,
    /// Days of audit trail kept (logins, user, token and silence changes).
    pub audit_days: u32,
    /// Days of hardware events (XID, ECC, thermal and power events) kept: a GPU's fault
    /// history, e.g. for a return to the vendor.
    pub events_days: u32,
    /// Days of alert history kept: resolved alerts and incidents, ended silences and
    /// delivered notifications. Firing alerts, open incidents, active silences and mail
    /// not yet delivered are kept whatever their age.
    pub alert_history_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: 7,
            rollup_1m_days: 90,
            partitions_ahead_days: 3,
            energy_hourly_days: 800,
            anomaly_scores_days: 30,
            audit_days: 730,
            events_days: 400,
            alert_history_days: 400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Samples stamped further than this in the future are rejected, in seconds.
    pub max_future_secs: i64,
    /// Most samples (host + GPU + events) accepted in one batch.
    pub max_samples_per_batch: usize,
    /// Ingest requests one agent token (or agent certificate) may make per second, on
    /// average; past it and its burst, 429 with Retry-After. 0: no per-token limit.
    pub token_rate_per_sec: f64,
    /// Requests one token may make at once above its rate (a replay after an outage).
    pub token_burst: u32,
    /// Samples one agent token (or certificate) may send per second, on average (every
    /// item of a batch counts, rejected ones too); past
    /// it and its burst, the batch is 429 with Retry-After and stays in the agent's
    /// spool. An 8-GPU host sends about 2 a second. 0: no limit.
    pub token_samples_per_sec: f64,
    /// Samples one token may store at once above that rate: the replay of a long outage
    /// (a million is three days of an 8-GPU host at 5 s). At least
    /// `max_samples_per_batch`.
    pub token_samples_burst: u32,
    /// Samples one remote-write token may send per second, on average (a Prometheus
    /// forwarding dcgm-exporter for 10,000 GPUs sends about 7,000). Past it and its burst,
    /// 503 with Retry-After, which Prometheus retries from its write-ahead log. 0: no limit.
    pub remote_write_samples_per_sec: f64,
    /// Samples one remote-write token may send at once above that rate (Prometheus catching
    /// up after an outage). At least `max_samples_per_batch`.
    pub remote_write_samples_burst: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_future_secs: 300,
            max_samples_per_batch: 100_000,
            token_rate_per_sec: 5.0,
            token_burst: 100,
            token_samples_per_sec: 200.0,
            token_samples_burst: 1_000_000,
            remote_write_samples_per_sec: 20_000.0,
            remote_write_samples_burst: 36_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Base URL of the Rackwatch server.
    pub server: String,
    /// Agent token from `rackwatch token create --host NAME`.
    pub token: Secret,
    /// Read the token from this file instead (first line).
    pub token_file: String,
    /// Seconds between samples.
    pub interval_secs: u64,
    /// Seconds between shipments; samples collected in between travel in one batch.
    pub ship_interval_secs: u64,
    /// Where batches wait while the server is unreachable. Empty: `data_dir/spool`.
    pub spool_dir: String,
    /// Spool size limit in bytes; the oldest batches are dropped (and counted) past it.
    pub spool_max_bytes: u64,
    /// HTTP timeout of one shipment, in seconds.
    pub request_timeout_secs: u64,
    /// Path of libnvidia-ml.so. Empty: the system default (`libnvidia-ml.so.1`); `off`:
    /// no GPUs are read.
    pub nvml_lib_path: String,
    /// Kernel log read for XIDs NVML does not report: empty = `/dev/kmsg`, `off`, or
    /// the path of a text file the kernel log is written to (tailed from its end).
    pub kernel_log: String,
    /// Identity of this host as shown in the dashboard.
    pub host: HostIdentity,
    /// How the agent checks the server's certificate, and its own certificate.
    pub tls: AgentTls,
}

/// TLS of the agent's connection to an `https://` server.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTls {
    /// PEM file of the CA that signed the server's certificate (a private CA). Set: only
    /// this CA is trusted. Empty: the Mozilla roots built in and the system's store.
    pub ca_file: String,
    /// PEM certificate of this agent, for a server with `server.tls.client_ca_file`.
    pub cert_file: String,
    /// Its PEM private key. Refused when other users may read it.
    pub key_file: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server: "http://127.0.0.1:8080".into(),
            token: Secret::default(),
            token_file: String::new(),
            interval_secs: 5,
            ship_interval_secs: 10,
            spool_dir: String::new(),
            spool_max_bytes: 256 << 20,
            request_timeout_secs: 10,
            nvml_lib_path: String::new(),
            kernel_log: String::new(),
            host: HostIdentity::default(),
            tls: AgentTls::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostIdentity {
    /// Host name; empty means the machine's hostname.
    pub name: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Simulated hosts started by `demo`.
    pub hosts: u32,
    /// GPUs per simulated host.
    pub gpus_per_host: u32,
    /// Minutes of history the simulator back-fills at start so charts have data.
    pub backfill_minutes: u32,
    /// Days of older history, one sample per minute, written at the first start so
    /// forecasts, anomaly models and energy reports have data at once (0: none).
    pub history_days: u32,
    /// Seconds after the demo starts when the failing fan starts to fail (its GPU
    /// throttles within about a minute) and, two minutes later, a GPU falls off the bus.
    pub faults_after_secs: u32,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            hosts: 12,
            gpus_per_host: 8,
            backfill_minutes: 60,
            history_days: 6,
            faults_after_secs: 180,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alert rules and routes (TOML). Empty: no rules (alerting off).
    pub rules_file: String,
    /// Seconds between evaluations of threshold and absence rules. Hardware events are
    /// evaluated as soon as they arrive.
    pub eval_interval_secs: u64,
    /// Seconds a new group of notifications waits for more alerts of the same group
    /// before the first mail (Alertmanager's group_wait, default 30 s there).
    pub group_wait_secs: u64,
    /// Seconds between two mails of the same group about new alerts.
    pub group_interval_secs: u64,
    /// Seconds before a mail about a still-firing alert is repeated.
    pub repeat_interval_secs: u64,
    pub smtp: SmtpConfig,
    /// Notification channels besides email, by name; a route sends to one with
    /// `to = ["webhook:NAME"]`, `"slack:NAME"` or `"pagerduty:NAME"` (the kind must
    /// match the channel's).
    pub channels: std::collections::BTreeMap<String, ChannelConfig>,
}

/// A notification channel: an HTTP receiver of alert notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// `webhook` (Alertmanager's webhook JSON, version 4), `slack` (incoming webhook)
    /// or `pagerduty` (Events API v2).
    pub kind: String,
    /// Where to POST (a secret: Slack's URL is its credential). PagerDuty defaults to
    /// https://events.pagerduty.com/v2/enqueue.
    #[serde(default)]
    pub url: Secret,
    /// PagerDuty: the integration's routing key.
    #[serde(default)]
    pub routing_key: Secret,
    /// Webhook: an `Authorization: Bearer` token sent with every request.
    #[serde(default)]
    pub bearer_token: Secret,
    /// Seconds to wait for the receiver.
    #[serde(default = "channel_timeout")]
    pub timeout_secs: u64,
}

fn channel_timeout() -> u64 {
    10
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

impl ChannelConfig {
    /// The URL to POST to.
    pub fn endpoint(&self) -> &str {
        if self.url.is_empty() && self.kind == "pagerduty" {
            PAGERDUTY_EVENTS_URL
        } else {
            self.url.expose()
        }
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        if !matches!(self.kind.as_str(), "webhook" | "slack" | "pagerduty") {
            return Err(format!(
                "alerting.channels.{name}.kind = {:?}: use webhook, slack or pagerduty",
                self.kind
            ));
        }
        if self.kind != "pagerduty" && self.url.is_empty() {
            return Err(format!(
                "alerting.channels.{name}.url is required for a {} channel",
                self.kind
            ));
        }
        match url::Url::parse(self.endpoint()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(format!(
                    "alerting.channels.{name}.url is not an http(s) URL"
                ))
            }
        }
        if self.kind == "pagerduty" && self.routing_key.is_empty() {
            return Err(format!(
                "alerting.channels.{name}.routing_key is required for PagerDuty (the integration key of an Events API v2 service)"
            ));
        }
        if self.timeout_secs == 0 {
            return Err(format!(
                "alerting.channels.{name}.timeout_secs must be at least 1"
            ));
        }
        Ok(())
    }
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            rules_file: String::new(),
            eval_interval_secs: 5,
            group_wait_secs: 1,
            group_interval_secs: 60,
            repeat_interval_secs: 4 * 3600,
            smtp: SmtpConfig::default(),
            channels: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// SMTP server host name. Empty: mails are not sent (they wait in the outbox).
    pub host: String,
    pub port: u16,
    /// "starttls" (port 587), "tls" (implicit TLS, port 465) or "plain" (no encryption;
    /// only for a relay on the same host or a test server).
    pub security: String,
    pub username: String,
    pub password: Secret,
    /// Sender address, e.g. "Rackwatch <rackwatch@example.com>".
    pub from: String,
    /// Seconds to wait for the SMTP server.
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: String::new(),
            port: 587,
            security: "starttls".into(),
            username: String::new(),
            password: Secret::default(),
            from: "Rackwatch <rackwatch@localhost>".into(),
            timeout_secs: 10,
        }
    }
}

/// Energy accounting and the weekly energy-efficiency report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// IANA time zone of report weeks (ISO weeks start Monday 00:00 there) and of
    /// time-of-use tariff hours, e.g. "Europe/Berlin".
    pub time_zone: String,
    /// GPU minutes whose mean utilization is below this (percent) count as idle.
    pub idle_util_pct: f64,
    /// Sites without their own `[energy.sites.NAME]` section use these values.
    pub default_site: SiteEnergy,
    /// Per-site PUE, grid carbon intensity and tariff, keyed by site name.
    pub sites: BTreeMap<String, SiteEnergy>,
    /// Power model of a host's non-GPU parts (CPUs, memory, fans, disks, NICs) for
    /// hosts that do not measure their own energy (RAPL).
    pub default_host_model: HostPowerModel,
    /// Power models keyed by the host label `model` (e.g. labels = { model = "dgx-h100" }).
    pub host_models: BTreeMap<String, HostPowerModel>,
    pub report: ReportMailConfig,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            time_zone: "UTC".into(),
            idle_util_pct: 5.0,
            default_site: SiteEnergy::default(),
            sites: BTreeMap::new(),
            default_host_model: HostPowerModel::default(),
            host_models: BTreeMap::new(),
            report: ReportMailConfig::default(),
        }
    }
}

/// The anomaly job: per-host models trained on 1-minute rollups, scoring every minute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Run the job (on the job leader).
    pub enabled: bool,
    /// Days of 1-minute rollups a host's model is trained on.
    pub train_days: u32,
    /// Hours after which a host's model is retrained.
    pub retrain_hours: u32,
    /// Hosts with fewer minutes of rollups in the training window get no model (yet).
    pub min_train_minutes: u32,
    /// Most models trained in one run (once a minute); the rest wait for the next runs,
    /// so a first start on a large fleet does not stall the other jobs.
    pub max_trains_per_run: u32,
    /// Contributing metrics stored with every score.
    pub top_k: u32,
    /// Target exceedance probability of the models' peaks-over-threshold alert level.
    pub pot_risk: f64,
    /// Where the models train and score: `auto` (a GPU when the build has GPU support and
    /// a hardware adapter is present, else the CPU, said in one log line), `cpu`, or `gpu`
    /// (a start-up error without one).
    pub backend: BackendChoice,
    /// Only GPU adapters whose name contains this (case-insensitive); empty: any.
    pub adapter: String,
    /// Accept a software adapter (Mesa's lavapipe) as the GPU. It runs the GPU code on the
    /// CPU, slower than the CPU backend: for checking the GPU path where no GPU exists.
    pub software_adapter: bool,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            train_days: 7,
            retrain_hours: 24,
            min_train_minutes: 1440,
            max_trains_per_run: 50,
            top_k: 3,
            pot_risk: 0.05,
            backend: BackendChoice::Auto,
            adapter: String::new(),
            software_adapter: false,
        }
    }
}

/// Scheduled backups made by the job leader (`rackwatch backup` on a schedule).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Directory for the archives; empty: no scheduled backups. Relative to `data_dir`
    /// unless absolute.
    pub dir: PathBuf,
    /// A backup is made when the newest archive in `dir` is this many hours old.
    pub every_hours: u32,
    /// Archives kept; older ones are deleted after a successful backup.
    pub keep: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: PathBuf::new(),
            every_hours: 24,
            keep: 7,
        }
    }
}

impl BackupConfig {
    /// Whether the server makes backups.
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        if self.every_hours == 0 || self.every_hours > 24 * 31 {
            return Err(format!(
                "backup.every_hours = {} must be 1 ..= 744",
                self.every_hours
            ));
        }
        if self.keep == 0 {
            return Err("backup.keep must be at least 1".into());
        }
        Ok(())
    }
}

/// Capacity planning: the hourly capacity job, its recommendations and exhaustion dates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Run the job (on the job leader, hourly).
    pub enabled: bool,
    /// Price of one unserved GPU-hour, in idle GPU-hours. 20 makes the 95th percentile
    /// of demand the best flat capacity.
    pub price: f64,
    /// Days of pool demand the recommender reads.
    pub history_days: u32,
    /// Lead time of the procurement plan (and of the capacity alert), days.
    pub lead_days: u32,
    /// How far ahead exhaustion dates are looked for, days.
    pub horizon_days: u32,
    /// GPUs per host, for whole-host recommendations. 0: each pool's most common host
    /// size in the inventory.
    pub host_size: u32,
    /// A pool whose recommended peak for the week is below this share of its installed
    /// GPUs is listed for consolidation.
    pub consolidate_below: f64,
    /// Power budget per rack in kW, keyed "site/rack" (a host label `rack_power_kw` on any
    /// host of the rack also sets it).
    pub racks: std::collections::BTreeMap<String, f64>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            enabled: true,
            price: 20.0,
            history_days: 28,
            lead_days: 7,
            horizon_days: 90,
            host_size: 0,
            consolidate_below: 0.7,
            racks: Default::default(),
        }
    }
}

impl CapacityConfig {
    fn validate(&self) -> Result<(), String> {
        if !(self.price.is_finite() && self.price > 0.0) {
            return Err(format!(
                "capacity.price = {} must be a positive number (idle GPU-hours per unserved GPU-hour)",
                self.price
            ));
        }
        if !(1..=90).contains(&self.history_days) {
            return Err(format!(
                "capacity.history_days = {} must be 1 ..= 90",
                self.history_days
            ));
        }
        if self.lead_days >= self.history_days {
            return Err(format!(
                "capacity.lead_days = {} is not shorter than capacity.history_days = {}: a plan cannot look further ahead than the history it learns from",
                self.lead_days, self.history_days
            ));
        }
        if !(1..=365).contains(&self.horizon_days) {
            return Err(format!(
                "capacity.horizon_days = {} must be 1 ..= 365",
                self.horizon_days
            ));
        }
        if !(self.consolidate_below > 0.0 && self.consolidate_below <= 1.0) {
            return Err(format!(
                "capacity.consolidate_below = {} must be above 0 and at most 1",
                self.consolidate_below
            ));
        }
        for (rack, kw) in &self.racks {
            if !rack.contains('/') {
                return Err(format!(
                    "capacity.racks: key {rack:?} must be \"site/rack\""
                ));
            }
            if !(kw.is_finite() && *kw > 0.0) {
                return Err(format!(
                    "capacity.racks.\"{rack}\" = {kw}: a power budget must be a positive number of kW"
                ));
            }
        }
        Ok(())
    }
}

/// Facility figures of one site.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteEnergy {
    /// Power usage effectiveness: facility energy / IT energy. Used when the site sends
    /// no facility meter readings.
    pub pue: f64,
    /// Grid carbon intensity in g CO2e per kWh, for hours without an imported value.
    pub carbon_g_per_kwh: f64,
    /// Flat tariff per kWh, for hours no time-of-use period covers.
    pub price_per_kwh: f64,
    /// Currency of prices (ISO 4217 code), printed in reports.
    pub currency: String,
    /// Time-of-use periods; the first that matches an hour sets its price.
    pub time_of_use: Vec<TouPeriod>,
}

impl Default for SiteEnergy {
    fn default() -> Self {
        SiteEnergy {
            pue: 1.4,
            carbon_g_per_kwh: 400.0,
            price_per_kwh: 0.15,
            currency: "USD".into(),
            time_of_use: Vec::new(),
        }
    }
}

/// A tariff period in local time: `days` (mon … sun; empty = every day) and hours
/// `[start_hour, end_hour)` (0–24).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TouPeriod {
    #[serde(default)]
    pub days: Vec<String>,
    pub start_hour: u32,
    pub end_hour: u32,
    pub price_per_kwh: f64,
}

/// Idle and full-load power of a host's non-GPU parts, in watts; power in between
/// follows CPU utilization linearly.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostPowerModel {
    pub idle_watts: f64,
    pub max_watts: f64,
}

impl Default for HostPowerModel {
    fn default() -> Self {
        HostPowerModel {
            idle_watts: 250.0,
            max_watts: 800.0,
        }
    }
}

/// The scheduled weekly report mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportMailConfig {
    /// Addresses that receive the weekly report. Empty: no mail.
    pub recipients: Vec<String>,
    /// Local weekday (mon … sun) and hour (0–23) after which last week's report is sent.
    pub send_weekday: String,
    pub send_hour: u32,
}

impl Default for ReportMailConfig {
    fn default() -> Self {
        ReportMailConfig {
            recipients: Vec::new(),
            send_weekday: "mon".into(),
            send_hour: 6,
        }
    }
}

/// Weekday from its three-letter English name (mon … sun), case-insensitive.
pub fn parse_weekday(s: &str) -> Option<chrono::Weekday> {
    use chrono::Weekday::*;
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Mon,
        "tue" => Tue,
        "wed" => Wed,
        "thu" => Thu,
        "fri" => Fri,
        "sat" => Sat,
        "sun" => Sun,
        _ => return None,
    })
}

impl EnergyConfig {
    /// The configured time zone.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Figures of `site` (its own section, else the defaults).
    pub fn site(&self, site: &str) -> &SiteEnergy {
        self.sites.get(site).unwrap_or(&self.default_site)
    }

    fn validate(&self) -> Result<(), String> {
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!(
                "energy.time_zone = {:?} is not an IANA time zone such as \"Europe/Berlin\"",
                self.time_zone
            ));
        }
        if !(0.0..=100.0).contains(&self.idle_util_pct) {
            return Err("energy.idle_util_pct must be between 0 and 100".into());
        }
        let sites = std::iter::once(("default_site".to_string(), &self.default_site))
            .chain(self.sites.iter().map(|(k, v)| (format!("sites.{k}"), v)));
        for (name, s) in sites {
            if !(1.0..=5.0).contains(&s.pue) {
                return Err(format!(
                    "energy.{name}.pue = {} must be between 1.0 and 5.0",
                    s.pue
                ));
            }
            if !(0.0..=5000.0).contains(&s.carbon_g_per_kwh) {
                return Err(format!(
                    "energy.{name}.carbon_g_per_kwh = {} must be between 0 and 5000",
                    s.carbon_g_per_kwh
                ));
            }
            if s.price_per_kwh < 0.0 || !s.price_per_kwh.is_finite() {
                return Err(format!("energy.{name}.price_per_kwh must not be negative"));
            }
            for (i, p) in s.time_of_use.iter().enumerate() {
                let at = format!("energy.{name}.time_of_use[{i}]");
                if p.start_hour >= p.end_hour || p.end_hour > 24 {
                    return Err(format!(
                        "{at}: start_hour {} .. end_hour {} must satisfy 0 <= start < end <= 24",
                        p.start_hour, p.end_hour
                    ));
                }
                if let Some(d) = p.days.iter().find(|d| parse_weekday(d).is_none()) {
                    return Err(format!("{at}: unknown day {d:?}; use mon, tue, … sun"));
                }
                if p.price_per_kwh < 0.0 || !p.price_per_kwh.is_finite() {
                    return Err(format!("{at}: price_per_kwh must not be negative"));
                }
            }
        }
        let models = std::iter::once(("default_host_model".to_string(), &self.default_host_model))
            .chain(
                self.host_models
                    .iter()
                    .map(|(k, v)| (format!("host_models.{k}"), v)),
            );
        for (name, m) in models {
            // NaN compares false everywhere: refuse it by name, not by a comparison.
            if !(m.idle_watts.is_finite() && m.max_watts.is_finite())
                || m.idle_watts < 0.0
                || m.max_watts < m.idle_watts
                || m.max_watts > 100_000.0
            {
                return Err(format!(
                    "energy.{name}: need 0 <= idle_watts ({}) <= max_watts ({}) <= 100000",
                    m.idle_watts, m.max_watts
                ));
            }
        }
        if parse_weekday(&self.report.send_weekday).is_none() {
            return Err(format!(
                "energy.report.send_weekday = {:?}: use mon, tue, … sun",
                self.report.send_weekday
            ));
        }
        if self.report.send_hour > 23 {
            return Err("energy.report.send_hour must be between 0 and 23".into());
        }
        if let Some(r) = self
            .report
            .recipients
            .iter()
            .find(|r| r.parse::<lettre::message::Mailbox>().is_err())
        {
            return Err(format!(
                "energy.report.recipients: {r:?} is not an e-mail address"
            ));
        }
        Ok(())
    }
}

/// What went wrong reading the configuration, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Load defaults, then `path` if given, then `RACKWATCH_*` variables from the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment passed in (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root = toml::Table::new();
        let mut file_text = None;
        let origin = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_owned(),
                    error,
                })?;
                file_text = Some(text.clone());
                root = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: p.to_owned(),
                        message: e.to_string(),
                    })?;
                p.display().to_string()
            }
            None => "defaults".to_string(),
        };
        // A secret (`SECRET_FILE_KEYS`, all strings) and a `…_FILE` variable naming a
        // secret's file join the file's values, so a secret and its file are checked
        // together whichever way each was given; the other overrides are typed by their
        // field when the configuration is deserialized.
        let mut overrides = Vec::new();
        let mut env_used = false;
        let mut env_secrets: std::collections::HashSet<String> = Default::default();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("RACKWATCH_") else {
                continue;
            };
            // Not configuration: the test suite's own, the log filter, and the package
            // check's switch (`RACKWATCH_DEB_INSTALL=0 ./scripts/test`).
            if rest.is_empty() || rest.starts_with("TEST_") || matches!(rest, "LOG" | "DEB_INSTALL")
            {
                continue;
            }
            env_used = true;
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            let key = keys.join(".");
            if key.ends_with("_file") || SECRET_FILE_KEYS.contains(&key.as_str()) {
                // The environment comes after the file: a secret it sets replaces the
                // file's way of giving it (`url` replaces the file's `url_file`, and the
                // other way round); both from the environment stay a conflict.
                let twin = match key.strip_suffix("_file") {
                    Some(base) if SECRET_FILE_KEYS.contains(&base) => Some(base.to_string()),
                    Some(_) => None,
                    None => Some(format!("{key}_file")),
                };
                if let Some(twin) = twin.filter(|t| !env_secrets.contains(t)) {
                    let parts: Vec<&str> = twin.split('.').collect();
                    if let Some((last, parents)) = parts.split_last() {
                        if let Some(section) = section_mut(&mut root, parents) {
                            section.remove(*last);
                        }
                    }
                }
                env_secrets.insert(key.clone());
                set_path(&mut root, &keys, toml::Value::String(value))
                    .map_err(|message| ConfigError::Env { var, message })?;
            } else {
                overrides.push((var, keys, value));
            }
        }
        let origin = if env_used {
            format!("{origin} + RACKWATCH_* environment")
        } else {
            origin
        };
        secrets_from_files(&mut root).map_err(|message| ConfigError::Invalid {
            origin: origin.clone(),
            message,
        })?;
        // Which variable set which key, to name it when the key is unknown.
        let set_by: Vec<(String, String)> = overrides
            .iter()
            .map(|(var, keys, _)| (var.clone(), keys.last().cloned().unwrap_or_default()))
            .collect();
        let mut tree = env::Node::from_file(root);
        for (var, keys, value) in overrides {
            tree.set(&keys, &var, &value)
                .map_err(|message| ConfigError::Env { var, message })?;
        }
        let cfg = Config::deserialize(tree).map_err(|e: toml::de::Error| {
            // A mistake in the file is reported from the file's own text, which knows the
            // line and column (the merged tree does not). The file read alone fails on the
            // same mistake, unless it came from the environment or a secret's file (or the
            // file names a secret's file, a key only the merge understands).
            let message = file_text
                .as_deref()
                .and_then(|t| toml::from_str::<Config>(t).err())
                .filter(|fe| fe.message() == e.message())
                .map_or_else(|| e.to_string(), |fe| fe.to_string());
            // An unknown key that came from the environment: say which variable.
            let message = match set_by
                .iter()
                .find(|(_, k)| e.message().starts_with(&format!("unknown field `{k}`")))
            {
                Some((var, _)) => format!("{var}: {message}"),
                None => message,
            };
            ConfigError::Invalid {
                origin: origin.clone(),
                message,
            }
        })?;
        cfg.validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.capacity.validate()?;
        self.backup.validate()?;
        if !self.server.public_url.is_empty() {
            check_base_url("server.public_url", &self.server.public_url)?;
        }
        let a = &self.agent;
        for (key, v, max) in [
            // A sample each minute at least: rollups, energy accounting (each sampled
            // minute counts whole) and alert windows are minute by minute.
            ("agent.interval_secs", a.interval_secs, 60),
            ("agent.ship_interval_secs", a.ship_interval_secs, 3600),
            ("agent.request_timeout_secs", a.request_timeout_secs, 600),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("{key} = {v}: must be from 1 to {max} seconds"));
            }
        }
        if a.spool_max_bytes < 1 << 20 {
            return Err(format!(
                "agent.spool_max_bytes = {}: must be at least 1 MiB (1048576), or the spool cannot keep an outage's batches",
                a.spool_max_bytes
            ));
        }
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be at least 1".into());
        }
        if self.database.distributed && self.database.url.is_empty() {
            return Err("database.distributed = true needs database.url: the managed Postgres is a single node; point database.url at a Citus coordinator (scripts/citus starts one)".into());
        }
        let r = &self.retention;
        for (key, days) in [
            ("raw_days", r.raw_days),
            ("rollup_1m_days", r.rollup_1m_days),
            ("energy_hourly_days", r.energy_hourly_days),
            ("anomaly_scores_days", r.anomaly_scores_days),
            ("audit_days", r.audit_days),
            ("events_days", r.events_days),
            ("alert_history_days", r.alert_history_days),
        ] {
            if days == 0 {
                return Err(format!("retention.{key} must be at least 1"));
            }
            // Past a century is a typo, and dates that far back do not exist.
            if days > 36_500 {
                return Err(format!(
                    "retention.{key} = {days} days is over 100 years: a typo?"
                ));
            }
        }
        if r.rollup_1m_days < r.raw_days {
            return Err(format!(
                "retention.rollup_1m_days = {} must be at least retention.raw_days = {}: the rollups are the longer history",
                r.rollup_1m_days, r.raw_days
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err("server.max_body_bytes must be at least 1024".into());
        }
        // A compressed body inflates to more than it is: a cap under the body limit would
        // refuse agents' gzip batches for good (the agent drops a 413).
        if self.server.max_decompressed_bytes < self.server.max_body_bytes {
            return Err(format!(
                "server.max_decompressed_bytes ({}) must be at least server.max_body_bytes ({}): it is in bytes",
                self.server.max_decompressed_bytes, self.server.max_body_bytes
            ));
        }
        if self.server.inflate_budget_bytes < self.server.max_decompressed_bytes {
            return Err(format!(
                "server.inflate_budget_bytes ({}) must be at least server.max_decompressed_bytes ({})",
                self.server.inflate_budget_bytes, self.server.max_decompressed_bytes
            ));
        }
        for c in &self.server.per_client_exempt {
            Cidr::parse(c).map_err(|e| format!("server.per_client_exempt: {e}"))?;
        }
        for c in &self.server.trusted_proxies {
            Cidr::parse(c).map_err(|e| format!("server.trusted_proxies: {e}"))?;
        }
        for (key, v) in [
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.max_connections_per_client",
                self.server.max_connections_per_client as u64,
            ),
            ("server.write_timeout_secs", self.server.write_timeout_secs),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
            (
                "server.ingest_concurrency",
                self.server.ingest_concurrency as u64,
            ),
            ("server.password_checks", self.server.password_checks as u64),
            (
                "server.fleet_metrics_stale_secs",
                self.server.fleet_metrics_stale_secs,
            ),
            (
                "server.session_idle_secs",
                self.server.session_idle_secs.max(0) as u64,
            ),
        ] {
            if v == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        // Seconds that become time arithmetic: past ten years they overflow a date.
        for (key, v) in [
            (
                "server.session_ttl_secs",
                self.server.session_ttl_secs.max(0) as u64,
            ),
            (
                "server.session_idle_secs",
                self.server.session_idle_secs.max(0) as u64,
            ),
            (
                "server.fleet_metrics_stale_secs",
                self.server.fleet_metrics_stale_secs,
            ),
        ] {
            if v > 10 * 365 * 86_400 {
                return Err(format!("{key} = {v} is over ten years: a typo?"));
            }
        }
        self.validate_tls()?;
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "server.listen = {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if !matches!(
            self.alerting.smtp.security.as_str(),
            "starttls" | "tls" | "plain"
        ) {
            return Err(format!(
                "alerting.smtp.security = {:?}: use starttls, tls or plain",
                self.alerting.smtp.security
            ));
        }
        if self.alerting.eval_interval_secs == 0 {
            return Err("alerting.eval_interval_secs must be at least 1".into());
        }
        // Durations that become time arithmetic: zero would mail every cycle, and a value
        // past a few years overflows the date it is added to.
        const YEAR: u64 = 365 * 86_400;
        let al = &self.alerting;
        for (key, v, min, max) in [
            ("alerting.group_wait_secs", al.group_wait_secs, 0, 3600),
            (
                "alerting.group_interval_secs",
                al.group_interval_secs,
                0,
                86_400,
            ),
            (
                "alerting.repeat_interval_secs",
                al.repeat_interval_secs,
                60,
                YEAR,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return Err(format!("{key} = {v}: must be from {min} to {max} seconds"));
            }
        }
        if !(0..=86_400).contains(&self.ingest.max_future_secs) {
            return Err(format!(
                "ingest.max_future_secs = {}: must be from 0 to 86400 seconds (the clock skew tolerated)",
                self.ingest.max_future_secs
            ));
        }
        if self.ingest.max_samples_per_batch == 0 {
            return Err("ingest.max_samples_per_batch must be at least 1".into());
        }
        if !(60..=366 * 86_400).contains(&self.server.session_ttl_secs) {
            return Err(format!(
                "server.session_ttl_secs = {}: must be from 60 seconds to 366 days",
                self.server.session_ttl_secs
            ));
        }
        if !al.smtp.host.is_empty() {
            if al.smtp.port == 0 {
                return Err("alerting.smtp.port must be from 1 to 65535".into());
            }
            if al.smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!(
                    "alerting.smtp.from = {:?} is not an email address (alerts@example.com, or \"Rackwatch <alerts@example.com>\")",
                    al.smtp.from
                ));
            }
        }
        for (name, c) in &self.alerting.channels {
            c.validate(name)?;
        }
        let a = &self.anomaly;
        if a.train_days == 0 || a.train_days > self.retention.rollup_1m_days {
            return Err(format!(
                "anomaly.train_days = {} must be between 1 and retention.rollup_1m_days ({})",
                a.train_days, self.retention.rollup_1m_days
            ));
        }
        // Training leaves out the minutes scored anomalous: scores kept for less than the
        // training window would let old faults back in as normal.
        if a.enabled && a.train_days > self.retention.anomaly_scores_days {
            return Err(format!(
                "anomaly.train_days = {} must not exceed retention.anomaly_scores_days ({}): training leaves out the minutes scored anomalous, and needs their scores",
                a.train_days, self.retention.anomaly_scores_days
            ));
        }
        if a.retrain_hours == 0 {
            return Err("anomaly.retrain_hours must be at least 1".into());
        }
        let train_minutes = u64::from(a.train_days) * 1440;
        if a.min_train_minutes < 60 || u64::from(a.min_train_minutes) > train_minutes {
            return Err(format!(
                "anomaly.min_train_minutes = {} must be between 60 and train_days × 1440 ({train_minutes})",
                a.min_train_minutes,
            ));
        }
        if a.max_trains_per_run == 0 {
            return Err("anomaly.max_trains_per_run must be at least 1".into());
        }
        if a.top_k == 0 || a.top_k > 16 {
            return Err("anomaly.top_k must be between 1 and 16".into());
        }
        if !(a.pot_risk > 0.0 && a.pot_risk < 0.5) {
            return Err(format!(
                "anomaly.pot_risk = {} must be above 0 and below 0.5",
                a.pot_risk
            ));
        }
        if self.simulator.gpus_per_host > 64 {
            return Err("simulator.gpus_per_host must be at most 64".into());
        }
        self.energy.validate()?;
        Ok(())
    }

    /// What `demo` needs on top of [`Config::validate`]: the simulated history fits in the
    /// raw retention (`serve` does not read the simulator's keys).
    pub fn validate_demo(&self) -> Result<(), String> {
        if self.simulator.history_days >= self.retention.raw_days {
            return Err(format!(
                "simulator.history_days = {} must be below retention.raw_days = {} (older \
                 samples would be dropped at once)",
                self.simulator.history_days, self.retention.raw_days
            ));
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), String> {
        let t = &self.server.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return Err("server.tls.cert_file and server.tls.key_file go together: set both (HTTPS) or neither (plain HTTP)".into());
        }
        if !t.client_ca_file.is_empty() && !t.enabled() {
            return Err("server.tls.client_ca_file needs server.tls.cert_file and key_file: client certificates are part of TLS".into());
        }
        if t.reload_secs == 0 {
            return Err("server.tls.reload_secs must be at least 1".into());
        }
        let a = &self.agent.tls;
        if a.cert_file.is_empty() != a.key_file.is_empty() {
            return Err("agent.tls.cert_file and agent.tls.key_file go together".into());
        }
        let p = &self.server.auth_proxy;
        if p.enabled {
            if p.header.trim().is_empty()
                || axum::http::HeaderName::from_bytes(p.header.as_bytes()).is_err()
            {
                return Err(format!(
                    "server.auth_proxy.header = {:?} is not a header name",
                    p.header
                ));
            }
            if !p.groups_header.is_empty()
                && axum::http::HeaderName::from_bytes(p.groups_header.as_bytes()).is_err()
            {
                return Err(format!(
                    "server.auth_proxy.groups_header = {:?} is not a header name",
                    p.groups_header
                ));
            }
            if p.trusted.is_empty() {
                return Err("server.auth_proxy.trusted is empty: name the proxies' addresses (anyone else could send the header)".into());
            }
            for c in &p.trusted {
                Cidr::parse(c).map_err(|e| format!("server.auth_proxy.trusted: {e}"))?;
            }
            if !matches!(p.default_role.as_str(), "viewer" | "none") {
                return Err(format!(
                    "server.auth_proxy.default_role = {:?}: use viewer or none",
                    p.default_role
                ));
            }
        }
        let i = &self.ingest;
        if !(i.token_rate_per_sec.is_finite() && i.token_rate_per_sec >= 0.0) {
            return Err("ingest.token_rate_per_sec must be 0 (no limit) or more".into());
        }
        if i.token_rate_per_sec > 0.0 && i.token_burst == 0 {
            return Err("ingest.token_burst must be at least 1".into());
        }
        for (name, rate, burst) in [
            (
                "token_samples",
                i.token_samples_per_sec,
                i.token_samples_burst,
            ),
            (
                "remote_write_samples",
                i.remote_write_samples_per_sec,
                i.remote_write_samples_burst,
            ),
        ] {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(format!(
                    "ingest.{name}_per_sec must be 0 (no limit) or more"
                ));
            }
            if rate > 0.0 && (burst as usize) < i.max_samples_per_batch {
                return Err(format!(
                    "ingest.{name}_burst ({burst}) must be at least ingest.max_samples_per_batch ({}): a full batch could never be stored",
                    i.max_samples_per_batch
                ));
            }
        }
        Ok(())
    }

    /// The agent's spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        if self.agent.spool_dir.is_empty() {
            self.data_dir.join("spool")
        } else {
            PathBuf::from(&self.agent.spool_dir)
        }
    }

    /// Base URL printed for operators.
    pub fn public_url(&self) -> String {
        if !self.server.public_url.is_empty() {
            return self.server.public_url.trim_end_matches('/').to_string();
        }
        let listen = self.server.listen.replace("0.0.0.0", "127.0.0.1");
        let scheme = if self.server.tls.enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{listen}")
    }
}

/// Secrets that may be read from a file: `KEY_file = "/path"` (or
/// `RACKWATCH_…__KEY_FILE`) instead of `KEY`. `agent.token_file` is read by the agent
/// itself (see `app::agent_token`), with the same checks.
pub const SECRET_FILE_KEYS: &[&str] = &[
    "database.url",
    "alerting.smtp.password",
    "server.metrics_token",
];

/// Replace each `KEY_file` of [`SECRET_FILE_KEYS`] by `KEY` holding the file's content,
/// and `database.password_file` by that password set in `database.url`.
fn secrets_from_files(root: &mut toml::Table) -> Result<(), String> {
    for key in SECRET_FILE_KEYS {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, parents) = parts.split_last().expect("dotted key");
        let Some(section) = section_mut(root, parents) else {
            continue;
        };
        let file_key = format!("{last}_file");
        let Some(path) = section.remove(&file_key) else {
            continue;
        };
        let path = path
            .as_str()
            .ok_or_else(|| format!("{key}_file must be a path (a string)"))?
            .to_string();
        if section
            .get(*last)
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty())
        {
            return Err(format!(
                "{key} and {key}_file are both set: keep one (the file is for keeping the secret out of the config)"
            ));
        }
        let secret = read_secret_file(Path::new(&path), &format!("{key}_file"))?;
        section.insert(last.to_string(), toml::Value::String(secret));
    }
    if let Some(db) = section_mut(root, &["database"]) {
        if let Some(path) = db.remove("password_file") {
            let path = path
                .as_str()
                .ok_or("database.password_file must be a path (a string)")?
                .to_string();
            let password = read_secret_file(Path::new(&path), "database.password_file")?;
            let url = db.get("url").and_then(|v| v.as_str()).unwrap_or("");
            if url.is_empty() {
                return Err(
                    "database.password_file is set but database.url is not: the password goes into that URL".into(),
                );
            }
            let url = url_with_password(url, &password)
                .map_err(|e| format!("database.url (with database.password_file): {e}"))?;
            db.insert("url".into(), toml::Value::String(url));
        }
    }
    Ok(())
}

fn section_mut<'a>(root: &'a mut toml::Table, keys: &[&str]) -> Option<&'a mut toml::Table> {
    let mut cur = root;
    for k in keys {
        cur = cur.get_mut(*k)?.as_table_mut()?;
    }
    Some(cur)
}

/// Read a secret from `path` (named by config key `key` in errors): its first line,
/// without the line end. Refused when others (not the owner or group) may read it, or
/// when it is empty.
pub fn read_secret_file(path: &Path, key: &str) -> Result<String, String> {
    check_private_file(path, key)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{key} = {}: cannot read it: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        let why = if text.trim().is_empty() {
            "the file is empty"
        } else {
            "the first line is blank (the secret must be on the first line)"
        };
        return Err(format!("{key} = {}: {why}", path.display()));
    }
    Ok(line.to_string())
}

/// A base URL setting (`agent.server`, `server.public_url`): http or https with a host, no
/// query or fragment, e.g. `https://rackwatch.example`.
pub fn check_base_url(key: &str, value: &str) -> Result<(), String> {
    let parsed = url::Url::parse(value).map_err(|e| {
        format!("{key} = {value:?}: not a URL ({e}); use e.g. https://rackwatch.example")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{key} = {value:?}: the scheme must be http or https, not {:?}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{key} = {value:?}: names no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{key} = {value:?}: a base URL takes no query or fragment"
        ));
    }
    Ok(())
}

/// What tells a changed file (a renewed certificate or key): modification time, size
/// and inode (a rename over it); None when it cannot be read.
pub type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The [`FileStamp`] of `p`.
pub fn file_stamp(p: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Refuse a secret's file (named by config key `key` in errors) that is missing, not a
/// file, or that others (not the owner or group) may access.
pub fn check_private_file(path: &Path, key: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{key} = {}: cannot read it: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{key} = {}: not a file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "{key} = {}: other users may access it (mode {:o}); it holds a secret: chmod o-rwx (e.g. 600 or 640)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// `url` with its password set to `password` (percent-encoded).
fn url_with_password(url: &str, password: &str) -> Result<String, String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if u.username().is_empty() {
        return Err("it names no user to go with the password".into());
    }
    let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    u.set_password(Some(&encoded))
        .map_err(|_| "it cannot carry a password".to_string())?;
    Ok(u.to_string())
}

/// Set `keys` (sections, then a field) in `table` to `value`, adding sections as needed.
fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_replaces_a_secret_the_file_gives_the_other_way() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("url");
        std::fs::write(&secret, "postgres://file:pw@db.example/rw\n").unwrap();
        let path = dir.path().join("rackwatch.toml");
        std::fs::write(
            &path,
            format!(
                "[database]\nurl_file = {:?}\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let var = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let cfg = Config::load_with_env(
            Some(&path),
            var("RACKWATCH_DATABASE__URL", "postgres://env:pw@db.example/rw"),
        )
        .unwrap();
        assert_eq!(cfg.database.url.expose(), "postgres://env:pw@db.example/rw");
        // And a file's password by the environment's file.
        std::fs::write(
            &path,
            "[alerting.smtp]\nhost = \"mail.example\"\npassword = \"in-file\"\n",
        )
        .unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-env-file\n").unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let cfg = Config::load_with_env(
            Some(&path),
            var(
                "RACKWATCH_ALERTING__SMTP__PASSWORD_FILE",
                pw.to_str().unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(cfg.alerting.smtp.password.expose(), "from-env-file");
        // Both from the environment: still one too many.
        let both = vec![
            (
                "RACKWATCH_ALERTING__SMTP__PASSWORD".to_string(),
                "x".to_string(),
            ),
            (
                "RACKWATCH_ALERTING__SMTP__PASSWORD_FILE".to_string(),
                pw.to_str().unwrap().to_string(),
            ),
        ];
        let err = Config::load_with_env(Some(&path), both)
            .unwrap_err()
            .to_string();
        assert!(err.contains("are both set"), "{err}");
    }

    #[test]
    fn a_table_can_be_given_as_an_inline_toml_table() {
        let env = vec![(
            "RACKWATCH_AGENT__HOST__LABELS".to_string(),
            r#"{ team = "ml", tier = "gold" }"#.to_string(),
        )];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert_eq!(cfg.agent.host.labels["team"], "ml");
        assert_eq!(cfg.agent.host.labels.len(), 2);
    }

    #[test]
    fn an_env_override_reaches_a_map_key_the_file_spells_in_capitals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rackwatch.toml");
        std::fs::write(&path, "[energy.sites.FRA1]\npue = 1.2\n").unwrap();
        let env = vec![(
            "RACKWATCH_ENERGY__SITES__FRA1__PUE".to_string(),
            "1.1".to_string(),
        )];
        let cfg = Config::load_with_env(Some(&path), env).unwrap();
        assert_eq!(cfg.energy.sites["FRA1"].pue, 1.1);
        assert!(!cfg.energy.sites.contains_key("fra1"));
    }

    #[test]
    fn env_overrides_nested_keys() {
        let env = vec![
            (
                "RACKWATCH_DATABASE__URL".to_string(),
                "postgres://x@y/z".to_string(),
            ),
            (
                "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
                "2".to_string(),
            ),
            ("RACKWATCH_DATA_DIR".to_string(), "/tmp/rw".to_string()),
            ("OTHER".to_string(), "1".to_string()),
        ];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert_eq!(cfg.database.url.expose(), "postgres://x@y/z");
        assert_eq!(cfg.agent.interval_secs, 2);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/rw"));
        assert_eq!(format!("{:?}", cfg.database.url), "\"[redacted]\"");
    }

    #[test]
    fn a_short_raw_retention_is_for_serve_and_refused_only_by_the_demo() {
        let cfg = Config::load_with_env(
            None,
            vec![("RACKWATCH_RETENTION__RAW_DAYS".to_string(), "3".to_string())],
        )
        .unwrap();
        assert_eq!(cfg.retention.raw_days, 3);
        let e = cfg.validate_demo().unwrap_err();
        assert!(
            e.contains("simulator.history_days = 6 must be below retention.raw_days = 3"),
            "{e}"
        );
        assert!(Config::default().validate_demo().is_ok());
    }

    #[test]
    fn env_overrides_take_the_type_of_their_key() {
        let env = |pairs: &[(&str, &str)]| {
            Config::load_with_env(
                None,
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        // Digits for string fields stay strings: a password, a token, a site name.
        let cfg = env(&[
            ("RACKWATCH_ALERTING__SMTP__PASSWORD", "123456"),
            ("RACKWATCH_AGENT__TOKEN", "0042"),
            ("RACKWATCH_AGENT__HOST__SITE", "7"),
            // Numbers, a float written without a point, and a flag.
            ("RACKWATCH_ALERTING__SMTP__PORT", "2525"),
            ("RACKWATCH_ANOMALY__POT_RISK", "0.01"),
            ("RACKWATCH_ENERGY__DEFAULT_SITE__PUE", "2"),
            ("RACKWATCH_SERVER__SECURE_COOKIES", "true"),
        ])
        .unwrap();
        assert_eq!(cfg.alerting.smtp.password.expose(), "123456");
        assert_eq!(cfg.agent.token.expose(), "0042");
        assert_eq!(cfg.agent.host.site, "7");
        assert_eq!(cfg.alerting.smtp.port, 2525);
        assert_eq!(cfg.anomaly.pot_risk, 0.01);
        assert_eq!(cfg.energy.default_site.pue, 2.0);
        assert!(cfg.server.secure_cookies);
        // Lists: items separated by commas, or a TOML array.
        let cfg = env(&[
            (
                "RACKWATCH_ENERGY__REPORT__RECIPIENTS",
                "energy@example.com, ops@example.com",
            ),
            (
                "RACKWATCH_SERVER__PER_CLIENT_EXEMPT",
                r#"["10.0.0.5", "10.1.0.0/24"]"#,
            ),
        ])
        .unwrap();
        assert_eq!(
            cfg.energy.report.recipients,
            ["energy@example.com", "ops@example.com"]
        );
        assert_eq!(cfg.server.per_client_exempt, ["10.0.0.5", "10.1.0.0/24"]);
        let err = env(&[("RACKWATCH_SERVER__PER_CLIENT_EXEMPT", "[\"10.0.0.5\"")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "RACKWATCH_SERVER__PER_CLIENT_EXEMPT (server.per_client_exempt): not a TOML array"
            ),
            "{err}"
        );
        // Text where a number belongs names the variable.
        let err = env(&[("RACKWATCH_ALERTING__SMTP__PORT", "smtp")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RACKWATCH_ALERTING__SMTP__PORT"), "{err}");
        assert!(err.contains("\"smtp\""), "{err}");
        assert!(err.contains("(alerting.smtp.port)"), "{err}");
        // An override inside a section the file sets keeps the file's other keys.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[alerting.smtp]\nhost = \"mail\"\nport = 465\n").unwrap();
        let cfg = Config::load_with_env(
            Some(&p),
            vec![(
                "RACKWATCH_ALERTING__SMTP__PASSWORD".to_string(),
                "987".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(
            (cfg.alerting.smtp.host.as_str(), cfg.alerting.smtp.port),
            ("mail", 465)
        );
        assert_eq!(cfg.alerting.smtp.password.expose(), "987");
        // A key below a value that is not a section is refused.
        let err = env(&[("RACKWATCH_DATA_DIR", "/x"), ("RACKWATCH_DATA_DIR__X", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`data_dir` is not a section"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[agent]\ninterval_sec = 5\n").unwrap();
        let err = Config::load_with_env(Some(&p), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval_sec"), "{err}");
        assert!(err.contains("c.toml"), "{err}");
        // Where: the line and column of the mistake in the file.
        assert!(err.contains("line 2, column 1"), "{err}");
        // A wrong type in a file that the environment also overrides is still placed in
        // the file; a mistake only the environment makes names its variable.
        std::fs::write(&p, "[capacity]\nlead_days = -3\n").unwrap();
        let env = vec![(
            "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
            "2".to_string(),
        )];
        let err = Config::load_with_env(Some(&p), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 13"), "{err}");
        std::fs::write(&p, "[capacity]\nlead_days = 3\n").unwrap();
        let env = vec![(
            "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
            "x".to_string(),
        )];
        let err = Config::load_with_env(Some(&p), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RACKWATCH_AGENT__INTERVAL_SECS"), "{err}");
        // A file that keeps a secret in a file of its own is placed too.
        let secret = dir.path().join("smtp-password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(
            &p,
            format!(
                "[alerting.smtp]\npassword_file = {:?}\nport = \"smtp\"\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let err = Config::load_with_env(Some(&p), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"smtp\""), "{err}");
    }

    #[test]
    fn invalid_value_is_explained() {
        let env = vec![(
            "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
            "0".to_string(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("agent.interval_secs"), "{err}");
        // Over a minute, minutes go unsampled: the energy of each would be lost.
        let env = vec![(
            "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
            "120".to_string(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(
            err.contains("agent.interval_secs = 120: must be from 1 to 60 seconds"),
            "{err}"
        );
    }

    #[test]
    fn agent_settings_that_would_stop_it_shipping_are_refused() {
        // Each of these starts an agent that collects nothing for years, can never finish
        // a request, overflows an Instant, or keeps no batch through an outage.
        for (var, v, says) in [
            (
                "INTERVAL_SECS",
                "9223372036854775807",
                "from 1 to 60 seconds",
            ),
            ("SHIP_INTERVAL_SECS", "86400", "from 1 to 3600 seconds"),
            ("REQUEST_TIMEOUT_SECS", "0", "from 1 to 600 seconds"),
            ("SPOOL_MAX_BYTES", "0", "at least 1 MiB"),
        ] {
            let env = vec![(format!("RACKWATCH_AGENT__{var}"), v.to_string())];
            let err = Config::load_with_env(None, env).unwrap_err().to_string();
            let key = format!("agent.{} = {v}", var.to_lowercase());
            assert!(err.contains(&key) && err.contains(says), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_from_the_environment_names_its_variable() {
        let env = vec![(
            "RACKWATCH_SERVER__LISTN".to_string(),
            "0.0.0.0:80".to_string(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(
            err.contains("RACKWATCH_SERVER__LISTN: unknown field `listn`"),
            "{err}"
        );
    }

    #[test]
    fn server_settings_that_break_alerting_ingest_or_logins_are_refused() {
        // Each of these was accepted: a reminder every cycle, an interval that panics the
        // alert sender, every sample "in the future", every batch refused, every login
        // expired at once, mail that can never be sent, an idle power of NaN.
        for (var, v, says) in [
            (
                "ALERTING__GROUP_INTERVAL_SECS",
                "9999999999999999",
                "alerting.group_interval_secs = 9999999999999999: must be from 0 to 86400 seconds",
            ),
            (
                "ALERTING__REPEAT_INTERVAL_SECS",
                "0",
                "alerting.repeat_interval_secs = 0: must be from 60",
            ),
            (
                "ALERTING__GROUP_WAIT_SECS",
                "99999999",
                "alerting.group_wait_secs",
            ),
            (
                "INGEST__MAX_FUTURE_SECS",
                "-10",
                "ingest.max_future_secs = -10",
            ),
            (
                "INGEST__MAX_SAMPLES_PER_BATCH",
                "0",
                "ingest.max_samples_per_batch must be at least 1",
            ),
            (
                "SERVER__SESSION_TTL_SECS",
                "-5",
                "server.session_ttl_secs = -5",
            ),
            (
                "ENERGY__DEFAULT_HOST_MODEL__IDLE_WATTS",
                "nan",
                "energy.default_host_model",
            ),
            // 64 thinking in MiB: every gzip batch refused for good.
            (
                "SERVER__MAX_DECOMPRESSED_BYTES",
                "64",
                "server.max_decompressed_bytes (64) must be at least server.max_body_bytes",
            ),
            (
                "SERVER__SESSION_IDLE_SECS",
                "9000000000000000",
                "server.session_idle_secs = 9000000000000000 is over ten years",
            ),
            (
                "RETENTION__AUDIT_DAYS",
                "3000000",
                "retention.audit_days = 3000000 days is over 100 years",
            ),
            (
                "SERVER",
                "1",
                "RACKWATCH_SERVER (server) names a section, not a value: set one of its keys (RACKWATCH_SERVER__KEY)",
            ),
            (
                "SERVER__PASSWORD_CHECKS",
                "99999999999999999999",
                "RACKWATCH_SERVER__PASSWORD_CHECKS (server.password_checks) = \"99999999999999999999\" is out of range",
            ),
            // A typed value says what it wants, in words (not serde's "expected u64").
            (
                "AGENT__INTERVAL_SECS",
                "-5",
                "RACKWATCH_AGENT__INTERVAL_SECS (agent.interval_secs) = \"-5\" is out of range: a whole number, 0 or more is expected",
            ),
            (
                "RETENTION__ANOMALY_SCORES_DAYS",
                "3",
                "anomaly.train_days = 7 must not exceed retention.anomaly_scores_days (3)",
            ),
        ] {
            let env = vec![(format!("RACKWATCH_{var}"), v.to_string())];
            let err = Config::load_with_env(None, env).unwrap_err().to_string();
            assert!(err.contains(says), "{var}: {err}");
        }
        let smtp = |k: &str, v: &str| {
            vec![
                (
                    "RACKWATCH_ALERTING__SMTP__HOST".to_string(),
                    "mail.example".to_string(),
                ),
                (format!("RACKWATCH_ALERTING__SMTP__{k}"), v.to_string()),
            ]
        };
        let err = Config::load_with_env(None, smtp("FROM", "not an address"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerting.smtp.from = \"not an address\" is not an email address"),
            "{err}"
        );
        let err = Config::load_with_env(None, smtp("PORT", "0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerting.smtp.port must be from 1 to 65535"),
            "{err}"
        );
        assert!(Config::load_with_env(None, smtp("PORT", "587")).is_ok());
    }

    #[test]
    fn a_public_url_that_cannot_be_linked_is_refused() {
        for (v, says) in [
            ("rackwatch.example", "not a URL"),
            (
                "ftp://rackwatch.example",
                "the scheme must be http or https",
            ),
        ] {
            let env = vec![("RACKWATCH_SERVER__PUBLIC_URL".to_string(), v.to_string())];
            let err = Config::load_with_env(None, env).unwrap_err().to_string();
            assert!(
                err.contains("server.public_url") && err.contains(says),
                "{err}"
            );
        }
        let env = vec![(
            "RACKWATCH_SERVER__PUBLIC_URL".to_string(),
            "https://rackwatch.example/".to_string(),
        )];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert_eq!(cfg.public_url(), "https://rackwatch.example");
    }

    #[test]
    fn anomaly_backend_is_auto_by_default_and_a_wrong_one_is_named() {
        assert_eq!(Config::default().anomaly.backend, BackendChoice::Auto);
        let env = vec![("RACKWATCH_ANOMALY__BACKEND".to_string(), "gpu".to_string())];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert_eq!(cfg.anomaly.backend, BackendChoice::Gpu);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[anomaly]\nbackend = \"tpu\"\n").unwrap();
        let err = Config::load_with_env(Some(&p), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend") && err.contains("tpu"), "{err}");
        assert!(err.contains("auto") && err.contains("gpu"), "{err}");
    }

    #[test]
    fn shipped_default_toml_parses_to_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let cfg = Config::load_with_env(Some(&p), Vec::new()).unwrap();
        let d = Config::default();
        assert_eq!(cfg.server.listen, d.server.listen);
        assert_eq!(cfg.agent.interval_secs, d.agent.interval_secs);
        assert_eq!(cfg.retention.raw_days, d.retention.raw_days);
        assert_eq!(cfg.simulator.hosts, d.simulator.hosts);
        assert_eq!(cfg.energy.default_site, d.energy.default_site);
        assert_eq!(cfg.energy.default_host_model, d.energy.default_host_model);
        assert_eq!(cfg.energy.time_zone, d.energy.time_zone);
        assert_eq!(cfg.energy.report.send_hour, d.energy.report.send_hour);
        assert_eq!(
            cfg.retention.energy_hourly_days,
            d.retention.energy_hourly_days
        );
        assert_eq!(cfg.anomaly.train_days, d.anomaly.train_days);
        assert_eq!(cfg.anomaly.min_train_minutes, d.anomaly.min_train_minutes);
        assert_eq!(cfg.anomaly.pot_risk, d.anomaly.pot_risk);
        assert_eq!(
            cfg.retention.anomaly_scores_days,
            d.retention.anomaly_scores_days
        );
        assert_eq!(cfg.retention.audit_days, d.retention.audit_days);
        assert_eq!(cfg.retention.events_days, d.retention.events_days);
        assert_eq!(
            cfg.retention.alert_history_days,
            d.retention.alert_history_days
        );
    }

    #[test]
    fn shipped_default_toml_names_every_secret_file_key() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let text = std::fs::read_to_string(p).unwrap();
        for key in SECRET_FILE_KEYS.iter().chain(&["database.password"]) {
            let last = key.rsplit('.').next().unwrap();
            assert!(text.contains(&format!("{last}_file = ")), "{key}_file");
        }
    }

    #[test]
    fn packaged_configs_load_and_name_the_state_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/etc");
        let server = Config::load_with_env(Some(&dir.join("rackwatch.toml")), Vec::new()).unwrap();
        // Commands run by hand with --config find the database the unit's server runs.
        assert_eq!(server.data_dir, Path::new("/var/lib/rackwatch"));
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/rackwatch.service"),
        )
        .unwrap();
        assert!(
            unit.contains("--data-dir /var/lib/rackwatch serve"),
            "{unit}"
        );
        Config::load_with_env(Some(&dir.join("agent.toml")), Vec::new()).unwrap();
    }

    #[test]
    fn energy_settings_are_validated_with_their_key() {
        let bad = |toml: &str| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.toml");
            std::fs::write(&p, toml).unwrap();
            Config::load_with_env(Some(&p), Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[energy]\ntime_zone = \"Mars/Olympus\"\n").contains("energy.time_zone"));
        assert!(bad("[energy.sites.fra1]\npue = 0.8\n").contains("energy.sites.fra1.pue"));
        let e = bad("[energy.default_site]\ntime_of_use = [{ days = [\"mon\"], start_hour = 20, end_hour = 8, price_per_kwh = 0.2 }]\n");
        assert!(e.contains("time_of_use[0]"), "{e}");
        let e = bad("[energy.default_site]\ntime_of_use = [{ days = [\"monday\"], start_hour = 8, end_hour = 20, price_per_kwh = 0.2 }]\n");
        assert!(e.contains("unknown day"), "{e}");
        assert!(
            bad("[energy.host_models.x]\nidle_watts = 900.0\nmax_watts = 100.0\n")
                .contains("host_models.x")
        );
        assert!(bad("[energy.report]\nrecipients = [\"not an address\"]\n").contains("recipients"));
        assert!(bad("[retention]\nraw_days = 100\nrollup_1m_days = 10\n")
            .contains("retention.rollup_1m_days = 10 must be at least retention.raw_days = 100"));
        for key in [
            "energy_hourly_days",
            "events_days",
            "alert_history_days",
            "audit_days",
        ] {
            let e = bad(&format!("[retention]\n{key} = 0\n"));
            assert!(
                e.contains(&format!("retention.{key} must be at least 1")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_secret_file_says_whether_it_is_empty_or_its_first_line_blank() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let read = |p: &Path| read_secret_file(p, "agent.token_file");
        assert_eq!(read(&write("ok", "rw_abc\r\n")).unwrap(), "rw_abc");
        let e = read(&write("empty", "\n\n")).unwrap_err();
        assert!(e.ends_with(": the file is empty"), "{e}");
        let e = read(&write("late", "\n\nrw_abc\n")).unwrap_err();
        assert!(e.contains("the first line is blank"), "{e}");
    }

    #[test]
    fn anomaly_settings_are_checked() {
        let env = vec![(
            "RACKWATCH_ANOMALY__MIN_TRAIN_MINUTES".to_string(),
            "20000".to_string(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("anomaly.min_train_minutes"), "{err}");
        let env = vec![("RACKWATCH_ANOMALY__POT_RISK".to_string(), "0.9".to_string())];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("anomaly.pot_risk"), "{err}");
    }
}
