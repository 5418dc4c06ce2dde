//! Parse-don't-validate for ingest bodies: a raw JSON document in, a [`ValidBatch`]
//! and a list of [`Rejection`]s out. One bad sample never sinks the good ones around it.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::metrics::{self, Bounds, Sample, Value, MAX_BYTES};
use super::{
    AgentStats, Batch, GpuInfo, GpuSample, HardwareEvent, HostInfo, HostSample, Rejection,
    EVENT_KINDS,
};

/// Limits a sample must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub now: DateTime<Utc>,
    /// Oldest timestamp accepted (raw retention).
    pub max_age: Duration,
    /// Furthest future timestamp accepted (clock skew).
    pub max_future: Duration,
    /// Most items (samples, events, GPUs; valid or not) a batch may hold. Counted while
    /// parsing: a batch past it is refused before more work is done.
    pub max_items: usize,
}

impl Limits {
    /// The sample times accepted, in ms since the epoch: what [`check_ts`] lets through.
    /// Remote write moves its counter state only for points inside it.
    pub fn window_ms(&self) -> std::ops::RangeInclusive<i64> {
        (self.now - self.max_age).timestamp_millis()
            ..=(self.now + self.max_future).timestamp_millis()
    }
}

/// Rejections listed in detail in an answer; the rest are only counted.
pub const MAX_REJECTIONS_LISTED: usize = 1000;

/// Longest reason given for one rejection.
const MAX_REASON_CHARS: usize = 300;

/// A batch whose every item passed validation; `host` is checked too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidBatch {
    pub batch: Batch,
    /// The first [`MAX_REJECTIONS_LISTED`] rejections.
    pub rejections: Vec<Rejection>,
    /// All rejected items, listed or not.
    pub rejected: usize,
}

/// Why a whole request is refused (as opposed to single samples).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    /// More items than `Limits::max_items` (the count seen when parsing stopped).
    #[error("batch holds more than {limit} samples; at most {limit} (ingest.max_samples_per_batch) are accepted, split it")]
    TooLarge { limit: usize },
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

/// The items of a section, at most `max` of them (more is `TooLarge`, found without
/// holding more than `max + 1` item references).
fn section<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
    max: usize,
) -> Result<Vec<&'a RawValue>, BatchError> {
    const OVER: &str = "rackwatch: section over the item limit";
    struct Bounded(usize);
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(item) = seq.next_element::<&RawValue>()? {
                if v.len() == self.0 {
                    return Err(serde::de::Error::custom(OVER));
                }
                v.push(item);
            }
            Ok(v)
        }
    }
    match raw {
        None => Ok(Vec::new()),
        Some(r) if r.get() == "null" => Ok(Vec::new()),
        Some(r) => {
            let mut de = serde_json::Deserializer::from_str(r.get());
            match serde::Deserializer::deserialize_seq(&mut de, Bounded(max)) {
                Ok(v) => Ok(v),
                Err(e) if e.to_string().starts_with(OVER) => {
                    Err(BatchError::TooLarge { limit: max })
                }
                Err(_) => Err(BatchError::Shape(format!(
                    "field `{name}` must be an array"
                ))),
            }
        }
    }
}

/// Parse and validate an ingest body.
///
/// Two routes give the same answer. The fast one reads the body once, typing and
/// checking each item as the parser reaches it. It gives up on anything unusual (an item
/// of the wrong JSON type, a duplicate or missing top-level field, a bad host); the body
/// is then read again section by section, each item on its own, which is what names a
/// malformed item without losing the others.
pub fn parse_batch(body: &[u8], limits: &Limits) -> Result<ValidBatch, BatchError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BatchError::Json(format!("body is not UTF-8: {e}")))?;
    match fast::parse(text, limits) {
        fast::Outcome::Done(v) => Ok(*v),
        fast::Outcome::TooLarge => Err(BatchError::TooLarge {
            limit: limits.max_items,
        }),
        fast::Outcome::Fallback => parse_sections(text, limits),
    }
}

/// Validate a batch built in memory (Prometheus remote write maps its series to one):
/// the same checks, rejections and limits as [`parse_batch`], item by item.
pub fn validate_batch(batch: Batch, limits: &Limits) -> Result<ValidBatch, BatchError> {
    validate_host(&batch.host).map_err(BatchError::Shape)?;
    if batch.gpus.len() + batch.len() > limits.max_items {
        return Err(BatchError::TooLarge {
            limit: limits.max_items,
        });
    }
    // Room for every GPU sample up front (the builder sizes by body length).
    let mut b = Builder::new(limits, batch.gpu_samples.len() * 300);
    for (i, g) in batch.gpus.into_iter().enumerate() {
        b.gpu(i, Ok(g));
    }
    for (i, s) in batch.host_samples.into_iter().enumerate() {
        b.host_sample(i, Ok(s));
    }
    for (i, s) in batch.gpu_samples.into_iter().enumerate() {
        b.gpu_sample(i, Ok(s));
    }
    for (i, e) in batch.events.into_iter().enumerate() {
        b.event(i, Ok(e));
    }
    Ok(b.finish(batch.host, batch.agent))
}

/// The item-by-item route: each sample is typed from its own raw JSON text.
fn parse_sections(text: &str, limits: &Limits) -> Result<ValidBatch, BatchError> {
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
    // The error names the field inside `host` (`host.site`, `host.labels.team`).
    let mut de = serde_json::Deserializer::from_str(host_v.get());
    let host: HostInfo = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let why = json_reason(&e.into_inner());
        BatchError::Shape(if path == "." {
            format!("field `host`: {why}")
        } else {
            format!("field `host.{path}`: {why}")
        })
    })?;
    validate_host(&host).map_err(BatchError::Shape)?;

    let agent = raw.agent.and_then(|a| serde_json::from_str(a.get()).ok());
    let max = limits.max_items;
    let gpus = section(raw.gpus, "gpus", max)?;
    let host_samples = section(raw.host_samples, "host_samples", max)?;
    let gpu_samples = section(raw.gpu_samples, "gpu_samples", max)?;
    let events = section(raw.events, "events", max)?;
    if gpus.len() + host_samples.len() + gpu_samples.len() + events.len() > max {
        return Err(BatchError::TooLarge { limit: max });
    }

    let mut b = Builder::new(limits, text.len());
    for (i, v) in gpus.into_iter().enumerate() {
        b.gpu(i, typed(v));
    }
    for (i, v) in host_samples.into_iter().enumerate() {
        b.host_sample(i, typed(v));
    }
    for (i, v) in gpu_samples.into_iter().enumerate() {
        b.gpu_sample(i, typed(v));
    }
    for (i, v) in events.into_iter().enumerate() {
        b.event(i, typed(v));
    }
    Ok(b.finish(host, agent))
}

type Item<T> = Result<T, (Option<&'static str>, String)>;

/// Checks typed items one by one and keeps the valid ones; both routes feed it, so they
/// accept, reject and explain alike.
struct Builder<'l> {
    limits: &'l Limits,
    batch: Batch,
    /// Rejections per section, in the order the sections are listed in answers.
    rejected: [Vec<Rejection>; 5],
    seen_gpu: HashSet<u8>,
    seen_ts: HashSet<u128>,
    seen_gpu_ts: HashSet<u128>,
    /// Events by what the store keys them on: GPU (-1: host-wide), time to the
    /// microsecond, kind and code.
    seen_events: HashSet<(i16, i64, String, i64)>,
    /// Body length: room for this many samples is made at the first one, not grown
    /// step by step.
    body_len: usize,
    /// Items seen so far, valid or not.
    items: usize,
    /// Rejections seen so far, listed or not.
    rejected_total: usize,
}

/// A sample's identity as one number (one hash write instead of four): GPU and time to
/// the microsecond, as the store keeps it (a leap second's fraction stays in its second).
/// Two samples a few nanoseconds apart are one row there, so they are one here too.
fn sample_key(index: u8, ts: DateTime<Utc>) -> u128 {
    (u128::from(index) << 96)
        | (u128::from(ts.timestamp() as u64) << 32)
        | u128::from(ts.timestamp_subsec_micros().min(999_999))
}

/// Times are kept to the microsecond: said when two samples differ only below it.
fn same_micro(ts: DateTime<Utc>) -> &'static str {
    if !ts.timestamp_subsec_nanos().is_multiple_of(1000)
        || ts.timestamp_subsec_nanos() >= 1_000_000_000
    {
        " (times are kept to the microsecond)"
    } else {
        ""
    }
}

/// Expected samples in a body of `len` bytes (a GPU sample is about 300 bytes of JSON),
/// bounded so that a large body cannot make a large allocation up front.
fn expected_samples(len: usize) -> usize {
    (len / 300).min(4096)
}

const SECTIONS: [&str; 5] = ["gpus", "host_samples", "gpu_samples", "events", "agent"];

/// A reason cut to [`MAX_REASON_CHARS`] (a reason may quote what was sent).
fn bounded(reason: String) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((i, _)) => format!("{}… ({} bytes)", &reason[..i], reason.len()),
        None => reason,
    }
}

/// Text a client sent, quoted in an error: at most 40 characters of it.
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}… ({} bytes)", &s[..i], s.len()),
        None => format!("{s:?}"),
    }
}

impl<'l> Builder<'l> {
    fn new(limits: &'l Limits, body_len: usize) -> Self {
        Builder {
            limits,
            batch: Batch::default(),
            rejected: Default::default(),
            seen_gpu: HashSet::new(),
            seen_ts: HashSet::new(),
            seen_gpu_ts: HashSet::new(),
            seen_events: HashSet::new(),
            body_len,
            items: 0,
            rejected_total: 0,
        }
    }

    /// Count one more item; false once the batch is past `max_items`.
    fn admit(&mut self) -> bool {
        self.items += 1;
        self.items <= self.limits.max_items
    }

    fn reject(&mut self, section: usize, index: usize, field: Option<&str>, reason: String) {
        self.rejected_total += 1;
        if self.rejected_total > MAX_REJECTIONS_LISTED {
            return;
        }
        self.rejected[section].push(Rejection {
            section: SECTIONS[section].to_string(),
            index,
            field: field.map(str::to_string),
            reason: bounded(reason),
        });
    }

    fn gpu(&mut self, i: usize, g: Item<GpuInfo>) -> bool {
        if !self.admit() {
            return false;
        }
        match g.and_then(|g| check_gpu_info(&g).map(|_| g)) {
            Ok(g) if !self.seen_gpu.insert(g.index) => self.reject(
                0,
                i,
                Some("index"),
                format!("GPU index {} listed twice", g.index),
            ),
            Ok(g) => self.batch.gpus.push(g),
            Err((field, reason)) => self.reject(0, i, field, reason),
        }
        true
    }

    fn host_sample(&mut self, i: usize, s: Item<HostSample>) -> bool {
        if !self.admit() {
            return false;
        }
        match s.and_then(|s| check_metrics(&s, self.limits).map(|_| s)) {
            Ok(s) if !self.seen_ts.insert(sample_key(0, s.ts)) => self.reject(
                1,
                i,
                Some("ts"),
                format!(
                    "duplicate of an earlier sample at {}{}",
                    s.ts.to_rfc3339(),
                    same_micro(s.ts)
                ),
            ),
            Ok(s) => self.batch.host_samples.push(s),
            Err((field, reason)) => self.reject(1, i, field, reason),
        }
        true
    }

    fn gpu_sample(&mut self, i: usize, s: Item<GpuSample>) -> bool {
        if !self.admit() {
            return false;
        }
        if self.seen_gpu_ts.capacity() == 0 {
            let n = expected_samples(self.body_len);
            self.seen_gpu_ts.reserve(n);
            self.batch.gpu_samples.reserve(n);
        }
        match s.and_then(|s| check_metrics(&s, self.limits).map(|_| s)) {
            Ok(s) if !self.seen_gpu_ts.insert(sample_key(s.index, s.ts)) => self.reject(
                2,
                i,
                Some("ts"),
                format!(
                    "duplicate of an earlier sample of GPU {} at {}{}",
                    s.index,
                    s.ts.to_rfc3339(),
                    same_micro(s.ts)
                ),
            ),
            Ok(s) => self.batch.gpu_samples.push(s),
            Err((field, reason)) => self.reject(2, i, field, reason),
        }
        true
    }

    fn event(&mut self, i: usize, e: Item<HardwareEvent>) -> bool {
        if !self.admit() {
            return false;
        }
        match e.and_then(|e| check_event(&e, self.limits).map(|_| e)) {
            // Stored once per GPU, time, kind and code: a second one would be dropped by
            // the store without a word, whatever its message or count.
            Ok(e)
                if !self.seen_events.insert((
                    e.index.map_or(-1, i16::from),
                    e.ts.timestamp_micros(),
                    e.kind.clone(),
                    e.code.unwrap_or(0),
                )) =>
            {
                self.reject(
                    3,
                    i,
                    Some("ts"),
                    format!(
                        "duplicate of an earlier {} event{}{} at {}: send one event per GPU, kind, code and time, with `count` for recurrences",
                        e.kind,
                        e.code.map_or(String::new(), |c| format!(" (code {c})")),
                        e.index.map_or(String::new(), |g| format!(" of GPU {g}")),
                        e.ts.to_rfc3339()
                    ),
                )
            }
            Ok(e) => self.batch.events.push(e),
            Err((field, reason)) => self.reject(3, i, field, reason),
        }
        true
    }

    fn finish(mut self, host: HostInfo, agent: Option<AgentStats>) -> ValidBatch {
        self.batch.host = host;
        // The agent's own report: kept when its text is sane, else left out with a reason
        // (the samples are not the agent's fault).
        self.batch.agent = match agent {
            Some(a) => match check_text("agent.version", &a.version, 0, 64).and_then(|()| {
                a.instance
                    .as_deref()
                    .map_or(Ok(()), |i| check_text("agent.instance", i, 1, 64))
            }) {
                Ok(()) => Some(a),
                Err(why) => {
                    let field = if why.starts_with("agent.instance") {
                        "instance"
                    } else {
                        "version"
                    };
                    self.reject(4, 0, Some(field), why);
                    None
                }
            },
            None => None,
        };
        ValidBatch {
            batch: self.batch,
            rejections: self.rejected.into_iter().flatten().collect(),
            rejected: self.rejected_total,
        }
    }
}

/// The one-pass route: a streaming parse of the whole body that types and checks each
/// item where it stands. `None` means "take the item-by-item route", never "invalid".
mod fast {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{validate_host, AgentStats, Builder, HostInfo, Item, Limits, ValidBatch};

    /// How the one-pass route ended.
    pub(super) enum Outcome {
        Done(Box<ValidBatch>),
        /// More items than the limit: stop, whatever the rest holds.
        TooLarge,
        /// Something unusual: take the item-by-item route.
        Fallback,
    }

    /// The error the item callback raises to stop the parse at the item limit.
    const OVER_LIMIT: &str = "rackwatch: over the item limit";

    pub(super) fn parse(text: &str, limits: &Limits) -> Outcome {
        let mut de = serde_json::Deserializer::from_str(text);
        let (host, agent, b) = match Body(Builder::new(limits, text.len())).deserialize(&mut de) {
            Ok(r) => r,
            Err(e) if e.to_string().starts_with(OVER_LIMIT) => return Outcome::TooLarge,
            Err(_) => return Outcome::Fallback,
        };
        if de.end().is_err() {
            return Outcome::Fallback;
        }
        match host {
            Some(host) if validate_host(&host).is_ok() => {
                Outcome::Done(Box::new(b.finish(host, agent)))
            }
            _ => Outcome::Fallback,
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum Key {
        Host,
        Agent,
        Gpus,
        HostSamples,
        GpuSamples,
        Events,
        #[serde(other)]
        Other,
    }

    struct Body<'l>(Builder<'l>);

    type Parsed<'l> = (Option<HostInfo>, Option<AgentStats>, Builder<'l>);

    impl<'de, 'l> DeserializeSeed<'de> for Body<'l> {
        type Value = Parsed<'l>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, 'l> Visitor<'de> for Body<'l> {
        type Value = Parsed<'l>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an ingest body")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut host, mut agent) = (None, None);
            let mut seen = [false; 6];
            while let Some(key) = map.next_key::<Key>()? {
                let slot = match key {
                    Key::Host => 0,
                    Key::Agent => 1,
                    Key::Gpus => 2,
                    Key::HostSamples => 3,
                    Key::GpuSamples => 4,
                    Key::Events => 5,
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                };
                if std::mem::replace(&mut seen[slot], true) {
                    return Err(de::Error::custom("duplicate field"));
                }
                let b = &mut self.0;
                match key {
                    Key::Host => host = Some(map.next_value::<HostInfo>()?),
                    Key::Agent => agent = map.next_value::<Option<AgentStats>>()?,
                    Key::Gpus => map.next_value_seed(items(|i, v| b.gpu(i, v)))?,
                    Key::HostSamples => map.next_value_seed(items(|i, v| b.host_sample(i, v)))?,
                    Key::GpuSamples => map.next_value_seed(items(|i, v| b.gpu_sample(i, v)))?,
                    Key::Events => map.next_value_seed(items(|i, v| b.event(i, v)))?,
                    Key::Other => unreachable!(),
                }
            }
            Ok((host, agent, self.0))
        }
    }

    /// A section: an array (or null) whose items go to the builder as they are parsed.
    struct Items<T, F>(F, PhantomData<fn() -> T>);

    fn items<T, F: FnMut(usize, Item<T>) -> bool>(f: F) -> Items<T, F> {
        Items(f, PhantomData)
    }

    impl<'de, T: de::Deserialize<'de>, F: FnMut(usize, Item<T>) -> bool> DeserializeSeed<'de>
        for Items<T, F>
    {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, T: de::Deserialize<'de>, F: FnMut(usize, Item<T>) -> bool> Visitor<'de> for Items<T, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(v) = seq.next_element::<T>()? {
                if !(self.0)(i, Ok(v)) {
                    return Err(de::Error::custom(OVER_LIMIT));
                }
                i += 1;
            }
            Ok(())
        }
    }
}

type Check = Result<(), (Option<&'static str>, String)>;

/// An item decoded on its own, its error naming the field it is about (`ts`, `util_pct`)
/// and saying what JSON was wanted, without serde's line and column within the item.
fn typed<T: DeserializeOwned>(v: &RawValue) -> Item<T> {
    let mut de = serde_json::Deserializer::from_str(v.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let why = json_reason(&e.into_inner());
        match item_field(&path) {
            Some(f) => (Some(f), why),
            None if path == "." => (None, why),
            None => (None, format!("{path}: {why}")),
        }
    })
}

/// The fields of batch items, as `&'static str` for rejections.
fn item_field(path: &str) -> Option<&'static str> {
    const OTHER: [&str; 12] = [
        "ts",
        "index",
        "uuid",
        "model",
        "memory_total_bytes",
        "power_limit_watts",
        "driver_version",
        "kind",
        "code",
        "message",
        "count",
        "throttle_reasons",
    ];
    metrics::HOST_METRICS
        .iter()
        .chain(metrics::GPU_METRICS.iter())
        .map(|m| m.name)
        .chain(OTHER)
        .find(|f| *f == path)
}

/// A JSON decoding error in words a client can act on: serde's text without its position,
/// and the JSON wanted instead of the Rust type ("expected a number", not "expected f64").
pub fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let why = text.strip_suffix(&at).unwrap_or(&text);
    let Some((head, wanted)) = why.rsplit_once(", expected ") else {
        return match why {
            // chrono's words for a time it cannot read.
            "input contains invalid characters" | "premature end of input" | "trailing input" => {
                format!("{why}: a time is RFC 3339 with its offset, like 2026-12-06T11:51:43Z")
            }
            _ => why.to_string(),
        };
    };
    let plain = match wanted {
        "f32" | "f64" => "a number",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "bool" => "true or false",
        "a borrowed string" => "a string",
        _ => return why.to_string(),
    };
    format!("{head}, expected {plain}")
}

/// Characters a token's note may have (the admin form's `maxlength`).
pub const TOKEN_NOTE_MAX: usize = 200;

/// A token's note: at most [`TOKEN_NOTE_MAX`] characters, no control characters.
pub fn token_note(note: &str) -> Result<(), String> {
    let n = note.trim().chars().count();
    if n > TOKEN_NOTE_MAX {
        return Err(format!(
            "the note has {n} characters; at most {TOKEN_NOTE_MAX}"
        ));
    }
    if note.chars().any(hidden_char) {
        return Err("the note holds a control or text-direction character".into());
    }
    Ok(())
}

/// A host name as agents report it and tokens are bound to it: printable, bounded, no
/// spaces, and not one of the scopes the token list shows for other kinds of token
/// (`pool:…`, `write:…`). Other characters, HTML included, are allowed and escaped where
/// shown.
pub fn host_name(name: &str) -> Result<(), String> {
    check_text("host.name", name, 1, 253)?;
    if name.chars().any(char::is_whitespace) {
        return Err(format!("host.name {} holds a space", quoted(name)));
    }
    // Invisible characters would let a name pass for another (`\u{200B}pool:a100`).
    if let Some(c) = name.chars().find(|c| {
        matches!(c, '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    }) {
        return Err(format!(
            "host.name {} holds the invisible character U+{:04X}",
            quoted(name),
            u32::from(c)
        ));
    }
    let lower = name.to_lowercase();
    if let Some(p) = ["pool:", "write:", "pool：", "write："]
        .iter()
        .find(|p| lower.starts_with(**p))
    {
        return Err(format!(
            "host.name {} starts with {p}, which names other kinds of token",
            quoted(name)
        ));
    }
    // A path segment of its own: /hosts/.. would be the fleet page.
    if name == "." || name == ".." {
        return Err(format!(
            "host.name {} is a path segment, not a name",
            quoted(name)
        ));
    }
    Ok(())
}

/// A pool name a scheduler token is scoped to (a pool with no name is no pool).
pub fn pool_name(pool: &str) -> Result<(), String> {
    check_text("host.pool", pool, 1, 64)
}

pub fn validate_host(h: &HostInfo) -> Result<(), String> {
    host_name(&h.name)?;
    for (what, v) in [
        ("host.site", &h.site),
        ("host.rack", &h.rack),
        ("host.pool", &h.pool),
    ] {
        check_text(what, v, 0, 64)?;
        // In page paths "-" stands for "none", and "." and ".." would be read as paths.
        if matches!(v.as_str(), "-" | "." | "..") {
            return Err(format!(
                "{what} {} is reserved (pages use \"-\" for none); leave it empty or name it",
                quoted(v)
            ));
        }
    }
    if h.labels.len() > super::MAX_HOST_LABELS {
        return Err(format!(
            "host.labels has {} entries; at most {} are allowed",
            h.labels.len(),
            super::MAX_HOST_LABELS
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
                "host.labels key {} must match [A-Za-z_][A-Za-z0-9_.-]* (≤ 64 chars)",
                quoted(k)
            ));
        }
        check_text(&format!("host.labels.{k}"), v, 0, 256)?;
    }
    Ok(())
}

/// A character text from outside may not hold: a control character, or one that turns
/// the direction of the text after it (U+202A–U+202E, U+2066–U+2069, the marks U+200E,
/// U+200F and U+061C): shown on a page, such a character in a message would turn the
/// product's own words beside it around.
pub fn hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
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
    if let Some(c) = s.chars().find(|c| hidden_char(*c)) {
        return Err(if c.is_control() {
            format!("{what} contains control characters")
        } else {
            format!(
                "{what} contains the text-direction character U+{:04X}, which would turn the text after it around on pages",
                u32::from(c)
            )
        });
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

/// A value and its unit for an error: short (1e308, not 309 digits), no stray space
/// when the metric has no unit.
fn amount(x: f64, unit: &str) -> String {
    let n = if x != 0.0 && !(1e-6..1e15).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn range(field: &'static str, v: Option<f64>, lo: f64, hi: f64, unit: &str) -> Check {
    match v {
        None => Ok(()),
        Some(x) if !x.is_finite() => Err((Some(field), format!("{x} is not a finite number"))),
        Some(x) if x < lo => Err((
            Some(field),
            format!(
                "{} is below the minimum {}",
                amount(x, unit),
                amount(lo, unit)
            ),
        )),
        Some(x) if x > hi => Err((
            Some(field),
            format!(
                "{} is above the maximum {}",
                amount(x, unit),
                amount(hi, unit)
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// A sample's metrics against their bounds in the metric table, in table order (the first
/// bad field is the one reported).
fn check_metrics<S: Sample>(s: &S, l: &Limits) -> Check {
    check_ts(s.ts(), l)?;
    s.try_for_each_value(|_, m, v| {
        match m.bounds {
            Bounds::Any => {}
            Bounds::Range { lo, hi } => range(m.name, v.as_f64(), lo, hi, m.unit)?,
            Bounds::Bytes => range(m.name, v.as_f64(), 0.0, MAX_BYTES, m.unit)?,
            Bounds::TotalOf(used) => {
                range(m.name, v.as_f64(), 0.0, MAX_BYTES, m.unit)?;
                let u = metrics::index_of(S::METRICS, used).map(|k| s.value(k));
                if let (Some(Value::U64(Some(u))), Value::U64(Some(t))) = (u, v) {
                    if u > t {
                        return Err((
                            Some(used),
                            format!("{u} B used is more than the {t} B total"),
                        ));
                    }
                }
            }
            Bounds::Count => {
                // Stored as BIGINT. (Compared as integers: as f64, values just above
                // i64::MAX round down to it and would pass.)
                if let Value::U64(Some(v)) = v.filter_above(i64::MAX as u64) {
                    return Err((
                        Some(m.name),
                        format!(
                            "{v} is above the maximum {} (a 64-bit signed count)",
                            i64::MAX
                        ),
                    ));
                }
            }
        }
        Ok(())
    })
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
                "unknown event kind {}; known kinds: {}",
                quoted(&e.kind),
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
            max_items: 100_000,
        }
    }

    #[test]
    fn host_names_are_printable_without_spaces_or_other_tokens_scopes() {
        for ok in [
            "gpu-17",
            "node-01.fra1.example.net",
            "ünï-host",
            "<b>x</b>",
            "a_b",
        ] {
            assert_eq!(host_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            ("host with space", "holds a space"),
            ("tab\there", "control characters"),
            ("pool:train-a", "starts with pool:"),
            ("write:site:fra1", "starts with write:"),
            ("Pool:a100", "starts with pool:"),
            ("pool：a100", "starts with pool："),
            ("\u{200B}pool:a100", "invisible character U+200B"),
            ("ps-\u{2060}", "invisible character U+2060"),
            ("\u{FEFF}write:site1", "invisible character U+FEFF"),
            ("..", "a path segment"),
            (".", "a path segment"),
        ] {
            let e = host_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(host_name(&"h".repeat(254)).is_err());
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
        // A field that does not decode is named, as one that fails its check is.
        assert!(reasons.contains(&("host_samples", 4, Some("ts".into()))));
        assert!(reasons.contains(&("host_samples", 5, Some("ts".into()))));
        assert!(reasons.contains(&("host_samples", 6, Some("mem_used_bytes".into()))));
        assert!(reasons.contains(&("gpu_samples", 0, Some("power_watts".into()))));
        assert!(reasons.contains(&("gpu_samples", 2, Some("index".into()))));
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
    fn an_event_the_store_would_merge_into_an_earlier_one_is_refused_with_a_reason() {
        let body = json!({
            "host": {"name": "gpu-1"},
            "events": [
                {"ts": "2026-11-23T11:59:00Z", "index": 1, "kind": "xid", "code": 79, "message": "A"},
                {"ts": "2026-11-23T11:59:00Z", "index": 1, "kind": "xid", "code": 79, "message": "B"},
                {"ts": "2026-11-23T11:59:00Z", "index": 2, "kind": "xid", "code": 79, "message": "A"},
                {"ts": "2026-11-23T11:59:00Z", "index": 1, "kind": "xid", "code": 48},
                {"ts": "2026-11-23T11:59:00Z", "kind": "gpu_lost"},
                {"ts": "2026-11-23T11:59:00Z", "kind": "gpu_lost", "message": "again"}
            ]
        });
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        let kept: Vec<_> = v.batch.events.iter().map(|e| (e.index, e.code)).collect();
        assert_eq!(
            kept,
            [
                (Some(1), Some(79)),
                (Some(2), Some(79)),
                (Some(1), Some(48)),
                (None, None)
            ]
        );
        let refused: Vec<_> = v
            .rejections
            .iter()
            .map(|r| (r.section.as_str(), r.index))
            .collect();
        assert_eq!(refused, [("events", 1), ("events", 5)]);
        assert!(
            v.rejections[0].reason.starts_with(
                "duplicate of an earlier xid event (code 79) of GPU 1 at 2026-11-23T11:59:00+00:00"
            ),
            "{}",
            v.rejections[0].reason
        );
    }

    #[test]
    fn placements_that_pages_read_as_paths_or_as_none_are_refused() {
        for (field, v) in [("site", "-"), ("rack", "."), ("pool", "..")] {
            let mut h = HostInfo {
                name: "gpu-1".into(),
                ..Default::default()
            };
            match field {
                "site" => h.site = v.into(),
                "rack" => h.rack = v.into(),
                _ => h.pool = v.into(),
            }
            let e = validate_host(&h).unwrap_err();
            assert!(
                e.starts_with(&format!("host.{field} \"{v}\" is reserved")),
                "{e}"
            );
        }
        let ok = HostInfo {
            name: "gpu-1".into(),
            rack: "r-1".into(),
            ..Default::default()
        };
        assert!(validate_host(&ok).is_ok());
    }

    #[test]
    fn samples_the_store_would_keep_as_one_row_are_refused_with_a_reason() {
        // The store keeps times to the microsecond: 100 ns apart is one row there.
        let body = json!({
            "host": {"name": "gpu-1"},
            "host_samples": [
                {"ts": "2026-11-23T12:00:00.0000001Z", "cpu_util_pct": 1.0},
                {"ts": "2026-11-23T12:00:00.0000002Z", "cpu_util_pct": 2.0},
                {"ts": "2026-11-23T12:00:00.000001Z", "cpu_util_pct": 3.0}
            ],
            "gpu_samples": [
                {"ts": "2026-11-23T12:00:00.0000001Z", "index": 0, "util_pct": 10.0},
                {"ts": "2026-11-23T12:00:00.0000009Z", "index": 0, "util_pct": 90.0},
                {"ts": "2026-11-23T12:00:00.0000009Z", "index": 1, "util_pct": 90.0}
            ]
        });
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.host_samples.len(), 2);
        assert_eq!(v.batch.gpu_samples.len(), 2);
        let refused: Vec<_> = v
            .rejections
            .iter()
            .map(|r| (r.section.as_str(), r.index, r.field.as_deref()))
            .collect();
        assert_eq!(
            refused,
            [
                ("host_samples", 1, Some("ts")),
                ("gpu_samples", 1, Some("ts"))
            ]
        );
        for r in &v.rejections {
            assert!(
                r.reason.ends_with("(times are kept to the microsecond)"),
                "{}",
                r.reason
            );
        }
    }

    #[test]
    fn a_bad_host_field_is_named_by_its_path() {
        for (host, says) in [
            (json!({"name": "gpu-1", "site": 5}), "field `host.site`: "),
            (
                json!({"name": "gpu-1", "labels": {"team": 1}}),
                "field `host.labels.team`: ",
            ),
            (json!({}), "field `host`: missing field `name`"),
        ] {
            let body = json!({ "host": host });
            let Err(e) = parse_batch(body.to_string().as_bytes(), &limits()) else {
                panic!("{host} accepted");
            };
            assert!(e.to_string().contains(says), "{host}: {e}");
        }
    }

    #[test]
    fn host_labels_past_the_limit_are_refused_before_they_are_all_read() {
        let labels: serde_json::Map<String, serde_json::Value> =
            (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
        let body = json!({"host": {"name": "gpu-1", "labels": labels}});
        let Err(e) = parse_batch(body.to_string().as_bytes(), &limits()) else {
            panic!("40 labels refused");
        };
        assert!(
            e.to_string()
                .contains("host.labels has more than 32 entries"),
            "{e}"
        );
        let labels: serde_json::Map<String, serde_json::Value> =
            (0..32).map(|i| (format!("k{i}"), json!("v"))).collect();
        let body = json!({"host": {"name": "gpu-1", "labels": labels}});
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.host.labels.len(), 32);
    }

    #[test]
    fn a_text_direction_character_is_refused_where_it_stands() {
        let body = json!({
            "host": {"name": "gpu-1"},
            "events": [
                {"ts": "2026-11-23T11:59:00Z", "index": 1, "kind": "xid", "code": 79, "message": "fallen off the bus"},
                {"ts": "2026-11-23T11:59:01Z", "index": 1, "kind": "xid", "code": 79, "message": "\u{202E}sub eht ffo"}
            ]
        });
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.events.len(), 1);
        assert_eq!(v.rejections.len(), 1);
        let r = &v.rejections[0];
        assert_eq!(
            (r.section.as_str(), r.index, r.field.as_deref()),
            ("events", 1, Some("message"))
        );
        assert!(
            r.reason.contains("text-direction character U+202E"),
            "{}",
            r.reason
        );
        for c in ['\u{2066}', '\u{200F}', '\u{061C}'] {
            assert!(hidden_char(c), "{c:?}");
        }
        assert!(
            !hidden_char('é') && !hidden_char('\u{05D0}'),
            "letters of any script are text"
        );
    }

    #[test]
    fn a_nul_character_is_refused_where_it_stands_and_never_reaches_the_store() {
        // Postgres refuses U+0000 in text; every text field of a batch must stop it first:
        // the host's fields refuse the batch, an item's field that item only.
        let ok_sample = json!({"ts": "2026-11-23T11:59:00Z", "cpu_util_pct": 5.0});
        for host in [
            json!({"name": "gpu\u{0}-1"}),
            json!({"name": "gpu-1", "site": "a\u{0}"}),
            json!({"name": "gpu-1", "rack": "\u{0}"}),
            json!({"name": "gpu-1", "pool": "p\u{0}"}),
            json!({"name": "gpu-1", "labels": {"team": "x\u{0}"}}),
            json!({"name": "gpu-1", "labels": {"te\u{0}am": "x"}}),
        ] {
            let body = json!({"host": host, "host_samples": [ok_sample]}).to_string();
            assert!(body.contains("\\u0000"), "{body}");
            assert!(parse_batch(body.as_bytes(), &limits()).is_err(), "{body}");
        }
        let items = [
            ("gpus", json!({"index": 0, "uuid": "GPU-\u{0}"})),
            ("gpus", json!({"index": 0, "model": "H100\u{0}"})),
            ("gpus", json!({"index": 0, "driver_version": "\u{0}"})),
            (
                "events",
                json!({"ts": "2026-11-23T11:59:00Z", "kind": "xid", "code": 79, "message": "fell off\u{0}"}),
            ),
            (
                "events",
                json!({"ts": "2026-11-23T11:59:00Z", "kind": "x\u{0}id", "code": 79}),
            ),
        ];
        for (section, item) in items {
            let body =
                json!({"host": {"name": "gpu-1"}, "host_samples": [ok_sample], section: [item]})
                    .to_string();
            let v = parse_batch(body.as_bytes(), &limits()).unwrap();
            assert_eq!(v.batch.host_samples.len(), 1, "{body}");
            assert_eq!(v.rejections.len(), 1, "{body}: {:?}", v.rejections);
            assert!(
                v.batch.gpus.is_empty() && v.batch.events.is_empty(),
                "{body}"
            );
        }
        let body = json!({"host": {"name": "gpu-1"}, "host_samples": [ok_sample], "agent": {"version": "1\u{0}"}})
            .to_string();
        let v = parse_batch(body.as_bytes(), &limits()).unwrap();
        assert!(v.batch.agent.is_none());
        assert_eq!(v.batch.host_samples.len(), 1);
    }

    /// Both routes on one body: the fast one must give the item-by-item answer or none.
    fn both_routes(body: &str) -> Option<ValidBatch> {
        let slow = parse_sections(body, &limits());
        let fast = match fast::parse(body, &limits()) {
            fast::Outcome::Done(v) => Some(*v),
            _ => None,
        };
        if let Some(f) = &fast {
            assert_eq!(Ok(f), slow.as_ref().map_err(|e| e.to_string()), "{body}");
        }
        fast
    }

    #[test]
    fn the_one_pass_route_answers_like_the_item_by_item_route() {
        let t = "2026-11-23T11:59:00Z";
        let full_gpu = json!({"ts": "2026-11-23T11:58:00.123456789Z", "index": 3, "util_pct": 99.5,
            "mem_util_pct": 0.1, "mem_used_bytes": 1u64 << 40, "mem_total_bytes": 1u64 << 41,
            "power_watts": 650.25, "energy_joules_total": 1e17, "temp_celsius": -12.5,
            "mem_temp_celsius": 80, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "fan_pct": 0,
            "throttle_reasons": u64::MAX, "power_limit_watts": 700, "energy_joules": 5e-324,
            "pcie_rx_bytes_per_s": 1e12, "pcie_tx_bytes_per_s": 0.0, "pcie_replay_total": i64::MAX,
            "ecc_sbe_total": 0, "ecc_dbe_total": 1, "retired_pages_sbe": 2, "retired_pages_dbe": 3,
            "retired_pages_pending": false, "remapped_rows_correctable": 4,
            "remapped_rows_uncorrectable": 5, "remapped_rows_pending": true,
            "remapped_rows_failure": false, "mig_enabled": true, "future_field": {"x": [1, 2]}});
        let fast_ones = [
            json!({"host": {"name": "a"}}),
            json!({"gpu_samples": [full_gpu], "host": {"name": "a", "labels": {"k": "v"}}, "extra": 1}),
            json!({"host": {"name": "a"}, "gpus": null, "host_samples": null, "gpu_samples": [], "events": []}),
            json!({"host": {"name": "a"}, "agent": {"version": "1.2", "spool_batches": 3}}),
            json!({"host": {"name": "a"}, "agent": null}),
            // Checks that fail leave the fast route on it, with the same reasons.
            json!({
                "host": {"name": "gpu-1"},
                "gpus": [{"index": 0, "model": "H100"}, {"index": 0}, {"index": 1, "power_limit_watts": -1}],
                "host_samples": [
                    {"ts": t, "cpu_util_pct": 50.0},
                    {"ts": "2026-11-23T11:59:05Z", "cpu_util_pct": 150.0},
                    {"ts": "2027-01-01T00:00:00Z"},
                    {"ts": "2020-01-01T00:00:00Z"},
                    {"ts": t, "cpu_util_pct": 1.0},
                    {"ts": "2026-11-23T11:59:10+00:00", "mem_used_bytes": 10, "mem_total_bytes": 5}
                ],
                "gpu_samples": [
                    {"ts": t, "index": 0, "power_watts": -3.0},
                    {"ts": t, "index": 0, "power_watts": 300.0},
                    {"ts": t, "index": 0, "power_watts": 301.0},
                    {"ts": t, "index": 1, "ecc_sbe_total": 9223372036854775808u64}
                ],
                "events": [{"ts": t, "kind": "meteor"}, {"ts": t, "kind": "xid", "code": 79}]
            }),
        ];
        for body in &fast_ones {
            let body = body.to_string();
            assert!(both_routes(&body).is_some(), "{body}");
        }
        // Anything unusual goes the item-by-item way, which names the problem.
        let slow_ones = [
            r#"{"host": {"name": "a"}, "gpu_samples": [{"ts": "x", "index": 0}]}"#.to_string(),
            r#"{"host": {"name": "a"}, "host_samples": [{"ts": "2026-11-23T11:59:00Z", "load1": "high"}]}"#.into(),
            r#"{"host": {"name": "a"}, "gpu_samples": 3}"#.into(),
            r#"{"host": {"name": "a"}, "host": {"name": "b"}}"#.into(),
            r#"{"host": {"name": ""}}"#.into(),
            r#"{"host": null}"#.into(),
            r#"{"gpus": []}"#.into(),
            r#"[1, 2]"#.into(),
            r#"{"host": {"name": "a"}} x"#.into(),
            r#"{"host": {"name": "a"}, "agent": {"version": 3}}"#.into(),
            r#"{"host": {"name": "a"}, "#.into(),
        ];
        for body in &slow_ones {
            assert!(both_routes(body).is_none(), "{body}");
            // And parse_batch still answers (or refuses) as the item-by-item route does.
            let a = parse_batch(body.as_bytes(), &limits()).map_err(|e| e.to_string());
            let b = parse_sections(body, &limits()).map_err(|e| e.to_string());
            assert_eq!(a, b, "{body}");
        }
        let v = parse_batch(slow_ones[0].as_bytes(), &limits()).unwrap();
        assert_eq!(v.rejections.len(), 1);
        assert_eq!(v.rejections[0].field.as_deref(), Some("ts"));
        assert!(
            v.rejections[0].reason.contains("RFC 3339")
                && !v.rejections[0].reason.contains("line 1"),
            "{:?}",
            v.rejections
        );
        // Wrong types say the JSON wanted; a value out of bounds is short and says its unit
        // (or none).
        let v = parse_batch(slow_ones[1].as_bytes(), &limits()).unwrap();
        assert_eq!(v.rejections[0].field.as_deref(), Some("load1"));
        assert!(
            v.rejections[0].reason.ends_with("expected a number"),
            "{:?}",
            v.rejections
        );
        let v = parse_batch(
            br#"{"host": {"name": "a"}, "host_samples": [{"ts": "2026-11-23T11:59:00Z", "load1": -1},
                {"ts": "2026-11-23T11:59:05Z", "cpu_util_pct": 1e308}]}"#,
            &limits(),
        )
        .unwrap();
        let reasons: Vec<&str> = v.rejections.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "-1 is below the minimum 0",
                "1e308 % is above the maximum 100 %"
            ]
        );
        // An agent block that does not parse is ignored, as before.
        let v = parse_batch(slow_ones[9].as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.agent, None);
    }

    #[test]
    fn counts_above_the_bigint_range_are_rejected_exactly() {
        let body = json!({"host": {"name": "a"}, "gpu_samples": [
            {"ts": "2026-11-23T11:59:00Z", "index": 0, "ecc_sbe_total": i64::MAX},
            {"ts": "2026-11-23T11:59:05Z", "index": 0, "ecc_sbe_total": 1u64 << 63},
        ]});
        let v = parse_batch(body.to_string().as_bytes(), &limits()).unwrap();
        assert_eq!(v.batch.gpu_samples.len(), 1);
        assert_eq!(v.rejections.len(), 1);
        assert_eq!(v.rejections[0].field.as_deref(), Some("ecc_sbe_total"));
        assert_eq!(v.rejections[0].index, 1);
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
