//! Dashboard latency: fleet, host and GPU pages under concurrent clients on loopback,
//! each next to the time of the SQL it runs, measured alone at the same concurrency.
//!
//! Data: a fleet of BENCH_HOSTS hosts × 8 GPUs (default 125 → 1,000 GPUs), bulk-loaded
//! with COPY into the real tables: 7 days of 1-minute rollups (what ranges over 6 h read;
//! the 15-minute rollups that ranges over ~6 days read are made from them by the rollup
//! job's code) and the last BENCH_RAW_HOURS (default 6) of raw 5-second samples (what the
//! fleet page and ranges up to 6 h read). Loading the full 7 days of raw 5 s data (~120 M GPU rows)
//! is skipped: no page reads raw data older than 6 h (24 h for throttle shading of a
//! single GPU), and it would take hours on a small machine.
//!
//! Run with `./scripts/bench dashboard`. BENCH_CLIENTS (20), BENCH_REQUESTS (per page
//! and round, 400) and BENCH_ROUNDS (5: page and SQL alternate, latencies pooled)
//! change the load; BENCH_PAGES (a comma-separated subset) and
//! BENCH_HOLD_SECS (keep the loaded database up before measuring) help investigations.

mod common;
use common::{env, load, pct};

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, DurationRound, Utc};
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::model::Batch;
use rackwatch::store::rollup::quarter;
use rackwatch::store::samples::{encode_gpu_rows, encode_host_rows, gpu_columns, host_columns};
use rackwatch::store::Store;

fn main() {
    common::block_on(run());
}

async fn copy(store: &Store, sql: &str, data: String) {
    let mut conn = store.pool.acquire().await.unwrap();
    let mut copy = conn.copy_in_raw(sql).await.unwrap();
    copy.send(data.into_bytes()).await.unwrap();
    copy.finish().await.unwrap();
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 125);
    let raw_hours = env("BENCH_RAW_HOURS", 6) as i64;
    let clients = env("BENCH_CLIENTS", 20);
    let requests = env("BENCH_REQUESTS", 400);
    let rounds = env("BENCH_ROUNDS", 5).max(1);
    let days = 7i64;
    let gpus = 8u32;

    let root = std::env::temp_dir().join(format!("rackwatch-bench-dash-{}", std::process::id()));
    let common::BenchDb { mut pg, store, url } =
        common::start_db(root.clone(), common::BULK_LOAD, 40).await;
    let now = Utc::now();
    store
        .ensure_partitions(now, days as u32 + 1, 1)
        .await
        .unwrap();

    // --- data ----------------------------------------------------------------------
    let t_load = Instant::now();
    let mut fleet = SimulatedHost::fleet(hosts as u32, gpus);
    let end = now.duration_trunc(chrono::Duration::seconds(5)).unwrap();
    let raw_from = end - chrono::Duration::hours(raw_hours);
    let mut ids = Vec::new();
    // Inventory and the XID events go through the real write path (one small batch per host).
    for h in &mut fleet {
        let c = h.history(
            end - chrono::Duration::minutes(30),
            end - chrono::Duration::minutes(30) + chrono::Duration::seconds(5),
            chrono::Duration::seconds(5),
        );
        let b = Batch {
            host: h.info.clone(),
            gpus: c.gpus,
            ..Default::default()
        };
        ids.push(store.write_batch(&b, now).await.unwrap().host_id);
    }
    let mut raw_gpu_rows = 0usize;
    let mut events = 0usize;
    let chunk = chrono::Duration::minutes(30);
    for (h, id) in fleet.iter_mut().zip(&ids) {
        let mut from = raw_from;
        while from < end {
            let to = (from + chunk).min(end);
            let c = h.history(from, to, chrono::Duration::seconds(5));
            raw_gpu_rows += c.gpu_samples.len();
            let mut g = String::new();
            encode_gpu_rows(*id, &c.gpu_samples, &mut g);
            copy(
                &store,
                &format!("COPY gpu_samples ({}) FROM STDIN", gpu_columns()),
                g,
            )
            .await;
            let mut hs = String::new();
            encode_host_rows(*id, &c.host_samples, &mut hs);
            copy(
                &store,
                &format!("COPY host_samples ({}) FROM STDIN", host_columns()),
                hs,
            )
            .await;
            if to == end {
                // The newest minute once more through the real ingest path, as an agent's
                // replayed batch: nothing is stored twice, and host_latest / gpu_latest
                // move to the newest samples as they do during live ingest.
                let b = Batch {
                    host: h.info.clone(),
                    host_samples: c.host_samples[c.host_samples.len().saturating_sub(12)..]
                        .to_vec(),
                    gpu_samples: c.gpu_samples
                        [c.gpu_samples.len().saturating_sub(12 * gpus as usize)..]
                        .to_vec(),
                    ..Default::default()
                };
                assert_eq!(store.write_batch(&b, now).await.unwrap().stored, 0);
            }
            if !c.events.is_empty() {
                events += c.events.len();
                let b = Batch {
                    host: h.info.clone(),
                    events: c.events,
                    ..Default::default()
                };
                store.write_batch(&b, now).await.unwrap();
            }
            from = to;
        }
    }
    println!(
        "raw 5 s samples, last {raw_hours} h: {raw_gpu_rows} GPU rows, {events} hardware events ({:.0} s)",
        t_load.elapsed().as_secs_f64()
    );
    // 1-minute rollups for 7 days, synthetic but shaped like the simulator's workloads.
    let t_roll = Instant::now();
    let first = (end - chrono::Duration::days(days))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let minutes = days * 1440;
    let mut rollup_rows = 0usize;
    for (hi, id) in ids.iter().enumerate() {
        let mut g = String::with_capacity(8 << 20);
        let mut hs = String::with_capacity(1 << 20);
        for m in 0..minutes {
            let b: DateTime<Utc> = first + chrono::Duration::minutes(m);
            let ts = b.to_rfc3339();
            let phase = ((m + hi as i64 * 17) % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
            let _ = writeln!(
                hs,
                "{id}\t{ts}\t12\t{:.1}\t{:.1}\t2.5\t{}\t549755813888\t1500000\t200000\t125000000\t30000000",
                40.0 + 20.0 * phase.sin(),
                60.0 + 20.0 * phase.sin(),
                (200u64 << 30) + (m as u64 % 1000) * (1 << 20),
            );
            for k in 0..gpus {
                let u = 60.0 + 35.0 * (phase + f64::from(k)).sin();
                let p = 120.0 + 5.5 * u;
                let e = 3.6e9 + (m as f64) * 60.0 * p;
                let _ = writeln!(
                    g,
                    "{id}\t{k}\t{ts}\t12\t{u:.1}\t{:.1}\t{:.1}\t{}\t{p:.1}\t{:.1}\t{e:.0}\t{:.1}\t{:.1}\t1980",
                    (u + 3.0).min(100.0),
                    u * 0.4,
                    (50u64 << 30) + (k as u64) * (1 << 28),
                    p + 30.0,
                    45.0 + u * 0.3,
                    48.0 + u * 0.3,
                );
                rollup_rows += 1;
            }
        }
        copy(&store, "COPY gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, mem_util_pct, mem_used_bytes, power_watts, power_watts_max, energy_joules_total, temp_celsius, temp_celsius_max, sm_clock_mhz) FROM STDIN", g).await;
        copy(&store, "COPY host_samples_1m (host_id, bucket, samples, cpu_util_pct, cpu_util_pct_max, load1, mem_used_bytes, mem_total_bytes, disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s) FROM STDIN", hs).await;
    }
    // The 15-minute rollups, made from those by the rollup job's own code, and the
    // watermark the job records after its run: every minute before this one is rolled up.
    let watermark = end.duration_trunc(chrono::Duration::minutes(1)).unwrap();
    let t_quarters = Instant::now();
    let quarter_rows = store
        .rollup_quarters(quarter(first), quarter(watermark), None)
        .await
        .unwrap();
    sqlx::query("INSERT INTO job_state (name, watermark) VALUES ('rollup_1m', $1)")
        .bind(watermark)
        .execute(&store.pool)
        .await
        .unwrap();
    // Vacuumed and analyzed as autovacuum would leave them, and checkpointed so that
    // writing out the load does not land in the measurements.
    for sql in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::query(sql).execute(&store.pool).await.unwrap();
    }
    println!(
        "1-minute rollups, {days} days: {rollup_rows} GPU rows + {} host rows ({:.0} s); 15-minute rollups: {quarter_rows} rows ({:.0} s); {} GPUs on {hosts} hosts",
        ids.len() as i64 * minutes,
        (t_quarters - t_roll).as_secs_f64(),
        t_quarters.elapsed().as_secs_f64(),
        hosts * gpus as usize
    );

    // --- server ----------------------------------------------------------------------
    let cfg = common::server_config(&url, 40);
    let cfg = Arc::new(cfg);
    let served = common::serve(cfg.clone(), &store, clients).await;
    let (base, client, cookie) = (
        served.base.clone(),
        served.client.clone(),
        served.cookie.clone(),
    );
    let names: Arc<Vec<String>> = Arc::new(fleet.iter().map(|h| h.info.name.clone()).collect());
    // BENCH_HOLD_SECS: keep the loaded database up that long before measuring (to
    // EXPLAIN the page queries by hand); BENCH_PAGES=fleet,gpu_7d measures only those
    // (in that order; fleet,fleet measures the fleet page twice).
    let hold = env("BENCH_HOLD_SECS", 0);
    if hold > 0 {
        println!(
            "holding {hold} s: database {url}, server {base}, hosts like {}",
            names[0]
        );
        tokio::time::sleep(std::time::Duration::from_secs(hold as u64)).await;
    }
    let only: Option<Vec<String>> = std::env::var("BENCH_PAGES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());

    // Pages: (label, URL builder, range key for the SQL-only run).
    type Url = fn(&str, usize) -> String;
    let pages: [(&str, Url, &str); 4] = [
        ("fleet", |_, _| "/".to_string(), ""),
        ("host_1h", |h, _| format!("/hosts/{h}?range=1h"), "1h"),
        (
            "gpu_1h",
            |h, i| format!("/hosts/{h}/gpus/{}?range=1h", i % 8),
            "1h",
        ),
        (
            "gpu_7d",
            |h, i| format!("/hosts/{h}/gpus/{}?range=7d", i % 8),
            "7d",
        ),
    ];
    let mut summary = Vec::new();
    println!(
        "{clients} concurrent clients, {rounds} rounds of {requests} requests per page, each \
         round followed by the page's queries alone (SQL) at the same concurrency"
    );
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>12} {:>12}",
        "page",
        "p50 ms",
        "p95 ms",
        "sql p50",
        "sql p95",
        "ratio",
        "KiB",
        "1-client ms",
        "1-client sql"
    );
    // BENCH_PAGES picks pages in its order, a page named twice is measured twice.
    let run: Vec<(&str, Url, &str)> = match &only {
        None => pages.to_vec(),
        Some(o) => o
            .iter()
            .filter_map(|l| pages.iter().find(|p| p.0 == l.as_str()).copied())
            .collect(),
    };
    for (label, url, range) in run {
        // Warm-up: caches and connections, not measured.
        for i in 0..clients {
            let u = format!("{base}{}", url(&names[i % names.len()], i));
            let r = client
                .get(&u)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{u}");
        }
        let size = client
            .get(format!("{base}{}", url(&names[0], 0)))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        // One client first: the service time of a page without queueing.
        let (c, ck, n2, b2) = (client.clone(), cookie.clone(), names.clone(), base.clone());
        let solo = load(1, 40, move |i| {
            let (c, ck, n2, b2) = (c.clone(), ck.clone(), n2.clone(), b2.clone());
            async move {
                let u = format!("{b2}{}", url(&n2[(i * 7) % n2.len()], i));
                c.get(&u)
                    .header("cookie", ck)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            }
        })
        .await;
        let (st, n3, rk) = (store.clone(), names.clone(), range.to_string());
        let solo_sql = load(1, 40, move |i| {
            let (st, n3, rk) = (st.clone(), n3.clone(), rk.clone());
            async move { page_sql(&st, label, &n3[(i * 7) % n3.len()], (i % 8) as i16, &rk).await }
        })
        .await;
        // Page and SQL alternate in rounds, so a burst of other work on the machine
        // lands on both sides of the ratio instead of on one of them; the latencies of
        // all rounds are pooled before taking percentiles.
        let (mut page, mut sql) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (c, ck, n2, b2) = (client.clone(), cookie.clone(), names.clone(), base.clone());
            let off = round * requests;
            page.extend(
                load(clients, requests, move |i| {
                    let (c, ck, n2, b2) = (c.clone(), ck.clone(), n2.clone(), b2.clone());
                    let i = i + off;
                    async move {
                        let u = format!("{b2}{}", url(&n2[(i * 7) % n2.len()], i));
                        let r = c.get(&u).header("cookie", ck).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                    }
                })
                .await,
            );
            let (st, n3, range) = (store.clone(), names.clone(), range.to_string());
            sql.extend(
                load(clients, requests, move |i| {
                    let (st, n3, range) = (st.clone(), n3.clone(), range.clone());
                    let i = i + off;
                    async move {
                        page_sql(&st, label, &n3[(i * 7) % n3.len()], (i % 8) as i16, &range).await
                    }
                })
                .await,
            );
        }
        page.sort_by(f64::total_cmp);
        sql.sort_by(f64::total_cmp);
        let (p50, p95, s50, s95) = (
            pct(&page, 0.5),
            pct(&page, 0.95),
            pct(&sql, 0.5),
            pct(&sql, 0.95),
        );
        let ratio = p95 / s95;
        println!(
            "{label:<8} {p50:>9.1} {p95:>9.1} {s50:>9.1} {s95:>9.1} {ratio:>7.2} {:>9.0} {:>12.1} {:>12.1}",
            size as f64 / 1024.0,
            pct(&solo, 0.5),
            pct(&solo_sql, 0.5)
        );
        summary.push((label, p50, p95, ratio));
    }
    // Response compression on the fleet page (the largest): bytes on the wire and
    // latency under the same load, per Accept-Encoding. The client does not decompress,
    // so the body length is what crossed the wire.
    let mut enc_summary = Vec::new();
    if only.as_ref().is_none_or(|o| o.iter().any(|p| p == "fleet")) {
        println!(
            "fleet page by Accept-Encoding ({clients} clients, {rounds} rounds of {requests})"
        );
        println!(
            "{:<10} {:>9} {:>9} {:>9}",
            "encoding", "KiB", "p50 ms", "p95 ms"
        );
        for enc in ["identity", "gzip", "br"] {
            let r = client
                .get(format!("{base}/"))
                .header("cookie", &cookie)
                .header("accept-encoding", enc)
                .send()
                .await
                .unwrap();
            let got = r
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity")
                .to_string();
            assert_eq!(got, enc, "the fleet page answers in the asked encoding");
            let size = r.bytes().await.unwrap().len();
            let mut lat = Vec::new();
            for _ in 0..rounds {
                let (c, ck, b2) = (client.clone(), cookie.clone(), base.clone());
                lat.extend(
                    load(clients, requests, move |_| {
                        let (c, ck, b2) = (c.clone(), ck.clone(), b2.clone());
                        async move {
                            let r = c
                                .get(format!("{b2}/"))
                                .header("cookie", ck)
                                .header("accept-encoding", enc)
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), 200);
                            r.bytes().await.unwrap();
                        }
                    })
                    .await,
                );
            }
            lat.sort_by(f64::total_cmp);
            let (p50, p95) = (pct(&lat, 0.5), pct(&lat, 0.95));
            println!(
                "{enc:<10} {:>9.1} {p50:>9.1} {p95:>9.1}",
                size as f64 / 1024.0
            );
            enc_summary.push((enc, size as f64 / 1024.0, p95));
        }
    }
    let mut enc_keys = String::new();
    if let Some(&(_, id_kib, id_p95)) = enc_summary.first() {
        for &(enc, kib, p95) in &enc_summary[1..] {
            let _ = write!(
                enc_keys,
                " fleet_{enc}_kib={kib:.1} fleet_{enc}_bytes_ratio={:.3} fleet_{enc}_p95_ratio={:.2}",
                kib / id_kib,
                p95 / id_p95
            );
        }
        enc_keys.insert_str(0, &format!(" fleet_kib={id_kib:.1}"));
    }
    let worst = summary.iter().max_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
    let worst_ratio = summary.iter().map(|s| s.3).fold(0.0, f64::max);
    println!(
        "goals: p95 ≤ 150 ms and ≤ 2× SQL; worst p95 {:.1} ms ({}), worst ratio {worst_ratio:.2}",
        worst.2, worst.0
    );
    println!(
        "BENCH dashboard pages={} p50_ms={:.1} p95_ms={:.1} sql_ratio={worst_ratio:.2}{enc_keys}",
        summary.iter().map(|s| s.0).collect::<Vec<_>>().join(","),
        worst.1,
        worst.2
    );
    store.pool.close().await;
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(root);
}

/// The queries a page runs (the same functions the page handlers call, run the same
/// way: concurrently), without HTTP, sessions or rendering.
async fn page_sql(st: &Store, page: &str, host: &str, gpu: i16, range: &str) {
    use rackwatch::web::{fleet, gpu, host};
    let now = Utc::now();
    if page == "fleet" {
        fleet::rows(st, now).await.unwrap();
        return;
    }
    let params = rackwatch::web::range::RangeParams {
        range: Some(range.to_string()),
        ..Default::default()
    };
    if page.starts_with("host") {
        let r = params.resolve_overview(now, "1h").unwrap();
        host::rows(st, host, &r, now).await.unwrap();
    } else {
        let r = params.resolve(now, "1h").unwrap();
        gpu::rows(st, host, gpu, &r).await.unwrap();
    }
}
