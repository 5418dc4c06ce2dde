//! `/metrics/fleet` exposition: the newest sample of every GPU and host as Prometheus text
//! (dcgm-exporter names and labels), for a fleet of BENCH_HOSTS hosts × 8 GPUs (default
//! 1,250 → 10,000 GPUs). The latest tables are filled through the real write path (one
//! minute of 5-second samples per host, XID events on 1 % of the GPUs).
//!
//! Server time is the handler's work, SQL and text, timed in process (`render`) over
//! BENCH_ROUNDS rounds (default 20); the full HTTP scrape on loopback (token auth, the
//! body on the wire) is timed next to it. The limit: 10,000 GPUs in ≤ 100 ms.
//!
//! Run with `./scripts/bench exposition`.

mod common;
use common::{env, pct};

use std::sync::Arc;
use std::time::Instant;

use chrono::{DurationRound, Utc};
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::model::{Batch, HardwareEvent};
use rackwatch::web::fleet_metrics::{render, LabelStyle};

fn main() {
    common::block_on(run());
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 1250);
    let rounds = env("BENCH_ROUNDS", 20).max(1);
    let gpus = 8u32;

    let root = std::env::temp_dir().join(format!("rackwatch-bench-expo-{}", std::process::id()));
    let common::BenchDb { mut pg, store, url } =
        common::start_db(root.clone(), common::BULK_LOAD, 16).await;
    let now = Utc::now();
    store.ensure_partitions(now, 2, 1).await.unwrap();

    let t_load = Instant::now();
    let end = now.duration_trunc(chrono::Duration::seconds(5)).unwrap();
    let mut fleet = SimulatedHost::fleet(hosts as u32, gpus);
    let mut xids = 0;
    for (k, h) in fleet.iter_mut().enumerate() {
        let c = h.history(
            end - chrono::Duration::minutes(1),
            end,
            chrono::Duration::seconds(5),
        );
        let mut events = c.events;
        if k % 12 == 0 {
            events.push(HardwareEvent {
                ts: end - chrono::Duration::seconds(30),
                index: Some((k % 8) as u8),
                kind: "xid".into(),
                code: Some(79),
                message: "GPU has fallen off the bus".into(),
                count: None,
            });
        }
        xids += events.iter().filter(|e| e.kind == "xid").count();
        let b = Batch {
            host: h.info.clone(),
            gpus: c.gpus,
            host_samples: c.host_samples,
            gpu_samples: c.gpu_samples,
            events,
            ..Default::default()
        };
        store.write_batch(&b, now).await.unwrap();
    }
    sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
    println!(
        "fleet: {hosts} hosts × {gpus} GPUs, one minute of 5 s samples each, {xids} XID events ({:.1} s to load)",
        t_load.elapsed().as_secs_f64()
    );

    // Server time: the handler's SQL and text, in process.
    let stale = chrono::Duration::minutes(5);
    let first = render(&store, Utc::now(), stale, LabelStyle::Dcgm)
        .await
        .unwrap();
    let exposed = first
        .lines()
        .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{"))
        .count();
    assert_eq!(exposed, hosts * gpus as usize, "every GPU exposed");
    let bytes = first.len();
    let mut server = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let out = render(&store, Utc::now(), stale, LabelStyle::Dcgm)
            .await
            .unwrap();
        server.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.len(), bytes);
    }
    server.sort_by(f64::total_cmp);

    // The full scrape over HTTP on loopback, as Prometheus does it.
    let mut cfg = common::server_config(&url, 8);
    cfg.server.metrics_token = rackwatch::config::Secret::new("bench-scrape");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let srv = rackwatch::app::start_server(Arc::new(cfg), store.clone(), stop_rx)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut http = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let body = client
            .get(format!("http://{}/metrics/fleet", srv.addr))
            .bearer_auth("bench-scrape")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        http.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(body.len(), bytes);
    }
    http.sort_by(f64::total_cmp);
    drop(stop);

    let ms = pct(&server, 0.5);
    println!(
        "server time (SQL + text), {rounds} rounds: p50 {ms:.1} ms, p95 {:.1} ms, max {:.1} ms",
        pct(&server, 0.95),
        server[server.len() - 1]
    );
    println!(
        "HTTP scrape on loopback: p50 {:.1} ms, p95 {:.1} ms; {bytes} bytes, {} lines",
        pct(&http, 0.5),
        pct(&http, 0.95),
        first.lines().count()
    );
    println!(
        "limit 100 ms for 10,000 GPUs: p50 is {:.2}x the limit",
        ms / 100.0 * (10_000.0 / exposed as f64)
    );
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(root);
    println!(
        "BENCH exposition gpus={exposed} ms={ms:.1} p95_ms={:.1} http_ms={:.1} bytes={bytes} ratio_to_limit={:.2}",
        pct(&server, 0.95),
        pct(&http, 0.5),
        ms / 100.0
    );
}
