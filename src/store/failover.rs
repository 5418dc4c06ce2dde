//! Following the primary of a replicated Postgres, and reading from a streaming replica.
//!
//! `database.url` may name several hosts as libpq does,
//! `postgres://user@db1:5432,db2:5432/rackwatch?target_session_attrs=read-write` (or
//! `…?host=/run/a,/run/b&port=5432,5433&…` for unix sockets), as `pg_auto_failover`'s
//! `pg_autoctl show uri` prints it. sqlx connects to one host only, so [`Router`] picks
//! the host to use (the first that accepts a connection and, with `read-write`, is not
//! read-only; several hosts without `target_session_attrs` are read-write too, since a
//! standby never takes writes, and `any` must be said), points the pool at it, and watches it through one connection of its own:
//! when that host stops answering or turns read-only (a failover demoted it), it finds
//! the new primary, points the pool there and retires the connections made before.
//! Writes that fail in between answer 503, and agents replay them from their spool.
//!
//! `database.read_url` names a streaming replica for reads that may be a little stale
//! (charts, raw samples, events). [`ReadReplica`] measures its lag once a second from a
//! heartbeat row the primary writes, and sends those reads to the primary whenever the
//! lag passes `database.read_max_lag_secs` or the replica does not answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How often the current host and the replica's lag are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one host may take to accept a connection while looking for the primary.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The hosts of a database URL, each as sqlx connect options.
#[derive(Debug, Clone)]
pub struct Targets {
    pub hosts: Vec<PgConnectOptions>,
    /// `target_session_attrs=read-write` (or `primary`): only a host that is not
    /// read-only will do.
    pub read_write: bool,
}

impl Targets {
    /// Whether the URL needs routing (several hosts, or a read-write requirement).
    pub fn routed(&self) -> bool {
        self.hosts.len() > 1 || self.read_write
    }
}

/// Parse a libpq-style URL with one or more hosts.
pub fn parse(url: &str) -> Result<Targets, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("a database URL starts with postgres://")?;
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(format!(
            "the scheme must be postgres:// or postgresql://, not {scheme}://"
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    // The query without target_session_attrs (sqlx does not know it), and any
    // comma-separated host= / port= lists (unix sockets) taken out of it.
    let mut read_write: Option<bool> = None;
    let mut q_hosts: Vec<String> = Vec::new();
    let mut q_ports: Vec<String> = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "target_session_attrs" => match v {
                "read-write" | "primary" => read_write = Some(true),
                "any" => read_write = Some(false),
                other => {
                    return Err(format!(
                        "target_session_attrs={other} is not supported (read-write, primary or any)"
                    ))
                }
            },
            "host" if v.contains(',') => q_hosts = v.split(',').map(String::from).collect(),
            "port" if v.contains(',') => q_ports = v.split(',').map(String::from).collect(),
            _ => kept.push(pair),
        }
    }
    let query = |extra: &[String]| -> String {
        let mut all: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
        all.extend(extra.iter().cloned());
        if all.is_empty() {
            String::new()
        } else {
            format!("?{}", all.join("&"))
        }
    };
    let mut urls = Vec::new();
    if !q_hosts.is_empty() {
        if !q_ports.is_empty() && q_ports.len() != q_hosts.len() {
            return Err("host= and port= list different numbers of entries".into());
        }
        for (i, h) in q_hosts.iter().enumerate() {
            let mut extra = vec![format!("host={h}")];
            if let Some(p) = q_ports.get(i) {
                extra.push(format!("port={p}"));
            }
            urls.push(format!(
                "{scheme}://{userinfo}{hostlist}{path}{}",
                query(&extra)
            ));
        }
    } else if !q_ports.is_empty() {
        return Err("a port= list needs a host= list of the same length".into());
    } else {
        for h in hostlist.split(',') {
            urls.push(format!("{scheme}://{userinfo}{h}{path}{}", query(&[])));
        }
    }
    let hosts = urls
        .iter()
        .map(|u| {
            u.parse::<PgConnectOptions>()
                .map(super::named)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if hosts.is_empty() {
        return Err("no host in the database URL".into());
    }
    // Several hosts without target_session_attrs: read-write all the same. Rackwatch
    // writes, so a standby is never the host to use; taken as "any", a primary's brief
    // blip would move the server to a standby for good, where every write fails.
    let read_write = read_write.unwrap_or(hosts.len() > 1);
    Ok(Targets { hosts, read_write })
}

/// A host's address as people read it (for logs).
pub fn describe(o: &PgConnectOptions) -> String {
    match o.get_socket() {
        Some(s) => format!("{}:{}", s.display(), o.get_port()),
        None => format!("{}:{}", o.get_host(), o.get_port()),
    }
}

/// Whether a connection's server takes writes. A host that stops answering without
/// closing the connection (power loss, a dropped network path) is an error after
/// [`PROBE_TIMEOUT`], not a wait for the kernel to give up on the socket (minutes).
async fn is_read_write(c: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let ro: String = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query_scalar!(r#"SELECT current_setting('transaction_read_only') AS "ro!""#)
            .fetch_one(&mut *c),
    )
    .await
    .map_err(|_| {
        sqlx::Error::Protocol(format!(
            "the database host did not answer in {} s",
            PROBE_TIMEOUT.as_secs()
        ))
    })??;
    Ok(ro == "off")
}

/// Follows the primary of a multi-host URL for one pool.
#[derive(Debug)]
pub struct Router {
    targets: Targets,
    /// Index of the host the pool points at.
    current: AtomicU64,
    /// When the pool last moved to another host: connections older than that belong
    /// to the old one and are retired.
    switched: Mutex<Instant>,
    /// Host switches so far.
    pub switches: AtomicU64,
}

impl Router {
    /// Find the host to start with (the first usable one; the first one when none
    /// answers yet, so a server can start while its database is still down).
    pub async fn start(targets: Targets) -> Arc<Router> {
        let first = find(&targets, None).await.unwrap_or(0);
        Arc::new(Router {
            targets,
            current: AtomicU64::new(first as u64),
            switched: Mutex::new(Instant::now()),
            switches: AtomicU64::new(0),
        })
    }

    /// The connect options of the current host.
    pub fn current(&self) -> PgConnectOptions {
        self.targets.hosts[self.current.load(Ordering::Relaxed) as usize].clone()
    }

    /// Pool options that check each new connection (read-write where required) and
    /// retire connections made before the last switch.
    pub fn pool_options(self: &Arc<Self>, opts: PgPoolOptions) -> PgPoolOptions {
        let check = self.clone();
        let retire = self.clone();
        opts.after_connect(move |conn, _meta| {
            let read_write = check.targets.read_write;
            Box::pin(async move {
                if read_write && !is_read_write(conn).await? {
                    return Err(sqlx::Error::Protocol(
                        "the database host is read-only (a standby); looking for the primary"
                            .into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire(move |_conn, meta| {
            let since = retire.switched.lock().expect("router").elapsed();
            Box::pin(async move { Ok(meta.age <= since) })
        })
    }

    /// Watch the current host through a connection of its own, once a second; when it
    /// fails or turns read-only, move `pool` to the host that is usable now.
    pub fn watch(self: Arc<Self>, pool: PgPool) {
        tokio::spawn(async move {
            let mut watcher: Option<PgConnection> = None;
            loop {
                if pool.is_closed() {
                    break;
                }
                let ok = match watcher.as_mut() {
                    Some(c) => match is_read_write(c).await {
                        Ok(rw) => rw || !self.targets.read_write,
                        Err(_) => false,
                    },
                    None => {
                        match tokio::time::timeout(PROBE_TIMEOUT, self.current().connect()).await {
                            Ok(Ok(mut c)) => {
                                let rw = is_read_write(&mut c).await.unwrap_or(false);
                                watcher = Some(c);
                                rw || !self.targets.read_write
                            }
                            _ => false,
                        }
                    }
                };
                if !ok {
                    if let Some(c) = watcher.take() {
                        let _ = tokio::time::timeout(PROBE_TIMEOUT, c.close()).await;
                    }
                    let now = self.current.load(Ordering::Relaxed) as usize;
                    if let Some(next) = find(&self.targets, Some(now)).await {
                        if next != now {
                            self.current.store(next as u64, Ordering::Relaxed);
                            *self.switched.lock().expect("router") = Instant::now();
                            self.switches.fetch_add(1, Ordering::Relaxed);
                            pool.set_connect_options(self.current());
                            tracing::warn!(
                                from = %describe(&self.targets.hosts[now]),
                                to = %describe(&self.targets.hosts[next]),
                                "database primary moved; reconnecting there"
                            );
                        }
                    }
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        });
    }
}

/// What each host of `targets` answers now, for an error when none will do:
/// `db1:5432: connection refused; db2:5432: read-only (a standby)`.
pub async fn diagnose(targets: &Targets) -> String {
    let mut out = Vec::with_capacity(targets.hosts.len());
    for h in &targets.hosts {
        let why = match tokio::time::timeout(PROBE_TIMEOUT, h.connect()).await {
            Err(_) => format!("no answer in {} s", PROBE_TIMEOUT.as_secs()),
            Ok(Err(e)) => super::connect_error(&e),
            Ok(Ok(mut c)) => {
                let rw = is_read_write(&mut c).await.unwrap_or(false);
                let _ = tokio::time::timeout(PROBE_TIMEOUT, c.close()).await;
                match (targets.read_write, rw) {
                    (true, false) => "read-only (a standby); a primary is needed".to_string(),
                    _ => "answers now".to_string(),
                }
            }
        };
        out.push(format!("{}: {why}", describe(h)));
    }
    out.join("; ")
}

/// Whether a host of `targets` will do now.
pub async fn any_usable(targets: &Targets) -> bool {
    find(targets, None).await.is_some()
}

/// The first usable host, starting after `after` (so a failed current host is tried
/// last) and wrapping around.
async fn find(targets: &Targets, after: Option<usize>) -> Option<usize> {
    let n = targets.hosts.len();
    let start = after.map_or(0, |a| a + 1);
    for k in 0..n {
        let i = (start + k) % n;
        let Ok(Ok(mut c)) = tokio::time::timeout(PROBE_TIMEOUT, targets.hosts[i].connect()).await
        else {
            continue;
        };
        let usable = !targets.read_write || is_read_write(&mut c).await.unwrap_or(false);
        let _ = tokio::time::timeout(PROBE_TIMEOUT, c.close()).await;
        if usable {
            return Some(i);
        }
    }
    None
}

/// Reads that may be a little stale go to a streaming replica while its lag is within
/// bounds.
#[derive(Debug)]
pub struct ReadReplica {
    pub pool: PgPool,
    pub max_lag: Duration,
    healthy: AtomicBool,
    /// Last measured lag in milliseconds (u64::MAX: unknown).
    lag_ms: AtomicU64,
}

/// The heartbeat row the primary writes and the replica's lag is measured by.
pub const HEARTBEAT: &str = "read_replica_heartbeat";

impl ReadReplica {
    /// Connect lazily to the replica; nothing is read from it until a first lag check
    /// passed.
    pub fn connect(
        url: &str,
        max_connections: u32,
        max_lag: Duration,
    ) -> Result<Arc<Self>, String> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| format!("database.read_url is not a valid Postgres URL: {e}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(opts);
        Ok(Arc::new(ReadReplica {
            pool,
            max_lag,
            healthy: AtomicBool::new(false),
            lag_ms: AtomicU64::new(u64::MAX),
        }))
    }

    /// Whether reads go to the replica now.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The last measured lag (None: the replica did not answer).
    pub fn lag(&self) -> Option<Duration> {
        match self.lag_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Once a second: write the heartbeat on the primary, read it back on the replica;
    /// the difference to the replica's clock is the lag (plus up to one heartbeat
    /// interval, so what a page shows is at most `max_lag` + 1 s old).
    pub fn watch(self: Arc<Self>, primary: PgPool) {
        tokio::spawn(async move {
            loop {
                if primary.is_closed() {
                    break;
                }
                let _ = sqlx::query!(
                    "INSERT INTO job_state (name, watermark, updated_at) VALUES ($1, now(), now())
                     ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = EXCLUDED.updated_at",
                    HEARTBEAT,
                )
                .execute(&primary)
                .await;
                let lag: Option<f64> = tokio::time::timeout(
                    Duration::from_secs(2),
                    sqlx::query_scalar!(
                        r#"SELECT EXTRACT(EPOCH FROM clock_timestamp() - watermark)::float8 AS "lag!" FROM job_state WHERE name = $1"#,
                        HEARTBEAT,
                    )
                    .fetch_optional(&self.pool),
                )
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
                let healthy = lag.is_some_and(|l| l <= self.max_lag.as_secs_f64());
                self.lag_ms.store(
                    lag.map_or(u64::MAX, |l| (l.max(0.0) * 1e3) as u64),
                    Ordering::Relaxed,
                );
                let was = self.healthy.swap(healthy, Ordering::Relaxed);
                if was != healthy {
                    if healthy {
                        tracing::info!(
                            lag_s = lag,
                            "read replica within its lag bound; history reads go there"
                        );
                    } else {
                        tracing::warn!(
                            lag_s = lag,
                            max_lag_s = self.max_lag.as_secs_f64(),
                            "read replica behind or unreachable; history reads go to the primary"
                        );
                    }
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_is_not_postgres_is_refused_by_its_scheme() {
        assert!(parse("postgresql://u@db/rw").is_ok());
        let e = parse("postgress://u@db/rw").err().unwrap();
        assert!(
            e.contains("postgres:// or postgresql://, not postgress://"),
            "{e}"
        );
    }

    /// The pool's "timed out" says nothing; the error names what failed, and never the
    /// password.
    #[tokio::test]
    async fn an_unreachable_database_is_named_with_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://rw:s3cret@127.0.0.1:{port}/rackwatch");
        let e = crate::store::Store::connect(&url, 1, 1)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.contains("\"rackwatch\""), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn one_host_is_not_routed() {
        let t = parse("postgres://u:p@db:5433/rw").unwrap();
        assert!(!t.routed());
        assert_eq!(t.hosts[0].get_host(), "db");
        assert_eq!(t.hosts[0].get_port(), 5433);
    }

    #[test]
    fn libpq_host_lists_and_session_attrs() {
        let t = parse(
            "postgres://u:p@db1:6001,db2:6002/rw?target_session_attrs=read-write&sslmode=disable",
        )
        .unwrap();
        assert!(t.routed() && t.read_write);
        let hp: Vec<(String, u16)> = t
            .hosts
            .iter()
            .map(|o| (o.get_host().to_string(), o.get_port()))
            .collect();
        assert_eq!(hp, [("db1".into(), 6001), ("db2".into(), 6002)]);
        assert_eq!(t.hosts[1].get_database(), Some("rw"));
        assert_eq!(t.hosts[1].get_username(), "u");

        let s = parse("postgres://postgres@localhost/rw?host=/run/a,/run/b&port=5432,5433&target_session_attrs=primary")
            .unwrap();
        assert!(s.read_write);
        assert_eq!(
            s.hosts.iter().map(describe).collect::<Vec<_>>(),
            ["/run/a:5432", "/run/b:5433"]
        );
        assert!(parse("postgres://a,b/x?target_session_attrs=standby").is_err());
        assert!(parse("postgres://x/y?host=/a,/b&port=1,2,3").is_err());
    }

    #[test]
    fn several_hosts_without_session_attrs_want_the_primary() {
        // A standby is never usable for a server that writes: without the attribute, a
        // primary's blip would park the server on a standby for good.
        assert!(parse("postgres://u@db1,db2/rw").unwrap().read_write);
        assert!(
            !parse("postgres://u@db1,db2/rw?target_session_attrs=any")
                .unwrap()
                .read_write
        );
        assert!(!parse("postgres://u@db1/rw").unwrap().read_write);
    }
}
