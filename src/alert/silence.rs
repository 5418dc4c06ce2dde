//! Silences: label matchers with a start and an end, an author and a comment.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Labels;
use crate::store::Store;

/// A silence as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Silence {
    pub id: i64,
    /// Label matchers, all of which an alert's labels must equal to be muted.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub matchers: sqlx::types::Json<Labels>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub author: String,
    pub comment: String,
}

/// What a new silence's matchers name that no host of the fleet carries (kept: a host
/// being installed may be silenced ahead, but a misspelt name mutes nothing), one note
/// each, for the API's answer, the page and the command line.
pub async fn unknown_targets(store: &Store, m: &Labels) -> Result<Vec<String>, sqlx::Error> {
    let mut notes = Vec::new();
    if let Some(host) = m.get("host") {
        // A host taken out of the fleet reports nothing either.
        let known: bool = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM hosts WHERE name = $1 AND removed_at IS NULL) AS "known!""#,
            host
        )
        .fetch_one(&store.pool)
        .await?;
        if !known {
            notes.push(format!(
                "no host named {host:?} reports to this server: the silence mutes it once it does (a misspelt name mutes nothing)"
            ));
        }
    }
    for label in ["site", "rack", "pool"] {
        if let Some(v) = m.get(label) {
            let known: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM hosts WHERE removed_at IS NULL AND {label} = $1)"
            )))
            .bind(v)
            .fetch_one(&store.pool)
            .await?;
            if !known {
                notes.push(format!(
                    "no host of the fleet is in {label} {v:?}: the silence mutes it once one is (a misspelt name mutes nothing)"
                ));
            }
        }
    }
    Ok(notes)
}

/// Whether an active silence matches these labels (all of a silence's matchers equal).
pub async fn silenced<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM silences WHERE starts_at <= $2 AND ends_at > $2 AND $1::jsonb @> matchers) AS "silenced!""#,
        sqlx::types::Json(labels) as _,
        now,
    )
    .fetch_one(db)
    .await
}

/// Parse `key=value` matchers. A silence mutes an alert when every matcher equals the
/// alert's label, so a label given twice or an empty value could never match: both are
/// refused rather than stored as a silence that mutes nothing.
pub fn parse_matchers(items: &[String]) -> Result<Labels, String> {
    let mut m = Labels::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| format!("matcher {it:?} must look like host=gpu-17"))?;
        add_matcher(&mut m, k.trim(), v.trim()).map_err(|e| format!("matcher {it:?}: {e}"))?;
    }
    check_matchers(&m)?;
    Ok(m)
}

/// The labels a silence may match on.
pub const MATCHER_LABELS: [&str; 9] = [
    "site", "rack", "pool", "host", "gpu", "rule", "severity", "event", "xid",
];

/// Add one matcher `k=v`: a known label, given once, with a value of at most 256
/// printable characters.
pub fn add_matcher(m: &mut Labels, k: &str, v: &str) -> Result<(), String> {
    if !MATCHER_LABELS.contains(&k) {
        return Err(format!(
            "unknown label {k:?} (one of {})",
            MATCHER_LABELS.join(", ")
        ));
    }
    if v.is_empty() {
        return Err(format!("{k} has no value, like {k}=gpu-17"));
    }
    if v.chars().any(crate::model::validate::hidden_char) || v.chars().count() > 256 {
        return Err(format!(
            "{k}: the value must be at most 256 printable characters"
        ));
    }
    if v.trim() != v {
        return Err(format!(
            "{k}: {v:?} has spaces around it, which no label has"
        ));
    }
    // Labels with a closed set of values: a silence that names another could never match.
    match k {
        "gpu" if v.parse::<u16>().is_err() => {
            return Err(format!("gpu: {v:?} is not a GPU index (0, 1, …)"))
        }
        "xid" if v.parse::<u32>().is_err() => {
            return Err(format!("xid: {v:?} is not an XID code (79, 94, …)"))
        }
        "severity" if !crate::alert::rules::SEVERITIES.contains(&v) => {
            return Err(format!(
                "severity: {v:?} is not one of {}",
                crate::alert::rules::SEVERITIES.join(", ")
            ))
        }
        "event" if !crate::model::EVENT_KINDS.contains(&v) => {
            return Err(format!(
                "event: {v:?} is not one of {}",
                crate::model::EVENT_KINDS.join(", ")
            ))
        }
        _ => {}
    }
    // `host=a host=b`: a separator left out, not a host named "a host=b".
    if let Some(second) = v.split_whitespace().skip(1).find(|w| {
        w.split_once('=')
            .is_some_and(|(l, _)| MATCHER_LABELS.contains(&l))
    }) {
        return Err(format!(
            "{k}: {v:?} holds a second matcher ({second}); give each matcher on its own"
        ));
    }
    // Indexes and codes as alerts spell them: gpu=02 is GPU 2.
    let v = match k {
        "gpu" | "xid" => v.parse::<u32>().map_or(v.to_string(), |n| n.to_string()),
        _ => v.to_string(),
    };
    if let Some(first) = m.insert(k.to_string(), v.clone()) {
        return Err(format!(
            "label {k} is given twice ({k}={first}, {k}={v}); a silence mutes alerts that match all of its matchers, so make one silence for each"
        ));
    }
    Ok(())
}

/// A silence must be able to mute an alert of the rules file in force
/// (`alerting.rules_file`): a `rule` matcher names one of its rules, `severity` one that
/// rule's (or some rule's) severity, and every label it matches is one that such a rule's
/// alerts carry: `xid` and `event` come only with a hardware rule's `per_code = true`, a
/// capacity rule's alerts carry no `host`. A silence that could mute nothing is refused.
/// Without a readable rules file nothing is checked.
pub fn check_rule(m: &Labels, rules_file: &str) -> Result<(), String> {
    if rules_file.is_empty() {
        return Ok(());
    }
    let Ok(set) = crate::alert::rules::RuleSet::load(std::path::Path::new(rules_file)) else {
        return Ok(());
    };
    let named = m.get("rule");
    if let Some(rule) = named {
        if !set.rules.iter().any(|r| &r.name == rule) {
            let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
            return Err(format!(
                "rule: {rule:?} is not a rule of {rules_file} ({})",
                names.join(", ")
            ));
        }
    }
    if set.rules.iter().any(|r| r.may_match(m)) {
        return Ok(());
    }
    // Why not: a severity, a label or the combination no (such) rule has.
    let candidates: Vec<&crate::alert::rules::Rule> = set
        .rules
        .iter()
        .filter(|r| named.is_none_or(|n| *n == r.name))
        .collect();
    if let Some(sev) = m.get("severity") {
        if !candidates.iter().any(|r| &r.severity == sev) {
            return Err(match named {
                Some(n) => format!(
                    "severity: rule {n} raises {} alerts, not {sev}",
                    candidates[0].severity
                ),
                None => format!("severity: no rule of {rules_file} raises {sev} alerts"),
            });
        }
    }
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|r| m.get("severity").is_none_or(|s| *s == r.severity))
        .collect();
    let labels: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "rule" | "severity"))
        .collect();
    let hint = |l: &str| {
        match l {
        "xid" | "event" => " (hardware rules give their alerts event and xid labels only with per_code = true; match the rule instead, like rule=gpu-xid)",
        "host" | "gpu" => " (capacity alerts are per pool or rack)",
        _ => "",
    }
    };
    let carried_by_none = |l: &&&str| !candidates.iter().any(|r| r.carries(&[**l]));
    Err(match (labels.iter().find(carried_by_none), named) {
        (Some(l), Some(n)) => format!("{l}: the alerts of rule {n} carry no {l} label{}", hint(l)),
        (Some(l), None) => format!(
            "{l}: no rule of {rules_file} gives its alerts a {l} label{}",
            hint(l)
        ),
        (None, Some(n)) => format!(
            "{}: the alerts of rule {n} never carry all of these labels with these values",
            labels.join(", ")
        ),
        (None, None) => format!(
            "{}: no rule of {rules_file} raises alerts with all of these labels and values",
            labels.join(", ")
        ),
    })
}

/// A silence needs at least one matcher.
pub fn check_matchers(m: &Labels) -> Result<(), String> {
    if m.is_empty() {
        return Err("a silence needs at least one matcher (it would mute everything)".into());
    }
    Ok(())
}

/// The longest comment a silence keeps.
pub const MAX_COMMENT_CHARS: usize = 1000;

/// A silence's comment: at most [`MAX_COMMENT_CHARS`] characters, no control characters
/// other than line breaks and tabs.
pub fn check_comment(c: &str) -> Result<(), String> {
    if c.chars().count() > MAX_COMMENT_CHARS {
        return Err(format!(
            "the comment is over {MAX_COMMENT_CHARS} characters"
        ));
    }
    if c.chars()
        .any(|ch| crate::model::validate::hidden_char(ch) && !matches!(ch, '\n' | '\r' | '\t'))
    {
        return Err("the comment holds a control or text-direction character".into());
    }
    Ok(())
}

/// The longest silence: a fault muted for longer is better fixed or its rule changed.
pub const MAX_SILENCE_HOURS: i64 = 24 * 90;

/// When a silence of `hours` made at `now` ends: more than nothing and at most
/// [`MAX_SILENCE_HOURS`].
pub fn silence_end(now: DateTime<Utc>, hours: f64) -> Result<DateTime<Utc>, String> {
    // At least one second once rounded to whole seconds.
    if !(hours * 3600.0 >= 0.5 && hours <= MAX_SILENCE_HOURS as f64) {
        return Err(format!(
            "a silence lasts at least 1 second and at most {MAX_SILENCE_HOURS} hours ({} days)",
            MAX_SILENCE_HOURS / 24
        ));
    }
    Ok(now + chrono::Duration::seconds((hours * 3600.0).round() as i64))
}

/// How far ahead a silence may be scheduled (a maintenance window).
pub const MAX_SCHEDULE_DAYS: i64 = 90;

/// When a silence asked for at `now` starts: `start` for a maintenance window ahead (at
/// most [`MAX_SCHEDULE_DAYS`]), now when none is given or `start` has passed.
pub fn silence_start(
    now: DateTime<Utc>,
    start: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, String> {
    match start {
        Some(t) if t > now + chrono::Duration::days(MAX_SCHEDULE_DAYS) => Err(format!(
            "{} is more than {MAX_SCHEDULE_DAYS} days ahead",
            t.to_rfc3339()
        )),
        Some(t) if t > now => Ok(t),
        // A browser or host whose clock is a little behind asks for "now" in the past.
        Some(t) if t < now - chrono::Duration::minutes(PAST_START_SLACK_MINUTES) => Err(format!(
            "{} is in the past; a silence starts now (leave the start out) or later",
            t.to_rfc3339()
        )),
        _ => Ok(now),
    }
}

/// How far in the past a silence's start may be and still mean "now" (clock skew).
pub const PAST_START_SLACK_MINUTES: i64 = 5;

impl Store {
    /// Create a silence; returns it as stored.
    pub async fn create_silence(
        &self,
        matchers: &Labels,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        author: &str,
        comment: &str,
    ) -> anyhow::Result<Silence> {
        if ends_at <= starts_at {
            anyhow::bail!("a silence must end after it starts");
        }
        Ok(sqlx::query_as!(
            Silence,
            r#"INSERT INTO silences (matchers, starts_at, ends_at, author, comment) VALUES ($1, $2, $3, $4, $5)
               RETURNING id, matchers AS "matchers: sqlx::types::Json<Labels>", starts_at, ends_at, author, comment"#,
            sqlx::types::Json(matchers) as _,
            starts_at,
            ends_at,
            author,
            comment,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Silences not yet over (those scheduled ahead included), by start.
    pub async fn active_silences(&self, now: DateTime<Utc>) -> Result<Vec<Silence>, sqlx::Error> {
        sqlx::query_as!(
            Silence,
            r#"SELECT id, matchers AS "matchers: sqlx::types::Json<Labels>", starts_at, ends_at, author, comment
                 FROM silences WHERE ends_at > $1 ORDER BY starts_at"#,
            now,
        )
        .fetch_all(&self.pool)
            .await
    }

    /// End a silence now: the silence as ended, or `None` when no active or scheduled one
    /// has `id`. A window scheduled ahead that has not started is cancelled (deleted; it
    /// muted nothing) and comes back as it was planned, with `true`.
    pub async fn expire_silence(&self, id: i64) -> Result<Option<(Silence, bool)>, sqlx::Error> {
        let cancelled = sqlx::query_as!(
            Silence,
            r#"DELETE FROM silences WHERE id = $1 AND starts_at > now()
               RETURNING id, matchers AS "matchers: sqlx::types::Json<Labels>", starts_at, ends_at, author, comment"#,
            id
        )
        .fetch_optional(&self.pool)
        .await?;
        if let Some(s) = cancelled {
            return Ok(Some((s, true)));
        }
        Ok(sqlx::query_as!(
            Silence,
            r#"UPDATE silences SET ends_at = now(), end_recorded = true
                WHERE id = $1 AND ends_at > now()
               RETURNING id, matchers AS "matchers: sqlx::types::Json<Labels>", starts_at, ends_at, author, comment"#,
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|s| (s, false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_and_refuse_nonsense() {
        let m = parse_matchers(&["host=gpu-17".into(), "rule=gpu-xid".into()]).unwrap();
        assert_eq!(m.get("host").unwrap(), "gpu-17");
        assert!(parse_matchers(&[]).unwrap_err().contains("at least one"));
        assert!(parse_matchers(&["hostgpu".into()])
            .unwrap_err()
            .contains("host=gpu-17"));
        assert!(parse_matchers(&["colour=red".into()])
            .unwrap_err()
            .contains("unknown label"));
        assert!(parse_matchers(&["host=".into()])
            .unwrap_err()
            .contains("has no value"));
        assert!(parse_matchers(&["host=a".into(), "host=b".into()])
            .unwrap_err()
            .contains("given twice"));
        assert!(parse_matchers(&["host=a\nb".into()])
            .unwrap_err()
            .contains("printable"));
        for (bad, says) in [
            ("gpu=abc", "not a GPU index"),
            ("xid=x79", "not an XID code"),
            ("severity=banana", "not one of critical, warning, info"),
            ("event=bogus", "event: \"bogus\" is not one of xid"),
            (
                "host=rwtest-c host=rwtest-d",
                "holds a second matcher (host=rwtest-d); give each matcher on its own",
            ),
        ] {
            assert!(
                parse_matchers(&[bad.into()]).unwrap_err().contains(says),
                "{bad}"
            );
        }
        let mut m = Labels::new();
        assert!(add_matcher(&mut m, "host", " gpu-17 ")
            .unwrap_err()
            .contains("spaces around"));
        assert!(
            parse_matchers(&["gpu=3".into(), "xid=79".into(), "severity=critical".into()]).is_ok()
        );
        assert!(check_comment(&"x".repeat(1000)).is_ok());
        assert!(check_comment("two\nlines").is_ok());
        assert!(check_comment(&"x".repeat(1001))
            .unwrap_err()
            .contains("over 1000"));
        assert!(check_comment("bell\u{7}").unwrap_err().contains("control"));
        let spaced = parse_matchers(&[" host = gpu-17 ".into()]).unwrap();
        assert_eq!(spaced.get("host").unwrap(), "gpu-17");
        // A host name with spaces (and '=' after something that is no label) is a name.
        let odd = parse_matchers(&["host=rack 3 node=7".into(), "event=gpu_lost".into()]).unwrap();
        assert_eq!(odd.get("host").unwrap(), "rack 3 node=7");
    }

    #[test]
    fn a_rule_matcher_names_a_rule_of_the_rules_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.toml");
        std::fs::write(
            &file,
            "[[rule]]\nname = \"gpu-xid\"\nkind = \"hardware\"\nevents = [\"xid\"]\nseverity = \"critical\"\n",
        )
        .unwrap();
        let path = file.to_string_lossy();
        let m = |r: &str| parse_matchers(&[format!("rule={r}")]).unwrap();
        assert!(check_rule(&m("gpu-xid"), &path).is_ok());
        let e = check_rule(&m("gpu-xdi"), &path).unwrap_err();
        assert!(
            e.contains("\"gpu-xdi\" is not a rule of") && e.ends_with("(gpu-xid)"),
            "{e}"
        );
        // No rules file: nothing to check against.
        assert!(check_rule(&m("anything"), "").is_ok());
    }

    #[test]
    fn a_silence_that_could_mute_no_alert_of_the_rules_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.toml");
        let rules = |per_code: bool| {
            std::fs::write(
                &file,
                format!(
                    "[[rule]]\nname = \"gpu-xid\"\nkind = \"hardware\"\nevents = [\"xid\"]\nseverity = \"critical\"\nper_code = {per_code}\n\
                     [[rule]]\nname = \"capacity-short\"\nkind = \"capacity\"\nseverity = \"warning\"\n"
                ),
            )
            .unwrap();
        };
        let path = file.to_string_lossy();
        let m = |items: &[&str]| {
            parse_matchers(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        rules(false);
        // One alert per GPU: its labels hold no XID code.
        let e = check_rule(&m(&["xid=79"]), &path).unwrap_err();
        assert!(
            e.starts_with("xid: no rule of") && e.contains("per_code = true"),
            "{e}"
        );
        assert!(check_rule(&m(&["rule=gpu-xid", "host=gpu-7"]), &path).is_ok());
        let e = check_rule(&m(&["rule=capacity-short", "host=gpu-7"]), &path).unwrap_err();
        assert!(
            e.starts_with("host: the alerts of rule capacity-short carry no host label"),
            "{e}"
        );
        let e = check_rule(&m(&["rule=gpu-xid", "severity=warning"]), &path).unwrap_err();
        assert_eq!(
            e,
            "severity: rule gpu-xid raises critical alerts, not warning"
        );
        let e = check_rule(&m(&["severity=info"]), &path).unwrap_err();
        assert!(e.ends_with("raises info alerts"), "{e}");
        // host and pool together: each rule's alerts carry both.
        assert!(check_rule(&m(&["host=gpu-7", "pool=train"]), &path).is_ok());
        // A host's pool with a capacity severity: only the hardware rule carries host, and
        // it is critical.
        let e = check_rule(&m(&["host=gpu-7", "severity=warning"]), &path).unwrap_err();
        assert!(e.starts_with("host: no rule of"), "{e}");
        rules(true);
        assert!(check_rule(&m(&["xid=79"]), &path).is_ok());
        assert!(check_rule(&m(&["event=xid", "host=gpu-7"]), &path).is_ok());
    }

    #[test]
    fn gpu_and_xid_matchers_are_spelled_as_alerts_spell_them() {
        let m = parse_matchers(&["gpu=02".into(), "xid=079".into()]).unwrap();
        assert_eq!((m["gpu"].as_str(), m["xid"].as_str()), ("2", "79"));
    }

    #[test]
    fn a_silence_starts_now_or_at_most_ninety_days_ahead() {
        let now = Utc::now();
        assert_eq!(silence_start(now, None).unwrap(), now);
        // A start a little behind (a clock that runs late) is now; one an hour ago is a
        // mistake, not a silence that ends an hour early.
        let late_clock = now - chrono::Duration::minutes(2);
        assert_eq!(silence_start(now, Some(late_clock)).unwrap(), now);
        let past = now - chrono::Duration::hours(1);
        assert!(silence_start(now, Some(past))
            .unwrap_err()
            .contains("is in the past"));
        let tonight = now + chrono::Duration::hours(9);
        assert_eq!(silence_start(now, Some(tonight)).unwrap(), tonight);
        let far = now + chrono::Duration::days(91);
        assert!(silence_start(now, Some(far))
            .unwrap_err()
            .contains("more than 90 days ahead"));
    }

    #[test]
    fn a_silence_lasts_more_than_nothing_and_at_most_ninety_days() {
        let now = Utc::now();
        assert_eq!(
            silence_end(now, 2.0).unwrap(),
            now + chrono::Duration::hours(2)
        );
        assert_eq!(
            silence_end(now, 2160.0).unwrap(),
            now + chrono::Duration::days(90)
        );
        assert_eq!(
            silence_end(now, 1.0 / 3600.0).unwrap(),
            now + chrono::Duration::seconds(1)
        );
        for bad in [
            0.0,
            -1.0,
            1e-6,
            5e-324,
            2160.01,
            f64::NAN,
            f64::INFINITY,
            1e300,
        ] {
            assert!(
                silence_end(now, bad)
                    .unwrap_err()
                    .contains("at most 2160 hours"),
                "{bad}"
            );
        }
    }
}
