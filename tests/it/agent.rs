//! The agent pipeline end to end: collector thread, shipper, disk spool, real server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::collect::{Collected, Source};
use tokio::sync::watch;

use crate::support::{fresh_database, TestApp};

/// A simulated host that remembers every timestamp it produced.
struct Recording {
    inner: SimulatedHost,
    seen: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl Source for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        self.seen.lock().unwrap().push(now);
        self.inner.collect(now, out);
    }
}

#[tokio::test]
async fn agent_spools_while_the_server_is_down_and_delivers_everything_once() {
    let db_url = fresh_database().await;
    // Reserve a port, then leave it closed: the server is "down".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = rackwatch::store::Store::connect(&db_url, 2, 5)
        .await
        .unwrap();
    let mut host = SimulatedHost::fleet(1, 2).pop().unwrap();
    host.info.name = "spool-test".into();
    let token = store
        .create_agent_token("spool-test", "test")
        .await
        .unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::test_config(&db_url);
    let shipper = rackwatch::app::shipper(
        &cfg,
        &format!("http://127.0.0.1:{port}"),
        &token,
        spool_dir.path(),
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = Recording {
        inner: host,
        seen: seen.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let timing = Timing {
        interval: Duration::from_millis(100),
        ship_interval: Duration::from_millis(200),
    };
    let identity = source.inner.info.clone();
    let agent = tokio::spawn(agent::run(
        identity,
        vec![Box::new(source)],
        shipper,
        timing,
        stop_rx,
    ));

    let spooled = || {
        std::fs::read_dir(spool_dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
    };
    let down = std::time::Instant::now();
    while spooled() < 3 && down.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spooled() >= 3,
        "expected batches in the spool while the server is down, found {}",
        spooled()
    );

    // The server comes up on that port; the agent replays its spool (its retry waits up
    // to 5 s) and reports that it did with a later batch.
    let app = TestApp::spawn_on(db_url.clone(), |c| {
        c.server.listen = format!("127.0.0.1:{port}")
    })
    .await;
    let up = std::time::Instant::now();
    loop {
        let replayed: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT agent_stats FROM hosts WHERE name = 'spool-test'")
                .fetch_optional(&app.store.pool)
                .await
                .unwrap();
        let replayed = replayed
            .and_then(|s| s["replayed_batches_total"].as_u64())
            .unwrap_or(0);
        if (spooled() == 0 && replayed >= 2) || up.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let shipper = agent.await.unwrap().unwrap();
    assert!(
        !shipper.pending(),
        "spool should be drained, {} batches left",
        shipper.spool.len()
    );
    assert!(
        shipper.replayed_total >= 3,
        "replayed {}",
        shipper.replayed_total
    );

    let produced = seen.lock().unwrap().clone();
    let stored: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT s.ts FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = 'spool-test' ORDER BY s.ts",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(stored, produced, "every sample stored exactly once");
    let gpu_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(gpu_rows, produced.len() as i64 * 2);
    // The agent's spool state reached the server.
    let stats: serde_json::Value =
        sqlx::query_scalar("SELECT agent_stats FROM hosts WHERE name = 'spool-test'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert!(
        stats["replayed_batches_total"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    app.stop().await;
}

/// A stop (SIGTERM) while the server accepts connections and never answers: sampling
/// ends at once, the request in flight gets its short grace, and every sample taken is
/// in the spool for the next start, none twice.
#[tokio::test]
async fn an_agent_stops_in_seconds_while_the_server_hangs_and_spools_what_it_took() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let spool_dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::test_config("postgres://unused@localhost/none");
    cfg.agent.request_timeout_secs = 60;
    let shipper = rackwatch::app::shipper(
        &cfg,
        &format!("http://127.0.0.1:{port}"),
        "rwa_token",
        spool_dir.path(),
    )
    .unwrap();
    let mut host = SimulatedHost::fleet(1, 1).pop().unwrap();
    host.info.name = "hang-test".into();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = Recording {
        inner: host,
        seen: seen.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let identity = source.inner.info.clone();
    let agent = tokio::spawn(agent::run(
        identity,
        vec![Box::new(source)],
        shipper,
        Timing {
            interval: Duration::from_millis(100),
            ship_interval: Duration::from_millis(300),
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopped_at = Utc::now();
    let t0 = std::time::Instant::now();
    stop.send(true).unwrap();
    let shipper = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("the agent stopped")
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took < rackwatch::collect::shipper::SHUTDOWN_GRACE + Duration::from_millis(1500),
        "stopping took {took:?}"
    );
    let produced = seen.lock().unwrap().clone();
    assert!(produced.len() >= 5, "{produced:?}");
    let last = *produced.last().unwrap();
    assert!(
        last <= stopped_at + chrono::Duration::milliseconds(150),
        "sampled at {last} after the stop at {stopped_at}"
    );
    // Every sample taken waits in the spool, once.
    let mut spooled = Vec::new();
    let mut spool = shipper.spool;
    while let Some(Ok((seq, batch))) = spool.oldest() {
        spooled.extend(batch.host_samples.iter().map(|s| s.ts));
        spool.remove(seq);
    }
    assert_eq!(spooled, produced);
}

/// A source that fails on its third round, as a bug in a collector would.
struct Panicking(u32);

impl Source for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        self.0 += 1;
        assert!(self.0 < 3, "collector bug on round {}", self.0);
        out.host_samples.push(rackwatch::model::HostSample {
            ts: now,
            ..Default::default()
        });
    }
}

/// The ingest URL itself given as `agent.server` (the usual slip) is refused at start,
/// with the base URL to give instead; a reverse proxy's prefix is a base URL.
#[test]
fn the_api_path_in_the_server_url_is_refused_at_start() {
    let spool_dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::test_config("postgres://unused@localhost/none");
    let shipper = |url: &str| rackwatch::app::shipper(&cfg, url, "rwa_token", spool_dir.path());
    let e = shipper("http://127.0.0.1:9/api/v1/ingest")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("give the server's base URL (http://127.0.0.1:9), without the API's path"),
        "{e}"
    );
    assert!(shipper("http://127.0.0.1:9/rackwatch/").is_ok());
}

/// A collector that panics ends the agent with an error (the binary exits non-zero and
/// systemd restarts it), after what it collected is spooled.
#[tokio::test]
async fn a_collector_panic_ends_the_agent_with_an_error() {
    let spool_dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::test_config("postgres://unused@localhost/none");
    // Nothing listens on port 9 here: every batch goes to the spool.
    let shipper =
        rackwatch::app::shipper(&cfg, "http://127.0.0.1:9", "rwa_token", spool_dir.path()).unwrap();
    let identity = rackwatch::model::HostInfo {
        name: "panic-test".into(),
        ..Default::default()
    };
    let (_stop, stop_rx) = watch::channel(false);
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        agent::run(
            identity,
            vec![Box::new(Panicking(0))],
            shipper,
            Timing {
                interval: Duration::from_millis(50),
                ship_interval: Duration::from_millis(60),
            },
            stop_rx,
        ),
    )
    .await
    .expect("the agent ended")
    .err()
    .expect("the panic is an error")
    .to_string();
    assert!(
        err.contains("panic") && err.contains("collector bug on round 3"),
        "{err}"
    );
    let spool = rackwatch::collect::spool::Spool::open(spool_dir.path(), 1 << 20).unwrap();
    assert!(
        !spool.is_empty(),
        "the samples before the panic are spooled"
    );
}

#[tokio::test]
async fn a_replayed_spool_after_a_crash_does_not_duplicate() {
    // A crash between delivery and deleting the spool file replays a delivered batch.
    let app = TestApp::spawn().await;
    let token = app.token("crashy").await;
    let mut host = SimulatedHost::fleet(1, 1).pop().unwrap();
    host.info.name = "crashy".into();
    let now = Utc::now();
    let c = host.history(
        now - chrono::Duration::seconds(60),
        now,
        chrono::Duration::seconds(5),
    );
    let batch = rackwatch::model::Batch {
        host: host.info.clone(),
        host_samples: c.host_samples,
        gpu_samples: c.gpu_samples,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    shipper.ship(batch.clone()).await;
    shipper.spool.push(&batch).unwrap();
    assert!(shipper.drain().await);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM host_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(n, 12);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_batch_is_kept_for_inspection_not_retried_forever() {
    let app = TestApp::spawn().await;
    let token = app.token("odd").await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    // A host name with a control character is refused as a whole (400).
    let bad = rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: "odd\u{7}".into(),
            ..Default::default()
        },
        host_samples: vec![rackwatch::model::HostSample {
            ts: Utc::now(),
            ..Default::default()
        }],
        ..Default::default()
    };
    shipper.ship(bad).await;
    assert!(!shipper.pending());
    let kept = std::fs::read_dir(dir.path().join("rejected"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);
    app.stop().await;
}

/// A batch whose answer lists many rejected samples (an answer longer than a log line)
/// is delivered, not sent again and again.
#[tokio::test]
async fn a_batch_with_many_rejected_samples_is_delivered_once() {
    let app = TestApp::spawn().await;
    let token = app.token("hot").await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    let now = Utc::now();
    let sample = |s: i64, cpu: f64| rackwatch::model::HostSample {
        ts: now - chrono::Duration::seconds(s),
        cpu_util_pct: Some(cpu),
        ..Default::default()
    };
    let batch = rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: "hot".into(),
            ..Default::default()
        },
        // One good sample and eight out of range.
        host_samples: std::iter::once(sample(0, 12.0))
            .chain((1..=8).map(|s| sample(s, -4.0)))
            .collect(),
        ..Default::default()
    };
    shipper.ship(batch).await;
    assert!(!shipper.pending(), "delivered, not spooled for a retry");
    assert_eq!(shipper.delivered_total, 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM host_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.stop().await;
}

/// A server that answers the first `busy` requests 503 with `Retry-After: 2`, then 200;
/// it records when each request arrived.
async fn busy_server(busy: usize) -> (u16, Arc<Mutex<Vec<std::time::Instant>>>) {
    slow_server(busy, Duration::ZERO).await
}

/// [`busy_server`] whose every answer takes `delay`.
async fn slow_server(busy: usize, delay: Duration) -> (u16, Arc<Mutex<Vec<std::time::Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                // Read the headers and the body (Content-Length) of one request.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push(std::time::Instant::now());
                    l.len()
                };
                let resp = if n <= busy {
                    let body = r#"{"error":"the server is at its ingest concurrency limit; retry shortly"}"#;
                    format!("HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                } else {
                    let body = r#"{"accepted":1,"stored":1,"rejected":0,"errors":[]}"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                };
                tokio::time::sleep(delay).await;
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

/// A shipper to a fake server on this machine, spooling in `dir`.
fn shipper_to(port: u16, dir: &std::path::Path) -> rackwatch::collect::shipper::Shipper {
    let cfg = crate::support::test_config("postgres://unused@localhost/none");
    rackwatch::app::shipper(&cfg, &format!("http://127.0.0.1:{port}"), "rwa_token", dir).unwrap()
}

/// A batch of one host sample of `host`, `secs_ago` seconds ago.
fn one_sample(host: &str, secs_ago: i64) -> rackwatch::model::Batch {
    rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: host.into(),
            ..Default::default()
        },
        host_samples: vec![rackwatch::model::HostSample {
            ts: Utc::now() - chrono::Duration::seconds(secs_ago),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A long spool is replayed in slices of about a second, so the batches collected
/// meanwhile are taken (and spooled) between them instead of piling up in memory.
#[tokio::test]
async fn a_long_spool_is_replayed_in_slices() {
    let (port, seen) = slow_server(0, Duration::from_millis(250)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = shipper_to(port, dir.path());
    for s in 0..12 {
        shipper.spool.push(&one_sample("slow", s)).unwrap();
    }
    assert!(
        !shipper.drain().await,
        "one slice does not replay 12 × 250 ms"
    );
    let first = seen.lock().unwrap().len();
    assert!(
        (2..=6).contains(&first),
        "{first} batches in the first slice"
    );
    assert!(
        shipper.replay_now(),
        "the rest is replayed next, without a wait"
    );
    let t0 = std::time::Instant::now();
    while shipper.pending() && t0.elapsed() < Duration::from_secs(20) {
        shipper.drain().await;
    }
    assert!(!shipper.pending());
    assert_eq!(seen.lock().unwrap().len(), 12);
}

#[tokio::test]
async fn the_shipper_waits_as_long_as_a_busy_server_asks_and_then_delivers() {
    let (port, seen) = busy_server(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = shipper_to(port, dir.path());
    let batch = |s: i64| one_sample("busy", s);
    let start = std::time::Instant::now();
    shipper.ship(batch(2)).await;
    assert!(shipper.pending(), "a 503 keeps the batch in the spool");
    // Drain as the agent loop does (every 500 ms) until the spool is empty.
    while shipper.pending() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        shipper.drain().await;
    }
    assert!(!shipper.pending());
    let at = seen.lock().unwrap().clone();
    assert_eq!(at.len(), 3, "two refused attempts and one delivery");
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        // Retry-After: 2 is honoured (plus up to a fifth, the drain tick and a loaded
        // machine's scheduling; far from the backoff a 503 without it would cause).
        assert!(
            gap >= Duration::from_secs(2) && gap < Duration::from_millis(4000),
            "{gap:?}"
        );
    }
}

/// A batch over the server's size limit (413) is sent as halves, as many times as it
/// takes, and every sample is stored.
#[tokio::test]
async fn a_batch_over_the_size_limit_is_sent_in_halves() {
    let app = TestApp::spawn_full(fresh_database().await, |c| {
        c.server.max_body_bytes = 16 << 10;
        c.server.max_decompressed_bytes = 64 << 10;
    })
    .await;
    let token = app.token("wide").await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    let start = Utc::now() - chrono::Duration::minutes(30);
    let gpu_samples: Vec<rackwatch::model::GpuSample> = (0..3000)
        .map(|i| rackwatch::model::GpuSample {
            ts: start + chrono::Duration::milliseconds(i64::from(i / 8) * 1000),
            index: (i % 8) as u8,
            util_pct: Some(f64::from(i % 100)),
            ..Default::default()
        })
        .collect();
    let mut batch = one_sample("wide", 0);
    batch.gpu_samples = gpu_samples;
    shipper.ship(batch).await;
    let t0 = std::time::Instant::now();
    while shipper.pending() && t0.elapsed() < Duration::from_secs(30) {
        shipper.drain().await;
    }
    assert!(!shipper.pending());
    assert!(
        std::fs::read_dir(dir.path().join("rejected"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing set aside"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3000);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_for_another_host_goes_to_rejected_and_does_not_block_the_spool() {
    let app = TestApp::spawn().await;
    let token = app.token("gpu-17").await;
    let dir = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    let batch = |name: &str| rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: name.into(),
            ..Default::default()
        },
        host_samples: vec![rackwatch::model::HostSample {
            ts: Utc::now(),
            cpu_util_pct: Some(5.0),
            ..Default::default()
        }],
        ..Default::default()
    };
    // The agent reported the machine's hostname: 403, twice.
    shipper.ship(batch("build-box-3")).await;
    shipper.ship(batch("build-box-3")).await;
    assert!(
        !shipper.pending(),
        "a refused batch must not wait at the spool's head"
    );
    let wrong_host = dir.path().join(rackwatch::collect::spool::WRONG_HOST);
    assert_eq!(std::fs::read_dir(&wrong_host).unwrap().count(), 2);
    // With the host name fixed, the next batch is delivered at once.
    shipper.ship(batch("gpu-17")).await;
    assert!(!shipper.pending());
    let stored = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = 'gpu-17'",
        )
        .fetch_one(&app.store.pool)
        .await
        .unwrap()
    };
    assert_eq!(stored().await, 1);
    // The agent's next start sends the refused batches again, under the fixed name.
    drop(shipper);
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, dir.path()).unwrap();
    let fixed = rackwatch::model::HostInfo {
        name: "gpu-17".into(),
        ..Default::default()
    };
    assert_eq!(shipper.spool.requeue_wrong_host(&fixed).unwrap(), 2);
    assert!(shipper.drain().await);
    assert_eq!(std::fs::read_dir(&wrong_host).unwrap().count(), 0);
    assert_eq!(stored().await, 3);
    app.stop().await;
}

/// The README's agent install, copied as written: the `agent.toml` block, the token
/// file's lines and the foreground command, with the server's URL and the paths under a
/// temporary directory (as this user: no `rackwatch` user here). The machine's hostname
/// is not the token's host.
#[tokio::test]
async fn the_readme_agent_install_works_as_written() {
    let app = TestApp::spawn().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Installing the agent").unwrap()..];
    let block = |start: &str, end: &str| {
        let i = section.find(start).unwrap() + start.len();
        section[i..i + section[i..].find(end).unwrap()].to_string()
    };
    let toml = block("cat > /etc/rackwatch/agent.toml <<'TOML'\n", "TOML\n");
    let host = block("rackwatch token create --host ", " ");
    assert_ne!(host, rackwatch::collect::system::SystemSource::host_name());
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc").to_string_lossy().into_owned();
    let state = dir.path().join("state").to_string_lossy().into_owned();
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let local = |s: &str| {
        s.replace("https://rackwatch.example", &app.base)
            .replace("/var/lib/rackwatch-agent", &state)
            .replace("/etc/rackwatch", &etc)
    };
    let config = dir.path().join("etc/agent.toml");
    std::fs::write(&config, local(&toml)).unwrap();
    // The README's token lines as written (the group `rackwatch` aside: no such user here).
    let token = app.token(&host).await;
    let echo = "echo 'THE-PRINTED-TOKEN'";
    let chmod = "chmod 0640 ";
    for line in [
        format!("{echo}{}", block(echo, "\n")),
        format!("{chmod}{}", block(chmod, "\n")),
    ] {
        let line = local(&line).replace("THE-PRINTED-TOKEN", &token);
        let ok = std::process::Command::new("sh")
            .args(["-c", &line])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{line}");
    }
    // The foreground command, as the rackwatch user would run it.
    let run = "runuser -u rackwatch -- rackwatch ";
    let args = local(&block(run, "\n"));
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(args.split_whitespace())
        .current_dir(dir.path())
        .env("RACKWATCH_LOG", "warn")
        .env("RACKWATCH_AGENT__INTERVAL_SECS", "1")
        .env("RACKWATCH_AGENT__SHIP_INTERVAL_SECS", "1")
        .spawn()
        .unwrap();
    let mut n = 0i64;
    for _ in 0..100 {
        n = sqlx::query_scalar(
            "SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = $1",
        )
        .bind(&host)
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    assert!(n > 0, "no samples from {host}");
    // The spool is under the data directory the command names (the unit's
    // StateDirectory), not under the working directory.
    assert!(!dir.path().join("rackwatch-data").exists());
    assert!(dir.path().join("state/spool").is_dir());
    app.stop().await;
}

/// Two agent processes reporting as one host (a cloned VM with the same name and token):
/// their batches alternate, which the host page and the API name. One agent restarted
/// (a new process, the old one gone) is not two.
#[tokio::test]
async fn two_agents_reporting_as_one_host_are_named_a_restart_is_not() {
    let app = TestApp::spawn().await;
    let cookie = app.login("ops", "correct horse").await;
    let batch = |name: &str, at: chrono::DateTime<Utc>| rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: name.into(),
            ..Default::default()
        },
        host_samples: vec![rackwatch::model::HostSample {
            ts: at,
            cpu_util_pct: Some(10.0),
            ..Default::default()
        }],
        ..Default::default()
    };
    let page = |name: &'static str| {
        let app = &app;
        let cookie = cookie.clone();
        async move { app.page(&cookie, &format!("/hosts/{name}")).await.1 }
    };
    // A restart: the first process ships, stops; a second one takes over for good.
    let token = app.token("restarted").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let t0 = Utc::now() - chrono::Duration::seconds(30);
    let mut first = rackwatch::app::shipper(&app.cfg, &app.base, &token, dirs[0].path()).unwrap();
    first.ship(batch("restarted", t0)).await;
    drop(first);
    let mut second = rackwatch::app::shipper(&app.cfg, &app.base, &token, dirs[1].path()).unwrap();
    for k in 1..4 {
        second
            .ship(batch("restarted", t0 + chrono::Duration::seconds(5 * k)))
            .await;
    }
    let html = page("restarted").await;
    assert!(
        html.contains("<h1>restarted</h1>") && !html.contains("two-agents"),
        "{html}"
    );
    let host = app.json(&cookie, "/api/v1/hosts/restarted").await;
    assert!(host["host"]["two_agents_at"].is_null(), "{host}");

    // A clone: two processes with the same name and token, shipping in turn.
    let token = app.token("cloned").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = rackwatch::app::shipper(&app.cfg, &app.base, &token, dirs[0].path()).unwrap();
    let mut b = rackwatch::app::shipper(&app.cfg, &app.base, &token, dirs[1].path()).unwrap();
    a.ship(batch("cloned", t0)).await;
    b.ship(batch("cloned", t0 + chrono::Duration::seconds(1)))
        .await;
    let html = page("cloned").await;
    assert!(
        html.contains("<h1>cloned</h1>") && !html.contains("two-agents"),
        "one switch could be a restart: {html}"
    );
    a.ship(batch("cloned", t0 + chrono::Duration::seconds(5)))
        .await;
    let html = page("cloned").await;
    assert!(
        html.contains(r#"id="two-agents""#) && html.contains("Two agents report as this host"),
        "{html}"
    );
    let host = app.json(&cookie, "/api/v1/hosts/cloned").await;
    assert!(host["host"]["two_agents_at"].is_string(), "{host}");
    let metrics = app.metrics().await;
    for line in [
        "rackwatch_agent_two_agents{host=\"cloned\"} 1",
        "rackwatch_agent_two_agents{host=\"restarted\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    // A batch whose instance id is not sane text is stored without the agent's report.
    let r = app
        .ingest(
            &token,
            &serde_json::json!({"host": {"name": "cloned"},
                "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}],
                "agent": {"version": "1", "instance": "x".repeat(65)}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body.to_string()
            .contains("agent.instance is 65 characters long; at most 64 are allowed"),
        "{body}"
    );
    app.stop().await;
}
