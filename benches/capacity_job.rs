//! The capacity job at fleet scale, and the /capacity page under concurrent readers.
//!
//! Data (bulk-made in Postgres, shaped like real pools): BENCH_HOSTS (2,000) hosts × 8 GPUs
//! in BENCH_POOLS (200) pools and 100 racks with power budgets; 28 days of pool demand per
//! 5 minutes (diurnal inference, bursty training with a queue, growing and flat pools); 28
//! days of per-GPU hourly energy (rack power); 28 days of 15-minute host rollups with disk
//! use (disks); and the last hour of 1-minute GPU rollups that the run turns into demand.
//!
//! Measured: the power sums of the 28 days (what the energy job keeps hour by hour; made
//! once here, as after an upgrade), the first run of a day (pool demand of the new hour,
//! every pool's recommendation, racks, disks), then BENCH_RUNS (3) hourly runs (disks are
//! dated once a day), then the /capacity page and its JSON twin at BENCH_CLIENTS (20) concurrent clients,
//! BENCH_REQUESTS (400) requests each. Goals: a run ≤ 10 s on 2 cores, page p95 ≤ 150 ms.
//!
//! Run with `./scripts/bench capacity-job`.

mod common;
use common::{env, exec, load, pct};

use std::sync::Arc;
use std::time::Instant;

use chrono::{DurationRound, Utc};

const GPUS: u8 = 8;
const DAYS: i64 = 28;
const RACK_HOSTS: usize = 20;

fn main() {
    common::block_on(run());
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 2000);
    let pools = env("BENCH_POOLS", 200);
    let runs = env("BENCH_RUNS", 3).max(1);
    let clients = env("BENCH_CLIENTS", 20);
    let requests = env("BENCH_REQUESTS", 400);
    let racks = hosts.div_ceil(RACK_HOSTS);

    let root = std::env::temp_dir().join(format!("rackwatch-bench-cap-{}", std::process::id()));
    let common::BenchDb { mut pg, store, url } =
        common::start_db(root.clone(), common::BULK_LOAD, 40).await;
    let now = Utc::now();
    store
        .ensure_partitions(now, DAYS as u32 + 1, 1)
        .await
        .unwrap();

    // --- data ----------------------------------------------------------------------
    let t_load = Instant::now();
    println!(
        "loading {hosts} hosts × {GPUS} GPUs in {pools} pools and {racks} racks, {DAYS} days:"
    );
    common::fleet_inventory(&store, hosts, pools, GPUS, RACK_HOSTS, now).await;
    let end = now.duration_trunc(chrono::Duration::minutes(5)).unwrap();
    let hour = now.duration_trunc(chrono::Duration::hours(1)).unwrap();
    let start = end - chrono::Duration::days(DAYS);
    let (s, e, h) = (start.to_rfc3339(), end.to_rfc3339(), hour.to_rfc3339());
    exec(&store, "seed", "SELECT setseed(0.42)").await;
    // Pool demand until an hour ago: four kinds of pool, by number.
    exec(
        &store,
        "pool demand (5 min)",
        &format!(
            "WITH p AS MATERIALIZED (
                SELECT 'pool-' || lpad(i::text, 3, '0') AS pool, i, i % 4 AS k,
                       (SELECT count(*) FROM gpus g JOIN hosts h ON h.id = g.host_id
                         WHERE h.pool = 'pool-' || lpad(i::text, 3, '0'))::int AS n
                  FROM generate_series(0, {pools} - 1) i)
             INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
             SELECT pool, b, least(n, d), least(n, d) * 0.92, greatest(d - n, 0), n
               FROM (SELECT p.pool, p.n, b,
                            CASE p.k
                              WHEN 0 THEN p.n * (0.45 + 0.30 * sin(2 * pi() * (x / 3600 - 7) / 24)) + 3 * random()
                              WHEN 1 THEN p.n * (0.65 + 0.45 * sign(sin(2 * pi() * x / 86400 / 3.7 + p.i))) + 4 * random()
                              WHEN 2 THEN p.n * 0.55 * (1 + 0.02 * (x - extract(epoch FROM TIMESTAMPTZ '{s}')) / 86400) + 2 * random()
                              ELSE p.n * 0.6 + 6 * random()
                            END AS d
                       FROM p,
                            generate_series(TIMESTAMPTZ '{s}', TIMESTAMPTZ '{h}' - interval '5 minutes', interval '5 minutes') b,
                            LATERAL (SELECT extract(epoch FROM b)::float8 AS x) t) q"
        ),
    )
    .await;
    sqlx::query(
        "INSERT INTO job_state (name, watermark) VALUES ('pool_demand', $1), ('rollup_1m', $2)",
    )
    .bind(hour)
    .bind(end.duration_trunc(chrono::Duration::minutes(1)).unwrap())
    .execute(&store.pool)
    .await
    .unwrap();
    // The 1-minute GPU rollups of the last hour, which the run turns into demand.
    exec(
        &store,
        "GPU 1-minute rollups, last hour",
        &format!(
            "INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, power_watts, power_watts_max)
             SELECT g.host_id, g.gpu_index, m, 12, u, least(u + 3, 100), 120 + 5.5 * u, 150 + 5.5 * u
               FROM gpus g, generate_series(TIMESTAMPTZ '{h}' - interval '5 minutes', TIMESTAMPTZ '{e}' - interval '1 minute', interval '1 minute') m,
                    LATERAL (SELECT (45 + 40 * sin(g.host_id + g.gpu_index + extract(epoch FROM m) / 3600))::real AS u) t"
        ),
    )
    .await;
    // Hourly energy per GPU: what the racks' power comes from.
    exec(
        &store,
        "energy per GPU and hour",
        &format!(
            "INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j, covered_minutes, busy_minutes, util_sum)
             SELECT g.host_id, g.gpu_index, t, (350 + 150 * sin(2 * pi() * extract(epoch FROM t) / 86400 + g.host_id)
                    + 0.3 * extract(epoch FROM t - TIMESTAMPTZ '{s}') / 3600) * 3600, 60, 45, 3000
               FROM gpus g, generate_series(date_trunc('hour', TIMESTAMPTZ '{s}'), TIMESTAMPTZ '{h}' - interval '1 hour', interval '1 hour') t"
        ),
    )
    .await;
    common::host_quarters_with_disks(&store, start, end).await;
    // The per-host and per-rack hourly sums the energy job keeps as it accounts each hour,
    // made here in one pass, as a first run after an upgrade would (timed apart: the
    // job's runs below are those of a server whose energy job kept them).
    let t = Instant::now();
    rackwatch::analytics::energy::ensure_power_sums(
        &store,
        start.duration_trunc(chrono::Duration::hours(1)).unwrap(),
        hour,
    )
    .await
    .unwrap();
    println!(
        "  host and rack power sums, {DAYS} days: {:.1} s (once, after an upgrade)",
        t.elapsed().as_secs_f64()
    );
    common::settle(&store).await;
    println!("loaded in {:.0} s", t_load.elapsed().as_secs_f64());

    // --- the job ---------------------------------------------------------------------
    let mut cfg = common::server_config(&url, 40);
    // Budgets on every rack: 8 GPUs × 20 hosts at 350–500 W with growth, so some run out.
    for r in 0..racks {
        let site = format!("dc{}", (r * RACK_HOSTS) / (hosts / 2).max(1));
        cfg.capacity
            .racks
            .insert(format!("{site}/r{r:03}"), 60.0 + (r % 5) as f64 * 10.0);
    }
    let cfg = Arc::new(cfg);
    let mut times = Vec::new();
    for i in 0..=runs {
        let t = Instant::now();
        let r = rackwatch::analytics::capacity::run(&store, &cfg, Utc::now())
            .await
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "{} run: {s:.2} s — {} demand slots, {} pools recommended ({} skipped), {} racks, {} disks; steps: demand {:.2} s, pools {:.2} s, racks {:.2} s, disks {:.2} s",
            if i == 0 { "first (of the day)" } else { "hourly" },
            r.demand_slots,
            r.pools,
            r.skipped,
            r.racks,
            r.disks,
            r.took.demand.as_secs_f64(),
            r.took.pools.as_secs_f64(),
            r.took.racks.as_secs_f64(),
            r.took.disks.as_secs_f64(),
        );
        assert_eq!(r.pools, pools, "every pool gets a recommendation");
        times.push(s);
    }
    let first = times[0];
    let mut hourly = times[1..].to_vec();
    hourly.sort_by(f64::total_cmp);
    let hourly_med = pct(&hourly, 0.5);

    // --- the page --------------------------------------------------------------------
    let served = common::serve(cfg.clone(), &store, clients).await;
    let (base, client, cookie) = (
        served.base.clone(),
        served.client.clone(),
        served.cookie.clone(),
    );
    let mut pages = Vec::new();
    for path in ["/capacity", "/api/v1/capacity", "/capacity/pools/pool-001"] {
        for _ in 0..clients {
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.bytes().await.unwrap();
        }
        let size = client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        let (c, ck, b) = (client.clone(), cookie.clone(), base.clone());
        let lat = load(clients, requests, move |_| {
            let (c, ck, b) = (c.clone(), ck.clone(), b.clone());
            async move {
                let r = c
                    .get(format!("{b}{path}"))
                    .header("cookie", ck)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        })
        .await;
        println!(
            "{path:<26} {clients} clients: p50 {:.1} ms, p95 {:.1} ms, {:.0} KiB",
            pct(&lat, 0.5),
            pct(&lat, 0.95),
            size as f64 / 1024.0
        );
        pages.push((path, pct(&lat, 0.5), pct(&lat, 0.95)));
    }
    let page = pages[0];
    println!(
        "goals: a run ≤ 10 s (first {first:.2} s, hourly median {hourly_med:.2} s: ratio {:.2}); /capacity p95 ≤ 150 ms ({:.1} ms: ratio {:.2})",
        first.max(hourly_med) / 10.0,
        page.2,
        page.2 / 150.0
    );
    println!(
        "BENCH capacity-job pools={pools} hosts={hosts} gpus={} days={DAYS} first_run_s={first:.2} hourly_run_s={hourly_med:.2} run_ratio={:.2} page_p50_ms={:.1} page_p95_ms={:.1} page_ratio={:.2}",
        hosts * GPUS as usize,
        first.max(hourly_med) / 10.0,
        page.1,
        page.2,
        page.2 / 150.0
    );
    store.pool.close().await;
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(root);
}
