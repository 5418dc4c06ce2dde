//! A simulated fleet for demos: every host is a [`Source`] that runs through the real
//! agent pipeline (shipper, spool, ingest). Values are a deterministic function of
//! time plus seeded noise, so back-filled history and live data join without seams.
//!
//! Scenarios: diurnal inference load, a training job pinning a pool's GPUs near their
//! power limit, a GPU whose fan is failing (hot, thermally throttled), and a GPU that
//! throws XIDs every few minutes.

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
    /// (GPU index) whose fan is failing.
    failing_fan: Option<u8>,
    /// (GPU index) that throws XIDs.
    xid_gpu: Option<u8>,
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

fn hash(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
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
                    failing_fan: (i == 2 && g > 2).then_some(2),
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
        let dt = self
            .last
            .map_or(5.0, |l| (t - l).num_milliseconds() as f64 / 1000.0)
            .clamp(0.0, 3600.0);
        self.last = Some(t);
        let ts = t.timestamp();
        let mut out = Collected::default();
        let mut util_sum = 0.0;
        for g in 0..self.gpus {
            let util = self.gpu_util(g, t);
            util_sum += util;
            let n = noise(self.seed, 100 + u64::from(g), ts / 5);
            let fan_failing = self.failing_fan == Some(g);
            let limit = 700.0;
            let mut power = 90.0 + util / 100.0 * 580.0 + 10.0 * n;
            let mut throttle = 0;
            if power > limit * 0.95 {
                throttle |= THROTTLE_SW_POWER_CAP;
            }
            let mut temp = 32.0 + util / 100.0 * 42.0 + 1.5 * n;
            let mut fan = 30.0 + util / 100.0 * 45.0;
            let mut sm = 1980.0;
            if fan_failing {
                // The fan spins at full speed but cannot keep up: hot and throttled.
                fan = 100.0;
                temp = (temp + 16.0).min(93.0);
                throttle |= THROTTLE_SW_THERMAL | if temp > 90.0 { THROTTLE_HW_THERMAL } else { 0 };
                sm = 1410.0;
                power *= 0.85;
            } else if throttle & THROTTLE_SW_POWER_CAP != 0 {
                sm = 1830.0;
            }
            power = power.clamp(60.0, limit);
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
            out.gpus.push(GpuInfo {
                index: g,
                uuid: Some(format!(
                    "GPU-{:08x}-{:04x}-{:04x}-sim0-{:012x}",
                    self.seed as u32,
                    g,
                    0x5a5a,
                    self.seed >> 16 & 0xffff_ffff_ffff
                )),
                model: Some("NVIDIA H100 80GB HBM3".into()),
                memory_total_bytes: Some(mem_total),
                power_limit_watts: Some(limit),
                driver_version: Some("550.90.07".into()),
            });
        }
        if let Some(g) = self.xid_gpu {
            // One XID every XID_EVERY_MIN minutes, at second 30 of that minute.
            let minute = (ts / 60) as u32;
            let prev_ts = ts - dt.ceil() as i64;
            let mark = i64::from(minute) * 60 + 30;
            if minute.is_multiple_of(XID_EVERY_MIN) && prev_ts < mark && ts >= mark {
                let (code, msg) = XIDS[(minute / XID_EVERY_MIN) as usize % XIDS.len()];
                out.events.push(HardwareEvent {
                    ts: DateTime::from_timestamp(mark, 0).unwrap_or(t),
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
            // 30 TB of scratch filling by ~1 GB per hour of busy GPUs, from 40 %.
            disk_used_bytes: Some(
                (12e12 + (ts.rem_euclid(86_400 * 90)) as f64 / 3600.0 * gpu_mean / 100.0 * 1e9)
                    as u64,
            ),
            disk_total_bytes: Some(30_000_000_000_000),
            // Every other host exposes RAPL: two 350 W CPU packages.
            energy_joules: self
                .seed
                .is_multiple_of(2)
                .then_some((2.0 * (90.0 + 2.6 * cpu)) * dt),
        });
        out
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
}
