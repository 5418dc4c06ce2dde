//! Alert rules and routes from `alerts.toml`, validated with the file, rule and field
//! named in every error.
//!
//! Each rule kind is its own type ([`RuleKind`]); what a kind needs is required, and a
//! field another kind uses is refused. The evaluator has one function per kind.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::model::metrics::{Metric, SqlType, GPU_METRICS, HOST_METRICS};

/// Severities, most urgent first.
pub const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Why a rules file was refused: where, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read alert rules {path}: {io}")]
    Read { path: String, io: std::io::Error },
    /// Not TOML, or a top-level key other than `rule` and `route`.
    #[error("{0}")]
    Syntax(String),
    #[error("rule {rule:?}, field `{field}`: {message}")]
    Field {
        rule: String,
        field: String,
        message: String,
    },
    /// A rule the field-level checks could not pin to one field (serde's own words, which
    /// name the field).
    #[error("rule {rule:?}: {message}")]
    Rule { rule: String, message: String },
    #[error("route #{number}: {message}")]
    Route { number: usize, message: String },
    #[error("{path}: {error}")]
    InFile { path: String, error: Box<RuleError> },
}

/// A route target that names a notification channel (`webhook:NAME`, `slack:NAME`,
/// `pagerduty:NAME`): its kind and name. Anything else is an email address.
pub fn channel_of(target: &str) -> Option<(&str, &str)> {
    let (kind, name) = target.split_once(':')?;
    matches!(kind, "webhook" | "slack" | "pagerduty").then_some((kind, name))
}

/// The highest XID code a hardware rule may name (NVIDIA's run to a few hundred).
pub const MAX_XID: i64 = 999;

/// The longest `for_secs`, `after_secs` or `resolve_after_secs`: a week.
pub const MAX_HOLD_SECS: u64 = 7 * 86_400;

/// The whole rules file.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub routes: Vec<Route>,
}

/// Who gets mail: the first route whose `match` fits an alert's labels (plus
/// `severity` and `rule`) wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    pub to: Vec<String>,
}

/// One rule: what every kind has, and its kind.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub severity: String,
    /// Label selectors: site, rack, pool, host, gpu (exact match).
    pub matchers: BTreeMap<String, String>,
    /// Free text for the mail.
    pub summary: String,
    pub kind: RuleKind,
}

/// The rule kinds, each with the fields it needs (`kind = "…"` in the file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RuleKind {
    Threshold(ThresholdRule),
    Hardware(HardwareRule),
    Absent(AbsentRule),
    Anomaly(AnomalyRule),
    Capacity(CapacityRule),
}

/// A sample field above (`op = ">"`), at or above (`">="`), below (`"<"`) or at or below
/// (`"<="`) `value` for `for_secs`; resolves only past `resolve_value` (hysteresis).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// `host.<field>` or `gpu.<field>`: a numeric metric of the sample tables.
    pub metric: MetricRef,
    pub op: Op,
    pub value: f64,
    /// The value that ends the alert; default `value`.
    #[serde(default)]
    pub resolve_value: Option<f64>,
    /// Seconds the condition must hold before firing.
    #[serde(default)]
    pub for_secs: u64,
}

/// Fires the moment a matching hardware event arrives; resolves after
/// `resolve_after_secs` without a recurrence.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareRule {
    /// Event kinds (xid, ecc_dbe, row_remap_failure, thermal_throttle, power_brake,
    /// gpu_lost…). Empty: all kinds.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only these XID codes (empty: all); events of other kinds are not filtered.
    #[serde(default)]
    pub xid_codes: Vec<i64>,
    /// Not these XID codes: those another rule takes (XID 79 goes with `gpu_lost`).
    #[serde(default)]
    pub except_xid_codes: Vec<i64>,
    #[serde(default = "default_quiet")]
    pub resolve_after_secs: u64,
    /// One alert per event kind and XID code instead of one per GPU (default false: a
    /// GPU with repeated faults is one alert whose description lists the codes).
    #[serde(default)]
    pub per_code: bool,
}

impl HardwareRule {
    /// The event kinds the rule takes (empty: all): its `events`, or only XIDs when it
    /// names XID codes and no kinds (`xid_codes = [48]` alone is about XID 48, not about
    /// every other kind of event too).
    pub fn kinds(&self) -> Vec<String> {
        if self.events.is_empty() && !self.xid_codes.is_empty() {
            vec!["xid".to_string()]
        } else {
            self.events.clone()
        }
    }
}

/// A host that sent nothing for `after_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsentRule {
    #[serde(default = "default_absent")]
    pub after_secs: u64,
}

/// A host whose anomaly score stays above its level for `for_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRule {
    /// At least 60: scores are per minute.
    pub for_secs: u64,
    /// Fire above this score instead of each host model's own alert level.
    #[serde(default)]
    pub min_score: Option<f64>,
    /// The alert resolves when the score falls below this share of the level it fired
    /// above (hysteresis); default [`DEFAULT_RESOLVE_RATIO`].
    #[serde(default)]
    pub resolve_ratio: Option<f64>,
}

/// A pool whose demand will outgrow its installed GPUs within `lead_days` (the plan a lead
/// time ahead needs more, or the demand trend reaches them), or a rack whose power budget
/// runs out within it. Fires once with the plan; resolves when the plan no longer needs
/// more.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRule {
    /// How far ahead to warn, days (at least 1).
    #[serde(default = "default_capacity_lead")]
    pub lead_days: u32,
    /// Watch pools' GPUs.
    #[serde(default = "yes")]
    pub pools: bool,
    /// Watch racks' power budgets.
    #[serde(default = "yes")]
    pub racks: bool,
}

fn default_capacity_lead() -> u32 {
    7
}
fn yes() -> bool {
    true
}

/// anomaly: share of the firing level below which an anomaly alert resolves.
pub const DEFAULT_RESOLVE_RATIO: f64 = 0.75;

impl AnomalyRule {
    /// The level a host's score must exceed to alert: the rule's `min_score`, else the
    /// level the host's model published with the score. The one place that decides it.
    pub fn level(&self, model_level: f32) -> f64 {
        self.min_score.unwrap_or(f64::from(model_level))
    }

    /// The score below which a firing alert at `level` resolves.
    pub fn resolve_below(&self, level: f64) -> f64 {
        self.resolve_ratio.unwrap_or(DEFAULT_RESOLVE_RATIO) * level
    }
}

/// `>`, `>=`, `<` or `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Above, Op::AtLeast, Op::Below, Op::AtMost];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Above => ">",
            Op::AtLeast => ">=",
            Op::Below => "<",
            Op::AtMost => "<=",
        }
    }

    /// High values are the bad ones (`>` and `>=`).
    pub fn upward(self) -> bool {
        matches!(self, Op::Above | Op::AtLeast)
    }

    /// `v` meets the condition against `threshold`.
    pub fn holds(self, v: f64, threshold: f64) -> bool {
        match self {
            Op::Above => v > threshold,
            Op::AtLeast => v >= threshold,
            Op::Below => v < threshold,
            Op::AtMost => v <= threshold,
        }
    }

    /// `v` is past `resolve` on the safe side: the alert may end. The complement of
    /// [`Op::holds`] at `resolve`, so with no `resolve_value` a reading either fires or
    /// clears.
    pub fn clears(self, v: f64, resolve: f64) -> bool {
        !self.holds(v, resolve)
    }

    fn words(self) -> &'static str {
        match self {
            Op::Above => "above",
            Op::AtLeast => "at or above",
            Op::Below => "below",
            Op::AtMost => "at or below",
        }
    }
}

/// A metric of the host or GPU sample table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricRef {
    pub gpu: bool,
    pub metric: &'static Metric,
}

impl MetricRef {
    /// Metrics a threshold can watch: the numeric ones (not flags or bit masks).
    fn watchable(m: &Metric) -> bool {
        !matches!(m.sql, SqlType::Boolean | SqlType::Bits)
    }

    pub fn parse(s: &str) -> Result<MetricRef, String> {
        let (table, field) = s.split_once('.').unwrap_or(("", ""));
        let (gpu, list) = match table {
            "host" => (false, HOST_METRICS),
            "gpu" => (true, GPU_METRICS),
            _ => (false, &[][..]),
        };
        list.iter()
            .find(|m| m.name == field && Self::watchable(m))
            .map(|metric| MetricRef { gpu, metric })
            .ok_or_else(|| {
                let names = |l: &[Metric]| {
                    l.iter()
                        .filter(|m| Self::watchable(m))
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join("|")
                };
                format!(
                    "{s:?} is not host.<{}> or gpu.<{}>",
                    names(HOST_METRICS),
                    names(GPU_METRICS)
                )
            })
    }
}

impl MetricRef {
    /// `v` in the metric's unit as people read it: `92.0 °C`, `61.0 GiB`, `1.2 GB/s`.
    pub fn reading(&self, v: f64) -> String {
        use crate::model::format::{bytes, num, rate};
        match self.metric.unit {
            "B" => bytes(Some(v)),
            "B/s" => rate(Some(v)),
            unit => num(Some(v), 1, unit),
        }
    }

    /// What the metric is, from its documentation's first sentence: `GPU core
    /// temperature`.
    pub fn title(&self) -> &'static str {
        let doc = self.metric.doc.trim();
        doc.split_once(". ")
            .map_or(doc, |(first, _)| first)
            .trim_end_matches('.')
    }

    /// An observation in words: `GPU core temperature 92.0 °C, above 87.0 °C
    /// (gpu.temp_celsius)`.
    pub fn describe(&self, v: f64, op: Op, threshold: f64) -> String {
        format!(
            "{} {}, {} {} ({self})",
            self.title(),
            self.reading(v),
            op.words(),
            self.reading(threshold),
        )
    }
}

impl std::fmt::Display for MetricRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            if self.gpu { "gpu" } else { "host" },
            self.metric.name
        )
    }
}

impl<'de> Deserialize<'de> for MetricRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MetricRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn default_quiet() -> u64 {
    900
}
fn default_absent() -> u64 {
    60
}

const LABELS: &[&str] = &["site", "rack", "pool", "host", "gpu", "rule", "severity"];

/// The file as TOML reads it, before each rule is typed by its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<toml::Table>,
    #[serde(default)]
    route: Vec<Route>,
}

/// The fields every rule kind has.
#[derive(Deserialize)]
struct Common {
    name: String,
    severity: String,
    #[serde(default, rename = "match")]
    matchers: BTreeMap<String, String>,
    #[serde(default)]
    summary: String,
}

impl Rule {
    /// Whether an alert of this rule can meet every one of `matchers` (labels, and `rule`
    /// and `severity`), as a route or a silence matches: the rule's name and severity, a
    /// label value its own `match` allows, and labels its kind's alerts carry.
    pub fn may_match(&self, matchers: &BTreeMap<String, String>) -> bool {
        let values_fit = matchers.iter().all(|(k, v)| match k.as_str() {
            "rule" => *v == self.name,
            "severity" => *v == self.severity,
            other => self.matchers.get(other).is_none_or(|own| own == v),
        });
        let labels: Vec<&str> = matchers
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "rule" | "severity"))
            .collect();
        values_fit && self.carries(&labels)
    }

    /// Whether some alert of this rule carries all of `labels`.
    pub fn carries(&self, labels: &[&str]) -> bool {
        self.kind
            .label_sets()
            .iter()
            .any(|set| labels.iter().all(|l| set.contains(l)))
    }

    /// Whether the rule's selectors accept these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// How long the condition must hold before the alert fires (0 for kinds that fire at
    /// once).
    pub fn for_secs(&self) -> u64 {
        match &self.kind {
            RuleKind::Threshold(t) => t.for_secs,
            RuleKind::Anomaly(a) => a.for_secs,
            RuleKind::Hardware(_) | RuleKind::Absent(_) | RuleKind::Capacity(_) => 0,
        }
    }

    /// One `[[rule]]` table, typed and checked.
    fn from_table(mut t: toml::Table) -> Result<Rule, RuleError> {
        let name = t
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let field = |field: &str, message: String| RuleError::Field {
            rule: name.clone(),
            field: field.into(),
            message,
        };
        let whole = |e: toml::de::Error| {
            let mut message = e.message().trim_end().to_string();
            if message.starts_with("unknown field") {
                message
                    .push_str(" (every rule also takes name, kind, severity, match and summary)");
            }
            RuleError::Rule {
                rule: name.clone(),
                message,
            }
        };
        let mut common_t = toml::Table::new();
        for k in ["name", "severity", "match", "summary"] {
            if let Some(v) = t.remove(k) {
                common_t.insert(k.into(), v);
            }
        }
        let c: Common = common_t.try_into().map_err(whole)?;
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            return Err(field(
                "name",
                "must be non-empty letters, digits, - _ .".into(),
            ));
        }
        if !SEVERITIES.contains(&c.severity.as_str()) {
            return Err(field(
                "severity",
                format!("{:?} is not one of {}", c.severity, SEVERITIES.join(", ")),
            ));
        }
        for k in c.matchers.keys() {
            if !LABELS.contains(&k.as_str()) {
                return Err(field(
                    "match",
                    format!("unknown label {k:?}; use {}", LABELS.join(", ")),
                ));
            }
        }
        if !t.contains_key("kind") {
            return Err(field(
                "kind",
                "missing; use threshold, hardware, absent, anomaly or capacity".into(),
            ));
        }
        // Typed fields whose own errors would not name them.
        if t.get("kind").and_then(|k| k.as_str()) == Some("threshold") {
            if let Some(m) = t.get("metric").and_then(|m| m.as_str()) {
                MetricRef::parse(m).map_err(|e| field("metric", e))?;
            }
            if let Some(op) = t.get("op").and_then(|o| o.as_str()) {
                if !Op::ALL.iter().any(|o| o.as_str() == op) {
                    return Err(field(
                        "op",
                        format!("{op:?}: use \">\", \">=\", \"<\" or \"<=\""),
                    ));
                }
            }
        }
        // Durations are whole seconds or days, 0 or more: said with the field's name, which
        // serde's "invalid value: integer `-60`, expected u64" leaves out.
        for (k, v) in &t {
            if let Some(i) = v.as_integer().filter(|i| *i < 0) {
                if k.ends_with("_secs") || k.ends_with("_days") {
                    return Err(field(k, format!("{i}: must be 0 or more")));
                }
            }
        }
        let kind: RuleKind = toml::Value::Table(t).try_into().map_err(whole)?;
        kind.check(&c.matchers).map_err(|(f, m)| field(f, m))?;
        // A selector no alert of the kind can meet would make a rule that never fires.
        for (k, v) in &c.matchers {
            if matches!(k.as_str(), "rule" | "severity") {
                return Err(field(
                    "match",
                    format!("{k:?} is not a label of the hosts and GPUs a rule judges (routes and silences match it)"),
                ));
            }
            let sets = kind.label_sets();
            if !sets.iter().any(|set| set.contains(&k.as_str())) {
                let mut carried: Vec<&str> = sets.iter().flat_map(|s| s.iter().copied()).collect();
                carried.sort_unstable();
                carried.dedup();
                return Err(field(
                    "match",
                    format!(
                        "{} alerts carry no {k:?} label (they carry {})",
                        kind.name(),
                        carried.join(", ")
                    ),
                ));
            }
            if k == "gpu" && v.parse::<u32>().is_err() {
                return Err(field(
                    "match",
                    format!("gpu = {v:?}: a GPU's index as a number (0, 1, …)"),
                ));
            }
        }
        // GPU indexes as alerts spell them ("02" → "2"), as routes have them.
        let mut matchers = c.matchers;
        if let Some(g) = matchers.get_mut("gpu") {
            *g = g.parse::<u32>().expect("checked above").to_string();
        }
        Ok(Rule {
            name: c.name,
            severity: c.severity,
            matchers,
            summary: c.summary,
            kind,
        })
    }
}

impl RuleKind {
    /// The checks serde cannot express, as (field, message).
    fn check(&self, matchers: &BTreeMap<String, String>) -> Result<(), (&'static str, String)> {
        // A wait longer than a week is a typo (milliseconds for seconds), not a rule.
        let held = |field: &'static str, secs: u64| {
            if secs > MAX_HOLD_SECS {
                Err((
                    field,
                    format!(
                        "{secs} s is over a week ({MAX_HOLD_SECS} s at most); the value is in seconds"
                    ),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            RuleKind::Threshold(t) => {
                held("for_secs", t.for_secs)?;
                if !t.value.is_finite() {
                    return Err(("value", format!("{} is not a number", t.value)));
                }
                if let Some(rv) = t.resolve_value {
                    let wrong = if t.op.upward() {
                        rv > t.value
                    } else {
                        rv < t.value
                    };
                    if wrong || !rv.is_finite() {
                        return Err((
                            "resolve_value",
                            format!(
                                "{rv} must be on the safe side of value {} (hysteresis)",
                                t.value
                            ),
                        ));
                    }
                }
            }
            RuleKind::Hardware(h) => {
                for e in &h.events {
                    if !crate::model::EVENT_KINDS.contains(&e.as_str()) {
                        return Err((
                            "events",
                            format!(
                                "unknown event kind {e:?}; use {}",
                                crate::model::EVENT_KINDS.join(", ")
                            ),
                        ));
                    }
                }
                for (field, codes) in [
                    ("xid_codes", &h.xid_codes),
                    ("except_xid_codes", &h.except_xid_codes),
                ] {
                    if let Some(c) = codes.iter().find(|c| !(1..=MAX_XID).contains(*c)) {
                        return Err((
                            field,
                            format!("{c} is not an XID code (1 ..= {MAX_XID}: 79, 94, …)"),
                        ));
                    }
                }
                if let Some(c) = h.except_xid_codes.iter().find(|c| h.xid_codes.contains(c)) {
                    return Err((
                        "except_xid_codes",
                        format!(
                            "XID {c} is in xid_codes too: the rule would both take and leave it"
                        ),
                    ));
                }
                if h.resolve_after_secs == 0 {
                    return Err(("resolve_after_secs", "must be at least 1".into()));
                }
                held("resolve_after_secs", h.resolve_after_secs)?;
            }
            RuleKind::Absent(a) => {
                if a.after_secs < 5 {
                    return Err(("after_secs", "must be at least 5".into()));
                }
                held("after_secs", a.after_secs)?;
            }
            RuleKind::Capacity(c) => {
                if !(1..=365).contains(&c.lead_days) {
                    return Err(("lead_days", format!("{} days: use 1 ..= 365", c.lead_days)));
                }
                if !c.pools && !c.racks {
                    return Err((
                        "pools",
                        "a capacity rule watches pools, racks or both; both are off".into(),
                    ));
                }
                if matchers.contains_key("gpu") || matchers.contains_key("host") {
                    return Err((
                        "match",
                        "capacity alerts are per pool or rack; match site (pools with hosts there, and its racks), rack (racks only) or pool".into(),
                    ));
                }
            }
            RuleKind::Anomaly(a) => {
                held("for_secs", a.for_secs)?;
                if a.for_secs < 60 {
                    return Err((
                        "for_secs",
                        format!(
                            "{} s: an anomaly rule needs at least 60 (scores are per minute); \
                             600 rides out a single-minute glitch",
                            a.for_secs
                        ),
                    ));
                }
                if let Some(v) = a.min_score {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(("min_score", format!("{v} must be a positive number")));
                    }
                }
                if let Some(v) = a.resolve_ratio {
                    if !(v > 0.0 && v <= 1.0) {
                        return Err((
                            "resolve_ratio",
                            format!("{v} must be above 0 and at most 1 (hysteresis)"),
                        ));
                    }
                }
                if matchers.contains_key("gpu") {
                    return Err((
                        "match",
                        "anomaly alerts are per host; `gpu` cannot be matched".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The labels this kind's alerts can carry (besides `rule` and `severity`), as the
    /// alternative sets its alerts come in: a route whose `match` names a label outside
    /// every set never takes them.
    pub fn label_sets(&self) -> Vec<&'static [&'static str]> {
        const HOST: &[&str] = &["host", "site", "rack", "pool"];
        const GPU: &[&str] = &["host", "site", "rack", "pool", "gpu"];
        match self {
            RuleKind::Threshold(t) if t.metric.gpu => vec![GPU],
            RuleKind::Threshold(_) | RuleKind::Absent(_) | RuleKind::Anomaly(_) => vec![HOST],
            // GPU events carry `gpu`, host-wide ones (a lost GPU's host, kernel log) not;
            // one alert per code carries the event kind and the XID code.
            RuleKind::Hardware(h) if h.per_code => {
                vec![&["host", "site", "rack", "pool", "gpu", "event", "xid"]]
            }
            RuleKind::Hardware(_) => vec![GPU],
            RuleKind::Capacity(c) => {
                let mut v: Vec<&'static [&'static str]> = Vec::new();
                if c.pools {
                    v.push(&["pool"]);
                }
                if c.racks {
                    v.push(&["site", "rack"]);
                }
                v
            }
        }
    }

    /// The kind's name as the file spells it.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Threshold(_) => "threshold",
            RuleKind::Hardware(_) => "hardware",
            RuleKind::Absent(_) => "absent",
            RuleKind::Anomaly(_) => "anomaly",
            RuleKind::Capacity(_) => "capacity",
        }
    }
}

impl RuleSet {
    /// Read and validate a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|io| RuleError::Read {
            path: path.display().to_string(),
            io,
        })?;
        Self::parse(&text).map_err(|e| RuleError::InFile {
            path: path.display().to_string(),
            error: Box::new(e),
        })
    }

    /// Parse and validate rules from TOML text.
    pub fn parse(text: &str) -> Result<RuleSet, RuleError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| RuleError::Syntax(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut names = std::collections::HashSet::new();
        for t in raw.rule {
            let r = Rule::from_table(t)?;
            if !names.insert(r.name.clone()) {
                return Err(RuleError::Field {
                    rule: r.name,
                    field: "name".into(),
                    message: "defined twice".into(),
                });
            }
            rules.push(r);
        }
        let mut routes = raw.route;
        for (i, route) in routes.iter_mut().enumerate() {
            let number = i + 1;
            // A route whose `match` no alert can meet (a typo in a label, a severity or a
            // rule name) would pass its alerts on to a later route, or to nobody.
            let mut seen = crate::alert::Labels::new();
            for (k, v) in &route.matchers {
                crate::alert::silence::add_matcher(&mut seen, k, v).map_err(|e| {
                    RuleError::Route {
                        number,
                        message: format!("match: {e}"),
                    }
                })?;
                if k == "rule" && !names.contains(v) {
                    return Err(RuleError::Route {
                        number,
                        message: format!("match: rule {v:?} is not a rule of this file"),
                    });
                }
            }
            // Values as alerts spell them (gpu = "02" is GPU 2).
            route.matchers = seen.into_iter().collect();
            if route.to.is_empty() {
                return Err(RuleError::Route {
                    number,
                    message: "`to` needs at least one address".into(),
                });
            }
            for addr in &route.to {
                if let Some((kind, name)) = channel_of(addr) {
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(RuleError::Route {
                            number,
                            message: format!(
                                "{addr:?}: a {kind} channel is named by letters, digits, - and _ (as in [alerting.channels.NAME])"
                            ),
                        });
                    }
                } else if addr.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(RuleError::Route {
                        number,
                        message: format!(
                            "{addr:?} is neither an email address nor a channel (webhook:NAME, slack:NAME, pagerduty:NAME)"
                        ),
                    });
                }
            }
        }
        // The first route that fits takes the alert: a route whose `match` holds all of an
        // earlier one's would never be used.
        for (j, route) in routes.iter().enumerate() {
            if let Some(i) = routes[..j].iter().position(|earlier| {
                earlier
                    .matchers
                    .iter()
                    .all(|(k, v)| route.matchers.get(k) == Some(v))
            }) {
                return Err(RuleError::Route {
                    number: j + 1,
                    message: format!(
                        "never used: route {} comes first and takes every alert it would ({}); put the narrower route first",
                        i + 1,
                        if routes[i].matchers.is_empty() {
                            "it matches everything".to_string()
                        } else {
                            routes[i]
                                .matchers
                                .iter()
                                .map(|(k, v)| format!("{k} = {v:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                });
            }
        }
        Ok(RuleSet { rules, routes })
    }

    /// Every channel a route names must be one of `alerting.channels`, of the kind the
    /// route says: otherwise its alerts wait in the outbox for a channel that never comes.
    pub fn check_channels(
        &self,
        channels: &BTreeMap<String, crate::config::ChannelConfig>,
    ) -> Result<(), RuleError> {
        for (i, route) in self.routes.iter().enumerate() {
            for addr in &route.to {
                let Some((kind, name)) = channel_of(addr) else {
                    continue;
                };
                let message = match channels.get(name) {
                    None if channels.is_empty() => format!(
                        "{addr:?}: no channels are configured; add [alerting.channels.{name}] with kind = \"{kind}\""
                    ),
                    None => format!(
                        "{addr:?}: no channel {name:?} in alerting.channels (configured: {})",
                        channels.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    Some(c) if c.kind != kind => format!(
                        "{addr:?}: alerting.channels.{name} is a {} channel; name it {}:{name}",
                        c.kind, c.kind
                    ),
                    Some(_) => continue,
                };
                return Err(RuleError::Route {
                    number: i + 1,
                    message,
                });
            }
        }
        Ok(())
    }

    /// Read a rules file and check its channels against `alerting.channels`.
    pub fn load_checked(
        path: &Path,
        channels: &BTreeMap<String, crate::config::ChannelConfig>,
    ) -> Result<RuleSet, RuleError> {
        let set = Self::load(path)?;
        set.check_channels(channels)
            .map_err(|e| RuleError::InFile {
                path: path.display().to_string(),
                error: Box::new(e),
            })?;
        Ok(set)
    }

    /// Recipients for an alert with these labels.
    pub fn recipients(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        self.routes
            .iter()
            .find(|r| r.matchers.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|r| r.to.clone())
            .unwrap_or_default()
    }

    /// Rules no route can ever take: every route matches another `rule` or `severity`
    /// than the rule's, a label value its own `match` rules out, or a label its kind's
    /// alerts never carry (`host` for a capacity rule's pools). Their alerts show on the
    /// dashboard and are sent to nobody (`alerts check-rules` warns).
    pub fn unroutable(&self) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|rule| {
                !self
                    .routes
                    .iter()
                    .any(|route| rule.may_match(&route.matchers))
            })
            .collect()
    }

    /// The rules of one kind, with their kind's fields.
    pub fn of_kind<'a, T: 'a>(
        &'a self,
        pick: impl Fn(&'a RuleKind) -> Option<&'a T> + 'a,
    ) -> impl Iterator<Item = (&'a Rule, &'a T)> + 'a {
        self.rules
            .iter()
            .filter_map(move |r| pick(&r.kind).map(|k| (r, k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleSet, String> {
        RuleSet::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_rule_no_route_can_take_is_named() {
        let rules = r#"
[[rule]]
name = "down"
kind = "absent"
after_secs = 60
severity = "critical"

[[rule]]
name = "hot-a"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
severity = "warning"
match = { pool = "a" }

[[rule]]
name = "hot-b"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
severity = "warning"
match = { pool = "b" }

[[route]]
match = { severity = "warning", pool = "b" }
to = ["b@example.com"]
"#;
        let set = parse(rules).unwrap();
        let names: Vec<&str> = set.unroutable().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["down", "hot-a"]);
        // Routes by host take no capacity alert (per pool or rack), and routes by GPU no
        // alert of a host-level rule; a route by site takes a capacity rule's racks.
        let rules = r#"
[[rule]]
name = "short"
kind = "capacity"
racks = false
severity = "warning"

[[rule]]
name = "short-racks"
kind = "capacity"
severity = "warning"

[[rule]]
name = "down"
kind = "absent"
after_secs = 60
severity = "critical"

[[rule]]
name = "hot"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
severity = "critical"

[[route]]
match = { host = "node-1" }
to = ["node-1@example.com"]

[[route]]
match = { severity = "critical", gpu = "0" }
to = ["gpu0@example.com"]

[[route]]
match = { site = "fra1" }
to = ["fra1@example.com"]
"#;
        let set = parse(rules).unwrap();
        let names: Vec<&str> = set.unroutable().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["short"]);
        let no_site = rules.replace("match = { site = \"fra1\" }", "match = { gpu = \"1\" }");
        let set = parse(&no_site).unwrap();
        let names: Vec<&str> = set.unroutable().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["short", "short-racks"]);
        let with_default = format!("{rules}\n[[route]]\nto = [\"ops@example.com\"]\n");
        assert!(parse(&with_default).unwrap().unroutable().is_empty());
    }

    #[test]
    fn threshold_observations_read_in_words_and_units() {
        let m = |s: &str| MetricRef::parse(s).unwrap();
        assert_eq!(
            m("gpu.temp_celsius").describe(92.0, Op::Above, 87.0),
            "GPU core temperature 92.0 °C, above 87.0 °C (gpu.temp_celsius)"
        );
        assert_eq!(
            m("gpu.mem_used_bytes").describe(65_498_251_264.0, Op::Above, 64e9),
            "Frame buffer memory in use 61.0 GiB, above 59.6 GiB (gpu.mem_used_bytes)"
        );
        assert_eq!(m("gpu.power_watts").title(), "Board power draw");
    }

    #[test]
    fn inclusive_operators_fire_at_the_value_and_clear_past_the_resolve_value() {
        let hot = "[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\n";
        let rule =
            |op: &str, resolve: &str| parse(&format!("{hot}op = \"{op}\"\nvalue = 85\n{resolve}"));
        let set = rule(">=", "resolve_value = 80\n").unwrap();
        let RuleKind::Threshold(t) = &set.rules[0].kind else {
            panic!("threshold")
        };
        assert_eq!(t.op, Op::AtLeast);
        // 85 °C fires under ">=" and not under ">"; it clears only below 80.
        assert!(t.op.holds(85.0, 85.0) && !Op::Above.holds(85.0, 85.0));
        assert!(!t.op.clears(80.0, 80.0) && t.op.clears(79.9, 80.0));
        assert!(Op::AtMost.holds(10.0, 10.0) && Op::AtMost.clears(10.1, 10.0));
        assert!(Op::Below.clears(10.0, 10.0));
        for op in Op::ALL {
            // Without a resolve value a reading either fires or clears, at the value too.
            for v in [84.9, 85.0, 85.1] {
                assert_ne!(op.holds(v, 85.0), op.clears(v, 85.0), "{op:?} at {v}");
            }
        }
        assert_eq!(
            MetricRef::parse("gpu.temp_celsius")
                .unwrap()
                .describe(85.0, Op::AtLeast, 85.0),
            "GPU core temperature 85.0 °C, at or above 85.0 °C (gpu.temp_celsius)"
        );
        // Hysteresis on the wrong side and unknown operators are refused by name.
        let e = rule("<=", "resolve_value = 80\n").unwrap_err().to_string();
        assert!(
            e.contains("resolve_value") && e.contains("safe side"),
            "{e}"
        );
        let e = rule("=>", "").unwrap_err().to_string();
        assert!(e.contains("op") && e.contains("\">=\""), "{e}");
    }

    #[test]
    fn routes_that_no_alert_can_meet_or_that_name_missing_channels_are_refused() {
        let rule = "[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85.0\n";
        let route = |m: &str, to: &str| {
            parse(&format!(
                "{rule}[[route]]\nmatch = {{ {m} }}\nto = [{to}]\n"
            ))
        };
        assert!(route("severity = \"warning\"", "\"a@example.com\"").is_ok());
        let e = route("severty = \"critical\"", "\"a@example.com\"").unwrap_err();
        assert!(
            e.starts_with("route #1: match: unknown label \"severty\""),
            "{e}"
        );
        let e = route("severity = \"crit\"", "\"a@example.com\"").unwrap_err();
        assert!(e.contains("severity: \"crit\" is not one of"), "{e}");
        let e = route("rule = \"no-such-rule\"", "\"a@example.com\"").unwrap_err();
        assert_eq!(
            e,
            "route #1: match: rule \"no-such-rule\" is not a rule of this file"
        );

        let set = route("rule = \"hot\"", "\"slack:opz\", \"webhook:am\"").unwrap();
        let channel = |kind: &str| crate::config::ChannelConfig {
            kind: kind.into(),
            ..toml::from_str(&format!("kind = \"{kind}\"")).unwrap()
        };
        let mut channels = BTreeMap::new();
        let e = set.check_channels(&channels).unwrap_err().to_string();
        assert!(e.contains("no channels are configured"), "{e}");
        channels.insert("ops".to_string(), channel("slack"));
        channels.insert("am".to_string(), channel("webhook"));
        let e = set.check_channels(&channels).unwrap_err().to_string();
        assert_eq!(e, "route #1: \"slack:opz\": no channel \"opz\" in alerting.channels (configured: am, ops)");
        channels.insert("opz".to_string(), channel("pagerduty"));
        let e = set.check_channels(&channels).unwrap_err().to_string();
        assert_eq!(e, "route #1: \"slack:opz\": alerting.channels.opz is a pagerduty channel; name it pagerduty:opz");
        channels.insert("opz".to_string(), channel("slack"));
        assert!(set.check_channels(&channels).is_ok());
    }

    #[test]
    fn a_route_an_earlier_one_always_takes_first_is_refused() {
        let rule = "[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85.0\n";
        let routes = |a: &str, b: &str| {
            parse(&format!(
                "{rule}[[route]]\nmatch = {{ {a} }}\nto = [\"a@example.com\"]\n[[route]]\nmatch = {{ {b} }}\nto = [\"b@example.com\"]\n"
            ))
        };
        // Narrower first: both are used.
        assert!(routes(
            "severity = \"warning\", pool = \"train\"",
            "severity = \"warning\""
        )
        .is_ok());
        let e = routes(
            "severity = \"warning\"",
            "severity = \"warning\", pool = \"train\"",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "route #2: never used: route 1 comes first and takes every alert it would (severity = \"warning\"); put the narrower route first"
        );
        let e = routes("", "pool = \"train\"").unwrap_err();
        assert!(e.contains("(it matches everything)"), "{e}");
        // GPU indexes as alerts spell them.
        let set = routes("gpu = \"02\"", "pool = \"train\"").unwrap();
        assert_eq!(set.routes[0].matchers["gpu"], "2");
    }

    #[test]
    fn a_rule_selector_no_alert_of_its_kind_carries_is_refused() {
        let rule = |kind: &str, m: &str| {
            parse(&format!(
                "[[rule]]\nname = \"r\"\nseverity = \"warning\"\nmatch = {{ {m} }}\n{kind}"
            ))
        };
        let host_load = "kind = \"threshold\"\nmetric = \"host.load1\"\nop = \">\"\nvalue = 64.0\n";
        let gpu_temp =
            "kind = \"threshold\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85.0\n";
        let e = rule(host_load, "gpu = \"1\"").unwrap_err();
        assert_eq!(
            e,
            "rule \"r\", field `match`: threshold alerts carry no \"gpu\" label (they carry host, pool, rack, site)"
        );
        let e = rule(gpu_temp, "severity = \"warning\"").unwrap_err();
        assert!(e.contains("routes and silences match it"), "{e}");
        let e = rule(gpu_temp, "gpu = \"first\"").unwrap_err();
        assert!(e.contains("a GPU's index as a number"), "{e}");
        let set = rule(gpu_temp, "gpu = \"02\", pool = \"train\"").unwrap();
        assert_eq!(set.rules[0].matchers["gpu"], "2");
        assert!(rule(host_load, "pool = \"train\"").is_ok());
    }

    #[test]
    fn xid_codes_and_waits_out_of_range_are_refused() {
        let hw = |extra: &str| {
            parse(&format!(
                "[[rule]]\nname = \"x\"\nkind = \"hardware\"\nseverity = \"critical\"\n{extra}"
            ))
        };
        assert!(hw("xid_codes = [79, 94]\n").is_ok());
        let e = hw("xid_codes = [79, -5]\n").unwrap_err();
        assert!(e.contains("`xid_codes`: -5 is not an XID code"), "{e}");
        let e = hw("xid_codes = [99999999]\n").unwrap_err();
        assert!(e.contains("`xid_codes`"), "{e}");
        assert!(hw("except_xid_codes = [79]\n").is_ok());
        // XID codes alone take XIDs only; with kinds named, the codes filter the XIDs.
        let kinds = |extra: &str| match &hw(extra).unwrap().rules[0].kind {
            RuleKind::Hardware(h) => h.kinds(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kinds("xid_codes = [48]\n"), ["xid"]);
        assert!(kinds("").is_empty());
        assert_eq!(
            kinds("events = [\"gpu_lost\", \"xid\"]\nxid_codes = [79]\n"),
            ["gpu_lost", "xid"]
        );
        let e = hw("except_xid_codes = [0]\n").unwrap_err();
        assert!(
            e.contains("`except_xid_codes`: 0 is not an XID code"),
            "{e}"
        );
        let e = hw("xid_codes = [79]\nexcept_xid_codes = [79]\n").unwrap_err();
        assert!(e.contains("both take and leave it"), "{e}");
        let e = hw("resolve_after_secs = 999999999999\n").unwrap_err();
        assert!(
            e.contains("`resolve_after_secs`: 999999999999 s is over a week"),
            "{e}"
        );
        let th = parse("[[rule]]\nname = \"t\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85.0\nfor_secs = 999999999999\n").unwrap_err();
        assert!(th.contains("`for_secs`"), "{th}");
    }

    #[test]
    fn a_field_that_does_not_decode_is_named() {
        let e = anomaly_rule("for_secs = -60\n").unwrap_err();
        assert!(
            e == "rule \"odd\", field `for_secs`: -60: must be 0 or more",
            "{e}"
        );
    }

    #[test]
    fn shipped_example_rules_are_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts.toml");
        let set = RuleSet::load(&p).unwrap();
        for kind in ["hardware", "threshold", "absent", "anomaly", "capacity"] {
            assert!(set.rules.iter().any(|r| r.kind.name() == kind), "{kind}");
        }
    }

    fn anomaly_rule(extra: &str) -> Result<RuleSet, String> {
        parse(&format!(
            "[[rule]]\nname = \"odd\"\nkind = \"anomaly\"\nseverity = \"warning\"\n{extra}"
        ))
    }

    #[test]
    fn anomaly_rules_parse_with_their_options() {
        let set = anomaly_rule(
            "for_secs = 900\nmin_score = 4.5\nresolve_ratio = 0.5\nmatch = { pool = \"train-a\" }\n",
        )
        .unwrap();
        let r = &set.rules[0];
        assert_eq!(
            r.kind,
            RuleKind::Anomaly(AnomalyRule {
                for_secs: 900,
                min_score: Some(4.5),
                resolve_ratio: Some(0.5)
            })
        );
        assert_eq!(r.matchers["pool"], "train-a");
        let RuleKind::Anomaly(a) = &r.kind else {
            unreachable!()
        };
        assert_eq!((a.level(9.0), a.resolve_below(4.5)), (4.5, 2.25));
        // The model's own level and the default hysteresis when not given.
        let r = &anomaly_rule("for_secs = 600\n").unwrap().rules[0];
        let RuleKind::Anomaly(a) = &r.kind else {
            unreachable!()
        };
        assert_eq!((a.min_score, a.resolve_ratio), (None, None));
        assert_eq!((a.level(2.0), a.resolve_below(2.0)), (2.0, 1.5));
    }

    #[test]
    fn anomaly_rule_errors_name_rule_and_field() {
        for (extra, field) in [
            ("", "`for_secs`"),
            ("for_secs = 30\n", "`for_secs`"),
            ("for_secs = 600\nmin_score = -1\n", "`min_score`"),
            ("for_secs = 600\nmin_score = nan\n", "`min_score`"),
            ("for_secs = 600\nresolve_ratio = 1.5\n", "`resolve_ratio`"),
            ("for_secs = 600\nresolve_ratio = 0\n", "`resolve_ratio`"),
            ("for_secs = 600\nmatch = { gpu = \"3\" }\n", "`match`"),
            ("for_secs = 600\nvalue = 3\n", "`value`"),
            (
                "for_secs = 600\nmetric = \"gpu.temp_celsius\"\n",
                "`metric`",
            ),
        ] {
            let e = anomaly_rule(extra).unwrap_err();
            assert!(
                e.contains("rule \"odd\"") && e.contains(field),
                "{extra:?}: {e}"
            );
        }
        let e = anomaly_rule("for_secs = 600\nmin_scor = 3\n").unwrap_err();
        assert!(e.contains("min_scor"), "{e}");
    }

    #[test]
    fn errors_name_rule_and_field() {
        let e = parse("[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.tmp\"\nop = \">\"\nvalue = 1\n").unwrap_err();
        assert!(e.contains("\"hot\"") && e.contains("`metric`"), "{e}");
        let e = parse("[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85\nresolve_value = 90\n").unwrap_err();
        assert!(e.contains("resolve_value"), "{e}");
        let e = parse("[[rule]]\nname = \"x\"\nkind = \"hardware\"\nseverity = \"fatal\"\n")
            .unwrap_err();
        assert!(e.contains("severity"), "{e}");
        let e = parse("[[route]]\nto = [\"not an address\"]\n").unwrap_err();
        assert!(e.contains("route #1"), "{e}");
        let e =
            parse("[[rule]]\nname = \"x\"\nkind = \"magic\"\nseverity = \"info\"\n").unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn each_kind_takes_only_its_own_fields() {
        let rule = |kind: &str, extra: &str| {
            parse(&format!(
                "[[rule]]\nname = \"r\"\nkind = \"{kind}\"\nseverity = \"info\"\n{extra}"
            ))
        };
        // Fields of another kind are refused, naming the field.
        for (kind, extra, field) in [
            ("hardware", "for_secs = 60\n", "for_secs"),
            ("absent", "events = [\"xid\"]\n", "events"),
            (
                "threshold",
                "metric = \"gpu.util_pct\"\nop = \">\"\nvalue = 1\nmin_score = 2\n",
                "min_score",
            ),
            ("anomaly", "for_secs = 600\nafter_secs = 60\n", "after_secs"),
        ] {
            let e = rule(kind, extra).unwrap_err();
            assert!(
                e.contains(&format!("`{field}`")) && e.contains("rule \"r\""),
                "{kind}: {e}"
            );
        }
        // What a kind needs is required.
        let e = rule("threshold", "metric = \"gpu.util_pct\"\nop = \">\"\n").unwrap_err();
        assert!(e.contains("`value`"), "{e}");
        let e = rule(
            "threshold",
            "metric = \"gpu.util_pct\"\nop = \"==\"\nvalue = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("field `op`"), "{e}");
        let e = parse("[[rule]]\nname = \"r\"\nseverity = \"info\"\n").unwrap_err();
        assert!(e.contains("field `kind`"), "{e}");
        // Every numeric metric of the table can be watched; flags and bit masks cannot.
        let set = rule(
            "threshold",
            "metric = \"gpu.ecc_dbe_total\"\nop = \">\"\nvalue = 0\n",
        )
        .unwrap();
        let RuleKind::Threshold(t) = &set.rules[0].kind else {
            unreachable!()
        };
        assert_eq!(t.metric.to_string(), "gpu.ecc_dbe_total");
        assert_eq!((t.op, t.for_secs, t.resolve_value), (Op::Above, 0, None));
        for bad in [
            "gpu.throttle_reasons",
            "gpu.mig_enabled",
            "host.util_pct",
            "util_pct",
        ] {
            let e = rule(
                "threshold",
                &format!("metric = \"{bad}\"\nop = \">\"\nvalue = 0\n"),
            )
            .unwrap_err();
            assert!(e.contains("field `metric`"), "{bad}: {e}");
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let set = parse(
            "[[route]]\nmatch = { severity = \"critical\", site = \"fra1\" }\nto = [\"fra-oncall@example.com\"]\n\
             [[route]]\nmatch = { severity = \"critical\" }\nto = [\"oncall@example.com\"]\n[[route]]\nto = [\"ops@example.com\"]\n",
        )
        .unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            set.recipients(&l(&[("severity", "critical"), ("site", "fra1")])),
            vec!["fra-oncall@example.com"]
        );
        assert_eq!(
            set.recipients(&l(&[("severity", "critical"), ("site", "ams2")])),
            vec!["oncall@example.com"]
        );
        assert_eq!(
            set.recipients(&l(&[("severity", "info")])),
            vec!["ops@example.com"]
        );
    }
}
