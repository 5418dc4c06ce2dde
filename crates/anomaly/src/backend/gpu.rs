//! GPU backend: plain `wgpu` with hand-written WGSL compute shaders (`shaders/`). Runs on any
//! Vulkan / Metal / DX12 device, including the software Vulkan device lavapipe.

use anyhow::{anyhow, Context, Result};
use std::borrow::Cow;
use wgpu::util::DeviceExt;

use super::{Backend, LagWeights};

const ENERGY_WGSL: &str = include_str!("../../shaders/residual_energy.wgsl");
const CROSS_WGSL: &str = include_str!("../../shaders/cross_products.wgsl");
/// Rows per partial sum of the cross products.
const CHUNK: u32 = 1024;

/// wgpu device, queue and the two compute pipelines.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    energy: wgpu::ComputePipeline,
    cross: wgpu::ComputePipeline,
    name: String,
    max_wg: u32,
}

fn pipeline(device: &wgpu::Device, src: &str, label: &str) -> wgpu::ComputePipeline {
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
}

impl GpuBackend {
    /// Open the first (high-performance) adapter wgpu finds.
    pub fn new() -> Result<Self> {
        let instance = wgpu::Instance::new(&wgpu::InstanceDescriptor::default());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
        }))
        .ok_or_else(|| anyhow!("no wgpu adapter (GPU or lavapipe) found"))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(
            &wgpu::DeviceDescriptor {
                label: Some("rackwatch-anomaly"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
            },
            None,
        ))
        .context("requesting wgpu device")?;
        let energy = pipeline(&device, ENERGY_WGSL, "residual_energy");
        let cross = pipeline(&device, CROSS_WGSL, "cross_products");
        Ok(Self {
            device,
            queue,
            energy,
            cross,
            name: format!(
                "gpu ({}, {:?}, {:?})",
                info.name, info.device_type, info.backend
            ),
            max_wg: limits.max_compute_workgroups_per_dimension.max(1),
        })
    }

    fn storage(&self, data: &[f32]) -> wgpu::Buffer {
        let data: &[f32] = if data.is_empty() { &[0.0] } else { data };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Run one dispatch and read back `len` floats from the last binding.
    fn run(
        &self,
        pipe: &wgpu::ComputePipeline,
        inputs: &[&wgpu::Buffer],
        len: usize,
        groups: (u32, u32, u32),
    ) -> Result<Vec<f32>> {
        let size = (len.max(1) * 4) as u64;
        let out = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let layout = pipe.get_bind_group_layout(0);
        let mut entries: Vec<wgpu::BindGroupEntry> = inputs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: inputs.len() as u32,
            resource: out.as_entire_binding(),
        });
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        enc.copy_buffer_to_buffer(&out, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::Maintain::Wait);
        rx.recv()
            .context("map callback dropped")?
            .context("mapping result buffer")?;
        let v = bytemuck::cast_slice::<u8, f32>(&slice.get_mapped_range()).to_vec();
        staging.unmap();
        Ok(v[..len].to_vec())
    }
}

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn cross_products(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let f = lags * d + 1;
        let cols = f + d;
        let chunks = (n as u32).div_ceil(CHUNK).max(1);
        let z = self.storage(&zpad[..(n + lags) * d]);
        let p = self.uniform(&words(&[n as u32, d as u32, lags as u32, CHUNK]));
        let part = self.run(
            &self.cross,
            &[&z, &p],
            chunks as usize * f * cols,
            ((f as u32).div_ceil(8), (cols as u32).div_ceil(8), chunks),
        )?;
        let mut xtx = vec![0.0f64; f * f];
        let mut xty = vec![0.0f64; f * d];
        for c in 0..chunks as usize {
            for a in 0..f {
                let row = &part[(c * f + a) * cols..(c * f + a + 1) * cols];
                for b in 0..f {
                    xtx[a * f + b] += row[b] as f64;
                }
                for j in 0..d {
                    xty[a * d + j] += row[f + j] as f64;
                }
            }
        }
        Ok((xtx, xty))
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
    ) -> Result<Vec<f32>> {
        anyhow::ensure!(zpad.len() >= (n + lags) * d, "zpad too short");
        let total = n * d;
        let groups = (total as u32).div_ceil(64).max(1);
        let gx = groups.min(self.max_wg);
        let gy = groups.div_ceil(gx);
        let z = self.storage(&zpad[..(n + lags) * d]);
        let wb = self.storage(w.weights);
        let bb = self.storage(w.bias);
        let sb = self.storage(inv_scale);
        let mut pbytes = words(&[n as u32, d as u32, lags as u32, gx * 64]);
        for v in [clip, 0.0, 0.0, 0.0] {
            pbytes.extend_from_slice(&v.to_le_bytes());
        }
        let p = self.uniform(&pbytes);
        self.run(&self.energy, &[&z, &wb, &bb, &sb, &p], total, (gx, gy, 1))
    }
}
