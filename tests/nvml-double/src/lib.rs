//! A test double for `libnvidia-ml.so`: exports the NVML C functions Rackwatch's agent
//! calls (through nvml-wrapper) and answers them from a scenario file, so the real FFI
//! path and the agent's logic run end to end on machines without a GPU.
//!
//! # Scenario
//!
//! JSON, read by `nvmlInit_v2` from the file named by `NVML_DOUBLE_SCENARIO` (or loaded
//! explicitly with the exported [`nvml_double_load`]). Time is counted in *steps*: step
//! `k` is the state seen after the `k`-th call of `nvmlDeviceGetCount_v2` (0-based); the
//! agent calls it once per collection round, so step = round.
//!
//! ```json
//! {
//!   "driver_version": "550.54.15",
//!   "device_count": [2, 2, 1],
//!   "devices": [{
//!     "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-…", "pci_bus_id": "00000000:3B:00.0",
//!     "unsupported": ["nvmlDeviceGetFanSpeed_v2", "field:82"],
//!     "lost_at_step": 3,
//!     "steps": [{"util_gpu": 50, "power_mw": 300000, "energy_mj": 1000}, {"util_gpu": 60}]
//!   }],
//!   "xids": [{"step": 2, "device": 0, "code": 48, "repeat": 3}]
//! }
//! ```
//!
//! Each step object patches the previous one (values carry forward; the last step
//! repeats). A value missing from the merged step makes its function answer
//! `NVML_ERROR_NOT_SUPPORTED`, as does a function (or `field:ID`) listed in
//! `unsupported`. From `lost_at_step` on, every call on the device answers
//! `NVML_ERROR_GPU_IS_LOST`; at the steps in `unknown_steps` every call answers
//! `NVML_ERROR_UNKNOWN` (a driver hiccup the GPU recovers from). `device_count` (per step,
//! last repeats) overrides the
//! number of devices reported. XIDs are queued, at their step, on every event set the
//! device registered `nvmlEventTypeXidCriticalError` with.
//!
//! Step keys: `util_gpu`, `util_mem` (%), `mem_total`, `mem_used` (bytes), `power_mw`,
//! `power_limit_mw`, `energy_mj`, `temp_gpu` (°C), `clock_sm`, `clock_mem`,
//! `clock_graphics` (MHz), `fan_pct`, `pcie_tx_kbs`, `pcie_rx_kbs`, `pcie_replay`,
//! `throttle` (bit mask), `ecc_sbe_agg`, `ecc_dbe_agg`, `ecc_sbe_vol`, `ecc_dbe_vol`,
//! `mig_current`, `mig_pending`, and field values `mem_temp` (82), `retired_sbe` (29),
//! `retired_dbe` (30), `retired_pending` (31), `remapped_cor` (142), `remapped_unc`
//! (143), `remapped_pending` (144), `remapped_failure` (145).
//!
//! # Inspection (exported for tests)
//!
//! `nvml_double_load(path)`, `nvml_double_calls(name)` (calls of a C function, or of
//! `NAME#DEVICE`, or `field:ID#DEVICE`), `nvml_double_step()`.
//!
//! Struct layouts follow nvml-wrapper-sys 0.10 (`bindings.rs`).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::sync::Mutex;

use serde_json::{Map, Value};

type Ret = c_uint;
const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const INSUFFICIENT_SIZE: Ret = 7;
const NOT_FOUND: Ret = 6;
const TIMEOUT: Ret = 10;
const GPU_IS_LOST: Ret = 15;
const UNKNOWN: Ret = 999;

const EVENT_XID: u64 = 8;

/// Opaque device handle: index + 1, never dereferenced by NVML users.
type Device = *mut c_void;
type EventSet = *mut c_void;

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[repr(C)]
pub struct EventData {
    device: Device,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union FieldValueUnion {
    d: f64,
    ui: c_uint,
    ull: c_ulonglong,
}

#[repr(C)]
pub struct FieldValue {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_uint,
    nvml_return: Ret,
    value: FieldValueUnion,
}

struct Dev {
    name: String,
    uuid: String,
    pci_bus_id: String,
    unsupported: Vec<String>,
    lost_at_step: Option<u64>,
    unknown_steps: Vec<u64>,
    /// Merged (carried-forward) state of every step.
    steps: Vec<Map<String, Value>>,
}

struct Xid {
    step: u64,
    device: usize,
    code: u64,
    repeat: u64,
}

#[derive(Default)]
struct Set {
    /// device index → registered event mask
    registered: HashMap<usize, u64>,
    queue: VecDeque<(usize, u64, u64)>,
}

#[derive(Default)]
struct State {
    driver: String,
    devices: Vec<Dev>,
    counts: Vec<u64>,
    xids: Vec<Xid>,
    /// Number of `nvmlDeviceGetCount_v2` calls so far; step = calls - 1.
    count_calls: u64,
    calls: HashMap<String, u64>,
    sets: HashMap<usize, Set>,
    next_set: usize,
    initialized: u32,
    loaded_from: String,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn load(path: &str) -> Result<State, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut st = State {
        driver: doc["driver_version"]
            .as_str()
            .unwrap_or("550.54.15")
            .to_string(),
        loaded_from: path.to_string(),
        next_set: 1,
        ..Default::default()
    };
    if let Some(c) = doc["device_count"].as_array() {
        st.counts = c.iter().filter_map(Value::as_u64).collect();
    }
    for (i, d) in doc["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let mut merged = Map::new();
        let mut steps = Vec::new();
        for s in d["steps"].as_array().cloned().unwrap_or_default() {
            if let Value::Object(o) = s {
                for (k, v) in o {
                    merged.insert(k, v);
                }
            }
            steps.push(merged.clone());
        }
        if steps.is_empty() {
            steps.push(Map::new());
        }
        st.devices.push(Dev {
            name: d["name"].as_str().unwrap_or("NVIDIA Test GPU").to_string(),
            uuid: d["uuid"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("GPU-00000000-0000-0000-0000-{i:012}")),
            pci_bus_id: d["pci_bus_id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("00000000:{:02X}:00.0", 0x10 + i)),
            unsupported: d["unsupported"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            lost_at_step: d["lost_at_step"].as_u64(),
            unknown_steps: d["unknown_steps"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default(),
            steps,
        });
    }
    for x in doc["xids"].as_array().cloned().unwrap_or_default() {
        st.xids.push(Xid {
            step: x["step"].as_u64().unwrap_or(0),
            device: x["device"].as_u64().unwrap_or(0) as usize,
            code: x["code"].as_u64().unwrap_or(0),
            repeat: x["repeat"].as_u64().unwrap_or(1).max(1),
        });
    }
    Ok(st)
}

impl State {
    fn step(&self) -> u64 {
        self.count_calls.saturating_sub(1)
    }

    fn count(&mut self, f: &str, dev: Option<usize>) {
        *self.calls.entry(f.to_string()).or_default() += 1;
        if let Some(d) = dev {
            *self.calls.entry(format!("{f}#{d}")).or_default() += 1;
        }
    }

    /// The device behind a handle, checked: counts the call, answers lost / unsupported.
    fn dev(&mut self, f: &str, h: Device) -> Result<usize, Ret> {
        let i = (h as usize).wrapping_sub(1);
        if i >= self.devices.len() {
            self.count(f, None);
            return Err(INVALID_ARGUMENT);
        }
        self.count(f, Some(i));
        let step = self.step();
        let d = &self.devices[i];
        if d.lost_at_step.is_some_and(|s| step >= s) {
            return Err(GPU_IS_LOST);
        }
        if d.unknown_steps.contains(&step) {
            return Err(UNKNOWN);
        }
        if d.unsupported.iter().any(|u| u == f) {
            return Err(NOT_SUPPORTED);
        }
        Ok(i)
    }

    fn value(&self, i: usize, key: &str) -> Option<&Value> {
        let d = &self.devices[i];
        let s = (self.step() as usize).min(d.steps.len() - 1);
        d.steps[s].get(key)
    }

    fn u64(&self, i: usize, key: &str) -> Result<u64, Ret> {
        match self.value(i, key) {
            Some(Value::Bool(b)) => Ok(u64::from(*b)),
            Some(v) => v.as_u64().ok_or(UNKNOWN),
            None => Err(NOT_SUPPORTED),
        }
    }

    fn device_count(&self) -> usize {
        if self.counts.is_empty() {
            return self.devices.len();
        }
        let s = (self.step() as usize).min(self.counts.len() - 1);
        (self.counts[s] as usize).min(self.devices.len())
    }

    /// Queue the XIDs scripted for the current step.
    fn fire_xids(&mut self) {
        let step = self.step();
        let due: Vec<(usize, u64, u64)> = self
            .xids
            .iter()
            .filter(|x| x.step == step)
            .map(|x| (x.device, x.code, x.repeat))
            .collect();
        for (dev, code, repeat) in due {
            for set in self.sets.values_mut() {
                if set.registered.get(&dev).is_some_and(|m| m & EVENT_XID != 0) {
                    for _ in 0..repeat {
                        set.queue.push_back((dev, EVENT_XID, code));
                    }
                }
            }
        }
    }
}

/// Run `f` on the loaded state; `UNINITIALIZED` before `nvmlInit`.
fn with<F: FnOnce(&mut State) -> Result<(), Ret>>(f: F) -> Ret {
    let mut g = match STATE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match g.as_mut() {
        Some(st) if st.initialized > 0 => match f(st) {
            Ok(()) => SUCCESS,
            Err(e) => e,
        },
        _ => UNINITIALIZED,
    }
}

unsafe fn write_str(s: &str, buf: *mut c_char, len: c_uint) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let b = s.as_bytes();
    if b.len() + 1 > len as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    std::ptr::copy_nonoverlapping(b.as_ptr() as *const c_char, buf, b.len());
    *buf.add(b.len()) = 0;
    Ok(())
}

unsafe fn out<T>(p: *mut T, v: T) -> Result<(), Ret> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    *p = v;
    Ok(())
}

// ---- inspection, for tests -------------------------------------------------------

/// Load (or reload) a scenario and reset steps, call counts and event sets. Returns 0
/// on success, -1 if the file cannot be read or parsed.
#[no_mangle]
pub unsafe extern "C" fn nvml_double_load(path: *const c_char) -> c_int {
    if path.is_null() {
        return -1;
    }
    let path = CStr::from_ptr(path).to_string_lossy().into_owned();
    match load(&path) {
        Ok(mut st) => {
            let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
            st.initialized = g.as_ref().map(|s| s.initialized).unwrap_or(0);
            *g = Some(st);
            0
        }
        Err(e) => {
            eprintln!("nvml-double: {e}");
            -1
        }
    }
}

/// Calls of a function (`nvmlDeviceGetFanSpeed_v2`), of a function on one device
/// (`nvmlDeviceGetFanSpeed_v2#1`), or of a field value (`field:82#0`).
#[no_mangle]
pub unsafe extern "C" fn nvml_double_calls(name: *const c_char) -> c_ulonglong {
    if name.is_null() {
        return 0;
    }
    let name = CStr::from_ptr(name).to_string_lossy();
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref()
        .and_then(|s| s.calls.get(name.as_ref()).copied())
        .unwrap_or(0)
}

/// The current step.
#[no_mangle]
pub extern "C" fn nvml_double_step() -> c_ulonglong {
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().map(|s| s.step()).unwrap_or(0)
}

// ---- library lifecycle -----------------------------------------------------------

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let env = std::env::var("NVML_DOUBLE_SCENARIO").unwrap_or_default();
    let reload = match g.as_ref() {
        None => true,
        // A new scenario file, or a fresh start after a full shutdown.
        Some(s) => !env.is_empty() && (s.loaded_from != env || s.initialized == 0),
    };
    if reload {
        if env.is_empty() {
            if g.is_none() {
                // No scenario: behave like a driver with no GPUs.
                *g = Some(State {
                    driver: "550.54.15".into(),
                    next_set: 1,
                    ..Default::default()
                });
            }
        } else {
            match load(&env) {
                Ok(st) => *g = Some(st),
                Err(e) => {
                    eprintln!("nvml-double: {e}");
                    return UNKNOWN;
                }
            }
        }
    }
    let st = g.as_mut().expect("state");
    st.initialized += 1;
    st.count("nvmlInit_v2", None);
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_mut() {
        Some(st) if st.initialized > 0 => {
            st.initialized -= 1;
            SUCCESS
        }
        _ => UNINITIALIZED,
    }
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(r: Ret) -> *const c_char {
    let s: &'static CStr = match r {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        TIMEOUT => c"Timeout",
        GPU_IS_LOST => c"GPU is lost",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    with(|st| {
        st.count("nvmlSystemGetDriverVersion", None);
        write_str(&st.driver.clone(), buf, len)
    })
}

// ---- devices ---------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    with(|st| {
        st.count("nvmlDeviceGetCount_v2", None);
        st.count_calls += 1;
        st.fire_xids();
        out(count, st.device_count() as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, dev: *mut Device) -> Ret {
    with(|st| {
        let f = "nvmlDeviceGetHandleByIndex_v2";
        let i = index as usize;
        if i >= st.device_count() {
            st.count(f, None);
            return Err(INVALID_ARGUMENT);
        }
        st.dev(f, (i + 1) as Device)?;
        out(dev, (i + 1) as Device)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(d: Device, index: *mut c_uint) -> Ret {
    with(|st| {
        let i = (d as usize).wrapping_sub(1);
        if i >= st.devices.len() {
            return Err(INVALID_ARGUMENT);
        }
        st.count("nvmlDeviceGetIndex", Some(i));
        out(index, i as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(d: Device, buf: *mut c_char, len: c_uint) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetName", d)?;
        write_str(&st.devices[i].name.clone(), buf, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(d: Device, buf: *mut c_char, len: c_uint) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetUUID", d)?;
        write_str(&st.devices[i].uuid.clone(), buf, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(d: Device, pci: *mut PciInfo) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetPciInfo_v3", d)?;
        if pci.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let id = st.devices[i].pci_bus_id.clone();
        // "DDDDDDDD:BB:DD.F"
        let parts: Vec<&str> = id.split([':', '.']).collect();
        let hex = |k: usize| {
            parts
                .get(k)
                .and_then(|p| u32::from_str_radix(p, 16).ok())
                .unwrap_or(0)
        };
        let p = &mut *pci;
        std::ptr::write_bytes(p as *mut PciInfo, 0, 1);
        p.domain = hex(0);
        p.bus = hex(1);
        p.device = hex(2);
        p.pci_device_id = 0x2330_10de;
        p.pci_sub_system_id = 0x16c1_10de;
        write_str(&id, p.bus_id.as_mut_ptr(), 32)?;
        let legacy = format!("{:04X}:{:02X}:{:02X}.0", p.domain, p.bus, p.device);
        write_str(&legacy, p.bus_id_legacy.as_mut_ptr(), 16)
    })
}

/// A scalar getter: checks the device, reads `key`, writes it.
unsafe fn scalar<T: TryFrom<u64>>(f: &str, d: Device, key: &str, p: *mut T) -> Ret {
    with(|st| {
        let i = st.dev(f, d)?;
        let v = st.u64(i, key)?;
        out(p, T::try_from(v).map_err(|_| UNKNOWN)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(d: Device, u: *mut Utilization) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetUtilizationRates", d)?;
        if st.u64(i, "mig_current").unwrap_or(0) == 1 {
            // NVML reports no utilization for a MIG-enabled GPU.
            return Err(NOT_SUPPORTED);
        }
        let gpu = st.u64(i, "util_gpu")? as c_uint;
        let memory = st.u64(i, "util_mem")? as c_uint;
        out(u, Utilization { gpu, memory })
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(d: Device, m: *mut MemoryV2) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetMemoryInfo_v2", d)?;
        if m.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let want = (std::mem::size_of::<MemoryV2>() | (2 << 24)) as c_uint;
        if (*m).version != want {
            return Err(INVALID_ARGUMENT);
        }
        let total = st.u64(i, "mem_total")?;
        let used = st.u64(i, "mem_used")?;
        (*m).total = total;
        (*m).used = used;
        (*m).reserved = 0;
        (*m).free = total.saturating_sub(used);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(d: Device, p: *mut c_uint) -> Ret {
    scalar("nvmlDeviceGetPowerUsage", d, "power_mw", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(d: Device, p: *mut c_uint) -> Ret {
    scalar("nvmlDeviceGetEnforcedPowerLimit", d, "power_limit_mw", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    d: Device,
    p: *mut c_ulonglong,
) -> Ret {
    scalar("nvmlDeviceGetTotalEnergyConsumption", d, "energy_mj", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    d: Device,
    sensor: c_uint,
    p: *mut c_uint,
) -> Ret {
    if sensor != 0 {
        return INVALID_ARGUMENT;
    }
    scalar("nvmlDeviceGetTemperature", d, "temp_gpu", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(d: Device, clock: c_uint, p: *mut c_uint) -> Ret {
    let key = match clock {
        0 => "clock_graphics",
        1 => "clock_sm",
        2 => "clock_mem",
        _ => return INVALID_ARGUMENT,
    };
    scalar("nvmlDeviceGetClockInfo", d, key, p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(d: Device, fan: c_uint, p: *mut c_uint) -> Ret {
    if fan != 0 {
        return INVALID_ARGUMENT;
    }
    scalar("nvmlDeviceGetFanSpeed_v2", d, "fan_pct", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    d: Device,
    counter: c_uint,
    p: *mut c_uint,
) -> Ret {
    let key = match counter {
        0 => "pcie_tx_kbs",
        1 => "pcie_rx_kbs",
        _ => return INVALID_ARGUMENT,
    };
    scalar("nvmlDeviceGetPcieThroughput", d, key, p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieReplayCounter(d: Device, p: *mut c_uint) -> Ret {
    scalar("nvmlDeviceGetPcieReplayCounter", d, "pcie_replay", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    d: Device,
    p: *mut c_ulonglong,
) -> Ret {
    scalar(
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        d,
        "throttle",
        p,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    d: Device,
    p: *mut c_ulonglong,
) -> Ret {
    scalar("nvmlDeviceGetCurrentClocksEventReasons", d, "throttle", p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    d: Device,
    error_type: c_uint,
    counter_type: c_uint,
    p: *mut c_ulonglong,
) -> Ret {
    let key = match (error_type, counter_type) {
        (0, 0) => "ecc_sbe_vol",
        (0, 1) => "ecc_sbe_agg",
        (1, 0) => "ecc_dbe_vol",
        (1, 1) => "ecc_dbe_agg",
        _ => return INVALID_ARGUMENT,
    };
    scalar("nvmlDeviceGetTotalEccErrors", d, key, p)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    d: Device,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetMigMode", d)?;
        let c = st.u64(i, "mig_current")? as c_uint;
        let p = st.u64(i, "mig_pending").unwrap_or(u64::from(c)) as c_uint;
        out(current, c)?;
        out(pending, p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    d: Device,
    count: c_int,
    values: *mut FieldValue,
) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceGetFieldValues", d)?;
        if values.is_null() || count <= 0 {
            return Err(INVALID_ARGUMENT);
        }
        for k in 0..count as usize {
            let fv = &mut *values.add(k);
            let id = fv.field_id;
            st.count(&format!("field:{id}"), Some(i));
            let key = match id {
                82 => Some("mem_temp"),
                29 => Some("retired_sbe"),
                30 => Some("retired_dbe"),
                31 => Some("retired_pending"),
                142 => Some("remapped_cor"),
                143 => Some("remapped_unc"),
                144 => Some("remapped_pending"),
                145 => Some("remapped_failure"),
                _ => None,
            };
            let unsupported = st.devices[i]
                .unsupported
                .iter()
                .any(|u| *u == format!("field:{id}"));
            let v = match key {
                Some(key) if !unsupported => st.u64(i, key),
                _ => Err(NOT_SUPPORTED),
            };
            fv.timestamp = 0;
            fv.latency_usec = 0;
            match v {
                Ok(v) => {
                    fv.nvml_return = SUCCESS;
                    if id == 82 {
                        fv.value_type = 1; // unsigned int
                        fv.value = FieldValueUnion { ui: v as c_uint };
                    } else {
                        fv.value_type = 3; // unsigned long long
                        fv.value = FieldValueUnion { ull: v };
                    }
                }
                Err(e) => {
                    fv.nvml_return = e;
                    fv.value_type = 0;
                    fv.value = FieldValueUnion { d: 0.0 };
                }
            }
        }
        Ok(())
    })
}

// ---- events ----------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut EventSet) -> Ret {
    with(|st| {
        st.count("nvmlEventSetCreate", None);
        let id = st.next_set;
        st.next_set += 1;
        st.sets.insert(id, Set::default());
        out(set, id as EventSet)
    })
}

#[no_mangle]
pub extern "C" fn nvmlEventSetFree(set: EventSet) -> Ret {
    with(|st| {
        st.count("nvmlEventSetFree", None);
        st.sets
            .remove(&(set as usize))
            .map(|_| ())
            .ok_or(INVALID_ARGUMENT)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(d: Device, p: *mut c_ulonglong) -> Ret {
    with(|st| {
        st.dev("nvmlDeviceGetSupportedEventTypes", d)?;
        out(p, EVENT_XID | 1 | 2)
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceRegisterEvents(d: Device, types: c_ulonglong, set: EventSet) -> Ret {
    with(|st| {
        let i = st.dev("nvmlDeviceRegisterEvents", d)?;
        let s = st.sets.get_mut(&(set as usize)).ok_or(INVALID_ARGUMENT)?;
        *s.registered.entry(i).or_default() |= types;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: EventSet,
    data: *mut EventData,
    _timeout_ms: c_uint,
) -> Ret {
    with(|st| {
        st.count("nvmlEventSetWait_v2", None);
        let s = st.sets.get_mut(&(set as usize)).ok_or(INVALID_ARGUMENT)?;
        let (dev, ty, code) = s.queue.pop_front().ok_or(TIMEOUT)?;
        out(
            data,
            EventData {
                device: (dev + 1) as Device,
                event_type: ty,
                event_data: code,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            },
        )
    })
}
