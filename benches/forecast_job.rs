//! The hourly forecast job at fleet scale.
//!
//! Data (bulk-made in Postgres): BENCH_HOSTS (2,000) hosts × 8 GPUs in BENCH_POOLS (200)
//! pools; 28 days of per-GPU quarter-hour rollups (utilization with a daily cycle, power
//! following it: 43 million rows at the defaults), 28 days of quarter-hour host rollups
//! with disk use, and 28 days of pool demand per 5 minutes. That is what the job reads
//! every hour for a fleet that has reported for four weeks.
//!
//! Measured: the first run of `analytics::forecast::run`, which sums the quarter-hours per
//! host and hour once (as after an upgrade), then BENCH_RUNS (3) hourly runs, each after
//! the rollup job's work for a completed quarter-hour (`rollup_quarters`, which keeps those
//! sums); each run split into reading the hourly series, fitting (all cores) and storing.
//! Reported: the first run, the median hourly run and its share of the hour, the
//! quarter-hour's cost in the rollup job.
//!
//! Run with `./scripts/bench forecast-job`.

mod common;
use common::{env, exec, pct};

use std::time::Instant;

use chrono::{DurationRound, Utc};

const GPUS: u8 = 8;
const DAYS: i64 = 28;

fn main() {
    common::block_on(run());
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 2000);
    let pools = env("BENCH_POOLS", 200);
    let runs = env("BENCH_RUNS", 3).max(1);

    let root = std::env::temp_dir().join(format!("rackwatch-bench-fc-{}", std::process::id()));
    let common::BenchDb { mut pg, store, .. } =
        common::start_db(root.clone(), common::BULK_LOAD, 8).await;
    let now = Utc::now();
    store
        .ensure_partitions(now, DAYS as u32 + 1, 1)
        .await
        .unwrap();

    let t_load = Instant::now();
    println!("loading {hosts} hosts × {GPUS} GPUs in {pools} pools, {DAYS} days:");
    common::fleet_inventory(&store, hosts, pools, GPUS, 20, now).await;
    let hour = now.duration_trunc(chrono::Duration::hours(1)).unwrap();
    let start = hour - chrono::Duration::days(DAYS);
    let (s, h) = (start.to_rfc3339(), hour.to_rfc3339());
    exec(&store, "seed", "SELECT setseed(0.42)").await;
    exec(
        &store,
        "GPU 15-minute rollups",
        &format!(
            "INSERT INTO gpu_samples_15m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, power_watts, power_watts_max)
             SELECT g.host_id, g.gpu_index, q, 180, u, least(u + 8, 100), 120 + 5.5 * u, 150 + 5.5 * u
               FROM gpus g, generate_series(TIMESTAMPTZ '{s}', TIMESTAMPTZ '{h}' - interval '15 minutes', interval '15 minutes') q,
                    LATERAL (SELECT (50 + 35 * sin(2 * pi() * extract(epoch FROM q) / 86400 + g.host_id % 7)
                                     + 5 * random())::real AS u) t"
        ),
    )
    .await;
    common::host_quarters_with_disks(&store, start, hour).await;
    exec(
        &store,
        "pool demand (5 min)",
        &format!(
            "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
             SELECT 'pool-' || lpad(i::text, 3, '0'), b, d, d * 0.92, 0, 80
               FROM generate_series(0, {pools} - 1) i,
                    generate_series(TIMESTAMPTZ '{s}', TIMESTAMPTZ '{h}' - interval '5 minutes', interval '5 minutes') b,
                    LATERAL (SELECT 40 + 25 * sin(2 * pi() * extract(epoch FROM b) / 86400 + i) + 4 * random() AS d) t"
        ),
    )
    .await;
    common::settle(&store).await;
    println!("loaded in {:.0} s", t_load.elapsed().as_secs_f64());

    // The first run sums 28 days of quarter-hours per host and hour (as after an upgrade
    // or an import); later runs read those sums, which the rollup job keeps up to date
    // each time a quarter-hour completes (timed here as it runs there).
    let t = Instant::now();
    let first = rackwatch::analytics::forecast::run(&store, now)
        .await
        .unwrap();
    let first_s = t.elapsed().as_secs_f64();
    println!("first run: {first_s:.2} s — {first}");
    let want = (hosts + pools) * 3 + pools;
    assert_eq!(
        first.written, want,
        "hosts and pools × utilization, power and disk, and pools' demand"
    );
    let mut took = Vec::new();
    let mut quarters = Vec::new();
    for i in 1..=runs {
        let q = hour - chrono::Duration::minutes(15);
        let t = Instant::now();
        store.rollup_quarters(q, hour, None).await.unwrap();
        quarters.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let r = rackwatch::analytics::forecast::run(&store, now)
            .await
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("hourly run {i}: {s:.2} s — {r}");
        assert_eq!(r.written, want);
        took.push((s, r));
    }
    took.sort_by(|a, b| a.0.total_cmp(&b.0));
    quarters.sort_by(f64::total_cmp);
    let (run_s, r) = &took[took.len() / 2];
    let quarter_s = pct(&quarters, 0.5);
    println!(
        "median hourly run {run_s:.2} s (of {}), {:.2} % of the hour between runs; a quarter-hour's sums in the rollup job {quarter_s:.2} s; the first run {:.1} × an hourly one",
        took.len(),
        run_s / 36.0,
        first_s / run_s
    );
    println!(
        "BENCH forecast-job hosts={hosts} gpus={} pools={pools} days={DAYS} forecasts={} first_run_s={first_s:.2} run_s={run_s:.2} read_s={:.2} fit_s={:.2} write_s={:.2} quarter_s={quarter_s:.2} first_over_hourly={:.1} hour_share={:.4}",
        hosts * GPUS as usize,
        r.written,
        r.read.as_secs_f64(),
        r.fit.as_secs_f64(),
        r.write.as_secs_f64(),
        first_s / run_s,
        run_s / 3600.0
    );
    store.pool.close().await;
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(root);
}
