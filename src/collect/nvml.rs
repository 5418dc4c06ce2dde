//! GPU metrics and faults from NVML (libnvidia-ml, through nvml-wrapper).
//!
//! - No NVML on a machine is normal: the source says so once and reports nothing.
//! - A function a device does not support (or a driver does not export) is remembered
//!   per GPU and never asked again; that is not an error.
//! - Energy comes from the total-energy counter (mJ): each sample carries the counter
//!   (`energy_joules_total`) and the energy since the GPU's previous sample
//!   (`energy_joules`, see [`energy_delta`]), so server-side sums need no counter
//!   arithmetic and survive driver reloads.
//! - MIG: only physical GPUs are enumerated (`nvmlDeviceGetCount` never lists MIG
//!   instances), so a partitioned board's energy is counted once, on the board.
//!   Utilization is not asked while MIG is on (NVML has none for a MIG parent).
//! - Faults become hardware events: XIDs from the event API (de-duplicated against the
//!   kernel log through a shared [`XidLedger`]), new double-bit ECC errors, a row-remap
//!   failure or pending remap, thermal / power-brake throttling starting, and a GPU
//!   lost (`GPU_IS_LOST`, or gone from the device list).
//! - GPU indexes are kept per UUID: if a GPU vanishes and NVML renumbers the rest, each
//!   remaining GPU keeps the index it was first seen with.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_void, OsStr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id as fid;
use nvml_wrapper::{Device, EventSet, Nvml};

use super::kernel_log::{collapse, PciAddr, XidLedger, XidOccurrence, XidOrigin};
use super::{Collected, Source};
use crate::model::throttle;
use crate::model::{GpuInfo, GpuSample, HardwareEvent};

/// Energy since the previous reading of a total-energy counter, in joules.
///
/// `None` for the first reading. A counter lower than before was reset (driver
/// reload, GPU reset): it counts from zero since then, so its value is the energy
/// since the reset; what was used between the previous reading and the reset is not
/// known and not counted.
pub fn energy_delta(prev_mj: Option<u64>, now_mj: u64) -> Option<f64> {
    let prev = prev_mj?;
    let mj = if now_mj >= prev {
        now_mj - prev
    } else {
        now_mj
    };
    Some(mj as f64 / 1000.0)
}

/// Field values read in one `nvmlDeviceGetFieldValues` call: (name, field ID).
const FIELDS: &[(&str, u32)] = &[
    ("mem_temp", fid::NVML_FI_DEV_MEMORY_TEMP),
    ("retired_sbe", fid::NVML_FI_DEV_RETIRED_SBE),
    ("retired_dbe", fid::NVML_FI_DEV_RETIRED_DBE),
    ("retired_pending", fid::NVML_FI_DEV_RETIRED_PENDING),
    ("remapped_cor", fid::NVML_FI_DEV_REMAPPED_COR),
    ("remapped_unc", fid::NVML_FI_DEV_REMAPPED_UNC),
    ("remapped_pending", fid::NVML_FI_DEV_REMAPPED_PENDING),
    ("remapped_failure", fid::NVML_FI_DEV_REMAPPED_FAILURE),
];

/// Thermal slowdown that starts again within this many minutes of the last event raised
/// for it is the same episode (a GPU at its temperature target flaps the bit).
const THERMAL_EPISODE_MINUTES: i64 = 10;

/// What the source remembers of one GPU between rounds.
#[derive(Debug, Default)]
struct GpuState {
    index: u8,
    pci: Option<PciAddr>,
    energy_mj: Option<u64>,
    ecc_dbe: Option<u64>,
    throttle: Option<u64>,
    /// When the last thermal slowdown event was raised: slowdown that flaps at the
    /// temperature target is one episode, not an event a round.
    thermal_event_at: Option<DateTime<Utc>>,
    remap_failure: bool,
    remap_pending: bool,
    lost: bool,
}

/// An NVML event set's raw handle, kept across rounds (the wrapper's `EventSet`
/// borrows the `Nvml`, which this struct owns).
struct RawSet(*mut c_void);

// SAFETY: an NVML event set handle may be used from any thread; only the thread that
// collects NVML touches it.
unsafe impl Send for RawSet {}

/// `NVML_ERROR_UNKNOWN`.
const NVML_ERROR_UNKNOWN: u32 = 999;

/// NVML as a source.
pub struct NvmlSource {
    driver: Option<String>,
    /// (NVML index, what) pairs the device answered NotSupported for.
    unsupported: HashSet<(u32, &'static str)>,
    /// Per UUID.
    gpus: HashMap<String, GpuState>,
    /// NVML index → UUID, as last enumerated.
    uuid_at: HashMap<u32, String>,
    /// Device handle (address) → UUID, for events.
    uuid_of_handle: HashMap<usize, String>,
    events: Option<RawSet>,
    registered: HashSet<String>,
    ledger: Arc<Mutex<XidLedger>>,
    last_count: Option<u32>,
    // Declared last: dropped after the event set is freed (see Drop).
    nvml: Nvml,
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        if let Some(raw) = self.events.take() {
            // SAFETY: the handle came from `create_event_set` on this `Nvml` and was
            // not freed; dropping the rebuilt set frees it once.
            drop(unsafe { EventSet::new(raw.0.cast(), &self.nvml) });
        }
    }
}

/// Ask NVML once per (GPU, function): NotSupported and a missing symbol are
/// remembered and not asked again; GPU_IS_LOST sets `lost`.
fn ask<T>(
    unsupported: &mut HashSet<(u32, &'static str)>,
    lost: &mut bool,
    gpu: u32,
    what: &'static str,
    f: impl FnOnce() -> Result<T, NvmlError>,
) -> Option<T> {
    if *lost || unsupported.contains(&(gpu, what)) {
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
            unsupported.insert((gpu, what));
            None
        }
        Err(NvmlError::GpuLost) => {
            *lost = true;
            None
        }
        Err(e) => {
            tracing::debug!(gpu, what, "NVML: {e}");
            None
        }
    }
}

impl NvmlSource {
    /// Load NVML from `lib_path` (empty: the system library). `None` when there is no
    /// NVML here, logged once.
    pub fn open(lib_path: &str) -> Option<NvmlSource> {
        Self::open_with(lib_path, XidLedger::shared())
    }

    /// Like [`open`](Self::open), sharing XID de-duplication with a kernel-log source.
    pub fn open_with(lib_path: &str, ledger: Arc<Mutex<XidLedger>>) -> Option<NvmlSource> {
        let init = if lib_path.is_empty() {
            Nvml::init()
        } else {
            Nvml::builder().lib_path(OsStr::new(lib_path)).init()
        };
        match init {
            Ok(nvml) => {
                let driver = nvml.sys_driver_version().ok();
                tracing::info!(driver = driver.as_deref().unwrap_or("?"), "NVML loaded");
                let events = match nvml.create_event_set() {
                    Ok(set) => {
                        // SAFETY: the handle is kept and freed once, in Drop.
                        let raw = unsafe { set.handle() };
                        std::mem::forget(set);
                        Some(RawSet(raw.cast()))
                    }
                    Err(e) => {
                        tracing::info!(
                            "NVML events unavailable ({e}); XIDs come from the kernel log only"
                        );
                        None
                    }
                };
                Some(NvmlSource {
                    driver,
                    unsupported: HashSet::new(),
                    gpus: HashMap::new(),
                    uuid_at: HashMap::new(),
                    uuid_of_handle: HashMap::new(),
                    events,
                    registered: HashSet::new(),
                    ledger,
                    last_count: None,
                    nvml,
                })
            }
            // The kernel driver present without its library is a broken install, not a
            // machine without GPUs: said loudly, since the host would look CPU-only.
            Err(e) if std::path::Path::new("/proc/driver/nvidia").exists() => {
                tracing::error!(
                    "the NVIDIA kernel driver is loaded but NVML cannot be used ({e}): this host's GPUs are not monitored; install the driver's libnvidia-ml.so.1 (same version as the kernel module)"
                );
                None
            }
            Err(e) => {
                tracing::info!("no NVML on this machine ({e}); GPU metrics are skipped");
                None
            }
        }
    }

    /// The stable index for a UUID first seen at NVML index `i`.
    fn index_for(&mut self, uuid: &str, i: u32) -> u8 {
        if let Some(g) = self.gpus.get(uuid) {
            return g.index;
        }
        let taken: HashSet<u8> = self.gpus.values().map(|g| g.index).collect();
        let mut index = i.min(255) as u8;
        while taken.contains(&index) && index < 255 {
            index += 1;
        }
        self.gpus.insert(
            uuid.to_string(),
            GpuState {
                index,
                ..Default::default()
            },
        );
        index
    }

    fn lost_event(&mut self, uuid: &str, now: DateTime<Utc>, why: &str, out: &mut Collected) {
        if let Some(g) = self.gpus.get_mut(uuid) {
            if !g.lost {
                g.lost = true;
                out.events.push(HardwareEvent {
                    ts: now,
                    index: Some(g.index),
                    kind: "gpu_lost".into(),
                    code: None,
                    message: format!("GPU {uuid} {why}"),
                    count: None,
                });
            }
        }
    }

    /// Register a device for XID events (`events` is `self.events`).
    fn register(nvml: &Nvml, events: &mut Option<RawSet>, dev: &Device, uuid: &str) {
        let Some(raw) = events.as_ref().map(|r| r.0) else {
            return;
        };
        match dev.supported_event_types() {
            Ok(t) if t.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(_) => {
                tracing::info!(uuid, "no XID events from NVML for this GPU");
                return;
            }
        }
        // Called on NVML itself: the wrapper frees the set on any error, which would end
        // XID events for every GPU where one GPU cannot register (a GPU in a bad state,
        // an unsupported MIG mode). One refusal leaves the set, and the others, as they
        // are; only NVML_ERROR_UNKNOWN leaves the set undefined (NVML's documentation), and
        // it is then dropped.
        // SAFETY: the device handle is live while `nvml` is; the set's raw handle is live
        // (see Drop) and ownership stays with `events`.
        let ret = unsafe {
            nvml.lib().nvmlDeviceRegisterEvents(
                dev.handle(),
                EventTypes::CRITICAL_XID_ERROR.bits(),
                raw.cast(),
            )
        };
        match ret {
            0 => {}
            NVML_ERROR_UNKNOWN => {
                if let Some(set) = events.take() {
                    // SAFETY: the handle is live and freed here once (`events` is None now).
                    drop(unsafe { EventSet::new(set.0.cast(), nvml) });
                }
                tracing::warn!(uuid, "registering for NVML XID events failed (unknown error); XIDs come from the kernel log only");
            }
            code => tracing::warn!(
                uuid,
                code,
                "registering this GPU for NVML XID events failed; its XIDs come from the kernel log only"
            ),
        }
    }

    /// Read the pending NVML events (no waiting).
    fn drain_events(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        let Some(raw) = self.events.as_ref().map(|r| r.0) else {
            return;
        };
        // SAFETY: as in `register`.
        let set = unsafe { EventSet::new(raw.cast(), &self.nvml) };
        let mut occ = Vec::new();
        let at = Instant::now();
        for _ in 0..10_000 {
            let data = match set.wait(0) {
                Ok(d) => d,
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    tracing::debug!("NVML event wait: {e}");
                    break;
                }
            };
            if !data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                continue;
            }
            let code = match data.event_data {
                Some(XidError::Value(v)) => v.min(u64::from(u32::MAX)) as u32,
                _ => continue,
            };
            // SAFETY: only the handle's address is used, as a map key.
            let handle = unsafe { data.device.handle() } as usize;
            let (index, pci) = match self
                .uuid_of_handle
                .get(&handle)
                .and_then(|u| self.gpus.get(u))
            {
                Some(g) => (Some(g.index), g.pci),
                None => (None, None),
            };
            let admitted = {
                let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
                l.admit(XidOrigin::Nvml, pci, index, code, at)
            };
            if admitted {
                occ.push(XidOccurrence {
                    ts: now,
                    index,
                    pci,
                    code,
                    detail: String::new(),
                });
            }
        }
        std::mem::forget(set);
        out.events.extend(collapse(occ, XidOrigin::Nvml));
    }
}

/// One device's readings in one round: everything asked of NVML, before any state.
#[derive(Default)]
struct Reading {
    model: Option<String>,
    pci: Option<PciAddr>,
    mig_enabled: Option<bool>,
    util: Option<nvml_wrapper::struct_wrappers::device::Utilization>,
    mem: Option<nvml_wrapper::struct_wrappers::device::MemoryInfo>,
    /// Milliwatts.
    power: Option<u32>,
    power_limit: Option<u32>,
    /// Millijoules since the driver loaded.
    energy: Option<u64>,
    temp: Option<u32>,
    sm_clock: Option<u32>,
    mem_clock: Option<u32>,
    fan: Option<u32>,
    /// KB/s.
    pcie_rx: Option<u32>,
    pcie_tx: Option<u32>,
    pcie_replay: Option<u32>,
    throttle_bits: Option<u64>,
    ecc_sbe: Option<u64>,
    ecc_dbe: Option<u64>,
    /// Field values by [`FIELDS`] name.
    fields: HashMap<&'static str, u64>,
    /// The device answered GPU_IS_LOST to some call.
    lost: bool,
}

impl Reading {
    /// Ask device `i` for everything not known to be unsupported.
    fn read(unsup: &mut HashSet<(u32, &'static str)>, i: u32, dev: &Device) -> Reading {
        let mut lost = false;
        let l = &mut lost;
        let model = ask(unsup, l, i, "name", || dev.name());
        let pci =
            ask(unsup, l, i, "pci_info", || dev.pci_info()).and_then(|p| PciAddr::parse(&p.bus_id));
        let mig_enabled = ask(unsup, l, i, "mig_mode", || dev.mig_mode()).map(|m| m.current == 1);
        // NVML has no utilization for a MIG parent.
        let util = if mig_enabled == Some(true) {
            None
        } else {
            ask(unsup, l, i, "utilization", || dev.utilization_rates())
        };
        let mut r = Reading {
            model,
            pci,
            mig_enabled,
            util,
            mem: ask(unsup, l, i, "memory", || dev.memory_info()),
            power: ask(unsup, l, i, "power", || dev.power_usage()),
            power_limit: ask(unsup, l, i, "power_limit", || dev.enforced_power_limit()),
            energy: ask(unsup, l, i, "energy", || dev.total_energy_consumption()),
            temp: ask(unsup, l, i, "temperature", || {
                dev.temperature(TemperatureSensor::Gpu)
            }),
            sm_clock: ask(unsup, l, i, "sm_clock", || dev.clock_info(Clock::SM)),
            mem_clock: ask(unsup, l, i, "mem_clock", || dev.clock_info(Clock::Memory)),
            fan: ask(unsup, l, i, "fan", || dev.fan_speed(0)),
            pcie_rx: ask(unsup, l, i, "pcie_rx", || {
                dev.pcie_throughput(PcieUtilCounter::Receive)
            }),
            pcie_tx: ask(unsup, l, i, "pcie_tx", || {
                dev.pcie_throughput(PcieUtilCounter::Send)
            }),
            pcie_replay: ask(unsup, l, i, "pcie_replay", || dev.pcie_replay_counter()),
            throttle_bits: ask(unsup, l, i, "throttle_reasons", || {
                dev.current_throttle_reasons().map(|t| t.bits())
            }),
            ecc_sbe: ask(unsup, l, i, "ecc_sbe", || {
                dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
            }),
            ecc_dbe: ask(unsup, l, i, "ecc_dbe", || {
                dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)
            }),
            fields: HashMap::new(),
            lost: false,
        };
        r.fields = read_fields(unsup, l, i, dev);
        r.lost = lost;
        r
    }

    /// The sample this reading makes, with the energy since the GPU's previous one.
    fn sample(&self, now: DateTime<Utc>, index: u8, energy_joules: Option<f64>) -> GpuSample {
        let f = &self.fields;
        GpuSample {
            ts: now,
            index,
            util_pct: self.util.as_ref().map(|u| f64::from(u.gpu)),
            mem_util_pct: self.util.as_ref().map(|u| f64::from(u.memory)),
            mem_used_bytes: self.mem.as_ref().map(|m| m.used),
            mem_total_bytes: self.mem.as_ref().map(|m| m.total),
            power_watts: self.power.map(|mw| f64::from(mw) / 1000.0),
            energy_joules_total: self.energy.map(|mj| mj as f64 / 1000.0),
            temp_celsius: self.temp.map(f64::from),
            mem_temp_celsius: f.get("mem_temp").map(|v| *v as f64),
            sm_clock_mhz: self.sm_clock.map(f64::from),
            mem_clock_mhz: self.mem_clock.map(f64::from),
            fan_pct: self.fan.map(f64::from),
            throttle_reasons: self.throttle_bits,
            power_limit_watts: self.power_limit.map(|mw| f64::from(mw) / 1000.0),
            energy_joules,
            // NVML counts PCIe throughput in KB/s.
            pcie_rx_bytes_per_s: self.pcie_rx.map(|k| f64::from(k) * 1024.0),
            pcie_tx_bytes_per_s: self.pcie_tx.map(|k| f64::from(k) * 1024.0),
            pcie_replay_total: self.pcie_replay.map(u64::from),
            ecc_sbe_total: self.ecc_sbe,
            ecc_dbe_total: self.ecc_dbe,
            retired_pages_sbe: f.get("retired_sbe").copied(),
            retired_pages_dbe: f.get("retired_dbe").copied(),
            retired_pages_pending: f.get("retired_pending").map(|v| *v != 0),
            remapped_rows_correctable: f.get("remapped_cor").copied(),
            remapped_rows_uncorrectable: f.get("remapped_unc").copied(),
            remapped_rows_pending: self.remap_pending(),
            remapped_rows_failure: self.remap_failure(),
            mig_enabled: self.mig_enabled,
        }
    }

    fn remap_failure(&self) -> Option<bool> {
        self.fields.get("remapped_failure").map(|v| *v != 0)
    }

    fn remap_pending(&self) -> Option<bool> {
        self.fields.get("remapped_pending").map(|v| *v != 0)
    }
}

/// The [`FIELDS`] values of device `i`, in one call for those not known to be
/// unsupported.
fn read_fields(
    unsup: &mut HashSet<(u32, &'static str)>,
    lost: &mut bool,
    i: u32,
    dev: &Device,
) -> HashMap<&'static str, u64> {
    let wanted: Vec<(&'static str, u32)> = FIELDS
        .iter()
        .copied()
        .filter(|(n, _)| !unsup.contains(&(i, *n)))
        .collect();
    let mut fields = HashMap::new();
    if wanted.is_empty() {
        return fields;
    }
    let ids: Vec<FieldId> = wanted.iter().map(|(_, id)| FieldId(*id)).collect();
    match ask(unsup, lost, i, "field_values", || {
        dev.field_values_for(&ids)
    }) {
        Some(values) => {
            for ((name, _), v) in wanted.iter().zip(values) {
                match v.and_then(|s| s.value) {
                    Ok(SampleValue::U32(x)) => {
                        fields.insert(*name, u64::from(x));
                    }
                    Ok(SampleValue::U64(x)) => {
                        fields.insert(*name, x);
                    }
                    Ok(SampleValue::I64(x)) => {
                        fields.insert(*name, x.max(0) as u64);
                    }
                    Ok(SampleValue::F64(x)) => {
                        fields.insert(*name, x.max(0.0) as u64);
                    }
                    Err(NvmlError::NotSupported) => {
                        tracing::info!(
                            gpu = i,
                            what = name,
                            "not supported by this GPU or driver; not asked again"
                        );
                        unsup.insert((i, name));
                    }
                    Err(NvmlError::GpuLost) => *lost = true,
                    Err(e) => tracing::debug!(gpu = i, what = name, "NVML: {e}"),
                }
            }
        }
        None if unsup.contains(&(i, "field_values")) => {
            for (n, _) in &wanted {
                unsup.insert((i, n));
            }
        }
        None => {}
    }
    fields
}

impl GpuState {
    /// Hardware events from what changed since the previous reading: new double-bit ECC
    /// errors, a row-remap failure or pending remap, thermal or power-brake slowdown
    /// starting. Updates the remembered state.
    fn events_from(&mut self, r: &Reading, now: DateTime<Utc>, index: u8, out: &mut Collected) {
        let ev =
            |kind: &str, code: Option<i64>, message: String, count: Option<u32>| HardwareEvent {
                ts: now,
                index: Some(index),
                kind: kind.into(),
                code,
                message,
                count,
            };
        if let Some(d) = r.ecc_dbe {
            if let Some(prev) = self.ecc_dbe {
                if d > prev {
                    out.events.push(ev(
                        "ecc_dbe",
                        None,
                        format!(
                            "{} new uncorrectable (double-bit) ECC errors; lifetime total {d}",
                            d - prev
                        ),
                        Some((d - prev).min(u64::from(u32::MAX)) as u32),
                    ));
                }
            }
            self.ecc_dbe = Some(d);
        }
        if let Some(f) = r.remap_failure() {
            if f && !self.remap_failure {
                out.events.push(ev(
                    "row_remap_failure",
                    None,
                    format!(
                        "row remapping failed ({} rows remapped for uncorrectable errors)",
                        r.fields.get("remapped_unc").copied().unwrap_or(0)
                    ),
                    None,
                ));
            }
            self.remap_failure = f;
        }
        if let Some(p) = r.remap_pending() {
            if p && !self.remap_pending {
                out.events.push(ev(
                    "row_remap_pending",
                    None,
                    "a row remap is pending; it takes effect at the next GPU reset".into(),
                    None,
                ));
            }
            self.remap_pending = p;
        }
        if let Some(bits) = r.throttle_bits {
            let before = self.throttle.unwrap_or(0);
            let names = throttle::decode(bits).join(", ");
            let quiet = self
                .thermal_event_at
                .is_none_or(|t| now - t >= chrono::Duration::minutes(THERMAL_EPISODE_MINUTES));
            if bits & throttle::THERMAL != 0 && before & throttle::THERMAL == 0 && quiet {
                self.thermal_event_at = Some(now);
                out.events.push(ev(
                    "thermal_throttle",
                    Some((bits & throttle::THERMAL) as i64),
                    format!("thermal slowdown started (clock reasons: {names})"),
                    None,
                ));
            }
            if bits & throttle::HW_POWER_BRAKE_SLOWDOWN != 0
                && before & throttle::HW_POWER_BRAKE_SLOWDOWN == 0
            {
                out.events.push(ev(
                    "power_brake",
                    Some(throttle::HW_POWER_BRAKE_SLOWDOWN as i64),
                    format!("power brake slowdown started (clock reasons: {names})"),
                    None,
                ));
            }
            self.throttle = Some(bits);
        }
    }

    /// The energy since the previous reading (reset-safe), remembering this one.
    fn energy_since(&mut self, energy_mj: Option<u64>, uuid: &str) -> Option<f64> {
        let joules = energy_mj.and_then(|e| energy_delta(self.energy_mj, e));
        if let (Some(prev), Some(e)) = (self.energy_mj, energy_mj) {
            if e < prev {
                tracing::info!(
                    uuid,
                    index = self.index,
                    prev_mj = prev,
                    now_mj = e,
                    "energy counter was reset"
                );
            }
        }
        self.energy_mj = energy_mj.or(self.energy_mj);
        joules
    }
}

const FELL_OFF: &str = "has fallen off the bus (NVML_ERROR_GPU_IS_LOST)";

impl NvmlSource {
    /// A lost GPU at NVML index `i`, if it was seen there before.
    fn lost_at(
        &mut self,
        i: u32,
        now: DateTime<Utc>,
        seen: &mut HashSet<String>,
        out: &mut Collected,
    ) {
        if let Some(u) = self.uuid_at.get(&i).cloned() {
            seen.insert(u.clone());
            self.lost_event(&u, now, FELL_OFF, out);
        }
    }

    /// One device's round: read it, keep its identity, and add its sample, inventory
    /// entry and events to `out`.
    fn collect_device(
        &mut self,
        i: u32,
        now: DateTime<Utc>,
        seen: &mut HashSet<String>,
        out: &mut Collected,
    ) {
        let nvml = &self.nvml;
        // An error other than "lost" (Unknown, Timeout: a driver hiccup) skips the GPU
        // this round, but it is still there: the GPU last at this index counts as seen,
        // so no loss is raised for a round without an answer.
        let hiccup = |me: &Self, seen: &mut HashSet<String>| {
            if let Some(u) = me.uuid_at.get(&i) {
                seen.insert(u.clone());
            }
        };
        let dev = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) => return self.lost_at(i, now, seen, out),
            Err(e) => {
                tracing::debug!(gpu = i, "NVML device handle: {e}");
                return hiccup(self, seen);
            }
        };
        let mut lost = false;
        let Some(uuid) = ask(&mut self.unsupported, &mut lost, i, "uuid", || dev.uuid()) else {
            if lost {
                self.lost_at(i, now, seen, out);
            } else {
                hiccup(self, seen);
            }
            return;
        };
        let r = Reading::read(&mut self.unsupported, i, &dev);
        // SAFETY: only the handle's address is used, as a map key.
        let handle = unsafe { dev.handle() } as usize;
        if !r.lost && self.events.is_some() && self.registered.insert(uuid.clone()) {
            Self::register(nvml, &mut self.events, &dev, &uuid);
        }
        seen.insert(uuid.clone());
        self.uuid_at.insert(i, uuid.clone());
        self.uuid_of_handle.insert(handle, uuid.clone());
        let index = self.index_for(&uuid, i);
        if r.lost {
            return self.lost_event(&uuid, now, FELL_OFF, out);
        }
        if let Some(p) = r.pci {
            self.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_gpu(p, index);
        }
        let g = self.gpus.get_mut(&uuid).expect("index_for inserted it");
        if g.lost {
            tracing::info!(uuid, index, "GPU is back");
            g.lost = false;
        }
        g.pci = r.pci.or(g.pci);
        let energy_joules = g.energy_since(r.energy, &uuid);
        g.events_from(&r, now, index, out);
        out.gpu_samples.push(r.sample(now, index, energy_joules));
        out.gpus.push(GpuInfo {
            index,
            uuid: Some(uuid),
            model: r.model,
            memory_total_bytes: r.mem.map(|m| m.total),
            power_limit_watts: r.power_limit.map(|mw| f64::from(mw) / 1000.0),
            driver_version: self.driver.clone(),
        });
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
        if self.last_count != Some(count) {
            tracing::info!(gpus = count, previously = ?self.last_count, "NVML GPU count");
        }
        let previous_count = self.last_count.replace(count);
        let mut seen: HashSet<String> = HashSet::new();
        for i in 0..count.min(256) {
            self.collect_device(i, now, &mut seen, out);
        }
        // GPUs gone from the device list (the count dropped).
        let gone: Vec<String> = self
            .gpus
            .iter()
            .filter(|(u, g)| !g.lost && !seen.contains(*u))
            .map(|(u, _)| u.clone())
            .collect();
        for u in gone {
            let why = format!(
                "is gone from NVML's device list (GPU count {} → {count})",
                previous_count.map_or("?".to_string(), |c| c.to_string())
            );
            self.lost_event(&u, now, &why, out);
        }
        self.drain_events(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::energy_delta;

    #[test]
    fn energy_delta_is_reset_safe() {
        assert_eq!(energy_delta(None, 5_000), None);
        assert_eq!(energy_delta(Some(5_000), 8_000), Some(3.0));
        assert_eq!(energy_delta(Some(8_000), 8_000), Some(0.0));
        // Driver reload: the counter restarted from zero and is at 1.5 J now.
        assert_eq!(energy_delta(Some(9_000_000), 1_500), Some(1.5));
    }

    #[test]
    fn thermal_slowdown_flapping_at_the_target_is_one_event_per_episode() {
        use super::{throttle, Collected, GpuState, Reading};
        let t0: chrono::DateTime<chrono::Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let mut g = GpuState::default();
        let mut out = Collected::default();
        // The software thermal bit on and off every round for 5 minutes, then again
        // 20 minutes later.
        for (i, minute) in (0..60)
            .map(|i| (i, i as i64 * 5 / 60))
            .chain((0..4).map(|i| (i, 25 + i as i64)))
        {
            let r = Reading {
                throttle_bits: Some(if i % 2 == 0 {
                    throttle::SW_THERMAL_SLOWDOWN
                } else {
                    0
                }),
                ..Default::default()
            };
            g.events_from(&r, t0 + chrono::Duration::minutes(minute), 0, &mut out);
        }
        let thermal = out
            .events
            .iter()
            .filter(|e| e.kind == "thermal_throttle")
            .count();
        assert_eq!(thermal, 2, "one per episode");
    }
}
