//! NVML clocks-event (throttle) reasons, decoded.
//!
//! Bit values from NVML's `nvmlClocksEventReason*` / `nvmlClocksThrottleReason*`
//! constants (nvml.h; the same numbers in nvml-wrapper-sys).

pub const GPU_IDLE: u64 = 0x1;
pub const APPLICATIONS_CLOCKS_SETTING: u64 = 0x2;
pub const SW_POWER_CAP: u64 = 0x4;
pub const HW_SLOWDOWN: u64 = 0x8;
pub const SYNC_BOOST: u64 = 0x10;
pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
pub const DISPLAY_CLOCK_SETTING: u64 = 0x100;

/// Bits that mean thermal trouble.
pub const THERMAL: u64 = SW_THERMAL_SLOWDOWN | HW_THERMAL_SLOWDOWN;

const NAMES: &[(u64, &str)] = &[
    (GPU_IDLE, "gpu_idle"),
    (APPLICATIONS_CLOCKS_SETTING, "applications_clocks_setting"),
    (SW_POWER_CAP, "power_cap"),
    (HW_SLOWDOWN, "hw_slowdown"),
    (SYNC_BOOST, "sync_boost"),
    (SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (HW_POWER_BRAKE_SLOWDOWN, "power_brake"),
    (DISPLAY_CLOCK_SETTING, "display_clock_setting"),
];

/// Names of the reasons set in `bits`, in bit order; unknown bits as `0x…`.
pub fn decode(bits: u64) -> Vec<String> {
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let known: u64 = NAMES.iter().map(|(b, _)| b).sum();
    if bits & !known != 0 {
        out.push(format!("{:#x}", bits & !known));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_named_and_unknown_bits() {
        assert!(decode(0).is_empty());
        assert_eq!(decode(0x44), vec!["power_cap", "hw_thermal_slowdown"]);
        assert_eq!(decode(0x80 | 0x1000), vec!["power_brake", "0x1000"]);
    }
}
