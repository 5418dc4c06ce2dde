//! The product's per-host anomaly job at fleet scale: how long training every host takes
//! on a first start, and how long the once-a-minute scoring run takes for the whole
//! fleet, against the minute it has.
//!
//! Data: BENCH_HOSTS simulated hosts × 8 GPUs (default 125 → 1,000 GPUs), BENCH_DAYS (6)
//! days of one-minute samples written through the store's batch path and rolled up, the
//! same way `rackwatch demo` back-fills its fleet. Then, with the clock set 30 minutes
//! before the end of the data: the job runs until every host has a model (at most
//! `anomaly.max_trains_per_run` per run, as in production), and then scores minute by
//! minute for BENCH_MINUTES (20) minutes.
//!
//! Both backends in one run: the CPU backend first; then, where `anomaly.backend = "auto"`
//! finds a hardware GPU (a build with `--features gpu`, as `scripts/bench-anomaly-job`
//! does), the same fleet again on it, and the GPU ÷ CPU speed-ups. Without one it says why
//! and prints CPU figures only.
//!
//! Run with `./scripts/bench anomaly-job`.

mod common;
use common::env;

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use rackwatch::analytics::anomaly::{AnomalyJob, SETTLE_MINUTES};
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::config::Config;
use rackwatch_anomaly::backend::MIN_GPU_SCORE_WORK_PER_THREAD;
use rackwatch_anomaly::{Backend, BackendChoice, BackendKind, SelectOptions, SelectedBackend};

fn main() {
    common::block_on(run());
}

async fn run() {
    let hosts = env("BENCH_HOSTS", 125);
    let days = env("BENCH_DAYS", 6);
    let minutes = env("BENCH_MINUTES", 20);
    let gpus = 8u32;

    let root = std::env::temp_dir().join(format!("rackwatch-bench-anom-{}", std::process::id()));
    let common::BenchDb { mut pg, store, .. } = common::start_db(
        root.clone(),
        &[
            "shared_buffers=1GB",
            "synchronous_commit=off",
            "max_wal_size=2GB",
            "checkpoint_timeout=30min",
        ],
        10,
    )
    .await;
    let now = Utc::now();
    let mut cfg = Config::default();
    cfg.simulator.history_days = days as u32;
    cfg.simulator.backfill_minutes = 0;
    store
        .ensure_partitions(now, cfg.retention.raw_days, 1)
        .await
        .unwrap();

    let t = Instant::now();
    let mut fleet = SimulatedHost::fleet(hosts as u32, gpus);
    let filled = rackwatch::app::backfill_history(&cfg, &store, &mut fleet, now)
        .await
        .unwrap();
    for sql in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::query(sql).execute(&store.pool).await.unwrap();
    }
    println!(
        "{hosts} hosts × {gpus} GPUs, {days} days: {} samples, {} 1-minute rollup rows ({:.0} s)",
        filled.samples,
        filled.rollup_rows,
        t.elapsed().as_secs_f64()
    );

    // Train: the clock stands 30 minutes before the end of the data.
    let end = now - Duration::minutes(30);
    let cpu = measure(&store, &cfg, AnomalyJob::default(), hosts, minutes, end).await;
    // The backend the product picks with anomaly.backend = "auto" (BENCH_ADAPTER: a name
    // filter; BENCH_SOFTWARE_ADAPTER=1 takes lavapipe, to check the path without a GPU).
    let opts = SelectOptions {
        allow_software_adapter: env("BENCH_SOFTWARE_ADAPTER", 0) == 1,
        adapter_name: std::env::var("BENCH_ADAPTER")
            .ok()
            .filter(|a| !a.is_empty()),
        ..SelectOptions::default()
    };
    let auto = SelectedBackend::select(BackendChoice::Auto, &opts).unwrap();
    let gpu = if auto.kind() == BackendKind::Gpu {
        println!("GPU backend: {}", auto.info());
        for table in ["anomaly_scores", "anomaly_models"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let backend = Arc::new(auto);
        let job = AnomalyJob::new(backend.clone());
        let m = measure(&store, &cfg, job, hosts, minutes, end).await;
        println!(
            "GPU: {} host trainings and {} scoring runs left to the CPU (runs below {} multiply-adds per CPU thread go there)",
            backend.cpu_fallback_hosts(),
            backend.cpu_scoring_calls(),
            MIN_GPU_SCORE_WORK_PER_THREAD
        );
        Some(m)
    } else {
        println!(
            "no GPU run: {}",
            auto.fallback_reason().unwrap_or("no usable GPU adapter")
        );
        None
    };
    let chosen = gpu.as_ref().unwrap_or(&cpu);
    let speedups = gpu
        .as_ref()
        .map(|g| {
            format!(
                " gpu_train_speedup={:.2} gpu_score_speedup={:.2}",
                cpu.train_ms_per_host / g.train_ms_per_host,
                cpu.score_p50_ms / g.score_p50_ms
            )
        })
        .unwrap_or_default();
    println!(
        "BENCH anomaly-job hosts={hosts} gpus={} backend={} train_ms_per_host={:.1} score_run_ms_p50={:.1} score_run_ms_max={:.1} ratio_vs_minute={:.4}{speedups}",
        hosts * gpus as usize,
        if gpu.is_some() { "gpu" } else { "cpu" },
        chosen.train_ms_per_host,
        chosen.score_p50_ms,
        chosen.score_max_ms,
        chosen.score_max_ms / 60_000.0
    );
    store.pool.close().await;
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(root);
}

/// What one backend took: training per host, scoring runs of one minute.
struct Measured {
    train_ms_per_host: f64,
    score_p50_ms: f64,
    score_max_ms: f64,
}

/// Train every host (at most `anomaly.max_trains_per_run` per run, as in production), then
/// score minute by minute for `minutes` runs.
async fn measure(
    store: &rackwatch::store::Store,
    cfg: &Config,
    mut job: AnomalyJob,
    hosts: usize,
    minutes: usize,
    end: chrono::DateTime<Utc>,
) -> Measured {
    let backend = job.backend().info().to_string();
    let (mut trained, mut runs) = (0, 0);
    let t = Instant::now();
    while trained < hosts {
        let s = job.run(store, &cfg.anomaly, end).await.unwrap();
        assert!(s.trained > 0, "no progress: {s:?}");
        trained += s.trained;
        runs += 1;
    }
    let train_s = t.elapsed().as_secs_f64();
    println!(
        "{backend}: training {hosts} models in {runs} runs, {train_s:.1} s ({:.1} ms per host; at most {} per run, with their database reads and writes)",
        train_s * 1e3 / hosts as f64,
        cfg.anomaly.max_trains_per_run
    );
    // Score minute by minute, as the job runs in production (once a minute).
    let mut runs_ms = Vec::new();
    let mut scored = 0;
    for k in 1..=minutes as i64 {
        let t = Instant::now();
        let s = job
            .run(store, &cfg.anomaly, end + Duration::minutes(k))
            .await
            .unwrap();
        runs_ms.push(t.elapsed().as_secs_f64() * 1e3);
        scored += s.scored_minutes;
    }
    assert!(
        scored >= hosts * (minutes - 1),
        "every host scored about once a run: {scored} host-minutes"
    );
    let mut sorted = runs_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];
    println!(
        "{backend}: scoring {minutes} runs of one minute each, {scored} host-minutes; per run p50 {p50:.1} ms, max {max:.1} ms (settle {SETTLE_MINUTES} min)"
    );
    Measured {
        train_ms_per_host: train_s * 1e3 / hosts as f64,
        score_p50_ms: p50,
        score_max_ms: max,
    }
}
