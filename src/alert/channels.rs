//! Notification channels besides email, delivered from the same outbox: a generic
//! webhook in Alertmanager's webhook format (version 4, so receivers written for
//! Alertmanager work unchanged), Slack incoming webhooks (Block Kit) and PagerDuty's
//! Events API v2 (trigger and resolve, `dedup_key` = the alert's fingerprint).
//!
//! A delivery succeeds on a 2xx answer; anything else (a refused connection, a timeout,
//! any other status) leaves the group in the outbox to be retried with backoff, and no
//! sooner than a 429's or 503's `Retry-After` asks (up to 5 minutes, the longest backoff).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::eval::AlertSnapshot;
use super::location;
use crate::config::ChannelConfig;

/// The labels of an alert as Alertmanager sends them: `alertname`, `severity` and the
/// alert's own.
fn am_labels(a: &AlertSnapshot) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("alertname".into(), a.rule.clone().into());
    m.insert("severity".into(), a.severity.clone().into());
    for (k, v) in &a.labels {
        m.insert(k.clone(), v.clone().into());
    }
    m
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn host_link(a: &AlertSnapshot, public_url: &str) -> String {
    super::notify::alert_link(&a.labels, public_url)
}

/// Labels (or annotations) every alert of the group shares.
fn common(maps: &[Map<String, Value>]) -> Map<String, Value> {
    let mut out = maps.first().cloned().unwrap_or_default();
    out.retain(|k, v| maps.iter().all(|m| m.get(k) == Some(v)));
    out
}

/// Alertmanager's webhook payload (version 4) for one group.
pub fn alertmanager_payload(
    receiver: &str,
    group_key: &str,
    rows: &[(String, AlertSnapshot)],
    public_url: &str,
) -> Value {
    let labels: Vec<Map<String, Value>> = rows.iter().map(|(_, a)| am_labels(a)).collect();
    let annotations: Vec<Map<String, Value>> = rows
        .iter()
        .map(|(_, a)| {
            let mut m = Map::new();
            m.insert("summary".into(), a.summary.clone().into());
            m.insert("description".into(), a.description.clone().into());
            m
        })
        .collect();
    let alerts: Vec<Value> = rows
        .iter()
        .zip(labels.iter().zip(&annotations))
        .map(|((kind, a), (l, ann))| {
            let resolved = kind == "resolved";
            json!({
                "status": if resolved { "resolved" } else { "firing" },
                "labels": l,
                "annotations": ann,
                "startsAt": rfc3339(a.started_at),
                "endsAt": match (resolved, a.resolved_at) {
                    (true, Some(t)) => rfc3339(t),
                    _ => "0001-01-01T00:00:00Z".to_string(),
                },
                "generatorURL": host_link(a, public_url),
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    let firing = rows.iter().any(|(k, _)| k != "resolved");
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": {"alertname": rows[0].1.rule},
        "commonLabels": common(&labels),
        "commonAnnotations": common(&annotations),
        "externalURL": public_url,
        "alerts": alerts,
    })
}

/// Slack's text fields: `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Most alerts listed one by one in a Slack message (Slack allows 50 blocks).
const SLACK_ITEMS: usize = 20;

/// A Slack incoming-webhook message: a header with the mail's subject, one section per
/// alert (status, summary, place, since, link) and a context line.
pub fn slack_payload(rows: &[(String, AlertSnapshot)], public_url: &str) -> Value {
    let (subject, _, items) = super::notify::compose(rows, public_url);
    let mut header: String = subject.chars().take(150).collect();
    if header.len() < subject.len() {
        header.pop();
        header.push('…');
    }
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": header, "emoji": false}
    })];
    for i in items.iter().take(SLACK_ITEMS) {
        let icon = if i.status == "FIRING" {
            ":red_circle:"
        } else {
            ":large_green_circle:"
        };
        let mut text = format!(
            "{icon} *{}* {} — {}\n*Severity:* {}   *Since:* {}",
            i.status,
            slack_escape(&i.summary),
            slack_escape(&i.location),
            slack_escape(&i.severity),
            i.since
        );
        if !i.resolved.is_empty() {
            text.push_str(&format!("   *Resolved:* {}", i.resolved));
        }
        if !i.description.is_empty() {
            text.push_str(&format!(
                "\n{}",
                slack_cut(&i.description, SLACK_DESCRIPTION)
            ));
        }
        text.push_str(&format!("\n<{}|Open in Rackwatch>", i.link));
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    if items.len() > SLACK_ITEMS {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("… and {} more", items.len() - SLACK_ITEMS)}]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": format!("Rackwatch · <{public_url}/alerts|all alerts>")}]}));
    json!({"text": subject, "blocks": blocks})
}

/// Characters of an alert's description in its Slack section: Slack refuses a section
/// over 3,000 (and with it the whole message), and a kernel message may be 2,048 long
/// before the codes, meaning and action are added.
const SLACK_DESCRIPTION: usize = 2000;

/// `text` escaped for Slack in at most `max` characters, cut before an escape (never in
/// one) and marked with "…" when cut.
fn slack_cut(text: &str, max: usize) -> String {
    let full = slack_escape(text);
    if full.chars().count() <= max {
        return full;
    }
    let mut keep = max - 1;
    loop {
        let part = slack_escape(&text.chars().take(keep).collect::<String>());
        if part.chars().count() < max {
            return part + "…";
        }
        keep = keep * 3 / 4;
    }
}

/// PagerDuty's severities: critical, error, warning, info.
fn pd_severity(s: &str) -> &'static str {
    match s {
        "critical" => "critical",
        "warning" => "warning",
        "info" => "info",
        _ => "error",
    }
}

/// One PagerDuty Events API v2 event per alert: `trigger` while firing, `resolve` when
/// it ended, both with `dedup_key` = the fingerprint (PagerDuty folds repeats into one
/// incident and closes it on resolve).
pub fn pagerduty_events(
    routing_key: &str,
    rows: &[(String, AlertSnapshot)],
    public_url: &str,
) -> Vec<Value> {
    rows.iter()
        .map(|(kind, a)| {
            if kind == "resolved" {
                return json!({
                    "routing_key": routing_key,
                    "event_action": "resolve",
                    "dedup_key": a.fingerprint,
                });
            }
            let place = location(&a.labels);
            let mut details = Map::new();
            for (k, v) in &a.labels {
                details.insert(k.clone(), v.clone().into());
            }
            details.insert("description".into(), a.description.clone().into());
            details.insert("occurrences".into(), a.occurrences.into());
            if let Some(v) = a.value {
                details.insert("value".into(), v.into());
            }
            let summary: String = format!("{} — {place}", a.summary)
                .chars()
                .take(1024)
                .collect();
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": a.fingerprint,
                "payload": {
                    "summary": summary,
                    "source": a.labels.get("host").cloned().unwrap_or_else(|| "rackwatch".into()),
                    "severity": pd_severity(&a.severity),
                    "timestamp": rfc3339(a.started_at),
                    "component": a.labels.get("gpu").map(|g| format!("GPU {g}")),
                    "group": a.labels.get("pool").or(a.labels.get("rack")).cloned(),
                    "class": a.rule,
                    "custom_details": details,
                },
                "client": "Rackwatch",
                "client_url": public_url,
                "links": [{"href": host_link(a, public_url), "text": "Open in Rackwatch"}],
            })
        })
        .collect()
}

/// A request the channel did not take: why, and how long it asked to be left alone
/// (`Retry-After` on a 429 or 503: Slack's and PagerDuty's rate limits say so).
#[derive(Debug)]
pub struct Refusal {
    pub error: String,
    pub retry_after: Option<StdDuration>,
}

impl From<String> for Refusal {
    fn from(error: String) -> Refusal {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

/// A `Retry-After` header: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<StdDuration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(StdDuration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or_default())
}

/// POST one JSON body; Ok on 2xx.
async fn post(http: &reqwest::Client, c: &ChannelConfig, body: &Value) -> Result<(), Refusal> {
    let mut req = http
        .post(c.endpoint())
        .timeout(StdDuration::from_secs(c.timeout_secs))
        .json(body);
    if !c.bearer_token.is_empty() {
        req = req.bearer_auth(c.bearer_token.expose());
    }
    let r = req.send().await.map_err(|e| {
        // reqwest's message names the URL, whose path may be a secret (Slack): the error
        // names the scheme, host and port, and the innermost cause (refused, no such
        // name, certificate…).
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        let origin = reqwest::Url::parse(c.endpoint())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let mut cause = None;
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = Some(s.to_string());
            source = s.source();
        }
        let cause = cause.unwrap_or_else(|| e.without_url().to_string());
        Refusal::from(format!("{what} ({origin}): {cause}"))
    })?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let wait = match status.as_u16() {
        429 | 503 => retry_after(r.headers()),
        _ => None,
    };
    let text: String = r
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(Refusal {
        error: match wait {
            Some(w) => format!("answered {status} (Retry-After {} s): {text}", w.as_secs()),
            None => format!("answered {status}: {text}"),
        },
        retry_after: wait,
    })
}

/// A group delivered in part: its first `sent` rows reached the channel, then `error`
/// (and the channel's `Retry-After`, if it gave one).
#[derive(Debug)]
pub struct PartlySent {
    pub sent: usize,
    pub error: String,
    pub retry_after: Option<StdDuration>,
}

impl PartlySent {
    /// Nothing sent, for `error`.
    pub fn none(error: String) -> PartlySent {
        PartlySent {
            sent: 0,
            error,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for PartlySent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// Deliver one group to channel `name`. A webhook or Slack message carries the whole
/// group or nothing; PagerDuty takes one event per row, so a failure partway says how
/// many went (a retry sends the rest, not the ones already taken: past PagerDuty's rate
/// limit a large group would otherwise send its first events again and again).
pub async fn deliver(
    http: &reqwest::Client,
    name: &str,
    c: &ChannelConfig,
    group_key: &str,
    rows: &[(String, AlertSnapshot)],
    public_url: &str,
) -> Result<(), PartlySent> {
    let partly = |sent: usize| {
        move |r: Refusal| PartlySent {
            sent,
            error: r.error,
            retry_after: r.retry_after,
        }
    };
    match c.kind.as_str() {
        "webhook" => {
            let body = alertmanager_payload(name, group_key, rows, public_url);
            post(http, c, &body).await.map_err(partly(0))
        }
        "slack" => post(http, c, &slack_payload(rows, public_url))
            .await
            .map_err(partly(0)),
        "pagerduty" => {
            for (sent, ev) in pagerduty_events(c.routing_key.expose(), rows, public_url)
                .iter()
                .enumerate()
            {
                post(http, c, ev).await.map_err(partly(sent))?;
            }
            Ok(())
        }
        other => Err(PartlySent::none(format!("unknown channel kind {other:?}"))),
    }
}

/// A made-up firing alert for `rackwatch alerts test-notify`.
pub fn test_alert() -> AlertSnapshot {
    let mut labels = super::Labels::new();
    labels.insert("host".into(), "rackwatch-test".into());
    AlertSnapshot {
        fingerprint: "rackwatch-test-notification".into(),
        rule: "test-notification".into(),
        severity: "info".into(),
        labels,
        summary: "Rackwatch test notification".into(),
        description: "Sent by `rackwatch alerts test-notify`: the channel works.".into(),
        value: None,
        started_at: Utc::now(),
        resolved_at: None,
        occurrences: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(StdDuration::from_secs(120)));
        let at = (Utc::now() + chrono::Duration::seconds(90))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        h.insert("retry-after", at.parse().unwrap());
        let w = retry_after(&h).unwrap().as_secs();
        assert!((85..=90).contains(&w), "{w}");
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(StdDuration::ZERO), "a date gone by");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn a_long_description_is_cut_for_slack_never_inside_an_escape() {
        let long = "a&b ".repeat(1000);
        let cut = slack_cut(&long, SLACK_DESCRIPTION);
        assert!(
            cut.chars().count() <= SLACK_DESCRIPTION,
            "{}",
            cut.chars().count()
        );
        assert!(cut.ends_with('…'));
        let body = cut.trim_end_matches('…');
        assert!(
            body.ends_with("&amp;b") || body.ends_with(' ') || body.ends_with('a'),
            "{}",
            &body[body.len() - 12..]
        );
        assert_eq!(slack_cut("x < y", 100), "x &lt; y");
    }
}
