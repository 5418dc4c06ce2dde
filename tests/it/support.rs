//! Test harness: one real Postgres cluster per test run (started with Rackwatch's own
//! managed-Postgres code), a fresh database per test cloned from a migrated template,
//! and the real server on a random port.
//!
//! With `RACKWATCH_TEST_CITUS=1` (`./scripts/test-citus`) the cluster is a Citus
//! coordinator with two workers instead, and the template is migrated and distributed
//! by host once. A distributed database is the coordinator's metadata plus the workers'
//! shards, each found by database name, so a test's database is the template copied
//! under one new name on every node (`LocalCluster::clone_database`, about a second);
//! making and distributing one per test would take several times as long.

use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use rackwatch::config::{Config, Secret};
use rackwatch::store::citus::{LocalCluster, LocalClusterOptions, Nodes};
use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use rackwatch::store::{create_database_if_missing, Store};
use sqlx::Connection;
use tokio::sync::watch;

static CLUSTER: OnceLock<Mutex<Option<ManagedPostgres>>> = OnceLock::new();
static CITUS: OnceLock<Mutex<Option<LocalCluster>>> = OnceLock::new();
static CITUS_NODES: OnceLock<Nodes> = OnceLock::new();
static ADMIN_URL: OnceLock<String> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn stop_cluster_at_exit() {
    if let Some(m) = CLUSTER.get() {
        if let Ok(mut g) = m.lock() {
            if let Some(pg) = g.as_mut() {
                pg.stop_immediate();
            }
        }
    }
    if let Some(m) = CITUS.get() {
        if let Ok(mut g) = m.lock() {
            if let Some(c) = g.as_mut() {
                c.stop_immediate();
            }
        }
    }
}

/// Whether this run's databases live on a Citus cluster (`./scripts/test-citus`).
pub fn citus() -> bool {
    std::env::var("RACKWATCH_TEST_CITUS").is_ok_and(|v| v == "1")
}

/// Shards per distributed table in the Citus run: two per worker keep the template small
/// (every daily partition has this many shards) while still spreading hosts over both
/// workers.
const CITUS_TEST_SHARDS: u32 = 4;

/// The Citus run's cluster (a coordinator and two workers), started on first use.
pub fn citus_nodes() -> &'static Nodes {
    CITUS_NODES.get_or_init(|| {
        let root = cluster_root("citus");
        let _ = std::fs::remove_dir_all(&root);
        let mut opts = LocalClusterOptions::new(root, 2, 5432);
        opts.settings = fast_settings();
        opts.settings
            .push(format!("citus.shard_count={CITUS_TEST_SHARDS}"));
        // Every database with Citus has a maintenance daemon on every node, holding
        // connections to the other nodes, and each test has its own database: the
        // suite's ~130 databases need more worker processes and connection slots than a
        // single cluster's settings give.
        opts.settings.push("max_worker_processes=512".into());
        opts.settings.push("max_connections=1000".into());
        let c = LocalCluster::start(&opts)
            .expect("starting the Citus test cluster (is Citus installed? ./scripts/citus build)");
        let nodes = c.nodes();
        CITUS.get_or_init(|| Mutex::new(Some(c)));
        unsafe { libc::atexit(stop_cluster_at_exit) };
        nodes
    })
}

/// Settings for throwaway clusters: durability off, they hold nothing of value.
pub fn fast_settings() -> Vec<String> {
    vec![
        "fsync=off".into(),
        "synchronous_commit=off".into(),
        "full_page_writes=off".into(),
        "max_connections=300".into(),
    ]
}

/// A directory for test clusters that the unprivileged Postgres user can reach.
pub fn cluster_root(name: &str) -> std::path::PathBuf {
    let base = std::env::var("RACKWATCH_TEST_DIR").unwrap_or_else(|_| "/tmp".into());
    std::path::PathBuf::from(base).join(format!("rackwatch-test-{}-{name}", std::process::id()))
}

fn admin_url() -> &'static str {
    ADMIN_URL.get_or_init(|| {
        if citus() {
            return citus_nodes().coordinator.admin_url();
        }
        let root = cluster_root("shared");
        let _ = std::fs::remove_dir_all(&root);
        let opts = ManagedOptions {
            root,
            bin_dir: String::new(),
            user: "postgres".into(),
            settings: fast_settings(),
            own_adopted: true,
            port: rackwatch::store::managed::DEFAULT_PORT,
            standby_of: None,
        };
        let pg = ManagedPostgres::start(&opts).expect("starting the test Postgres cluster");
        let url = pg.admin_url();
        CLUSTER.get_or_init(|| Mutex::new(Some(pg)));
        unsafe { libc::atexit(stop_cluster_at_exit) };
        url
    })
}

/// A fresh, migrated database; returns its URL.
pub async fn fresh_database() -> String {
    let admin = tokio::task::spawn_blocking(admin_url)
        .await
        .unwrap()
        .to_string();
    if citus() {
        return fresh_citus_database(&admin).await;
    }
    TEMPLATE
        .get_or_init(|| async {
            create_database_if_missing(&admin, "rw_template")
                .await
                .unwrap();
            let url = admin.replace("/postgres?", "/rw_template?");
            let store = Store::connect(&url, 2, 10).await.unwrap();
            store.migrate().await.unwrap();
            store.pool.close().await;
        })
        .await;
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE rw_template"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    admin.replace("/postgres?", &format!("/{name}?"))
}

/// A fresh database on the Citus cluster, copied from the distributed template.
async fn fresh_citus_database(admin: &str) -> String {
    let nodes = tokio::task::spawn_blocking(citus_nodes).await.unwrap();
    TEMPLATE
        .get_or_init(|| async {
            nodes.create_database("rw_template").await.unwrap();
            let url = nodes.url_for("rw_template");
            let store = Store::connect(&url, 2, 30).await.unwrap();
            store.migrate().await.unwrap();
            let d = rackwatch::store::citus::distribute(&store.pool)
                .await
                .unwrap();
            assert_eq!(d.workers, 2, "{d:?}");
            assert!(d.unlisted.is_empty(), "tables without a placement: {d:?}");
            let cfg = Config::default();
            store
                .ensure_partitions(
                    Utc::now(),
                    cfg.retention.raw_days,
                    cfg.retention.partitions_ahead_days,
                )
                .await
                .unwrap();
            store.pool.close().await;
            nodes.seal_template("rw_template").await.unwrap();
        })
        .await;
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    nodes.clone_database("rw_template", &name).await.unwrap();
    admin.replace("/postgres?", &format!("/{name}?"))
}

/// Drop a database, disconnecting its users (simulates the database going away).
pub async fn drop_database(url: &str) {
    let name = url
        .split('/')
        .nth(3)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut conn = sqlx::PgConnection::connect(admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A configuration for tests: random port, the given database.
pub fn test_config(db_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(db_url);
    cfg.database.distributed = citus();
    cfg.database.max_connections = 8;
    cfg.database.acquire_timeout_secs = 2;
    cfg.server.metrics_token = Secret::new(METRICS_TOKEN);
    cfg
}

/// With `RACKWATCH_TEST_LOG` set (a `RACKWATCH_LOG`-style filter, e.g. `warn`), the
/// servers' logs go to the test's captured output, shown when it fails.
fn test_log() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Ok(filter) = std::env::var("RACKWATCH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// The scrape token of test servers.
pub const METRICS_TOKEN: &str = "test-scrape-token";

/// The real server, running.
pub struct TestApp {
    pub base: String,
    pub store: Store,
    pub cfg: Arc<Config>,
    pub db_url: String,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    background: Option<rackwatch::app::Background>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> TestApp {
        let db_url = fresh_database().await;
        Self::spawn_on(db_url, f).await
    }

    pub async fn spawn_on(db_url: String, f: impl FnOnce(&mut Config)) -> TestApp {
        Self::launch(db_url, f, false).await
    }

    /// The server plus its background work (jobs, alert evaluator and mail sender), as
    /// `rackwatch serve` runs it.
    pub async fn spawn_full(db_url: String, f: impl FnOnce(&mut Config)) -> TestApp {
        Self::launch(db_url, f, true).await
    }

    async fn launch(db_url: String, f: impl FnOnce(&mut Config), full: bool) -> TestApp {
        test_log();
        let mut cfg = test_config(&db_url);
        f(&mut cfg);
        let (max, timeout) = (
            cfg.database.max_connections,
            cfg.database.acquire_timeout_secs,
        );
        let mut store = Store::connect(&db_url, max, timeout).await.unwrap();
        if !cfg.database.read_url.is_empty() {
            let lag = std::time::Duration::from_secs(cfg.database.read_max_lag_secs);
            store = store
                .with_read_replica(cfg.database.read_url.expose(), max, lag)
                .unwrap();
        }
        let (raw, ahead) = (cfg.retention.raw_days, cfg.retention.partitions_ahead_days);
        store
            .ensure_partitions(Utc::now(), raw, ahead)
            .await
            .unwrap();
        let cfg = Arc::new(cfg);
        let (stop, rx) = watch::channel(false);
        let (background, wakeup) = if full {
            let bg =
                rackwatch::app::start_background(cfg.clone(), store.clone(), rx.clone()).unwrap();
            let w = bg.shared.clone();
            (Some(bg), w)
        } else {
            (None, rackwatch::app::Shared::default())
        };
        let server = rackwatch::app::start_server_with(cfg.clone(), store.clone(), wakeup, rx)
            .await
            .unwrap();
        // The tests' own client; the TLS tests check certificates with the agent's.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(server.tls)
            .build()
            .unwrap();
        TestApp {
            base: server.url(),
            store,
            cfg,
            db_url,
            http,
            stop,
            task: Some(server.task),
            background,
        }
    }

    /// `GET /metrics` as Prometheus would scrape it (with the scrape token).
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Mint an agent token for `host`.
    pub async fn token(&self, host: &str) -> String {
        self.store.create_agent_token(host, "test").await.unwrap()
    }

    /// POST a JSON body to ingest with a token.
    pub async fn ingest(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/ingest", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Create an admin and return a session cookie header value for it.
    pub async fn login(&self, user: &str, password: &str) -> String {
        self.login_as(user, password, rackwatch::store::auth::Role::Admin)
            .await
    }

    /// Create a user with `role` and log in through the form like a browser.
    pub async fn login_as(
        &self,
        user: &str,
        password: &str,
        role: rackwatch::store::auth::Role,
    ) -> String {
        self.store.upsert_user(user, role, password).await.unwrap();
        let r = self.post_login(user, password).await;
        assert_eq!(r.status(), 303, "login should redirect");
        let set = session_set_cookie(&r);
        assert!(set.contains("HttpOnly"), "{set}");
        session_cookie(&r)
    }

    /// The login form's CSRF cookie (`name=value`) and hidden-field token.
    pub async fn login_csrf(&self) -> (String, String) {
        let r = self
            .http
            .get(format!("{}/login", self.base))
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let html = r.text().await.unwrap();
        (cookie, csrf_of(&html))
    }

    /// Set the rollup job's watermark: every minute before `w` counts as rolled up.
    pub async fn set_rollup_watermark(&self, w: chrono::DateTime<chrono::Utc>) {
        sqlx::query(
            "INSERT INTO job_state (name, watermark, updated_at) VALUES ('rollup_1m', $1, now())
             ON CONFLICT (name) DO UPDATE SET watermark = $1",
        )
        .bind(w)
        .execute(&self.store.pool)
        .await
        .unwrap();
    }

    /// The audit rows of one action, newest first (at most 100).
    pub async fn audit(&self, action: &str) -> Vec<rackwatch::store::audit::AuditRow> {
        self.store
            .audit_rows(&rackwatch::store::audit::Filter {
                action: Some(action.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// The audit rows of one action once there are at least `n` (written by a background
    /// job); panics after 10 s.
    pub async fn wait_audit(
        &self,
        action: &str,
        n: usize,
    ) -> Vec<rackwatch::store::audit::AuditRow> {
        for _ in 0..100 {
            let rows = self.audit(action).await;
            if rows.len() >= n {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("fewer than {n} {action} audit rows after 10 s");
    }

    /// POST the login form as a browser would (CSRF cookie + field).
    pub async fn post_login(&self, user: &str, password: &str) -> reqwest::Response {
        let (cookie, token) = self.login_csrf().await;
        self.http
            .post(format!("{}/login", self.base))
            .header("cookie", cookie)
            .form(&[
                ("username", user),
                ("password", password),
                ("next", "/"),
                ("csrf", &token),
            ])
            .send()
            .await
            .unwrap()
    }

    /// GET `path` with a session cookie.
    pub async fn get(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }

    /// POST a JSON body to `path` with a session cookie.
    pub async fn post_json(
        &self,
        cookie: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.post_json_text(cookie, path, body.to_string()).await
    }

    /// POST a JSON body as written (a field given twice, which a `Value` cannot hold) with
    /// a session cookie and its CSRF header.
    pub async fn post_json_text(
        &self,
        cookie: &str,
        path: &str,
        body: String,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .header(
                rackwatch::web::access::CSRF_HEADER,
                rackwatch::web::access::csrf_for_cookie(cookie),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// GET a page with a session cookie; returns status and body.
    pub async fn page(&self, cookie: &str, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GET a JSON API path with a session cookie.
    pub async fn json(&self, cookie: &str, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(bg) = self.background.take() {
            let _ = bg.jobs.await;
            let _ = bg.alerts.await;
        }
        self.store.pool.close().await;
    }
}

/// Timestamps a few seconds apart ending `secs_ago` seconds before now (whole ms).
/// An ingest upload with `token` whose body stops after its first bytes: it holds what
/// an upload holds (an ingest slot, the agent's count of uploads) until it is cut.
pub async fn stalled_upload(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"host\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// The session's `Set-Cookie` of a login answer, with its attributes.
pub fn session_set_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("rw_session="))
        .expect("a session cookie")
        .to_string()
}

/// The session cookie (`rw_session=…`) a login answer sets, as a `Cookie` header.
pub fn session_cookie(r: &reqwest::Response) -> String {
    session_set_cookie(r).split(';').next().unwrap().to_string()
}

pub fn recent(n: usize, step_secs: i64, secs_ago: i64) -> Vec<DateTime<Utc>> {
    let end = Utc::now() - chrono::Duration::seconds(secs_ago);
    let end = DateTime::from_timestamp_millis(end.timestamp_millis()).unwrap();
    (0..n)
        .rev()
        .map(|i| end - chrono::Duration::seconds(i as i64 * step_secs))
        .collect()
}

/// A real SMTP server (Python aiosmtpd) on loopback, storing mail in a Maildir. Some
/// addresses are refused as real servers refuse them (`tests/smtp/refusing.py`):
/// `nobody@` for good (550 5.1.1), `gone@` with a bare 550, `busy@` the first time (451).
pub struct SmtpServer {
    pub port: u16,
    pub maildir: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    child: Option<std::process::Child>,
}

/// Python with aiosmtpd: `RACKWATCH_TEST_PYTHON` (set by scripts/test) or python3.
fn python() -> String {
    std::env::var("RACKWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl SmtpServer {
    /// Point `c`'s alerting at this server, with the rules in `rules` evaluated every
    /// second (plain SMTP, no wait before a group's first mail).
    pub fn alert_through(&self, c: &mut Config, rules: &std::path::Path) {
        c.alerting.rules_file = rules.to_string_lossy().into_owned();
        c.alerting.eval_interval_secs = 1;
        c.alerting.group_wait_secs = 0;
        c.alerting.smtp.host = "127.0.0.1".into();
        c.alerting.smtp.port = self.port;
        c.alerting.smtp.security = "plain".into();
    }

    /// Start on a free port.
    pub async fn start() -> SmtpServer {
        let port = free_port();
        let mut s = SmtpServer::stopped(port);
        s.run().await;
        s
    }

    /// Reserve a port and a Maildir, but do not start yet (an SMTP outage).
    pub fn stopped(port: u16) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        SmtpServer {
            port,
            maildir,
            _dir: Some(dir),
            child: None,
        }
    }

    /// Start (or restart) the server and wait until it accepts connections.
    pub async fn run(&mut self) {
        let child = std::process::Command::new(python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
                "-c",
                "refusing.Refusing",
            ])
            .arg(&self.maildir)
            .env(
                "PYTHONPATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp"),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(
                "starting aiosmtpd: run ./scripts/test, which installs it (pip install aiosmtpd)",
            );
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let out = c.wait_with_output().unwrap();
        panic!(
            "aiosmtpd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every mail received so far, raw (quoted-printable soft breaks undone).
    pub fn mails(&self) -> Vec<String> {
        let mut files: Vec<_> = ["new", "cur"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(self.maildir.join(d))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|m| {
                m.replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }

    /// Every recipient asked for in an RCPT command so far, accepted or refused.
    pub fn rcpt_asked(&self) -> Vec<String> {
        let log = self.maildir.with_file_name("rcpt.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait until at least `n` mails arrived (or `secs` passed); returns all mails.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<String> {
        self.wait_until(|m| m.len() >= n, secs).await
    }

    /// Wait until the mails so far satisfy `done` (or `secs` passed); returns all mails.
    pub async fn wait_until(&self, done: impl Fn(&[String]) -> bool, secs: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let m = self.mails();
            if done(&m) || std::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The subject line of a raw mail.
pub fn subject(mail: &str) -> String {
    mail.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string()
}

/// The value of the first hidden `csrf` field of a page.
/// Log in through the form of a server at `base` (CSRF cookie + field, as a browser does)
/// and return its session cookie (`rw_session=…`); for servers run as processes.
pub async fn form_login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let r = http.get(format!("{base}/login")).send().await.unwrap();
    let csrf_cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = csrf_of(&r.text().await.unwrap());
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", csrf_cookie)
        .form(&[
            ("username", user),
            ("password", password),
            ("next", "/"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("rw_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

pub fn csrf_of(html: &str) -> String {
    let key = "name=\"csrf\" value=\"";
    let i = html.find(key).expect("csrf field") + key.len();
    html[i..i + html[i..].find('"').unwrap()].to_string()
}
