//! Ingest throughput: GPU rows per second through the real HTTP ingest path (gzip JSON,
//! token auth, validation, idempotent write) into Postgres, next to a raw `COPY` of the
//! same rows into the same tables, in one run on the same cluster: text-format COPY (the
//! reference the goal is stated against) and binary-format COPY encoded as ingest does.
//! The HTTP run is repeated over HTTPS (`server.tls`): `tls_ratio` is GPU rows/s over
//! TLS ÷ over plain HTTP (goal ≥ 0.9).
//!
//! The same GPU and host samples also go through Prometheus remote write
//! (`POST /api/v1/write`, dcgm-exporter and node_exporter names, snappy protobuf, at most
//! 2,000 samples per request as Prometheus sends them): `remote_write_ratio` is its GPU
//! rows per second over HTTP ingest's.
//!
//! Run with `./scripts/bench ingest`. Sizes can be changed with BENCH_HOSTS,
//! BENCH_SAMPLES (per GPU per batch), BENCH_ROUNDS and BENCH_CLIENTS.

mod common;
use common::{env, gzip};

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rackwatch::config::{Config, Secret};
use rackwatch::store::samples::{
    encode_gpu_rows, encode_gpu_rows_binary, encode_host_rows, encode_host_rows_binary,
    gpu_columns, host_columns,
};
use rackwatch::store::Store;
use tokio::sync::{watch, Semaphore};

async fn truncate(store: &Store) {
    sqlx::query("TRUNCATE host_samples, gpu_samples, hardware_events")
        .execute(&store.pool)
        .await
        .unwrap();
}

fn main() {
    common::block_on(run());
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 100);
    let samples = env("BENCH_SAMPLES", 60);
    let rounds = env("BENCH_ROUNDS", 10);
    let clients = env("BENCH_CLIENTS", 4);
    let gpus = 8;

    let root = std::env::temp_dir().join(format!("rackwatch-bench-{}", std::process::id()));
    let common::BenchDb { mut pg, store, url } = common::start_db(root.clone(), &[], 16).await;
    store.ensure_partitions(Utc::now(), 7, 3).await.unwrap();

    let (fleet, batches, gpu_rows, host_rows) =
        common::fleet_batches(hosts, gpus, samples, rounds, "");

    // --- HTTP ingest, plain and over TLS ------------------------------------------
    // Two servers on the same store, one on plain HTTP and one on HTTPS (a certificate
    // from a throwaway CA, the agent trusting that CA as with agent.tls.ca_file). Runs
    // alternate, twice each, so a warm-up or a burst of other work does not favour one.
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(url.clone());
    let pki = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = throwaway_ca(pki.path());
    let mut tls_cfg = cfg.clone();
    tls_cfg.server.tls.cert_file = cert.display().to_string();
    tls_cfg.server.tls.key_file = key.display().to_string();
    let (_stop, stop_rx) = watch::channel(false);
    let server = rackwatch::app::start_server(Arc::new(cfg), store.clone(), stop_rx.clone())
        .await
        .unwrap();
    let tls_server = rackwatch::app::start_server(Arc::new(tls_cfg), store.clone(), stop_rx)
        .await
        .unwrap();
    let mut tokens = std::collections::HashMap::new();
    for h in &fleet {
        tokens.insert(
            h.info.name.clone(),
            store
                .create_agent_token(&h.info.name, "bench")
                .await
                .unwrap(),
        );
    }
    // Bodies are encoded before the clock starts: this measures the server, not the client.
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        batches
            .iter()
            .map(|b| {
                (
                    tokens[&b.host.name].clone(),
                    gzip(&serde_json::to_vec(b).unwrap()),
                )
            })
            .collect(),
    );
    let wire: usize = bodies.iter().map(|b| b.1.len()).sum();
    // A connection per batch, as agents make (they ship every ship_interval_secs and drop
    // idle connections after 4 s): over TLS each batch pays a full handshake.
    let plain_client = rackwatch::collect::shipper::client(&Default::default())
        .unwrap()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let tls_client = rackwatch::collect::shipper::client(&rackwatch::config::AgentTls {
        ca_file: ca_pem.display().to_string(),
        ..Default::default()
    })
    .unwrap()
    .pool_max_idle_per_host(0)
    .timeout(Duration::from_secs(120))
    .build()
    .unwrap();
    let sem = Arc::new(Semaphore::new(clients));
    let (mut plain_s, mut tls_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        for (secs, client, base) in [
            (&mut plain_s, &plain_client, server.url()),
            (&mut tls_s, &tls_client, tls_server.url()),
        ] {
            truncate(&store).await;
            let s = http_ingest(client, &base, &bodies, &sem).await;
            assert_eq!(s.1 as usize, gpu_rows + host_rows, "every row stored");
            *secs = secs.min(s.0);
        }
    }
    let ingest_s = plain_s;
    let ingest_rps = gpu_rows as f64 / ingest_s;
    let tls_rps = gpu_rows as f64 / tls_s;
    let tls_ratio = tls_rps / ingest_rps;
    println!(
        "http ingest: {clients} concurrent clients, a connection per batch, {:.1} MB gzip on the wire, {ingest_s:.2} s → {ingest_rps:.0} GPU rows/s ({:.0} per core on {} cores; best of 2)",
        wire as f64 / 1e6,
        ingest_rps / cores(),
        cores()
    );
    println!(
        "https ingest: the same over TLS (rustls, ring; a handshake per batch), {tls_s:.2} s → {tls_rps:.0} GPU rows/s; TLS / plain = {tls_ratio:.2} (goal ≥ 0.9)"
    );

    // --- raw COPY of the same rows ---------------------------------------------------
    // The reference peer: a text-format COPY of every column, each batch's host
    // and GPU rows in one transaction. Ingest writes binary COPY of the columns a batch
    // has, so that COPY of the same rows, encoded by ingest's own encoder, is measured
    // too: the floor ingest itself cannot go below.
    let host_ids: std::collections::HashMap<String, i64> =
        sqlx::query_as("SELECT name, id FROM hosts")
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    // (host columns, host rows, GPU columns, GPU rows) per batch.
    type Rows = (String, Vec<u8>, String, Vec<u8>);
    let (text, binary): (Vec<Rows>, Vec<Rows>) = batches
        .iter()
        .map(|b| {
            let id = host_ids[&b.host.name];
            let (mut h, mut g) = (String::new(), String::new());
            encode_host_rows(id, &b.host_samples, &mut h);
            encode_gpu_rows(id, &b.gpu_samples, &mut g);
            let (mut hb, mut gb) = (Vec::new(), Vec::new());
            let hc = encode_host_rows_binary(id, &b.host_samples, &mut hb);
            let gc = encode_gpu_rows_binary(id, &b.gpu_samples, &mut gb);
            (
                (
                    host_columns().to_string(),
                    h.into_bytes(),
                    gpu_columns().to_string(),
                    g.into_bytes(),
                ),
                (hc, hb, gc, gb),
            )
        })
        .unzip();
    truncate(&store).await;
    let copy_s = raw_copy(&store, &sem, text, "").await;
    let copy_rps = gpu_rows as f64 / copy_s;
    truncate(&store).await;
    let bin_s = raw_copy(&store, &sem, binary, " (FORMAT binary)").await;
    let bin_rps = gpu_rows as f64 / bin_s;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(n as usize, gpu_rows);
    println!(
        "raw COPY:    {clients} concurrent connections, {copy_s:.2} s → {copy_rps:.0} GPU rows/s (text format, the reference)"
    );
    println!(
        "raw COPY:    {clients} concurrent connections, {bin_s:.2} s → {bin_rps:.0} GPU rows/s (binary format, as ingest writes)"
    );
    let ratio = ingest_rps / copy_rps;
    let ratio_bin = ingest_rps / bin_rps;
    println!("ratio http ingest / raw text COPY = {ratio:.2} (goal ≥ 0.75); / raw binary COPY = {ratio_bin:.2}");
    truncate(&store).await;
    let rw_rps = remote_write::run(&store, &server.addr, &batches, &sem, gpu_rows).await;
    let rw_ratio = rw_rps / ingest_rps;
    println!("ratio remote write / http ingest = {rw_ratio:.2} (GPU rows per second)");

    store.pool.close().await;
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    println!("BENCH ingest rows_per_s={ingest_rps:.0} copy_rows_per_s={copy_rps:.0} ratio_vs_copy={ratio:.2} binary_copy_rows_per_s={bin_rps:.0} ratio_vs_binary_copy={ratio_bin:.2} tls_rows_per_s={tls_rps:.0} tls_ratio={tls_ratio:.2} remote_write_ratio={rw_ratio:.2}");
}

/// POST every body to `base`'s ingest, as many at once as there are permits; the seconds
/// it took and the rows stored.
async fn http_ingest(
    client: &reqwest::Client,
    base: &str,
    bodies: &Arc<Vec<(String, Vec<u8>)>>,
    sem: &Arc<Semaphore>,
) -> (f64, u64) {
    // Warm-up: one small request (connection, token cache of the pool).
    let _ = client.get(format!("{base}/healthz")).send().await;
    let endpoint = format!("{base}/api/v1/ingest");
    let t0 = Instant::now();
    let stored = common::post_batches(client, &endpoint, bodies.iter().cloned(), sem).await;
    (t0.elapsed().as_secs_f64(), stored)
}

/// A CA and a server certificate for 127.0.0.1 signed by it, written to `dir`: the
/// paths of the CA's certificate, the server's certificate and its key.
fn throwaway_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::os::unix::fs::PermissionsExt as _;
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

/// COPY pre-encoded host and GPU rows (each with its column list), one transaction per
/// batch, as many at once as the ingest clients were; returns the seconds it took.
async fn raw_copy(
    store: &Store,
    sem: &Arc<Semaphore>,
    data: Vec<(String, Vec<u8>, String, Vec<u8>)>,
    format: &'static str,
) -> f64 {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (hc, h, gc, g) in data {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let pool = store.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            for (table, cols, data) in [("host_samples", hc, h), ("gpu_samples", gc, g)] {
                let mut copy = tx
                    .copy_in_raw(&format!("COPY {table} ({cols}) FROM STDIN{format}"))
                    .await
                    .unwrap();
                copy.send(data).await.unwrap();
                copy.finish().await.unwrap();
            }
            tx.commit().await.unwrap();
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed().as_secs_f64()
}

fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// The bench's samples as Prometheus remote-writes them.
mod remote_write {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use prost::Message as _;
    use rackwatch::ingest::remote_write::proto::{Label, Sample, TimeSeries, WriteRequest};
    use rackwatch::model::metrics::{dcgm_field, Sample as _, GPU_METRICS};
    use rackwatch::model::Batch;
    use rackwatch::store::auth::WriteScope;
    use rackwatch::store::Store;
    use tokio::sync::Semaphore;

    /// Prometheus's `queue_config.max_samples_per_send` (2,000 since 2.51).
    const PER_REQUEST: usize = 2000;

    fn series(labels: Vec<(&str, String)>, samples: Vec<Sample>) -> TimeSeries {
        TimeSeries {
            labels: labels
                .into_iter()
                .map(|(name, value)| Label {
                    name: name.into(),
                    value,
                })
                .collect(),
            samples,
        }
    }

    /// A batch as dcgm-exporter's and node_exporter's series: one per GPU metric, and
    /// load and memory of the host.
    fn to_series(b: &Batch) -> Vec<TimeSeries> {
        let mut out = Vec::new();
        let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
        for g in &b.gpus {
            let rows: Vec<_> = b
                .gpu_samples
                .iter()
                .filter(|s| s.index == g.index)
                .collect();
            for (i, m) in GPU_METRICS.iter().enumerate() {
                let Some(f) = dcgm_field(m.name) else {
                    continue;
                };
                let samples: Vec<Sample> = rows
                    .iter()
                    .filter_map(|s| {
                        s.value(i).as_f64().map(|v| Sample {
                            value: v * f.scale,
                            timestamp: ms(s.ts),
                        })
                    })
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                out.push(series(
                    vec![
                        ("__name__", f.name.into()),
                        ("Hostname", b.host.name.clone()),
                        ("gpu", g.index.to_string()),
                        ("UUID", g.uuid.clone().unwrap_or_default()),
                        ("modelName", g.model.clone().unwrap_or_default()),
                    ],
                    samples,
                ));
            }
        }
        let host = |name: &str, f: &dyn Fn(&rackwatch::model::HostSample) -> Option<f64>| {
            let samples: Vec<Sample> = b
                .host_samples
                .iter()
                .filter_map(|s| {
                    f(s).map(|v| Sample {
                        value: v,
                        timestamp: ms(s.ts),
                    })
                })
                .collect();
            series(
                vec![
                    ("__name__", name.into()),
                    ("instance", format!("{}:9100", b.host.name)),
                ],
                samples,
            )
        };
        out.push(host("node_load1", &|s| s.load1));
        out.push(host("node_memory_MemTotal_bytes", &|s| {
            s.mem_total_bytes.map(|v| v as f64)
        }));
        out.push(host("node_memory_MemAvailable_bytes", &|s| {
            Some(s.mem_total_bytes? as f64 - s.mem_used_bytes? as f64)
        }));
        out.retain(|s| !s.samples.is_empty());
        out
    }

    /// Requests of at most [`PER_REQUEST`] samples, series split where they overflow.
    fn requests(series: Vec<TimeSeries>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut req = WriteRequest::default();
        let mut n = 0;
        for mut s in series {
            while !s.samples.is_empty() {
                let take = (PER_REQUEST - n).min(s.samples.len());
                let rest = s.samples.split_off(take);
                n += take;
                req.timeseries.push(TimeSeries {
                    labels: s.labels.clone(),
                    samples: std::mem::replace(&mut s.samples, rest),
                });
                if n == PER_REQUEST {
                    out.push(std::mem::take(&mut req));
                    n = 0;
                }
            }
        }
        if n > 0 {
            out.push(req);
        }
        out.into_iter()
            .map(|r| {
                snap::raw::Encoder::new()
                    .compress_vec(&r.encode_to_vec())
                    .unwrap()
            })
            .collect()
    }

    /// Remote-write `batches` with the ingest clients' concurrency; GPU rows per second.
    pub async fn run(
        store: &Store,
        addr: &SocketAddr,
        batches: &[Batch],
        sem: &Arc<Semaphore>,
        gpu_rows: usize,
    ) -> f64 {
        let mut hosts: Vec<String> = batches.iter().map(|b| b.host.name.clone()).collect();
        hosts.sort();
        hosts.dedup();
        let token = store
            .create_write_token(&WriteScope::Hosts(hosts), "bench")
            .await
            .unwrap();
        // Encoded before the clock starts, like the ingest bodies.
        let bodies: Vec<Vec<u8>> = batches
            .iter()
            .flat_map(|b| requests(to_series(b)))
            .collect();
        let samples: usize = batches
            .iter()
            .map(|b| to_series(b).iter().map(|s| s.samples.len()).sum::<usize>())
            .sum();
        let wire: usize = bodies.iter().map(Vec::len).sum();
        let endpoint = format!("http://{addr}/api/v1/write");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let requests = bodies.len();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for body in bodies {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (client, endpoint, token) = (client.clone(), endpoint.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(&endpoint)
                    .bearer_auth(token)
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "snappy")
                    .header("x-prometheus-remote-write-version", "0.1.0")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            n as usize, gpu_rows,
            "every GPU row stored through remote write"
        );
        let rps = gpu_rows as f64 / secs;
        println!(
            "remote write: {requests} requests, {samples} samples, {:.1} MB snappy on the wire, {secs:.2} s → {rps:.0} GPU rows/s ({:.0} samples/s)",
            wire as f64 / 1e6,
            samples as f64 / secs
        );
        rps
    }
}
