//! Alert rules and routes from `alerts.toml`, validated with the file, rule and field
//! named in every error.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Severities, most urgent first.
pub const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// The whole rules file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    #[serde(default, rename = "route")]
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

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub severity: String,
    /// Label selectors: site, rack, pool, host (exact match).
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// threshold: `host.<field>` or `gpu.<field>` of the sample tables.
    #[serde(default)]
    pub metric: String,
    /// threshold: ">" or "<".
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub value: Option<f64>,
    /// threshold: the value that ends the alert (hysteresis); default `value`.
    #[serde(default)]
    pub resolve_value: Option<f64>,
    /// threshold, anomaly: seconds the condition must hold before firing.
    #[serde(default)]
    pub for_secs: u64,
    /// anomaly: fire above this score instead of each host model's own alert level.
    #[serde(default)]
    pub min_score: Option<f64>,
    /// anomaly: the alert resolves when the score falls below this share of the level it
    /// fired above (hysteresis); default [`DEFAULT_RESOLVE_RATIO`].
    #[serde(default)]
    pub resolve_ratio: Option<f64>,
    /// hardware: event kinds (xid, ecc_dbe, row_remap_failure, thermal_throttle,
    /// power_brake, gpu_lost…). Empty: all kinds.
    #[serde(default)]
    pub events: Vec<String>,
    /// hardware: only these XID codes (empty: all).
    #[serde(default)]
    pub xid_codes: Vec<i64>,
    /// hardware: the alert resolves after this many seconds without a recurrence.
    #[serde(default = "default_quiet")]
    pub resolve_after_secs: u64,
    /// absent: seconds without data before a host is declared down.
    #[serde(default = "default_absent")]
    pub after_secs: u64,
    /// Free text for the mail.
    #[serde(default)]
    pub summary: String,
}

/// anomaly: share of the firing level below which an anomaly alert resolves.
pub const DEFAULT_RESOLVE_RATIO: f64 = 0.75;

fn default_quiet() -> u64 {
    900
}
fn default_absent() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Threshold,
    Hardware,
    Absent,
    Anomaly,
}

/// Sample fields a threshold rule may watch.
pub const HOST_FIELDS: &[&str] = &[
    "cpu_util_pct",
    "load1",
    "mem_used_bytes",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
];
pub const GPU_FIELDS: &[&str] = &[
    "util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "power_watts",
    "temp_celsius",
    "mem_temp_celsius",
    "sm_clock_mhz",
    "fan_pct",
];

const LABELS: &[&str] = &["site", "rack", "pool", "host", "gpu", "rule", "severity"];

impl RuleSet {
    /// Read and validate a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read alert rules {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and validate rules from TOML text.
    pub fn parse(text: &str) -> Result<RuleSet, String> {
        let set: RuleSet = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::HashSet::new();
        for r in &set.rules {
            let at =
                |field: &str, msg: String| format!("rule {:?}, field `{field}`: {msg}", r.name);
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(at(
                    "name",
                    "must be non-empty letters, digits, - _ .".into(),
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err(at("name", "defined twice".into()));
            }
            if !SEVERITIES.contains(&r.severity.as_str()) {
                return Err(at(
                    "severity",
                    format!("{:?} is not one of {}", r.severity, SEVERITIES.join(", ")),
                ));
            }
            for k in r.matchers.keys() {
                if !LABELS.contains(&k.as_str()) {
                    return Err(at(
                        "match",
                        format!("unknown label {k:?}; use {}", LABELS.join(", ")),
                    ));
                }
            }
            match r.kind {
                RuleKind::Threshold => {
                    let (table, field) = r.metric.split_once('.').unwrap_or(("", ""));
                    let ok = match table {
                        "host" => HOST_FIELDS.contains(&field),
                        "gpu" => GPU_FIELDS.contains(&field),
                        _ => false,
                    };
                    if !ok {
                        return Err(at(
                            "metric",
                            format!(
                                "{:?} is not host.<{}> or gpu.<{}>",
                                r.metric,
                                HOST_FIELDS.join("|"),
                                GPU_FIELDS.join("|")
                            ),
                        ));
                    }
                    if r.op != ">" && r.op != "<" {
                        return Err(at("op", format!("{:?}: use \">\" or \"<\"", r.op)));
                    }
                    let v = r
                        .value
                        .ok_or_else(|| at("value", "a threshold rule needs a value".into()))?;
                    if let Some(rv) = r.resolve_value {
                        let wrong = if r.op == ">" { rv > v } else { rv < v };
                        if wrong {
                            return Err(at(
                                "resolve_value",
                                format!("{rv} must be on the safe side of value {v} (hysteresis)"),
                            ));
                        }
                    }
                }
                RuleKind::Hardware => {
                    for e in &r.events {
                        if !crate::model::EVENT_KINDS.contains(&e.as_str()) {
                            return Err(at(
                                "events",
                                format!(
                                    "unknown event kind {e:?}; use {}",
                                    crate::model::EVENT_KINDS.join(", ")
                                ),
                            ));
                        }
                    }
                    if r.resolve_after_secs == 0 {
                        return Err(at("resolve_after_secs", "must be at least 1".into()));
                    }
                }
                RuleKind::Absent => {
                    if r.after_secs < 5 {
                        return Err(at("after_secs", "must be at least 5".into()));
                    }
                }
                RuleKind::Anomaly => {
                    if r.for_secs < 60 {
                        return Err(at(
                            "for_secs",
                            format!(
                                "{} s: an anomaly rule needs at least 60 (scores are per minute); \
                                 600 rides out a single-minute glitch",
                                r.for_secs
                            ),
                        ));
                    }
                    if let Some(v) = r.min_score {
                        if !(v.is_finite() && v > 0.0) {
                            return Err(at("min_score", format!("{v} must be a positive number")));
                        }
                    }
                    if let Some(v) = r.resolve_ratio {
                        if !(v > 0.0 && v <= 1.0) {
                            return Err(at(
                                "resolve_ratio",
                                format!("{v} must be above 0 and at most 1 (hysteresis)"),
                            ));
                        }
                    }
                    if r.matchers.contains_key("gpu") {
                        return Err(at(
                            "match",
                            "anomaly alerts are per host; `gpu` cannot be matched".into(),
                        ));
                    }
                    for (field, set) in [
                        ("metric", !r.metric.is_empty()),
                        ("op", !r.op.is_empty()),
                        ("value", r.value.is_some()),
                        ("resolve_value", r.resolve_value.is_some()),
                    ] {
                        if set {
                            return Err(at(
                                field,
                                "not used by anomaly rules (use min_score / resolve_ratio)".into(),
                            ));
                        }
                    }
                }
            }
        }
        for (i, route) in set.routes.iter().enumerate() {
            if route.to.is_empty() {
                return Err(format!("route #{}: `to` needs at least one address", i + 1));
            }
            for addr in &route.to {
                if addr.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(format!(
                        "route #{}: {addr:?} is not an email address",
                        i + 1
                    ));
                }
            }
        }
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
}

impl Rule {
    /// Whether the rule's selectors accept these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_rules_are_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts.toml");
        let set = RuleSet::load(&p).unwrap();
        assert!(set.rules.iter().any(|r| r.kind == RuleKind::Hardware));
        assert!(set.rules.iter().any(|r| r.kind == RuleKind::Threshold));
        assert!(set.rules.iter().any(|r| r.kind == RuleKind::Absent));
        assert!(set.rules.iter().any(|r| r.kind == RuleKind::Anomaly));
    }

    fn anomaly_rule(extra: &str) -> Result<RuleSet, String> {
        RuleSet::parse(&format!(
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
        assert_eq!(r.kind, RuleKind::Anomaly);
        assert_eq!(r.for_secs, 900);
        assert_eq!(r.min_score, Some(4.5));
        assert_eq!(r.resolve_ratio, Some(0.5));
        assert_eq!(r.matchers["pool"], "train-a");
        // The model's own level and the default hysteresis when not given.
        let r = &anomaly_rule("for_secs = 600\n").unwrap().rules[0];
        assert_eq!((r.min_score, r.resolve_ratio), (None, None));
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
        let e = RuleSet::parse("[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.tmp\"\nop = \">\"\nvalue = 1\n").unwrap_err();
        assert!(e.contains("\"hot\"") && e.contains("`metric`"), "{e}");
        let e = RuleSet::parse("[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nseverity = \"warning\"\nmetric = \"gpu.temp_celsius\"\nop = \">\"\nvalue = 85\nresolve_value = 90\n").unwrap_err();
        assert!(e.contains("resolve_value"), "{e}");
        let e =
            RuleSet::parse("[[rule]]\nname = \"x\"\nkind = \"hardware\"\nseverity = \"fatal\"\n")
                .unwrap_err();
        assert!(e.contains("severity"), "{e}");
        let e = RuleSet::parse("[[route]]\nto = [\"not an address\"]\n").unwrap_err();
        assert!(e.contains("route #1"), "{e}");
        let e = RuleSet::parse("[[rule]]\nname = \"x\"\nkind = \"magic\"\nseverity = \"info\"\n")
            .unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn first_matching_route_wins() {
        let set = RuleSet::parse(
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
