//! Agents through a load balancer to several server replicas on a Postgres primary with a
//! synchronous standby; one server replica is killed, then the database primary. Counts
//! every sample the simulated agents generated against what is stored, by (host, ts) and
//! (host, GPU, ts), and times how long ingest was refused after the primary died.
//!
//! `scripts/bench-db-failover` sets up pg_auto_failover (monitor, primary, standby),
//! three `rackwatch serve` and haproxy, then runs this with:
//!
//! | variable | what |
//! |---|---|
//! | `FAILOVER_SERVER` | the load balancer's URL (agents and probes go there) |
//! | `FAILOVER_DB_URL` | the multi-host database URL (tokens, counting) |
//! | `FAILOVER_KILL_REPLICA` | shell command that kills one server replica (`kill -9`) |
//! | `FAILOVER_KILL_PRIMARY` | shell command that kills the database primary (`kill -9`) |
//! | `BENCH_HOSTS`, `BENCH_GPUS` | simulated agents (default 40 × 8 GPUs, 1 s interval) |
//! | `BENCH_KILL_REPLICA_AT`, `BENCH_KILL_PRIMARY_AT`, `BENCH_RUN_SECS` | timeline in seconds (10, 30, 80) |

mod common;
use common::env;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::shipper::Shipper;
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::collect::spool::Spool;
use rackwatch::collect::{Collected, Source};
use rackwatch::store::Store;
use tokio::sync::watch;

/// Every sample key the agents generated: (host, GPU or -1, µs since the epoch).
type Keys = Arc<Mutex<HashSet<(String, i16, i64)>>>;

/// A simulated host that remembers what it generated.
struct Counting {
    inner: SimulatedHost,
    keys: Keys,
}

impl Source for Counting {
    fn name(&self) -> &'static str {
        "simulator"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let mut c = Collected::default();
        self.inner.collect(now, &mut c);
        let name = &self.inner.info.name;
        let mut keys = self.keys.lock().unwrap();
        for s in &c.host_samples {
            keys.insert((name.clone(), -1, s.ts.timestamp_micros()));
        }
        for s in &c.gpu_samples {
            keys.insert((name.clone(), i16::from(s.index), s.ts.timestamp_micros()));
        }
        drop(keys);
        out.host_samples.extend(c.host_samples);
        out.gpu_samples.extend(c.gpu_samples);
        out.events.extend(c.events);
        out.gpus = c.gpus;
    }
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this through ./scripts/bench db-failover")
    })
}

fn main() {
    common::block_on(run());
}

/// What the probe saw: (seconds since start, HTTP status or 0 when unreachable).
type Probes = Arc<Mutex<Vec<(f64, u16)>>>;

async fn run() {
    let server = var("FAILOVER_SERVER");
    let db_url = var("FAILOVER_DB_URL");
    let kill_replica = var("FAILOVER_KILL_REPLICA");
    let kill_primary = var("FAILOVER_KILL_PRIMARY");
    let hosts = env("BENCH_HOSTS", 40);
    let gpus = env("BENCH_GPUS", 8);
    let replica_at = env("BENCH_KILL_REPLICA_AT", 10) as f64;
    let primary_at = env("BENCH_KILL_PRIMARY_AT", 30) as f64;
    let run_secs = env("BENCH_RUN_SECS", 80) as f64;

    let store = Store::connect(&db_url, 4, 10).await.unwrap();
    let spool_root =
        std::env::temp_dir().join(format!("rackwatch-failover-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_root);
    let keys: Keys = Default::default();
    let (stop, stop_rx) = watch::channel(false);
    let timing = Timing {
        interval: Duration::from_secs(1),
        ship_interval: Duration::from_secs(1),
    };
    let mut agents = Vec::new();
    for host in SimulatedHost::fleet(hosts as u32, gpus as u32) {
        let name = host.info.name.clone();
        let token = store.create_agent_token(&name, "failover").await.unwrap();
        let spool = Spool::open(&spool_root.join(&name), 256 << 20).unwrap();
        // The agent's defaults: 10 s request timeout, backoff capped at 5 s with jitter.
        let shipper = Shipper::new(
            &server,
            &token,
            spool,
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap();
        let identity = host.info.clone();
        let source = Counting {
            inner: host,
            keys: keys.clone(),
        };
        agents.push(tokio::spawn(agent::run(
            identity,
            vec![Box::new(source)],
            shipper,
            timing,
            stop_rx.clone(),
        )));
    }
    println!(
        "{hosts} agents × ({gpus} GPUs + host) at 1 s through {server}: {} samples/s",
        hosts * (gpus + 1)
    );

    // A probe: one tiny batch every 250 ms through the balancer (its own host), and the
    // login page, to time the outages as a client sees them.
    let t0 = Instant::now();
    let probe_token = store
        .create_agent_token("failover-probe", "failover")
        .await
        .unwrap();
    let probes: Probes = Default::default();
    let pages: Probes = Default::default();
    let probe = {
        let (probes, pages, server, mut stop) = (
            probes.clone(),
            pages.clone(),
            server.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            loop {
                let now = Utc::now();
                let body = serde_json::json!({"host": {"name": "failover-probe"},
                    "host_samples": [{"ts": now, "cpu_util_pct": 1.0}]});
                let status = client
                    .post(format!("{server}/api/v1/ingest"))
                    .bearer_auth(&probe_token)
                    .json(&body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                probes
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), status));
                let page = client
                    .get(format!("{server}/login"))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                pages
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), page));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    };

    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .expect("running a kill command");
        println!(
            "  $ {cmd}\n    {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    tokio::time::sleep(Duration::from_secs_f64(replica_at)).await;
    let replica_killed = t0.elapsed().as_secs_f64();
    println!("t={replica_killed:.1} s: killing one server replica");
    sh(&kill_replica);
    tokio::time::sleep(Duration::from_secs_f64(
        (primary_at - t0.elapsed().as_secs_f64()).max(0.0),
    ))
    .await;
    let primary_killed = t0.elapsed().as_secs_f64();
    println!("t={primary_killed:.1} s: killing the database primary");
    sh(&kill_primary);
    tokio::time::sleep(Duration::from_secs_f64(
        (run_secs - t0.elapsed().as_secs_f64()).max(0.0),
    ))
    .await;

    // Agents stop: each flushes what it collected (delivers or spools), then replays its
    // spool until empty.
    println!("t={:.1} s: stopping the agents", t0.elapsed().as_secs_f64());
    let _ = stop.send(true);
    let _ = probe.await;
    let mut shippers: Vec<Shipper> = Vec::new();
    for a in agents {
        shippers.push(a.await.unwrap().unwrap());
    }
    let drain_from = Instant::now();
    loop {
        let mut left = 0;
        for s in &mut shippers {
            if !s.drain().await {
                left += s.spool.len();
            }
        }
        if left == 0 {
            break;
        }
        assert!(
            drain_from.elapsed() < Duration::from_secs(300),
            "{left} batches still spooled after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let replayed: u64 = shippers.iter().map(|s| s.replayed_total).sum();
    let delivered: u64 = shippers.iter().map(|s| s.delivered_total).sum();
    let _ = std::fs::remove_dir_all(&spool_root);

    // Count: what was generated against what is stored.
    let generated = keys.lock().unwrap().clone();
    let stored_rows: Vec<(String, i16, DateTime<Utc>)> = sqlx::query_as(
        "SELECT h.name, -1::int2, s.ts FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name <> 'failover-probe'
         UNION ALL
         SELECT h.name, s.gpu_index, s.ts FROM gpu_samples s JOIN hosts h ON h.id = s.host_id",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    let stored: HashSet<(String, i16, i64)> = stored_rows
        .iter()
        .map(|(h, g, t)| (h.clone(), *g, t.timestamp_micros()))
        .collect();
    let duplicated = stored_rows.len() - stored.len();
    let lost = generated.difference(&stored).count();
    let extra = stored.difference(&generated).count();

    // The outages as the probe saw them.
    let outage = |p: &[(f64, u16)], from: f64, until: f64| -> (usize, f64) {
        let failed: Vec<f64> = p
            .iter()
            .filter(|(t, s)| *t >= from && *t < until && *s != 200)
            .map(|(t, _)| *t)
            .collect();
        let back = p
            .iter()
            .filter(|(t, s)| *t >= from && *s == 200)
            .find(|(t, _)| failed.last().is_none_or(|l| t > l))
            .map_or(f64::NAN, |(t, _)| t - from);
        (failed.len(), back)
    };
    let probes = probes.lock().unwrap().clone();
    let pages = pages.lock().unwrap().clone();
    let (replica_failed, _) = outage(&probes, replica_killed, primary_killed);
    let (replica_pages_failed, _) = outage(&pages, replica_killed, primary_killed);
    let (primary_failed, failover_s) = outage(&probes, primary_killed, run_secs);
    let (primary_pages_failed, pages_back_s) = outage(&pages, primary_killed, run_secs);
    println!(
        "replica killed: {replica_failed} of the probe's ingest requests and {replica_pages_failed} page requests failed (haproxy takes it out of rotation)"
    );
    println!(
        "primary killed: ingest refused for {failover_s:.1} s ({primary_failed} probe requests failed), pages back after {pages_back_s:.1} s ({primary_pages_failed} failed)"
    );
    println!(
        "samples generated {} stored {} lost {lost} duplicated {duplicated} stored-but-never-generated {extra}; batches delivered {delivered}, of them replayed from spools {replayed}",
        generated.len(),
        stored.len()
    );
    store.pool.close().await;
    println!(
        "BENCH db-failover samples={} lost={lost} duplicated={duplicated} failover_s={failover_s:.1} replayed_batches={replayed} replica_kill_failed_requests={replica_failed}",
        generated.len()
    );
}
