//! GPU backend: plain `wgpu` with hand-written WGSL compute shaders (`shaders/`). Runs on any
//! Vulkan / Metal / DX12 device, including the software Vulkan device lavapipe.
//!
//! Written for a real GPU:
//! * one context (device, queue, five pipelines) opened once and shared (`context.rs`);
//! * persistent, grow-only buffers reused by every call (`buffers.rs`), so a steady stream of
//!   batches allocates nothing;
//! * per (sub-)batch of hosts: one mapped upload of every input (series, weights, work tables,
//!   parameters), one submit with the kernels of the step, one mapped download of the results
//!   (`steps.rs`); training keeps the series on the device between its two steps;
//! * work-item tables instead of per-host dispatches: hosts of any size share one dispatch,
//!   2-D so it stays under 65,535 workgroups per dimension;
//! * batches split to respect the device's buffer and binding limits (capped at
//!   [`GpuOptions::max_buffer_bytes`]); a host too large alone gets
//!   [`BackendError::TooLarge`], never a panic.
//!
//! Kernels (see the shader comments): tiled cross products (64 × 64 tiles, 16 staged rows in
//! workgroup memory, 4 × 4 register blocks, f32 partial sums over 256-row chunks), a pairwise
//! f32 reduction of the chunks, and tiled residuals (64 rows × 16 metrics per workgroup). The
//! host adds nothing up: it converts the reduced sums to f64 and solves.

mod buffers;
mod context;
mod plan;
mod steps;

use std::sync::{Arc, Mutex, MutexGuard};

use super::parallel::available_threads;
use super::{
    energy_from_abs, Backend, BackendError, BackendInfo, Calibration, CrossProducts, LagWeights,
    ResidualJob, Series, SolveFn, TrainJob,
};
use buffers::Buffers;
use plan::{CrossShape, Limits, Need};

const CROSS_WGSL: &str = include_str!("shaders/cross_products.wgsl");
const REDUCE_WGSL: &str = include_str!("shaders/cross_reduce.wgsl");
const RESID_WGSL: &str = include_str!("shaders/residuals.wgsl");
const SCALES_WGSL: &str = include_str!("shaders/scales.wgsl");
const ROWSUM_WGSL: &str = include_str!("shaders/rowsum.wgsl");

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
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_software: false,
            adapter_name: None,
            max_buffer_bytes: 512 << 20,
            host_threads: available_threads(),
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
    /// mapped), and turning results into host values.
    pub fill_s: f64,
    pub wait_s: f64,
    pub read_s: f64,
}

struct Pipelines {
    cross: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    resid: wgpu::ComputePipeline,
    scales: wgpu::ComputePipeline,
    rowsum: wgpu::ComputePipeline,
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
    bufs: Mutex<Buffers>,
    /// The first uncaptured device error or device loss; every later call fails with it.
    fault: Arc<Mutex<Option<String>>>,
    stats: Mutex<GpuStats>,
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

    fn train_kernels(
        &self,
        jobs: &[TrainJob<'_>],
        solve: &SolveFn<'_>,
    ) -> Vec<anyhow::Result<Calibration>> {
        let mut out: Vec<Option<anyhow::Result<Calibration>>> =
            (0..jobs.len()).map(|_| None).collect();
        // Hosts that need every residual (the univariate blend) take the two-kernel path.
        let full: Vec<usize> = (0..jobs.len())
            .filter(|&i| jobs[i].full || jobs[i].series.n == 0)
            .collect();
        if !full.is_empty() {
            let sub: Vec<TrainJob<'_>> = full.iter().map(|&i| jobs[i]).collect();
            let r = super::train_kernels_default(self, &sub, &|k, c| solve(full[k], c));
            for (&i, r) in full.iter().zip(r) {
                out[i] = Some(r);
            }
        }
        let mut needs: Vec<Option<Need>> = vec![None; jobs.len()];
        for (i, j) in jobs.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match j.series.check_trainable() {
                Err(e) => out[i] = Some(Err(e.into())),
                Ok(()) => needs[i] = Some(plan::train_need(&j.series)),
            }
        }
        let (batches, rejected) = plan::split(&needs, &self.limits);
        for (i, e) in rejected {
            out[i] = Some(Err(e.into()));
        }
        lock(&self.stats).calls += 1;
        for b in batches {
            let refs: Vec<&TrainJob<'_>> = b.iter().map(|&i| &jobs[i]).collect();
            let r = self
                .check_fault()
                .and_then(|_| self.run_train(&refs, &|k, c| solve(b[k], c)));
            match r {
                Ok(v) => {
                    for (&i, x) in b.iter().zip(v) {
                        out[i] = Some(x);
                    }
                }
                Err(e) => {
                    for &i in &b {
                        out[i] = Some(Err(e.clone().into()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(BackendError::Invalid("host not planned".into()).into()))
            })
            .collect()
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
