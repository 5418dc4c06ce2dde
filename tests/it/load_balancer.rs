//! Two `rackwatch serve` processes on one database behind a real haproxy: an agent keeps
//! shipping through the load balancer while one server process is killed (SIGKILL), and
//! every sample it produced is stored exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::collect::{Collected, Source};
use tokio::sync::watch;

use crate::support::{citus, free_port, fresh_database, test_config, METRICS_TOKEN};

/// Child processes killed when the test ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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

fn haproxy_binary() -> String {
    if let Ok(p) = std::env::var("HAPROXY") {
        return p;
    }
    for p in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("haproxy is not installed (apt-get install haproxy; ./scripts/test installs it), or set HAPROXY");
}

fn serve(db_url: &str, port: u16, data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_DATABASE__DISTRIBUTED", citus().to_string())
        .env("RACKWATCH_SERVER__METRICS_TOKEN", METRICS_TOKEN)
        .env("RACKWATCH_DATA_DIR", data_dir)
        .env("RACKWATCH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_of(data_dir)).unwrap())
        .spawn()
        .unwrap()
}

/// Where a server process writes its log (next to its data directory).
fn log_of(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.with_extension("log")
}

async fn wait_healthy(http: &reqwest::Client, base: &str, log: Option<&std::path::Path>) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{base} never became healthy: {}",
            log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ingest requests a server process has handled, from its /metrics.
async fn ingest_requests(http: &reqwest::Client, base: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("rackwatch_ingest_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rackwatch_ingest_requests_total in {text}"))
}

#[tokio::test]
async fn agents_keep_shipping_through_haproxy_while_a_server_is_killed() {
    let haproxy = haproxy_binary();
    let db_url = fresh_database().await;
    let store = rackwatch::store::Store::connect(&db_url, 2, 5)
        .await
        .unwrap();
    let token = store.create_agent_token("lb-host", "test").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut procs = Children(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        procs
            .0
            .push(serve(&db_url, *port, &dir.path().join(format!("srv{i}"))));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let backends: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for (i, b) in backends.iter().enumerate() {
        let log = log_of(&dir.path().join(format!("srv{i}")));
        wait_healthy(&http, b, Some(&log)).await;
    }

    // The configuration of scripts/bench-db-failover: round robin, /healthz checks every
    // 200 ms, a dead server out after two failed checks, a refused connection retried on
    // the other server.
    let lb_port = free_port();
    let cfg = format!(
        "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n  retries 2\n  option redispatch\n\
         frontend rackwatch\n  bind 127.0.0.1:{lb_port}\n  default_backend servers\n\
         backend servers\n  balance roundrobin\n  option httpchk GET /healthz\n  http-check expect status 200\n  default-server inter 200ms fall 2 rise 2\n\
         server s1 127.0.0.1:{} check\n  server s2 127.0.0.1:{} check\n",
        ports[0], ports[1]
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    procs.0.push(
        Command::new(&haproxy)
            .args(["-db", "-f"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    wait_healthy(&http, &lb, None).await;

    // One agent through the load balancer: a sample every 100 ms, a batch every 200 ms.
    let mut cfg = test_config(&db_url);
    cfg.agent.ship_interval_secs = 1;
    let spool_dir = dir.path().join("spool");
    let shipper = rackwatch::app::shipper(&cfg, &lb, &token, &spool_dir).unwrap();
    let mut host = SimulatedHost::fleet(1, 2).pop().unwrap();
    host.info.name = "lb-host".into();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = Recording {
        inner: host,
        seen: seen.clone(),
    };
    let identity = source.inner.info.clone();
    let (stop, stop_rx) = watch::channel(false);
    let timing = Timing {
        interval: Duration::from_millis(100),
        ship_interval: Duration::from_millis(200),
    };
    let agent = tokio::spawn(agent::run(
        identity,
        vec![Box::new(source)],
        shipper,
        timing,
        stop_rx,
    ));

    // Both servers take batches before the kill.
    let t0 = Instant::now();
    loop {
        let a = ingest_requests(&http, &backends[0]).await;
        let b = ingest_requests(&http, &backends[1]).await;
        if a >= 2 && b >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "round robin never reached both servers ({a}, {b})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut killed = procs.0.remove(0);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let survivor_before = ingest_requests(&http, &backends[1]).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.send(true).unwrap();
    let shipper = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent drained its spool")
        .unwrap()
        .unwrap();
    assert!(
        !shipper.pending(),
        "{} batches left in the spool",
        shipper.spool.len()
    );
    let survivor_after = ingest_requests(&http, &backends[1]).await;
    assert!(
        survivor_after >= survivor_before + 5,
        "the surviving server took the load ({survivor_before} → {survivor_after} requests)"
    );

    let produced = seen.lock().unwrap().clone();
    assert!(produced.len() >= 30, "{} samples", produced.len());
    let stored: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT s.ts FROM host_samples s JOIN hosts h ON h.id = s.host_id
          WHERE h.name = 'lb-host' ORDER BY s.ts",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(stored, produced, "every sample stored exactly once");
    let gpu_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(gpu_rows, produced.len() as i64 * 2);
    store.pool.close().await;
    drop(procs);
}
