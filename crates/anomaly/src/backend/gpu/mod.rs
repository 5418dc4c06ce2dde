//! GPU backend: plain `wgpu` with hand-written WGSL compute shaders (`shaders/`). Runs on any
//! Vulkan / Metal / DX12 device, including the software Vulkan device lavapipe.
//!
//! Written for a real GPU:
//! * one context (device, queue, pipelines) opened once and shared (`context.rs`);
//! * persistent, grow-only buffers reused by every call (`buffers.rs`), so a steady stream of
//!   batches allocates nothing;
//! * a whole training on the device, one submit per sub-batch of hosts (`fit.rs`): the raw
//!   rows go up once; standardizing (f64 statistics), cross products, the ridge solve (f64
//!   Cholesky), residuals, residual scales, calibration scores and their sorted upper tail run
//!   there; about 9 KB per host come back. Sub-batches are pipelined: the host fills the next
//!   upload while the device runs the previous one;
//! * scoring runs with the models resident on the device by [`crate::backend::ModelKey`]
//!   (`score.rs`, `models.rs`): one upload of the new rows and stream states, one submit, the
//!   scores and top metrics back;
//! * the single kernels (cross products, residuals) for the host-side paths (`steps.rs`);
//! * work-item tables instead of per-host dispatches: hosts of any size share one dispatch,
//!   2-D so it stays under 65,535 workgroups per dimension;
//! * batches split to respect the device's buffer and binding limits (capped at
//!   [`GpuOptions::max_buffer_bytes`]); a host too large alone gets
//!   [`BackendError::TooLarge`], never a panic.
//!
//! Kernels (see the shader comments): tiled cross products (64 × 64 tiles, 16 staged rows in
//! workgroup memory, 4 × 4 register blocks, f32 partial sums over 256-row chunks), a pairwise
//! f32 reduction of the chunks, tiled residuals (64 rows × 16 metrics per workgroup), and one
//! workgroup per host for the statistics, the solve, the calibration and the scoring stream.

mod buffers;
mod context;
mod fit;
mod models;
mod plan;
mod profile;
mod score;
mod steps;

use std::sync::{Arc, Mutex, MutexGuard};

use super::parallel::available_threads;
use super::{
    energy_from_abs, Backend, BackendError, BackendInfo, CrossProducts, FitJob, FitOutput,
    LagWeights, ResidualJob, Series, StreamJob, Streamed,
};
use buffers::Buffers;
use plan::{CrossShape, Limits};

const CROSS_WGSL: &str = include_str!("shaders/cross_products.wgsl");
const REDUCE_WGSL: &str = include_str!("shaders/cross_reduce.wgsl");
const RESID_WGSL: &str = include_str!("shaders/residuals.wgsl");
const STREAM_WGSL: &str = include_str!("shaders/score_stream.wgsl");
const TRAIN_COMMON_WGSL: &str = include_str!("shaders/train_common.wgsl");
const STANDARDIZE_WGSL: &str = include_str!("shaders/standardize.wgsl");
const SOLVE_WGSL: &str = include_str!("shaders/solve.wgsl");
const CALIBRATE_WGSL: &str = include_str!("shaders/calibrate.wgsl");

/// Below this many bytes a copy runs on the calling thread: spawning threads costs ~0.1 ms,
/// copying 2 MiB about as much. (A scoring run of 1,250 hosts uploads ~4 MB, mostly weights.)
const PARALLEL_COPY_BYTES: usize = 2 << 20;

/// How [`GpuBackend::with_options`] picks and uses an adapter.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Accept a software adapter (lavapipe / llvmpipe, WARP). Off by default: on a server a
    /// software rasterizer is slower than the CPU backend, so it must not pass for a GPU.
    pub allow_software: bool,
    /// Only adapters whose name contains this (case-insensitive), e.g. `"H200"`.
    pub adapter_name: Option<String>,
    /// Cap on any one device buffer in bytes; batches are split to stay under it and under
    /// the device's own limits. 512 MiB keeps about 800 hosts of a week of 16 metrics in
    /// one sub-batch.
    pub max_buffer_bytes: u64,
    /// Threads for host-side copies (and, through [`Backend::threads`], the detector's
    /// host-side work in batched calls).
    pub host_threads: usize,
    /// Upload bytes per device sub-batch of a training call; 0 = an eighth of the call,
    /// between 8 and 64 MiB. Sub-batches are pipelined (the host fills the next while the
    /// device runs the previous one), so a call of several pays one fill and one device
    /// sub-batch that do not overlap.
    pub pipeline_bytes: u64,
    /// Time each step of a submit on the device with timestamp queries (where the adapter
    /// has them inside encoders), into [`GpuStats::device_steps`]. For benchmarks: it costs
    /// a mapping per submit.
    pub profile: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_software: false,
            adapter_name: None,
            max_buffer_bytes: 512 << 20,
            host_threads: available_threads(),
            pipeline_bytes: 0,
            profile: false,
        }
    }
}

/// Counters of the work done so far (for benchmarks and diagnostics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuStats {
    /// Batched calls and the device sub-batches (one upload + submit + download each).
    pub calls: u64,
    pub submits: u64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    /// Buffer (re)allocations; flat once the batch sizes have been seen.
    pub buffer_allocations: u64,
    /// Seconds spent filling the upload buffer, waiting for the device (submit → results
    /// mapped, or an upload buffer free), and turning results into host values.
    pub fill_s: f64,
    pub wait_s: f64,
    pub read_s: f64,
    /// Seconds inside `queue.submit` (a driver that runs one submission at a time, such as
    /// lavapipe, blocks there until the previous one is done).
    pub submit_s: f64,
    /// Scoring: models uploaded (new key, new version, changed or keyless) and models found
    /// resident.
    pub model_uploads: u64,
    pub model_hits: u64,
    /// Seconds planning a call (tables, buffer sizes, model places) and encoding its commands
    /// (bind groups, passes), and in all inside scoring calls.
    pub plan_s: f64,
    pub encode_s: f64,
    pub score_call_s: f64,
    /// Device seconds per step (`copy`, a pass's name), with [`GpuOptions::profile`].
    pub device_steps: Vec<(&'static str, f64)>,
}

struct Pipelines {
    cross: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    resid: wgpu::ComputePipeline,
    stream: wgpu::ComputePipeline,
    /// Device training (needs f64 shader arithmetic).
    fit: Option<FitPipelines>,
}

struct FitPipelines {
    stats: wgpu::ComputePipeline,
    merge: wgpu::ComputePipeline,
    apply: wgpu::ComputePipeline,
    solve: wgpu::ComputePipeline,
    /// The solve in workgroup memory, for systems of at most `small_solve` f64s (`None` where
    /// the device's workgroup memory holds none worth it).
    solve_small: Option<wgpu::ComputePipeline>,
    small_solve: usize,
    calibrate: wgpu::ComputePipeline,
}

/// wgpu device, queue, pipelines and persistent buffers.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipes: Pipelines,
    info: BackendInfo,
    adapter: wgpu::AdapterInfo,
    limits: Limits,
    threads: usize,
    pipeline_bytes: u64,
    /// Why device training is off (no f64), `None` when on.
    fit_unavailable: Option<String>,
    bufs: Mutex<Buffers>,
    /// The first uncaptured device error or device loss; every later call fails with it.
    fault: Arc<Mutex<Option<String>>>,
    stats: Mutex<GpuStats>,
    prof: Option<profile::Profiler>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!(
            "gpu ({}, {:?}, {:?})",
            self.adapter.name, self.adapter.device_type, self.adapter.backend
        )
    }

    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn cross_products(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let s = Series { zpad, n, d, lags };
        let r = self.cross_products_batch(&[s]).pop().expect("one result")?;
        Ok((r.xtx, r.xty))
    }

    fn residual_energy(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
        w: LagWeights<'_>,
        inv_scale: &[f32],
        clip: f32,
    ) -> anyhow::Result<Vec<f32>> {
        anyhow::ensure!(
            inv_scale.len() == d,
            "{} scales for {d} metrics",
            inv_scale.len()
        );
        let job = ResidualJob {
            series: Series { zpad, n, d, lags },
            weights: w,
        };
        let abs = self
            .abs_residuals_batch(&[job])
            .pop()
            .expect("one result")?;
        Ok(energy_from_abs(&abs, inv_scale, clip))
    }

    fn cross_products_batch(
        &self,
        series: &[Series<'_>],
    ) -> Vec<Result<CrossProducts, BackendError>> {
        let mut out = Vec::with_capacity(series.len());
        let mut needs = Vec::with_capacity(series.len());
        for s in series {
            match s.check_trainable() {
                Err(e) => {
                    out.push(Some(Err(e)));
                    needs.push(None);
                }
                Ok(()) if s.n == 0 => {
                    let f = s.features();
                    out.push(Some(Ok(CrossProducts {
                        xtx: vec![0.0; f * f],
                        xty: vec![0.0; f * s.d],
                    })));
                    needs.push(None);
                }
                Ok(()) => {
                    out.push(None);
                    needs.push(Some(CrossShape::of(s).need(s)));
                }
            }
        }
        self.batched(series.len(), needs, out, series, |b| self.run_cross(b))
    }

    fn fit_device(&self, jobs: &[FitJob<'_>]) -> Option<Vec<anyhow::Result<FitOutput>>> {
        self.fit_batch(jobs)
    }

    fn score_stream(
        &self,
        jobs: &[StreamJob<'_>],
        top_k: usize,
    ) -> Vec<Result<Streamed, BackendError>> {
        self.stream_batch(jobs, top_k)
    }

    fn abs_residuals_batch(&self, jobs: &[ResidualJob<'_>]) -> Vec<Result<Vec<f32>, BackendError>> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut needs = Vec::with_capacity(jobs.len());
        for j in jobs {
            match j.check() {
                Err(e) => {
                    out.push(Some(Err(e)));
                    needs.push(None);
                }
                Ok(()) if j.series.n == 0 => {
                    out.push(Some(Ok(Vec::new())));
                    needs.push(None);
                }
                Ok(()) => {
                    out.push(None);
                    needs.push(Some(plan::residual_need(j)));
                }
            }
        }
        self.batched(jobs.len(), needs, out, jobs, |b| self.run_resid(b))
    }
}
