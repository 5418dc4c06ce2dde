//! Domain types shared by every stage: what an agent sends, what the server stores.
//!
//! The wire format (ingest body v1) is these structs serialized as JSON. Field names
//! carry their units. Every sample field except `ts` (and a GPU's `index`) is optional:
//! a source that cannot measure something leaves it out.

pub mod format;
pub mod jobs;
pub mod metrics;
pub mod schema;
pub mod telemetry;
pub mod throttle;
pub mod validate;
pub mod xid;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use metrics::{GpuSample, HostSample};

/// Who is sending: the host's identity and placement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInfo {
    /// The host's name; an agent token is bound to it.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub site: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rack: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// Free-form labels, shown on the host page and matched by alert rules (at most
    /// [`MAX_HOST_LABELS`]).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "bounded_labels"
    )]
    pub labels: BTreeMap<String, String>,
}

/// Labels a host may carry.
pub const MAX_HOST_LABELS: usize = 32;

/// A host's labels, refused at the first entry past [`MAX_HOST_LABELS`]: the map is never
/// built larger than that, whatever the body holds (millions of entries would take the
/// server's memory before the count could be checked).
fn bounded_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an object of at most {MAX_HOST_LABELS} string labels")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                if out.len() == MAX_HOST_LABELS {
                    return Err(serde::de::Error::custom(format!(
                        "host.labels has more than {MAX_HOST_LABELS} entries; at most {MAX_HOST_LABELS} are allowed"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Bounded)
}

/// One GPU of the host's inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuInfo {
    pub index: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
}

/// Kinds of hardware event. Unknown kinds are rejected at ingest.
pub const EVENT_KINDS: &[&str] = &[
    "xid",
    "ecc_dbe",
    "ecc_sbe",
    "row_remap_failure",
    "row_remap_pending",
    "thermal_throttle",
    "power_brake",
    "gpu_lost",
];

/// A hardware event: an XID, an ECC error, a GPU that fell off the bus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HardwareEvent {
    pub ts: DateTime<Utc>,
    /// GPU index; absent for host-wide events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u8>,
    #[schema(schema_with = event_kinds)]
    pub kind: String,
    /// The XID number for `xid` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: String,
    /// Occurrences collapsed into this event (a burst of the same code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// The agent's own health, reported with each batch and exposed on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentStats {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub spool_batches: u64,
    #[serde(default)]
    pub spool_bytes: u64,
    #[serde(default)]
    pub replayed_batches_total: u64,
    #[serde(default)]
    pub dropped_batches_total: u64,
    #[serde(default)]
    pub corrupt_batches_total: u64,
    /// The agent's clock when it sent this batch. Against the server's receive time it
    /// measures how far the agent's clock is behind: threshold rules widen their window
    /// by it and the host page names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// A random id of the agent process, the same in all its batches: batches of one host
    /// alternating between two ids are two agents reporting as one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub instance: Option<String>,
}

fn event_kinds() -> utoipa::openapi::schema::Object {
    schema::one_of(EVENT_KINDS)
}

/// One POST to `/api/v1/ingest`, as the agent builds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "host": {"name": "gpu-17", "site": "fra1", "rack": "r07", "pool": "train-a"},
    "gpus": [{"index": 0, "uuid": "GPU-5c1e…", "model": "NVIDIA H100 80GB HBM3",
              "memory_total_bytes": 85_899_345_920u64, "power_limit_watts": 700.0,
              "driver_version": "570.124.06"}],
    "host_samples": [{"ts": "2026-11-23T12:00:05Z", "cpu_util_pct": 41.5, "load1": 12.3,
                      "mem_used_bytes": 412_316_860_416u64}],
    "gpu_samples": [{"ts": "2026-11-23T12:00:05Z", "index": 0, "util_pct": 97.0,
                     "power_watts": 612.4, "temp_celsius": 71.0}],
    "events": [{"ts": "2026-11-23T11:59:58Z", "index": 0, "kind": "xid", "code": 79,
                "message": "GPU has fallen off the bus"}],
    "agent": {"version": "0.1.0", "spool_batches": 0}
}))]
pub struct Batch {
    pub host: HostInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_samples: Vec<HostSample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_samples: Vec<GpuSample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<HardwareEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStats>,
}

impl Batch {
    /// Samples and events in the batch.
    pub fn len(&self) -> usize {
        self.host_samples.len() + self.gpu_samples.len() + self.events.len()
    }

    /// The batch as two of about half its samples and events each (host samples first,
    /// then GPU samples, then events), both with its inventory; None for fewer than two.
    /// A batch the server finds too large is sent this way.
    pub fn halves(&self) -> Option<(Batch, Batch)> {
        let n = self.len();
        if n < 2 {
            return None;
        }
        let mut left = n / 2;
        let mut cut = |len: usize| {
            let k = left.min(len);
            left -= k;
            k
        };
        let (h, g, e) = (
            cut(self.host_samples.len()),
            cut(self.gpu_samples.len()),
            cut(self.events.len()),
        );
        let part = |h: &[HostSample], g: &[GpuSample], e: &[HardwareEvent]| Batch {
            host: self.host.clone(),
            gpus: self.gpus.clone(),
            host_samples: h.to_vec(),
            gpu_samples: g.to_vec(),
            events: e.to_vec(),
            agent: None,
        };
        Some((
            part(
                &self.host_samples[..h],
                &self.gpu_samples[..g],
                &self.events[..e],
            ),
            part(
                &self.host_samples[h..],
                &self.gpu_samples[g..],
                &self.events[e..],
            ),
        ))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ingest answer: how many samples were accepted, which were not and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// Samples and events that passed validation.
    pub accepted: usize,
    /// Of those, how many were new (the rest were already stored: a replay).
    pub stored: usize,
    pub rejected: usize,
    /// Why items were rejected (the first thousand; `rejected` counts them all).
    pub errors: Vec<Rejection>,
}

/// Why one sample of a batch was not accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejection {
    /// `host_samples`, `gpu_samples`, `events` or `gpus`.
    pub section: String,
    /// Position of the item in its section.
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub reason: String,
}

/// Sample timestamps: the common `2026-11-23T12:00:05.123Z` form read directly, anything
/// else (offsets, spaces, leap seconds, errors) by chrono, exactly as before. chrono's
/// general RFC 3339 parser showed up in ingest profiles.
pub(crate) mod ts_serde {
    use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
    use serde::de::{self, Visitor};

    pub fn deserialize<'de, D: de::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TsVisitor)
    }

    struct TsVisitor;

    impl Visitor<'_> for TsVisitor {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            // chrono's words, so that errors read the same.
            f.write_str("an RFC 3339 formatted date and time string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if let Some(t) = parse_utc(v) {
                return Ok(t);
            }
            v.parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS[.1 to 9 digits]Z`, or `None`.
    pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
            return None;
        }
        if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            b[r].iter().try_fold(0u32, |n, c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let frac = &b[19..b.len() - 1];
        let nanos = match frac {
            [] => 0,
            [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
                let n = num(20..20 + digits.len())?;
                n * 10u32.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        if sec > 59 {
            return None;
        }
        let t = NaiveDate::from_ymd_opt(year as i32, month, day)?
            .and_hms_nano_opt(hour, min, sec, nanos)?;
        Some(t.and_utc())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rand::{Rng, SeedableRng};

        fn chrono(s: &str) -> Option<DateTime<Utc>> {
            s.parse::<DateTime<FixedOffset>>()
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }

        #[test]
        fn the_direct_reader_agrees_with_chrono() {
            for s in [
                "2026-11-23T12:00:05Z",
                "2026-11-23T12:00:05.1Z",
                "2026-11-23T12:00:05.123456789Z",
                "2024-02-29T23:59:59.999999999Z",
                "0000-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
            ] {
                assert_eq!(parse_utc(s), chrono(s), "{s}");
                assert!(parse_utc(s).is_some(), "{s}");
            }
            // Everything else is left to chrono (and still parses where chrono does).
            for s in [
                "2026-11-23T12:00:05.1234567891Z",
                "2026-11-23T12:00:05.Z",
                "2026-11-23T12:00:60Z",
                "2026-11-23T24:00:00Z",
                "2025-02-29T00:00:00Z",
                "2026-13-01T00:00:00Z",
                "2026-11-23 12:00:05Z",
                "2026-11-23t12:00:05z",
                "2026-11-23T12:00:05+00:00",
                "2026-11-23T12:00:05+02:00",
                "+2026-11-23T12:00:05Z",
                "2026-11-23T12:00:05",
                "2026-11-23T1:00:05Z",
                "2026-11-23T12:00:05.-1Z",
                "２026-11-23T12:00:05Z",
                "",
            ] {
                assert_eq!(parse_utc(s), None, "{s}");
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for _ in 0..20_000 {
                let secs = rng.gen_range(-62_000_000_000i64..253_000_000_000);
                let nanos = rng.gen_range(0..1_000_000_000u32);
                let t = DateTime::from_timestamp(secs, nanos).unwrap();
                let digits = rng.gen_range(0..=9usize);
                let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                if digits > 0 {
                    s.push('.');
                    s.push_str(&format!("{:09}", nanos)[..digits]);
                }
                s.push('Z');
                assert_eq!(parse_utc(&s), chrono(&s), "{s}");
                // Damaged forms: whatever chrono makes of them, the reader makes nothing
                // different.
                let mut b = s.clone().into_bytes();
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen_range(b' '..=b'~');
                let d = String::from_utf8(b).unwrap();
                if let Some(t) = parse_utc(&d) {
                    assert_eq!(Some(t), chrono(&d), "{d}");
                }
            }
        }

        #[test]
        fn errors_read_as_chrono_wrote_them() {
            #[derive(serde::Deserialize)]
            struct A {
                #[allow(dead_code)]
                ts: DateTime<Utc>,
            }
            #[derive(serde::Deserialize)]
            struct B {
                #[allow(dead_code)]
                #[serde(deserialize_with = "deserialize")]
                ts: DateTime<Utc>,
            }
            for body in [
                r#"{"ts": "not a time"}"#,
                r#"{"ts": 17}"#,
                r#"{"ts": null}"#,
                r#"{"ts": "2026-11-23T12:00:05"}"#,
            ] {
                let a = serde_json::from_str::<A>(body).err().unwrap().to_string();
                let b = serde_json::from_str::<B>(body).err().unwrap().to_string();
                assert_eq!(a, b);
            }
        }
    }
}
