//! What a hardware event means and what an operator should do about it, shown next to
//! the event on host and GPU pages. Sources: NVIDIA's XID catalogue and the GPU
//! deployment guide's "actions" column.

/// (meaning, recommended action) of an event.
pub fn explain(kind: &str, code: i64) -> (&'static str, &'static str) {
    match (kind, code) {
        ("xid", 13) => (
            "Graphics engine exception: usually an application bug (out-of-range access).",
            "Check the job's logs; if it repeats across jobs, run GPU diagnostics (dcgmi diag -r 3).",
        ),
        ("xid", 31) => (
            "GPU memory page fault (MMU fault): usually an application bug.",
            "Check the job; if several jobs fault on this GPU, drain it and run diagnostics.",
        ),
        ("xid", 43) => (
            "GPU stopped processing: a user application faulted.",
            "No hardware action; restart the job.",
        ),
        ("xid", 45) => (
            "Preemptive cleanup after a prior error or a killed process.",
            "Look at the event before it.",
        ),
        ("xid", 48) => (
            "Double-bit ECC error: memory returned uncorrectable data.",
            "Drain the GPU and reset it; if it recurs, request an RMA.",
        ),
        ("xid", 63) | ("xid", 64) => (
            "ECC page retirement or row remapping event.",
            "Reset the GPU when idle to apply the remap; RMA if remapping failed.",
        ),
        ("xid", 74) => (
            "NVLink error.",
            "Drain the host, reseat or check the NVLink bridge/baseboard; RMA if it recurs.",
        ),
        ("xid", 79) => (
            "GPU has fallen off the bus: the host can no longer reach it.",
            "Drain the host and power-cycle it; check power and PCIe seating; RMA if it recurs.",
        ),
        ("xid", 92) => (
            "High single-bit ECC error rate.",
            "Watch it; schedule a reset and diagnostics.",
        ),
        ("xid", 94) => (
            "Contained ECC error: only the affected application was stopped.",
            "Restart the job; reset the GPU when idle to remap the row.",
        ),
        ("xid", 95) => (
            "Uncontained ECC error: all applications on the GPU were affected.",
            "Drain the GPU and reset it; RMA if it recurs.",
        ),
        ("xid", 119) | ("xid", 120) => (
            "GSP firmware error or timeout.",
            "Reset the GPU; update the driver if it recurs.",
        ),
        ("xid", _) => (
            "NVIDIA driver error (XID).",
            "Look the code up in NVIDIA's XID catalogue; drain the GPU if it repeats.",
        ),
        ("ecc_dbe", _) => (
            "Double-bit (uncorrectable) ECC error.",
            "Drain the GPU and reset it; RMA if it recurs.",
        ),
        ("ecc_sbe", _) => (
            "Single-bit (corrected) ECC errors.",
            "No action unless the rate climbs; then schedule diagnostics.",
        ),
        ("row_remap_failure", _) => (
            "Row remapping failed: the memory has no spare rows left.",
            "Take the GPU out of service and request an RMA.",
        ),
        ("row_remap_pending", _) => (
            "A memory row remap is waiting for a GPU reset.",
            "Reset the GPU when it is idle.",
        ),
        ("thermal_throttle", _) => (
            "Clocks reduced because the GPU is too hot.",
            "Check fans, airflow and inlet temperature of the rack.",
        ),
        ("power_brake", _) => (
            "Hardware power brake engaged (external power signal).",
            "Check the PSUs and the rack's power budget.",
        ),
        ("gpu_lost", _) => (
            "The GPU disappeared from the driver.",
            "Drain the host and power-cycle it; RMA if it recurs.",
        ),
        _ => ("Hardware event.", "See the message."),
    }
}

/// A short label: `XID 79`, `ECC (double-bit)`.
pub fn title(kind: &str, code: i64) -> String {
    match kind {
        "xid" => format!("XID {code}"),
        "ecc_dbe" => "ECC double-bit".into(),
        "ecc_sbe" => "ECC single-bit".into(),
        "row_remap_failure" => "Row remap failed".into(),
        "row_remap_pending" => "Row remap pending".into(),
        "thermal_throttle" => "Thermal throttle".into(),
        "power_brake" => "Power brake".into(),
        "gpu_lost" => "GPU lost".into(),
        other => other.to_string(),
    }
}
