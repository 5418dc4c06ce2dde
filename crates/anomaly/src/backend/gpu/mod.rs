//! GPU backend: plain `wgpu` with hand-written WGSL compute shaders (`shaders/`). Runs on any
//! Vulkan / Metal / DX12 device, including the software Vulkan device lavapipe.
//!
//! Written for a real GPU:
//! * one context (device, queue, three pipelines) opened once and shared;
//! * persistent, grow-only buffers reused by every call (`Buffers`), so a steady stream of
//!   batches allocates nothing;
//! * per (sub-)batch of hosts: one mapped upload of every input (series, weights, work tables,
//!   parameters), one submit with the kernels of the step, one mapped download of the results;
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

mod plan;

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::parallel::{available_threads, par_map};
use super::{
    energy_from_abs, Backend, BackendError, BackendInfo, BackendKind, Calibration, CrossProducts,
    LagWeights, ResidualJob, Series, SolveFn, TrainJob,
};
use plan::{align, CrossShape, Limits, Need, ALIGN, CHUNK_ROWS, ENTRY, REDUCE_GROUP};

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

/// A device buffer that only grows (geometrically), reused across calls.
struct Grow {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buf: Option<wgpu::Buffer>,
    size: u64,
}

impl Grow {
    fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Grow {
            label,
            usage,
            buf: None,
            size: 0,
        }
    }

    fn ensure(&mut self, device: &wgpu::Device, need: u64, cap: u64, allocations: &mut u64) {
        let need = align(need.max(ALIGN), ALIGN);
        if self.buf.is_some() && need <= self.size {
            return;
        }
        let size = need.max(self.size.saturating_mul(2)).min(cap.max(need));
        if let Some(old) = self.buf.take() {
            old.destroy();
        }
        self.buf = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(self.label),
            size,
            usage: self.usage,
            mapped_at_creation: false,
        }));
        self.size = size;
        *allocations += 1;
    }

    fn get(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("ensured before use")
    }
}

/// The persistent buffers.
struct Buffers {
    upload: Grow,
    z: Grow,
    w: Grow,
    jobs: Grow,
    items: Grow,
    pairs: Grow,
    items2: Grow,
    part: Grow,
    resid: Grow,
    out: Grow,
    readback: Grow,
    /// Parameter blocks (16 bytes each) of the passes: cross, reduce, residuals, and the
    /// training calibration's residuals, scales and row sums.
    params: [wgpu::Buffer; 6],
}

impl Buffers {
    fn new(device: &wgpu::Device) -> Self {
        use wgpu::BufferUsages as U;
        let storage = U::STORAGE | U::COPY_DST;
        let params = std::array::from_fn(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: 16,
                usage: U::UNIFORM | U::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Buffers {
            upload: Grow::new("upload", U::MAP_WRITE | U::COPY_SRC),
            z: Grow::new("series", storage),
            w: Grow::new("weights", storage),
            jobs: Grow::new("jobs", storage),
            items: Grow::new("items", storage),
            pairs: Grow::new("pairs", storage),
            items2: Grow::new("items2", storage),
            part: Grow::new("partials", U::STORAGE),
            resid: Grow::new("training residuals", U::STORAGE),
            out: Grow::new("results", U::STORAGE | U::COPY_SRC),
            readback: Grow::new("readback", U::MAP_READ | U::COPY_DST),
            params,
        }
    }
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

/// Words of a parameter block.
fn words(v: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (c, w) in b.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    b
}

fn u32s(v: usize) -> u32 {
    u32::try_from(v).expect("plan keeps indices in u32")
}

fn binding(buf: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: 0,
        size: NonZeroU64::new(align(size.max(4), 4)),
    })
}

/// Copy `parts` (`(byte offset, floats)`, increasing, disjoint) into `dst`.
fn scatter(threads: usize, dst: &mut [u8], parts: Vec<(u64, &[f32])>) {
    let total: usize = parts.iter().map(|p| p.1.len() * 4).sum();
    let mut rest: &mut [u8] = dst;
    let mut pos = 0u64;
    let mut tasks = Vec::with_capacity(parts.len());
    for (off, src) in parts {
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut((off - pos) as usize);
        let (mine, tail) = tail.split_at_mut(src.len() * 4);
        tasks.push((mine, src));
        rest = tail;
        pos = off + src.len() as u64 * 4;
    }
    let threads = if total < PARALLEL_COPY_BYTES {
        1
    } else {
        threads
    };
    par_map(threads, tasks, |_, (d, s)| {
        d.copy_from_slice(bytemuck::cast_slice(s))
    });
}

/// Floats at `[from, to)` of mapped result bytes.
fn floats(bytes: &[u8], from: usize, to: usize) -> Vec<f32> {
    let b = &bytes[from * 4..to * 4];
    match bytemuck::try_cast_slice::<u8, f32>(b) {
        Ok(f) => f.to_vec(),
        Err(_) => b
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Layout of the upload buffer: byte offsets of the regions, in order.
struct Layout {
    offsets: Vec<u64>,
    total: u64,
}

impl Layout {
    fn new(sizes: &[u64]) -> Self {
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for s in sizes {
            offsets.push(at);
            at += align(*s, ALIGN);
        }
        Layout {
            offsets,
            total: at.max(ALIGN),
        }
    }
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
                    && a.limits().max_compute_workgroup_storage_size >= 8192
            })
            .collect();
        usable.sort_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = usable.into_iter().next() else {
            let reason = if seen.is_empty() {
                "wgpu found no Vulkan, Metal or DX12 adapter (is a GPU driver with its Vulkan ICD \
                 and libvulkan.so.1 installed?)"
                    .to_string()
            } else {
                let mut wanted = vec!["a compute-capable adapter"];
                if !opts.allow_software {
                    wanted.push("not a software one");
                }
                if opts.adapter_name.is_some() {
                    wanted.push("with the configured name");
                }
                format!("wanted {}; found: {}", wanted.join(", "), seen.join("; "))
            };
            return Err(BackendError::NoAdapter { reason });
        };
        let ainfo = adapter.get_info();
        let alimits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(
            &wgpu::DeviceDescriptor {
                label: Some("rackwatch-anomaly"),
                required_features: wgpu::Features::empty(),
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
        let pipeline = |src: &str, label: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(src)),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipes = Pipelines {
            cross: pipeline(CROSS_WGSL, "cross_products"),
            reduce: pipeline(REDUCE_WGSL, "cross_reduce"),
            resid: pipeline(RESID_WGSL, "residuals"),
            scales: pipeline(SCALES_WGSL, "scales"),
            rowsum: pipeline(ROWSUM_WGSL, "rowsum"),
        };
        if let Some(e) = pollster::block_on(device.pop_error_scope()) {
            return Err(BackendError::Device(format!("compiling the kernels: {e}")));
        }
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
        Ok(GpuBackend {
            device,
            queue,
            pipes,
            info,
            adapter: ainfo,
            limits,
            threads: opts.host_threads.max(1),
            bufs,
            fault,
            stats: Mutex::new(GpuStats::default()),
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

    /// Work counters so far.
    pub fn stats(&self) -> GpuStats {
        lock(&self.stats).clone()
    }

    fn check_fault(&self) -> Result<(), BackendError> {
        match lock(&self.fault).as_ref() {
            Some(e) => Err(BackendError::Device(e.clone())),
            None => Ok(()),
        }
    }

    fn map(&self, buf: &wgpu::Buffer, size: u64, mode: wgpu::MapMode) -> Result<(), BackendError> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..size).map_async(mode, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::Maintain::Wait);
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BackendError::Device(format!("mapping a buffer: {e}"))),
            Err(_) => Err(BackendError::Device(
                "the device dropped a buffer mapping".into(),
            )),
        }
    }

    /// Map the upload buffer and let `fill` write the `layout.total` bytes.
    fn upload(
        &self,
        bufs: &mut Buffers,
        layout: &Layout,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), BackendError> {
        let t = Instant::now();
        let mut st = lock(&self.stats);
        bufs.upload.ensure(
            &self.device,
            layout.total,
            self.limits.buffer,
            &mut st.buffer_allocations,
        );
        drop(st);
        let up = bufs.upload.get();
        self.map(up, layout.total, wgpu::MapMode::Write)?;
        {
            let mut view = up.slice(..layout.total).get_mapped_range_mut();
            fill(&mut view);
        }
        up.unmap();
        let mut st = lock(&self.stats);
        st.upload_bytes += layout.total;
        st.fill_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Run `f` (allocations, upload, encoding, submit) inside validation and out-of-memory
    /// error scopes, so a device error becomes [`BackendError::Device`] instead of a panic.
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let r = f();
        let oom = pollster::block_on(self.device.pop_error_scope());
        let invalid = pollster::block_on(self.device.pop_error_scope());
        if let Some(e) = oom.or(invalid) {
            return Err(BackendError::Device(e.to_string()));
        }
        self.check_fault()?;
        r
    }

    /// Wait for the submitted work (which ends by copying `bytes` of results into the
    /// readback buffer) and hand the mapped result bytes to `read`.
    fn finish<T>(
        &self,
        bufs: &Buffers,
        started: Instant,
        bytes: u64,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, BackendError> {
        let t = started;
        let rb = bufs.readback.get();
        self.map(rb, bytes, wgpu::MapMode::Read)?;
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = {
            let view = rb.slice(..bytes).get_mapped_range();
            read(&view)
        };
        rb.unmap();
        let mut st = lock(&self.stats);
        st.submits += 1;
        st.download_bytes += bytes;
        st.wait_s += waited;
        st.read_s += t.elapsed().as_secs_f64();
        Ok(out)
    }

    fn ensure(&self, bufs: &mut Buffers, need: &Need, out: u64) {
        let mut st = lock(&self.stats);
        let a = &mut st.buffer_allocations;
        let (d, cap) = (&self.device, self.limits.buffer);
        bufs.z.ensure(d, need.z, cap, a);
        bufs.w.ensure(d, need.w, cap, a);
        bufs.jobs.ensure(d, need.jobs, cap, a);
        bufs.items.ensure(d, need.items, cap, a);
        bufs.pairs.ensure(d, need.pairs, cap, a);
        bufs.items2.ensure(d, need.items, cap, a);
        bufs.part.ensure(d, need.part, cap, a);
        bufs.resid.ensure(d, need.resid, cap, a);
        bufs.out.ensure(d, out, cap, a);
        bufs.readback.ensure(d, out, cap, a);
    }

    fn pass(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        entries: &[(&wgpu::Buffer, u64)],
        groups: u64,
    ) {
        let layout = pipe.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .enumerate()
            .map(|(i, (b, size))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: binding(b, *size),
            })
            .collect();
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let (nx, ny) = plan::dispatch_dims(groups, &self.limits);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(nx, ny, 1);
    }

    /// Cross products of one sub-batch (every series checked, non-empty, within limits).
    fn run_cross(&self, series: &[&Series<'_>]) -> Result<Vec<CrossProducts>, BackendError> {
        let mut need = Need::default();
        for s in series {
            need.add(&CrossShape::of(s).need(s));
        }
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        self.scoped(|| {
            self.ensure(bufs, &need, need.out);
            Ok(())
        })?;
        Ok(self.cross_step(bufs, series)?.0)
    }

    /// Upload the series of `series` and compute their cross products (buffers ensured).
    /// Returns the products and each series' offset (floats) in the series buffer, where it
    /// stays for a following calibration step.
    fn cross_step(
        &self,
        bufs: &mut Buffers,
        series: &[&Series<'_>],
    ) -> Result<(Vec<CrossProducts>, Vec<usize>), BackendError> {
        let shapes: Vec<CrossShape> = series.iter().map(|s| CrossShape::of(s)).collect();
        let mut need = Need::default();
        let (mut zoffs, mut jobs, mut items, mut pairs) = (vec![], vec![], vec![], vec![]);
        let mut pair0 = Vec::with_capacity(series.len());
        let (mut zat, mut item_at) = (0usize, 0usize);
        for (k, (s, sh)) in series.iter().zip(&shapes).enumerate() {
            let n = sh.need(s);
            need.add(&n);
            zoffs.push(zat);
            jobs.extend([u32s(zat), u32s(s.n), u32s(s.d), u32s(sh.m)]);
            pair0.push(pairs.len() / 4);
            for ti in 0..sh.tiles {
                for tj in ti..sh.tiles {
                    pairs.extend([u32s(item_at), u32s(sh.chunks), 0, 0]);
                    for c in 0..sh.chunks {
                        items.extend([u32s(k), u32s(ti), u32s(tj), u32s(c)]);
                    }
                    item_at += sh.chunks;
                }
            }
            zat += (n.z / 4) as usize;
        }
        let n_items = (items.len() / 4) as u64;
        let n_pairs = pairs.len() / 4;
        let reduce_count = n_pairs * ENTRY;
        let reduce_groups = reduce_count.div_ceil(REDUCE_GROUP) as u64;
        let (cx, _) = plan::dispatch_dims(n_items, &self.limits);
        let (rx, _) = plan::dispatch_dims(reduce_groups, &self.limits);
        let pc = words([u32s(n_items as usize), cx, CHUNK_ROWS as u32, 0]);
        let pr = words([u32s(reduce_count), rx, 0, 0]);
        let layout = Layout::new(&[need.z, need.jobs, need.items, need.pairs, 16, 16]);
        let o = &layout.offsets;
        let started = self.scoped(|| {
            self.upload(bufs, &layout, |dst| {
                let (zdst, tables) = dst.split_at_mut(o[1] as usize);
                scatter(
                    self.threads,
                    zdst,
                    series
                        .iter()
                        .zip(&zoffs)
                        .map(|(s, &at)| (at as u64 * 4, &s.zpad[..s.len()]))
                        .collect(),
                );
                let base = o[1] as usize;
                for (i, bytes) in [
                    bytemuck::cast_slice::<u32, u8>(&jobs),
                    bytemuck::cast_slice(&items),
                    bytemuck::cast_slice(&pairs),
                    &pc,
                    &pr,
                ]
                .into_iter()
                .enumerate()
                {
                    let at = o[i + 1] as usize - base;
                    tables[at..at + bytes.len()].copy_from_slice(bytes);
                }
            })?;
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let up = bufs.upload.get();
            for (i, (dst, size)) in [
                (bufs.z.get(), need.z),
                (bufs.jobs.get(), need.jobs),
                (bufs.items.get(), need.items),
                (bufs.pairs.get(), need.pairs),
                (&bufs.params[0], 16),
                (&bufs.params[1], 16),
            ]
            .into_iter()
            .enumerate()
            {
                enc.copy_buffer_to_buffer(up, o[i], dst, 0, size);
            }
            self.pass(
                &mut enc,
                &self.pipes.cross,
                &[
                    (bufs.z.get(), need.z),
                    (bufs.jobs.get(), need.jobs),
                    (bufs.items.get(), need.items),
                    (&bufs.params[0], 16),
                    (bufs.part.get(), need.part),
                ],
                n_items,
            );
            self.pass(
                &mut enc,
                &self.pipes.reduce,
                &[
                    (bufs.part.get(), need.part),
                    (bufs.pairs.get(), need.pairs),
                    (&bufs.params[1], 16),
                    (bufs.out.get(), need.out),
                ],
                reduce_groups,
            );
            enc.copy_buffer_to_buffer(bufs.out.get(), 0, bufs.readback.get(), 0, need.out);
            let started = Instant::now();
            self.queue.submit([enc.finish()]);
            Ok(started)
        })?;
        let products = self.finish(bufs, started, need.out, |bytes| {
            let work: Vec<usize> = (0..series.len()).collect();
            let threads = if bytes.len() < PARALLEL_COPY_BYTES {
                1
            } else {
                self.threads
            };
            par_map(threads, work, |_, k| {
                let (s, sh) = (series[k], &shapes[k]);
                let from = pair0[k] * ENTRY;
                let tiles = floats(bytes, from, from + sh.pairs * ENTRY);
                let (xtx, xty) = plan::assemble_cross(sh, &tiles, s.n, s.d, s.lags);
                CrossProducts { xtx, xty }
            })
        })?;
        Ok((products, zoffs))
    }

    /// Device-side training of one sub-batch (every job checked, non-empty, summary
    /// wanted, within limits): cross products; the solves on the host; then, with the
    /// series still on the device, residuals, residual scales and row energy sums, and only
    /// those (plus the last rows) read back.
    fn run_train(
        &self,
        tjobs: &[&TrainJob<'_>],
        solve: &(dyn Fn(usize, CrossProducts) -> anyhow::Result<(Vec<f32>, Vec<f32>)> + Sync),
    ) -> Result<Vec<anyhow::Result<Calibration>>, BackendError> {
        let series: Vec<&Series<'_>> = tjobs.iter().map(|j| &j.series).collect();
        let mut need = Need::default();
        for s in &series {
            need.add(&plan::train_need(s));
        }
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        self.scoped(|| {
            self.ensure(bufs, &need, need.out);
            Ok(())
        })?;
        let (products, zoffs) = self.cross_step(bufs, &series)?;
        let solved: Vec<anyhow::Result<(Vec<f32>, Vec<f32>)>> =
            par_map(self.threads, products, solve);
        // Calibration tables of the solved hosts.
        let ok: Vec<usize> = (0..tjobs.len()).filter(|&k| solved[k].is_ok()).collect();
        let (mut rjobs, mut ritems, mut hosts, mut mitems) = (vec![], vec![], vec![], vec![]);
        let (mut wdata, mut coffs) = (Vec::new(), Vec::new());
        let (mut wat, mut rat, mut cat) = (0usize, 0usize, 0usize);
        let mut cneed = Need::default();
        for (h, &k) in ok.iter().enumerate() {
            let (j, s) = (tjobs[k], series[k]);
            let (w, b) = solved[k].as_ref().expect("filtered");
            if w.len() != s.lags * s.d * s.d || b.len() != s.d {
                return Err(BackendError::Invalid(
                    "solved weights of the wrong shape".into(),
                ));
            }
            rjobs.extend([
                u32s(zoffs[k]),
                u32s(s.n),
                u32s(s.d),
                u32s(s.lags),
                u32s(wat),
                u32s(rat),
                0,
                0,
            ]);
            for rb in 0..s.n.div_ceil(plan::RES_ROWS) {
                for mb in 0..s.d.div_ceil(plan::RES_METRICS) {
                    ritems.extend([u32s(h), u32s(rb), u32s(mb), 0]);
                }
            }
            let tail = s.n.min(super::CALIBRATION_TAIL);
            hosts.extend([
                u32s(rat),
                u32s(s.n),
                u32s(s.d),
                u32s(cat),
                j.resid_floor.to_bits(),
                j.clip.to_bits(),
                u32s(tail),
                0,
            ]);
            for rb in 0..s.n.div_ceil(plan::ROWSUM_ROWS) {
                mitems.extend([u32s(h), u32s(rb)]);
            }
            wdata.push((wat, w.as_slice(), b.as_slice()));
            coffs.push(cat);
            let wlen = align((w.len() + b.len()) as u64, 4) as usize;
            wat += wlen;
            rat += align((s.n * s.d) as u64, 4) as usize;
            cat += align(plan::summary_len(s) as u64, 4) as usize;
            cneed.w += wlen as u64 * 4;
        }
        if ok.is_empty() {
            return Ok(solved
                .into_iter()
                .map(|r| r.map(|_| Calibration::Full(Vec::new())))
                .collect());
        }
        let out_bytes = cat as u64 * 4;
        let n_ritems = (ritems.len() / 4) as u64;
        let n_hosts = ok.len() as u64;
        let n_mitems = (mitems.len() / 2) as u64;
        let (rx, _) = plan::dispatch_dims(n_ritems, &self.limits);
        let (sx, _) = plan::dispatch_dims(n_hosts, &self.limits);
        let (mx, _) = plan::dispatch_dims(n_mitems, &self.limits);
        let (b_rjobs, b_ritems, b_hosts, b_mitems) = (
            rjobs.len() as u64 * 4,
            ritems.len() as u64 * 4,
            hosts.len() as u64 * 4,
            mitems.len() as u64 * 4,
        );
        let params = [
            words([u32s(n_ritems as usize), rx, 0, 0]),
            words([u32s(n_hosts as usize), sx, 0, 0]),
            words([u32s(n_mitems as usize), mx, 0, 0]),
        ];
        let layout = Layout::new(&[cneed.w, b_rjobs, b_ritems, b_hosts, b_mitems, 16, 16, 16]);
        let o = &layout.offsets;
        let resid_bytes = rat as u64 * 4;
        let started = self.scoped(|| {
            self.upload(bufs, &layout, |dst| {
                let (wdst, tables) = dst.split_at_mut(o[1] as usize);
                let mut parts = Vec::with_capacity(2 * wdata.len());
                for (at, w, b) in &wdata {
                    parts.push((*at as u64 * 4, *w));
                    parts.push(((at + w.len()) as u64 * 4, *b));
                }
                scatter(self.threads, wdst, parts);
                let base = o[1] as usize;
                for (i, bytes) in [
                    bytemuck::cast_slice::<u32, u8>(&rjobs),
                    bytemuck::cast_slice(&ritems),
                    bytemuck::cast_slice(&hosts),
                    bytemuck::cast_slice(&mitems),
                    &params[0],
                    &params[1],
                    &params[2],
                ]
                .into_iter()
                .enumerate()
                {
                    let at = o[i + 1] as usize - base;
                    tables[at..at + bytes.len()].copy_from_slice(bytes);
                }
            })?;
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let up = bufs.upload.get();
            for (i, (dst, size)) in [
                (bufs.w.get(), cneed.w),
                (bufs.jobs.get(), b_rjobs),
                (bufs.items.get(), b_ritems),
                (bufs.pairs.get(), b_hosts),
                (bufs.items2.get(), b_mitems),
                (&bufs.params[3], 16),
                (&bufs.params[4], 16),
                (&bufs.params[5], 16),
            ]
            .into_iter()
            .enumerate()
            {
                enc.copy_buffer_to_buffer(up, o[i], dst, 0, size);
            }
            self.pass(
                &mut enc,
                &self.pipes.resid,
                &[
                    (bufs.z.get(), need.z),
                    (bufs.w.get(), cneed.w),
                    (bufs.jobs.get(), b_rjobs),
                    (bufs.items.get(), b_ritems),
                    (&bufs.params[3], 16),
                    (bufs.resid.get(), resid_bytes),
                ],
                n_ritems,
            );
            self.pass(
                &mut enc,
                &self.pipes.scales,
                &[
                    (bufs.resid.get(), resid_bytes),
                    (bufs.pairs.get(), b_hosts),
                    (&bufs.params[4], 16),
                    (bufs.out.get(), out_bytes),
                ],
                n_hosts,
            );
            self.pass(
                &mut enc,
                &self.pipes.rowsum,
                &[
                    (bufs.resid.get(), resid_bytes),
                    (bufs.pairs.get(), b_hosts),
                    (bufs.items2.get(), b_mitems),
                    (&bufs.params[5], 16),
                    (bufs.out.get(), out_bytes),
                ],
                n_mitems,
            );
            enc.copy_buffer_to_buffer(bufs.out.get(), 0, bufs.readback.get(), 0, out_bytes);
            let started = Instant::now();
            self.queue.submit([enc.finish()]);
            Ok(started)
        })?;
        let summaries = self.finish(bufs, started, out_bytes, |bytes| {
            par_map(1, (0..ok.len()).collect(), |_, h| {
                let s = series[ok[h]];
                let c = coffs[h];
                let tail = s.n.min(super::CALIBRATION_TAIL);
                Calibration::Summary {
                    inv_scale: floats(bytes, c, c + s.d),
                    row_sums: floats(bytes, c + s.d, c + s.d + s.n),
                    tail_abs: floats(bytes, c + s.d + s.n, c + s.d + s.n + tail * s.d),
                }
            })
        })?;
        drop(wdata);
        let mut summaries = summaries.into_iter();
        Ok(solved
            .into_iter()
            .map(|r| r.map(|_| summaries.next().expect("one summary per solved host")))
            .collect())
    }

    /// Absolute residuals of one sub-batch (every job checked, non-empty, within limits).
    fn run_resid(&self, jobs_in: &[&ResidualJob<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        let mut need = Need::default();
        let (mut jobs, mut items) = (vec![], vec![]);
        let (mut zoffs, mut woffs, mut roffs) = (vec![], vec![], vec![]);
        let (mut zat, mut wat, mut rat) = (0usize, 0usize, 0usize);
        for (k, j) in jobs_in.iter().enumerate() {
            let n = plan::residual_need(j);
            let s = j.series;
            need.add(&n);
            jobs.extend([
                u32s(zat),
                u32s(s.n),
                u32s(s.d),
                u32s(s.lags),
                u32s(wat),
                u32s(rat),
                0,
                0,
            ]);
            for rb in 0..s.n.div_ceil(plan::RES_ROWS) {
                for mb in 0..s.d.div_ceil(plan::RES_METRICS) {
                    items.extend([u32s(k), u32s(rb), u32s(mb), 0]);
                }
            }
            zoffs.push(zat);
            woffs.push(wat);
            roffs.push(rat);
            zat += (n.z / 4) as usize;
            wat += (n.w / 4) as usize;
            rat += (n.out / 4) as usize;
        }
        let n_items = (items.len() / 4) as u64;
        let (nx, _) = plan::dispatch_dims(n_items, &self.limits);
        let pp = words([u32s(n_items as usize), nx, 0, 0]);
        let layout = Layout::new(&[need.z, need.w, need.jobs, need.items, 16]);
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        let o = &layout.offsets;
        let started = self.scoped(|| {
            self.ensure(bufs, &need, need.out);
            self.upload(bufs, &layout, |dst| {
                let (zdst, rest) = dst.split_at_mut(o[1] as usize);
                scatter(
                    self.threads,
                    zdst,
                    jobs_in
                        .iter()
                        .zip(&zoffs)
                        .map(|(j, &at)| (at as u64 * 4, &j.series.zpad[..j.series.len()]))
                        .collect(),
                );
                let (wdst, tables) = rest.split_at_mut((o[2] - o[1]) as usize);
                let mut parts = Vec::with_capacity(2 * jobs_in.len());
                for (j, &at) in jobs_in.iter().zip(&woffs) {
                    let nw = j.weights.weights.len();
                    parts.push((at as u64 * 4, j.weights.weights));
                    parts.push(((at + nw) as u64 * 4, j.weights.bias));
                }
                scatter(self.threads, wdst, parts);
                let base = o[2] as usize;
                for (i, bytes) in [
                    bytemuck::cast_slice::<u32, u8>(&jobs),
                    bytemuck::cast_slice(&items),
                    &pp,
                ]
                .into_iter()
                .enumerate()
                {
                    let at = o[i + 2] as usize - base;
                    tables[at..at + bytes.len()].copy_from_slice(bytes);
                }
            })?;
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let up = bufs.upload.get();
            for (i, (dst, size)) in [
                (bufs.z.get(), need.z),
                (bufs.w.get(), need.w),
                (bufs.jobs.get(), need.jobs),
                (bufs.items.get(), need.items),
                (&bufs.params[2], 16),
            ]
            .into_iter()
            .enumerate()
            {
                enc.copy_buffer_to_buffer(up, o[i], dst, 0, size);
            }
            self.pass(
                &mut enc,
                &self.pipes.resid,
                &[
                    (bufs.z.get(), need.z),
                    (bufs.w.get(), need.w),
                    (bufs.jobs.get(), need.jobs),
                    (bufs.items.get(), need.items),
                    (&bufs.params[2], 16),
                    (bufs.out.get(), need.out),
                ],
                n_items,
            );
            enc.copy_buffer_to_buffer(bufs.out.get(), 0, bufs.readback.get(), 0, need.out);
            let started = Instant::now();
            self.queue.submit([enc.finish()]);
            Ok(started)
        })?;
        self.finish(bufs, started, need.out, |bytes| {
            let threads = if bytes.len() < PARALLEL_COPY_BYTES {
                1
            } else {
                self.threads
            };
            par_map(threads, (0..jobs_in.len()).collect(), |_, k| {
                let s = jobs_in[k].series;
                floats(bytes, roffs[k], roffs[k] + s.n * s.d)
            })
        })
    }

    /// Run `jobs` (already split to fit) through `run`, spreading a sub-batch failure to
    /// each of its hosts.
    fn batched<J, T: Clone>(
        &self,
        n: usize,
        needs: Vec<Option<Need>>,
        mut out: Vec<Option<Result<T, BackendError>>>,
        jobs: &[J],
        run: impl Fn(&[&J]) -> Result<Vec<T>, BackendError>,
    ) -> Vec<Result<T, BackendError>> {
        lock(&self.stats).calls += 1;
        let (batches, rejected) = plan::split(&needs, &self.limits);
        for (i, e) in rejected {
            out[i] = Some(Err(e));
        }
        for b in batches {
            let refs: Vec<&J> = b.iter().map(|&i| &jobs[i]).collect();
            match self.check_fault().and_then(|_| run(&refs)) {
                Ok(vals) => {
                    for (&i, v) in b.iter().zip(vals) {
                        out[i] = Some(Ok(v));
                    }
                }
                Err(e) => {
                    for &i in &b {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        debug_assert_eq!(out.len(), n);
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::Invalid("host not planned".into()))))
            .collect()
    }
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
