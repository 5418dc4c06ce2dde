//! Host metrics from the operating system (sysinfo): CPU, load, memory, per-disk and
//! per-interface throughput summed per host.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sysinfo::{Disks, Networks, System};

use super::{Collected, Source};
use crate::model::HostSample;

/// The operating system as a source.
pub struct SystemSource {
    sys: System,
    disks: Option<Disks>,
    nets: Option<Networks>,
    last: Instant,
}

impl SystemSource {
    /// Take the first readings (rates need two).
    pub fn new() -> anyhow::Result<SystemSource> {
        let mut sys =
            System::new().map_err(|e| anyhow::anyhow!("cannot read system information: {e:?}"))?;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let disks = Disks::new_with_refreshed_list()
            .map_err(|e| tracing::warn!("disk statistics unavailable: {e:?}"))
            .ok();
        let nets = Networks::new_with_refreshed_list()
            .map_err(|e| tracing::warn!("network statistics unavailable: {e:?}"))
            .ok();
        Ok(SystemSource {
            sys,
            disks,
            nets,
            last: Instant::now(),
        })
    }

    /// This machine's host name, for the default identity.
    pub fn host_name() -> String {
        System::host_name().unwrap_or_else(|_| "localhost".into())
    }
}

impl Source for SystemSource {
    fn name(&self) -> &'static str {
        "sysinfo"
    }

    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let elapsed = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let mut s = HostSample {
            ts: now,
            cpu_util_pct: Some(f64::from(self.sys.global_cpu_usage()).clamp(0.0, 100.0)),
            load1: System::load_average().ok().map(|l| l.one),
            mem_used_bytes: Some(self.sys.used_memory()),
            mem_total_bytes: Some(self.sys.total_memory()),
            ..Default::default()
        };
        if s.mem_used_bytes > s.mem_total_bytes {
            s.mem_used_bytes = s.mem_total_bytes;
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            // The same device mounted twice (bind mounts, overlays) counts once.
            let mut seen = HashSet::new();
            let (mut r, mut w) = (0u64, 0u64);
            for d in disks.iter() {
                if seen.insert(d.name().to_owned()) {
                    let u = d.usage();
                    r += u.read_bytes;
                    w += u.written_bytes;
                }
            }
            let (mut used, mut total) = (0u64, 0u64);
            let mut seen_space = HashSet::new();
            for d in disks.iter() {
                if seen_space.insert(d.name().to_owned()) {
                    total += d.total_space();
                    used += d.total_space().saturating_sub(d.available_space());
                }
            }
            if total > 0 {
                s.disk_used_bytes = Some(used);
                s.disk_total_bytes = Some(total);
            }
            s.disk_read_bytes_per_s = Some(r as f64 / elapsed);
            s.disk_write_bytes_per_s = Some(w as f64 / elapsed);
        }
        if let Some(nets) = &mut self.nets {
            nets.refresh(true);
            // Loopback traffic (including the agent's own shipping) is not host throughput.
            let (mut rx, mut tx) = (0u64, 0u64);
            for (name, n) in nets.iter() {
                if name != "lo" {
                    rx += n.received();
                    tx += n.transmitted();
                }
            }
            s.net_rx_bytes_per_s = Some(rx as f64 / elapsed);
            s.net_tx_bytes_per_s = Some(tx as f64 / elapsed);
        }
        out.host_samples.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let mut src = SystemSource::new().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut out = Collected::default();
        let now = Utc::now();
        src.collect(now, &mut out);
        let s = &out.host_samples[0];
        assert_eq!(s.ts, now);
        let total = s.mem_total_bytes.unwrap();
        assert!(total > 64 << 20, "total memory {total}");
        assert!(s.mem_used_bytes.unwrap() <= total);
        let cpu = s.cpu_util_pct.unwrap();
        assert!((0.0..=100.0).contains(&cpu));
        assert!(s.load1.unwrap() >= 0.0);
    }
}
