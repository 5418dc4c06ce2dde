//! Prometheus remote write (protocol 1.0) into the ingest pipeline, without HTTP (the
//! handler is `web::remote_write`):
//!
//! 1. [`decode`]: the snappy block-compressed protobuf `WriteRequest`, refusing to
//!    inflate past the limit before inflating;
//! 2. [`map`]: dcgm-exporter series (`DCGM_FI_*`, by the `Hostname` and `gpu` labels) and
//!    node_exporter series (`node_*`, by `instance` without its port, or `Hostname`)
//!    become host and GPU samples, GPU inventory and XID events, one [`Batch`] per host.
//!    Series Rackwatch has no use for are counted and dropped;
//! 3. [`accept`]: the token's scope decides which hosts may be written, and each host's
//!    batch goes through the agent's validator and is stored with
//!    [`Store::merge_batch`]: one scrape's series arrive spread over several requests,
//!    and a sample already stored takes the later part's metrics and keeps the rest.
//!
//! GPU series are gauges and map one to one through the metric table's DCGM names
//! (`model::metrics::dcgm_field`). node_exporter's counters (CPU seconds, network and
//! disk bytes) are turned into rates against the previous point of the same series,
//! kept in [`SeriesState`] between requests. `DCGM_FI_DEV_XID_ERRORS` is dcgm-exporter's
//! last XID code: a change to a non-zero code is a new XID event with that code.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Duration, Utc};
use prost::Message as _;

use super::IngestError;
use crate::config::Config;
use crate::model::metrics::{dcgm_field, Metric, Sample, SqlType, Value, GPU_METRICS};
use crate::model::validate::{validate_batch, BatchError, Limits, MAX_REJECTIONS_LISTED};
use crate::model::{
    Batch, GpuInfo, GpuSample, HardwareEvent, HostInfo, HostSample, IngestResponse, Rejection,
};
use crate::store::auth::WriteScope;
use crate::store::Store;

/// The messages of Prometheus's `prompb/remote.proto` and `types.proto` that protocol
/// 1.0 sends, declared by hand. Fields not listed (metadata, exemplars, native
/// histograms) are skipped by the decoder.
pub mod proto {
    /// One remote-write request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// A series: its labels (`__name__` included) and samples.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// A value at a time in milliseconds since the epoch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

use proto::{TimeSeries, WriteRequest};

/// Stage 1: undo snappy's block format (refusing a body that says it inflates past `max`
/// bytes, before inflating it) and decode the `WriteRequest`. The inflated size is
/// reserved from `budget` before inflating, as gzip bodies are, and the reservation comes
/// back with the request: whoever holds it until the request is mapped keeps the memory of
/// all bodies in flight within `server.inflate_budget_bytes`.
pub fn decode(
    encoding: Option<&str>,
    body: &[u8],
    max: usize,
    budget: &super::InflateBudget,
) -> Result<(WriteRequest, tokio::sync::OwnedSemaphorePermit), IngestError> {
    let enc = encoding.unwrap_or("snappy").trim().to_ascii_lowercase();
    if enc != "snappy" {
        return Err(IngestError::UnsupportedEncoding(format!(
            "Content-Encoding {enc:?} is not supported; remote write 1.0 sends snappy"
        )));
    }
    let len = snap::raw::decompress_len(body)
        .map_err(|e| IngestError::BadRequest(format!("body is not snappy block format: {e}")))?;
    if len > max {
        return Err(IngestError::TooLarge(format!(
            "body inflates to {len} bytes, past {max} (server.max_decompressed_bytes); lower queue_config.max_samples_per_send"
        )));
    }
    let reserved = budget.reserve(len)?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| IngestError::BadRequest(format!("body is not snappy block format: {e}")))?;
    census(&raw).map_err(IngestError::BadRequest)?;
    let req = WriteRequest::decode(raw.as_slice()).map_err(|e| {
        IngestError::BadRequest(format!("body is not a remote-write WriteRequest: {e}"))
    })?;
    Ok((req, reserved))
}

/// Labels one series may carry (dcgm-exporter's carry about 12, node_exporter's fewer).
pub const MAX_LABELS_PER_SERIES: usize = 128;
/// Series, labels and samples one request may carry: ten times what Prometheus sends
/// with `max_samples_per_send` at 10,000 (its default is 2,000).
pub const MAX_SERIES: usize = 100_000;
pub const MAX_LABELS: usize = 500_000;
pub const MAX_SAMPLES: usize = 1_000_000;

/// Counts a `WriteRequest`'s series, labels and samples on the wire, before decoding
/// allocates anything for them: a 66 MB body of empty labels would decode into 1.7 GB of
/// label structs. Returns what is wrong, or (series, labels, samples).
fn census(raw: &[u8]) -> Result<(usize, usize, usize), String> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // Each (field number, wire type) of a message, with the bytes of length-delimited ones.
    fn fields(
        b: &[u8],
        mut each: impl FnMut(u64, Option<&[u8]>) -> Result<(), String>,
    ) -> Result<(), String> {
        let bad = || "body is not a remote-write WriteRequest: bad protobuf framing".to_string();
        let mut i = 0;
        while i < b.len() {
            let key = varint(b, &mut i).ok_or_else(bad)?;
            match key & 7 {
                0 => {
                    varint(b, &mut i).ok_or_else(bad)?;
                    each(key >> 3, None)?;
                }
                1 => {
                    i = i.checked_add(8).filter(|e| *e <= b.len()).ok_or_else(bad)?;
                    each(key >> 3, None)?;
                }
                5 => {
                    i = i.checked_add(4).filter(|e| *e <= b.len()).ok_or_else(bad)?;
                    each(key >> 3, None)?;
                }
                2 => {
                    let n =
                        usize::try_from(varint(b, &mut i).ok_or_else(bad)?).map_err(|_| bad())?;
                    let end = i.checked_add(n).filter(|e| *e <= b.len()).ok_or_else(bad)?;
                    each(key >> 3, Some(&b[i..end]))?;
                    i = end;
                }
                _ => return Err(bad()),
            }
        }
        Ok(())
    }
    let (mut series, mut labels, mut samples) = (0usize, 0usize, 0usize);
    fields(raw, |field, body| {
        let (1, Some(ts)) = (field, body) else {
            return Ok(());
        };
        series += 1;
        if series > MAX_SERIES {
            return Err(format!(
                "more than {MAX_SERIES} series in one request; lower queue_config.max_samples_per_send"
            ));
        }
        let mut own = 0usize;
        fields(ts, |f, _| {
            match f {
                1 => {
                    own += 1;
                    labels += 1;
                }
                2 => samples += 1,
                _ => {}
            }
            if own > MAX_LABELS_PER_SERIES {
                return Err(format!(
                    "series {series} has more than {MAX_LABELS_PER_SERIES} labels"
                ));
            }
            if labels > MAX_LABELS || samples > MAX_SAMPLES {
                return Err(format!(
                    "more than {MAX_LABELS} labels or {MAX_SAMPLES} samples in one request; lower queue_config.max_samples_per_send"
                ));
            }
            Ok(())
        })
    })?;
    Ok((series, labels, samples))
}

/// Why series were dropped (`reason` on `rackwatch_remote_write_series_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// A metric Rackwatch does not map.
    Unmapped,
    /// A mapped metric without the labels that place it (`Hostname`/`instance`, `gpu`).
    Unplaced,
    /// A host the token may not write.
    OutOfScope,
    /// Rackwatch's own `/metrics/fleet` series (label [`OWN_EXPORT_LABEL`]) sent back: they
    /// are what Rackwatch stored, and its XID count is no XID code.
    Own,
}

/// The label every `/metrics/fleet` series carries (value `rackwatch`), so that a
/// Prometheus that scrapes the fleet and remote-writes `DCGM_FI_*` does not feed them back.
pub const OWN_EXPORT_LABEL: &str = "exporter";

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::Unmapped,
        Dropped::Unplaced,
        Dropped::OutOfScope,
        Dropped::Own,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Unmapped => "unmapped",
            Dropped::Unplaced => "unplaced",
            Dropped::OutOfScope => "out_of_scope",
            Dropped::Own => "own",
        }
    }
}

/// What [`accept`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// Accepted, stored and rejected samples and events, as ingest counts them.
    pub response: IngestResponse,
    /// Hardware events stored (they wake the alert evaluator).
    pub events: usize,
    /// Samples the request carried.
    pub samples: usize,
    /// Series dropped, by reason.
    pub dropped: HashMap<Dropped, u64>,
}

/// node_exporter series Rackwatch reads; counters become rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Load1,
    MemTotal,
    MemAvailable,
    /// `node_cpu_seconds_total{mode="idle"}`, per CPU.
    CpuIdle,
    NetRx,
    NetTx,
    DiskRead,
    DiskWrite,
    FsSize,
    FsAvail,
    /// `node_rapl_package_joules_total`, per CPU package: host energy, as the agent reads it.
    RaplPackage,
}

impl Family {
    fn counter(self) -> bool {
        matches!(
            self,
            Family::CpuIdle
                | Family::NetRx
                | Family::NetTx
                | Family::DiskRead
                | Family::DiskWrite
                | Family::RaplPackage
        )
    }
}

/// Filesystems counted in a host's disk space (node_exporter lists every mount).
const DISK_FS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
];

/// A node_exporter series' family and what tells its instances apart (CPU, device).
fn node_family(name: &str, label: impl Fn(&str) -> Option<String>) -> Option<(Family, String)> {
    let dev = || label("device").unwrap_or_default();
    let fs = || label("fstype").is_some_and(|t| DISK_FS.contains(&t.as_str()));
    Some(match name {
        "node_load1" => (Family::Load1, String::new()),
        "node_memory_MemTotal_bytes" => (Family::MemTotal, String::new()),
        "node_memory_MemAvailable_bytes" => (Family::MemAvailable, String::new()),
        "node_cpu_seconds_total" if label("mode").as_deref() == Some("idle") => {
            (Family::CpuIdle, label("cpu").unwrap_or_default())
        }
        "node_network_receive_bytes_total" if dev() != "lo" => (Family::NetRx, dev()),
        "node_network_transmit_bytes_total" if dev() != "lo" => (Family::NetTx, dev()),
        "node_disk_read_bytes_total" => (Family::DiskRead, dev()),
        "node_disk_written_bytes_total" => (Family::DiskWrite, dev()),
        "node_filesystem_size_bytes" if fs() => (Family::FsSize, dev()),
        "node_filesystem_avail_bytes" if fs() => (Family::FsAvail, dev()),
        "node_rapl_package_joules_total" => (
            Family::RaplPackage,
            label("index").or_else(|| label("path")).unwrap_or_default(),
        ),
        _ => return None,
    })
}

/// The newest point of a node_exporter series; for counters also its rate and its
/// increase since the point before (`None` for a first point or a reset).
#[derive(Debug, Clone, Copy)]
struct Point {
    ts: i64,
    value: f64,
    rate: Option<f64>,
    gain: Option<f64>,
}

/// What the mapper remembers of one host between requests.
#[derive(Debug, Default)]
struct HostState {
    series: HashMap<(Family, String), Point>,
    /// The last `DCGM_FI_DEV_XID_ERRORS` value of each GPU, once stored.
    xid: HashMap<u8, f64>,
    /// Newest sample time seen (ms), for pruning.
    touched: i64,
}

/// Hosts remembered at most; past it, hosts silent for an hour are forgotten.
const MAX_HOSTS: usize = 100_000;
/// node_exporter series remembered per host at most.
const MAX_SERIES_PER_HOST: usize = 4096;

/// The mapper's memory between requests: node_exporter counters' previous points and
/// each GPU's last XID code. Held by one server process; a counter seen first by a
/// server gives its rate from the second point on.
#[derive(Debug, Default)]
pub struct SeriesState {
    hosts: Mutex<HashMap<String, HostState>>,
}

/// The GPU metric behind each DCGM name, and its factor from the table's unit to DCGM's
/// (a DCGM value is divided by it).
static DCGM_NAMES: LazyLock<HashMap<&'static str, (usize, f64)>> = LazyLock::new(|| {
    GPU_METRICS
        .iter()
        .enumerate()
        .filter_map(|(i, m)| dcgm_field(m.name).map(|f| (f.name, (i, f.scale))))
        .collect()
});

const XID_SERIES: &str = "DCGM_FI_DEV_XID_ERRORS";
const FB_FREE_SERIES: &str = "DCGM_FI_DEV_FB_FREE";
const MIB: f64 = 1_048_576.0;

/// One GPU sample being assembled from its series.
#[derive(Debug, Default)]
struct GpuParts {
    sample: GpuSample,
    fb_free_mib: Option<f64>,
}

/// One host's part of a request.
#[derive(Debug, Default)]
struct HostParts {
    gpus: BTreeMap<(u8, i64), GpuParts>,
    inventory: BTreeMap<u8, GpuInfo>,
    /// node_exporter series (family, sub-key such as the CPU or device, points), folded
    /// into the series state only once the token's scope admits the host.
    node: Vec<(Family, String, Vec<proto::Sample>)>,
    /// `DCGM_FI_DEV_XID_ERRORS` points per GPU.
    xid: BTreeMap<u8, Vec<(i64, f64)>>,
    /// `site`, `rack`, `pool` labels, for a host seen here first.
    placement: BTreeMap<&'static str, String>,
    /// Series of this host (for the out-of-scope count).
    series: u64,
}

/// A request mapped: per host, and what was dropped or refused on the way.
#[derive(Debug, Default)]
pub struct Mapped {
    hosts: BTreeMap<String, HostParts>,
    samples: usize,
    dropped: HashMap<Dropped, u64>,
    /// Values a metric cannot hold (a negative count).
    rejections: Vec<Rejection>,
    rejected: usize,
}

fn label<'a>(ts: &'a TimeSeries, name: &str) -> Option<&'a str> {
    ts.labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
        .filter(|v| !v.is_empty())
}

/// The host a series belongs to: `Hostname` (dcgm-exporter's), else `instance` without
/// its port.
fn host_of(ts: &TimeSeries) -> Option<String> {
    if let Some(h) = label(ts, "Hostname") {
        return Some(h.to_string());
    }
    let inst = label(ts, "instance")?;
    let host = match inst.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => match inst.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => inst,
        },
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Prometheus's staleness marker (a NaN with this payload) ends a series; it carries no
/// value.
fn stale(v: f64) -> bool {
    v.to_bits() == 0x7ff0_0000_0000_0002 || v.is_nan()
}

/// A DCGM value in the table's unit and type, or why it cannot be held.
fn convert(m: &Metric, v: f64) -> Result<Value, String> {
    match m.sql {
        SqlType::Real | SqlType::Double => Ok(Value::F64(Some(v))),
        SqlType::Boolean => Ok(Value::Bool(Some(v != 0.0))),
        SqlType::BigInt | SqlType::Bits => {
            if (0.0..9.2e18).contains(&v) {
                Ok(Value::U64(Some(v.round() as u64)))
            } else {
                Err(format!("{v} is not a count"))
            }
        }
    }
}

impl Mapped {
    /// Samples in the request, kept or not.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// A rejection of the request's series at `position` (its index in `timeseries`).
    fn reject(&mut self, position: usize, series: &str, reason: String) {
        self.rejected += 1;
        if self.rejections.len() < MAX_REJECTIONS_LISTED {
            self.rejections.push(Rejection {
                section: "timeseries".into(),
                index: position,
                field: Some(series.to_string()),
                reason,
            });
        }
    }

    fn drop_series(&mut self, why: Dropped) {
        *self.dropped.entry(why).or_default() += 1;
    }
}

/// Stage 2 (CPU only, no I/O): map a request's series to per-host parts (node_exporter
/// counters reach the series state in stage 3, for hosts in the token's scope). Work is
/// bounded by `max_samples`: a request with more samples is refused before mapping.
pub fn map(req: WriteRequest, max_samples: usize) -> Result<Mapped, IngestError> {
    let samples: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
    if samples > max_samples {
        return Err(IngestError::TooLarge(
            BatchError::TooLarge { limit: max_samples }.to_string(),
        ));
    }
    let mut out = Mapped {
        samples,
        ..Default::default()
    };
    for (position, mut ts) in req.timeseries.into_iter().enumerate() {
        let Some(name) = label(&ts, "__name__").map(str::to_string) else {
            out.drop_series(Dropped::Unmapped);
            continue;
        };
        // Prometheus never sends a label twice; which value would count is unknowable.
        if let Some(dup) = ts
            .labels
            .iter()
            .enumerate()
            .find(|(i, l)| ts.labels[..*i].iter().any(|o| o.name == l.name))
            .map(|(_, l)| l.name.clone())
        {
            out.reject(
                position,
                &name,
                format!(
                    "label {} appears twice; series not stored",
                    crate::model::validate::quoted(&dup)
                ),
            );
            continue;
        }
        if label(&ts, OWN_EXPORT_LABEL) == Some("rackwatch") {
            out.drop_series(Dropped::Own);
            continue;
        }
        let dcgm = name.starts_with("DCGM_FI_");
        let family = if dcgm {
            None
        } else {
            match node_family(&name, |l| label(&ts, l).map(str::to_string)) {
                Some(f) => Some(f),
                None => {
                    out.drop_series(Dropped::Unmapped);
                    continue;
                }
            }
        };
        let metric = DCGM_NAMES.get(name.as_str()).copied();
        if dcgm && metric.is_none() && name != XID_SERIES && name != FB_FREE_SERIES {
            out.drop_series(Dropped::Unmapped);
            continue;
        }
        let Some(host) = host_of(&ts) else {
            out.drop_series(Dropped::Unplaced);
            continue;
        };
        // A GPU series needs its GPU; node_exporter's have none.
        let gpu = match family {
            Some(_) => None,
            None => match label(&ts, "gpu").and_then(|g| g.parse::<u8>().ok()) {
                Some(g) => Some(g),
                None => {
                    out.drop_series(Dropped::Unplaced);
                    continue;
                }
            },
        };
        ts.samples.sort_by_key(|s| s.timestamp);
        let parts = out.hosts.entry(host.clone()).or_default();
        parts.series += 1;
        for key in ["site", "rack", "pool"] {
            if let Some(v) = label(&ts, key) {
                parts.placement.entry(key).or_insert_with(|| v.to_string());
            }
        }
        let Some(gpu) = gpu else {
            let (family, sub) = family.expect("a series without a GPU is node_exporter's");
            parts.node.push((family, sub, ts.samples));
            continue;
        };
        let info = parts.inventory.entry(gpu).or_insert_with(|| GpuInfo {
            index: gpu,
            ..Default::default()
        });
        if info.uuid.is_none() {
            info.uuid = label(&ts, "UUID").map(str::to_string);
        }
        if info.model.is_none() {
            info.model = label(&ts, "modelName").map(str::to_string);
        }
        if info.driver_version.is_none() {
            info.driver_version = label(&ts, "DCGM_FI_DRIVER_VERSION").map(str::to_string);
        }
        let mut bad = Vec::new();
        for s in ts.samples.iter().filter(|s| !stale(s.value)) {
            if name == XID_SERIES {
                parts
                    .xid
                    .entry(gpu)
                    .or_default()
                    .push((s.timestamp, s.value));
                continue;
            }
            let g = parts.gpus.entry((gpu, s.timestamp)).or_default();
            let Some((i, scale)) = metric else {
                g.fb_free_mib = Some(s.value);
                continue;
            };
            match convert(&GPU_METRICS[i], s.value / scale) {
                Ok(v) => g.sample.set(i, v),
                Err(why) => bad.push(why),
            }
        }
        for why in bad {
            out.reject(position, &name, why);
        }
    }
    Ok(out)
}

/// Fold one host's node_exporter points into `state` in time order (rates and increases
/// for counters) and return the host samples of the request: one per scrape time that
/// brought a point, each made of the series whose newest point is at that time, so every
/// sample holds the values of its own time. A scrape split over several requests gives
/// each request the part known so far; the later part's sample holds the earlier one's
/// series too, and the merge keeps the fuller one. The newest scrape sent again (a retry
/// after a failed store) gives the same sample again; an older point, one out of order and
/// a staleness marker give none. Points outside `window` (ms: older than the raw retention
/// or past the clock-skew allowance) move nothing; each such time comes back as an empty
/// sample, for the validator to refuse with its reason. Called for hosts the token may
/// write only, so a token cannot fill the state with hosts it names but may not write.
fn node_samples(
    state: &SeriesState,
    host: &str,
    node: Vec<(Family, String, Vec<proto::Sample>)>,
    window: &std::ops::RangeInclusive<i64>,
) -> Vec<HostSample> {
    let mut out = Vec::new();
    if node.is_empty() {
        return out;
    }
    let mut points: Vec<(i64, usize, f64)> = Vec::new();
    let mut keys = Vec::with_capacity(node.len());
    for (k, (family, sub, samples)) in node.into_iter().enumerate() {
        keys.push((family, sub));
        points.extend(
            samples
                .iter()
                .filter(|p| !stale(p.value))
                .map(|p| (p.timestamp, k, p.value)),
        );
    }
    points.sort_by_key(|p| p.0);
    let mut hosts = state.hosts.lock().expect("remote-write state");
    if hosts.len() > MAX_HOSTS {
        let newest = hosts.values().map(|h| h.touched).max().unwrap_or(0);
        hosts.retain(|_, h| h.touched > newest - 3_600_000);
    }
    if !hosts.contains_key(host) && hosts.len() >= MAX_HOSTS {
        return out;
    }
    let h = hosts.entry(host.to_string()).or_default();
    for group in points.chunk_by(|a, b| a.0 == b.0) {
        let ts = group[0].0;
        let Some(at) = DateTime::from_timestamp_millis(ts) else {
            continue;
        };
        if !window.contains(&ts) {
            out.push(HostSample {
                ts: at,
                ..Default::default()
            });
            continue;
        }
        let mut present = false;
        for &(_, k, value) in group {
            let key = &keys[k];
            if h.series.len() >= MAX_SERIES_PER_HOST && !h.series.contains_key(key) {
                continue;
            }
            h.touched = h.touched.max(ts);
            let Some(p) = h.series.get_mut(key) else {
                h.series.insert(
                    key.clone(),
                    Point {
                        ts,
                        value,
                        rate: None,
                        gain: None,
                    },
                );
                present = true;
                continue;
            };
            if ts < p.ts {
                // Older than what is known (out of order, or an older request sent again).
                continue;
            }
            present = true;
            if ts == p.ts {
                // The newest point again: nothing new, but its sample is made again.
                continue;
            }
            if key.0.counter() {
                let dv = value - p.value;
                let dt = (ts - p.ts) as f64 / 1000.0;
                // A counter that went back was reset (or, for RAPL, wrapped at a range
                // node_exporter does not export): its rate and energy wait for the next point.
                p.rate = (dv >= 0.0).then(|| dv / dt);
                p.gain = (dv >= 0.0).then_some(dv);
            }
            p.ts = ts;
            p.value = value;
        }
        if present {
            out.extend(host_sample(h, at));
        }
    }
    out
}

/// A host's sample at `at` from the series whose newest point is at that time: gauges'
/// values, counters' rates (summed over devices, averaged over CPUs), and the RAPL
/// packages' energy used since their points before (J). `None` when none of them gives
/// a value (only first points of counters).
fn host_sample(h: &HostState, at: DateTime<Utc>) -> Option<HostSample> {
    let ts = at.timestamp_millis();
    let values = |f: Family| {
        h.series
            .iter()
            .filter(move |((g, _), p)| *g == f && p.ts == ts)
            .map(|(k, p)| (&k.1, p))
    };
    let one = |f: Family| values(f).map(|(_, p)| p.value).next();
    let sum = |r: Vec<f64>| (!r.is_empty()).then(|| r.iter().sum::<f64>());
    let sum_rates = |f: Family| sum(values(f).filter_map(|(_, p)| p.rate).collect());
    let mut s = HostSample {
        ts: at,
        load1: one(Family::Load1),
        energy_joules: sum(values(Family::RaplPackage)
            .filter_map(|(_, p)| p.gain)
            .collect()),
        ..Default::default()
    };
    let total = one(Family::MemTotal);
    s.mem_total_bytes = total.map(|t| t as u64);
    if let (Some(t), Some(a)) = (total, one(Family::MemAvailable)) {
        s.mem_used_bytes = Some((t - a).max(0.0) as u64);
    }
    let idle: Vec<f64> = values(Family::CpuIdle)
        .filter_map(|(_, p)| p.rate)
        .collect();
    if !idle.is_empty() {
        let mean = idle.iter().sum::<f64>() / idle.len() as f64;
        s.cpu_util_pct = Some((100.0 * (1.0 - mean)).clamp(0.0, 100.0));
    }
    s.net_rx_bytes_per_s = sum_rates(Family::NetRx);
    s.net_tx_bytes_per_s = sum_rates(Family::NetTx);
    s.disk_read_bytes_per_s = sum_rates(Family::DiskRead);
    s.disk_write_bytes_per_s = sum_rates(Family::DiskWrite);
    let sizes: BTreeMap<&String, f64> = values(Family::FsSize).map(|(d, p)| (d, p.value)).collect();
    if !sizes.is_empty() {
        s.disk_total_bytes = Some(sizes.values().sum::<f64>() as u64);
        let used: f64 = values(Family::FsAvail)
            .filter_map(|(d, p)| sizes.get(d).map(|size| (size - p.value).max(0.0)))
            .sum();
        s.disk_used_bytes = Some(used as u64);
    }
    let any = HostSample {
        ts: s.ts,
        ..Default::default()
    } != s;
    any.then_some(s)
}

/// The token's verdict on a host: its placement to write with, or out of scope.
fn placed(
    scope: &WriteScope,
    name: &str,
    stored: Option<&HostInfo>,
    labels: &BTreeMap<&'static str, String>,
) -> Option<HostInfo> {
    let from_labels = |site: String| HostInfo {
        name: name.to_string(),
        site,
        rack: labels.get("rack").cloned().unwrap_or_default(),
        pool: labels.get("pool").cloned().unwrap_or_default(),
        labels: BTreeMap::new(),
    };
    match scope {
        WriteScope::Site(site) => match stored {
            Some(h) if h.site == *site => Some(h.clone()),
            Some(_) => None,
            None => Some(from_labels(site.clone())),
        },
        WriteScope::Hosts(names) if names.iter().any(|n| n == name) => Some(match stored {
            Some(h) => h.clone(),
            None => from_labels(labels.get("site").cloned().unwrap_or_default()),
        }),
        WriteScope::Hosts(_) => None,
    }
}

/// Stage 3: check the mapped hosts against the token's scope, turn XID code changes into
/// events, and validate and store each host's batch. A host's XID codes are remembered
/// only once its batch is stored, so a request retried after a failure raises them again
/// (and the event's key makes the second one a replay).
pub async fn accept(
    store: &Store,
    cfg: &Config,
    state: &SeriesState,
    scope: &WriteScope,
    mut mapped: Mapped,
    now: DateTime<Utc>,
) -> Result<Written, IngestError> {
    // A host name that cannot be stored (a control character from its label) is
    // rejected alone, before it reaches the database; the other hosts are kept.
    let unfit: Vec<(String, String)> = mapped
        .hosts
        .keys()
        .filter_map(|n| {
            crate::model::validate::host_name(n)
                .err()
                .map(|e| (n.clone(), e))
        })
        .collect();
    for (name, why) in unfit {
        let parts = mapped.hosts.remove(&name).expect("listed host");
        let reason = format!(
            "host {}: {why} ({} not stored)",
            crate::model::validate::quoted(&name),
            crate::model::format::count(parts.series, "series")
        );
        mapped.rejected += parts.series as usize;
        if mapped.rejections.len() < MAX_REJECTIONS_LISTED {
            mapped.rejections.push(crate::model::Rejection {
                section: "timeseries".into(),
                index: mapped.rejected - 1,
                field: Some("Hostname/instance".into()),
                reason,
            });
        }
    }
    let names: Vec<String> = mapped.hosts.keys().cloned().collect();
    let stored: HashMap<String, HostInfo> = store
        .host_placements(&names)
        .await
        .map_err(crate::store::StoreError::from)?
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
    let mut hosts = Vec::new();
    let mut refused = 0;
    for (name, parts) in std::mem::take(&mut mapped.hosts) {
        match placed(scope, &name, stored.get(&name), &parts.placement) {
            Some(info) => hosts.push((info, parts)),
            None => {
                refused += 1;
                *mapped.dropped.entry(Dropped::OutOfScope).or_default() += parts.series;
            }
        }
    }
    if hosts.is_empty() && refused > 0 {
        return Err(IngestError::Forbidden(format!(
            "this token may write {}; the request names none of those hosts",
            scope.label()
        )));
    }
    let prior = xid_prior(store, state, &hosts).await?;
    let limits = Limits {
        now,
        max_age: Duration::days(i64::from(cfg.retention.raw_days)),
        max_future: Duration::seconds(cfg.ingest.max_future_secs),
        max_items: cfg.ingest.max_samples_per_batch,
    };
    // The validator's time limits, in ms: points outside them move no state.
    let window = limits.window_ms();
    let mut w = Written {
        samples: mapped.samples,
        dropped: std::mem::take(&mut mapped.dropped),
        ..Default::default()
    };
    w.response.rejected = mapped.rejected;
    w.response.errors = std::mem::take(&mut mapped.rejections);
    // Every host is built and checked before the first is written: a request past the
    // size limit is refused whole (Prometheus drops a 4xx), never after some of its
    // hosts were stored.
    let mut checked = Vec::with_capacity(hosts.len());
    for (info, parts) in hosts {
        let (batch, xid_last) = build(state, info, parts, &prior, &window);
        let name = batch.host.name.clone();
        let n = batch.len();
        // A host whose placement cannot be stored (a site, rack, pool or label value from
        // its labels that is too long or holds a control character; names were checked
        // above) is rejected alone: the other hosts' series are kept.
        let valid = match validate_batch(batch, &limits) {
            Ok(v) => v,
            Err(e @ BatchError::TooLarge { .. }) => {
                return Err(IngestError::TooLarge(e.to_string()))
            }
            Err(BatchError::Json(m) | BatchError::Shape(m)) => {
                w.response.rejected += n;
                if w.response.errors.len() < MAX_REJECTIONS_LISTED {
                    w.response.errors.push(crate::model::Rejection {
                        section: "host".into(),
                        index: 0,
                        field: None,
                        reason: format!(
                            "host {}: {m} ({} not stored)",
                            crate::model::validate::quoted(&name),
                            crate::model::format::count(n, "sample")
                        ),
                    });
                }
                continue;
            }
        };
        checked.push((name, valid, xid_last));
    }
    for (name, valid, xid_last) in checked {
        let outcome = match store.merge_batch(&valid.batch, now).await {
            Ok(o) => o,
            Err(crate::store::StoreError::MissingPartition) => {
                store
                    .ensure_partitions(
                        now,
                        cfg.retention.raw_days,
                        cfg.retention.partitions_ahead_days,
                    )
                    .await?;
                store.merge_batch(&valid.batch, now).await?
            }
            Err(e) => return Err(e.into()),
        };
        if !xid_last.is_empty() {
            let mut all = state.hosts.lock().expect("remote-write state");
            if all.len() < MAX_HOSTS || all.contains_key(&name) {
                all.entry(name).or_default().xid.extend(xid_last);
            }
        }
        w.events += valid.batch.events.len();
        w.response.accepted += valid.batch.len();
        w.response.stored += outcome.stored;
        w.response.rejected += valid.rejected;
        let room = MAX_REJECTIONS_LISTED.saturating_sub(w.response.errors.len());
        w.response
            .errors
            .extend(valid.rejections.into_iter().take(room));
    }
    Ok(w)
}

/// The last XID code of each GPU with XID points in the request: remembered, else the
/// newest stored XID event's code (a restarted server does not raise a standing code
/// again), else 0.
async fn xid_prior(
    store: &Store,
    state: &SeriesState,
    hosts: &[(HostInfo, HostParts)],
) -> Result<HashMap<(String, u8), f64>, IngestError> {
    let mut prior = HashMap::new();
    let mut unknown = Vec::new();
    {
        let all = state.hosts.lock().expect("remote-write state");
        for (info, parts) in hosts {
            for gpu in parts.xid.keys() {
                match all.get(&info.name).and_then(|h| h.xid.get(gpu)) {
                    Some(v) => {
                        prior.insert((info.name.clone(), *gpu), *v);
                    }
                    None => unknown.push(info.name.clone()),
                }
            }
        }
    }
    if !unknown.is_empty() {
        unknown.dedup();
        for (host, gpu, code) in store
            .latest_xid_codes(&unknown)
            .await
            .map_err(crate::store::StoreError::from)?
        {
            if let Ok(gpu) = u8::try_from(gpu) {
                prior.entry((host, gpu)).or_insert(code as f64);
            }
        }
    }
    Ok(prior)
}

/// One host's batch, and the XID codes to remember once it is stored. Points outside
/// `window` (ms, the validator's time limits) move no state: the validator refuses them.
fn build(
    state: &SeriesState,
    host: HostInfo,
    parts: HostParts,
    prior: &HashMap<(String, u8), f64>,
    window: &std::ops::RangeInclusive<i64>,
) -> (Batch, Vec<(u8, f64)>) {
    let mut batch = Batch {
        host,
        ..Default::default()
    };
    for ((index, ts), mut g) in parts.gpus {
        let Some(t) = DateTime::from_timestamp_millis(ts) else {
            continue;
        };
        g.sample.ts = t;
        g.sample.index = index;
        if let (None, Some(used), Some(free)) = (
            g.sample.mem_total_bytes,
            g.sample.mem_used_bytes,
            g.fb_free_mib,
        ) {
            g.sample.mem_total_bytes = Some(used + (free.max(0.0) * MIB) as u64);
        }
        let info = parts.inventory.get(&index);
        if let Some(info) = info {
            let mut info = info.clone();
            info.memory_total_bytes = info.memory_total_bytes.or(g.sample.mem_total_bytes);
            info.power_limit_watts = info.power_limit_watts.or(g.sample.power_limit_watts);
            if let Some(i) = batch.gpus.iter_mut().find(|i| i.index == index) {
                *i = info;
            } else {
                batch.gpus.push(info);
            }
        }
        let empty = GpuSample {
            ts: t,
            index,
            ..Default::default()
        };
        if g.sample != empty {
            batch.gpu_samples.push(g.sample);
        }
    }
    for (index, info) in parts.inventory {
        if !batch.gpus.iter().any(|i| i.index == index) {
            batch.gpus.push(info);
        }
    }
    let mut xid_last = Vec::new();
    for (gpu, points) in parts.xid {
        let mut last = prior
            .get(&(batch.host.name.clone(), gpu))
            .copied()
            .unwrap_or(0.0);
        for (ts, v) in points {
            let Some(t) = DateTime::from_timestamp_millis(ts) else {
                continue;
            };
            let inside = window.contains(&ts);
            if v != last && v > 0.0 && v.fract() == 0.0 && v < 1e9 {
                batch.events.push(HardwareEvent {
                    ts: t,
                    index: Some(gpu),
                    kind: "xid".into(),
                    code: Some(v as i64),
                    message: format!("XID {v} (dcgm-exporter {XID_SERIES})"),
                    count: None,
                });
            }
            if inside {
                last = v;
            }
        }
        xid_last.push((gpu, last));
    }
    batch.host_samples = node_samples(state, &batch.host.name, parts.node, window);
    (batch, xid_last)
}

#[cfg(test)]
mod tests {
    use super::proto::{Label, Sample as PSample};
    use super::*;

    /// Every time: the tests' points are at 1970 times.
    const ALL: std::ops::RangeInclusive<i64> = i64::MIN..=i64::MAX;

    /// Host n1's samples from one request.
    fn n1(
        state: &SeriesState,
        req: WriteRequest,
        window: &std::ops::RangeInclusive<i64>,
    ) -> Vec<HostSample> {
        let mut m = map(req, 1000).unwrap();
        let info = HostInfo {
            name: "n1".into(),
            ..Default::default()
        };
        build(
            state,
            info,
            m.hosts.remove("n1").unwrap(),
            &HashMap::new(),
            window,
        )
        .0
        .host_samples
    }

    /// A RAPL package counter of host n1.
    fn rapl(index: &str, points: &[(i64, f64)]) -> TimeSeries {
        series(
            &[
                ("__name__", "node_rapl_package_joules_total"),
                ("instance", "n1:9100"),
                ("index", index),
            ],
            points,
        )
    }

    fn energy_of(v: Vec<HostSample>) -> Vec<(i64, Option<f64>)> {
        v.iter()
            .map(|s| (s.ts.timestamp(), s.energy_joules))
            .collect()
    }

    fn series(labels: &[(&str, &str)], points: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: points
                .iter()
                .map(|(t, v)| PSample {
                    value: *v,
                    timestamp: *t,
                })
                .collect(),
        }
    }

    #[test]
    fn a_request_round_trips_through_snappy_and_protobuf_within_bounds() {
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "node_load1")], &[(1000, 1.5)])],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap();
        let budget = crate::ingest::InflateBudget::new(2 << 20);
        let before = budget.available_mib();
        let (got, reserved) = decode(Some("snappy"), &body, 1 << 20, &budget).unwrap();
        assert_eq!(got, req);
        // The inflated body holds its share of the budget until the request is mapped.
        assert_eq!(budget.available_mib(), before - 1);
        drop(reserved);
        assert_eq!(budget.available_mib(), before);
        let _all = budget.reserve_mib(before).unwrap();
        assert!(matches!(
            decode(Some("snappy"), &body, 1 << 20, &budget),
            Err(IngestError::Busy(_))
        ));
        let budget = crate::ingest::InflateBudget::new(1 << 40);
        assert_eq!(
            census(&req.encode_to_vec()).unwrap().0,
            req.timeseries.len()
        );
        assert!(matches!(
            decode(Some("snappy"), &body, 4, &budget),
            Err(IngestError::TooLarge(_))
        ));
        assert!(matches!(
            decode(Some("gzip"), &body, 1 << 20, &budget),
            Err(IngestError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            decode(None, b"\xff\xff\xff\xff\x0fnot snappy", 1 << 40, &budget),
            Err(IngestError::BadRequest(_) | IngestError::TooLarge(_))
        ));
    }

    /// A series of millions of empty labels (`0a 00` repeated) is refused on the wire,
    /// before decoding would allocate a label struct for each.
    #[test]
    fn a_label_bomb_is_refused_before_it_is_decoded() {
        fn series(labels: usize) -> Vec<u8> {
            let inner: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], labels)
                .flatten()
                .collect();
            let mut out = vec![0x0a];
            let mut n = inner.len();
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend(inner);
            out
        }
        let bomb = series(1_000_000);
        let body = snap::raw::Encoder::new().compress_vec(&bomb).unwrap();
        let budget = crate::ingest::InflateBudget::new(128 << 20);
        match decode(Some("snappy"), &body, 64 << 20, &budget) {
            Err(IngestError::BadRequest(m)) => {
                assert!(m.contains("series 1 has more than 128 labels"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // Many small series: the total is capped too.
        let many: Vec<u8> = std::iter::repeat_n(series(10), 60_000).flatten().collect();
        let e = census(&many).unwrap_err();
        assert!(e.contains("more than 500000 labels"), "{e}");
        // A series at the limit decodes.
        assert_eq!(census(&series(128)).unwrap(), (1, 128, 0));
        // Framing that runs past the body is named, not decoded.
        assert!(census(&[0x0a, 0x05, 0x0a]).unwrap_err().contains("framing"));
    }

    #[test]
    fn dcgm_series_become_gpu_samples_in_the_tables_units() {
        let gpu = |name: &str, v: f64| {
            series(
                &[
                    ("__name__", name),
                    ("Hostname", "gpu-1"),
                    ("gpu", "3"),
                    ("UUID", "GPU-abc"),
                    ("modelName", "NVIDIA H100 80GB HBM3"),
                ],
                &[(1_700_000_000_000, v)],
            )
        };
        let req = WriteRequest {
            timeseries: vec![
                gpu("DCGM_FI_DEV_GPU_UTIL", 97.0),
                gpu("DCGM_FI_DEV_FB_USED", 1024.0),
                gpu("DCGM_FI_DEV_FB_FREE", 3072.0),
                gpu("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 5_000_000.0),
                gpu("DCGM_FI_DEV_ENC_UTIL", 0.0),
                series(
                    &[("__name__", "DCGM_FI_DEV_GPU_TEMP"), ("gpu", "0")],
                    &[(1, 1.0)],
                ),
            ],
        };
        let state = SeriesState::default();
        let mut m = map(req, 100).unwrap();
        assert_eq!(m.dropped[&Dropped::Unmapped], 1);
        assert_eq!(m.dropped[&Dropped::Unplaced], 1);
        let parts = m.hosts.remove("gpu-1").unwrap();
        let info = HostInfo {
            name: "gpu-1".into(),
            ..Default::default()
        };
        let (b, _) = build(&state, info, parts, &HashMap::new(), &ALL);
        assert_eq!(b.gpu_samples.len(), 1);
        let s = &b.gpu_samples[0];
        assert_eq!(s.index, 3);
        assert_eq!(s.util_pct, Some(97.0));
        assert_eq!(s.mem_used_bytes, Some(1 << 30));
        assert_eq!(s.mem_total_bytes, Some(4 << 30));
        assert_eq!(s.energy_joules_total, Some(5000.0));
        assert_eq!(b.gpus[0].uuid.as_deref(), Some("GPU-abc"));
        assert_eq!(b.gpus[0].memory_total_bytes, Some(4 << 30));
    }

    #[test]
    fn a_series_with_a_label_twice_is_rejected_alone() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "DCGM_FI_DEV_GPU_UTIL"),
                        ("Hostname", "gpu-1"),
                        ("gpu", "0"),
                        ("gpu", "1"),
                    ],
                    &[(1_700_000_000_000, 50.0)],
                ),
                series(
                    &[
                        ("__name__", "DCGM_FI_DEV_GPU_UTIL"),
                        ("Hostname", "gpu-1"),
                        ("gpu", "2"),
                    ],
                    &[(1_700_000_000_000, 60.0)],
                ),
            ],
        };
        let m = map(req, 100).unwrap();
        assert_eq!(m.rejected, 1);
        assert!(
            m.rejections[0]
                .reason
                .contains("label \"gpu\" appears twice"),
            "{:?}",
            m.rejections
        );
        assert_eq!(m.hosts["gpu-1"].series, 1, "the other series is kept");
    }

    #[test]
    fn node_counters_become_rates_across_requests() {
        let state = SeriesState::default();
        let req = |t: i64, idle0: f64, idle1: f64, rx: f64| WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("instance", "n1:9100"),
                        ("cpu", "0"),
                        ("mode", "idle"),
                    ],
                    &[(t, idle0)],
                ),
                series(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("instance", "n1:9100"),
                        ("cpu", "1"),
                        ("mode", "idle"),
                    ],
                    &[(t, idle1)],
                ),
                series(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("instance", "n1:9100"),
                        ("cpu", "1"),
                        ("mode", "user"),
                    ],
                    &[(t, 5.0)],
                ),
                series(
                    &[
                        ("__name__", "node_network_receive_bytes_total"),
                        ("instance", "n1:9100"),
                        ("device", "eth0"),
                    ],
                    &[(t, rx)],
                ),
                series(
                    &[
                        ("__name__", "node_network_receive_bytes_total"),
                        ("instance", "n1:9100"),
                        ("device", "lo"),
                    ],
                    &[(t, rx * 100.0)],
                ),
                series(
                    &[("__name__", "node_load1"), ("instance", "n1:9100")],
                    &[(t, 2.5)],
                ),
            ],
        };
        let info = || HostInfo {
            name: "n1".into(),
            ..Default::default()
        };
        let mut m = map(req(10_000, 100.0, 100.0, 1e6), 100).unwrap();
        assert_eq!(m.dropped[&Dropped::Unmapped], 2, "user mode and lo");
        let (b, _) = build(
            &state,
            info(),
            m.hosts.remove("n1").unwrap(),
            &HashMap::new(),
            &ALL,
        );
        assert_eq!(b.host_samples.len(), 1);
        assert_eq!(b.host_samples[0].load1, Some(2.5));
        assert_eq!(
            b.host_samples[0].cpu_util_pct, None,
            "no rate from one point"
        );
        // 10 s later: CPU 0 idle 9 s (10 % busy), CPU 1 idle 5 s (50 %); 2 MB received.
        let mut m = map(req(20_000, 109.0, 105.0, 3e6), 100).unwrap();
        let (b, _) = build(
            &state,
            info(),
            m.hosts.remove("n1").unwrap(),
            &HashMap::new(),
            &ALL,
        );
        let s = &b.host_samples[0];
        assert!((s.cpu_util_pct.unwrap() - 30.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.net_rx_bytes_per_s, Some(200_000.0));
        // The same request again (a retry) changes nothing.
        let mut m = map(req(20_000, 109.0, 105.0, 3e6), 100).unwrap();
        let (b, _) = build(
            &state,
            info(),
            m.hosts.remove("n1").unwrap(),
            &HashMap::new(),
            &ALL,
        );
        assert_eq!(&b.host_samples[0], s);
    }

    #[test]
    fn a_new_non_zero_xid_code_is_an_event() {
        let state = SeriesState::default();
        let req = WriteRequest {
            timeseries: vec![series(
                &[("__name__", XID_SERIES), ("Hostname", "g"), ("gpu", "1")],
                &[
                    (1000, 0.0),
                    (2000, 79.0),
                    (3000, 79.0),
                    (4000, 0.0),
                    (5000, 48.0),
                ],
            )],
        };
        let mut m = map(req, 100).unwrap();
        let info = HostInfo {
            name: "g".into(),
            ..Default::default()
        };
        let (b, last) = build(
            &state,
            info,
            m.hosts.remove("g").unwrap(),
            &HashMap::new(),
            &ALL,
        );
        let codes: Vec<_> = b
            .events
            .iter()
            .map(|e| (e.ts.timestamp_millis(), e.code))
            .collect();
        assert_eq!(codes, vec![(2000, Some(79)), (5000, Some(48))]);
        assert_eq!(last, vec![(1, 48.0)]);
    }

    #[test]
    fn too_many_samples_are_refused_before_mapping() {
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "node_load1")], &[(1, 1.0), (2, 1.0)])],
        };
        assert!(matches!(map(req, 1), Err(IngestError::TooLarge(_))));
    }

    #[test]
    fn rapl_package_counters_become_host_energy_once_per_interval() {
        let state = SeriesState::default();
        let energy = |req: WriteRequest| energy_of(n1(&state, req, &ALL));
        // Two packages: the first points give no energy (nothing to difference).
        let first = WriteRequest {
            timeseries: vec![
                rapl("0", &[(10_000, 1_000.0)]),
                rapl("1", &[(10_000, 5_000.0)]),
            ],
        };
        assert!(energy(first).iter().all(|(_, e)| e.is_none()));
        // 10 s later: +500 J and +300 J.
        let second = WriteRequest {
            timeseries: vec![
                rapl("0", &[(20_000, 1_500.0)]),
                rapl("1", &[(20_000, 5_300.0)]),
            ],
        };
        assert_eq!(energy(second), [(20, Some(800.0))]);
        // Package 0 wrapped (its counter went back): only package 1's +250 J is counted.
        let third = WriteRequest {
            timeseries: vec![
                rapl("0", &[(30_000, 20.0)]),
                rapl("1", &[(30_000, 5_550.0)]),
            ],
        };
        assert_eq!(energy(third), [(30, Some(250.0))]);
        // Two scrapes in one request: each interval once, not the last one twice.
        let fourth = WriteRequest {
            timeseries: vec![
                rapl("0", &[(40_000, 120.0), (50_000, 170.0)]),
                rapl("1", &[(40_000, 5_650.0), (50_000, 5_700.0)]),
            ],
        };
        assert_eq!(energy(fourth), [(40, Some(200.0)), (50, Some(100.0))]);
    }

    #[test]
    fn every_sample_holds_the_values_of_its_own_time() {
        let state = SeriesState::default();
        let node = |name: &str, extra: &[(&str, &str)], points: &[(i64, f64)]| {
            let mut labels = vec![("__name__", name), ("instance", "n1:9100")];
            labels.extend_from_slice(extra);
            series(&labels, points)
        };
        let send = |window: &std::ops::RangeInclusive<i64>, timeseries: Vec<TimeSeries>| {
            n1(&state, WriteRequest { timeseries }, window)
        };
        let load = |v: &[HostSample]| -> Vec<(i64, Option<f64>)> {
            v.iter().map(|s| (s.ts.timestamp(), s.load1)).collect()
        };
        let idle = |cpu: &'static str, points: &[(i64, f64)]| {
            node(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", "idle")],
                points,
            )
        };
        // Three scrapes in one request (a backlog sent after an outage): each its own load,
        // and the first CPU point has no rate.
        let v = send(
            &ALL,
            vec![
                node(
                    "node_load1",
                    &[],
                    &[(10_000, 1.0), (25_000, 2.0), (40_000, 3.0)],
                ),
                idle("0", &[(10_000, 100.0), (40_000, 115.0)]),
            ],
        );
        assert_eq!(
            load(&v),
            [(10, Some(1.0)), (25, Some(2.0)), (40, Some(3.0))]
        );
        assert_eq!(v[0].cpu_util_pct, None);
        assert_eq!(v[1].cpu_util_pct, None, "no CPU point at 25 s");
        assert!(
            (v[2].cpu_util_pct.unwrap() - 50.0).abs() < 1e-9,
            "{:?}",
            v[2]
        );

        // One scrape (55 s) split over two requests: the first holds no value of the
        // scrape before; the second holds both CPUs and the memory of this scrape.
        let a = send(
            &ALL,
            vec![
                node("node_load1", &[], &[(55_000, 4.0)]),
                idle("0", &[(55_000, 130.0)]),
                node("node_memory_MemTotal_bytes", &[], &[(40_000, 1000.0)]),
            ],
        );
        // A late part of the 40 s scrape fills the 40 s sample, not the 55 s one.
        assert_eq!(
            a.iter()
                .map(|s| (s.ts.timestamp(), s.mem_total_bytes))
                .collect::<Vec<_>>(),
            [(40, Some(1000)), (55, None)]
        );
        assert_eq!(a[1].load1, Some(4.0));
        assert!((a[1].cpu_util_pct.unwrap() - 0.0).abs() < 1e-9);
        let b = send(
            &ALL,
            vec![
                idle("1", &[(40_000, 0.0), (55_000, 7.5)]),
                node("node_memory_MemTotal_bytes", &[], &[(55_000, 1000.0)]),
                node("node_memory_MemAvailable_bytes", &[], &[(55_000, 400.0)]),
            ],
        );
        let b55 = b.iter().find(|s| s.ts.timestamp() == 55).unwrap();
        assert_eq!(b55.load1, Some(4.0), "the first part's gauge, same scrape");
        assert_eq!(
            (b55.mem_total_bytes, b55.mem_used_bytes),
            (Some(1000), Some(600))
        );
        assert!((b55.cpu_util_pct.unwrap() - 25.0).abs() < 1e-9, "{b55:?}");

        // A point past the clock-skew allowance moves nothing: it comes back empty for
        // the validator to refuse, and the later points count from the 55 s scrape.
        let window = i64::MIN..=100_000;
        let v = send(&window, vec![node("node_load1", &[], &[(3_655_000, 9.0)])]);
        assert_eq!(load(&v), [(3655, None)]);
        let v = send(
            &window,
            vec![node("node_load1", &[], &[(70_000, 2.0), (85_000, 3.0)])],
        );
        assert_eq!(load(&v), [(70, Some(2.0)), (85, Some(3.0))]);

        // A staleness marker and a point older than the newest give no sample.
        let marker = f64::from_bits(0x7ff0_0000_0000_0002);
        let v = send(
            &ALL,
            vec![
                node("node_load1", &[], &[(100_000, marker)]),
                idle("0", &[(20_000, 105.0)]),
            ],
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn rapl_packages_split_over_requests_count_once_each() {
        let state = SeriesState::default();
        let send = |index: &str, points: &[(i64, f64)]| {
            let req = WriteRequest {
                timeseries: vec![rapl(index, points)],
            };
            energy_of(n1(&state, req, &ALL))
        };
        send("0", &[(10_000, 1_000.0)]);
        send("1", &[(10_000, 2_000.0)]);
        assert_eq!(send("0", &[(20_000, 1_100.0)]), [(20, Some(100.0))]);
        // The second part of the same scrape: both packages' energy, for the merge to keep.
        assert_eq!(send("1", &[(20_000, 2_200.0)]), [(20, Some(300.0))]);
    }

    #[test]
    fn hosts_are_remembered_only_once_built_not_when_a_request_merely_names_them() {
        // A token scoped to one host may name any number of others; mapping must not
        // keep state for them (only hosts in scope reach `build`).
        let state = SeriesState::default();
        let req = WriteRequest {
            timeseries: (0..50)
                .map(|i| {
                    series(
                        &[
                            ("__name__", "node_load1"),
                            ("instance", &format!("stranger-{i}:9100")),
                        ],
                        &[(1_000, 1.0)],
                    )
                })
                .collect(),
        };
        let mut m = map(req, 100).unwrap();
        assert_eq!(m.hosts.len(), 50);
        assert!(state.hosts.lock().unwrap().is_empty());
        let info = HostInfo {
            name: "stranger-7".into(),
            ..Default::default()
        };
        let (b, _) = build(
            &state,
            info,
            m.hosts.remove("stranger-7").unwrap(),
            &HashMap::new(),
            &ALL,
        );
        assert_eq!(b.host_samples[0].load1, Some(1.0));
        let kept: Vec<String> = state.hosts.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, ["stranger-7"]);
    }

    #[test]
    fn instance_ports_are_dropped_from_host_names() {
        for (inst, host) in [
            ("n1:9100", "n1"),
            ("n1", "n1"),
            ("[::1]:9100", "::1"),
            ("10.0.0.7:9100", "10.0.0.7"),
        ] {
            let ts = series(&[("instance", inst)], &[]);
            assert_eq!(host_of(&ts).as_deref(), Some(host));
        }
    }
}
