//! `./scripts/bench soak`: a `rackwatch serve` process with its jobs, fed by simulated
//! hosts at the agent interval and read by dashboard users, for minutes. Measures
//! errors, ingest latency, server memory growth after warm-up, table sizes and the jobs'
//! run times. Not a test (it asserts nothing, it reports); `BENCH_SOAK_MINUTES` (default
//! 30), `BENCH_SOAK_HOSTS` (default 1,250, 8 GPUs each), `BENCH_SOAK_READERS` (20).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rackwatch::store::Store;
use serde_json::json;

use crate::faults::{serve, wait_ready};
use crate::support::free_port;

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: ./scripts/bench soak"]
async fn soak_benchmark() {
    let knob = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let minutes = knob("BENCH_SOAK_MINUTES", 30);
    let hosts = knob("BENCH_SOAK_HOSTS", 1250) as usize;
    let readers = knob("BENCH_SOAK_READERS", 20) as usize;
    let interval = Duration::from_secs(5);
    let db = crate::support::fresh_database().await;
    let store = Store::connect(&db, 4, 10).await.unwrap();
    let mut tokens = Vec::new();
    for h in 0..hosts {
        let name = format!("soak-{h:05}");
        tokens.push((
            name.clone(),
            store.create_agent_token(&name, "soak").await.unwrap(),
        ));
    }
    store
        .upsert_user(
            "reader",
            rackwatch::store::auth::Role::Viewer,
            "reading password 1",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&db, port, dir.path());
    wait_ready(&base).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let cookie = crate::support::form_login(&http, &base, "reader", "reading password 1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let ingest_ms = Arc::new(Mutex::new(Vec::<f64>::new()));
    let read_ms = Arc::new(Mutex::new(Vec::<f64>::new()));
    let first_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    // Hosts that have shipped their first batch: readers start once every host exists,
    // as a host page is a 404 before its host's first batch.
    let shipped = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (name, token)) in tokens.into_iter().enumerate() {
        let (http, base, stop, errors, lat, firsts, shipped) = (
            http.clone(),
            base.clone(),
            stop.clone(),
            errors.clone(),
            ingest_ms.clone(),
            first_errors.clone(),
            shipped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            // Spread the hosts over the interval, as a real fleet is.
            tokio::time::sleep(interval * i as u32 / hosts as u32).await;
            let mut tick = tokio::time::interval(interval);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let ts = Utc::now();
                let body = json!({
                    "host": {"name": name, "site": "soak", "rack": format!("r{}", i / 40), "pool": "train"},
                    "host_samples": [{"ts": ts, "cpu_util_pct": 30.0, "load1": 4.0, "mem_used_bytes": 1u64 << 36, "mem_total_bytes": 1u64 << 40}],
                    "gpu_samples": (0..8).map(|g| json!({"ts": ts, "index": g, "util_pct": 50.0 + g as f64, "power_watts": 500.0, "temp_celsius": 60.0, "energy_joules_total": ts.timestamp() as f64 * 500.0})).collect::<Vec<_>>(),
                });
                let t = Instant::now();
                let r = http.post(format!("{base}/api/v1/ingest")).bearer_auth(&token).json(&body).send().await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match r {
                    Ok(r) if r.status() == 200 => {
                        lat.lock().unwrap().push(ms);
                        if std::mem::take(&mut first) {
                            shipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let what = format!("ingest {}: {}", r.status(), r.text().await.unwrap_or_default());
                        let mut f = firsts.lock().unwrap();
                        if f.len() < 10 {
                            f.push(what);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut f = firsts.lock().unwrap();
                        if f.len() < 10 {
                            f.push(format!("ingest: {e}"));
                        }
                    }
                }
            }
        }));
    }
    for i in 0..readers {
        let (http, base, stop, errors, lat, cookie, firsts, shipped) = (
            http.clone(),
            base.clone(),
            stop.clone(),
            errors.clone(),
            read_ms.clone(),
            cookie.clone(),
            first_errors.clone(),
            shipped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while shipped.load(Ordering::Relaxed) < hosts && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let pages = ["/", "/api/v1/fleet", "/inventory", "/alerts"];
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let path = if k % 5 == 4 {
                    format!("/hosts/soak-{:05}", (k * 7919) % hosts)
                } else {
                    pages[k % pages.len()].to_string()
                };
                let t = Instant::now();
                match http
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut f = firsts.lock().unwrap();
                        if f.len() < 10 {
                            f.push(format!("GET {path}: {:?}", other.map(|r| r.status())));
                        }
                    }
                }
                // A person reads a page for a few seconds.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }));
    }
    let total = Duration::from_secs(minutes * 60);
    let warm = total / 5;
    tokio::time::sleep(warm).await;
    let rss_warm = rss_mb(child.id());
    let mut peak = rss_warm;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        peak = peak.max(rss_mb(child.id()));
    }
    let rss_end = rss_mb(child.id());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let metrics = http
        .get(format!("{base}/metrics"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();

    let sizes: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT t, (SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = t)::int8,
                (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = t)::int8
           FROM unnest(ARRAY['host_samples', 'gpu_samples', 'host_samples_1m', 'gpu_samples_1m']) t",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    let gpu_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let host_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM host_samples")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let mut ing = ingest_ms.lock().unwrap().clone();
    let mut rd = read_ms.lock().unwrap().clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{minutes} min, {hosts} hosts x 8 GPUs at 5 s ({} GPUs), {readers} dashboard readers, {cores} cores", hosts * 8);
    println!(
        "ingest requests {}: p50 {:.1} ms, p99 {:.1} ms; page reads {}: p50 {:.1} ms, p99 {:.1} ms",
        ing.len(),
        pct(&mut ing, 0.5),
        pct(&mut ing, 0.99),
        rd.len(),
        pct(&mut rd, 0.5),
        pct(&mut rd, 0.99)
    );
    println!(
        "rows stored: {gpu_rows} GPU + {host_rows} host = {:.0} rows/s, {:.0} rows/s per core (expected {:.0} rows/s from the fleet)",
        (gpu_rows + host_rows) as f64 / secs,
        (gpu_rows + host_rows) as f64 / secs / cores as f64,
        hosts as f64 * 9.0 / 5.0
    );
    for (t, parts, bytes) in &sizes {
        println!("{t}: {parts} partitions, {:.1} MB", *bytes as f64 / 1e6);
    }
    for l in metrics.lines().filter(|l| {
        l.starts_with("rackwatch_job_duration_seconds") || l.starts_with("rackwatch_job_runs_total")
    }) {
        println!("{l}");
    }
    for e in first_errors.lock().unwrap().iter() {
        println!("error: {e}");
    }
    let growth = (rss_end - rss_warm) / rss_warm * 100.0;
    println!("server RSS after warm-up {rss_warm:.1} MB, peak {peak:.1} MB, end {rss_end:.1} MB");
    println!(
        "BENCH soak minutes={minutes} gpus={} errors={} ingest_p99_ms={:.1} rss_growth_pct={growth:.1}",
        hosts * 8,
        errors.load(Ordering::Relaxed),
        pct(&mut ing, 0.99)
    );
    store.pool.close().await;
}
