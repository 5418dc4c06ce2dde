//! Ingest into Citus next to single Postgres: GPU rows per second through the real HTTP
//! ingest path (gzip JSON, token auth, validation, idempotent write) into a coordinator
//! with `BENCH_WORKERS` workers (default 2), and into one Postgres, in the same run, with
//! the same pre-encoded bodies. Both targets run at default durability.
//!
//! On one machine every node shares the same cores, so this measures what Citus costs
//! (routing on the coordinator, two-phase commit, more processes), not what it scales to.
//! It also measures where the CPU goes per row, from the process accounting of each
//! cluster (a postmaster's own time plus its children's, reaped or alive): the
//! per-core figures docs/scale.md uses to work out N workers.
//!
//! Run with `./scripts/bench citus`. Sizes: BENCH_HOSTS, BENCH_SAMPLES (per GPU per
//! batch), BENCH_ROUNDS, BENCH_CLIENTS, BENCH_WORKERS, BENCH_REPEATS (runs of each
//! target, interleaved; the best of each is reported).

mod common;
use common::{env, gzip};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::config::{Config, Secret};
use rackwatch::store::citus::{self, LocalCluster, LocalClusterOptions};
use rackwatch::store::Store;
use sqlx::Connection;
use tokio::sync::{watch, Semaphore};

fn main() {
    common::block_on(run());
}

/// One ingest target: a store, a server in front of it, and the tokens of its hosts.
struct Target {
    name: &'static str,
    store: Store,
    endpoint: String,
    tokens: std::collections::HashMap<String, String>,
    /// Postmaster pids whose process trees are this target's database.
    postmasters: Vec<(String, u32)>,
    _stop: watch::Sender<bool>,
}

async fn target(
    name: &'static str,
    url: String,
    fleet: &[SimulatedHost],
    postmasters: Vec<(String, u32)>,
    distributed: bool,
) -> Target {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(url.clone());
    cfg.database.max_connections = 16;
    cfg.database.distributed = distributed;
    let db = rackwatch::store::Database::open(&cfg, rackwatch::store::Role::OneShot)
        .await
        .unwrap();
    let store = db.store;
    let cfg = Arc::new(cfg);
    let (stop, stop_rx) = watch::channel(false);
    let server = rackwatch::app::start_server(cfg.clone(), store.clone(), stop_rx)
        .await
        .unwrap();
    let mut tokens = std::collections::HashMap::new();
    for h in fleet {
        let t = store
            .create_agent_token(&h.info.name, "bench")
            .await
            .unwrap();
        tokens.insert(h.info.name.clone(), t);
    }
    Target {
        name,
        store,
        endpoint: format!("http://{}/api/v1/ingest", server.addr),
        tokens,
        postmasters,
        _stop: stop,
    }
}

/// CPU seconds (user + system) of a process and its children, reaped and alive.
fn tree_cpu(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let stat = |p: u32| -> Option<Vec<u64>> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        Some(
            rest.split(' ')
                .map(|f| f.parse::<u64>().unwrap_or(0))
                .collect(),
        )
    };
    let Some(own) = stat(pid) else { return 0.0 };
    // Fields after the command: state is [0]; utime [11], stime [12], cutime [13], cstime [14].
    let mut ticks = own[11] + own[12] + own[13] + own[14];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some(s) = stat(c) {
                ticks += s[11] + s[12];
            }
        }
    }
    ticks as f64 / tick
}

fn self_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One timed ingest of every body; returns (seconds, CPU seconds per postmaster, CPU of
/// this process).
async fn ingest(
    t: &Target,
    bodies: &[(String, Vec<u8>)],
    clients: usize,
    expect_rows: usize,
) -> (f64, Vec<f64>, f64) {
    sqlx::query("TRUNCATE host_samples, gpu_samples, hardware_events, host_latest, gpu_latest, rollup_dirty")
        .execute(&t.store.pool)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let sem = Arc::new(Semaphore::new(clients));
    let cpu0: Vec<f64> = t.postmasters.iter().map(|p| tree_cpu(p.1)).collect();
    let self0 = self_cpu();
    let t0 = Instant::now();
    let pairs = bodies
        .iter()
        .map(|(host, body)| (t.tokens[host].clone(), body.clone()));
    let stored = common::post_batches(&client, &t.endpoint, pairs, &sem).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = t
        .postmasters
        .iter()
        .zip(cpu0)
        .map(|(p, c0)| tree_cpu(p.1) - c0)
        .collect();
    assert_eq!(stored as usize, expect_rows, "{}: every row stored", t.name);
    (secs, cpu, self_cpu() - self0)
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 100);
    let samples = env("BENCH_SAMPLES", 60);
    let rounds = env("BENCH_ROUNDS", 10);
    let clients = env("BENCH_CLIENTS", 4);
    let workers = env("BENCH_WORKERS", 2);
    let repeats = env("BENCH_REPEATS", 2).max(1);
    let gpus = 8;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let root = std::env::temp_dir().join(format!("rackwatch-bench-citus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // Single Postgres, as the ingest benchmark runs it.
    let common::BenchDb { mut pg, store, url } =
        common::start_db(root.join("single"), &[], 16).await;
    store.pool.close().await;
    let single_pm = postmaster_pid(pg.data_dir());

    // The Citus cluster: same server settings plus Citus'.
    let mut opts = LocalClusterOptions::new(root.join("citus"), workers, 5432);
    opts.settings = vec!["max_connections=200".into()];
    // Extra node settings to try, separated by spaces (`citus.max_cached_conns_per_worker=4`).
    if let Ok(extra) = std::env::var("BENCH_CITUS_SET") {
        opts.settings
            .extend(extra.split_whitespace().map(String::from));
    }
    let mut cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts))
        .await
        .unwrap()
        .expect("starting the Citus cluster (./scripts/citus build installs Citus)");
    let nodes = cluster.nodes();
    nodes.create_database("bench").await.unwrap();
    let mut citus_pms = vec![(
        "coordinator".to_string(),
        postmaster_pid(cluster.coordinator.data_dir()),
    )];
    for (i, w) in cluster.workers.iter().enumerate() {
        citus_pms.push((format!("worker{}", i + 1), postmaster_pid(w.data_dir())));
    }

    let (fleet, batches, gpu_rows, host_rows) =
        common::fleet_batches(hosts, gpus, samples, rounds, &format!("; {cores} cores"));
    let bodies: Vec<(String, Vec<u8>)> = batches
        .iter()
        .map(|b| (b.host.name.clone(), gzip(&serde_json::to_vec(b).unwrap())))
        .collect();

    let single = target(
        "single",
        url,
        &fleet,
        vec![("single".into(), single_pm)],
        false,
    )
    .await;
    let dist = target("citus", nodes.url_for("bench"), &fleet, citus_pms, true).await;
    assert!(citus::is_distributed(&dist.store.pool).await.unwrap());

    let rows = gpu_rows + host_rows;
    let mut best: [Option<(f64, Vec<f64>, f64)>; 2] = [None, None];
    for r in 0..repeats {
        for (i, t) in [&single, &dist].into_iter().enumerate() {
            let m = ingest(t, &bodies, clients, rows).await;
            println!(
                "run {}: {:<6} {:.2} s → {:.0} GPU rows/s",
                r + 1,
                t.name,
                m.0,
                gpu_rows as f64 / m.0
            );
            if best[i].as_ref().is_none_or(|b| m.0 < b.0) {
                best[i] = Some(m);
            }
        }
    }
    // Rows really are spread over the workers.
    let per_node = citus::rows_per_node(&dist.store.pool, "gpu_samples")
        .await
        .unwrap();
    assert_eq!(per_node.len(), workers, "{per_node:?}");
    assert!(per_node.iter().all(|n| n.2 > 0), "{per_node:?}");
    let spread: Vec<String> = per_node
        .iter()
        .enumerate()
        .map(|(i, n)| format!("worker{}={}", i + 1, n.2))
        .collect();
    println!("gpu_samples per worker: {}", spread.join(" "));
    for n in nodes.all() {
        let mut c = sqlx::PgConnection::connect(&n.url_for("bench"))
            .await
            .unwrap();
        let (sessions, xacts): (i64, i64) = sqlx::query_as(
            "SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = 'bench'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        println!(
            "node port {}: {sessions} sessions opened, {xacts} transactions committed in all runs",
            n.port
        );
    }

    let [Some(s), Some(c)] = best else {
        unreachable!()
    };
    let single_rps = gpu_rows as f64 / s.0;
    let citus_rps = gpu_rows as f64 / c.0;
    let ratio = citus_rps / single_rps;
    // CPU per 1,000 GPU rows (each GPU row comes with 1/8 of a host row).
    let per_k = |cpu: f64| cpu / gpu_rows as f64 * 1e3 * 1e3;
    println!(
        "single Postgres: {single_rps:.0} GPU rows/s; CPU ms per 1,000 GPU rows: postgres {:.1}, rackwatch+client {:.1}",
        per_k(s.1[0]),
        per_k(s.2)
    );
    let nodes_cpu: Vec<String> = dist
        .postmasters
        .iter()
        .zip(&c.1)
        .map(|(p, cpu)| format!("{} {:.1}", p.0, per_k(*cpu)))
        .collect();
    println!(
        "citus ({workers} workers): {citus_rps:.0} GPU rows/s; CPU ms per 1,000 GPU rows: {}, rackwatch+client {:.1}",
        nodes_cpu.join(", "),
        per_k(c.2)
    );
    let worker_cpu: f64 = c.1[1..].iter().sum();
    println!(
        "per core: single {:.0} GPU rows/s per Postgres CPU-second; citus coordinator {:.0}, workers together {:.0}",
        gpu_rows as f64 / s.1[0],
        gpu_rows as f64 / c.1[0],
        gpu_rows as f64 / worker_cpu
    );
    println!(
        "ratio citus / single = {ratio:.2} (on {cores} shared cores this is Citus' overhead, not scale-out: every node runs on the same cores)"
    );

    drop(single);
    drop(dist);
    tokio::task::spawn_blocking(move || {
        cluster.stop().unwrap();
        pg.stop().unwrap();
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "BENCH citus workers={workers} rows_per_s={citus_rps:.0} single_rows_per_s={single_rps:.0} ratio={ratio:.2} coordinator_cpu_ms_per_krow={:.1} worker_cpu_ms_per_krow={:.1} single_cpu_ms_per_krow={:.1}",
        per_k(c.1[0]),
        per_k(worker_cpu),
        per_k(s.1[0])
    );
}
