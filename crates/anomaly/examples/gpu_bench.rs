//! The product's anomaly job, CPU against GPU, in one run: a synthetic fleet (default
//! 1,250 hosts × 8 GPUs, the job's 16 features per host, a week of minutes), trained and
//! scored once a minute through the batched API on the CPU backend and, where wgpu finds an
//! adapter, on the GPU backend; the two are checked against each other and timed.
//!
//! Ends with one line:
//! `BENCH anomaly-job hosts=… gpus=… backend=cpu|gpu train_ms_per_host=… score_run_ms_p50=…
//! gpu_train_speedup=… gpu_score_speedup=… …` — the speed-ups only when a hardware GPU ran.
//! A software adapter (lavapipe) is measured and reported, labelled, but never counts as a GPU.
//!
//! Build (a single binary; at run time it needs only libc and, for the GPU, the driver's
//! Vulkan ICD and libvulkan.so.1):
//! `cargo build --release -p rackwatch-anomaly --features gpu --example gpu_bench`
//!
//! Run: `gpu_bench [--quick] [--hosts N] [--gpus N] [--days N] [--metrics N] [--runs N]
//! [--catchup N] [--train-batch N] [--train-passes N] [--threads N] [--max-buffer-mb N]
//! [--pipeline-mb N] [--adapter NAME] [--cpu-only] [--no-software] [--profile] [--seed N]`.
//!
//! With `--profile`, where the adapter has timestamp queries, each step of a submit is timed on
//! the device and the training's and scoring's device times per step are printed (the
//! timestamps cost host time: measure the headline figures without).
//!
//! Fairness: both backends run the same code (`Detector::fit_batch`, then
//! `Detector::score_explained_batch_keyed` with each host's model key) with the same host threads
//! (`--threads`, default: the machine's), the same fleet and the same batches; each is warmed
//! up the same way. The CPU backend keeps no device cache, so the key costs it nothing and
//! gains it nothing.

use std::sync::Arc;
use std::time::Instant;

use rackwatch_anomaly::backend::ModelKey;
use rackwatch_anomaly::{
    Backend, BackendKind, CpuBackend, Detector, DetectorConfig, GpuBackend, GpuOptions, GpuStats,
    Matrix, ScoreInput, ScoredRow, SelectedBackend, TrainInput,
};

/// The product's features (src/analytics/anomaly.rs `FEATURES`), in its order.
const FEATURES: usize = 16;

struct Args {
    hosts: usize,
    gpus: usize,
    days: usize,
    metrics: usize,
    runs: usize,
    catchup: usize,
    train_batch: usize,
    train_passes: usize,
    threads: usize,
    max_buffer_mb: u64,
    pipeline_mb: u64,
    adapter: Option<String>,
    cpu_only: bool,
    software: bool,
    profile: bool,
    baseline_hosts: usize,
    seed: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: gpu_bench [--quick] [--hosts N] [--gpus N per host] [--days N] [--metrics N] \
         [--runs N] [--catchup MINUTES] [--train-batch N] [--train-passes N] [--threads N] [--max-buffer-mb N] \
         [--pipeline-mb N] [--adapter NAME] [--cpu-only] [--no-software] [--profile] [--baseline-hosts N] [--seed N]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        hosts: 1250,
        gpus: 8,
        days: 7,
        metrics: FEATURES,
        runs: 20,
        catchup: 180,
        train_batch: 250,
        train_passes: 2,
        threads,
        max_buffer_mb: 512,
        pipeline_mb: 0,
        adapter: None,
        cpu_only: false,
        software: true,
        profile: false,
        baseline_hosts: 25,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                usage()
            })
        };
        match flag.as_str() {
            "--quick" => {
                a.train_passes = 1;
                a.hosts = 40;
                a.days = 2;
                a.runs = 5;
                a.catchup = 60;
                a.baseline_hosts = 5;
            }
            "--hosts" => a.hosts = num("--hosts") as usize,
            "--gpus" => a.gpus = num("--gpus") as usize,
            "--days" => a.days = num("--days") as usize,
            "--metrics" => a.metrics = num("--metrics") as usize,
            "--runs" => a.runs = num("--runs") as usize,
            "--catchup" => a.catchup = num("--catchup") as usize,
            "--train-batch" => a.train_batch = num("--train-batch") as usize,
            "--train-passes" => a.train_passes = (num("--train-passes") as usize).max(1),
            "--threads" => a.threads = num("--threads") as usize,
            "--max-buffer-mb" => a.max_buffer_mb = num("--max-buffer-mb"),
            "--pipeline-mb" => a.pipeline_mb = num("--pipeline-mb"),
            "--baseline-hosts" => a.baseline_hosts = num("--baseline-hosts") as usize,
            "--seed" => a.seed = num("--seed"),
            "--adapter" => a.adapter = Some(it.next().unwrap_or_else(|| usage())),
            "--cpu-only" => a.cpu_only = true,
            "--no-software" => a.software = false,
            "--profile" => a.profile = true,
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown flag {other}");
                usage()
            }
        }
    }
    if a.hosts == 0 || a.days == 0 || a.runs == 0 || a.metrics == 0 || a.threads == 0 {
        eprintln!("hosts, days, runs, metrics and threads must be positive");
        usage()
    }
    a.metrics = a.metrics.min(FEATURES + 3 * a.gpus.max(1));
    a.train_batch = if a.train_batch == 0 {
        a.hosts
    } else {
        a.train_batch
    };
    a
}

/// xorshift64* with Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One host's minutes in the job's feature units (each feature divided by its step, byte
/// rates as ln(1 + x) / 0.1): the 16 host features, then per-GPU util, power and
/// temperature when `metrics` asks for more. A host in `hot` runs one GPU 15 °C hotter
/// from minute `hot_from` on.
fn host_minutes(
    h: usize,
    minutes: usize,
    gpus: usize,
    metrics: usize,
    seed: u64,
    hot_from: Option<usize>,
) -> Vec<f32> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((h as u64 + 1) * 0x2545_F491));
    for _ in 0..4 {
        r.uniform();
    }
    let base = 0.3 + 0.5 * r.uniform();
    let phase = r.uniform() * std::f64::consts::TAU;
    let gpus = gpus.max(1);
    let offs: Vec<f64> = (0..gpus).map(|_| 4.0 * r.normal()).collect();
    let mut ar = 0.0f64;
    let mut out = Vec::with_capacity(minutes * metrics);
    let mut row = vec![0.0f64; FEATURES + 3 * gpus];
    let (mut util, mut power, mut temp) = (vec![0.0; gpus], vec![0.0; gpus], vec![0.0; gpus]);
    for i in 0..minutes {
        let day = ((i as f64) / 1440.0 * std::f64::consts::TAU + phase).sin();
        ar = 0.97 * ar + 0.24 * r.normal();
        let load = (base + 0.25 * day + 0.1 * ar).clamp(0.0, 1.0);
        let mut mem_used_max = 0.0f64;
        let mut mem_util = 0.0;
        let mut clock_min = f64::MAX;
        for g in 0..gpus {
            util[g] = (100.0 * load + offs[g] + 3.0 * r.normal()).clamp(0.0, 100.0);
            power[g] = 100.0 + 5.0 * util[g] + 10.0 * r.normal();
            let hot = if hot_from.is_some_and(|f| i >= f) && g == h % gpus {
                15.0
            } else {
                0.0
            };
            temp[g] = 35.0 + 0.4 * util[g] + r.normal() + hot;
            mem_util += 0.6 * util[g];
            mem_used_max = mem_used_max.max(40e9 + 1e8 * util[g]);
            clock_min = clock_min.min(1980.0 - 2.0 * (temp[g] - 75.0).max(0.0) + 5.0 * r.normal());
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
        let rate = |x: f64| x.max(0.0).ln_1p() / 0.1;
        row[0] = 20.0 + 30.0 * (load + 0.2 * day) + 2.0 * r.normal();
        row[1] = (8.0 + 10.0 * load + 0.5 * r.normal()) / 0.1;
        row[2] = (40.0 + 5.0 * base + 0.3 * r.normal()) / 0.5;
        row[3] = rate(1e6 * (2.0 + day + 0.3 * r.normal()));
        row[4] = rate(5e6 * (1.0 + load + 0.3 * r.normal()));
        row[5] = rate(1e8 * (load + 0.1 + 0.05 * r.normal()));
        row[6] = rate(5e7 * (load + 0.1 + 0.05 * r.normal()));
        row[7] = mean(&util);
        row[8] = max(&util);
        row[9] = mem_util / gpus as f64 + r.normal();
        row[10] = mem_used_max / 268_435_456.0;
        row[11] = mean(&power) / 5.0;
        row[12] = max(&power) / 5.0;
        row[13] = mean(&temp);
        row[14] = max(&temp);
        row[15] = clock_min / 15.0;
        for g in 0..gpus {
            row[FEATURES + 3 * g] = util[g];
            row[FEATURES + 3 * g + 1] = power[g] / 5.0;
            row[FEATURES + 3 * g + 2] = temp[g];
        }
        out.extend(row[..metrics].iter().map(|&v| v as f32));
    }
    out
}

/// The job's detector configuration (src/analytics/anomaly.rs).
fn config() -> DetectorConfig {
    DetectorConfig {
        std_floor: 5.0,
        clip: 10.0,
        pot_risk: 0.05,
        univariate_weight: 0.0,
        ..DetectorConfig::default()
    }
}

struct Fleet {
    train: Vec<Matrix>,
    /// Minutes after training, per host, `runs + catchup` rows.
    live: Vec<Matrix>,
}

fn fleet(a: &Args) -> Fleet {
    let train_rows = a.days * 1440;
    let live_rows = a.runs + a.catchup;
    let every = 50; // 2 % of the hosts get a hot GPU half-way through the scoring runs
    let hosts: Vec<usize> = (0..a.hosts).collect();
    let data = par(a.threads, hosts, |h| {
        let hot = (h % every == 7).then_some(train_rows + a.runs / 2);
        let all = host_minutes(h, train_rows + live_rows, a.gpus, a.metrics, a.seed, hot);
        let (t, l) = all.split_at(train_rows * a.metrics);
        (
            Matrix::new(train_rows, a.metrics, t.to_vec()),
            Matrix::new(live_rows, a.metrics, l.to_vec()),
        )
    });
    let (train, live) = data.into_iter().unzip();
    Fleet { train, live }
}

/// Map `items` on `threads` threads, in order.
fn par<T: Send, U: Send>(threads: usize, items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let n = items.len();
    let chunk = n.div_ceil(threads.max(1)).max(1);
    let mut items = items;
    let mut parts = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        parts.push(std::mem::replace(&mut items, rest));
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = parts
            .into_iter()
            .map(|p| s.spawn(|| p.into_iter().map(&f).collect::<Vec<U>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// Training time per host (ms) and the models, `batch` hosts per `fit_batch` call.
fn train(b: &dyn Backend, fleet: &Fleet, batch: usize) -> (f64, Vec<Detector>) {
    let cfg = config();
    let t = Instant::now();
    let mut models = Vec::with_capacity(fleet.train.len());
    for chunk in fleet.train.chunks(batch) {
        let inputs: Vec<TrainInput<'_>> = chunk
            .iter()
            .map(|rows| TrainInput { rows, config: &cfg })
            .collect();
        for (i, r) in Detector::fit_batch(b, &inputs).into_iter().enumerate() {
            models.push(r.unwrap_or_else(|e| panic!("training host {}: {e:#}", models.len() + i)));
        }
    }
    (
        t.elapsed().as_secs_f64() * 1e3 / fleet.train.len() as f64,
        models,
    )
}

/// One scoring run: rows `[from, to)` of every host's live minutes, each model keyed by its
/// host and `version` (the training it came from). Returns ms and rows.
fn score_run(
    b: &dyn Backend,
    models: &mut [Detector],
    version: u64,
    fleet: &Fleet,
    from: usize,
    to: usize,
) -> (f64, Vec<Vec<ScoredRow>>) {
    let windows: Vec<Matrix> = fleet.live.iter().map(|m| m.slice_rows(from, to)).collect();
    let mut jobs: Vec<ScoreInput<'_>> = models
        .iter_mut()
        .zip(&windows)
        .map(|(detector, rows)| ScoreInput { detector, rows })
        .collect();
    let keys: Vec<ModelKey> = (0..jobs.len() as u64)
        .map(|host| ModelKey { host, version })
        .collect();
    let t = Instant::now();
    let out = Detector::score_explained_batch_keyed(b, &mut jobs, &keys, 3);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (
        ms,
        out.into_iter()
            .enumerate()
            .map(|(h, r)| r.unwrap_or_else(|e| panic!("scoring host {h}: {e:#}")))
            .collect(),
    )
}

/// Device time per step between two snapshots, `name ms` joined (empty without timestamps).
fn steps(x: &GpuStats, y: &GpuStats, per: f64) -> String {
    y.device_steps
        .iter()
        .filter_map(|(l, t)| {
            let before = x
                .device_steps
                .iter()
                .find(|(k, _)| k == l)
                .map_or(0.0, |s| s.1);
            (t - before > 0.0).then(|| format!("{l} {:.3}", (t - before) * 1e3 / per))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// GPU vs CPU agreement, with the tolerances of the crate's tests.
#[derive(Default)]
struct Agreement {
    weight_abs: f32,
    threshold_rel: f32,
    score_rel: f32,
    level_rel: f32,
    alerts_compared: usize,
    alert_mismatches: usize,
    top_mismatches: usize,
    near_ties: usize,
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / a.abs().max(0.1)
}

impl Agreement {
    fn models(&mut self, c: &[Detector], g: &[Detector]) {
        for (c, g) in c.iter().zip(g) {
            for (a, b) in c
                .weights
                .iter()
                .zip(&g.weights)
                .chain(c.bias.iter().zip(&g.bias))
            {
                self.weight_abs = self.weight_abs.max((a - b).abs());
            }
            self.threshold_rel = self
                .threshold_rel
                .max(rel(c.alert_threshold(), g.alert_threshold()));
        }
    }

    fn rows(&mut self, c: &[Vec<ScoredRow>], g: &[Vec<ScoredRow>]) {
        for (c, g) in c.iter().zip(g) {
            for (c, g) in c.iter().zip(g) {
                self.score_rel = self.score_rel.max(rel(c.score, g.score));
                self.level_rel = self.level_rel.max(rel(c.level, g.level));
                if rel(c.score, c.level) <= 1e-3 {
                    self.near_ties += 1;
                } else {
                    self.alerts_compared += 1;
                    self.alert_mismatches += usize::from(c.alert != g.alert);
                }
                if c.top[0].metric != g.top[0].metric {
                    let gap = c.top[0].share - c.top.get(1).map_or(0.0, |x| x.share);
                    if gap > 1e-3 {
                        self.top_mismatches += 1;
                    } else {
                        self.near_ties += 1;
                    }
                }
            }
        }
    }

    /// What the job stores must agree: scores, levels, alerts, explanations, thresholds.
    /// Single weights are reported, not judged: the fleet's metrics are nearly collinear
    /// (all follow the load), so a weight can move while the prediction does not.
    fn ok(&self) -> bool {
        self.threshold_rel <= 1e-3
            && self.score_rel <= 1e-3
            && self.level_rel <= 1e-3
            && self.alert_mismatches == 0
            && self.top_mismatches == 0
    }
}

struct Figures {
    train_ms_per_host: f64,
    score_p50: f64,
    catchup_ms: f64,
    models: Vec<Detector>,
    runs: Vec<Vec<Vec<ScoredRow>>>,
}

fn measure(
    name: &str,
    b: &dyn Backend,
    fleet: &Fleet,
    a: &Args,
    stats: &dyn Fn() -> Option<GpuStats>,
) -> Figures {
    // The best of `passes` trainings: the first pays one-off costs (buffer growth, first
    // touch of fresh memory) that a running server has behind it.
    let mut best: Option<(f64, Vec<Detector>)> = None;
    let (mut before, mut after) = (None, None);
    for pass in 1..=a.train_passes {
        let x = stats();
        let (ms, models) = train(b, fleet, a.train_batch);
        println!(
            "{name}: training {} hosts, pass {pass}: {ms:.3} ms per host ({:.2} s, {} hosts per batch)",
            fleet.train.len(),
            ms * fleet.train.len() as f64 / 1e3,
            a.train_batch
        );
        if best.as_ref().is_none_or(|(b, _)| ms < *b) {
            best = Some((ms, models));
            (before, after) = (x, stats());
        }
    }
    let (train_ms_per_host, mut models) = best.expect("at least one pass");
    if let (Some(x), Some(y)) = (before, after) {
        let total = train_ms_per_host * fleet.train.len() as f64;
        let (fill, wait, read, submit) = (
            (y.fill_s - x.fill_s) * 1e3,
            (y.wait_s - x.wait_s) * 1e3,
            (y.read_s - x.read_s) * 1e3,
            (y.submit_s - x.submit_s) * 1e3,
        );
        println!(
            "{name}: training split (host time): device wait {wait:.0} ms, in submit {submit:.0} ms, upload fill {fill:.0} ms, result read {read:.0} ms, other host-side work {:.0} ms ({} threads); {} submits, {:.0} MB up, {:.0} MB down",
            total - fill - wait - read - submit,
            b.threads(),
            y.submits - x.submits,
            (y.upload_bytes - x.upload_bytes) as f64 / 1e6,
            (y.download_bytes - x.download_bytes) as f64 / 1e6,
        );
        println!(
            "{name}: training host-side planning {:.1} ms, encoding {:.1} ms",
            (y.plan_s - x.plan_s) * 1e3,
            (y.encode_s - x.encode_s) * 1e3
        );
        let dev = steps(&x, &y, 1.0);
        if !dev.is_empty() {
            let sum: f64 = y.device_steps.iter().map(|s| s.1).sum::<f64>()
                - x.device_steps.iter().map(|s| s.1).sum::<f64>();
            println!(
                "{name}: training device time per step, ms per pass of {} hosts: {dev} (sum {:.1} ms)",
                fleet.train.len(),
                sum * 1e3
            );
        }
    }
    // Version 1: the models of this training (the warm-up's are version 0).
    let mut ms = Vec::with_capacity(a.runs);
    let mut runs = Vec::with_capacity(a.runs);
    let x = stats();
    for r in 0..a.runs {
        let (t, rows) = score_run(b, &mut models, 1, fleet, r, r + 1);
        ms.push(t);
        runs.push(rows);
        if r == 0 {
            println!("{name}: first scoring run (models not yet resident): {t:.3} ms");
        }
    }
    if let (Some(x), Some(y)) = (x, stats()) {
        let per = |v: f64| v * 1e3 / a.runs as f64;
        println!(
            "{name}: scoring runs: {} models uploaded, {} found resident; {} submits; per run {:.3} MB up, {:.3} MB down, host fill {:.3} ms, device wait {:.3} ms, in submit {:.3} ms, result read {:.3} ms",
            y.model_uploads - x.model_uploads,
            y.model_hits - x.model_hits,
            y.submits - x.submits,
            (y.upload_bytes - x.upload_bytes) as f64 / 1e6 / a.runs as f64,
            (y.download_bytes - x.download_bytes) as f64 / 1e6 / a.runs as f64,
            per(y.fill_s - x.fill_s),
            per(y.wait_s - x.wait_s),
            per(y.submit_s - x.submit_s),
            per(y.read_s - x.read_s),
        );
        println!(
            "{name}: scoring runs, per run: {:.3} ms inside the backend call (planning {:.3} ms, encoding {:.3} ms), the rest in the detector",
            per(y.score_call_s - x.score_call_s),
            per(y.plan_s - x.plan_s),
            per(y.encode_s - x.encode_s),
        );
        let dev = steps(&x, &y, a.runs as f64);
        if !dev.is_empty() {
            println!("{name}: scoring device time per step, ms per run: {dev}");
        }
    }
    let alerts: usize = runs
        .iter()
        .flat_map(|r| r.iter().flatten())
        .filter(|r| r.alert)
        .count();
    println!(
        "{name}: scoring {} runs of one minute × {} hosts: p50 {:.3} ms, min {:.3} ms, max {:.3} ms per run ({alerts} alerts)",
        a.runs,
        fleet.train.len(),
        p50(&ms),
        ms.iter().cloned().fold(f64::MAX, f64::min),
        ms.iter().cloned().fold(0.0, f64::max),
    );
    let catchup_ms = if a.catchup > 0 {
        // A warm-up catch-up on copies of the models first (same keys): buffers of that size
        // exist in a running server; then the measured one.
        let mut copies = models.clone();
        let (w, _) = score_run(b, &mut copies, 1, fleet, a.runs, a.runs + a.catchup);
        drop(copies);
        let (t, rows) = score_run(b, &mut models, 1, fleet, a.runs, a.runs + a.catchup);
        runs.push(rows);
        println!(
            "{name}: catch-up run of {} minutes × {} hosts: {t:.1} ms (warm-up on copies: {w:.1} ms)",
            a.catchup,
            fleet.train.len()
        );
        t
    } else {
        0.0
    };
    Figures {
        train_ms_per_host,
        score_p50: p50(&ms),
        catchup_ms,
        models,
        runs,
    }
}

/// Scoring runs of several sizes on both backends (the size where the GPU starts to win), then
/// the product's choice: one-minute runs through [`SelectedBackend`], which routes them by
/// size. Returns the routed one-minute p50 (ms) and where such a run went.
fn sweep_and_route(
    g: &Arc<GpuBackend>,
    cpu: &CpuBackend,
    models: &[Detector],
    fleet: &Fleet,
    a: &Args,
) -> (f64, &'static str) {
    let live = fleet.live.first().map_or(0, |m| m.rows);
    let mut parts = Vec::new();
    for minutes in [1usize, 2, 4, 8, 16, 32, 64] {
        if minutes > live {
            break;
        }
        let mut best = [f64::MAX; 2];
        for (k, b) in [cpu as &dyn Backend, g.as_ref()].into_iter().enumerate() {
            for _ in 0..5 {
                let mut copies = models.to_vec();
                let (t, _) = score_run(b, &mut copies, 1, fleet, 0, minutes);
                best[k] = best[k].min(t);
            }
        }
        parts.push(format!(
            "{minutes} min: cpu {:.3} ms, gpu {:.3} ms",
            best[0], best[1]
        ));
    }
    println!(
        "scoring by run size (best of 5, {} hosts): {}",
        fleet.train.len(),
        parts.join("; ")
    );
    // The product's backend around the same device (the GPU's scoring calls, below its line,
    // go to the CPU backend with the same threads).
    let sel = SelectedBackend::with_gpu(Arc::clone(g), a.threads, None);
    let work = |minutes: usize| -> u64 {
        let d = a.metrics as u64;
        fleet.train.len() as u64 * minutes as u64 * d * (3 * d + 1)
    };
    let on = |m: usize| match sel.scores_on(work(m)) {
        BackendKind::Cpu => "cpu",
        BackendKind::Gpu => "gpu",
    };
    let mut copies = models.to_vec();
    let mut ms = Vec::with_capacity(a.runs);
    for r in 0..a.runs {
        let (t, _) = score_run(&sel, &mut copies, 1, fleet, r, r + 1);
        ms.push(t);
    }
    let first_gpu = (1..=live).find(|&m| on(m) == "gpu");
    println!(
        "auto: a one-minute run goes to the {} (p50 {:.3} ms over {} runs); runs of {} go to the gpu",
        on(1),
        p50(&ms),
        a.runs,
        first_gpu.map_or("no size up to the catch-up".to_string(), |m| format!(
            "{m} minutes and more"
        ))
    );
    (p50(&ms), on(1))
}

fn main() {
    let a = parse();
    let total = Instant::now();
    println!(
        "fleet: {} hosts × {} GPUs = {} GPUs, {} metrics per host, {} days ({} minutes) of training, {} scoring runs + a {}-minute catch-up; {} host threads",
        a.hosts,
        a.gpus,
        a.hosts * a.gpus,
        a.metrics,
        a.days,
        a.days * 1440,
        a.runs,
        a.catchup,
        a.threads
    );
    let t = Instant::now();
    let fleet = fleet(&a);
    println!(
        "generated in {:.1} s ({:.0} MB of training rows)",
        t.elapsed().as_secs_f64(),
        (fleet.train.len() * a.days * 1440 * a.metrics * 4) as f64 / 1e6
    );

    // Today's path in the product: one host at a time, single-threaded CPU backend.
    let base = a.baseline_hosts.min(a.hosts);
    let today = (base > 0).then(|| {
        let one = CpuBackend::single_threaded();
        let t = Instant::now();
        for rows in &fleet.train[..base] {
            Detector::fit_with(&one, rows, config()).expect("training");
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / base as f64;
        println!(
            "cpu, per host, 1 thread (the job today): training {ms:.2} ms per host ({base} hosts)"
        );
        ms
    });

    let cpu = CpuBackend { threads: a.threads };
    let c = measure(
        &format!("cpu ({} threads)", a.threads),
        &cpu,
        &fleet,
        &a,
        &|| None,
    );

    let gpu = if a.cpu_only {
        None
    } else {
        let t = Instant::now();
        match GpuBackend::with_options(GpuOptions {
            allow_software: a.software,
            adapter_name: a.adapter.clone(),
            max_buffer_bytes: a.max_buffer_mb << 20,
            host_threads: a.threads,
            pipeline_bytes: a.pipeline_mb << 20,
            profile: a.profile,
        }) {
            Ok(g) => {
                let i = g.adapter_info();
                let (bind, buf) = g.buffer_limits();
                println!(
                    "adapter: {} | vendor 0x{:04x} device 0x{:04x} | {:?} | {:?} | driver {} {} | opened in {:.0} ms | buffers up to {} MiB (binding {} MiB)",
                    i.name,
                    i.vendor,
                    i.device,
                    i.device_type,
                    i.backend,
                    i.driver,
                    i.driver_info,
                    t.elapsed().as_secs_f64() * 1e3,
                    buf >> 20,
                    bind >> 20
                );
                match g.upload_probe(256 << 20) {
                    Ok((fill, copy)) => println!(
                        "gpu: upload probe, 256 MiB: host fill {:.1} GB/s ({} threads), copy to the device {:.1} GB/s",
                        268.435456e-3 / fill.max(1e-9),
                        a.threads,
                        268.435456e-3 / copy.max(1e-9)
                    ),
                    Err(e) => println!("gpu: upload probe failed: {e}"),
                }
                if g.profiling() {
                    println!("gpu: steps timed on the device (timestamp queries)");
                }
                match g.device_training_unavailable() {
                    None => {
                        println!("gpu: whole trainings on the device (f64 statistics and solve)")
                    }
                    Some(why) => println!("gpu: trainings split between device and host: {why}"),
                }
                Some(Arc::new(g))
            }
            Err(e) => {
                println!("gpu: none ({e})");
                None
            }
        }
    };

    let mut line = format!(
        "BENCH anomaly-job hosts={} gpus={}",
        a.hosts,
        a.hosts * a.gpus
    );
    let mut ok = true;
    match &gpu {
        None => {
            line += &format!(
                " backend=cpu train_ms_per_host={:.3} score_run_ms_p50={:.3}",
                c.train_ms_per_host, c.score_p50
            );
        }
        Some(g) => {
            let software = g.info().software;
            let gb: &GpuBackend = g;
            // Warm up: the driver compiles the pipelines on first use.
            let t = Instant::now();
            let warm = Fleet {
                train: fleet.train[..a.hosts.min(4)].to_vec(),
                live: fleet.live[..a.hosts.min(4)].to_vec(),
            };
            let (_, mut wm) = train(gb, &warm, 4);
            score_run(gb, &mut wm, 0, &warm, 0, 1);
            println!("gpu: warm-up {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            let before = g.stats();
            let label = if software {
                "gpu path on a SOFTWARE adapter (not a GPU)"
            } else {
                "gpu"
            };
            let f = measure(label, gb, &fleet, &a, &|| Some(g.stats()));
            let st = g.stats();
            println!(
                "gpu: {} submits, {:.0} MB up, {:.0} MB down, {} buffer allocations; host fill {:.0} ms, device wait {:.0} ms, in submit {:.0} ms, result read {:.0} ms",
                st.submits - before.submits,
                (st.upload_bytes - before.upload_bytes) as f64 / 1e6,
                (st.download_bytes - before.download_bytes) as f64 / 1e6,
                st.buffer_allocations,
                (st.fill_s - before.fill_s) * 1e3,
                (st.wait_s - before.wait_s) * 1e3,
                (st.submit_s - before.submit_s) * 1e3,
                (st.read_s - before.read_s) * 1e3,
            );
            let mut ag = Agreement::default();
            ag.models(&c.models, &f.models);
            for (cr, gr) in c.runs.iter().zip(&f.runs) {
                ag.rows(cr, gr);
            }
            ok = ag.ok();
            println!(
                "agreement gpu vs cpu: weights {:.2e} abs (reported only), thresholds {:.2e} rel, scores {:.2e} rel, levels {:.2e} rel, {} of {} alert decisions differ, {} top metrics differ, {} near-ties skipped: {}",
                ag.weight_abs,
                ag.threshold_rel,
                ag.score_rel,
                ag.level_rel,
                ag.alert_mismatches,
                ag.alerts_compared,
                ag.top_mismatches,
                ag.near_ties,
                if ok { "OK" } else { "FAILED" }
            );
            let (auto_p50, auto_on) = if software {
                (None, None)
            } else {
                let (p50, on) = sweep_and_route(g, &cpu, &f.models, &fleet, &a);
                (Some(p50), Some(on))
            };
            let st = f.train_ms_per_host.max(1e-9);
            let ss = f.score_p50.max(1e-9);
            if software {
                line += &format!(
                    " backend=cpu train_ms_per_host={:.3} score_run_ms_p50={:.3} software_adapter_train_ms_per_host={:.3} software_adapter_score_run_ms_p50={:.3}",
                    c.train_ms_per_host, c.score_p50, f.train_ms_per_host, f.score_p50
                );
            } else {
                line += &format!(
                    " backend=gpu train_ms_per_host={:.3} score_run_ms_p50={:.3} gpu_train_speedup={:.2} gpu_score_speedup={:.2} gpu_catchup_speedup={:.2}",
                    f.train_ms_per_host,
                    f.score_p50,
                    c.train_ms_per_host / st,
                    c.score_p50 / ss,
                    c.catchup_ms / f.catchup_ms.max(1e-9)
                );
                if let (Some(p50), Some(on)) = (auto_p50, auto_on) {
                    line += &format!(" auto_score_run_ms_p50={p50:.3} auto_score_backend={on}");
                }
            }
        }
    }
    line += &format!(
        " cpu_train_ms_per_host={:.3} cpu_score_run_ms_p50={:.3} threads={} agree={}",
        c.train_ms_per_host,
        c.score_p50,
        a.threads,
        if gpu.is_none() {
            "n/a"
        } else if ok {
            "ok"
        } else {
            "failed"
        }
    );
    if let Some(ms) = today {
        line += &format!(" today_train_ms_per_host={ms:.3}");
    }
    println!("total {:.1} s", total.elapsed().as_secs_f64());
    println!("{line}");
    if !ok {
        std::process::exit(1);
    }
}
