//! What every benchmark needs: knobs from the environment, a multi-threaded runtime, and
//! a Postgres cluster of its own with a migrated `bench` database.

#![allow(dead_code)] // each benchmark compiles its own copy and uses part of it

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use rackwatch::store::{create_database_if_missing, Store};

/// A numeric knob from the environment (`BENCH_…`), or its default.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run the benchmark's `main` future on a multi-threaded runtime.
pub fn block_on(f: impl Future<Output = ()>) {
    // The allocator settings of `rackwatch serve`, set as it sets them: before the runtime.
    rackwatch::alloc::tune();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// Server settings for a cluster that is bulk-loaded and then read by many clients.
pub const BULK_LOAD: &[&str] = &[
    "shared_buffers=1GB",
    "max_connections=200",
    "synchronous_commit=off",
    "max_wal_size=4GB",
    "checkpoint_timeout=30min",
];

/// A server configuration on the benchmark's database: a random loopback port and a
/// pool of `connections`.
pub fn server_config(url: &str, connections: u32) -> rackwatch::config::Config {
    let mut cfg = rackwatch::config::Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = rackwatch::config::Secret::new(url.to_string());
    cfg.database.max_connections = connections;
    cfg
}

/// A benchmark's own cluster and its migrated `bench` database.
pub struct BenchDb {
    pub pg: ManagedPostgres,
    pub store: Store,
    pub url: String,
}

/// Start a cluster under `root` with the given server `settings`, create and migrate the
/// `bench` database, and connect a pool of `pool` connections.
pub async fn start_db(root: PathBuf, settings: &[&str], pool: u32) -> BenchDb {
    let opts = ManagedOptions {
        root,
        bin_dir: String::new(),
        user: "postgres".into(),
        settings: settings.iter().map(|s| s.to_string()).collect(),
        own_adopted: true,
        port: rackwatch::store::managed::DEFAULT_PORT,
        standby_of: None,
    };
    let pg = tokio::task::spawn_blocking(move || ManagedPostgres::start(&opts))
        .await
        .unwrap()
        .expect("starting Postgres");
    create_database_if_missing(&pg.admin_url(), "bench")
        .await
        .unwrap();
    let url = pg.url_for("bench");
    let store = Store::connect(&url, pool, 30).await.unwrap();
    store.migrate().await.unwrap();
    BenchDb { pg, store, url }
}

/// The `p` quantile (0–1) of sorted values, NaN for none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Run `n` jobs on `clients` concurrent workers; returns sorted latencies in ms.
pub async fn load<F, Fut>(clients: usize, n: usize, job: F) -> Vec<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (job, next) = (job.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                job(i).await;
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    all
}

/// Sign in through the login form like a browser (CSRF cookie and field); returns a
/// client that keeps up to `clients` idle connections and the session cookie.
pub async fn login(
    base: &str,
    user: &str,
    password: &str,
    clients: usize,
) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let login = client.get(format!("{base}/login")).send().await.unwrap();
    let csrf_cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = login.text().await.unwrap();
    let key = "name=\"csrf\" value=\"";
    let i = html.find(key).unwrap() + key.len();
    let token = html[i..i + html[i..].find('"').unwrap()].to_string();
    let r = client
        .post(format!("{base}/login"))
        .header("cookie", csrf_cookie)
        .form(&[("username", user), ("password", password), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("rw_session="))
        .expect("signed in")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (client, cookie)
}

/// The real server on a random loopback port with a viewer `bench` signed in.
pub struct Served {
    pub base: String,
    pub client: reqwest::Client,
    pub cookie: String,
    pub server: rackwatch::app::RunningServer,
    /// Dropping it stops the server.
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// Start the server on `store` with `cfg` and sign a viewer in (see [`login`]).
pub async fn serve(cfg: Arc<rackwatch::config::Config>, store: &Store, clients: usize) -> Served {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = rackwatch::app::start_server(cfg, store.clone(), stop_rx)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    store
        .upsert_user(
            "bench",
            rackwatch::store::auth::Role::Viewer,
            "bench-password",
        )
        .await
        .unwrap();
    let (client, cookie) = login(&base, "bench", "bench-password", clients).await;
    Served {
        base,
        client,
        cookie,
        server,
        stop,
    }
}

/// Gzip a request body at the fast level, as agents send it.
pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A simulated fleet of `hosts` × `gpus` and its ingest batches: `rounds` windows of
/// `samples` 5-second steps for every host, oldest first, ending 5 s before now. Prints
/// the `data:` line with the row counts (and `extra`, when given) and returns
/// (fleet, batches, GPU rows, host rows).
pub fn fleet_batches(
    hosts: usize,
    gpus: usize,
    samples: usize,
    rounds: usize,
    extra: &str,
) -> (
    Vec<rackwatch::collect::simulator::SimulatedHost>,
    Vec<rackwatch::model::Batch>,
    usize,
    usize,
) {
    use chrono::DurationRound;
    let mut fleet = rackwatch::collect::simulator::SimulatedHost::fleet(hosts as u32, gpus as u32);
    let end = chrono::Utc::now()
        .duration_trunc(chrono::Duration::seconds(5))
        .unwrap()
        - chrono::Duration::seconds(5);
    let step = chrono::Duration::seconds(5);
    let span = step * samples as i32;
    let mut batches = Vec::new();
    for r in 0..rounds {
        let from = end - span * (rounds - r) as i32;
        for h in &mut fleet {
            let c = h.history(from, from + span, step);
            batches.push(rackwatch::model::Batch {
                host: h.info.clone(),
                gpus: c.gpus,
                host_samples: c.host_samples,
                gpu_samples: c.gpu_samples,
                events: vec![],
                agent: None,
            });
        }
    }
    let gpu_rows: usize = batches.iter().map(|b| b.gpu_samples.len()).sum();
    let host_rows: usize = batches.iter().map(|b| b.host_samples.len()).sum();
    println!(
        "data: {} batches ({hosts} hosts × {rounds} rounds), each {samples} samples × ({gpus} GPUs + host): {gpu_rows} GPU rows + {host_rows} host rows{extra}",
        batches.len()
    );
    (fleet, batches, gpu_rows, host_rows)
}

/// POST `(token, gzipped JSON batch)` pairs to an ingest endpoint, as many at once as `sem`
/// has permits; every answer must be 200. Returns the rows the server says it stored.
pub async fn post_batches(
    client: &reqwest::Client,
    endpoint: &str,
    bodies: impl IntoIterator<Item = (String, Vec<u8>)>,
    sem: &Arc<tokio::sync::Semaphore>,
) -> u64 {
    let mut tasks = Vec::new();
    for (token, body) in bodies {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, endpoint) = (client.clone(), endpoint.to_string());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(&endpoint)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            drop(permit);
            v["stored"].as_u64().unwrap()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap();
    }
    stored
}

/// Run one SQL statement of a bulk load and print what it did and how long it took.
pub async fn exec(store: &Store, what: &str, sql: &str) {
    let t = Instant::now();
    let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&store.pool)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .rows_affected();
    println!("  {what}: {n} rows ({:.1} s)", t.elapsed().as_secs_f64());
}

/// A fleet's inventory through the real write path: `hosts` hosts `node-00000…` of `gpus`
/// H100s each, in two sites (`dc0`, `dc1`), racks of `rack_hosts` (`r000…`) and `pools`
/// pools (`pool-000…`, host i in pool i mod `pools`).
pub async fn fleet_inventory(
    store: &Store,
    hosts: usize,
    pools: usize,
    gpus: u8,
    rack_hosts: usize,
    now: chrono::DateTime<chrono::Utc>,
) {
    let t = Instant::now();
    for i in 0..hosts {
        let b = rackwatch::model::Batch {
            host: rackwatch::model::HostInfo {
                name: format!("node-{i:05}"),
                site: format!("dc{}", i / (hosts / 2).max(1)),
                rack: format!("r{:03}", i / rack_hosts),
                pool: format!("pool-{:03}", i % pools),
                ..Default::default()
            },
            gpus: (0..gpus)
                .map(|g| rackwatch::model::GpuInfo {
                    index: g,
                    uuid: Some(format!("GPU-{i:05}-{g}")),
                    model: Some("NVIDIA H100 80GB HBM3".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        store.write_batch(&b, now).await.unwrap();
    }
    println!(
        "  inventory: {hosts} hosts ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
}

/// Quarter-hour host rollups in `[from, to)` with disk use (200 GB of 2 TB), growing by
/// 20 GB a day on one host in ten.
pub async fn host_quarters_with_disks(
    store: &Store,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) {
    let (s, e) = (from.to_rfc3339(), to.to_rfc3339());
    exec(
        store,
        "host 15-minute rollups with disks",
        &format!(
            "INSERT INTO host_samples_15m (host_id, bucket, samples, cpu_util_pct, disk_used_bytes, disk_total_bytes)
             SELECT h.id, q, 180, 40,
                    (200e9 + CASE WHEN h.id % 10 = 0 THEN 20e9 * extract(epoch FROM q - TIMESTAMPTZ '{s}') / 86400 ELSE 1e9 * random() END)::bigint,
                    2000000000000
               FROM hosts h, generate_series(TIMESTAMPTZ '{s}', TIMESTAMPTZ '{e}' - interval '15 minutes', interval '15 minutes') q"
        ),
    )
    .await;
}

/// After a bulk load: fresh planner statistics and a checkpoint, so the timed part neither
/// plans on empty tables nor pays for the load's writes.
pub async fn settle(store: &Store) {
    for sql in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&store.pool)
            .await
            .unwrap();
    }
}
