//! The device steps of a batch: upload, dispatch, read back.

use std::time::Instant;

use super::buffers::{binding, floats, scatter, u32s, words, Buffers, Layout};
use super::plan::{self, CrossShape, Need, CHUNK_ROWS, ENTRY, REDUCE_GROUP};
use super::{lock, GpuBackend, PARALLEL_COPY_BYTES};
use crate::backend::parallel::par_map;
use crate::backend::{BackendError, CrossProducts, ResidualJob, Series};

impl GpuBackend {
    pub(super) fn check_fault(&self) -> Result<(), BackendError> {
        match lock(&self.fault).as_ref() {
            Some(e) => Err(BackendError::Device(e.clone())),
            None => Ok(()),
        }
    }

    fn map(&self, buf: &wgpu::Buffer, size: u64, mode: wgpu::MapMode) -> Result<(), BackendError> {
        self.map_after(buf, size, mode, None)
    }

    /// Map `buf` once the submission `after` is done (`None`: once everything submitted is
    /// done). Waiting for one submission lets the next one run on while the host reads.
    pub(super) fn map_after(
        &self,
        buf: &wgpu::Buffer,
        size: u64,
        mode: wgpu::MapMode,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), BackendError> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..size).map_async(mode, move |r| {
            let _ = tx.send(r);
        });
        match after {
            None => {
                self.device.poll(wgpu::Maintain::Wait);
            }
            Some(i) => {
                self.device.poll(wgpu::Maintain::WaitForSubmissionIndex(i));
            }
        }
        self.wait_mapped(rx)
    }

    /// Map an idle buffer (its last use is done): poll until the mapping lands.
    pub(super) fn map_idle(
        &self,
        buf: &wgpu::Buffer,
        size: u64,
        mode: wgpu::MapMode,
    ) -> Result<(), BackendError> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..size).map_async(mode, move |r| {
            let _ = tx.send(r);
        });
        self.wait_mapped(rx)
    }

    fn wait_mapped(
        &self,
        rx: std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    ) -> Result<(), BackendError> {
        loop {
            match rx.try_recv() {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(BackendError::Device(format!("mapping a buffer: {e}"))),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(BackendError::Device(
                        "the device dropped a buffer mapping".into(),
                    ))
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.check_fault()?;
                    self.device.poll(wgpu::Maintain::Poll);
                    std::thread::yield_now();
                }
            }
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
        bufs.upload[0].ensure(
            &self.device,
            layout.total,
            self.limits.buffer,
            &mut st.buffer_allocations,
        );
        drop(st);
        let up = bufs.upload[0].get();
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
    pub(super) fn scoped<T>(
        &self,
        f: impl FnOnce() -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
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
        let rb = bufs.readback[0].get();
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
        bufs.readback[0].ensure(d, out, cap, a);
    }

    fn pass(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        entries: &[(&wgpu::Buffer, u64)],
        groups: u64,
    ) {
        let ranges: Vec<(&wgpu::Buffer, u64, u64)> =
            entries.iter().map(|&(b, size)| (b, 0, size)).collect();
        self.pass_ranges(enc, pipe, &ranges, groups);
    }

    /// One compute pass of `groups` workgroups; binding `i` is `entries[i]`: a buffer, an
    /// offset and a size (bytes).
    pub(super) fn pass_ranges(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        entries: &[(&wgpu::Buffer, u64, u64)],
        groups: u64,
    ) {
        let bound: Vec<(u32, &wgpu::Buffer, u64, u64)> = entries
            .iter()
            .enumerate()
            .map(|(i, &(b, offset, size))| (i as u32, b, offset, size))
            .collect();
        self.pass_bound(enc, pipe, &bound, groups);
    }

    /// One compute pass of `groups` workgroups with the bindings named: `(binding, buffer,
    /// offset, size)`.
    pub(super) fn pass_bound(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        entries: &[(u32, &wgpu::Buffer, u64, u64)],
        groups: u64,
    ) {
        let layout = pipe.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|&(i, b, offset, size)| wgpu::BindGroupEntry {
                binding: i,
                resource: binding(b, offset, size),
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
    pub(super) fn run_cross(
        &self,
        series: &[&Series<'_>],
    ) -> Result<Vec<CrossProducts>, BackendError> {
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
        self.cross_step(bufs, series)
    }

    /// Upload the series of `series` and compute their cross products (buffers ensured).
    fn cross_step(
        &self,
        bufs: &mut Buffers,
        series: &[&Series<'_>],
    ) -> Result<Vec<CrossProducts>, BackendError> {
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
            let up = bufs.upload[0].get();
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
            enc.copy_buffer_to_buffer(bufs.out.get(), 0, bufs.readback[0].get(), 0, need.out);
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
        Ok(products)
    }

    /// Absolute residuals of one sub-batch (every job checked, non-empty, within limits).
    pub(super) fn run_resid(
        &self,
        jobs_in: &[&ResidualJob<'_>],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
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
            let up = bufs.upload[0].get();
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
            enc.copy_buffer_to_buffer(bufs.out.get(), 0, bufs.readback[0].get(), 0, need.out);
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

    /// Seconds to fill `bytes` of the upload buffer on the host threads and to copy them to a
    /// device buffer (submit → done): the two rates a training's floor depends on.
    pub fn upload_probe(&self, bytes: u64) -> Result<(f64, f64), BackendError> {
        let bytes = plan::align(bytes.min(self.limits.binding), plan::ALIGN);
        let src: Vec<f32> = vec![1.0; (bytes / 4) as usize];
        let parts: Vec<(u64, &[f32])> = src
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| ((i << 22) as u64, c))
            .collect();
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        self.scoped(|| {
            let mut st = lock(&self.stats);
            let a = &mut st.buffer_allocations;
            bufs.upload[0].ensure(&self.device, bytes, self.limits.buffer, a);
            bufs.z.ensure(&self.device, bytes, self.limits.buffer, a);
            Ok(())
        })?;
        let up = bufs.upload[0].get();
        self.map(up, bytes, wgpu::MapMode::Write)?;
        let t = Instant::now();
        {
            let mut view = up.slice(..bytes).get_mapped_range_mut();
            scatter(self.threads, &mut view, parts);
        }
        let fill = t.elapsed().as_secs_f64();
        up.unmap();
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(up, 0, bufs.z.get(), 0, bytes);
        let t = Instant::now();
        self.queue.submit([enc.finish()]);
        self.device.poll(wgpu::Maintain::Wait);
        Ok((fill, t.elapsed().as_secs_f64()))
    }

    /// Run `jobs` (already split to fit) through `run`, spreading a sub-batch failure to
    /// each of its hosts.
    pub(super) fn batched<J, T: Clone>(
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
