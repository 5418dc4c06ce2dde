//! The agent: sources collect, a collector thread batches, the shipper delivers (or
//! spools to disk and replays later).
//!
//! ```text
//! Source (sysinfo, NVML, simulated host) ─► collector thread ─► channel ─► Shipper ─► POST /api/v1/ingest
//!                                                                          └─► Spool (disk) on failure
//! ```

pub mod agent;
pub mod kernel_log;
pub mod nvml;
pub mod shipper;
pub mod simulator;
pub mod spool;
pub mod system;

use chrono::{DateTime, Utc};

use crate::model::{GpuInfo, GpuSample, HardwareEvent, HostSample};

/// What one round of collection produced.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub host_samples: Vec<HostSample>,
    pub gpu_samples: Vec<GpuSample>,
    pub events: Vec<HardwareEvent>,
    /// Current GPU inventory; empty if the source has none.
    pub gpus: Vec<GpuInfo>,
}

/// Something the agent collects from. Called from the collector thread every
/// interval; implementations may block briefly (NVML, /proc).
pub trait Source: Send {
    /// Short name for logs (`sysinfo`, `nvml`, `simulator`).
    fn name(&self) -> &'static str;
    /// Collect one round stamped `now`, appending to `out`.
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected);
}
