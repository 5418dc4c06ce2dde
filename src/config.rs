//! One typed configuration for every subcommand.
//!
//! Layers, later wins: built-in defaults → `--config FILE` (TOML) → `RACKWATCH_*`
//! environment variables. Nested keys use a double underscore in the variable name:
//! `RACKWATCH_DATABASE__URL`, `RACKWATCH_AGENT__INTERVAL_SECS`, `RACKWATCH_DATA_DIR`.
//! `config/default.toml` documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// Mark session cookies `Secure` (set when the dashboard is served over TLS).
    pub secure_cookies: bool,
    /// How long a login session lasts, in seconds.
    pub session_ttl_secs: i64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 64 << 20,
            secure_cookies: false,
            session_ttl_secs: 12 * 3600,
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
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::default(),
            max_connections: 16,
            acquire_timeout_secs: 3,
            managed_bin_dir: String::new(),
            managed_user: "postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw samples kept (daily partitions older than this are dropped).
    pub raw_days: u32,
    /// Days of 1-minute rollups (and of the 15-minute rollups made from them) kept.
    pub rollup_1m_days: u32,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: 7,
            rollup_1m_days: 90,
            partitions_ahead_days: 3,
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
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_future_secs: 300,
            max_samples_per_batch: 100_000,
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
    /// Path of libnvidia-ml.so. Empty: the system default (`libnvidia-ml.so.1`).
    pub nvml_lib_path: String,
    /// Kernel log read for XIDs NVML does not report: empty = `/dev/kmsg`, `off`, or
    /// the path of a text file the kernel log is written to (tailed from its end).
    pub kernel_log: String,
    /// Identity of this host as shown in the dashboard.
    pub host: HostIdentity,
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
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            hosts: 12,
            gpus_per_host: 8,
            backfill_minutes: 60,
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

/// What went wrong reading the configuration, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
        let origin = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
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
        let mut env_used = false;
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("RACKWATCH_") else {
                continue;
            };
            if rest.is_empty() || rest.starts_with("TEST_") || rest == "LOG" {
                continue;
            }
            env_used = true;
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set_path(&mut root, &keys, parse_env_value(&value)).map_err(|message| {
                ConfigError::Env {
                    var: var.clone(),
                    message,
                }
            })?;
        }
        let origin = if env_used {
            format!("{origin} + RACKWATCH_* environment")
        } else {
            origin
        };
        let cfg: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        cfg.validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.agent.interval_secs == 0 {
            return Err("agent.interval_secs must be at least 1".into());
        }
        if self.agent.ship_interval_secs == 0 {
            return Err("agent.ship_interval_secs must be at least 1".into());
        }
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be at least 1".into());
        }
        if self.retention.raw_days == 0 {
            return Err("retention.raw_days must be at least 1".into());
        }
        if self.server.max_body_bytes < 1024 {
            return Err("server.max_body_bytes must be at least 1024".into());
        }
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
        if self.simulator.gpus_per_host > 64 {
            return Err("simulator.gpus_per_host must be at most 64".into());
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
        format!("http://{listen}")
    }
}

fn parse_env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && v.contains('.') {
            return toml::Value::Float(f);
        }
    }
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(v.to_string()),
    }
}

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
    // Strings that look numeric stay strings where the key expects a string (e.g. a
    // token made of digits); serde reports a type error otherwise, which is clear enough.
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_key_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[agent]\ninterval_sec = 5\n").unwrap();
        let err = Config::load_with_env(Some(&p), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval_sec"), "{err}");
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn invalid_value_is_explained() {
        let env = vec![(
            "RACKWATCH_AGENT__INTERVAL_SECS".to_string(),
            "0".to_string(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("agent.interval_secs"), "{err}");
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
    }
}
