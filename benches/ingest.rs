//! Ingest throughput: GPU rows per second through the real HTTP ingest path (gzip JSON,
//! token auth, validation, idempotent write) into Postgres, next to a raw `COPY` of the
//! same rows into the same tables, in one run on the same cluster: text-format COPY (the
//! reference the goal is stated against) and binary-format COPY encoded as ingest does.
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

    // --- HTTP ingest -------------------------------------------------------------
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(url.clone());
    let cfg = Arc::new(cfg);
    let (_stop, stop_rx) = watch::channel(false);
    let server = rackwatch::app::start_server(cfg.clone(), store.clone(), stop_rx)
        .await
        .unwrap();
    let endpoint = format!("http://{}/api/v1/ingest", server.addr);
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
    let bodies: Vec<(String, Vec<u8>)> = batches
        .iter()
        .map(|b| {
            (
                tokens[&b.host.name].clone(),
                gzip(&serde_json::to_vec(b).unwrap()),
            )
        })
        .collect();
    let wire: usize = bodies.iter().map(|b| b.1.len()).sum();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Warm-up: one small request (connection, token cache of the pool).
    let _ = client
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;

    let sem = Arc::new(Semaphore::new(clients));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (token, body) in bodies.into_iter() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, endpoint) = (client.clone(), endpoint.clone());
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
    let ingest_s = t0.elapsed().as_secs_f64();
    assert_eq!(stored as usize, gpu_rows + host_rows, "every row stored");
    let ingest_rps = gpu_rows as f64 / ingest_s;
    println!(
        "http ingest: {clients} concurrent clients, {:.1} MB gzip on the wire, {ingest_s:.2} s → {ingest_rps:.0} GPU rows/s ({:.0} per core on {} cores)",
        wire as f64 / 1e6,
        ingest_rps / cores(),
        cores()
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

    store.pool.close().await;
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    println!("BENCH ingest rows_per_s={ingest_rps:.0} copy_rows_per_s={copy_rps:.0} ratio_vs_copy={ratio:.2} binary_copy_rows_per_s={bin_rps:.0} ratio_vs_binary_copy={ratio_bin:.2}");
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
