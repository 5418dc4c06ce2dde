//! Opening the device: adapter choice, limits, pipelines, error capture.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use super::buffers::Buffers;
use super::plan::Limits;
use super::{
    lock, FitPipelines, GpuBackend, GpuOptions, GpuStats, Pipelines, CALIBRATE_WGSL, CROSS_WGSL,
    REDUCE_WGSL, RESID_WGSL, SOLVE_WGSL, STANDARDIZE_WGSL, STREAM_WGSL, TRAIN_COMMON_WGSL,
};
use crate::backend::{BackendError, BackendInfo, BackendKind};

fn device_type(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "software adapter (runs on the CPU)",
        wgpu::DeviceType::Other => "other",
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn describe(i: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({}, {:?})",
        i.name,
        device_type(i.device_type),
        i.backend
    )
}

impl GpuBackend {
    /// Open the best adapter wgpu finds, a software one (lavapipe) included.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self::with_options(GpuOptions {
            allow_software: true,
            ..GpuOptions::default()
        })?)
    }

    /// Open the best adapter that fits `opts` (discrete before integrated before virtual
    /// GPUs; Vulkan, Metal or DX12). [`BackendError::NoAdapter`] says what was found instead.
    pub fn with_options(opts: GpuOptions) -> Result<Self, BackendError> {
        let instance = wgpu::Instance::new(&wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            flags: wgpu::InstanceFlags::default().with_env(),
            ..Default::default()
        });
        let adapters = instance.enumerate_adapters(wgpu::Backends::PRIMARY);
        let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        let want = opts.adapter_name.as_deref().map(str::to_lowercase);
        let mut usable: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let i = a.get_info();
                (opts.allow_software || i.device_type != wgpu::DeviceType::Cpu)
                    && want
                        .as_deref()
                        .is_none_or(|w| i.name.to_lowercase().contains(w))
                    && a.get_downlevel_capabilities()
                        .flags
                        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                    && a.limits().max_compute_invocations_per_workgroup >= 256
                    && a.limits().max_compute_workgroup_size_x >= 256
                    && a.limits().max_compute_workgroup_storage_size >= 16384
            })
            .collect();
        usable.sort_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = usable.into_iter().next() else {
            let reason = if seen.is_empty() {
                "wgpu found no Vulkan, Metal or DX12 adapter (is a GPU driver with its Vulkan ICD \
                 and libvulkan.so.1 installed?)"
                    .to_string()
            } else {
                let mut wanted = vec!["a compute-capable adapter".to_string()];
                if !opts.allow_software {
                    wanted.push("not a software one".into());
                }
                if let Some(name) = &opts.adapter_name {
                    wanted.push(format!("with {name:?} in its name"));
                }
                format!("wanted {}; found: {}", wanted.join(", "), seen.join("; "))
            };
            return Err(BackendError::NoAdapter { reason });
        };
        let ainfo = adapter.get_info();
        let alimits = adapter.limits();
        // f64 arithmetic in shaders: device-side training (statistics, solve, quantile) is
        // written for it; without it training takes the host-side path.
        let f64_ok = adapter.features().contains(wgpu::Features::SHADER_F64);
        let mut features = if f64_ok {
            wgpu::Features::SHADER_F64
        } else {
            wgpu::Features::empty()
        };
        let stamps =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if opts.profile && adapter.features().contains(stamps) {
            features |= stamps;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(
            &wgpu::DeviceDescriptor {
                label: Some("rackwatch-anomaly"),
                required_features: features,
                required_limits: alimits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
            },
            None,
        ))
        .map_err(|e| BackendError::NoAdapter {
            reason: format!("opening {}: {e}", describe(&ainfo)),
        })?;
        let fault: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        {
            let f = fault.clone();
            device.on_uncaptured_error(Box::new(move |e| {
                lock(&f).get_or_insert_with(|| e.to_string());
            }));
            let f = fault.clone();
            device.set_device_lost_callback(move |reason, msg| {
                lock(&f).get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
            });
        }
        device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |src: Cow<'static, str>, label: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src),
            })
        };
        let pipeline = |m: &wgpu::ShaderModule, entry: &str, label: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let one = |src: &'static str, label: &str| {
            pipeline(&module(Cow::Borrowed(src), label), "main", label)
        };
        let mut pipes = Pipelines {
            cross: one(CROSS_WGSL, "cross_products"),
            reduce: one(REDUCE_WGSL, "cross_reduce"),
            resid: one(RESID_WGSL, "residuals"),
            stream: one(STREAM_WGSL, "score_stream"),
            fit: None,
        };
        if let Some(e) = pollster::block_on(device.pop_error_scope()) {
            return Err(BackendError::Device(format!("compiling the kernels: {e}")));
        }
        let fit_unavailable = if f64_ok {
            device.push_error_scope(wgpu::ErrorFilter::Validation);
            let train = |src: &str, label: &str| {
                module(Cow::Owned(format!("{TRAIN_COMMON_WGSL}\n{src}")), label)
            };
            let standardize = train(STANDARDIZE_WGSL, "standardize");
            // The workgroup-memory solve holds A and B (F · (F + d) f64s): as many as the
            // device's workgroup memory allows, up to 48 KiB (the job's hosts need 25 KB).
            let small_solve =
                (alimits.max_compute_workgroup_storage_size as usize).min(48 << 10) / 8 - 16;
            let small_solve = if small_solve >= 1024 { small_solve } else { 0 };
            let solve = module(
                Cow::Owned(format!(
                    "const SMALL: u32 = {}u;\n{TRAIN_COMMON_WGSL}\n{SOLVE_WGSL}",
                    small_solve.max(8)
                )),
                "solve",
            );
            let fit = FitPipelines {
                stats: pipeline(&standardize, "stats", "standardize stats"),
                merge: pipeline(&standardize, "merge", "standardize merge"),
                apply: pipeline(&standardize, "apply", "standardize apply"),
                solve: pipeline(&solve, "main", "solve"),
                solve_small: (small_solve > 0).then(|| pipeline(&solve, "small", "solve small")),
                small_solve,
                calibrate: pipeline(&train(CALIBRATE_WGSL, "calibrate"), "main", "calibrate"),
            };
            match pollster::block_on(device.pop_error_scope()) {
                None => {
                    pipes.fit = Some(fit);
                    None
                }
                Some(e) => Some(format!("the f64 training kernels did not compile: {e}")),
            }
        } else {
            Some("the adapter has no f64 shader arithmetic (SHADER_F64)".to_string())
        };
        let limits = Limits::new(
            alimits.max_storage_buffer_binding_size as u64,
            alimits.max_buffer_size,
            alimits.max_compute_workgroups_per_dimension,
            opts.max_buffer_bytes,
        );
        let info = BackendInfo {
            kind: BackendKind::Gpu,
            device: ainfo.name.clone(),
            device_type: device_type(ainfo.device_type).to_string(),
            api: Some(format!("{:?}", ainfo.backend)),
            driver: Some(
                format!("{} {}", ainfo.driver, ainfo.driver_info)
                    .trim()
                    .to_string(),
            ),
            software: ainfo.device_type == wgpu::DeviceType::Cpu,
        };
        let bufs = Mutex::new(Buffers::new(&device));
        let prof = super::profile::Profiler::new(&device, &queue);
        Ok(GpuBackend {
            device,
            queue,
            pipes,
            info,
            adapter: ainfo,
            limits,
            threads: opts.host_threads.max(1),
            pipeline_bytes: opts.pipeline_bytes,
            fit_unavailable,
            bufs,
            fault,
            stats: Mutex::new(GpuStats::default()),
            prof,
        })
    }

    /// The adapter as wgpu reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// Effective per-buffer limits `(largest storage binding, largest buffer)` in bytes.
    pub fn buffer_limits(&self) -> (u64, u64) {
        (self.limits.binding, self.limits.buffer)
    }

    /// Why whole trainings do not run on this device (`None`: they do). Without f64 shader
    /// arithmetic the device computes the cross products and residuals and the host the rest.
    pub fn device_training_unavailable(&self) -> Option<&str> {
        self.fit_unavailable.as_deref()
    }

    /// Whether steps are timed on the device ([`GpuOptions::profile`] on an adapter with
    /// timestamp queries).
    pub fn profiling(&self) -> bool {
        self.prof.is_some()
    }

    /// Work counters so far.
    pub fn stats(&self) -> GpuStats {
        lock(&self.stats).clone()
    }
}
