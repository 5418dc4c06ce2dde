//! What a hardware event means and what to do about it.
//!
//! XID codes → meaning and NVIDIA's recommended immediate action. Source: NVIDIA,
//! "XID Errors" (<https://docs.nvidia.com/deploy/xid-errors/index.html>) and its Xid
//! catalog for Ampere and newer GPUs, column "Resolution Bucket (Immediate Action)"
//! (<https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>): buckets
//! RESTART_APP, RESET_GPU, RESTART_BM (restart the node), IGNORE, CONTACT_SUPPORT,
//! CHECK_MECHANICALS. The table holds the codes seen on datacenter GPUs; any other
//! code says so and points at the catalog. Transcribed by hand, not generated: check
//! a code against the catalog before automating on it.

use std::fmt;

/// What an operator should do, in NVIDIA's resolution buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Informational; nothing to do (watch the rate).
    Ignore,
    /// An application fault: restart the job, check the application if it repeats.
    RestartApp,
    /// A memory fault contained to the job that hit it (XID 94): restart that job, reset
    /// the GPU when convenient so the row remap takes effect. NVIDIA's bucket is
    /// RESTART_APP, but the memory is at fault, not the application.
    RestartAppResetLater,
    /// Drain the GPU and reset it (`nvidia-smi -r`).
    ResetGpu,
    /// Drain the node and restart it (bare-metal reboot).
    RestartNode,
    /// Check cooling, power delivery, cabling, seating.
    CheckMechanicals,
    /// Collect `nvidia-bug-report.sh` and contact NVIDIA support (RMA if it repeats).
    ContactSupport,
    /// Unknown code: look it up.
    LookUp,
}

impl Action {
    /// The bucket's name in NVIDIA's catalog.
    pub fn bucket(self) -> &'static str {
        match self {
            Action::Ignore => "IGNORE",
            Action::RestartApp | Action::RestartAppResetLater => "RESTART_APP",
            Action::ResetGpu => "RESET_GPU",
            Action::RestartNode => "RESTART_BM",
            Action::CheckMechanicals => "CHECK_MECHANICALS",
            Action::ContactSupport => "CONTACT_SUPPORT",
            Action::LookUp => "UNKNOWN",
        }
    }

    /// How much the hardware is in question, for ordering a GPU's events most serious
    /// first: a node to restart or a part to replace, then a GPU to reset, then a job to
    /// restart, then nothing to do.
    pub fn urgency(self) -> u8 {
        match self {
            Action::RestartNode | Action::ContactSupport | Action::CheckMechanicals => 5,
            Action::ResetGpu => 4,
            Action::RestartAppResetLater => 3,
            Action::LookUp => 2,
            Action::RestartApp => 1,
            Action::Ignore => 0,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Ignore => "ignore (informational; watch the rate)",
            Action::RestartApp => {
                "check the application: restart the job; debug the application if it repeats"
            }
            Action::RestartAppResetLater => {
                "restart the job that hit it (the GPU's memory is at fault, not the application; other jobs carry on); reset the GPU when convenient so the row remap takes effect; if it repeats, check nvidia-smi -q -d ROW_REMAPPER and RMA the GPU"
            }
            Action::ResetGpu => "reset the GPU: drain it, then nvidia-smi -r (or reboot)",
            Action::RestartNode => {
                "restart the node: drain it and reboot; RMA the GPU if it repeats"
            }
            Action::CheckMechanicals => "check cooling, power delivery and seating",
            Action::ContactSupport => {
                "collect nvidia-bug-report.sh and contact NVIDIA support (RMA if it repeats)"
            }
            Action::LookUp => "look the code up in NVIDIA's Xid catalog",
        })
    }
}

/// One row of the XID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xid {
    pub code: u32,
    pub meaning: &'static str,
    pub action: Action,
}

use Action::*;

/// XID codes seen on datacenter GPUs (Volta through Blackwell).
pub const XIDS: &[Xid] = &[
    x(8, "GPU stopped processing", RestartApp),
    x(11, "Invalid or corrupted push buffer stream", RestartApp),
    x(
        13,
        "Graphics engine exception (usually an application error: illegal address or instruction)",
        RestartApp,
    ),
    x(
        31,
        "GPU memory page fault (usually an application's illegal memory access)",
        RestartApp,
    ),
    x(
        32,
        "Invalid or corrupted push buffer stream (PBDMA error)",
        RestartApp,
    ),
    x(38, "Driver firmware error", ResetGpu),
    x(
        43,
        "GPU stopped processing: a channel was reset after a user application fault",
        RestartApp,
    ),
    x(
        45,
        "Preemptive cleanup of channels, due to previous errors or a killed process",
        Ignore,
    ),
    x(48, "Double-bit (uncorrectable) ECC error", ResetGpu),
    x(56, "Display engine error", ContactSupport),
    x(
        57,
        "Error programming video memory interface",
        ContactSupport,
    ),
    x(
        58,
        "Unstable video memory interface detected",
        ContactSupport,
    ),
    x(61, "Internal micro-controller breakpoint/warning", ResetGpu),
    x(62, "Internal micro-controller halt", ResetGpu),
    x(
        63,
        "ECC page retirement or row remapping recorded (takes effect at the next GPU reset)",
        ResetGpu,
    ),
    x(
        64,
        "ECC page retirement or row remapping recording failure",
        ResetGpu,
    ),
    x(68, "Video decoder (NVDEC) exception", RestartApp),
    x(69, "Graphics engine class error", RestartApp),
    x(74, "NVLink error", ResetGpu),
    x(79, "GPU has fallen off the bus", RestartNode),
    x(92, "High single-bit ECC error rate", Ignore),
    x(
        94,
        "Contained ECC error (uncorrectable, contained to the application that used the memory)",
        RestartAppResetLater,
    ),
    x(
        95,
        "Uncontained ECC error (uncorrectable, may affect every application on the GPU)",
        ResetGpu,
    ),
    x(109, "Context switch timeout", RestartApp),
    x(110, "Security fault", ResetGpu),
    x(
        119,
        "GSP RPC timeout (GPU System Processor firmware did not answer)",
        ResetGpu,
    ),
    x(120, "GSP error (GPU System Processor firmware)", ResetGpu),
    x(121, "C2C link corrected error", Ignore),
    x(123, "SPI PMU RPC write failure", ResetGpu),
    x(136, "Memory and link diagnostics failure", ContactSupport),
    x(137, "NVLink FLA privilege error", RestartApp),
    x(140, "Unrecovered ECC error", ResetGpu),
    x(143, "GPU initialization failure", RestartNode),
    x(144, "NVLink SAW error", ResetGpu),
    x(145, "NVLink RLW error", ResetGpu),
    x(146, "NVLink TLW error", ResetGpu),
    x(147, "NVLink TREX error", ResetGpu),
    x(148, "NVLink NVLPW_CTRL error", ResetGpu),
    x(149, "NVLink NETIR error", ResetGpu),
    x(150, "NVLink MSE error", ResetGpu),
    x(
        154,
        "GPU recovery action changed (the message names the action: reset or reboot)",
        ResetGpu,
    ),
];

const fn x(code: u32, meaning: &'static str, action: Action) -> Xid {
    Xid {
        code,
        meaning,
        action,
    }
}

/// The table row of an XID code.
pub fn lookup(code: u32) -> Option<&'static Xid> {
    XIDS.iter().find(|x| x.code == code)
}

/// Meaning and action of a hardware event, for the API and pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub meaning: String,
    pub action: Action,
}

/// Describe an event of `kind` (see `EVENT_KINDS`) with `code`.
pub fn describe_event(kind: &str, code: i64) -> Description {
    let d = |meaning: &str, action| Description {
        meaning: meaning.to_string(),
        action,
    };
    match kind {
        "xid" => match u32::try_from(code).ok().and_then(lookup) {
            Some(x) => d(x.meaning, x.action),
            None => Description {
                meaning: format!("XID {code}: not in Rackwatch's table"),
                action: LookUp,
            },
        },
        "ecc_dbe" => d("Uncorrectable (double-bit) ECC memory errors", ResetGpu),
        "ecc_sbe" => d("Corrected (single-bit) ECC memory errors", Ignore),
        "row_remap_failure" => d(
            "Row remapping failed: the GPU has no spare memory rows left for an uncorrectable error",
            ContactSupport,
        ),
        "row_remap_pending" => d(
            "A memory row remap is pending and takes effect at the next GPU reset",
            ResetGpu,
        ),
        "thermal_throttle" => d("Clocks reduced by thermal slowdown", CheckMechanicals),
        "power_brake" => d(
            "Clocks reduced by the external power brake (HW power brake slowdown)",
            CheckMechanicals,
        ),
        "gpu_lost" => d(
            "GPU is unreachable (fell off the bus or vanished from the device list)",
            RestartNode,
        ),
        other => Description {
            meaning: format!("unknown event kind {other:?}"),
            action: LookUp,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_without_duplicates() {
        for w in XIDS.windows(2) {
            assert!(w[0].code < w[1].code, "{} then {}", w[0].code, w[1].code);
        }
    }

    #[test]
    fn key_codes_map_to_nvidia_actions() {
        assert_eq!(lookup(79).unwrap().action, Action::RestartNode);
        assert_eq!(lookup(48).unwrap().action, Action::ResetGpu);
        assert_eq!(lookup(13).unwrap().action, Action::RestartApp);
        assert_eq!(lookup(45).unwrap().action, Action::Ignore);
        assert_eq!(lookup(119).unwrap().action, Action::ResetGpu);
        // A contained ECC error is NVIDIA's RESTART_APP, but it is the memory's fault.
        let x94 = lookup(94).unwrap().action;
        assert_eq!(x94.bucket(), "RESTART_APP");
        assert!(
            x94.to_string().contains("memory is at fault")
                && x94.to_string().contains("reset the GPU")
        );
        assert!(x94.urgency() > Action::RestartApp.urgency());
        assert!(Action::ResetGpu.urgency() > x94.urgency());
        assert_eq!(describe_event("xid", 9999).action, Action::LookUp);
        assert!(describe_event("xid", 9999).meaning.contains("9999"));
        for k in crate::model::EVENT_KINDS.iter().filter(|k| **k != "xid") {
            assert_ne!(describe_event(k, 0).action, Action::LookUp, "{k}");
        }
    }
}
