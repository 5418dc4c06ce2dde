//! Device time per step of a submit, from timestamp queries ([`GpuOptions::profile`]).
//!
//! A submit writes a timestamp before its first command and after each copy and pass; the
//! difference of two neighbours is the time of the step between them (its barrier included).
//! The stamps go to a query set per upload slot (a pipelined training has two submits in
//! flight), are resolved at the end of the submit and read once it is done. Off by default:
//! reading them back costs a mapping per submit.
//!
//! [`GpuOptions::profile`]: super::GpuOptions::profile

use super::{lock, GpuBackend};

/// Timestamps per submit (a training submit writes nine).
const MARKS: u32 = 16;

/// Query sets and their read-back buffers, one per upload slot.
pub(super) struct Profiler {
    sets: [wgpu::QuerySet; 2],
    resolve: [wgpu::Buffer; 2],
    read: [wgpu::Buffer; 2],
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl Profiler {
    /// A profiler, when the device was opened with timestamp queries inside encoders.
    pub(super) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<Self> {
        let need =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if !device.features().contains(need) {
            return None;
        }
        let bytes = u64::from(MARKS) * 8;
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        Some(Profiler {
            sets: std::array::from_fn(|_| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: MARKS,
                })
            }),
            resolve: std::array::from_fn(|_| buffer(U::QUERY_RESOLVE | U::COPY_SRC)),
            read: std::array::from_fn(|_| buffer(U::MAP_READ | U::COPY_DST)),
            period_ns: f64::from(queue.get_timestamp_period()),
        })
    }
}

/// The steps of one submit, named in the order their timestamps were written.
pub(super) struct Marks {
    slot: usize,
    labels: Vec<&'static str>,
}

impl GpuBackend {
    /// Marks for a submit from upload slot `slot`; the first timestamp is written at once.
    pub(super) fn marks(&self, enc: &mut wgpu::CommandEncoder, slot: usize) -> Marks {
        let mut m = Marks {
            slot,
            labels: Vec::new(),
        };
        self.mark(enc, &mut m, "");
        m
    }

    /// A timestamp after the step `label`.
    pub(super) fn mark(&self, enc: &mut wgpu::CommandEncoder, m: &mut Marks, label: &'static str) {
        if let Some(p) = &self.prof {
            if (m.labels.len() as u32) < MARKS {
                enc.write_timestamp(&p.sets[m.slot], m.labels.len() as u32);
                m.labels.push(label);
            }
        }
    }

    /// Resolve the submit's timestamps into its slot's read-back buffer (last in the encoder).
    pub(super) fn end_marks(&self, enc: &mut wgpu::CommandEncoder, m: &Marks) {
        if let Some(p) = &self.prof {
            let n = m.labels.len() as u32;
            if n > 1 {
                let s = m.slot;
                enc.resolve_query_set(&p.sets[s], 0..n, &p.resolve[s], 0);
                enc.copy_buffer_to_buffer(&p.resolve[s], 0, &p.read[s], 0, u64::from(n) * 8);
            }
        }
    }

    /// Add the steps' device times to [`super::GpuStats::device_steps`]; call once the submit
    /// is done (its results are mapped).
    pub(super) fn read_marks(&self, m: Marks) {
        let Some(p) = &self.prof else { return };
        let n = m.labels.len();
        if n < 2 {
            return;
        }
        let buf = &p.read[m.slot];
        let bytes = n as u64 * 8;
        if self.map_idle(buf, bytes, wgpu::MapMode::Read).is_err() {
            return;
        }
        let ticks: Vec<u64> = {
            let view = buf.slice(..bytes).get_mapped_range();
            view.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        buf.unmap();
        let mut st = lock(&self.stats);
        for (k, label) in m.labels.iter().enumerate().skip(1) {
            let s = ticks[k].saturating_sub(ticks[k - 1]) as f64 * p.period_ns * 1e-9;
            match st.device_steps.iter_mut().find(|(l, _)| l == label) {
                Some((_, t)) => *t += s,
                None => st.device_steps.push((label, s)),
            }
        }
    }
}
