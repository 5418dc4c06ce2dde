//! Parse-don't-validate for ingest bodies: a raw JSON document in, a [`ValidBatch`]
//! and a list of [`Rejection`]s out. One bad sample never sinks the good ones around it.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{
    Batch, GpuInfo, GpuSample, HardwareEvent, HostInfo, HostSample, Rejection, EVENT_KINDS,
};

/// Limits a sample must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub now: DateTime<Utc>,
    /// Oldest timestamp accepted (raw retention).
    pub max_age: Duration,
    /// Furthest future timestamp accepted (clock skew).
    pub max_future: Duration,
}

/// A batch whose every item passed validation; `host` is checked too.
#[derive(Debug, Clone, Default)]
pub struct ValidBatch {
    pub batch: Batch,
    pub rejections: Vec<Rejection>,
}

/// Why a whole request is refused (as opposed to single samples).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
}

/// The top level of an ingest body, each part kept as raw JSON text: every sample is
/// then parsed on its own (a bad one is rejected alone), without building a generic JSON
/// tree first (that doubled the parsing cost).
#[derive(serde::Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow, default)]
    host: Option<&'a RawValue>,
    #[serde(borrow, default)]
    agent: Option<&'a RawValue>,
    #[serde(borrow, default)]
    gpus: Option<&'a RawValue>,
    #[serde(borrow, default)]
    host_samples: Option<&'a RawValue>,
    #[serde(borrow, default)]
    gpu_samples: Option<&'a RawValue>,
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
}

fn section<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Vec<&'a RawValue>, BatchError> {
    match raw {
        None => Ok(Vec::new()),
        Some(r) if r.get() == "null" => Ok(Vec::new()),
        Some(r) => serde_json::from_str::<Vec<&RawValue>>(r.get())
            .map_err(|_| BatchError::Shape(format!("field `{name}` must be an array"))),
    }
}

/// Parse and validate an ingest body.
pub fn parse_batch(body: &[u8], limits: &Limits) -> Result<ValidBatch, BatchError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BatchError::Json(format!("body is not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        // Still report syntax errors as such.
        serde_json::from_str::<&RawValue>(text).map_err(|e| BatchError::Json(e.to_string()))?;
        return Err(BatchError::Shape(
            "body must be a JSON object with a `host` field".into(),
        ));
    }
    let raw: RawBatch = serde_json::from_str(text).map_err(|e| BatchError::Json(e.to_string()))?;
    let host_v = raw
        .host
        .ok_or_else(|| BatchError::Shape("missing field `host`".into()))?;
    let host: HostInfo = serde_json::from_str(host_v.get())
        .map_err(|e| BatchError::Shape(format!("field `host`: {e}")))?;
    validate_host(&host).map_err(BatchError::Shape)?;

    let mut out = ValidBatch::default();
    out.batch.host = host;
    out.batch.agent = raw.agent.and_then(|a| serde_json::from_str(a.get()).ok());
    let gpus = section(raw.gpus, "gpus")?;
    let host_samples = section(raw.host_samples, "host_samples")?;
    let gpu_samples = section(raw.gpu_samples, "gpu_samples")?;
    let events = section(raw.events, "events")?;

    let mut seen_gpu = HashSet::new();
    for (i, v) in gpus.into_iter().enumerate() {
        match typed::<GpuInfo>(v).and_then(|g| check_gpu_info(&g).map(|_| g)) {
            Ok(g) if !seen_gpu.insert(g.index) => out.reject(
                "gpus",
                i,
                Some("index"),
                format!("GPU index {} listed twice", g.index),
            ),
            Ok(g) => out.batch.gpus.push(g),
            Err((field, reason)) => out.reject("gpus", i, field, reason),
        }
    }
    let mut seen_ts = HashSet::new();
    for (i, v) in host_samples.into_iter().enumerate() {
        match typed::<HostSample>(v).and_then(|s| check_host_sample(&s, limits).map(|_| s)) {
            Ok(s) if !seen_ts.insert(s.ts) => out.reject(
                "host_samples",
                i,
                Some("ts"),
                format!("duplicate of an earlier sample at {}", s.ts.to_rfc3339()),
            ),
            Ok(s) => out.batch.host_samples.push(s),
            Err((field, reason)) => out.reject("host_samples", i, field, reason),
        }
    }
    let mut seen_gpu_ts = HashSet::new();
    for (i, v) in gpu_samples.into_iter().enumerate() {
        match typed::<GpuSample>(v).and_then(|s| check_gpu_sample(&s, limits).map(|_| s)) {
            Ok(s) if !seen_gpu_ts.insert((s.index, s.ts)) => out.reject(
                "gpu_samples",
                i,
                Some("ts"),
                format!(
                    "duplicate of an earlier sample of GPU {} at {}",
                    s.index,
                    s.ts.to_rfc3339()
                ),
            ),
            Ok(s) => out.batch.gpu_samples.push(s),
            Err((field, reason)) => out.reject("gpu_samples", i, field, reason),
        }
    }
    for (i, v) in events.into_iter().enumerate() {
        match typed::<HardwareEvent>(v).and_then(|e| check_event(&e, limits).map(|_| e)) {
            Ok(e) => out.batch.events.push(e),
            Err((field, reason)) => out.reject("events", i, field, reason),
        }
    }
    Ok(out)
}

impl ValidBatch {
    fn reject(&mut self, section: &str, index: usize, field: Option<&str>, reason: String) {
        self.rejections.push(Rejection {
            section: section.to_string(),
            index,
            field: field.map(str::to_string),
            reason,
        });
    }
}

type Check = Result<(), (Option<&'static str>, String)>;

fn typed<T: DeserializeOwned>(v: &RawValue) -> Result<T, (Option<&'static str>, String)> {
    serde_json::from_str(v.get()).map_err(|e| (None, e.to_string()))
}

/// Host names, placement and labels: printable, bounded. HTML in them is allowed and
/// escaped where shown; control characters are not.
pub fn validate_host(h: &HostInfo) -> Result<(), String> {
    check_text("host.name", &h.name, 1, 253)?;
    check_text("host.site", &h.site, 0, 64)?;
    check_text("host.rack", &h.rack, 0, 64)?;
    check_text("host.pool", &h.pool, 0, 64)?;
    if h.labels.len() > 32 {
        return Err(format!(
            "host.labels has {} entries; at most 32 are allowed",
            h.labels.len()
        ));
    }
    for (k, v) in &h.labels {
        let ok_key = !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok_key {
            return Err(format!(
                "host.labels key {k:?} must match [A-Za-z_][A-Za-z0-9_.-]* (≤ 64 chars)"
            ));
        }
        check_text(&format!("host.labels.{k}"), v, 0, 256)?;
    }
    Ok(())
}

fn check_text(what: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n < min {
        return Err(format!("{what} must not be empty"));
    }
    if n > max {
        return Err(format!(
            "{what} is {n} characters long; at most {max} are allowed"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn check_ts(ts: DateTime<Utc>, l: &Limits) -> Check {
    if ts > l.now + l.max_future {
        let ahead = (ts - l.now).num_seconds();
        return Err((
            Some("ts"),
            format!("{} is {ahead} s in the future (more than {} s of clock skew); check the agent's clock", ts.to_rfc3339(), l.max_future.num_seconds()),
        ));
    }
    if ts < l.now - l.max_age {
        let hours = (l.now - ts).num_hours();
        return Err((
            Some("ts"),
            format!("{} is {hours} h old; samples older than {} h (retention.raw_days) are not accepted", ts.to_rfc3339(), l.max_age.num_hours()),
        ));
    }
    Ok(())
}

fn range(field: &'static str, v: Option<f64>, lo: f64, hi: f64, unit: &str) -> Check {
    match v {
        None => Ok(()),
        Some(x) if !x.is_finite() => Err((Some(field), format!("{x} is not a finite number"))),
        Some(x) if x < lo => Err((
            Some(field),
            format!("{x} {unit} is below the minimum {lo} {unit}"),
        )),
        Some(x) if x > hi => Err((
            Some(field),
            format!("{x} {unit} is above the maximum {hi} {unit}"),
        )),
        Some(_) => Ok(()),
    }
}

/// Bytes and rates: 2^53 is where f64 stops counting exactly, far above any real value.
const MAX_BYTES: f64 = 9.007_199_254_740_992e15;

/// A used/total pair of byte counts: each in range, and used not above total.
fn used_of_total(
    used_field: &'static str,
    used: Option<u64>,
    total_field: &'static str,
    total: Option<u64>,
) -> Check {
    range(used_field, used.map(|v| v as f64), 0.0, MAX_BYTES, "B")?;
    range(total_field, total.map(|v| v as f64), 0.0, MAX_BYTES, "B")?;
    if let (Some(u), Some(t)) = (used, total) {
        if u > t {
            return Err((
                Some(used_field),
                format!("{u} B used is more than the {t} B total"),
            ));
        }
    }
    Ok(())
}

fn check_host_sample(s: &HostSample, l: &Limits) -> Check {
    check_ts(s.ts, l)?;
    range("cpu_util_pct", s.cpu_util_pct, 0.0, 100.0, "%")?;
    range("load1", s.load1, 0.0, 1e6, "")?;
    used_of_total(
        "mem_used_bytes",
        s.mem_used_bytes,
        "mem_total_bytes",
        s.mem_total_bytes,
    )?;
    range(
        "disk_read_bytes_per_s",
        s.disk_read_bytes_per_s,
        0.0,
        MAX_BYTES,
        "B/s",
    )?;
    range(
        "disk_write_bytes_per_s",
        s.disk_write_bytes_per_s,
        0.0,
        MAX_BYTES,
        "B/s",
    )?;
    range(
        "net_rx_bytes_per_s",
        s.net_rx_bytes_per_s,
        0.0,
        MAX_BYTES,
        "B/s",
    )?;
    range(
        "net_tx_bytes_per_s",
        s.net_tx_bytes_per_s,
        0.0,
        MAX_BYTES,
        "B/s",
    )?;
    used_of_total(
        "disk_used_bytes",
        s.disk_used_bytes,
        "disk_total_bytes",
        s.disk_total_bytes,
    )?;
    // 20 kW for a day: far above one sample's host energy, catches µJ sent as J.
    range("energy_joules", s.energy_joules, 0.0, 1.728e9, "J")?;
    Ok(())
}

fn check_gpu_sample(s: &GpuSample, l: &Limits) -> Check {
    check_ts(s.ts, l)?;
    range("util_pct", s.util_pct, 0.0, 100.0, "%")?;
    range("mem_util_pct", s.mem_util_pct, 0.0, 100.0, "%")?;
    used_of_total(
        "mem_used_bytes",
        s.mem_used_bytes,
        "mem_total_bytes",
        s.mem_total_bytes,
    )?;
    // The largest accelerator boards draw ~1.2 kW; 5 kW leaves room without letting
    // unit mistakes (mW sent as W) through.
    range("power_watts", s.power_watts, 0.0, 5_000.0, "W")?;
    range("energy_joules_total", s.energy_joules_total, 0.0, 1e18, "J")?;
    range("temp_celsius", s.temp_celsius, -40.0, 150.0, "°C")?;
    range("mem_temp_celsius", s.mem_temp_celsius, -40.0, 150.0, "°C")?;
    range("sm_clock_mhz", s.sm_clock_mhz, 0.0, 10_000.0, "MHz")?;
    range("mem_clock_mhz", s.mem_clock_mhz, 0.0, 20_000.0, "MHz")?;
    range("fan_pct", s.fan_pct, 0.0, 100.0, "%")?;
    range("power_limit_watts", s.power_limit_watts, 0.0, 5_000.0, "W")?;
    // 5 kW for a day: far above one sample's energy, catches mJ sent as J.
    range("energy_joules", s.energy_joules, 0.0, 4.32e8, "J")?;
    // PCIe 6.0 x16 moves ~128 GB/s per direction.
    range(
        "pcie_rx_bytes_per_s",
        s.pcie_rx_bytes_per_s,
        0.0,
        1e12,
        "B/s",
    )?;
    range(
        "pcie_tx_bytes_per_s",
        s.pcie_tx_bytes_per_s,
        0.0,
        1e12,
        "B/s",
    )?;
    for (field, v) in [
        ("pcie_replay_total", s.pcie_replay_total),
        ("ecc_sbe_total", s.ecc_sbe_total),
        ("ecc_dbe_total", s.ecc_dbe_total),
        ("retired_pages_sbe", s.retired_pages_sbe),
        ("retired_pages_dbe", s.retired_pages_dbe),
        ("remapped_rows_correctable", s.remapped_rows_correctable),
        ("remapped_rows_uncorrectable", s.remapped_rows_uncorrectable),
    ] {
        // Stored as BIGINT.
        range(field, v.map(|v| v as f64), 0.0, i64::MAX as f64, "")?;
    }
    Ok(())
}

fn check_gpu_info(g: &GpuInfo) -> Check {
    for (field, v) in [
        ("uuid", &g.uuid),
        ("model", &g.model),
        ("driver_version", &g.driver_version),
    ] {
        if let Some(s) = v {
            check_text(field, s, 0, 128).map_err(|e| (Some(field), e))?;
        }
    }
    range("power_limit_watts", g.power_limit_watts, 0.0, 5_000.0, "W")?;
    range(
        "memory_total_bytes",
        g.memory_total_bytes.map(|v| v as f64),
        0.0,
        MAX_BYTES,
        "B",
    )?;
    Ok(())
}

fn check_event(e: &HardwareEvent, l: &Limits) -> Check {
    check_ts(e.ts, l)?;
    if !EVENT_KINDS.contains(&e.kind.as_str()) {
        return Err((
            Some("kind"),
            format!(
                "unknown event kind {:?}; known kinds: {}",
                e.kind,
                EVENT_KINDS.join(", ")
            ),
        ));
    }
    if e.kind == "xid" && e.code.is_none() {
        return Err((Some("code"), "an xid event needs its numeric code".into()));
    }
    check_text("message", &e.message, 0, 2048).map_err(|m| (Some("message"), m))?;
    if e.count == Some(0) {
        return Err((Some("count"), "count must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            now: "2026-11-23T12:00:00Z".parse().unwrap(),
            max_age: Duration::days(7),
            max_future: Duration::seconds(300),
        }
    }

    #[test]
    fn bad_samples_are_rejected_with_reasons_good_ones_kept() {
        let body = json!({
            "host": {"name": "gpu-1"},
            "host_samples": [
                {"ts": "2026-11-23T11:59:00Z", "cpu_util_pct": 50.0},
                {"ts": "2026-11-23T11:59:05Z", "cpu_util_pct": 150.0},
                {"ts": "2027-01-01T00:00:00Z", "cpu_util_pct": 5.0},
                {"ts": "2020-01-01T00:00:00Z"},
                {"ts": "not a time"},
                {"ts": "2026-11-23T11:59:00Z", "cpu_util_pct": 1.0},
                {"ts": "2026-11-23T11:59:10Z", "mem_used_bytes": 10, "mem_total_bytes": 5}
            ],
            "gpu_samples": [
                {"ts": "2026-11-23T11:59:00Z", "index": 0, "power_watts": -3.0},
                {"ts": "2026-11-23T11:59:00Z", "index": 0, "power_watts": 300.0},
                {"ts": "2026-11-23T11:59:00Z", "index": 900}
            ],
            "events": [{"ts": "2026-11-23T11:59:00Z", "kind": "meteor"}]
        });
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.host_samples.len(), 1);
        assert_eq!(v.batch.gpu_samples.len(), 1);
        assert_eq!(v.batch.gpu_samples[0].power_watts, Some(300.0));
        let reasons: Vec<_> = v
            .rejections
            .iter()
            .map(|r| (r.section.as_str(), r.index, r.field.clone()))
            .collect();
        assert!(reasons.contains(&("host_samples", 1, Some("cpu_util_pct".into()))));
        assert!(reasons.contains(&("host_samples", 2, Some("ts".into()))));
        assert!(reasons.contains(&("host_samples", 3, Some("ts".into()))));
        assert!(reasons.contains(&("host_samples", 4, None)));
        assert!(reasons.contains(&("host_samples", 5, Some("ts".into()))));
        assert!(reasons.contains(&("host_samples", 6, Some("mem_used_bytes".into()))));
        assert!(reasons.contains(&("gpu_samples", 0, Some("power_watts".into()))));
        assert!(reasons.contains(&("gpu_samples", 2, None)));
        assert!(reasons.contains(&("events", 0, Some("kind".into()))));
        assert_eq!(v.rejections.len(), 9);
        let future = v
            .rejections
            .iter()
            .find(|r| r.index == 2 && r.section == "host_samples")
            .unwrap();
        assert!(future.reason.contains("future"), "{}", future.reason);
    }

    #[test]
    fn whole_body_errors_name_the_problem() {
        let e = parse_batch(b"{\"host\": {\"name\": \"\"}}", &limits())
            .unwrap_err()
            .to_string();
        assert!(e.contains("host.name"), "{e}");
        let e = parse_batch(b"[1,2]", &limits()).unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
        let e = parse_batch(
            b"{\"host\": {\"name\": \"a\"}, \"gpu_samples\": 3}",
            &limits(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gpu_samples"), "{e}");
        let e = parse_batch(b"{\"host\": {\"name\": \"a\"}, ", &limits())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_batch(b"{\"host\": {\"name\": \"a\\u0007\"}}", &limits())
            .unwrap_err()
            .to_string();
        assert!(e.contains("control"), "{e}");
    }

    #[test]
    fn hostile_but_printable_names_are_accepted() {
        let body =
            json!({"host": {"name": "<script>alert(1)</script>", "labels": {"team": "\"'><img>"}}});
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.host.name, "<script>alert(1)</script>");
    }
}
