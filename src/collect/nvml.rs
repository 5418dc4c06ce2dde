//! GPU metrics from NVML (libnvidia-ml, through nvml-wrapper).
//!
//! No NVML on a machine is normal: the source says so once and reports nothing. A
//! function a device does not support is remembered per GPU and not asked again.
//! Energy comes from the total-energy counter (mJ), not from integrating power.

use std::collections::HashSet;
use std::ffi::OsStr;

use chrono::{DateTime, Utc};
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{Collected, Source};
use crate::model::{GpuInfo, GpuSample, HardwareEvent};

/// NVML as a source.
pub struct NvmlSource {
    nvml: Nvml,
    driver: Option<String>,
    /// (GPU index, function) pairs the device answered NotSupported for.
    unsupported: HashSet<(u32, &'static str)>,
    /// GPUs already reported lost (one event per loss).
    lost: HashSet<u32>,
}

impl NvmlSource {
    /// Load NVML from `lib_path` (empty: the system library). `None` when there is no
    /// NVML here, logged once.
    pub fn open(lib_path: &str) -> Option<NvmlSource> {
        let init = if lib_path.is_empty() {
            Nvml::init()
        } else {
            Nvml::builder().lib_path(OsStr::new(lib_path)).init()
        };
        match init {
            Ok(nvml) => {
                let driver = nvml.sys_driver_version().ok();
                let count = nvml.device_count().unwrap_or(0);
                tracing::info!(
                    gpus = count,
                    driver = driver.as_deref().unwrap_or("?"),
                    "NVML loaded"
                );
                Some(NvmlSource {
                    nvml,
                    driver,
                    unsupported: HashSet::new(),
                    lost: HashSet::new(),
                })
            }
            Err(e) => {
                tracing::info!("no NVML on this machine ({e}); GPU metrics are skipped");
                None
            }
        }
    }

    /// Call `f`, remembering NotSupported so the call is skipped next time.
    fn ask<T>(
        &mut self,
        gpu: u32,
        what: &'static str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Option<T> {
        if self.unsupported.contains(&(gpu, what)) {
            return None;
        }
        match f() {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported) | Err(NvmlError::FailedToLoadSymbol(_)) => {
                tracing::info!(
                    gpu,
                    what,
                    "not supported by this GPU or driver; not asked again"
                );
                self.unsupported.insert((gpu, what));
                None
            }
            Err(e) => {
                tracing::debug!(gpu, what, "NVML: {e}");
                None
            }
        }
    }
}

impl Source for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let count = match self.nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("NVML device count: {e}");
                return;
            }
        };
        for i in 0..count.min(256) {
            let index = i as u8;
            // Device handles borrow `self.nvml`; take the readings first, then record.
            let nvml = &self.nvml;
            let dev = match nvml.device_by_index(i) {
                Ok(d) => d,
                Err(NvmlError::GpuLost) => {
                    if self.lost.insert(i) {
                        out.events.push(HardwareEvent {
                            ts: now,
                            index: Some(index),
                            kind: "gpu_lost".into(),
                            code: None,
                            message: "GPU has fallen off the bus (NVML_ERROR_GPU_IS_LOST)".into(),
                            count: None,
                        });
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(gpu = i, "NVML device handle: {e}");
                    continue;
                }
            };
            let util = dev.utilization_rates();
            let mem = dev.memory_info();
            let power = dev.power_usage();
            let energy = dev.total_energy_consumption();
            let temp = dev.temperature(TemperatureSensor::Gpu);
            let sm = dev.clock_info(Clock::SM);
            let memclk = dev.clock_info(Clock::Memory);
            let fan = dev.fan_speed(0);
            let throttle = dev.current_throttle_reasons();
            let uuid = dev.uuid().ok();
            let model = dev.name().ok();
            let plimit = dev.enforced_power_limit();
            drop(dev);
            self.lost.remove(&i);
            let util = self.ask(i, "utilization", || util);
            let mem = self.ask(i, "memory", || mem);
            let s = GpuSample {
                ts: now,
                index,
                util_pct: util.as_ref().map(|u| f64::from(u.gpu)),
                mem_util_pct: util.as_ref().map(|u| f64::from(u.memory)),
                mem_used_bytes: mem.as_ref().map(|m| m.used),
                mem_total_bytes: mem.as_ref().map(|m| m.total),
                power_watts: self
                    .ask(i, "power", || power)
                    .map(|mw| f64::from(mw) / 1000.0),
                energy_joules_total: self
                    .ask(i, "energy", || energy)
                    .map(|mj| mj as f64 / 1000.0),
                temp_celsius: self.ask(i, "temperature", || temp).map(f64::from),
                sm_clock_mhz: self.ask(i, "sm_clock", || sm).map(f64::from),
                mem_clock_mhz: self.ask(i, "mem_clock", || memclk).map(f64::from),
                fan_pct: self.ask(i, "fan", || fan).map(f64::from),
                throttle_reasons: self
                    .ask(i, "throttle_reasons", || throttle)
                    .map(|t| t.bits()),
                mem_temp_celsius: None,
            };
            out.gpu_samples.push(s);
            out.gpus.push(GpuInfo {
                index,
                uuid,
                model,
                memory_total_bytes: mem.map(|m| m.total),
                power_limit_watts: self
                    .ask(i, "power_limit", || plimit)
                    .map(|mw| f64::from(mw) / 1000.0),
                driver_version: self.driver.clone(),
            });
        }
    }
}
