//! Faults under ingest load, with every sample counted.
//!
//! Agents here are the real agent loop (`collect::agent::run`: collector thread, real
//! shipper with its backoff, real disk spool) in this process, with a source that
//! records each round it generated, so that what the agents generated can be compared
//! with what Postgres holds, by (host, GPU, ts). The faults are real: the postmaster of
//! a cluster of the test's own is killed with SIGKILL and started again; a `rackwatch
//! serve` process is killed with SIGKILL and started again; a TCP proxy between agents
//! and server stalls connections, resets them mid-body and adds latency.
//!
//! The short versions run in `./scripts/test`; `./scripts/bench faults` runs the same
//! scenarios at the issue's scale (`faults_benchmark`, ignored in tests) and prints the
//! figures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::shipper::Shipper;
use rackwatch::collect::{Collected, Source};
use rackwatch::model::{GpuInfo, GpuSample, HostInfo, HostSample};
use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use rackwatch::store::{create_database_if_missing, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{cluster_root, free_port, test_config, TestApp};

/// A source that makes one host sample and one sample per GPU each round, and writes
/// down the round's time: what the agent generated.
struct Counted {
    gpus: u8,
    rounds: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl Source for Counted {
    fn name(&self) -> &'static str {
        "counted"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        out.host_samples.push(HostSample {
            ts: now,
            ..Default::default()
        });
        for index in 0..self.gpus {
            out.gpu_samples.push(GpuSample {
                ts: now,
                index,
                ..Default::default()
            });
            out.gpus.push(GpuInfo {
                index,
                ..Default::default()
            });
        }
        self.rounds.lock().unwrap().push(now);
    }
}

/// One counted agent.
struct Agent {
    host: String,
    rounds: Arc<Mutex<Vec<DateTime<Utc>>>>,
    task: JoinHandle<anyhow::Result<Shipper>>,
}

/// A fleet of counted agents shipping to one server.
struct Fleet {
    gpus: u8,
    agents: Vec<Agent>,
    stop: watch::Sender<bool>,
    _spool: tempfile::TempDir,
}

impl Fleet {
    /// `hosts` agents of `gpus` GPUs each, collecting and shipping every `interval`.
    async fn start(
        store: &Store,
        server: &str,
        prefix: &str,
        hosts: usize,
        gpus: u8,
        interval: Duration,
    ) -> Fleet {
        let spool = tempfile::tempdir().unwrap();
        let (stop, rx) = watch::channel(false);
        let mut cfg = test_config("postgres://unused@localhost/none");
        // A stalled connection is given up after this long and the batch spooled.
        cfg.agent.request_timeout_secs = 3;
        let mut agents = Vec::new();
        for i in 0..hosts {
            let host = format!("{prefix}-{i:04}");
            let token = store.create_agent_token(&host, "faults").await.unwrap();
            let shipper =
                rackwatch::app::shipper(&cfg, server, &token, &spool.path().join(&host)).unwrap();
            let rounds = Arc::new(Mutex::new(Vec::new()));
            let source = Counted {
                gpus,
                rounds: rounds.clone(),
            };
            let identity = HostInfo {
                name: host.clone(),
                ..Default::default()
            };
            let task = tokio::spawn(agent::run(
                identity,
                vec![Box::new(source)],
                shipper,
                Timing {
                    interval,
                    ship_interval: interval,
                },
                rx.clone(),
            ));
            agents.push(Agent { host, rounds, task });
        }
        Fleet {
            gpus,
            agents,
            stop,
            _spool: spool,
        }
    }

    /// Samples generated so far.
    fn generated(&self) -> usize {
        self.agents
            .iter()
            .map(|a| a.rounds.lock().unwrap().len())
            .sum::<usize>()
            * (1 + self.gpus as usize)
    }

    /// Every (host, GPU or -1 for the host sample, ts in µs) generated so far.
    fn keys(&self) -> Vec<(String, i16, i64)> {
        let mut out = Vec::new();
        for a in &self.agents {
            for ts in a.rounds.lock().unwrap().iter() {
                let us = ts.timestamp_micros();
                out.push((a.host.clone(), -1, us));
                for g in 0..self.gpus {
                    out.push((a.host.clone(), i16::from(g), us));
                }
            }
        }
        out
    }

    /// Stop collecting, then let each agent deliver what it holds (the spool is drained
    /// until empty or `limit` passes). Returns the batches still spooled.
    async fn stop(mut self, limit: Duration) -> (Vec<(String, i16, i64)>, usize) {
        let _ = self.stop.send(true);
        // Each agent joins its collector thread before it returns: after this no round
        // is generated.
        let mut shippers = Vec::new();
        for a in &mut self.agents {
            shippers.push((&mut a.task).await.unwrap().unwrap());
        }
        let keys = self.keys();
        let deadline = Instant::now() + limit;
        let mut left = 0;
        for mut shipper in shippers {
            while shipper.pending() && Instant::now() < deadline {
                shipper.drain().await;
                if shipper.pending() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            left += shipper.spool.len();
        }
        (keys, left)
    }
}

/// Generated vs stored, by (host, GPU, ts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count {
    samples: usize,
    lost: usize,
    duplicated: usize,
}

async fn count(store: &Store, prefix: &str, generated: &[(String, i16, i64)]) -> Count {
    let rows: Vec<(String, i16, i64)> = sqlx::query_as(
        "SELECT h.name, -1::int2, (extract(epoch FROM s.ts) * 1000000)::int8
           FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name LIKE $1
         UNION ALL
         SELECT h.name, g.gpu_index::int2, (extract(epoch FROM g.ts) * 1000000)::int8
           FROM gpu_samples g JOIN hosts h ON h.id = g.host_id WHERE h.name LIKE $1",
    )
    .bind(format!("{prefix}-%"))
    .fetch_all(&store.pool)
    .await
    .unwrap();
    let mut stored: HashMap<(String, i16, i64), usize> = HashMap::new();
    for r in rows {
        *stored.entry(r).or_default() += 1;
    }
    let mut lost = 0;
    for k in generated {
        match stored.get_mut(k) {
            Some(n) if *n > 0 => *n -= 1,
            _ => lost += 1,
        }
    }
    // What is left stored beyond one row per generated sample: a second copy, or a row
    // no agent generated.
    let duplicated: usize = stored.values().sum();
    Count {
        samples: generated.len(),
        lost,
        duplicated,
    }
}

/// Seconds until every sample generated before `since` is stored (polls the database).
async fn replayed_after(
    store: &Store,
    fleet: &Fleet,
    prefix: &str,
    since: Instant,
    limit: Duration,
) -> f64 {
    let target = fleet.generated();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name LIKE $1)
                  + (SELECT count(*) FROM gpu_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name LIKE $1)",
        )
        .bind(format!("{prefix}-%"))
        .fetch_one(&store.pool)
        .await
        .unwrap_or(0);
        if n as usize >= target || since.elapsed() > limit {
            return since.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a probe saw while a fault was on: status codes, and whether each 503 said when
/// to come back.
#[derive(Debug, Default)]
struct Probe {
    statuses: Vec<u16>,
    unavailable_without_retry_after: usize,
    /// When the first 200 after the last non-200 arrived.
    back_at: Option<Instant>,
}

/// POST a small valid batch every 250 ms with its own token until `stop`.
fn probe(
    base: String,
    token: String,
    host: String,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Probe> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let mut p = Probe::default();
        let mut down = false;
        while !*stop.borrow() {
            let ts = Utc::now();
            let body = serde_json::json!({"host": {"name": host}, "host_samples": [{"ts": ts}]});
            let r = http
                .post(format!("{base}/api/v1/ingest"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) => {
                    let s = r.status().as_u16();
                    if s == 503 && r.headers().get("retry-after").is_none() {
                        p.unavailable_without_retry_after += 1;
                    }
                    if s == 200 && down {
                        p.back_at = Some(Instant::now());
                        down = false;
                    } else if s != 200 {
                        down = true;
                    }
                    p.statuses.push(s);
                }
                // The server itself is down: nothing answered.
                Err(_) => p.statuses.push(0),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        p
    })
}

/// A cluster of the test's own (the shared one must not be killed), with Postgres's
/// durable defaults: acknowledged data must survive the postmaster's death.
pub(crate) fn own_cluster(name: &str) -> (ManagedOptions, ManagedPostgres) {
    let root = cluster_root(name);
    let _ = std::fs::remove_dir_all(&root);
    let opts = ManagedOptions {
        root,
        bin_dir: String::new(),
        user: "postgres".into(),
        settings: vec!["max_connections=200".into()],
        own_adopted: true,
        port: rackwatch::store::managed::DEFAULT_PORT,
        standby_of: None,
    };
    let pg = ManagedPostgres::start(&opts).expect("starting the fault test's cluster");
    (opts, pg)
}

/// SIGKILL the postmaster (not a shutdown: no checkpoint, backends orphaned).
fn kill_postmaster(pg: &ManagedPostgres) {
    let pid: i32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// Start the killed cluster again (crash recovery replays its WAL). The orphaned
/// backends hold the shared memory until they notice and exit, so retry for a while.
fn restart(opts: &ManagedOptions) -> ManagedPostgres {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match ManagedPostgres::start(opts) {
            Ok(pg) => return pg,
            Err(e) if Instant::now() < until => {
                eprintln!("restarting Postgres: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("Postgres did not come back: {e}"),
        }
    }
}

/// Figures of the Postgres fault.
#[derive(Debug)]
struct PgFault {
    count: Count,
    /// From Postgres accepting connections to ingest answering 200 again.
    recovery_s: f64,
    /// From Postgres accepting connections until every sample generated before is stored.
    replay_s: f64,
    statuses: HashMap<u16, usize>,
}

/// Postgres killed under load: `hosts` × `gpus` at `interval`, down for `outage`.
async fn postgres_killed(hosts: usize, gpus: u8, interval: Duration, outage: Duration) -> PgFault {
    let (opts, pg) = tokio::task::spawn_blocking(|| own_cluster("faults-pg"))
        .await
        .unwrap();
    let url = pg.url_for("rw");
    create_database_if_missing(&pg.admin_url(), "rw")
        .await
        .unwrap();
    let s = Store::connect(&url, 2, 10).await.unwrap();
    s.migrate().await.unwrap();
    s.pool.close().await;
    let app = TestApp::spawn_on(url.clone(), |c| {
        c.database.max_connections = 16;
    })
    .await;
    let fleet = Fleet::start(&app.store, &app.base, "pgk", hosts, gpus, interval).await;
    let (stop_probe, rx) = watch::channel(false);
    let token = app.token("probe-pgk").await;
    let probe = probe(app.base.clone(), token, "probe-pgk".into(), rx);
    tokio::time::sleep(interval * 3).await;

    kill_postmaster(&pg);
    std::mem::forget(pg); // its process is gone; nothing to stop
    tokio::time::sleep(outage).await;
    let pg = tokio::task::spawn_blocking(move || restart(&opts))
        .await
        .unwrap();
    let up = Instant::now();
    let replay_s = replayed_after(&app.store, &fleet, "pgk", up, Duration::from_secs(120)).await;
    tokio::time::sleep(interval * 3).await;
    let _ = stop_probe.send(true);
    let seen = probe.await.unwrap();
    let (keys, left) = fleet.stop(Duration::from_secs(60)).await;
    assert_eq!(left, 0, "batches still spooled after the drain");
    let count = count(&app.store, "pgk", &keys).await;
    app.stop().await;
    drop(pg);

    let mut statuses = HashMap::new();
    for s in &seen.statuses {
        *statuses.entry(*s).or_default() += 1;
    }
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "ingest answered only 200 or 503 while Postgres was down and back: {statuses:?}"
    );
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert_eq!(
        seen.unavailable_without_retry_after, 0,
        "a 503 without Retry-After"
    );
    let back = seen.back_at.expect("ingest answered 200 again");
    PgFault {
        count,
        recovery_s: back.saturating_duration_since(up).as_secs_f64(),
        replay_s,
        statuses,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_under_load_loses_nothing_and_ingest_answers_503_meanwhile() {
    let f = postgres_killed(4, 8, Duration::from_secs(1), Duration::from_secs(6)).await;
    eprintln!("{f:?}");
    assert!(f.count.samples >= 4 * 9 * 8, "{f:?}");
    assert_eq!(f.count.lost, 0, "{f:?}");
    assert_eq!(f.count.duplicated, 0, "{f:?}");
}

/// A `rackwatch serve` process on a fixed port.
pub(crate) fn serve(db_url: &str, port: u16, dir: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    for _ in 0..900 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server at {base} did not come up");
}

/// Figures of the server fault.
#[derive(Debug)]
struct ServerFault {
    count: Count,
    /// From the server answering again until the backlog is stored.
    replay_s: f64,
    /// From the server answering again until a sample collected after its return is stored.
    fresh_s: f64,
}

/// The server killed (SIGKILL, or SIGSTOP for a frozen one) under load, down for `outage`.
async fn server_killed(
    hosts: usize,
    gpus: u8,
    interval: Duration,
    outage: Duration,
    signal: i32,
) -> ServerFault {
    let db = crate::support::fresh_database().await;
    let store = Store::connect(&db, 4, 10).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&db, port, dir.path());
    wait_ready(&base).await;
    let prefix = if signal == libc::SIGKILL {
        "srk"
    } else {
        "srs"
    };
    let fleet = Fleet::start(&store, &base, prefix, hosts, gpus, interval).await;
    tokio::time::sleep(interval * 3).await;

    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    tokio::time::sleep(outage).await;
    if signal == libc::SIGKILL {
        let _ = child.wait();
        child = serve(&db, port, dir.path());
        wait_ready(&base).await;
    } else {
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGCONT) }, 0);
    }
    let up = Instant::now();
    let fresh_since = Utc::now();
    let replay_s = replayed_after(&store, &fleet, prefix, up, Duration::from_secs(180)).await;
    // Fresh data: a round collected after the return, stored.
    let fresh_s = loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id
              WHERE h.name LIKE $1 AND s.ts >= $2",
        )
        .bind(format!("{prefix}-%"))
        .bind(fresh_since)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        if n > 0 || up.elapsed() > Duration::from_secs(120) {
            break up.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(interval * 2).await;
    let (keys, left) = fleet.stop(Duration::from_secs(60)).await;
    assert_eq!(left, 0, "batches still spooled after the drain");
    let count = count(&store, prefix, &keys).await;
    let _ = child.kill();
    let _ = child.wait();
    ServerFault {
        count,
        replay_s,
        fresh_s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_killed_and_frozen_under_load_loses_nothing() {
    for signal in [libc::SIGKILL, libc::SIGSTOP] {
        let f = server_killed(4, 8, Duration::from_secs(1), Duration::from_secs(8), signal).await;
        eprintln!("signal {signal}: {f:?}");
        assert!(f.count.samples >= 4 * 9 * 10, "{f:?}");
        assert_eq!(f.count.lost, 0, "{f:?}");
        assert_eq!(f.count.duplicated, 0, "{f:?}");
    }
}

/// Drop a connection the hard way: no lingering (RST on close), and both directions
/// shut so that every reader of it wakes up.
fn abort(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// What the proxy does to connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Swallow what the client sends, forward nothing, answer nothing.
    Stall = 1,
    /// Forward part of the next request, then reset the connection (RST) mid-request.
    Reset = 2,
    /// Forward, holding every chunk from the server for the latency first.
    Slow = 3,
}

/// A TCP proxy in front of `upstream` whose [`Mode`] can be switched at any time. The
/// mode is read at every chunk, so connections kept alive by the agents' HTTP clients
/// meet the fault too.
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
}

impl Proxy {
    pub async fn start(upstream: String, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, m) = (upstream.clone(), m.clone());
                tokio::spawn(async move {
                    let _ = Proxy::serve(client, &upstream, m, latency).await;
                });
            }
        });
        Proxy { port, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    async fn serve(
        client: TcpStream,
        upstream: &str,
        mode: Arc<AtomicU8>,
        latency: Duration,
    ) -> std::io::Result<()> {
        let server = TcpStream::connect(upstream).await?;
        let client = client.into_std()?;
        let server = server.into_std()?;
        // Clones to reset both sockets from either direction.
        let (c2, s2) = (client.try_clone()?, server.try_clone()?);
        let (mut cr, mut cw) = TcpStream::from_std(client)?.into_split();
        let (mut sr, mut sw) = TcpStream::from_std(server)?.into_split();
        let m = mode.clone();
        let up = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            let mut stalled = false;
            loop {
                let n = cr.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                let mode = m.load(Ordering::SeqCst);
                if stalled || mode == Mode::Stall as u8 {
                    // Once stalled, the connection stays stalled until the client gives up.
                    stalled = true;
                    continue;
                }
                if mode == Mode::Reset as u8 {
                    sw.write_all(&buf[..n / 2]).await?;
                    for s in [&c2, &s2] {
                        abort(s);
                    }
                    return Ok(());
                }
                sw.write_all(&buf[..n]).await?;
            }
        });
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if mode.load(Ordering::SeqCst) == Mode::Slow as u8 {
                tokio::time::sleep(latency).await;
            }
            cw.write_all(&buf[..n]).await?;
        }
        up.abort();
        Ok(())
    }
}

/// Figures of the network faults.
#[derive(Debug)]
struct NetFault {
    count: Count,
}

/// Agents behind the proxy; each mode in turn for `each`, then back to passing. With
/// a `latency` over the agents' request timeout (3 s), the server stores batches whose
/// answers the agents never see: they send them again, and the keys store them once.
async fn network_faults(
    hosts: usize,
    gpus: u8,
    interval: Duration,
    each: Duration,
    latency: Duration,
) -> NetFault {
    let app = TestApp::spawn().await;
    let upstream = app.base.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(upstream, latency).await;
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let fleet = Fleet::start(&app.store, &via, "net", hosts, gpus, interval).await;
    for mode in [Mode::Stall, Mode::Pass, Mode::Reset, Mode::Pass, Mode::Slow] {
        proxy.set(mode);
        tokio::time::sleep(each).await;
    }
    proxy.set(Mode::Pass);
    let (keys, left) = fleet.stop(Duration::from_secs(60)).await;
    assert_eq!(left, 0, "batches still spooled after the drain");
    let count = count(&app.store, "net", &keys).await;
    app.stop().await;
    NetFault { count }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_reset_and_slow_connections_lose_and_duplicate_nothing() {
    let f = network_faults(
        4,
        8,
        Duration::from_secs(1),
        Duration::from_secs(6),
        Duration::from_secs(4),
    )
    .await;
    eprintln!("{f:?}");
    assert!(f.count.samples >= 4 * 9 * 20, "{f:?}");
    assert_eq!(f.count.lost, 0, "{f:?}");
    assert_eq!(f.count.duplicated, 0, "{f:?}");
}

/// Figures of the agent-kill scenario.
#[derive(Debug)]
struct AgentKills {
    kills: usize,
    /// Host samples stored from all the lives.
    stored: usize,
    /// Kills after which a torn spool write (`.tmp`) was found.
    torn_writes: usize,
    /// Spool files damaged on purpose (truncated to half) between lives.
    damaged: usize,
    /// Files found set aside in `rejected/` at the end, and log lines saying so.
    set_aside: usize,
    logged: usize,
    /// The longest time between a kill and the last sample of that life stored (or in a
    /// damaged file): what the agent held in memory.
    worst_loss_s: f64,
    /// Lives whose loss exceeded the bound, or whose samples have a hole inside.
    beyond_bound: Vec<String>,
}

/// Seconds of samples a killed agent may lose with 1-second collection and shipping: the
/// batch being collected (`ship_interval`), the one being shipped or spooled (one interval),
/// and a second of scheduling slack. docs/reliability.md states the general bound.
const AGENT_LOSS_BOUND_S: f64 = 3.0;

/// A real `rackwatch agent` process (the machine's own CPU, memory, disk and network
/// source; 1 s collection and shipping) SIGKILLed `kills` times at random points of its
/// life (0.5-6 s after it started) and started again each time on the same spool. For the
/// first half the server cannot be reached, so every batch goes through the spool and the
/// kills land among spool writes; every fifth of those lives ends with the newest spool
/// file cut in half (a torn or damaged file). Then the server is reachable: the spool is
/// replayed while the kills go on. Every life's samples must be stored up to the bound
/// before its kill, no damaged file may block the replay, and each one is set aside with
/// a log line.
async fn agent_killed(kills: usize, seed: u64) -> AgentKills {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let app = TestApp::spawn().await;
    let host = "killed-0000";
    let token = app.store.create_agent_token(host, "faults").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let log_path = dir.path().join("agent.log");
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let spawn = |server: &str| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .arg("agent")
            .arg("--data-dir")
            .arg(dir.path())
            .env("RACKWATCH_AGENT__SERVER", server)
            .env("RACKWATCH_AGENT__TOKEN", &token)
            .env("RACKWATCH_AGENT__HOST__NAME", host)
            .env("RACKWATCH_AGENT__INTERVAL_SECS", "1")
            .env("RACKWATCH_AGENT__SHIP_INTERVAL_SECS", "1")
            .env("RACKWATCH_AGENT__SPOOL_DIR", &spool)
            .env("RACKWATCH_AGENT__KERNEL_LOG", "off")
            .env("RACKWATCH_AGENT__NVML_LIB_PATH", "off")
            .env("RACKWATCH_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let batch_files = |d: &Path, ext: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p: &std::path::PathBuf| p.to_string_lossy().ends_with(ext));
        v.sort();
        v
    };
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    // (start, kill) of every life, in µs of the wall clock the agent stamps samples with.
    let mut lives: Vec<(i64, i64)> = Vec::new();
    let mut damaged_ts: Vec<i64> = Vec::new();
    let (mut torn_writes, mut damaged) = (0, 0);
    for i in 0..kills {
        let server = if i < kills / 2 {
            unreachable.as_str()
        } else {
            app.base.as_str()
        };
        let start = micros(Utc::now());
        let mut child = spawn(server);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..6000))).await;
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
        let killed = micros(Utc::now());
        child.wait().unwrap();
        lives.push((start, killed));
        if !batch_files(&spool, ".tmp").is_empty() {
            torn_writes += 1;
        }
        if i < kills / 2 && i % 5 == 4 {
            if let Some(newest) = batch_files(&spool, ".json").pop() {
                let data = std::fs::read(&newest).unwrap();
                let b: rackwatch::model::Batch = serde_json::from_slice(&data).unwrap();
                damaged_ts.extend(b.host_samples.iter().map(|s| micros(s.ts)));
                std::fs::write(&newest, &data[..data.len() / 2]).unwrap();
                damaged += 1;
            }
        }
    }
    // A last life that replays whatever is left, then stops the same way.
    let start = micros(Utc::now());
    let mut child = spawn(&app.base);
    let t0 = Instant::now();
    while !batch_files(&spool, ".json").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the spool still holds {:?} after 60 s",
            batch_files(&spool, ".json")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    lives.push((start, micros(Utc::now())));
    child.wait().unwrap();

    // Read on a connection of its own: the server's pool had requests cut off by the kills
    // (once, a pooled connection answered out of step: "expected ParseComplete, got
    // ReadyForQuery"), and what is checked here is what the database holds.
    let mut check = app.store.dedicated_connection().await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM s.ts) * 1000000)::int8
           FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = $1 ORDER BY 1",
    )
    .bind(host)
    .fetch_all(&mut check)
    .await
    .unwrap();
    app.stop().await;
    for t in &damaged_ts {
        assert!(
            stored.binary_search(t).is_err(),
            "a damaged batch's sample at {t} was stored"
        );
    }
    let mut seen: Vec<i64> = stored.iter().chain(&damaged_ts).copied().collect();
    seen.sort_unstable();
    for t in &seen {
        assert!(
            lives.iter().any(|(a, b)| a <= t && t <= b),
            "sample at {t} µs falls outside every life of the agent"
        );
    }
    let (mut worst_loss_s, mut beyond_bound) = (0.0f64, Vec::new());
    // The last life was stopped after its replay, not at a random point.
    for (n, &(start, killed)) in lives.iter().enumerate().take(kills) {
        let own: Vec<i64> = seen
            .iter()
            .copied()
            .filter(|t| *t >= start && *t <= killed)
            .collect();
        let secs = |us: i64| us as f64 / 1e6;
        let hole = own
            .windows(2)
            .map(|w| secs(w[1] - w[0]))
            .fold(0.0, f64::max);
        // Time from the kill back to the last sample kept; a life too short to have shipped
        // anything counts from its start.
        let loss = secs(killed - own.last().copied().unwrap_or(start));
        worst_loss_s = worst_loss_s.max(loss);
        if hole > 1.5 || loss > AGENT_LOSS_BOUND_S {
            beyond_bound.push(format!(
                "life {n}: {:.2} s long, {} samples, hole {hole:.2} s, lost the last {loss:.2} s",
                secs(killed - start),
                own.len()
            ));
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    AgentKills {
        kills,
        stored: stored.len(),
        torn_writes,
        damaged,
        set_aside: batch_files(&spool.join("rejected"), ".json").len(),
        logged: log.matches("is unreadable").count(),
        worst_loss_s,
        beyond_bound,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_again_and_again_loses_only_what_it_held_and_damaged_spool_files_never_block_replay(
) {
    let seed = rand::random::<u64>();
    let k = agent_killed(20, seed).await;
    eprintln!("seed {seed}: {k:?}");
    assert!(k.beyond_bound.is_empty(), "seed {seed}: {k:?}");
    assert_eq!(k.damaged, 2, "{k:?}");
    assert_eq!(k.set_aside, k.damaged, "{k:?}");
    assert_eq!(k.logged, k.damaged, "{k:?}");
    assert!(k.stored >= 20, "{k:?}");
}

/// The figures at the issue's scale (`./scripts/bench faults`): 4 agents × 8 GPUs at
/// 1 s with Postgres down 30 s; 100 agents with the server down (`BENCH_FAULTS_OUTAGE_S`,
/// default 600 s as the issue asks); the network faults for 20 s each.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: ./scripts/bench faults"]
async fn faults_benchmark() {
    let knob = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let pg_outage = Duration::from_secs(knob("BENCH_FAULTS_PG_OUTAGE_S", 30));
    let srv_outage = Duration::from_secs(knob("BENCH_FAULTS_OUTAGE_S", 600));
    let srv_hosts = knob("BENCH_FAULTS_HOSTS", 100) as usize;
    let net_each = Duration::from_secs(knob("BENCH_FAULTS_NET_S", 20));

    let pg = postgres_killed(4, 8, Duration::from_secs(1), pg_outage).await;
    println!(
        "postgres SIGKILL for {} s, 4 agents x 8 GPUs at 1 s: {:?}; ingest back {:.2} s after Postgres accepted connections; backlog stored after {:.2} s; ingest answers {:?}",
        pg_outage.as_secs(), pg.count, pg.recovery_s, pg.replay_s, pg.statuses
    );
    let srv = server_killed(
        srv_hosts,
        8,
        Duration::from_secs(5),
        srv_outage,
        libc::SIGKILL,
    )
    .await;
    println!(
        "server SIGKILL for {} s, {srv_hosts} agents x 8 GPUs at 5 s: {:?}; backlog stored {:.2} s after the server's return; fresh data {:.2} s after",
        srv_outage.as_secs(), srv.count, srv.replay_s, srv.fresh_s
    );
    let stop = server_killed(4, 8, Duration::from_secs(1), pg_outage, libc::SIGSTOP).await;
    println!(
        "server SIGSTOP for {} s, 4 agents x 8 GPUs at 1 s: {:?}; backlog stored {:.2} s after SIGCONT",
        pg_outage.as_secs(),
        stop.count,
        stop.replay_s
    );
    let net = network_faults(
        4,
        8,
        Duration::from_secs(1),
        net_each,
        Duration::from_secs(10),
    )
    .await;
    println!(
        "proxy stall / reset mid-request / 10 s latency, {} s each: {:?}",
        net_each.as_secs(),
        net.count
    );
    let kills = knob("BENCH_FAULTS_AGENT_KILLS", 50) as usize;
    let seed = rand::random::<u64>();
    let ak = agent_killed(kills, seed).await;
    println!(
        "rackwatch agent SIGKILLed {kills} times (seed {seed}): {} host samples stored; worst loss {:.2} s before a kill (bound {AGENT_LOSS_BOUND_S} s); {} torn spool writes found; {} spool files damaged, {} set aside, {} logged; beyond the bound: {:?}",
        ak.stored, ak.worst_loss_s, ak.torn_writes, ak.damaged, ak.set_aside, ak.logged, ak.beyond_bound
    );
    let fo = leader_failover().await;
    println!(
        "job leader SIGKILLed: the other replica led after {:.2} s; the fault raised meanwhile was mailed {} time(s)",
        fo.failover_s, fo.mails_per_fault
    );
    let all = [pg.count, srv.count, stop.count, net.count];
    let sum = |f: fn(&Count) -> usize| all.iter().map(f).sum::<usize>();
    println!(
        "BENCH faults samples={} lost={} duplicated={} pg_recovery_s={:.2} replay_s={:.2} fresh_s={:.2} failover_s={:.2} mails_per_fault={} agent_kills={} agent_worst_loss_s={:.2} agent_beyond_bound={} spool_set_aside={}/{}",
        sum(|c| c.samples),
        sum(|c| c.lost),
        sum(|c| c.duplicated),
        pg.recovery_s,
        srv.replay_s,
        srv.fresh_s,
        fo.failover_s,
        fo.mails_per_fault,
        ak.kills,
        ak.worst_loss_s,
        ak.beyond_bound.len(),
        ak.set_aside,
        ak.damaged,
    );
}

const XID_RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"
resolve_after_secs = 3600

[[route]]
to = ["oncall@example.com"]
"#;

/// A `rackwatch serve` replica with alerting to `smtp_port`.
fn replica(
    db_url: &str,
    port: u16,
    dir: &Path,
    rules: &Path,
    smtp_port: u16,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_LOG", "warn")
        .env(
            "RACKWATCH_SERVER__METRICS_TOKEN",
            crate::support::METRICS_TOKEN,
        )
        .env("RACKWATCH_ALERTING__RULES_FILE", rules)
        .env("RACKWATCH_ALERTING__EVAL_INTERVAL_SECS", "1")
        .env("RACKWATCH_ALERTING__GROUP_WAIT_SECS", "1")
        .env("RACKWATCH_ALERTING__GROUP_INTERVAL_SECS", "0")
        .env("RACKWATCH_ALERTING__SMTP__HOST", "127.0.0.1")
        .env("RACKWATCH_ALERTING__SMTP__PORT", smtp_port.to_string())
        .env("RACKWATCH_ALERTING__SMTP__SECURITY", "plain")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn is_leader(http: &reqwest::Client, base: &str) -> bool {
    let Ok(r) = http
        .get(format!("{base}/metrics"))
        .bearer_auth(crate::support::METRICS_TOKEN)
        .send()
        .await
    else {
        return false;
    };
    r.text()
        .await
        .unwrap_or_default()
        .contains("rackwatch_job_leader 1")
}

fn xid(host: &str) -> serde_json::Value {
    let ts = Utc::now() - chrono::Duration::seconds(1);
    serde_json::json!({"host": {"name": host},
        "host_samples": [{"ts": ts}],
        "events": [{"ts": ts, "index": 2, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus"}]})
}

/// Figures of the leader failover.
#[derive(Debug)]
struct Failover {
    /// From SIGKILL of the leader until the other replica leads.
    failover_s: f64,
    /// Mails for the fault raised during the failover.
    mails_per_fault: usize,
    /// Mails in all (one before the kill, one for the fault during it).
    mails: usize,
}

/// Two replicas on one database; the leader is SIGKILLed and a hardware fault arrives
/// at the other one at once.
async fn leader_failover() -> Failover {
    let smtp = crate::support::SmtpServer::start().await;
    let db = crate::support::fresh_database().await;
    let store = Store::connect(&db, 2, 10).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, XID_RULES).unwrap();
    let ports = [free_port(), free_port()];
    let bases = ports.map(|p| format!("http://127.0.0.1:{p}"));
    // One after the other, as a rolling deployment starts them.
    let mut children = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let d = dir.path().join(format!("r{i}"));
        children.push(replica(&db, *p, &d, &rules, smtp.port));
        wait_ready(&bases[i]).await;
    }
    let http = reqwest::Client::new();
    let mut leader = None;
    for _ in 0..100 {
        for (i, b) in bases.iter().enumerate() {
            if is_leader(&http, b).await {
                leader = Some(i);
            }
        }
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = leader.expect("one replica leads");
    let other = 1 - leader;
    let ingest = |base: &str, token: &str, host: &str| {
        http.post(format!("{base}/api/v1/ingest"))
            .bearer_auth(token)
            .json(&xid(host))
            .send()
    };
    let t1 = store
        .create_agent_token("fo-before", "faults")
        .await
        .unwrap();
    let t2 = store
        .create_agent_token("fo-during", "faults")
        .await
        .unwrap();
    let r = ingest(&bases[other], &t1, "fo-before").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        smtp.wait_for(1, 30).await.len(),
        1,
        "the first fault is mailed"
    );

    let killed = Instant::now();
    assert_eq!(
        unsafe { libc::kill(children[leader].id() as i32, libc::SIGKILL) },
        0
    );
    let _ = children[leader].wait();
    let r = ingest(&bases[other], &t2, "fo-during").await.unwrap();
    assert_eq!(r.status(), 200);
    let mut failover_s = f64::NAN;
    for _ in 0..600 {
        if is_leader(&http, &bases[other]).await {
            failover_s = killed.elapsed().as_secs_f64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failover_s.is_finite(), "the other replica never took over");
    smtp.wait_for(2, 30).await;
    // Long enough for a second mail of the same fault to show up, if one were sent.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mails = smtp.mails();
    let mails_per_fault = mails.iter().filter(|m| m.contains("fo-during")).count();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    store.pool.close().await;
    Failover {
        failover_s,
        mails_per_fault,
        mails: mails.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_leader_killed_hands_over_and_a_fault_meanwhile_is_mailed_once() {
    let f = leader_failover().await;
    eprintln!("{f:?}");
    assert_eq!(f.mails_per_fault, 1, "{f:?}");
    assert_eq!(f.mails, 2, "{f:?}");
}
