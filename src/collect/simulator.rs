//! A simulated fleet for demos: every host is a [`Source`] that runs through the real
//! agent pipeline (shipper, spool, ingest). Values are a deterministic function of
//! time plus seeded noise, so back-filled history and live data join without seams.
//!
//! Scenarios: diurnal inference load, a training job pinning a pool's GPUs near their
//! power limit, a GPU that throws XIDs every few minutes, and two faults that start at a
//! set time ([`SimulatedHost::start_faults_at`]; the demo starts them a few minutes after
//! it starts, so the back-filled history and the anomaly models trained on it are clean):
//! a fan that fails (over a few minutes the temperature rises to the slowdown
//! temperature, the GPU throttles thermally, its clocks and power drop) and a GPU that
//! falls off the bus (XID 79, then it stops reporting).

use std::f64::consts::PI;

use chrono::{DateTime, Duration, Timelike, Utc};

use super::{Collected, Source};
use crate::model::{GpuInfo, GpuSample, HardwareEvent, HostInfo, HostSample};

/// How a simulated host behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Follows the day: busy afternoons, quiet nights.
    Diurnal,
    /// A training job: GPUs pinned at 95–99 %.
    Training,
    /// Short batch jobs: on for a while, idle for a while.
    Batch,
}

/// One simulated host.
pub struct SimulatedHost {
    pub info: HostInfo,
    workload: Workload,
    gpus: u8,
    seed: u64,
    /// (GPU index) whose fan fails from `faults_from`.
    failing_fan: Option<u8>,
    /// (GPU index) that falls off the bus [`LOST_AFTER`] after `faults_from`.
    lost_gpu: Option<u8>,
    /// When the fan starts failing (the start of time by default: always failed).
    faults_from: DateTime<Utc>,
    /// (GPU index) that throws XIDs.
    xid_gpu: Option<u8>,
    /// Whether each GPU was thermally throttled at the previous sample (a new slowdown is
    /// a `thermal_throttle` event, as the NVML collector reports it).
    thermal: Vec<bool>,
    energy_j: Vec<f64>,
    last: Option<DateTime<Utc>>,
}

/// NVML throttle bits used by the simulation.
const THROTTLE_SW_POWER_CAP: u64 = 0x4;
const THROTTLE_SW_THERMAL: u64 = 0x20;
const THROTTLE_HW_THERMAL: u64 = 0x40;
/// XIDs the faulty GPU cycles through, with messages in the driver's format.
const XIDS: [(i64, &str); 3] = [
    (31, "pid=4242, name=python3, Ch 00000010, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_3456_7000"),
    (13, "pid=4242, name=python3, Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address"),
    (94, "Contained: SM (0x1). RST: No, D-RST: No"),
];
/// Minutes between two XIDs of the faulty GPU.
const XID_EVERY_MIN: u32 = 7;
/// How long a failing fan takes to stop cooling (its effect grows linearly).
const FAN_FAILS_OVER_SECS: f64 = 90.0;
/// Slowdown temperatures: software thermal slowdown holds the GPU near the first, the
/// hardware slowdown engages above the second.
const SLOWDOWN_CELSIUS: f64 = 87.0;
const HW_SLOWDOWN_CELSIUS: f64 = 90.0;
/// The GPU that falls off the bus does so this long after the faults start.
pub const LOST_AFTER: Duration = Duration::seconds(120);

fn hash(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Days between purges of a simulated host's scratch disk.
const PURGE_DAYS: i64 = 120;

/// Bytes used on a simulated host's scratch disk at `ts` (seconds): 12 TB after each
/// purge, growing at the host's own rate (75–140 GB a day) until its next one; never
/// above 29 TB of the 30.
fn scratch_used(seed: u64, ts: i64) -> u64 {
    let period = 86_400 * PURGE_DAYS;
    let since_purge = (ts + (seed % period as u64) as i64).rem_euclid(period);
    let per_day = 75e9 + (seed >> 8) as f64 % 65.0 * 1e9;
    (12e12 + since_purge as f64 / 86_400.0 * per_day).min(29e12) as u64
}

/// Uniform noise in [-1, 1), deterministic in (seed, stream, t).
fn noise(seed: u64, stream: u64, t: i64) -> f64 {
    let h = hash(
        seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (t as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// The pool whose simulated scheduler reports a queue.
pub const QUEUED_POOL: &str = "train-a";

/// GPUs the simulated training scheduler has waiting at `t`: jobs pile up in the working
/// day (up to about 14 GPUs at 14:00 UTC) and drain overnight, with some noise.
pub fn simulated_queue(t: DateTime<Utc>) -> f64 {
    let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
    let day = 7.0 + 7.0 * (2.0 * PI * (hour - 8.0) / 24.0).sin();
    let n = noise(0x5eed, 99, t.timestamp() / 300);
    (day + 2.0 * n).round().max(0.0)
}

impl SimulatedHost {
    /// A fleet of `hosts` hosts with `gpus` GPUs each across two sites and three pools.
    pub fn fleet(hosts: u32, gpus: u32) -> Vec<SimulatedHost> {
        let sites = ["fra1", "ams2"];
        (0..hosts)
            .map(|i| {
                let site = sites[(i as usize) % sites.len()];
                let rack = format!("r{:02}", (i / 4) + 1);
                let (pool, workload) = match i % 3 {
                    0 => ("train-a", Workload::Training),
                    1 => ("infer-b", Workload::Diurnal),
                    _ => ("batch-c", Workload::Batch),
                };
                let name = format!("sim-{site}-{rack}-n{:02}", i + 1);
                let mut labels = std::collections::BTreeMap::new();
                labels.insert("simulated".to_string(), "true".to_string());
                let g = gpus.min(64) as u8;
                // Each rack's power budget: its GPUs' power limits (700 W) + 10 %, so the
                // capacity page has racks to date.
                let in_rack = (0..hosts)
                    .filter(|j| j / 4 == i / 4 && j % 2 == i % 2)
                    .count() as f64;
                labels.insert(
                    "rack_power_kw".to_string(),
                    format!("{:.1}", in_rack * f64::from(g) * 0.7 * 1.1),
                );
                SimulatedHost {
                    info: HostInfo {
                        name,
                        site: site.into(),
                        rack,
                        pool: pool.into(),
                        labels,
                    },
                    workload,
                    gpus: g,
                    seed: hash(u64::from(i) + 1),
                    failing_fan: (i == 0 && g > 2).then_some(2),
                    lost_gpu: (i == 1 && g > 5).then_some(5),
                    faults_from: DateTime::<Utc>::MIN_UTC,
                    thermal: vec![false; usize::from(g)],
                    xid_gpu: (i == 4 && g > 6)
                        .then_some(6)
                        .or((i == 4 && g > 0).then_some(0)),
                    energy_j: (0..g)
                        .map(|k| 3.6e9 + f64::from(k) * 1e7 + f64::from(i) * 1e8)
                        .collect(),
                    last: None,
                }
            })
            .collect()
    }

    /// Run each GPU's energy counter on from `counters` (GPU index, joules): a restarted
    /// demo's GPUs read on from what the last run stored instead of from their first
    /// value, as a real GPU's counter does across an agent restart.
    pub fn resume_energy(&mut self, counters: &[(i16, f64)]) {
        for (i, j) in counters {
            if let Some(e) = usize::try_from(*i)
                .ok()
                .and_then(|i| self.energy_j.get_mut(i))
            {
                if j.is_finite() && *j > *e {
                    *e = *j;
                }
            }
        }
    }

    /// Start the failing fan at `t` and drop the lost GPU off the bus [`LOST_AFTER`]
    /// later (before `t` both GPUs are healthy).
    pub fn start_faults_at(&mut self, t: DateTime<Utc>) {
        self.faults_from = t;
    }

    /// How far the failing fan has failed at `t`: 0 (cooling) to 1 (not cooling).
    fn fan_failure(&self, gpu: u8, t: DateTime<Utc>) -> f64 {
        if self.failing_fan != Some(gpu) || t < self.faults_from {
            return 0.0;
        }
        if self.faults_from == DateTime::<Utc>::MIN_UTC {
            return 1.0;
        }
        ((t - self.faults_from).num_milliseconds() as f64 / 1000.0 / FAN_FAILS_OVER_SECS).min(1.0)
    }

    fn gpu_util(&self, gpu: u8, t: DateTime<Utc>) -> f64 {
        let ts = t.timestamp();
        let n = noise(self.seed, u64::from(gpu) + 1, ts / 5);
        let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
        let u = match self.workload {
            Workload::Training => 97.0 + 2.0 * n,
            Workload::Diurnal => 45.0 + 35.0 * (2.0 * PI * (hour - 9.0) / 24.0).sin() + 8.0 * n,
            Workload::Batch => {
                // 20-minute jobs separated by idle gaps; each GPU starts at its own offset.
                let phase = ((ts / 60) + i64::from(gpu) * 7 + (self.seed % 30) as i64) % 35;
                if phase < 20 {
                    85.0 + 10.0 * n
                } else {
                    2.0 + 2.0 * n.abs()
                }
            }
        };
        u.clamp(0.0, 100.0)
    }

    /// One sample of every metric at `t`.
    pub fn sample(&mut self, t: DateTime<Utc>) -> Collected {
        // The previous sample's time, exactly: an event happens in this sample when its
        // moment lies in (previous, t].
        let prev = self.last.unwrap_or(t - Duration::seconds(5));
        let crossed = |at: DateTime<Utc>| prev < at && at <= t;
        let dt = ((t - prev).num_milliseconds() as f64 / 1000.0).clamp(0.0, 3600.0);
        self.last = Some(t);
        let ts = t.timestamp();
        let mut out = Collected::default();
        let mut util_sum = 0.0;
        let lost_at = self
            .lost_gpu
            .filter(|_| self.faults_from > DateTime::<Utc>::MIN_UTC)
            .map(|g| (g, self.faults_from + LOST_AFTER));
        for g in 0..self.gpus {
            let util = self.gpu_util(g, t);
            let n = noise(self.seed, 100 + u64::from(g), ts / 5);
            let failure = self.fan_failure(g, t);
            let limit = 700.0;
            let mut power = 90.0 + util / 100.0 * 580.0 + 10.0 * n;
            let mut throttle = 0;
            if power > limit * 0.95 {
                throttle |= THROTTLE_SW_POWER_CAP;
            }
            let mut temp = 32.0 + util / 100.0 * 42.0 + 1.5 * n;
            let mut fan = 30.0 + util / 100.0 * 45.0;
            let mut sm = 1980.0;
            if failure > 0.0 {
                // The controller drives the fan to full speed, but it no longer cools: the
                // temperature the GPU would reach climbs; thermal slowdown holds it near
                // the slowdown temperature by cutting clocks, and power falls with them.
                fan += (100.0 - fan) * failure;
                let unchecked = temp + failure * (22.0 + util / 100.0 * 12.0);
                if unchecked > SLOWDOWN_CELSIUS {
                    let excess = unchecked - SLOWDOWN_CELSIUS;
                    temp = SLOWDOWN_CELSIUS + excess * 0.3 + 0.8 * n;
                    sm = (1980.0 - excess * 45.0).max(1005.0);
                    power *= sm / 1980.0;
                    throttle |= THROTTLE_SW_THERMAL;
                    if temp > HW_SLOWDOWN_CELSIUS {
                        throttle |= THROTTLE_HW_THERMAL;
                    }
                } else {
                    temp = unchecked;
                }
            } else if throttle & THROTTLE_SW_POWER_CAP != 0 {
                sm = 1830.0;
            }
            let thermal = throttle & (THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL) != 0;
            if thermal && !self.thermal[usize::from(g)] {
                out.events.push(HardwareEvent {
                    ts: t,
                    index: Some(g),
                    kind: "thermal_throttle".into(),
                    code: Some((throttle & (THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL)) as i64),
                    message: format!(
                        "thermal slowdown started (clock reasons: {})",
                        crate::model::throttle::decode(throttle).join(", ")
                    ),
                    count: None,
                });
            }
            self.thermal[usize::from(g)] = thermal;
            power = power.clamp(60.0, limit);
            if let Some((lost, at)) = lost_at.filter(|(lost, _)| *lost == g) {
                if t >= at {
                    if crossed(at) {
                        let pci = 0x18 + lost;
                        out.events.push(HardwareEvent {
                            ts: at,
                            index: Some(lost),
                            kind: "xid".into(),
                            code: Some(79),
                            message: format!("NVRM: Xid (PCI:0000:{pci:02x}:00): 79, pid=1912, name=python3, GPU has fallen off the bus."),
                            count: Some(1),
                        });
                        out.events.push(HardwareEvent {
                            ts: at,
                            index: Some(lost),
                            kind: "gpu_lost".into(),
                            code: None,
                            message: format!(
                                "GPU at PCI 0000:{pci:02x}:00.0 is lost (NVML: GPU is lost)"
                            ),
                            count: None,
                        });
                    }
                    // The driver no longer reaches it: no samples, and it stays listed in
                    // the inventory below.
                    out.gpus.push(self.gpu_info(g, limit));
                    continue;
                }
            }
            util_sum += util;
            self.energy_j[g as usize] += power * dt;
            let mem_total: u64 = 80 << 30;
            let mem_used = ((0.05 + util / 100.0 * 0.85) * mem_total as f64) as u64;
            out.gpu_samples.push(GpuSample {
                ts: t,
                index: g,
                util_pct: Some(util.round()),
                mem_util_pct: Some((util * 0.6).round()),
                mem_used_bytes: Some(mem_used.min(mem_total)),
                mem_total_bytes: Some(mem_total),
                power_watts: Some((power * 10.0).round() / 10.0),
                energy_joules_total: Some(self.energy_j[g as usize].round()),
                temp_celsius: Some(temp.round()),
                mem_temp_celsius: Some((temp + 6.0).round()),
                sm_clock_mhz: Some(if util < 5.0 { 345.0 } else { sm }),
                mem_clock_mhz: Some(2619.0),
                fan_pct: Some(fan.round().min(100.0)),
                throttle_reasons: Some(throttle),
                ..Default::default()
            });
            out.gpus.push(self.gpu_info(g, limit));
        }
        if let Some(g) = self.xid_gpu {
            // One XID every XID_EVERY_MIN minutes, at second 30 of that minute: every such
            // moment since the previous sample (more than one after a long gap).
            let first = prev.timestamp().div_euclid(60).max(ts.div_euclid(60) - 60);
            for minute in first..=ts.div_euclid(60) {
                let Some(mark) = DateTime::from_timestamp(minute * 60 + 30, 0) else {
                    continue;
                };
                if minute % i64::from(XID_EVERY_MIN) != 0 || !crossed(mark) {
                    continue;
                }
                let (code, msg) = XIDS[(minute / i64::from(XID_EVERY_MIN)) as usize % XIDS.len()];
                out.events.push(HardwareEvent {
                    ts: mark,
                    index: Some(g),
                    kind: "xid".into(),
                    code: Some(code),
                    message: format!("NVRM: Xid (PCI:0000:{:02x}:00): {code}, {msg}", 0x18 + g),
                    count: Some(1),
                });
            }
        }
        let gpu_mean = if self.gpus > 0 {
            util_sum / f64::from(self.gpus)
        } else {
            40.0
        };
        let n = noise(self.seed, 999, ts / 5);
        let mem_total: u64 = 1 << 40;
        let cpu = (8.0 + gpu_mean * 0.35 + 5.0 * n).clamp(0.0, 100.0);
        out.host_samples.push(HostSample {
            ts: t,
            cpu_util_pct: Some(cpu),
            load1: Some((2.0 + gpu_mean / 100.0 * 24.0 + n).max(0.0)),
            mem_used_bytes: Some(((0.2 + gpu_mean / 100.0 * 0.5) * mem_total as f64) as u64),
            mem_total_bytes: Some(mem_total),
            disk_read_bytes_per_s: Some((gpu_mean * 4e6 * (1.0 + 0.5 * n)).max(0.0)),
            disk_write_bytes_per_s: Some((gpu_mean * 0.8e6 * (1.0 - 0.5 * n)).max(0.0)),
            net_rx_bytes_per_s: Some((gpu_mean * 2.5e7 * (1.0 + 0.3 * n)).max(0.0)),
            net_tx_bytes_per_s: Some((gpu_mean * 1.2e7 * (1.0 - 0.3 * n)).max(0.0)),
            // 30 TB of scratch, filling steadily from 12 TB at 75–140 GB a day (per host)
            // until a purge every 120 days, on each host's own date: usage only grows
            // between purges, and the disk forecasts see real trends.
            disk_used_bytes: Some(scratch_used(self.seed, ts)),
            disk_total_bytes: Some(30_000_000_000_000),
            // Every other host exposes RAPL: two 350 W CPU packages.
            energy_joules: self
                .seed
                .is_multiple_of(2)
                .then_some((2.0 * (90.0 + 2.6 * cpu)) * dt),
        });
        out
    }

    fn gpu_info(&self, g: u8, power_limit: f64) -> GpuInfo {
        GpuInfo {
            index: g,
            uuid: Some(format!(
                "GPU-{:08x}-{:04x}-{:04x}-sim0-{:012x}",
                self.seed as u32,
                g,
                0x5a5a,
                self.seed >> 16 & 0xffff_ffff_ffff
            )),
            model: Some("NVIDIA H100 80GB HBM3".into()),
            memory_total_bytes: Some(80 << 30),
            power_limit_watts: Some(power_limit),
            driver_version: Some("550.90.07".into()),
        }
    }

    /// History from `from` to `to` every `step`, as one collection (for back-fill).
    pub fn history(&mut self, from: DateTime<Utc>, to: DateTime<Utc>, step: Duration) -> Collected {
        let mut all = Collected::default();
        let mut t = from;
        while t < to {
            let c = self.sample(t);
            all.host_samples.extend(c.host_samples);
            all.gpu_samples.extend(c.gpu_samples);
            all.events.extend(c.events);
            all.gpus = c.gpus;
            t += step;
        }
        all
    }
}

impl Source for SimulatedHost {
    fn name(&self) -> &'static str {
        "simulator"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let c = self.sample(now);
        out.host_samples.extend(c.host_samples);
        out.gpu_samples.extend(c.gpu_samples);
        out.events.extend(c.events);
        out.gpus = c.gpus;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate::{parse_batch, Limits};
    use crate::model::Batch;

    #[test]
    fn scratch_disks_only_fill_between_purges_on_each_hosts_own_date() {
        let start = 1_796_000_000;
        let mut purge_days = Vec::new();
        for seed in [hash(1), hash(2), hash(3)] {
            let mut drops = 0;
            let mut prev = scratch_used(seed, start);
            for h in 1..=(24 * 240) {
                let now = scratch_used(seed, start + h * 3600);
                assert!((12_000_000_000_000..=29_000_000_000_000).contains(&now));
                if now < prev {
                    drops += 1;
                    purge_days.push(h / 24 % PURGE_DAYS);
                } else {
                    // 75–140 GB a day is 3–6 GB an hour.
                    assert!(now - prev <= 6_000_000_000, "{}", now - prev);
                }
                prev = now;
            }
            assert_eq!(drops, 2, "a purge every 120 days");
        }
        purge_days.dedup();
        assert!(purge_days.len() > 1, "hosts purge on different days");
    }

    #[test]
    fn simulated_fleet_passes_ingest_validation_and_has_its_scenarios() {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut fleet = SimulatedHost::fleet(6, 8);
        let limits = Limits {
            now,
            max_age: Duration::days(7),
            max_future: Duration::seconds(300),
            max_items: 100_000,
        };
        let mut xids = 0;
        let mut hot = 0;
        for h in &mut fleet {
            let c = h.history(now - Duration::hours(1), now, Duration::seconds(5));
            assert_eq!(c.host_samples.len(), 720);
            assert_eq!(c.gpu_samples.len(), 720 * 8);
            let b = Batch {
                host: h.info.clone(),
                gpus: c.gpus,
                host_samples: c.host_samples,
                gpu_samples: c.gpu_samples,
                events: c.events,
                agent: None,
            };
            let v = parse_batch(&serde_json::to_vec(&b).unwrap(), &limits).unwrap();
            assert!(v.rejections.is_empty(), "{:?}", v.rejections.first());
            xids += v.batch.events.len();
            hot += v
                .batch
                .gpu_samples
                .iter()
                .filter(|s| s.temp_celsius.unwrap() >= 85.0)
                .count();
            // Energy counters only grow, by power × time.
            let g0: Vec<_> = v
                .batch
                .gpu_samples
                .iter()
                .filter(|s| s.index == 0)
                .collect();
            for w in g0.windows(2) {
                let de = w[1].energy_joules_total.unwrap() - w[0].energy_joules_total.unwrap();
                let p = w[1].power_watts.unwrap();
                assert!(
                    (de - p * 5.0).abs() <= 1.0 + p * 0.01,
                    "energy step {de} J vs power {p} W"
                );
            }
        }
        // One XID every 7 minutes on the faulty GPU: 8 or 9 in an hour.
        assert!((8..=9).contains(&xids), "{xids} XIDs");
        assert!(hot > 100, "{hot} hot samples from the failing fan");
    }

    #[test]
    fn a_restarted_hosts_energy_counters_run_on_from_the_stored_ones() {
        let t0: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut fleet = SimulatedHost::fleet(1, 2);
        let fresh = fleet[0].history(t0, t0 + Duration::seconds(10), Duration::seconds(5));
        let first = fresh.gpu_samples[0].energy_joules_total.unwrap();
        let mut fleet = SimulatedHost::fleet(1, 2);
        // GPU 0 was stored further on; GPU 1's stored value is behind (kept as it is).
        fleet[0].resume_energy(&[(0, first + 5e8), (1, 1.0), (7, 9e9)]);
        let c = fleet[0].history(t0, t0 + Duration::seconds(10), Duration::seconds(5));
        let at = |g: u8| {
            c.gpu_samples
                .iter()
                .find(|s| s.index == g)
                .and_then(|s| s.energy_joules_total)
                .unwrap()
        };
        assert!(
            at(0) >= first + 5e8 && at(0) < first + 5e8 + 1e5,
            "{}",
            at(0)
        );
        assert!(at(1) > 1e9, "{}", at(1));
    }

    #[test]
    fn each_rack_has_a_power_budget_over_its_gpus_limits() {
        // 5 hosts: fra1/r01 holds hosts 1 and 3, ams2/r01 hosts 2 and 4, fra1/r02 host 5.
        let fleet = SimulatedHost::fleet(5, 8);
        let budgets: Vec<(String, &str)> = fleet
            .iter()
            .map(|h| {
                (
                    format!("{}/{}", h.info.site, h.info.rack),
                    h.info.labels["rack_power_kw"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            budgets,
            [
                ("fra1/r01".to_string(), "12.3"),
                ("ams2/r01".to_string(), "12.3"),
                ("fra1/r01".to_string(), "12.3"),
                ("ams2/r01".to_string(), "12.3"),
                ("fra1/r02".to_string(), "6.2"),
            ]
        );
    }

    #[test]
    fn a_fan_fails_and_a_gpu_falls_off_the_bus_when_told() {
        let onset: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut fleet = SimulatedHost::fleet(2, 8);
        for h in &mut fleet {
            h.start_faults_at(onset);
        }
        let step = Duration::seconds(5);
        let from = onset - Duration::minutes(10);
        let to = onset + Duration::minutes(10);

        // Host 0, GPU 2: healthy before, hot and throttled after, one throttle event.
        let c = fleet[0].history(from, to, step);
        let g2: Vec<_> = c.gpu_samples.iter().filter(|s| s.index == 2).collect();
        assert_eq!(g2.len(), 240);
        for s in g2.iter().filter(|s| s.ts < onset) {
            assert!(s.temp_celsius.unwrap() < 80.0, "{s:?}");
            assert_eq!(s.throttle_reasons.unwrap() & 0x60, 0, "{s:?}");
        }
        let throttled = g2
            .iter()
            .find(|s| s.throttle_reasons.unwrap() & 0x20 != 0)
            .expect("thermal slowdown");
        let after = (throttled.ts - onset).num_seconds();
        assert!(
            (20..=60).contains(&after),
            "throttled {after} s after the onset"
        );
        for s in g2.iter().filter(|s| s.ts >= onset + Duration::minutes(2)) {
            assert!(s.temp_celsius.unwrap() > 87.0, "{s:?}");
            assert!(s.sm_clock_mhz.unwrap() < 1400.0, "{s:?}");
            assert!(s.power_watts.unwrap() < 450.0, "{s:?}");
            assert_eq!(s.fan_pct, Some(100.0));
        }
        let events: Vec<_> = c.events.iter().filter(|e| e.index == Some(2)).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, "thermal_throttle");
        assert_eq!(events[0].ts, throttled.ts);
        // The other GPUs of the host are untouched.
        assert!(c
            .gpu_samples
            .iter()
            .filter(|s| s.index != 2)
            .all(|s| s.temp_celsius.unwrap() < 80.0));

        // Host 1, GPU 5: XID 79 and lost at onset + 2 min, then no samples; still listed.
        let lost_at = onset + LOST_AFTER;
        let c = fleet[1].history(from, to, step);
        let g5: Vec<_> = c.gpu_samples.iter().filter(|s| s.index == 5).collect();
        assert!(!g5.is_empty() && g5.iter().all(|s| s.ts < lost_at));
        assert_eq!(g5.last().unwrap().ts, lost_at - step);
        let kinds: Vec<_> = c
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.code, e.ts))
            .collect();
        assert_eq!(
            kinds,
            vec![("xid", Some(79), lost_at), ("gpu_lost", None, lost_at)]
        );
        assert_eq!(c.gpus.len(), 8);
    }

    /// An agent samples every 5 s at whatever fraction of a second it started on: each
    /// event happens in exactly one sample, also when a sample falls in the same second
    /// as the event, just before it, or the ticks jitter.
    #[test]
    fn each_event_is_raised_once_whatever_the_sampling_phase() {
        let onset: DateTime<Utc> = "2026-11-23T12:00:00.700Z".parse().unwrap();
        let lost_at = onset + LOST_AFTER;
        let firsts = [
            lost_at - Duration::milliseconds(400),
            lost_at - Duration::milliseconds(5_000),
            lost_at - Duration::milliseconds(1),
            lost_at,
        ];
        // Every 5 s; 4.4 s and 5.6 s apart in turn; 40 s and 5 s (an overloaded agent).
        let cadences = [[5_000, 5_000], [4_400, 5_600], [40_000, 5_000]];
        for (first, cadence) in firsts.into_iter().flat_map(|f| cadences.map(|c| (f, c))) {
            let mut fleet = SimulatedHost::fleet(6, 8);
            fleet[1].start_faults_at(onset);
            fleet[4].start_faults_at(onset);
            let mut lost = Vec::new();
            let mut xids = Vec::new();
            // 720 ticks: an hour at 5 s.
            let start = first - Duration::minutes(10);
            let mut t = start;
            let mut last = start;
            for k in 0..720 {
                last = t;
                for (h, out) in [(1, &mut lost), (4, &mut xids)] {
                    out.extend(
                        fleet[h]
                            .sample(t)
                            .events
                            .into_iter()
                            .map(|e| (e.kind, e.ts)),
                    );
                }
                t += Duration::milliseconds(cadence[k % 2]);
            }
            assert_eq!(
                lost,
                vec![
                    ("xid".to_string(), lost_at),
                    ("gpu_lost".to_string(), lost_at)
                ],
                "first tick at {first}, cadence {cadence:?}"
            );
            // Second 30 of every XID_EVERY_MIN-th minute from the first tick (which looks
            // back 5 s) to the last.
            let expected: Vec<_> = (start.timestamp() / 60..=last.timestamp() / 60)
                .filter(|m| m % i64::from(XID_EVERY_MIN) == 0)
                .filter_map(|m| DateTime::from_timestamp(m * 60 + 30, 0))
                .filter(|&mark| start - Duration::seconds(5) < mark && mark <= last)
                .collect();
            let marks: Vec<_> = xids.iter().map(|(_, ts)| *ts).collect();
            assert!(expected.len() >= 8, "{expected:?}");
            assert_eq!(
                marks, expected,
                "first tick at {first}, cadence {cadence:?}"
            );
        }
    }
}
