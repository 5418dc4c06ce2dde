//! Choosing the backend at run time: `anomaly.backend = "auto" | "cpu" | "gpu"`.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::parallel::available_threads;
use super::{
    train_kernels_default, Backend, BackendError, CpuBackend, CrossProducts, FitJob, FitOutput,
    LagWeights, ResidualJob, Series, SolveFn, StreamJob, Streamed,
};

/// Which backend the configuration asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A GPU when the build has GPU support and a hardware adapter is present, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// A GPU, or an error ([`BackendError::NoAdapter`] / [`BackendError::GpuNotBuilt`]).
    Gpu,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "gpu" => Ok(BackendChoice::Gpu),
            other => Err(format!(
                "unknown anomaly backend {other:?}: expected \"auto\", \"cpu\" or \"gpu\""
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Gpu => "gpu",
        })
    }
}

/// CPU or GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Gpu,
}

impl BackendKind {
    /// `"cpu"` or `"gpu"` (a metric label value).
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
        }
    }
}

/// Which backend runs, on which device: for logs, `/metrics` labels and the admin page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// Adapter name (`"NVIDIA H200"`), or `"cpu"`.
    pub device: String,
    /// `"discrete GPU"`, `"integrated GPU"`, `"software adapter (runs on the CPU)"`, or
    /// for the CPU backend its threads (`"8 threads"`).
    pub device_type: String,
    /// Graphics API of a GPU (`"Vulkan"`, `"Metal"`, `"Dx12"`).
    pub api: Option<String>,
    /// Driver name and version of a GPU, as the driver reports them.
    pub driver: Option<String>,
    /// Whether the adapter is a software rasterizer (lavapipe): a GPU code path, CPU speed.
    pub software: bool,
}

impl BackendInfo {
    /// The CPU backend, `detail` saying how it runs (e.g. its threads).
    pub fn cpu(detail: impl Into<String>) -> Self {
        BackendInfo {
            kind: BackendKind::Cpu,
            device: "cpu".into(),
            device_type: detail.into(),
            api: None,
            driver: None,
            software: false,
        }
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BackendKind::Cpu => write!(f, "cpu ({})", self.device_type),
            BackendKind::Gpu => {
                write!(f, "gpu: {} ({}", self.device, self.device_type)?;
                if let Some(api) = &self.api {
                    write!(f, ", {api}")?;
                }
                if let Some(d) = self.driver.as_deref().filter(|d| !d.is_empty()) {
                    write!(f, ", driver {d}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How [`SelectedBackend::select`] looks for a GPU.
#[derive(Clone, Debug, Default)]
pub struct SelectOptions {
    /// Accept a software adapter (lavapipe) as a GPU. Off in production: a software adapter
    /// is slower than the CPU backend. Tests on machines without a GPU turn it on.
    pub allow_software_adapter: bool,
    /// Only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Cap on one device buffer in bytes (default 512 MiB); batches split to fit.
    pub max_buffer_bytes: Option<u64>,
    /// Threads for host-side work (default: the machine's parallelism, at most 8 for the
    /// CPU backend as before).
    pub threads: Option<usize>,
    /// On a GPU, scoring calls of fewer multiply-adds than this run on the CPU backend
    /// (default: [`MIN_GPU_SCORE_WORK_PER_THREAD`] per CPU thread).
    pub min_gpu_score_work: Option<u64>,
}

/// Multiply-adds of a scoring call, per CPU thread, below which a GPU's fixed costs (upload,
/// submit, fence, read-back: about 0.5 ms on an H200 machine) outweigh its speed, so
/// [`SelectedBackend`] scores on the CPU. A call's multiply-adds are its new rows times
/// `d · (lags · d + 1)` (784 a row for the job's 16 metrics): a one-minute run of 1,250 hosts
/// is 0.98 M, a 180-minute catch-up 176 M. Measured on the H200 machine (16 threads, see
/// docs/gpu.md): the CPU backend scores about 1.2 M multiply-adds a millisecond per thread;
/// the two broke even near 20 M at 16 threads, about 1.2 M a thread.
pub const MIN_GPU_SCORE_WORK_PER_THREAD: u64 = 1 << 20;

/// Multiply-adds of a scoring call (see [`MIN_GPU_SCORE_WORK_PER_THREAD`]).
pub fn score_work(jobs: &[StreamJob<'_>]) -> u64 {
    jobs.iter()
        .map(|j| {
            let s = j.series;
            (s.n * s.d * (s.lags * s.d + 1)) as u64
        })
        .sum()
}

enum Inner {
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(std::sync::Arc<super::GpuBackend>),
}

/// The backend the product runs: a GPU or the CPU, chosen once at start-up from a
/// [`BackendChoice`]. On a GPU, hosts the device cannot hold (or a failed device batch) are
/// computed on the CPU instead, so the fleet job never loses a host to a device limit; a
/// host that fits neither gets the error.
pub struct SelectedBackend {
    inner: Inner,
    cpu: CpuBackend,
    info: BackendInfo,
    fallback: Option<String>,
    cpu_hosts: AtomicU64,
    /// Scoring calls below this many multiply-adds run on the CPU (0 on the CPU backend).
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    min_score_work: u64,
    cpu_scoring_calls: AtomicU64,
}

impl fmt::Debug for SelectedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedBackend")
            .field("info", &self.info)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl SelectedBackend {
    /// The CPU backend with `threads` worker threads.
    pub fn cpu(threads: usize) -> Self {
        let cpu = CpuBackend {
            threads: threads.max(1),
        };
        SelectedBackend {
            info: Backend::info(&cpu),
            inner: Inner::Cpu,
            cpu,
            fallback: None,
            cpu_hosts: AtomicU64::new(0),
            min_score_work: 0,
            cpu_scoring_calls: AtomicU64::new(0),
        }
    }

    /// Open the backend `choice` asks for. `Auto` never fails: without a usable GPU it
    /// returns the CPU backend and [`SelectedBackend::fallback_reason`] says why (log it
    /// once). `Gpu` without one is an error.
    pub fn select(choice: BackendChoice, opts: &SelectOptions) -> Result<Self, BackendError> {
        let cpu_threads = opts
            .threads
            .unwrap_or_else(|| CpuBackend::default().threads);
        if choice == BackendChoice::Cpu {
            return Ok(Self::cpu(cpu_threads));
        }
        match Self::open_gpu(opts) {
            Ok(gpu) => Ok(gpu),
            Err(e) if choice == BackendChoice::Auto => {
                let mut s = Self::cpu(cpu_threads);
                s.fallback = Some(format!("anomaly backend auto: using the CPU; {e}"));
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(feature = "gpu")]
    fn open_gpu(opts: &SelectOptions) -> Result<Self, BackendError> {
        let defaults = super::GpuOptions::default();
        let threads = opts.threads.unwrap_or_else(available_threads);
        let gpu = super::GpuBackend::with_options(super::GpuOptions {
            allow_software: opts.allow_software_adapter,
            adapter_name: opts.adapter_name.clone(),
            max_buffer_bytes: opts.max_buffer_bytes.unwrap_or(defaults.max_buffer_bytes),
            host_threads: threads,
            pipeline_bytes: defaults.pipeline_bytes,
            profile: false,
        })?;
        Ok(Self::with_gpu(
            std::sync::Arc::new(gpu),
            threads,
            opts.min_gpu_score_work,
        ))
    }

    /// An opened GPU backend, with `threads` CPU threads for the hosts and scoring calls it
    /// does not take; `min_score_work` as [`SelectOptions::min_gpu_score_work`].
    #[cfg(feature = "gpu")]
    pub fn with_gpu(
        gpu: std::sync::Arc<super::GpuBackend>,
        threads: usize,
        min_score_work: Option<u64>,
    ) -> Self {
        let threads = threads.max(1);
        SelectedBackend {
            info: Backend::info(gpu.as_ref()),
            inner: Inner::Gpu(gpu),
            cpu: CpuBackend { threads },
            fallback: None,
            cpu_hosts: AtomicU64::new(0),
            min_score_work: min_score_work
                .unwrap_or(MIN_GPU_SCORE_WORK_PER_THREAD * threads as u64),
            cpu_scoring_calls: AtomicU64::new(0),
        }
    }

    #[cfg(not(feature = "gpu"))]
    fn open_gpu(_: &SelectOptions) -> Result<Self, BackendError> {
        let _ = available_threads;
        Err(BackendError::GpuNotBuilt)
    }

    /// Why `Auto` runs on the CPU (one line to log), `None` when it got what it asked for.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// CPU or GPU.
    pub fn kind(&self) -> BackendKind {
        self.info.kind
    }

    /// Host computations a GPU could not take and the CPU did instead (one per host and
    /// batched call: a training batch or a scoring run).
    pub fn cpu_fallback_hosts(&self) -> u64 {
        self.cpu_hosts.load(Ordering::Relaxed)
    }

    /// Where a scoring call of `work` multiply-adds runs ([`score_work`]): on a GPU, calls
    /// below [`SelectOptions::min_gpu_score_work`] run on the CPU.
    pub fn scores_on(&self, work: u64) -> BackendKind {
        #[cfg(not(feature = "gpu"))]
        let _ = work;
        match self.inner {
            Inner::Cpu => BackendKind::Cpu,
            #[cfg(feature = "gpu")]
            Inner::Gpu(_) if work < self.min_score_work => BackendKind::Cpu,
            #[cfg(feature = "gpu")]
            Inner::Gpu(_) => BackendKind::Gpu,
        }
    }

    /// Scoring calls a GPU backend left to the CPU because they were small.
    pub fn cpu_scoring_calls(&self) -> u64 {
        self.cpu_scoring_calls.load(Ordering::Relaxed)
    }

    /// The GPU backend, when one runs.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&super::GpuBackend> {
        match &self.inner {
            Inner::Gpu(g) => Some(g),
            Inner::Cpu => None,
        }
    }

    fn primary(&self) -> &dyn Backend {
        match &self.inner {
            Inner::Cpu => &self.cpu,
            #[cfg(feature = "gpu")]
            Inner::Gpu(g) => g.as_ref(),
        }
    }

    /// Results of the primary backend, with the hosts it could not take (capacity or device
    /// errors) redone by `cpu` on the CPU.
    fn with_fallback<T, J: Copy>(
        &self,
        jobs: &[J],
        mut out: Vec<Result<T, BackendError>>,
        cpu: impl Fn(&[J]) -> Vec<Result<T, BackendError>>,
    ) -> Vec<Result<T, BackendError>> {
        if matches!(self.inner, Inner::Cpu) {
            return out;
        }
        let redo: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().err().is_some_and(BackendError::is_capacity))
            .map(|(i, _)| i)
            .collect();
        if redo.is_empty() {
            return out;
        }
        self.cpu_hosts
            .fetch_add(redo.len() as u64, Ordering::Relaxed);
        let again: Vec<J> = redo.iter().map(|&i| jobs[i]).collect();
        for (&i, r) in redo.iter().zip(cpu(&again)) {
            out[i] = r;
        }
        out
    }
}

impl Backend for SelectedBackend {
    fn name(&self) -> String {
        self.primary().name()
    }

    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn threads(&self) -> usize {
        self.primary().threads()
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
        match self
            .primary()
            .residual_energy(zpad, n, d, lags, w, inv_scale, clip)
        {
            Ok(e) => Ok(e),
            Err(e)
                if e.downcast_ref::<BackendError>()
                    .is_some_and(BackendError::is_capacity) =>
            {
                self.cpu_hosts.fetch_add(1, Ordering::Relaxed);
                self.cpu
                    .residual_energy(zpad, n, d, lags, w, inv_scale, clip)
            }
            Err(e) => Err(e),
        }
    }

    fn cross_products_batch(
        &self,
        series: &[Series<'_>],
    ) -> Vec<Result<CrossProducts, BackendError>> {
        let out = self.primary().cross_products_batch(series);
        self.with_fallback(series, out, |again| self.cpu.cross_products_batch(again))
    }

    fn train_kernels(
        &self,
        series: &[Series<'_>],
        solve: &SolveFn<'_>,
    ) -> Vec<anyhow::Result<Vec<f32>>> {
        let mut out = self.primary().train_kernels(series, solve);
        if matches!(self.inner, Inner::Cpu) {
            return out;
        }
        let redo: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.as_ref().err().is_some_and(|e| {
                    e.downcast_ref::<BackendError>()
                        .is_some_and(BackendError::is_capacity)
                })
            })
            .map(|(i, _)| i)
            .collect();
        if redo.is_empty() {
            return out;
        }
        self.cpu_hosts
            .fetch_add(redo.len() as u64, Ordering::Relaxed);
        let again: Vec<Series<'_>> = redo.iter().map(|&i| series[i]).collect();
        let r = train_kernels_default(&self.cpu, &again, &|k, c| solve(redo[k], c));
        for (&i, r) in redo.iter().zip(r) {
            out[i] = r;
        }
        out
    }

    /// The GPU's device training; hosts it cannot take come back with a capacity error and
    /// the detector trains them through [`Backend::train_kernels`] (which falls back here).
    fn fit_device(&self, jobs: &[FitJob<'_>]) -> Option<Vec<anyhow::Result<FitOutput>>> {
        self.primary().fit_device(jobs)
    }

    /// Small calls (a one-minute run) on the CPU, the rest on the primary backend.
    fn score_stream(
        &self,
        jobs: &[StreamJob<'_>],
        top_k: usize,
    ) -> Vec<Result<Streamed, BackendError>> {
        if self.kind() == BackendKind::Gpu && self.scores_on(score_work(jobs)) == BackendKind::Cpu {
            self.cpu_scoring_calls.fetch_add(1, Ordering::Relaxed);
            return self.cpu.score_stream(jobs, top_k);
        }
        let out = self.primary().score_stream(jobs, top_k);
        self.with_fallback(jobs, out, |again| self.cpu.score_stream(again, top_k))
    }

    fn abs_residuals_batch(&self, jobs: &[ResidualJob<'_>]) -> Vec<Result<Vec<f32>, BackendError>> {
        let out = self.primary().abs_residuals_batch(jobs);
        self.with_fallback(jobs, out, |again| self.cpu.abs_residuals_batch(again))
    }
}
