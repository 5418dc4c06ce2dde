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
    /// threshold: seconds the condition must hold before firing.
    #[serde(default)]
    pub for_secs: u64,
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
