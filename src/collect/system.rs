//! Host metrics from the operating system (sysinfo): CPU, load, memory, per-disk and
//! per-interface throughput summed per host, and host energy from RAPL (powercap) where
//! the kernel exposes it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
    rapl: Rapl,
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
            rapl: Rapl::discover(Path::new(POWERCAP)),
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
        let since = self.last.elapsed();
        let elapsed = since.as_secs_f64().max(1e-3);
        self.last = Instant::now();
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        // CPU use is the difference of two readings at least this far apart; closer (the
        // first sample, taken as the agent starts) it would be the mean since boot.
        let cpu = (since >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL)
            .then(|| f64::from(self.sys.global_cpu_usage()).clamp(0.0, 100.0));
        let mut s = HostSample {
            ts: now,
            cpu_util_pct: cpu,
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
            // Physical interfaces only (those with a device in sysfs): a packet crosses a
            // bridge, a veth and a bond as well as the NIC, and would count on each.
            // Where none is physical (the agent in a container's network namespace), all
            // but loopback (the agent's own shipping is not host throughput).
            let names: Vec<String> = nets
                .keys()
                .map(|name| name.to_string_lossy().into_owned())
                .collect();
            let counted = counted_interfaces(&names, |n| {
                std::path::Path::new("/sys/class/net")
                    .join(n)
                    .join("device")
                    .exists()
            });
            let (mut rx, mut tx) = (0u64, 0u64);
            for (name, n) in nets.iter() {
                if counted.contains(&name.to_string_lossy().as_ref()) {
                    rx += n.received();
                    tx += n.transmitted();
                }
            }
            s.net_rx_bytes_per_s = Some(rx as f64 / elapsed);
            s.net_tx_bytes_per_s = Some(tx as f64 / elapsed);
        }
        s.energy_joules = self.rapl.read();
        out.host_samples.push(s);
    }
}

/// Where Linux exposes RAPL energy counters.
const POWERCAP: &str = "/sys/class/powercap";

/// RAPL package domains (`intel-rapl:N`, also used for AMD CPUs). Sub-domains
/// (`intel-rapl:N:M`: cores, uncore, DRAM inside a package) are part of their package
/// and not added again.
pub struct Rapl {
    domains: Vec<RaplDomain>,
}

struct RaplDomain {
    energy_uj: PathBuf,
    /// The counter wraps to zero after this many µJ.
    max_uj: u64,
    prev_uj: Option<u64>,
}

impl Rapl {
    /// Find the package domains under `root`; none (no RAPL, no permission) is fine.
    pub fn discover(root: &Path) -> Rapl {
        let mut domains = Vec::new();
        let Ok(dir) = std::fs::read_dir(root) else {
            return Rapl { domains };
        };
        let mut names: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.strip_prefix("intel-rapl:")
                    .is_some_and(|r| !r.contains(':'))
            })
            .collect();
        names.sort();
        for n in names {
            let d = root.join(&n);
            let max = read_u64(&d.join("max_energy_range_uj"));
            let now = read_u64(&d.join("energy_uj"));
            match (max, now) {
                (Some(max_uj), Some(now)) if max_uj > 0 => domains.push(RaplDomain {
                    energy_uj: d.join("energy_uj"),
                    max_uj,
                    prev_uj: Some(now),
                }),
                _ => tracing::info!(
                    domain = %d.display(),
                    "RAPL energy counter not readable (needs root on recent kernels); host energy will be modeled"
                ),
            }
        }
        Rapl { domains }
    }

    /// Joules used by all packages since the previous call; None without RAPL.
    pub fn read(&mut self) -> Option<f64> {
        if self.domains.is_empty() {
            return None;
        }
        let mut total_uj = 0u64;
        for d in &mut self.domains {
            let now = read_u64(&d.energy_uj)?;
            if let Some(prev) = d.prev_uj {
                total_uj += rapl_delta(prev, now, d.max_uj);
            }
            d.prev_uj = Some(now);
        }
        Some(total_uj as f64 / 1e6)
    }
}

/// Energy between two readings of a RAPL counter that wraps at `max_uj`.
pub fn rapl_delta(prev_uj: u64, now_uj: u64, max_uj: u64) -> u64 {
    if now_uj >= prev_uj {
        now_uj - prev_uj
    } else {
        max_uj.saturating_sub(prev_uj) + now_uj
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_waits_for_two_readings_far_enough_apart() {
        // Taken at once, as the agent starts: the mean since boot, not now; left out.
        let mut src = SystemSource::new().unwrap();
        let mut out = Collected::default();
        src.collect(Utc::now(), &mut out);
        assert_eq!(out.host_samples[0].cpu_util_pct, None);
        assert!(out.host_samples[0].mem_used_bytes.is_some());
    }

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

    #[test]
    fn rapl_packages_are_summed_and_wrap_safe() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, energy: u64, max: u64| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
            std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        };
        mk("intel-rapl:0", 1_000_000, 10_000_000);
        mk("intel-rapl:1", 9_500_000, 10_000_000);
        // A sub-domain of package 0: already inside its package's counter.
        mk("intel-rapl:0:0", 5_000_000, 10_000_000);
        let mut rapl = Rapl::discover(dir.path());
        assert_eq!(rapl.domains.len(), 2);
        mk("intel-rapl:0", 3_000_000, 10_000_000); // +2 J
        mk("intel-rapl:1", 500_000, 10_000_000); // wrapped: +0.5 J +0.5 J
        mk("intel-rapl:0:0", 9_000_000, 10_000_000);
        assert_eq!(rapl.read(), Some(3.0));
        assert_eq!(Rapl::discover(&dir.path().join("missing")).read(), None);
    }
}

/// The interfaces whose traffic is the host's: the physical ones, or, when none is, all
/// but loopback.
fn counted_interfaces(names: &[String], physical: impl Fn(&str) -> bool) -> Vec<&str> {
    let phys: Vec<&str> = names
        .iter()
        .map(|n| n.as_str())
        .filter(|n| physical(n))
        .collect();
    if phys.is_empty() {
        names
            .iter()
            .map(|n| n.as_str())
            .filter(|n| *n != "lo")
            .collect()
    } else {
        phys
    }
}

#[cfg(test)]
mod interface_tests {
    use super::counted_interfaces;

    #[test]
    fn traffic_is_counted_once_on_the_physical_interfaces() {
        let names: Vec<String> = ["lo", "eno1", "eno2", "bond0", "docker0", "veth12ab", "cni0"]
            .map(String::from)
            .to_vec();
        let refs = names;
        // A bonded host with containers: the bond's members, not the bond, the bridge
        // or the veths.
        let counted = counted_interfaces(&refs, |n| n.starts_with("eno"));
        assert_eq!(counted, ["eno1", "eno2"]);
        // In a container's namespace nothing is physical: all but loopback.
        let inside: Vec<String> = ["lo", "eth0"].map(String::from).to_vec();
        let refs = inside;
        assert_eq!(counted_interfaces(&refs, |_| false), ["eth0"]);
    }
}
