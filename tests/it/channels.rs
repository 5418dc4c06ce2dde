//! Notification channels end to end: ingest → evaluator → outbox → a real HTTP receiver
//! on loopback (started by the test, recording every request and failing the first N of
//! each path) as an Alertmanager webhook receiver, a Slack incoming webhook and
//! PagerDuty's Events API v2 would be.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use chrono::Utc;
use serde_json::{json, Value};

use crate::support::{fresh_database, TestApp};

/// One request as the receiver saw it, and what it answered.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    auth: Option<String>,
    body: Value,
    ok: bool,
    at: std::time::Instant,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Path → requests still to fail with 503.
    fail: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Path → the numbers (from 1) of its requests that fail with 503.
    fail_nth: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
    /// Path → requests still to refuse with 429 and `Retry-After: 5`.
    throttle: Arc<Mutex<BTreeMap<String, usize>>>,
}

async fn record(
    State(r): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, HeaderMap, String) {
    let path = uri.path().to_string();
    let nth = r
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == path)
        .count()
        + 1;
    let ok = {
        let mut f = r.fail.lock().unwrap();
        match f.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        }
    } && !r
        .fail_nth
        .lock()
        .unwrap()
        .get(&path)
        .is_some_and(|v| v.contains(&nth));
    let throttled = ok && {
        let mut t = r.throttle.lock().unwrap();
        match t.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    let ok = ok && !throttled;
    r.seen.lock().unwrap().push(Seen {
        at: std::time::Instant::now(),
        path: path.clone(),
        auth: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        ok,
    });
    let mut h = HeaderMap::new();
    if throttled {
        h.insert("retry-after", "5".parse().unwrap());
        return (StatusCode::TOO_MANY_REQUESTS, h, "slow down".into());
    }
    if !ok {
        return (StatusCode::SERVICE_UNAVAILABLE, h, "try later".into());
    }
    if path == "/pd" {
        (
            StatusCode::ACCEPTED,
            h,
            r#"{"status":"success","message":"Event processed"}"#.into(),
        )
    } else {
        (StatusCode::OK, h, "ok".into())
    }
}

/// The receiver: a real HTTP server on a loopback port.
async fn receiver(fail: &[(&str, usize)]) -> (String, Recorder) {
    let rec = Recorder::default();
    rec.fail
        .lock()
        .unwrap()
        .extend(fail.iter().map(|(p, n)| (p.to_string(), *n)));
    let app = axum::Router::new().fallback(record).with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, rec)
}

impl Recorder {
    fn ok(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path && s.ok)
            .map(|s| s.body.clone())
            .collect()
    }
    fn all(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
    async fn wait(&self, path: &str, n: usize, secs: u64) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.ok(path);
            if v.len() >= n || std::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"
resolve_after_secs = 12

[[route]]
match = { severity = "critical" }
to = ["webhook:am", "slack:ops", "pagerduty:pd"]
"#;

fn channels(base: &str) -> BTreeMap<String, rackwatch::config::ChannelConfig> {
    let parse = |t: &str| toml::from_str::<rackwatch::config::ChannelConfig>(t).unwrap();
    BTreeMap::from([
        (
            "am".to_string(),
            parse(&format!(
                "kind = \"webhook\"\nurl = \"{base}/am\"\nbearer_token = \"am-secret\""
            )),
        ),
        (
            "ops".to_string(),
            parse(&format!("kind = \"slack\"\nurl = \"{base}/slack\"")),
        ),
        (
            "pd".to_string(),
            parse(&format!(
                "kind = \"pagerduty\"\nurl = \"{base}/pd\"\nrouting_key = \"R0UTINGKEY000000000000000000000\""
            )),
        ),
    ])
}

#[tokio::test]
async fn webhook_slack_and_pagerduty_get_one_delivery_per_group_and_the_resolve() {
    // The webhook fails twice and PagerDuty once before they accept.
    let (base, rec) = receiver(&[("/am", 2), ("/pd", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let chans = channels(&base);
    let app = TestApp::spawn_full(fresh_database().await, |c| {
        c.alerting.rules_file = rules.to_string_lossy().into_owned();
        c.alerting.eval_interval_secs = 1;
        c.alerting.group_wait_secs = 1;
        c.alerting.group_interval_secs = 0;
        c.alerting.channels = chans;
        c.server.public_url = "https://rackwatch.example".into();
    })
    .await;
    let token = app.token("gpu-17").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-17", "site": "fra1", "rack": "r12", "pool": "train"},
    "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}],
    "events": [
        {"ts": t0, "index": 3, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."},
        {"ts": t0, "index": 5, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."}
    ]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);

    // Firing: one delivery per channel for the group of two alerts, after the retries.
    let am = rec.wait("/am", 1, 30).await;
    assert_eq!(am.len(), 1, "{am:?}");
    let a = &am[0];
    assert_eq!(a["version"], "4");
    assert_eq!(a["status"], "firing");
    assert_eq!(a["receiver"], "am");
    assert_eq!(a["groupKey"], "gpu-xid|webhook:am");
    assert_eq!(a["groupLabels"], json!({"alertname": "gpu-xid"}));
    assert_eq!(a["commonLabels"]["alertname"], "gpu-xid");
    assert_eq!(a["commonLabels"]["severity"], "critical");
    assert_eq!(a["commonLabels"]["host"], "gpu-17");
    assert!(a["commonLabels"].get("gpu").is_none(), "GPUs differ: {a}");
    assert_eq!(a["externalURL"], "https://rackwatch.example");
    let alerts = a["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2, "{a:#}");
    let mut gpus: Vec<&str> = alerts
        .iter()
        .map(|x| x["labels"]["gpu"].as_str().unwrap())
        .collect();
    gpus.sort();
    assert_eq!(gpus, ["3", "5"]);
    for x in alerts {
        assert_eq!(x["status"], "firing");
        assert_eq!(x["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(x["annotations"]["summary"], "GPU reported an XID error");
        assert!(x["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("79"));
        // The GPU's own page.
        assert_eq!(
            x["generatorURL"],
            format!(
                "https://rackwatch.example/hosts/gpu-17/gpus/{}",
                x["labels"]["gpu"].as_str().unwrap()
            )
        );
        assert!(x["fingerprint"].as_str().unwrap().len() > 8);
        chrono::DateTime::parse_from_rfc3339(x["startsAt"].as_str().unwrap()).unwrap();
    }
    let tries = rec.all("/am");
    assert_eq!(tries.iter().filter(|s| !s.ok).count(), 2);
    assert!(tries
        .iter()
        .all(|s| s.auth.as_deref() == Some("Bearer am-secret")));
    // Retries send the same payload.
    assert_eq!(tries[0].body["alerts"], tries[2].body["alerts"]);

    let slack = rec.wait("/slack", 1, 10).await;
    assert_eq!(slack.len(), 1);
    let s = &slack[0];
    assert!(
        s["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING:CRITICAL] GPU reported an XID error"),
        "{s}"
    );
    let blocks = s["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    let sections: Vec<&str> = blocks
        .iter()
        .filter(|b| b["type"] == "section")
        .map(|b| b["text"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(sections.len(), 2);
    assert!(sections
        .iter()
        .any(|t| t.contains("fra1 / r12 / gpu-17 / GPU 3")));
    assert!(sections.iter().all(|t| t.contains("*FIRING*")
        && t.contains("<https://rackwatch.example/hosts/gpu-17/gpus/")
        && t.contains("|Open in Rackwatch>")));

    let pd = rec.wait("/pd", 2, 10).await;
    assert_eq!(pd.len(), 2, "one trigger per alert: {pd:?}");
    assert_eq!(rec.all("/pd").iter().filter(|s| !s.ok).count(), 1);
    let fingerprints: Vec<String> = alerts
        .iter()
        .map(|x| x["fingerprint"].as_str().unwrap().to_string())
        .collect();
    for e in &pd {
        assert_eq!(e["routing_key"], "R0UTINGKEY000000000000000000000");
        assert_eq!(e["event_action"], "trigger");
        assert!(fingerprints.contains(&e["dedup_key"].as_str().unwrap().to_string()));
        let p = &e["payload"];
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "gpu-17");
        assert_eq!(p["class"], "gpu-xid");
        assert_eq!(p["group"], "train");
        assert!(p["summary"]
            .as_str()
            .unwrap()
            .starts_with("GPU reported an XID error — fra1 / r12 / gpu-17 / GPU "));
        assert!(p["component"].as_str().unwrap().starts_with("GPU "));
        chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap()).unwrap();
        assert!(e["links"][0]["href"]
            .as_str()
            .unwrap()
            .starts_with("https://rackwatch.example/hosts/gpu-17/gpus/"));
    }

    // Resolved: the alerts end 12 s after the last event (after the retries above, so
    // that firing and resolved arrive apart); each channel hears it once.
    let am = rec.wait("/am", 2, 30).await;
    assert_eq!(am.len(), 2);
    assert_eq!(am[1]["status"], "resolved");
    for x in am[1]["alerts"].as_array().unwrap() {
        assert_eq!(x["status"], "resolved");
        assert_ne!(x["endsAt"], "0001-01-01T00:00:00Z");
    }
    let slack = rec.wait("/slack", 2, 10).await;
    assert!(slack[1]["text"]
        .as_str()
        .unwrap()
        .starts_with("[RESOLVED:CRITICAL]"));
    let pd = rec.wait("/pd", 4, 10).await;
    let resolves: Vec<&Value> = pd
        .iter()
        .filter(|e| e["event_action"] == "resolve")
        .collect();
    assert_eq!(resolves.len(), 2);
    let mut keys: Vec<&str> = resolves
        .iter()
        .map(|e| e["dedup_key"].as_str().unwrap())
        .collect();
    keys.sort();
    let mut want: Vec<&str> = fingerprints.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(keys, want);
    assert!(resolves.iter().all(|e| e.get("payload").is_none()));

    // Nothing more arrives (sent once), and /metrics and the Alerts page show the state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rec.ok("/am").len(), 2);
    assert_eq!(rec.ok("/slack").len(), 2);
    assert_eq!(rec.ok("/pd").len(), 4);
    let m = app.metrics().await;
    for ch in ["webhook:am", "slack:ops", "pagerduty:pd"] {
        assert!(
            m.contains(&format!(
                "rackwatch_notifications_delivered_total{{channel=\"{ch}\"}} 4"
            )),
            "{ch}: {m}"
        );
        assert!(m.contains(&format!(
            "rackwatch_notifications_pending{{channel=\"{ch}\",state=\"failing\"}} 0"
        )));
    }
    let cookie = app.login("admin", "admin-password-1").await;
    let (code, html) = app.page(&cookie, "/alerts").await;
    assert_eq!(code, 200);
    assert!(
        html.contains(
            r#"<td data-label="Channel">webhook:am</td><td data-label="Delivered">4</td>"#
        ),
        "{html}"
    );

    // `rackwatch alerts test-notify`: one request; an unknown channel is named.
    rackwatch::alert::notify::send_test_channel(&app.cfg, "ops")
        .await
        .unwrap();
    let slack = rec.ok("/slack");
    assert_eq!(slack.len(), 3);
    assert!(slack[2]["text"]
        .as_str()
        .unwrap()
        .contains("Rackwatch test notification"));
    let e = rackwatch::alert::notify::send_test_channel(&app.cfg, "nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no channel \"nope\""), "{e}");
    // Routes' spelling of a channel gets the name to give.
    let e = rackwatch::alert::notify::send_test_channel(&app.cfg, "slack:ops")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("give the channel's name: ops"), "{e}");
    // A receiver that is not there: where it was tried and why it failed (the path, which
    // may hold a secret, is left out).
    let mut cfg = (*app.cfg).clone();
    cfg.alerting.channels.insert(
        "down".into(),
        toml::from_str("kind = \"webhook\"\nurl = \"http://127.0.0.1:9/secret-path\"").unwrap(),
    );
    let e = rackwatch::alert::notify::send_test_channel(&cfg, "down")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("connection failed (http://127.0.0.1:9): ")
            && e.to_lowercase().contains("refused")
            && !e.contains("secret-path"),
        "{e}"
    );
    app.stop().await;
}

/// A server with [`RULES`] and [`channels`] at `base`, evaluating every second.
async fn channel_app(base: &str) -> (TestApp, tempfile::TempDir) {
    channel_app_with(base, RULES).await
}

/// [`channel_app`] with these rules.
async fn channel_app_with(base: &str, rules_toml: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, rules_toml).unwrap();
    let chans = channels(base);
    let app = TestApp::spawn_full(fresh_database().await, |c| {
        c.alerting.rules_file = rules.to_string_lossy().into_owned();
        c.alerting.eval_interval_secs = 1;
        c.alerting.group_wait_secs = 1;
        c.alerting.group_interval_secs = 0;
        c.alerting.channels = chans;
    })
    .await;
    (app, dir)
}

/// PagerDuty takes a group one event at a time: after a failure partway, the retry
/// sends the events not yet taken, not the whole group again.
#[tokio::test]
async fn a_pagerduty_group_that_fails_partway_sends_only_the_rest_again() {
    let (base, rec) = receiver(&[]).await;
    rec.fail_nth.lock().unwrap().insert("/pd".into(), vec![2]);
    let (app, _rules) = channel_app(&base).await;
    let token = app.token("gpu-19").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let events: Vec<Value> = (0..3)
        .map(|g| json!({"ts": t0, "index": g, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."}))
        .collect();
    let body = json!({"host": {"name": "gpu-19"},
        "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}], "events": events});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let pd = rec.wait("/pd", 3, 20).await;
    let mut keys: Vec<&str> = pd
        .iter()
        .filter(|e| e["event_action"] == "trigger")
        .map(|e| e["dedup_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{pd:?}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "each trigger taken once: {pd:?}");
    assert_eq!(rec.all("/pd").len(), 4, "three taken, one refused");
    app.stop().await;
}

/// A channel's rate limit (429 with `Retry-After: 5`) is waited out: the retry comes no
/// sooner than asked, where the backoff alone would retry after 2 s.
#[tokio::test]
async fn a_rate_limited_channel_is_retried_no_sooner_than_it_asks() {
    let (base, rec) = receiver(&[]).await;
    rec.throttle.lock().unwrap().insert("/am".into(), 1);
    let (app, _rules) = channel_app(&base).await;
    let token = app.token("gpu-21").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-21"},
        "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}],
        "events": [{"ts": t0, "index": 0, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let am = rec.wait("/am", 1, 30).await;
    assert_eq!(am.len(), 1, "delivered after the wait");
    let tries = rec.all("/am");
    assert_eq!(tries.len(), 2, "one refusal, one delivery: {tries:?}");
    assert!(!tries[0].ok && tries[1].ok);
    let waited = tries[1].at - tries[0].at;
    assert!(
        waited >= Duration::from_millis(4500),
        "retried after {waited:?}"
    );
    app.stop().await;
}

/// A channel's `Retry-After` holds every group bound for it, not only the one it answered:
/// two alerts of different rules (two groups) due at once, the second is not sent into
/// the same rate limit.
#[tokio::test]
async fn a_rate_limit_holds_every_group_bound_for_the_channel() {
    let (base, rec) = receiver(&[]).await;
    rec.throttle.lock().unwrap().insert("/am".into(), 1);
    let (app, _rules) = channel_app_with(
        &base,
        r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"

[[rule]]
name = "gpu-lost"
kind = "hardware"
events = ["gpu_lost"]
severity = "critical"
summary = "GPU lost"

[[route]]
to = ["webhook:am"]
"#,
    )
    .await;
    let token = app.token("gpu-22").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-22"},
        "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}],
        "events": [{"ts": t0, "index": 0, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."},
                   {"ts": t0, "index": 1, "kind": "gpu_lost", "message": "GPU lost"}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let am = rec.wait("/am", 2, 30).await;
    assert_eq!(am.len(), 2, "both groups delivered");
    let tries = rec.all("/am");
    assert!(!tries[0].ok, "{tries:?}");
    for t in &tries[1..] {
        let after = t.at - tries[0].at;
        assert!(
            after >= Duration::from_millis(4500),
            "a request {after:?} after the 429: {tries:?}"
        );
    }
    app.stop().await;
}

/// A resolve queued while its firing notice waits out a retry waits with it: PagerDuty
/// hears the trigger first (a resolve first would leave an incident nothing closes).
#[tokio::test]
async fn a_resolve_never_overtakes_its_firing_notice_held_by_retries() {
    // The trigger is retried at about 1, 3 and 7 s and waits until about 15 s; the alert
    // resolves 12 s after its event.
    let (base, rec) = receiver(&[("/pd", 3)]).await;
    let (app, _rules) = channel_app(&base).await;
    let token = app.token("gpu-18").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-18"},
        "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}],
        "events": [{"ts": t0, "index": 1, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let pd = rec.wait("/pd", 2, 45).await;
    let actions: Vec<&str> = pd
        .iter()
        .map(|e| e["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "resolve"], "{pd:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_channel_that_keeps_failing_keeps_its_notifications_and_says_why() {
    let (base, rec) = receiver(&[("/am", 1000)]).await;
    let (app, _rules) = channel_app_with(
        &base,
        &RULES.replace("\"slack:ops\", \"pagerduty:pd\"", "\"ops@example.com\""),
    )
    .await;
    let token = app.token("gpu-9").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-9"},
        "events": [{"ts": t0, "index": 0, "kind": "xid", "code": 48}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rec.all("/am").len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rec.all("/am").len() >= 2, "retried");
    let m = app.metrics().await;
    assert!(
        m.contains("rackwatch_notifications_pending{channel=\"webhook:am\",state=\"failing\"} 1"),
        "{m}"
    );
    // Mail without SMTP waits in its own row; the webhook's failure does not touch it.
    assert!(
        m.contains("rackwatch_notifications_pending{channel=\"email\",state=\"waiting\"} 1"),
        "{m}"
    );
    let (err,): (String,) = sqlx::query_as(
        "SELECT last_error FROM notification_outbox WHERE recipients = ARRAY['webhook:am']",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert!(err.contains("503"), "{err}");
    app.stop().await;
}

/// Before: without SMTP, waiting mail stayed due and the sender read the oldest 2,000 due
/// notifications; past 2,000 waiting mails, webhook, Slack and PagerDuty messages behind
/// them never went out.
#[tokio::test]
async fn waiting_mail_without_smtp_does_not_hold_back_the_channels() {
    let (base, rec) = receiver(&[]).await;
    let (app, _rules) = channel_app(&base).await;
    // 2,100 mails waiting for 12 hours (no SMTP server configured), and 50 for two days.
    for (group, n, age) in [("old", 2100, "12 hours"), ("stale", 50, "2 days")] {
        sqlx::query(
            "INSERT INTO notification_outbox (group_key, fingerprint, kind, recipients, alert, created_at, next_attempt_at)
             SELECT $1::text || '|ops@example.com', $1::text || '|n=' || i, 'firing', ARRAY['ops@example.com'],
                    jsonb_build_object('fingerprint', $1::text || '|n=' || i, 'rule', $1::text, 'severity', 'warning',
                      'labels', jsonb_build_object('n', i::text), 'summary', 's', 'description', '', 'value', NULL,
                      'started_at', '2026-01-01T00:00:00Z', 'resolved_at', NULL, 'occurrences', 1),
                    now() - $3::interval, now() - $3::interval
               FROM generate_series(1, $2) i",
        )
        .bind(group)
        .bind(n)
        .bind(age)
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    let token = app.token("gpu-17").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"host": {"name": "gpu-17"}, "host_samples": [{"ts": t0, "cpu_util_pct": 10.0}],
        "events": [{"ts": t0, "index": 3, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus."}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let am = rec.wait("/am", 1, 30).await;
    assert_eq!(am.len(), 1, "the webhook got its message");
    assert_eq!(am[0]["status"], "firing");
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL AND group_key LIKE 'old|%'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 2100, "mail waits for SMTP, nothing dropped");
    // Past a day unsent, a notification is stale: dropped, the reason on its row.
    let expired: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT DISTINCT last_error FROM notification_outbox
          WHERE group_key LIKE 'stale|%' AND sent_at IS NOT NULL AND message_id IS NULL",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        expired,
        [(Some("expired: not sent within 24 h".to_string()),)],
        "all 50 expired"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_outbox WHERE group_key LIKE 'stale|%' AND sent_at IS NULL",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    // The alerts page says why mail waits.
    let cookie = app.login("admin", "pw-for-channels").await;
    let (_, html) = app.page(&cookie, "/alerts").await;
    assert!(
        html.contains("id=\"mail-unsent\"")
            && html.contains("alerting.smtp.host</code> is not set"),
        "{html}"
    );
    app.stop().await;
}
