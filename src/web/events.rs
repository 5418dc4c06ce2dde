//! Short labels for hardware events on host and GPU pages; their meaning and recommended
//! action come from the XID table in `model::xid`.

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
