//! The anomaly job: once a minute on the job leader, every host's new minutes of
//! 1-minute rollups are scored against a model of that host's own normal behaviour
//! (`rackwatch-anomaly`), and stored with the metrics that drove each score.
//!
//! * Features: a fixed list ([`FEATURES`]) of host metrics and per-host GPU aggregates,
//!   built in SQL from `host_samples_1m` and `gpu_samples_1m`.
//! * Training: per host, on the last `anomaly.train_days` of rollups (minutes the previous
//!   model called anomalous are left out), again after `anomaly.retrain_hours`. A host with
//!   fewer than `anomaly.min_train_minutes` minutes gets no model; it is retried hourly and
//!   listed with the reason by `GET /api/v1/anomalies`.
//! * Scoring: causal, from a per-host watermark (`anomaly_models.scored_until`). The
//!   detector's streaming state is stored after every run, so scoring minute by minute
//!   equals scoring in one pass.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use rackwatch_anomaly::backend::ModelKey;
use rackwatch_anomaly::detector::StreamState;
use rackwatch_anomaly::{
    Backend, CpuBackend, Detector, DetectorConfig, Matrix, ScoreInput, ScoredRow, SelectOptions,
    SelectedBackend, TrainInput,
};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::config::AnomalyConfig;
use crate::model::format;
use crate::store::Store;

/// How a feature's value is shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Load,
    Bytes,
    BytesPerSec,
    Watts,
    Celsius,
    Megahertz,
}

/// One input of the per-host models.
#[derive(Debug)]
pub struct Feature {
    /// Name in explanations, alerts and the API; the unit is part of it.
    pub name: &'static str,
    pub unit: Unit,
    /// The smallest change that matters, in the feature's unit (in ln units for `log`).
    /// Features enter the detector in multiples of their step, and a metric that was flat
    /// in training counts as varying by [`STD_FLOOR_STEPS`] steps, so that a one-step
    /// change of a flat metric weighs like a one-sigma residual, not like a fault.
    step: f64,
    /// Heavy-tailed byte rates enter as ln(1 + x).
    log: bool,
    /// Aggregates taken at one GPU (max or min over the host's GPUs) remember which GPU:
    /// the slot of its index in the query's `gpus` column.
    gpu_slot: Option<usize>,
}

const fn feature(name: &'static str, unit: Unit, step: f64) -> Feature {
    Feature {
        name,
        unit,
        step,
        log: false,
        gpu_slot: None,
    }
}

const fn log_rate(name: &'static str) -> Feature {
    Feature {
        name,
        unit: Unit::BytesPerSec,
        step: 0.1,
        log: true,
        gpu_slot: None,
    }
}

const fn at_gpu(name: &'static str, unit: Unit, step: f64, slot: usize) -> Feature {
    Feature {
        name,
        unit,
        step,
        log: false,
        gpu_slot: Some(slot),
    }
}

/// The fixed feature list, in the column order of `vals` in [`feature_rows`]'s query. GPU aggregates
/// are over the GPUs that reported in that minute, each GPU's 1-minute mean first.
pub const FEATURES: [Feature; 16] = [
    feature("cpu_util_pct", Unit::Percent, 1.0),
    feature("load1", Unit::Load, 0.1),
    feature("mem_used_pct", Unit::Percent, 0.5),
    log_rate("disk_read_bytes_per_s"),
    log_rate("disk_write_bytes_per_s"),
    log_rate("net_rx_bytes_per_s"),
    log_rate("net_tx_bytes_per_s"),
    feature("gpu_util_mean_pct", Unit::Percent, 1.0),
    at_gpu("gpu_util_max_pct", Unit::Percent, 1.0, 0),
    feature("gpu_mem_util_mean_pct", Unit::Percent, 1.0),
    at_gpu("gpu_mem_used_max_bytes", Unit::Bytes, 268_435_456.0, 1),
    feature("gpu_power_mean_watts", Unit::Watts, 5.0),
    at_gpu("gpu_power_max_watts", Unit::Watts, 5.0, 2),
    feature("gpu_temp_mean_celsius", Unit::Celsius, 1.0),
    at_gpu("gpu_temp_max_celsius", Unit::Celsius, 1.0, 3),
    at_gpu("gpu_sm_clock_min_mhz", Unit::Megahertz, 15.0, 4),
];

/// GPU index columns of [`feature_rows`]'s query (util, memory used, power, temperature, clock).
const GPU_SLOTS: usize = 5;

/// A flat training metric counts as varying by this many steps (see [`Feature::step`]):
/// the detector floors a metric's residual scale at 0.2 of its standard deviation, so a
/// floor of 5 steps makes a one-step residual of a flat metric score 1.
pub const STD_FLOOR_STEPS: f32 = 5.0;
/// Scaled residuals are clipped at 10 (energy 100) before squaring, not at the detector's
/// benchmark default 100: a single minute far off (a reading glitch) then lifts the
/// smoothed score for a few minutes instead of a quarter of an hour, so an `anomaly`
/// alert rule with `for_secs` ≥ 600 needs a sustained deviation, while one metric pinned
/// at the clip still scores 100 / 16 ≈ 6, several times the usual alert level.
pub const CLIP: f32 = 10.0;
/// Host models score with the joint (multivariate) predictor alone, not the benchmark
/// default's blend with per-metric univariate models. A host's typical fault is a sustained
/// decoupling of tightly coupled GPU quantities (a GPU running 20 °C hotter at the same load):
/// the joint model keeps seeing it, while a metric's own AR model adapts to the new level
/// within minutes, so the blend halves such a fault's score (8.2 → 4.1 against a level of
/// 2.2 in the integration test's hot GPU). The blend's gain is in label-free alerting on the
/// SMD servers (alert-F1 0.3985 → 0.405), which have no labelled counterpart here.
pub const UNIVARIATE_WEIGHT: f32 = 0.0;
/// A feature enters a host's model when present in at least this share of its training
/// minutes (hosts without GPUs get host metrics only).
const MIN_COVERAGE: f64 = 0.5;
/// Minutes younger than this are left for the next run: their rollups can still change
/// (samples arrive up to a ship interval late; the rollup job runs once a minute).
pub const SETTLE_MINUTES: i64 = 2;
/// After a longer pause, older unscored minutes are skipped.
const MAX_CATCHUP_MINUTES: i64 = 24 * 60;
/// Most minutes scored per host in one run (catching up after a pause takes a few runs).
const MAX_MINUTES_PER_RUN: i64 = 180;
/// How long a host's watermark waits at its newest rolled-up minute for minutes its agent
/// delivers late.
const HOLD_MINUTES: i64 = 60;
/// Hosts scored per query and transaction.
const HOST_BATCH: usize = 500;
/// After this long without data a host's stream restarts (see [`HostModel::score`]).
pub const RESTART_GAP_MINUTES: i64 = 10;
/// A host without a model is tried again after this long.
const RETRY_MINUTES: i64 = 60;

/// One minute of one host: raw feature values in [`FEATURES`] order and, for per-GPU
/// aggregates, the GPU they were taken at.
#[derive(Debug, Clone, PartialEq)]
pub struct Minute {
    pub ts: DateTime<Utc>,
    pub values: Vec<Option<f64>>,
    pub gpus: Vec<Option<i16>>,
}

impl Feature {
    fn input_of(&self, v: f64) -> f32 {
        let v = if self.log { v.max(0.0).ln_1p() } else { v };
        (v / self.step) as f32
    }

    fn value_of(&self, x: f32) -> f64 {
        let v = f64::from(x) * self.step;
        if self.log {
            v.exp_m1()
        } else {
            v
        }
    }
}

/// The feature called `name`.
pub fn feature_named(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name == name)
}

/// One metric's part in a minute's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AnomalyExplanation)]
pub struct Explanation {
    /// The metric (one of the anomaly features; the unit is in its name).
    #[schema(schema_with = feature_names)]
    pub metric: String,
    /// Share of the score, 0–1.
    #[schema(minimum = 0, maximum = 1)]
    pub share: f32,
    /// The metric in that minute, in the unit of its name (the last value seen when it
    /// was missing).
    pub value: f64,
    /// The metric's mean over the training window.
    pub typical: f64,
    /// For max/min over GPUs: the GPU index it was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<i16>,
    /// When `value` was seen, where that is an earlier minute. While the score is over its
    /// level, `value` is the one farthest from typical since it went over: the score is a
    /// moving average, and as it decays after a fault the metric is back to typical (a
    /// GPU's 90 °C at 20:42 is shown, not its 73 °C now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// The value of one feature that stood farthest from typical since the host's score went
/// over its level (outside such an episode, the current minute's; distance −1): the
/// distance, the value, the GPU it was taken at and its minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    dev: f32,
    value: f32,
    gpu: Option<i16>,
    ts: Option<DateTime<Utc>>,
}

/// An anomaly feature's value with its unit.
pub fn feature_value(unit: Option<Unit>, v: f64) -> String {
    match unit {
        Some(Unit::Percent) => format::num(Some(v), 0, "%"),
        Some(Unit::Load) => format::num(Some(v), 1, ""),
        Some(Unit::Bytes) => format::bytes(Some(v)),
        Some(Unit::BytesPerSec) => format::rate(Some(v)),
        Some(Unit::Watts) => format::num(Some(v), 0, "W"),
        Some(Unit::Celsius) => format::num(Some(v), 0, "°C"),
        Some(Unit::Megahertz) => format::num(Some(v), 0, "MHz"),
        None => format::num(Some(v), 2, ""),
    }
}

/// `gpu_temp_max_celsius 91 °C on GPU 3 (typical 66 °C, 48 % of the score), …`
pub fn anomaly_explanation(top: &[Explanation]) -> String {
    top.iter()
        .map(|e| {
            let unit = feature_named(&e.metric).map(|f| f.unit);
            let gpu = e.gpu.map(|g| format!(" on GPU {g}")).unwrap_or_default();
            let at =
                e.at.map(|t| format!(" at {}", t.format("%H:%M UTC")))
                    .unwrap_or_default();
            format!(
                "{} {}{gpu}{at} (typical {}, {:.0} % of the score)",
                e.metric,
                feature_value(unit, e.value),
                feature_value(unit, e.typical),
                e.share * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One scored minute.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredMinute {
    pub ts: DateTime<Utc>,
    pub score: f32,
    /// The level the score was held to; `anomalous == (score > threshold)`.
    pub threshold: f32,
    pub anomalous: bool,
    pub top: Vec<Explanation>,
}

/// A host's model: the detector, the features it reads (indices into [`FEATURES`]), the
/// last input of each (it fills a feature missing from a minute) and the last minute seen.
#[derive(Debug, Clone, PartialEq)]
pub struct HostModel {
    pub detector: Detector,
    pub features: Vec<usize>,
    pub last: Vec<f32>,
    pub last_ts: Option<DateTime<Utc>>,
    /// Per feature, the value the explanations show (see [`Explanation::at`]).
    pub held: Vec<Held>,
}

/// What is stored in `anomaly_models.state` after every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredState {
    stream: StreamState,
    last: Vec<f32>,
    #[serde(default)]
    last_ts: Option<DateTime<Utc>>,
    #[serde(default)]
    held: Vec<Held>,
}

/// Why a host got no model.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// Fewer minutes with data than required.
    TooFewMinutes { have: usize },
    /// Training itself failed.
    Failed(String),
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A host's training set, ready for the detector: see [`HostModel::train_batch`].
struct Prepared {
    features: Vec<usize>,
    last: Vec<f32>,
    last_ts: Option<DateTime<Utc>>,
    matrix: Matrix,
}

/// The product's detector settings (see the constants above).
fn host_config(pot_risk: f64) -> DetectorConfig {
    DetectorConfig {
        std_floor: STD_FLOOR_STEPS,
        clip: CLIP,
        pot_risk,
        univariate_weight: UNIVARIATE_WEIGHT,
        ..DetectorConfig::default()
    }
}

impl HostModel {
    /// Train on a host's minutes (oldest first). Needs `min_minutes` minutes with data.
    pub fn train(minutes: &[Minute], min_minutes: usize, pot_risk: f64) -> Result<Self, Skip> {
        let prepared = Self::prepare(minutes, min_minutes);
        Self::train_batch(&CpuBackend::single_threaded(), vec![prepared], pot_risk)
            .pop()
            .expect("one host")
    }

    /// The features a host's model reads and its training matrix, or why it gets none.
    fn prepare(minutes: &[Minute], min_minutes: usize) -> Result<Prepared, Skip> {
        let rows: Vec<&Minute> = minutes
            .iter()
            .filter(|m| m.values.iter().any(Option::is_some))
            .collect();
        if rows.len() < min_minutes.max(1) {
            return Err(Skip::TooFewMinutes { have: rows.len() });
        }
        let features: Vec<usize> = (0..FEATURES.len())
            .filter(|&j| {
                let present = rows.iter().filter(|m| m.values[j].is_some()).count();
                present as f64 >= MIN_COVERAGE * rows.len() as f64
            })
            .collect();
        if features.is_empty() {
            return Err(Skip::Failed(
                "no metric is reported in half of the training minutes".into(),
            ));
        }
        // Leading gaps take the first value seen.
        let mut last: Vec<f32> = features
            .iter()
            .map(|&j| {
                rows.iter()
                    .find_map(|m| m.values[j])
                    .map_or(0.0, |v| FEATURES[j].input_of(v))
            })
            .collect();
        let (matrix, used) = inputs(&features, &mut last, &rows);
        let last_ts = used.last().map(|m| m.ts);
        Ok(Prepared {
            features,
            last,
            last_ts,
            matrix,
        })
    }

    /// Train many hosts in one batched backend call ([`Detector::fit_batch`]: on a GPU, one
    /// device batch for all of them); one result per host, in order.
    fn train_batch(
        backend: &dyn Backend,
        hosts: Vec<Result<Prepared, Skip>>,
        pot_risk: f64,
    ) -> Vec<Result<Self, Skip>> {
        let config = host_config(pot_risk);
        let ready: Vec<TrainInput<'_>> = hosts
            .iter()
            .filter_map(|h| h.as_ref().ok())
            .map(|p| TrainInput {
                rows: &p.matrix,
                config: &config,
            })
            .collect();
        let mut fitted = Detector::fit_batch(backend, &ready).into_iter();
        hosts
            .into_iter()
            .map(|h| {
                let p = h?;
                let detector = fitted
                    .next()
                    .expect("one fit per prepared host")
                    .map_err(|e| Skip::Failed(format!("{e:#}")))?;
                Ok(HostModel {
                    detector,
                    held: vec![Held::default(); p.features.len()],
                    features: p.features,
                    last: p.last,
                    last_ts: p.last_ts,
                })
            })
            .collect()
    }

    /// Names of the model's features, in column order.
    pub fn metric_names(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|&j| FEATURES[j].name.to_string())
            .collect()
    }

    /// Score minutes that follow the last one scored (oldest first), continuing the stream.
    /// Minutes without any of the model's features are not scored. After more than
    /// [`RESTART_GAP_MINUTES`] without data the stream restarts: the first minute back is
    /// not predicted from the minutes before the gap (the smoothed score starts afresh;
    /// the drift guard's memory of recent scores is kept).
    pub fn score(&mut self, minutes: &[Minute], top_k: usize) -> anyhow::Result<Vec<ScoredMinute>> {
        let mut hosts = [HostScoring {
            model: self,
            minutes,
            key: None,
        }];
        score_hosts(&CpuBackend::single_threaded(), &mut hosts, top_k)
            .pop()
            .expect("one host")
    }

    /// Scored minutes of the detector's rows for `used` (the values it saw: `seen`).
    fn scored(
        &mut self,
        rows: Vec<ScoredRow>,
        used: &[&Minute],
        seen: &[f32],
    ) -> Vec<ScoredMinute> {
        let d = self.features.len();
        if self.held.len() != d {
            self.held = vec![Held::default(); d];
        }
        rows.into_iter()
            .zip(used)
            .enumerate()
            .map(|(i, (r, m))| {
                for (k, h) in self.held.iter_mut().enumerate() {
                    let f = &FEATURES[self.features[k]];
                    let v = seen[i * d + k];
                    let dev = (v - self.detector.mean[k]).abs();
                    // Outside an episode the current minute is shown (and any minute of
                    // the next episode replaces it).
                    if !r.alert || dev >= h.dev {
                        *h = Held {
                            dev: if r.alert { dev } else { -1.0 },
                            value: v,
                            gpu: f.gpu_slot.and_then(|s| m.gpus.get(s).copied().flatten()),
                            ts: Some(m.ts),
                        };
                    }
                }
                ScoredMinute {
                    ts: m.ts,
                    score: r.score,
                    threshold: r.level,
                    anomalous: r.alert,
                    top: r
                        .top
                        .iter()
                        .map(|c| {
                            let f = &FEATURES[self.features[c.metric]];
                            let h = &self.held[c.metric];
                            Explanation {
                                metric: f.name.to_string(),
                                share: (c.share * 1000.0).round() / 1000.0,
                                value: round3(f.value_of(h.value)),
                                typical: round3(f.value_of(self.detector.mean[c.metric])),
                                gpu: h.gpu,
                                at: h.ts.filter(|t| *t != m.ts),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn stored_state(&self) -> StoredState {
        StoredState {
            stream: self.detector.state.clone(),
            last: self.last.clone(),
            last_ts: self.last_ts,
            held: self.held.clone(),
        }
    }
}

/// One host's part in [`score_hosts`]: its model (whose stream continues), its new minutes
/// (oldest first) and the key its model stays resident under on a GPU.
pub struct HostScoring<'a> {
    pub model: &'a mut HostModel,
    pub minutes: &'a [Minute],
    pub key: Option<ModelKey>,
}

/// [`HostModel::score`] for many hosts, batched: the hosts' first runs of minutes without a
/// restarting gap go to the backend in one call ([`Detector::score_explained_batch_keyed`]:
/// one GPU submit), their second runs (after a gap) in the next, and so on. Equal to scoring
/// host by host (bit for bit on the CPU backend). A host whose scoring fails gets the error
/// and its later minutes are not scored; its model is then not to be stored.
pub fn score_hosts(
    backend: &dyn Backend,
    hosts: &mut [HostScoring<'_>],
    top_k: usize,
) -> Vec<anyhow::Result<Vec<ScoredMinute>>> {
    let gap = Duration::minutes(RESTART_GAP_MINUTES);
    // Each host's minutes with any of its features, cut at the gaps.
    let segments: Vec<Vec<Vec<&Minute>>> = hosts
        .iter()
        .map(|h| {
            let refs: Vec<&Minute> = h
                .minutes
                .iter()
                .filter(|m| h.model.features.iter().any(|&j| m.values[j].is_some()))
                .collect();
            refs.chunk_by(|a, b| b.ts - a.ts <= gap)
                .map(<[&Minute]>::to_vec)
                .collect()
        })
        .collect();
    let mut out: Vec<anyhow::Result<Vec<ScoredMinute>>> =
        hosts.iter().map(|_| Ok(Vec::new())).collect();
    let rounds = segments.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        // (host, matrix, minutes used, values seen) of the hosts with an r-th run.
        let mut batch: Vec<(usize, Matrix, Vec<&Minute>)> = Vec::new();
        for (i, h) in hosts.iter_mut().enumerate() {
            let Some(segment) = segments[i].get(r) else {
                continue;
            };
            if out[i].is_err() {
                continue;
            }
            let model = &mut *h.model;
            if model.last_ts.is_some_and(|t| segment[0].ts - t > gap) {
                model.detector.state.history.clear();
                model.detector.state.started = false;
                model.held.fill(Held::default());
            }
            let (matrix, used) = inputs(&model.features, &mut model.last, segment);
            model.last_ts = segment.last().map(|m| m.ts);
            if matrix.rows > 0 {
                batch.push((i, matrix, used));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let keyed = batch.iter().all(|(i, ..)| hosts[*i].key.is_some());
        let keys: Vec<ModelKey> = if keyed {
            batch.iter().filter_map(|(i, ..)| hosts[*i].key).collect()
        } else {
            Vec::new()
        };
        let mut jobs: Vec<ScoreInput<'_>> = Vec::with_capacity(batch.len());
        let mut next = batch.iter().peekable();
        for (i, h) in hosts.iter_mut().enumerate() {
            if let Some((_, matrix, _)) = next.next_if(|(b, ..)| *b == i) {
                jobs.push(ScoreInput {
                    detector: &mut h.model.detector,
                    rows: matrix,
                });
            }
        }
        let results = Detector::score_explained_batch_keyed(backend, &mut jobs, &keys, top_k);
        drop(jobs);
        for ((i, matrix, used), rows) in batch.iter().zip(results) {
            match rows {
                Ok(rows) => {
                    let scored = hosts[*i].model.scored(rows, used, &matrix.data);
                    if let Ok(v) = &mut out[*i] {
                        v.extend(scored);
                    }
                }
                Err(e) => out[*i] = Err(e),
            }
        }
    }
    out
}

/// Detector inputs of the minutes that have any of `features`, a missing value filled with
/// the last one seen (kept in `last`); also which minutes those rows are.
fn inputs<'a>(
    features: &[usize],
    last: &mut [f32],
    minutes: &[&'a Minute],
) -> (Matrix, Vec<&'a Minute>) {
    let d = features.len();
    let mut data = Vec::with_capacity(minutes.len() * d);
    let mut used = Vec::with_capacity(minutes.len());
    for m in minutes {
        if !features.iter().any(|&j| m.values[j].is_some()) {
            continue;
        }
        for (k, &j) in features.iter().enumerate() {
            if let Some(v) = m.values[j] {
                last[k] = FEATURES[j].input_of(v);
            }
            data.push(last[k]);
        }
        used.push(*m);
    }
    (Matrix::new(used.len(), d, data), used)
}

/// Feature rows of `hosts` for buckets in `[from, to)`, per host, oldest first.
async fn feature_rows(
    store: &Store,
    hosts: &[i64],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    skip_anomalous: bool,
) -> Result<HashMap<i64, Vec<Minute>>, sqlx::Error> {
    // `$1` host ids, `[$2, $3)` buckets; `$4` leaves out minutes already scored anomalous
    // (training). Column i of `vals` is `FEATURES[i]`.
    let rows = sqlx::query!(
        r#"
WITH h AS (
    SELECT host_id, bucket, cpu_util_pct::float8 AS cpu, load1::float8 AS load1,
           mem_used_bytes::float8 / nullif(mem_total_bytes, 0)::float8 * 100 AS mem,
           disk_read_bytes_per_s AS dr, disk_write_bytes_per_s AS dw,
           net_rx_bytes_per_s AS nr, net_tx_bytes_per_s AS nt
      FROM host_samples_1m
     WHERE host_id = ANY($1) AND bucket >= $2 AND bucket < $3),
g AS (
    SELECT host_id, bucket,
           avg(util_pct)::float8 AS util_mean, max(util_pct)::float8 AS util_max,
           avg(mem_util_pct)::float8 AS mem_util_mean, max(mem_used_bytes)::float8 AS mem_used_max,
           avg(power_watts)::float8 AS power_mean, max(power_watts)::float8 AS power_max,
           avg(temp_celsius)::float8 AS temp_mean, max(temp_celsius)::float8 AS temp_max,
           min(sm_clock_mhz)::float8 AS clock_min,
           (array_agg(gpu_index ORDER BY util_pct DESC NULLS LAST))[1] AS util_gpu,
           (array_agg(gpu_index ORDER BY mem_used_bytes DESC NULLS LAST))[1] AS mem_gpu,
           (array_agg(gpu_index ORDER BY power_watts DESC NULLS LAST))[1] AS power_gpu,
           (array_agg(gpu_index ORDER BY temp_celsius DESC NULLS LAST))[1] AS temp_gpu,
           (array_agg(gpu_index ORDER BY sm_clock_mhz ASC NULLS LAST))[1] AS clock_gpu
      FROM gpu_samples_1m
     WHERE host_id = ANY($1) AND bucket >= $2 AND bucket < $3
     GROUP BY host_id, bucket),
r AS (
    SELECT host_id, bucket,
           ARRAY[cpu, load1, mem, dr, dw, nr, nt, util_mean, util_max, mem_util_mean, mem_used_max,
                 power_mean, power_max, temp_mean, temp_max, clock_min] AS vals,
           ARRAY[util_gpu, mem_gpu, power_gpu, temp_gpu, clock_gpu] AS gpus
      FROM h FULL JOIN g USING (host_id, bucket))
SELECT r.host_id AS "host_id!", r.bucket AS "bucket!", r.vals AS "vals!: Vec<Option<f64>>",
       r.gpus AS "gpus!: Vec<Option<i16>>" FROM r
  -- A join, not a correlated EXISTS: Citus plans no correlated subquery over a CTE. The
  -- bounds keep what it gathers from the workers to the minutes asked for.
  LEFT JOIN anomaly_scores s ON $4 AND s.host_id = r.host_id AND s.ts = r.bucket AND s.is_anomalous
        AND s.host_id = ANY($1) AND s.ts >= $2 AND s.ts < $3
 WHERE s.host_id IS NULL
 ORDER BY r.host_id, r.bucket"#,
        hosts,
        from,
        to,
        skip_anomalous,
    )
    .fetch_all(&store.pool)
    .await?;
    let mut out: HashMap<i64, Vec<Minute>> = HashMap::new();
    for r in rows {
        let (host, ts, values, gpus) = (r.host_id, r.bucket, r.vals, r.gpus);
        debug_assert_eq!(values.len(), FEATURES.len());
        debug_assert_eq!(gpus.len(), GPU_SLOTS);
        // Non-finite values cannot pass ingest validation; be safe anyway.
        let values = values
            .into_iter()
            .map(|v| v.filter(|x| x.is_finite()))
            .collect();
        out.entry(host)
            .or_default()
            .push(Minute { ts, values, gpus });
    }
    Ok(out)
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub trained: usize,
    /// Hosts left without a model this run (too little history, or training failed).
    pub skipped: usize,
    pub scored_minutes: usize,
    pub anomalous_minutes: usize,
}

#[derive(Debug, sqlx::FromRow)]
struct ModelMeta {
    host_id: i64,
    name: String,
    status: Option<String>,
    trained_at: Option<DateTime<Utc>>,
    retried_at: Option<DateTime<Utc>>,
    metrics: Option<Vec<String>>,
    scored_until: Option<DateTime<Utc>>,
}

/// The job, with the trained detectors of the hosts it scores cached between runs (they
/// only change when a host is retrained; the small streaming state is read every run, so
/// another leader's progress is never lost), and the backend they train and score on.
pub struct AnomalyJob {
    models: HashMap<i64, (DateTime<Utc>, Detector)>,
    backend: Arc<SelectedBackend>,
}

impl Default for AnomalyJob {
    /// On the CPU backend.
    fn default() -> Self {
        Self::new(Arc::new(SelectedBackend::cpu(
            CpuBackend::default().threads,
        )))
    }
}

impl std::fmt::Debug for AnomalyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyJob")
            .field("models", &self.models.len())
            .field("backend", &self.backend.info().to_string())
            .finish()
    }
}

/// The backend `anomaly.backend` asks for, opened once at start-up; logs one line saying
/// which runs (and, for `auto` on the CPU, why). `gpu` without a usable adapter, or in a
/// build without GPU support, is an error that says so.
pub fn open_backend(cfg: &AnomalyConfig) -> anyhow::Result<Arc<SelectedBackend>> {
    let opts = SelectOptions {
        allow_software_adapter: cfg.software_adapter,
        adapter_name: Some(cfg.adapter.trim().to_string()).filter(|a| !a.is_empty()),
        ..SelectOptions::default()
    };
    let backend = SelectedBackend::select(cfg.backend, &opts)
        .map_err(|e| anyhow::anyhow!("anomaly.backend = \"{}\": {e}", cfg.backend))?;
    match backend.fallback_reason() {
        Some(why) => tracing::info!("{why}"),
        None => tracing::info!("anomaly detector runs on {}", backend.info()),
    }
    Ok(Arc::new(backend))
}

/// A model's key on a GPU that keeps models resident: the host and its training time.
fn model_key(host: i64, trained_at: DateTime<Utc>) -> ModelKey {
    ModelKey {
        host: host as u64,
        version: trained_at.timestamp_micros() as u64,
    }
}

impl AnomalyJob {
    /// A job training and scoring on `backend` (see [`open_backend`]).
    pub fn new(backend: Arc<SelectedBackend>) -> Self {
        AnomalyJob {
            models: HashMap::new(),
            backend,
        }
    }

    /// The backend the job runs on.
    pub fn backend(&self) -> &Arc<SelectedBackend> {
        &self.backend
    }

    /// Train what is due, then score every trained host's minutes up to `now` less
    /// [`SETTLE_MINUTES`].
    pub async fn run(
        &mut self,
        store: &Store,
        cfg: &AnomalyConfig,
        now: DateTime<Utc>,
    ) -> anyhow::Result<RunSummary> {
        // Minutes are scored once settled and rolled up: a minute the rollups have not
        // reached yet (their run failed, or lags) waits for them.
        let rolled_up: Option<DateTime<Utc>> =
            sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
                .fetch_optional(&store.pool)
                .await?
                .flatten();
        let settled = now.duration_trunc(Duration::minutes(1))? - Duration::minutes(SETTLE_MINUTES);
        let end = rolled_up.map_or(settled, |w| w.min(settled));
        // As Postgres stores it, so the cache of trained detectors recognizes its own.
        let now = now.duration_trunc(Duration::microseconds(1))?;
        let hosts: Vec<ModelMeta> = sqlx::query_as!(
            ModelMeta,
            r#"SELECT h.id AS host_id, h.name, m.status AS "status?", m.trained_at AS "trained_at?",
                      m.retried_at, m.metrics AS "metrics?", m.scored_until
               FROM hosts h LEFT JOIN anomaly_models m ON m.host_id = h.id
              WHERE h.removed_at IS NULL ORDER BY h.id"#,
        )
        .fetch_all(&store.pool)
        .await?;
        let mut summary = RunSummary::default();
        let retrain = Duration::hours(i64::from(cfg.retrain_hours));
        let mut due: Vec<&ModelMeta> = hosts
            .iter()
            .filter(|h| match (h.status.as_deref(), h.trained_at) {
                (Some("trained"), Some(t)) => {
                    // A retraining that failed (the model kept) is tried again hourly,
                    // whatever made it due.
                    h.retried_at
                        .is_none_or(|r| now - r >= Duration::minutes(RETRY_MINUTES))
                        && (now - t >= retrain
                            || h.metrics
                                .as_deref()
                                .unwrap_or_default()
                                .iter()
                                .any(|m| feature_named(m).is_none()))
                }
                (Some(_), Some(t)) => now - t >= Duration::minutes(RETRY_MINUTES),
                _ => true,
            })
            .collect();
        // Hosts never tried first, then the oldest attempts: hosts still short of history
        // cannot starve the retraining of the others.
        due.sort_by_key(|h| h.retried_at.or(h.trained_at));
        due.truncate(cfg.max_trains_per_run as usize);
        let trained = self.train_hosts(store, cfg, &due, end, now).await?;
        summary.trained += trained;
        summary.skipped += due.len() - trained;
        // Score every host with a model (re-read: training just changed some).
        // `scored_until < $1` holds for set watermarks only.
        let scoring: Vec<(i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query!(
            r#"SELECT m.host_id, m.trained_at, m.scored_until AS "scored_until!"
               FROM anomaly_models m JOIN hosts h ON h.id = m.host_id
              WHERE m.status = 'trained' AND m.scored_until < $1 AND h.removed_at IS NULL
              ORDER BY m.host_id"#,
            end,
        )
        .fetch_all(&store.pool)
        .await?
        .into_iter()
        .map(|r| (r.host_id, r.trained_at, r.scored_until))
        .collect();
        for batch in score_batches(scoring, end) {
            let (n, a) = self.score_batch(store, cfg, &batch, end).await?;
            summary.scored_minutes += n;
            summary.anomalous_minutes += a;
        }
        Ok(summary)
    }

    /// Train (or skip) `due` hosts in one batched backend call and store the outcomes.
    /// Returns how many got a model.
    async fn train_hosts(
        &mut self,
        store: &Store,
        cfg: &AnomalyConfig,
        due: &[&ModelMeta],
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let min_minutes = cfg.min_train_minutes as usize;
        let mut prepared = Vec::with_capacity(due.len());
        let mut windows = Vec::with_capacity(due.len());
        for h in due {
            // A retrained model continues from the old one's watermark, so no minute is
            // skipped or scored twice.
            let to = h
                .scored_until
                .filter(|_| h.status.as_deref() == Some("trained"))
                .map_or(end, |w| w.min(end));
            let from = to - Duration::days(i64::from(cfg.train_days));
            // A host whose rows cannot be read (a statement timeout on a huge host) fails
            // its own training only; the others train and every host is scored.
            match feature_rows(store, &[h.host_id], from, to, true).await {
                Ok(mut rows) => {
                    let minutes = rows.remove(&h.host_id).unwrap_or_default();
                    // Only the training matrix is kept: a week of minutes is ~0.6 MB as
                    // inputs.
                    prepared.push(
                        tokio::task::spawn_blocking(move || {
                            HostModel::prepare(&minutes, min_minutes)
                        })
                        .await?,
                    );
                }
                Err(e) => prepared.push(Err(Skip::Failed(format!(
                    "reading its training minutes: {e}"
                )))),
            }
            windows.push((from, to));
        }
        let (backend, risk) = (self.backend.clone(), cfg.pot_risk);
        let outcomes = tokio::task::spawn_blocking(move || {
            HostModel::train_batch(backend.as_ref(), prepared, risk)
        })
        .await?;
        let mut trained = 0;
        for ((h, (from, to)), outcome) in due.iter().zip(windows).zip(outcomes) {
            if self
                .store_outcome(store, cfg, h, (from, to), now, outcome)
                .await?
            {
                trained += 1;
            }
        }
        Ok(trained)
    }

    /// Store a host's training outcome. Returns whether it got a model.
    async fn store_outcome(
        &mut self,
        store: &Store,
        cfg: &AnomalyConfig,
        h: &ModelMeta,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        now: DateTime<Utc>,
        outcome: Result<HostModel, Skip>,
    ) -> anyhow::Result<bool> {
        match outcome {
            Ok(model) => {
                let threshold = f64::from(model.detector.alert_threshold());
                let train_rows = model.detector.train_rows;
                let names = model.metric_names();
                let note = format!("trained on {train_rows} minutes of {} metrics", names.len());
                sqlx::query!(
                    "INSERT INTO anomaly_models (host_id, status, note, trained_at, train_from, train_to, train_minutes,
                                                metrics, threshold, params, state, scored_until)
                     VALUES ($1, 'trained', $2, $3, $4, $5, $6, $7, $8, $9, $10, $5)
                     ON CONFLICT (host_id) DO UPDATE SET status = 'trained', note = $2, trained_at = $3,
                        train_from = $4, train_to = $5, train_minutes = $6, metrics = $7, threshold = $8,
                        params = $9, state = $10, scored_until = $5, retried_at = NULL",
                    h.host_id,
                    &note,
                    now,
                    from,
                    to,
                    train_rows as i32,
                    &names,
                    threshold,
                    Json(&model.detector) as _,
                    Json(model.stored_state()) as _,
                )
                .execute(&store.pool)
                .await?;
                tracing::info!(
                    host = %h.name,
                    minutes = train_rows,
                    metrics = names.len(),
                    threshold,
                    "anomaly model trained"
                );
                self.models.insert(h.host_id, (now, model.detector));
                Ok(true)
            }
            Err(skip) => {
                let (status, note) = match skip {
                    Skip::TooFewMinutes { have } => (
                        "insufficient_history",
                        format!(
                            "{have} of the {} minutes of 1-minute rollups needed in the last {} days; retried hourly",
                            cfg.min_train_minutes, cfg.train_days
                        ),
                    ),
                    Skip::Failed(e) => ("failed", format!("training failed: {e}")),
                };
                // A host with a working model keeps it, and is scored with it, until a
                // retraining succeeds (a backend error, a host down most of the week),
                // for a training window past its retraining time at most.
                let keep_until = h.trained_at.map(|t| {
                    t + Duration::hours(i64::from(cfg.retrain_hours))
                        + Duration::days(i64::from(cfg.train_days))
                });
                if h.status.as_deref() == Some("trained") && keep_until.is_some_and(|k| now < k) {
                    let trained_at = h.trained_at.unwrap_or(now);
                    let note = format!(
                        "retraining failed at {}: {note}; the model trained {} is kept and retried hourly",
                        now.format("%Y-%m-%d %H:%M UTC"),
                        trained_at.format("%Y-%m-%d %H:%M UTC"),
                    );
                    tracing::warn!(host = %h.name, "anomaly model not retrained: {note}");
                    sqlx::query!(
                        "UPDATE anomaly_models SET note = $2, retried_at = $3 WHERE host_id = $1 AND status = 'trained'",
                        h.host_id,
                        &note,
                        now,
                    )
                    .execute(&store.pool)
                    .await?;
                    return Ok(false);
                }
                self.models.remove(&h.host_id);
                if status == "failed" {
                    tracing::warn!(host = %h.name, "anomaly model not trained: {note}");
                } else {
                    tracing::info!(host = %h.name, "anomaly model not trained: {note}");
                }
                sqlx::query!(
                    "INSERT INTO anomaly_models (host_id, status, note, trained_at, train_from, train_to)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (host_id) DO UPDATE SET status = $2, note = $3, trained_at = $4, train_from = $5,
                        train_to = $6, train_minutes = 0, metrics = '{}', threshold = NULL, params = NULL,
                        state = NULL, scored_until = NULL, retried_at = NULL",
                    h.host_id,
                    status,
                    &note,
                    now,
                    from,
                    to,
                )
                .execute(&store.pool)
                .await?;
                Ok(false)
            }
        }
    }

    /// Score a batch of hosts `(id, trained_at, scored_until)` up to `end`; one query for
    /// their rollups, one transaction for their scores and states.
    async fn score_batch(
        &mut self,
        store: &Store,
        cfg: &AnomalyConfig,
        batch: &[(i64, DateTime<Utc>, DateTime<Utc>)],
        end: DateTime<Utc>,
    ) -> anyhow::Result<(usize, usize)> {
        let ids: Vec<i64> = batch.iter().map(|b| b.0).collect();
        let missing: Vec<i64> = batch
            .iter()
            .filter(|(id, t, _)| self.models.get(id).is_none_or(|(ct, _)| ct != t))
            .map(|b| b.0)
            .collect();
        if !missing.is_empty() {
            let params = sqlx::query!(
                r#"SELECT host_id, trained_at, params AS "params!: Json<Detector>" FROM anomaly_models
                    WHERE host_id = ANY($1) AND params IS NOT NULL"#,
                &missing,
            )
            .fetch_all(&store.pool)
            .await?;
            for r in params {
                self.models.insert(r.host_id, (r.trained_at, r.params.0));
            }
        }
        let states = sqlx::query!(
            r#"SELECT host_id, metrics, state AS "state!: Json<StoredState>" FROM anomaly_models
                WHERE host_id = ANY($1) AND state IS NOT NULL"#,
            &ids,
        )
        .fetch_all(&store.pool)
        .await?;
        let states: HashMap<i64, (Vec<String>, StoredState)> = states
            .into_iter()
            .map(|r| (r.host_id, (r.metrics, r.state.0)))
            .collect();
        let window = |w: DateTime<Utc>| score_window(w, end);
        let first = batch.iter().map(|b| window(b.2).0).min().unwrap_or(end);
        let last = batch.iter().map(|b| window(b.2).1).max().unwrap_or(end);
        let mut rows = feature_rows(store, &ids, first, last, false).await?;
        let mut work = Vec::with_capacity(batch.len());
        for &(id, trained_at, watermark) in batch {
            let (Some((_, det)), Some((metrics, state))) = (self.models.get(&id), states.get(&id))
            else {
                continue;
            };
            let Some(features) = metrics
                .iter()
                .map(|m| FEATURES.iter().position(|f| f.name == m))
                .collect::<Option<Vec<usize>>>()
            else {
                continue; // an old feature set: retrained on the next run
            };
            let mut detector = det.clone();
            detector.state = state.stream.clone();
            let held = if state.held.len() == features.len() {
                state.held.clone()
            } else {
                vec![Held::default(); features.len()]
            };
            let model = HostModel {
                detector,
                features,
                last: state.last.clone(),
                last_ts: state.last_ts,
                held,
            };
            let (from, to) = window(watermark);
            let minutes: Vec<Minute> = rows
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.ts >= from && m.ts < to)
                .collect();
            let until = scored_until(from, to, minutes.last().map(|m| m.ts), end);
            work.push((id, model, minutes, until, trained_at));
        }
        let top_k = cfg.top_k as usize;
        let backend = self.backend.clone();
        let scored = tokio::task::spawn_blocking(move || {
            let mut work = work;
            let results = {
                let mut hosts: Vec<HostScoring<'_>> = work
                    .iter_mut()
                    .map(|(id, model, minutes, _, trained_at)| HostScoring {
                        model,
                        minutes,
                        key: Some(model_key(*id, *trained_at)),
                    })
                    .collect();
                score_hosts(backend.as_ref(), &mut hosts, top_k)
            };
            work.into_iter()
                .zip(results)
                .map(|((id, model, _, to, _), scores)| (id, model, scores, to))
                .collect::<Vec<_>>()
        })
        .await?;
        let mut s = ScoreColumns::default();
        let (mut u_ids, mut u_states, mut u_until) = (Vec::new(), Vec::new(), Vec::new());
        for (id, model, scores, to) in scored {
            match scores {
                Ok(scores) => {
                    for m in scores {
                        s.push(id, m);
                    }
                    u_ids.push(id);
                    u_states.push(Json(model.stored_state()));
                    u_until.push(to);
                }
                // The watermark stays: the next run tries these minutes again.
                Err(e) => tracing::warn!(host_id = id, "anomaly scoring failed: {e:#}"),
            }
        }
        let counts = (s.hosts.len(), s.anomalous.iter().filter(|a| **a).count());
        let mut tx = store.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO anomaly_scores (host_id, ts, score, threshold, is_anomalous, top)
             SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::float4[], $4::float4[], $5::bool[], $6::jsonb[])
             ON CONFLICT (host_id, ts) DO NOTHING",
            &s.hosts,
            &s.ts,
            &s.score,
            &s.threshold,
            &s.anomalous,
            &s.top as _,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE anomaly_models m SET state = u.state, scored_until = u.until
               FROM UNNEST($1::int8[], $2::jsonb[], $3::timestamptz[]) AS u(host_id, state, until)
              WHERE m.host_id = u.host_id",
            &u_ids,
            &u_states as _,
            &u_until,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts)
    }
}

/// The minutes `[from, to)` a host with watermark `w` scores in a run up to `end`: from
/// its watermark, at most [`MAX_MINUTES_PER_RUN`], nothing older than
/// [`MAX_CATCHUP_MINUTES`].
fn score_window(w: DateTime<Utc>, end: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = w.max(end - Duration::minutes(MAX_CATCHUP_MINUTES));
    (
        from,
        (from + Duration::minutes(MAX_MINUTES_PER_RUN)).min(end),
    )
}

/// A host's watermark after scoring `[from, to)`, whose newest minute with rollups was
/// `newest`: just past that minute, so minutes its agent delivers late (from its spool,
/// after an outage) are still scored in order when they come; but no further back than
/// [`HOLD_MINUTES`] before `end`, so a host that went quiet does not hold its window open.
fn scored_until(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    newest: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
) -> DateTime<Utc> {
    let held = newest.map_or(from, |t| t + Duration::minutes(1));
    held.max(end - Duration::minutes(HOLD_MINUTES))
        .clamp(from, to)
}

/// A host to score: `(id, trained_at, scored_until)`.
type Scoring = (i64, DateTime<Utc>, DateTime<Utc>);

/// Scoring batches of hosts: at most [`HOST_BATCH`] hosts whose windows start within
/// [`MAX_MINUTES_PER_RUN`] of each other, so one host catching up does not make a batch
/// of current ones read its day of rollups.
fn score_batches(mut hosts: Vec<Scoring>, end: DateTime<Utc>) -> Vec<Vec<Scoring>> {
    let start = |w: DateTime<Utc>| score_window(w, end).0;
    hosts.sort_by_key(|h| (start(h.2), h.0));
    let mut out: Vec<Vec<Scoring>> = Vec::new();
    for h in hosts {
        match out.last_mut() {
            Some(b)
                if b.len() < HOST_BATCH
                    && start(h.2) - start(b[0].2) <= Duration::minutes(MAX_MINUTES_PER_RUN) =>
            {
                b.push(h)
            }
            _ => out.push(vec![h]),
        }
    }
    out
}

/// Scores as columns, for one `UNNEST` insert.
#[derive(Default)]
struct ScoreColumns {
    hosts: Vec<i64>,
    ts: Vec<DateTime<Utc>>,
    score: Vec<f32>,
    threshold: Vec<f32>,
    anomalous: Vec<bool>,
    top: Vec<Json<Vec<Explanation>>>,
}

impl ScoreColumns {
    fn push(&mut self, host: i64, m: ScoredMinute) {
        self.hosts.push(host);
        self.ts.push(m.ts);
        // Non-finite scores cannot be stored as JSON numbers; the detector clips, so
        // this only guards against a broken model.
        self.score.push(if m.score.is_finite() {
            m.score
        } else {
            f32::MAX
        });
        self.threshold.push(m.threshold);
        self.anomalous.push(m.anomalous);
        self.top.push(Json(m.top));
    }
}

/// A point of a host's anomaly-score chart.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AnomalyScorePoint)]
pub struct ScorePoint {
    /// Start of the point's bucket.
    pub ts: DateTime<Utc>,
    /// Highest anomaly score of the bucket's minutes.
    pub score: f32,
    /// The highest level those scores were held to (the model's POT level, or the drift
    /// guard's when higher).
    pub level: f32,
}

/// A stored score, as the API returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AnomalyScore)]
pub struct StoredScore {
    pub host: String,
    /// The scored minute (start of the 1-minute rollup bucket).
    pub ts: DateTime<Utc>,
    /// Anomaly score: the mean over metrics of the smoothed squared prediction
    /// residuals; about 1 or less when normal.
    pub score: f32,
    /// The alert level this minute's score was held to: the model's
    /// peaks-over-threshold level, raised by its drift guard.
    pub threshold: f32,
    /// `score > threshold`.
    pub anomalous: bool,
    /// Top contributing metrics, largest share first.
    #[schema(value_type = Vec<Explanation>)]
    pub top: Json<Vec<Explanation>>,
}

/// Anomalous minutes of one host that follow each other (gaps of at most
/// [`EPISODE_GAP_MINUTES`]), as the host page lists them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AnomalyEpisode)]
pub struct Episode {
    /// The first and last anomalous minute.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Anomalous minutes in it.
    pub minutes: i64,
    /// The highest score, the level it was held to, and what explained it.
    pub score: f32,
    pub threshold: f32,
    #[schema(value_type = Vec<Explanation>)]
    pub top: Json<Vec<Explanation>>,
}

/// Anomalous minutes this far apart or closer are one episode.
pub const EPISODE_GAP_MINUTES: i32 = 5;

/// A host's model (or why it has none), as the API returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AnomalyModel)]
pub struct ModelInfo {
    pub host: String,
    #[schema(schema_with = model_states)]
    pub status: String,
    /// What the training saw, or why the host has no model.
    pub note: String,
    /// When training was last attempted.
    pub trained_at: DateTime<Utc>,
    pub train_from: DateTime<Utc>,
    pub train_to: DateTime<Utc>,
    pub train_minutes: i32,
    /// The metrics the model reads.
    #[schema(schema_with = feature_list)]
    pub metrics: Vec<String>,
    /// The model's peaks-over-threshold alert level from training: the floor of the
    /// level each minute is held to. That level (each score's `threshold`) follows the
    /// host's recent scores and is often higher.
    pub threshold: Option<f64>,
    /// Minutes before this are scored.
    pub scored_until: Option<DateTime<Utc>>,
}

fn feature_names() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&FEATURES.map(|f| f.name))
}

fn feature_list() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::Array::new(feature_names())
}

fn model_states() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["trained", "insufficient_history", "failed"])
}

/// Which scores [`Store::anomaly_scores`] returns.
#[derive(Debug, Clone)]
pub struct ScoreFilter<'a> {
    pub host: Option<&'a str>,
    /// Minutes in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub min_score: Option<f32>,
    pub anomalous: Option<bool>,
    /// Only scores after this (minute, host) in the answer's order: the next page.
    pub after: Option<(DateTime<Utc>, &'a str)>,
    pub limit: i64,
}

impl Store {
    /// Stored scores, newest first (then by host name).
    pub async fn anomaly_scores(
        &self,
        f: &ScoreFilter<'_>,
    ) -> Result<Vec<StoredScore>, sqlx::Error> {
        sqlx::query_as!(
            StoredScore,
            r#"SELECT h.name AS host, s.ts, s.score, s.threshold, s.is_anomalous AS anomalous,
                      s.top AS "top: Json<Vec<Explanation>>"
               FROM anomaly_scores s JOIN hosts h ON h.id = s.host_id
              WHERE s.ts >= $1 AND s.ts < $2
                AND (($3::text IS NULL AND h.removed_at IS NULL) OR h.name = $3)
                AND ($4::float4 IS NULL OR s.score >= $4) AND ($5::bool IS NULL OR s.is_anomalous = $5)
                AND ($7::timestamptz IS NULL OR s.ts < $7 OR (s.ts = $7 AND h.name > $8::text))
              ORDER BY s.ts DESC, h.name
              LIMIT $6"#,
            f.from,
            f.to,
            f.host,
            f.min_score,
            f.anomalous,
            f.limit,
            f.after.map(|a| a.0),
            f.after.map(|a| a.1),
        )
        .fetch_all(&self.pool)
        .await
    }

    /// One host's anomalous minutes in `[from, to)` as episodes ([`Episode`]), newest
    /// first, at most `limit`.
    pub async fn anomaly_episodes(
        &self,
        host: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Episode>, sqlx::Error> {
        // Gaps and islands: a minute further than the gap from the one before starts an
        // episode; the running count of starts numbers them.
        sqlx::query_as!(
            Episode,
            r#"WITH a AS (
                 SELECT s.ts, s.score, s.threshold, s.top,
                        CASE WHEN s.ts - lag(s.ts) OVER (ORDER BY s.ts) <= make_interval(mins => $4)
                             THEN 0 ELSE 1 END AS starts
                   FROM anomaly_scores s JOIN hosts h ON h.id = s.host_id
                  WHERE h.name = $1 AND s.is_anomalous AND s.ts >= $2 AND s.ts < $3
               ), g AS (SELECT *, sum(starts) OVER (ORDER BY ts) AS episode FROM a)
               SELECT min(ts) AS "start!", max(ts) AS "end!", count(*) AS "minutes!",
                      (array_agg(score ORDER BY score DESC, ts DESC))[1] AS "score!",
                      (array_agg(threshold ORDER BY score DESC, ts DESC))[1] AS "threshold!",
                      (array_agg(top ORDER BY score DESC, ts DESC))[1] AS "top!: Json<Vec<Explanation>>"
                 FROM g GROUP BY episode ORDER BY min(ts) DESC LIMIT $5"#,
            host,
            from,
            to,
            EPISODE_GAP_MINUTES,
            limit,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// One host's scores in `[from, to)`, reduced to one point per `bucket_secs` (binned
    /// from `from`, like the page's other charts): the highest score of the bucket and the
    /// level it was held to (the host page's chart).
    pub async fn anomaly_score_series(
        &self,
        host: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
    ) -> Result<Vec<ScorePoint>, sqlx::Error> {
        // Every group holds a row: the aggregates are never null.
        sqlx::query_as!(
            ScorePoint,
            r#"SELECT date_bin(make_interval(secs => $4), s.ts, $2) AS "ts!",
                    max(s.score) AS "score!", max(s.threshold) AS "level!"
               FROM anomaly_scores s JOIN hosts h ON h.id = s.host_id
              WHERE h.name = $1 AND s.ts >= $2 AND s.ts < $3
              GROUP BY 1 ORDER BY 1"#,
            host,
            from,
            to,
            bucket_secs.max(60) as f64,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The models of the hosts in the fleet (or of one host, even one taken out of it), by
    /// host name.
    pub async fn anomaly_models(&self, host: Option<&str>) -> Result<Vec<ModelInfo>, sqlx::Error> {
        sqlx::query_as!(
            ModelInfo,
            "SELECT h.name AS host, m.status, m.note, m.trained_at, m.train_from, m.train_to, m.train_minutes,
                    m.metrics, m.threshold, m.scored_until
               FROM anomaly_models m JOIN hosts h ON h.id = m.host_id
              WHERE ($1::text IS NULL AND h.removed_at IS NULL) OR h.name = $1
              ORDER BY h.name",
            host,
        )
        .fetch_all(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with 4 GPUs on a daily cycle plus deterministic noise, one row per minute.
    fn minute(i: i64, hot: f64) -> Minute {
        let t = DateTime::from_timestamp(1_700_000_000 + i * 60, 0).unwrap();
        let day = (i as f64 / 1440.0 * std::f64::consts::TAU).sin();
        let n = |k: i64| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5;
        let util = 60.0 + 30.0 * day + 4.0 * n(1);
        let mut values = vec![None; FEATURES.len()];
        values[0] = Some(20.0 + 10.0 * day + 2.0 * n(2));
        values[1] = Some(8.0 + 3.0 * day + 0.3 * n(3));
        values[2] = Some(40.0 + 0.5 * n(4));
        values[3] = Some(1e6 * (2.0 + n(5)));
        values[7] = Some(util);
        values[8] = Some(util + 5.0 + 2.0 * n(6));
        values[11] = Some(100.0 + 5.0 * util + 10.0 * n(7));
        values[12] = Some(110.0 + 5.0 * util + 12.0 * n(8) + 8.0 * hot);
        values[13] = Some(35.0 + 0.4 * util + n(9));
        values[14] = Some(38.0 + 0.4 * util + n(10) + hot);
        Minute {
            ts: t,
            values,
            gpus: vec![
                Some(0),
                None,
                Some(if hot > 0.0 { 2 } else { 1 }),
                Some(2),
                None,
            ],
        }
    }

    #[test]
    fn features_are_unique_and_gpu_slots_in_range() {
        for (i, f) in FEATURES.iter().enumerate() {
            assert_eq!(feature_named(f.name).map(|g| g.name), Some(f.name));
            assert!(FEATURES[..i].iter().all(|g| g.name != f.name));
            assert!(f.gpu_slot.is_none_or(|s| s < GPU_SLOTS));
            let x = f.input_of(1234.5);
            assert!((f.value_of(x) - 1234.5).abs() < 1e-3 * 1234.5, "{}", f.name);
        }
    }

    #[test]
    fn too_little_history_is_refused_with_the_count() {
        let m: Vec<Minute> = (0..100).map(|i| minute(i, 0.0)).collect();
        assert_eq!(
            HostModel::train(&m, 1440, 0.05).unwrap_err(),
            Skip::TooFewMinutes { have: 100 }
        );
    }

    #[test]
    fn a_hot_gpu_is_explained_and_streaming_state_survives_storage() {
        let train: Vec<Minute> = (0..4 * 1440).map(|i| minute(i, 0.0)).collect();
        let model = HostModel::train(&train, 1440, 0.05).unwrap();
        // Host metrics without data (net, disk write, GPU memory) are not in the model.
        assert_eq!(model.features, vec![0, 1, 2, 3, 7, 8, 11, 12, 13, 14]);
        let test: Vec<Minute> = (4 * 1440..4 * 1440 + 120)
            .map(|i| {
                minute(
                    i,
                    if (4 * 1440 + 60..4 * 1440 + 90).contains(&i) {
                        20.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        let mut a = model.clone();
        let whole = a.score(&test, 3).unwrap();
        assert_eq!(whole.len(), 120);
        assert!(whole[..60].iter().all(|s| !s.anomalous), "normal minutes");
        let hot = &whole[65..90];
        assert!(hot
            .iter()
            .all(|s| s.anomalous && s.score > 3.0 * s.threshold));
        for s in hot {
            assert_eq!(s.top[0].metric, "gpu_temp_max_celsius");
            assert_eq!(s.top[0].gpu, Some(2));
            assert!(s.top[0].value > s.top[0].typical + 15.0, "{:?}", s.top[0]);
            assert!(s.top.iter().any(|e| e.metric == "gpu_power_max_watts"));
        }
        // After the fault the smoothed score decays for a few minutes while the temperature
        // is back to typical: those minutes still show GPU 2's heat, and when it was seen.
        let after: Vec<&ScoredMinute> = whole[90..].iter().take_while(|s| s.anomalous).collect();
        assert!(!after.is_empty(), "the score decays over minutes");
        for s in &after {
            let temp = s
                .top
                .iter()
                .find(|e| e.metric == "gpu_temp_max_celsius")
                .expect("the temperature still explains the score");
            assert_eq!(temp.gpu, Some(2), "{temp:?}");
            assert!(temp.value > temp.typical + 15.0, "{temp:?}");
            let at = temp.at.expect("an earlier minute");
            assert!(at < s.ts && at >= test[60].ts, "{at} for {}", s.ts);
        }
        // Minute by minute through a JSON round trip of the stored state = one pass.
        let mut b = model.clone();
        let mut pieces = Vec::new();
        for m in test.chunks(1) {
            let state = serde_json::to_string(&b.stored_state()).unwrap();
            let back: StoredState = serde_json::from_str(&state).unwrap();
            b.detector.state = back.stream;
            b.last = back.last;
            b.last_ts = back.last_ts;
            b.held = back.held;
            pieces.extend(b.score(m, 3).unwrap());
        }
        for (x, y) in whole.iter().zip(&pieces) {
            assert!((x.score - y.score).abs() <= 1e-4 * x.score.max(1.0));
            assert_eq!(x.anomalous, y.anomalous);
            let (xt, yt) = (&x.top[0], &y.top[0]);
            assert_eq!((xt.value, xt.gpu, xt.at), (yt.value, yt.gpu, yt.at));
        }
    }

    #[test]
    fn a_missing_feature_carries_the_last_value() {
        let train: Vec<Minute> = (0..1440).map(|i| minute(i, 0.0)).collect();
        let mut model = HostModel::train(&train, 1440, 0.05).unwrap();
        let mut gap = minute(1440, 0.0);
        let before = minute(1439, 0.0).values[14].unwrap();
        gap.values[14] = None;
        let s = model.score(&[gap], 16).unwrap();
        let temp = s[0]
            .top
            .iter()
            .find(|e| e.metric == "gpu_temp_max_celsius")
            .unwrap();
        assert!((temp.value - before).abs() < 1e-3, "{temp:?} vs {before}");
        // A minute with none of the model's features is not scored.
        let empty = Minute {
            ts: gap_ts(),
            values: vec![None; FEATURES.len()],
            gpus: vec![None; GPU_SLOTS],
        };
        assert!(model.score(&[empty], 3).unwrap().is_empty());
    }

    #[test]
    fn the_stream_restarts_after_a_gap_in_the_data() {
        let train: Vec<Minute> = (0..2 * 1440).map(|i| minute(i, 0.0)).collect();
        let mut model = HostModel::train(&train, 1440, 0.05).unwrap();
        model.score(&[minute(2 * 1440, 0.0)], 3).unwrap();
        // Back after four hours, the daily cycle has moved on.
        let back = minute(2 * 1440 + 240, 0.0);
        let mut stale = model.clone();
        stale.last_ts = None; // as if the minutes before the gap were just before
        let fresh = model.score(std::slice::from_ref(&back), 3).unwrap();
        let old = stale.score(std::slice::from_ref(&back), 3).unwrap();
        assert!(!fresh[0].anomalous, "{fresh:?}");
        assert!(
            fresh[0].score < old[0].score / 3.0,
            "{} vs {}",
            fresh[0].score,
            old[0].score
        );
        assert_eq!(model.last_ts, Some(back.ts));
    }

    /// The job's batched path (one training call, one scoring call per run of minutes
    /// across hosts) equals training and scoring host by host, bit for bit on the CPU, also
    /// when one host's minutes have a gap that restarts its stream and another has none.
    #[test]
    fn batched_training_and_scoring_equal_host_by_host() {
        let days = [2, 3, 4];
        let hosts: Vec<Vec<Minute>> = days
            .iter()
            .map(|&d| (0..d * 1440).map(|i| minute(i, 0.0)).collect())
            .collect();
        let cpu = CpuBackend::default();
        let prepared = hosts.iter().map(|m| HostModel::prepare(m, 1440)).collect();
        let batched = HostModel::train_batch(&cpu, prepared, 0.05);
        let mut models = Vec::new();
        for (m, b) in hosts.iter().zip(batched) {
            let one = HostModel::train(m, 1440, 0.05).unwrap();
            assert_eq!(b.as_ref().unwrap(), &one);
            models.push(one);
        }
        // New minutes: host 0 pauses for an hour in the middle, host 2 runs hot.
        let new: Vec<Vec<Minute>> = days
            .iter()
            .enumerate()
            .map(|(h, &d)| {
                (d * 1440..d * 1440 + 150)
                    .filter(|i| h != 0 || !(d * 1440 + 40..d * 1440 + 100).contains(i))
                    .map(|i| {
                        minute(
                            i,
                            if h == 2 && i >= d * 1440 + 60 {
                                20.0
                            } else {
                                0.0
                            },
                        )
                    })
                    .collect()
            })
            .collect();
        let mut one_by_one = models.clone();
        let expected: Vec<Vec<ScoredMinute>> = one_by_one
            .iter_mut()
            .zip(&new)
            .map(|(m, new)| m.score(new, 3).unwrap())
            .collect();
        let mut together = models.clone();
        let got = {
            let mut jobs: Vec<HostScoring<'_>> = together
                .iter_mut()
                .zip(&new)
                .enumerate()
                .map(|(h, (model, minutes))| HostScoring {
                    model,
                    minutes,
                    key: Some(ModelKey {
                        host: h as u64,
                        version: 1,
                    }),
                })
                .collect();
            score_hosts(&cpu, &mut jobs, 3)
        };
        for (h, (got, want)) in got.into_iter().zip(&expected).enumerate() {
            assert_eq!(&got.unwrap(), want, "host {h}");
        }
        assert_eq!(together, one_by_one, "streams continue alike");
        assert_eq!(expected[0].len(), 90, "the pause is not scored");
        assert!(
            expected[2].iter().any(|s| s.anomalous),
            "the hot host alerts"
        );
    }

    /// `anomaly.backend = "gpu"` without a usable GPU (here: none by that name, or a build
    /// without GPU support) refuses to start and says why; `auto` falls back to the CPU.
    #[test]
    fn a_gpu_that_is_not_there_is_an_error_and_auto_falls_back() {
        let cfg = AnomalyConfig {
            backend: rackwatch_anomaly::BackendChoice::Gpu,
            adapter: "no adapter has this name".into(),
            software_adapter: true,
            ..AnomalyConfig::default()
        };
        let err = open_backend(&cfg).unwrap_err().to_string();
        assert!(err.starts_with("anomaly.backend = \"gpu\": "), "{err}");
        assert!(
            err.contains("no adapter has this name") || err.contains("GPU support"),
            "{err}"
        );
        let auto = open_backend(&AnomalyConfig {
            backend: rackwatch_anomaly::BackendChoice::Auto,
            ..cfg
        })
        .unwrap();
        assert_eq!(auto.kind(), rackwatch_anomaly::BackendKind::Cpu);
        assert!(auto.fallback_reason().is_some());
    }

    #[test]
    fn anomaly_explanations_read_with_units() {
        let e = |metric: &str, value, typical, gpu| Explanation {
            metric: metric.into(),
            share: 0.482,
            value,
            typical,
            gpu,
            at: None,
        };
        assert_eq!(
            anomaly_explanation(&[
                e("gpu_temp_max_celsius", 91.2, 66.0, Some(3)),
                e("net_rx_bytes_per_s", 2.5e6, 1.25e8, None),
            ]),
            "gpu_temp_max_celsius 91 °C on GPU 3 (typical 66 °C, 48 % of the score), \
             net_rx_bytes_per_s 2.5 MB/s (typical 125.0 MB/s, 48 % of the score)"
        );
        let earlier = Explanation {
            at: DateTime::from_timestamp(1_800_000_000, 0),
            ..e("gpu_temp_max_celsius", 91.2, 66.0, Some(3))
        };
        assert_eq!(
            anomaly_explanation(&[earlier]),
            "gpu_temp_max_celsius 91 °C on GPU 3 at 08:00 UTC (typical 66 °C, 48 % of the score)"
        );
    }

    fn gap_ts() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn hosts_catching_up_are_batched_apart_from_current_ones() {
        let end = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let m = |k: i64| end - Duration::minutes(k);
        let t = end - Duration::days(1);
        let hosts = vec![(1, t, m(1)), (2, t, m(1000)), (3, t, m(2)), (4, t, m(5000))];
        let batches: Vec<Vec<i64>> = score_batches(hosts, end)
            .iter()
            .map(|b| b.iter().map(|h| h.0).collect())
            .collect();
        // Host 4 is past the catch-up limit (a day back) and host 2 within it: each reads
        // its own window; the two current hosts share one.
        assert_eq!(batches, vec![vec![4], vec![2], vec![3, 1]]);
    }

    #[test]
    fn a_watermark_waits_for_late_minutes_an_hour_at_most() {
        let end = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let m = |k: i64| end - Duration::minutes(k);
        // A live host: to the end of its window.
        assert_eq!(scored_until(m(3), end, Some(m(1)), end), end);
        // Quiet for 20 minutes: held just past its newest minute.
        assert_eq!(scored_until(m(30), end, Some(m(21)), end), m(20));
        // Quiet for two hours: not held further back than an hour.
        assert_eq!(
            scored_until(m(180), end, Some(m(121)), end),
            m(HOLD_MINUTES)
        );
        assert_eq!(scored_until(m(180), end, None, end), m(HOLD_MINUTES));
        // Catching up (window ends before the hold): through its window.
        assert_eq!(scored_until(m(1000), m(820), None, end), m(820));
    }
}
