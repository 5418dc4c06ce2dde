//! The GPU backend's persistent buffers and the byte-level helpers around them.

use super::plan::{align, ALIGN};
use super::PARALLEL_COPY_BYTES;
use crate::backend::parallel::par_map;
use std::num::NonZeroU64;

/// A device buffer that only grows (geometrically), reused across calls.
pub(super) struct Grow {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buf: Option<wgpu::Buffer>,
    pub(super) size: u64,
}

impl Grow {
    pub(super) fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Grow {
            label,
            usage,
            buf: None,
            size: 0,
        }
    }

    pub(super) fn ensure(
        &mut self,
        device: &wgpu::Device,
        need: u64,
        cap: u64,
        allocations: &mut u64,
    ) {
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

    pub(super) fn get(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("ensured before use")
    }
}

/// The persistent buffers. Uploads and read-backs come in pairs: a pipelined training fills
/// one while the device copies from the other.
pub(super) struct Buffers {
    pub(super) upload: [Grow; 2],
    pub(super) z: Grow,
    pub(super) w: Grow,
    pub(super) jobs: Grow,
    pub(super) items: Grow,
    pub(super) pairs: Grow,
    pub(super) items2: Grow,
    pub(super) part: Grow,
    pub(super) resid: Grow,
    pub(super) out: Grow,
    pub(super) readback: [Grow; 2],
    /// Device training and scoring: every work table and parameter block of a step, in one
    /// buffer bound by ranges; the reduced Gram tiles; the f64 solve scratch; the calibration
    /// scores and their sort keys.
    pub(super) tables: Grow,
    pub(super) red: Grow,
    pub(super) solve: Grow,
    pub(super) sk: Grow,
    /// Parameter blocks (16 bytes each) of the cross, reduce and residual passes.
    pub(super) params: [wgpu::Buffer; 3],
    /// Models kept resident for scoring.
    pub(super) models: super::models::ModelCache,
    /// Host memory a small upload is gathered in before it is written to the mapped buffer.
    pub(super) stage: Vec<u8>,
}

impl Buffers {
    pub(super) fn new(device: &wgpu::Device) -> Self {
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
            upload: [
                Grow::new("upload", U::MAP_WRITE | U::COPY_SRC),
                Grow::new("upload", U::MAP_WRITE | U::COPY_SRC),
            ],
            z: Grow::new("series", storage),
            w: Grow::new("weights", storage),
            jobs: Grow::new("jobs", storage),
            items: Grow::new("items", storage),
            pairs: Grow::new("pairs", storage),
            items2: Grow::new("items2", storage),
            part: Grow::new("partials", U::STORAGE),
            resid: Grow::new("training residuals", U::STORAGE),
            out: Grow::new("results", U::STORAGE | U::COPY_SRC),
            readback: [
                Grow::new("readback", U::MAP_READ | U::COPY_DST),
                Grow::new("readback", U::MAP_READ | U::COPY_DST),
            ],
            tables: Grow::new("tables", U::STORAGE | U::UNIFORM | U::COPY_DST),
            red: Grow::new("reduced cross products", U::STORAGE),
            solve: Grow::new("solve scratch", U::STORAGE),
            sk: Grow::new("calibration scores", U::STORAGE),
            params,
            models: super::models::ModelCache::default(),
            stage: Vec::new(),
        }
    }
}

/// Words of a parameter block.
pub(super) fn words(v: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (c, w) in b.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    b
}

pub(super) fn u32s(v: usize) -> u32 {
    u32::try_from(v).expect("plan keeps indices in u32")
}

pub(super) fn binding(buf: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset,
        size: NonZeroU64::new(align(size.max(4), 4)),
    })
}

/// Regions packed one after another at [`ALIGN`]ed offsets (work tables, parameter blocks):
/// `put` returns a region's offset.
#[derive(Default)]
pub(super) struct Packer {
    pub(super) bytes: Vec<u8>,
}

impl Packer {
    pub(super) fn put(&mut self, data: &[u8]) -> u64 {
        let at = align(self.bytes.len() as u64, ALIGN);
        self.bytes.resize(at as usize, 0);
        self.bytes.extend_from_slice(data);
        at
    }

    /// Total bytes, aligned.
    pub(super) fn len(&self) -> u64 {
        align(self.bytes.len().max(1) as u64, ALIGN)
    }
}

/// Copy `parts` (`(byte offset, floats)`, increasing, disjoint) into `dst`.
pub(super) fn scatter(threads: usize, dst: &mut [u8], parts: Vec<(u64, &[f32])>) {
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
    // Threads for megabytes, or for thousands of pieces (a fleet's one-minute run reads
    // each host's few rows from its own allocation).
    let threads = if total < PARALLEL_COPY_BYTES && tasks.len() < 1024 {
        1
    } else {
        threads
    };
    par_map(threads, tasks, |_, (d, s)| {
        d.copy_from_slice(bytemuck::cast_slice(s))
    });
}

/// Floats at `[from, to)` of mapped result bytes.
pub(super) fn floats(bytes: &[u8], from: usize, to: usize) -> Vec<f32> {
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
pub(super) struct Layout {
    pub(super) offsets: Vec<u64>,
    pub(super) total: u64,
}

impl Layout {
    pub(super) fn new(sizes: &[u64]) -> Self {
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
