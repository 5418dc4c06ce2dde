//! Alerting end to end: ingest → evaluator → outbox → a real SMTP server (aiosmtpd).

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::support::{csrf_of, fresh_database, recent, subject, SmtpServer, TestApp};

const RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid", "gpu_lost"]
severity = "critical"
summary = "GPU reported an XID error"
resolve_after_secs = 3

[[rule]]
name = "gpu-row-remap-xids"
kind = "hardware"
events = ["xid"]
xid_codes = [63, 64]
per_code = true
severity = "warning"
summary = "GPU row remapping event"
resolve_after_secs = 3

[[rule]]
name = "gpu-hot"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
resolve_value = 80
for_secs = 2
severity = "warning"
summary = "GPU temperature high"

[[rule]]
name = "host-load-high"
kind = "threshold"
metric = "host.load1"
op = ">"
value = 64
resolve_value = 32
for_secs = 1
severity = "warning"
summary = "Host load high"

[[rule]]
name = "host-down"
kind = "absent"
after_secs = 5
severity = "critical"
summary = "Host stopped reporting"

[[route]]
match = { severity = "critical" }
to = ["oncall@example.com"]

[[route]]
to = ["ops@example.com"]
"#;

struct Rig {
    app: TestApp,
    smtp: SmtpServer,
    _rules: tempfile::TempDir,
}

async fn rig_with(smtp: SmtpServer, db_url: Option<String>) -> Rig {
    rig_grouped(smtp, db_url, 1).await
}

/// A rig whose alert groups wait `group_wait_secs` for more alerts before mailing.
async fn rig_grouped(smtp: SmtpServer, db_url: Option<String>, group_wait_secs: u64) -> Rig {
    rig_tweaked(smtp, db_url, group_wait_secs, |_| {}).await
}

/// [`rig_grouped`] with more configuration.
async fn rig_tweaked(
    smtp: SmtpServer,
    db_url: Option<String>,
    group_wait_secs: u64,
    tweak: impl FnOnce(&mut rackwatch::config::Config),
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let db_url = match db_url {
        Some(u) => u,
        None => fresh_database().await,
    };
    let port = smtp.port;
    let app = TestApp::spawn_full(db_url, |c| {
        c.alerting.rules_file = rules.to_string_lossy().into_owned();
        c.alerting.eval_interval_secs = 1;
        c.alerting.group_wait_secs = group_wait_secs;
        c.alerting.group_interval_secs = 0;
        c.alerting.smtp.host = "127.0.0.1".into();
        c.alerting.smtp.port = port;
        c.alerting.smtp.security = "plain".into();
        c.server.public_url = "https://rackwatch.example".into();
        tweak(c);
    })
    .await;
    Rig {
        app,
        smtp,
        _rules: dir,
    }
}

async fn rig() -> Rig {
    rig_with(SmtpServer::start().await, None).await
}

fn xid(host: &str, gpu: u8, code: i64, ts: chrono::DateTime<Utc>) -> serde_json::Value {
    json!({"host": {"name": host, "site": "fra1", "rack": "r12"},
           "host_samples": [{"ts": ts, "cpu_util_pct": 10.0}],
           "events": [{"ts": ts, "index": gpu, "kind": "xid", "code": code,
                       "message": format!("NVRM: Xid (PCI:0000:3b:00): {code}, pid=1234, GPU has fallen off the bus.")}]})
}

#[tokio::test]
async fn a_fault_mails_once_and_resolved_mails_when_it_ends() {
    let r = rig().await;
    let token = r.app.token("gpu-17").await;
    let t0 = Utc::now() - chrono::Duration::seconds(1);
    let sent = std::time::Instant::now();
    assert_eq!(
        r.app
            .ingest(&token, &xid("gpu-17", 3, 79, t0))
            .await
            .status(),
        200
    );
    let mails = r.smtp.wait_for(1, 15).await;
    let latency = sent.elapsed();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(
        subject(m).starts_with("[FIRING:CRITICAL] GPU reported an XID error"),
        "{}",
        subject(m)
    );
    assert!(m.contains("To: oncall@example.com"), "{m}");
    assert!(m.contains("fra1 / r12 / gpu-17 / GPU 3"), "{m}");
    assert!(m.contains("XID 79"), "{m}");
    assert!(m.contains("https://rackwatch.example/hosts/gpu-17"), "{m}");
    assert!(
        latency < Duration::from_secs(5),
        "fault to mail took {latency:?}"
    );

    // The same event replayed, and a recurrence: still one incident, no new mail.
    assert_eq!(
        r.app
            .ingest(&token, &xid("gpu-17", 3, 79, t0))
            .await
            .status(),
        200
    );
    let t1 = Utc::now();
    assert_eq!(
        r.app
            .ingest(&token, &xid("gpu-17", 3, 79, t1))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.smtp.mails().len(), 1, "a recurrence must not mail again");
    let occ: i32 = sqlx::query_scalar("SELECT occurrences FROM alerts WHERE rule = 'gpu-xid'")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert_eq!(occ, 2);

    // Quiet for resolve_after_secs → one "resolved" mail.
    let mails = r.smtp.wait_for(2, 15).await;
    assert_eq!(mails.len(), 2);
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:CRITICAL]"),
        "{}",
        subject(&mails[1])
    );
    let incidents: (i64, i64) =
        sqlx::query_as("SELECT count(*), count(resolved_at) FROM incidents WHERE rule = 'gpu-xid'")
            .fetch_one(&r.app.store.pool)
            .await
            .unwrap();
    assert_eq!(incidents, (1, 1));
    r.app.stop().await;
}

/// A GPU that fell off the bus is quiet because it is gone: its alert keeps firing past
/// `resolve_after_secs` while the GPU reports nothing, and resolves once it reports again.
#[tokio::test]
async fn a_lost_gpu_fires_until_it_reports_again() {
    let r = rig().await;
    let token = r.app.token("gpu-31").await;
    let t0 = Utc::now() - chrono::Duration::seconds(2);
    let sample = |ts: chrono::DateTime<Utc>| {
        json!({"host": {"name": "gpu-31", "site": "fra1", "rack": "r12"},
               "gpus": [{"index": 4, "uuid": "GPU-31-4", "model": "NVIDIA H100 80GB HBM3"}],
               "host_samples": [{"ts": ts, "cpu_util_pct": 10.0}],
               "gpu_samples": [{"ts": ts, "index": 4, "util_pct": 50.0}]})
    };
    assert_eq!(r.app.ingest(&token, &sample(t0)).await.status(), 200);
    let lost = json!({"host": {"name": "gpu-31", "site": "fra1", "rack": "r12"},
        "events": [{"ts": t0 + chrono::Duration::seconds(1), "index": 4, "kind": "gpu_lost", "code": 79,
                    "message": "GPU has fallen off the bus"}]});
    assert_eq!(r.app.ingest(&token, &lost).await.status(), 200);
    assert_eq!(r.smtp.wait_for(1, 15).await.len(), 1);
    // Three times resolve_after_secs without a sample from the GPU (its host goes on
    // reporting): still firing.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let host_only = json!({"host": {"name": "gpu-31", "site": "fra1", "rack": "r12"},
            "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 10.0}]});
        assert_eq!(r.app.ingest(&token, &host_only).await.status(), 200);
    }
    let xid_mails = || {
        r.smtp
            .mails()
            .iter()
            .filter(|m| subject(m).contains("XID"))
            .count()
    };
    assert_eq!(xid_mails(), 1, "resolved while the GPU is still gone");
    let state: String = sqlx::query_scalar("SELECT state FROM alerts WHERE rule = 'gpu-xid'")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert_eq!(state, "firing");
    // The GPU is back: the alert resolves.
    assert_eq!(
        r.app.ingest(&token, &sample(Utc::now())).await.status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while xid_mails() < 2 {
        assert!(std::time::Instant::now() < deadline, "no resolved mail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mails = r.smtp.mails();
    let resolved: Vec<_> = mails
        .iter()
        .filter(|m| subject(m).contains("XID"))
        .collect();
    assert!(
        subject(resolved[1]).starts_with("[RESOLVED:CRITICAL]"),
        "{}",
        subject(resolved[1])
    );
    r.app.stop().await;
}

#[tokio::test]
async fn a_gpu_with_several_xid_codes_is_one_alert_that_lists_them() {
    let r = rig().await;
    let token = r.app.token("gpu-21").await;
    let t = Utc::now() - chrono::Duration::seconds(3);
    for (i, code) in [31, 13, 94, 31].into_iter().enumerate() {
        let ts = t + chrono::Duration::milliseconds(500 * i as i64);
        assert_eq!(
            r.app
                .ingest(&token, &xid("gpu-21", 2, code, ts))
                .await
                .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Another GPU of the host is an alert of its own.
    assert_eq!(
        r.app
            .ingest(&token, &xid("gpu-21", 5, 79, t))
            .await
            .status(),
        200
    );
    let mut alerts: Vec<(serde_json::Value, i32, String)> = Vec::new();
    for _ in 0..50 {
        alerts = sqlx::query_as(
            "SELECT labels, occurrences, description FROM alerts WHERE rule = 'gpu-xid' AND state = 'firing' ORDER BY labels->>'gpu'",
        )
        .fetch_all(&r.app.store.pool)
        .await
        .unwrap();
        if alerts.len() == 2 && alerts[0].1 == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alerts.len(), 2, "one alert per GPU: {alerts:?}");
    let (labels, occurrences, description) = &alerts[0];
    assert_eq!(labels["gpu"], "2");
    assert!(labels.get("xid").is_none(), "{labels}");
    assert_eq!(*occurrences, 4);
    assert!(
        description.starts_with("XID 94 ×1, XID 31 ×2, XID 13 ×1. Most serious: XID 94 (Contained ECC error (uncorrectable, contained to the application that used the memory)): restart the job that hit it (the GPU's memory is at fault, not the application; other jobs carry on); reset the GPU when convenient"),
        "{description}"
    );
    assert!(description.contains(". Latest: XID 31: "), "{description}");
    assert!(alerts[1].2.starts_with("XID 79: "), "{}", alerts[1].2);
    // What to do comes with it.
    assert!(
        alerts[1]
            .2
            .ends_with("Action: restart the node: drain it and reboot; RMA the GPU if it repeats."),
        "{}",
        alerts[1].2
    );
    r.app.stop().await;
}

/// Events shipped in one batch after an outage: the alert starts at the first of them,
/// and its text counts all that its occurrences count.
#[tokio::test]
async fn a_batch_of_events_starts_its_alert_at_the_first_and_counts_them_all() {
    let r = rig().await;
    let token = r.app.token("gpu-22").await;
    let first = Utc::now() - chrono::Duration::minutes(10);
    let events: Vec<serde_json::Value> = (0..9)
        .map(|i| {
            let code = [13, 31, 94][i as usize % 3];
            json!({"ts": first + chrono::Duration::minutes(i), "index": 1, "kind": "xid",
                   "code": code, "message": "NVRM: Xid (PCI:0000:3b:00)"})
        })
        .collect();
    let body = json!({"host": {"name": "gpu-22", "site": "fra1", "rack": "r12"},
        "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 10.0}], "events": events});
    assert_eq!(r.app.ingest(&token, &body).await.status(), 200);
    let mut row: Option<(chrono::DateTime<Utc>, i32, String)> = None;
    for _ in 0..50 {
        row = sqlx::query_as(
            "SELECT started_at, occurrences, description FROM alerts WHERE rule = 'gpu-xid' AND state = 'firing'",
        )
        .fetch_optional(&r.app.store.pool)
        .await
        .unwrap();
        if row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (started, occurrences, description) = row.expect("a firing alert");
    assert!(
        (started - first).num_milliseconds().abs() < 1000,
        "{started} vs {first}"
    );
    assert_eq!(occurrences, 9);
    for code in ["XID 13 ×3", "XID 31 ×3", "XID 94 ×3"] {
        assert!(description.contains(code), "{code} in {description}");
    }
    r.app.stop().await;
}

#[tokio::test]
async fn a_rule_with_per_code_keeps_one_alert_per_code() {
    let r = rig().await;
    let token = r.app.token("gpu-22").await;
    let t = Utc::now() - chrono::Duration::seconds(2);
    for (i, code) in [63, 64, 63].into_iter().enumerate() {
        let ts = t + chrono::Duration::milliseconds(400 * i as i64);
        assert_eq!(
            r.app
                .ingest(&token, &xid("gpu-22", 1, code, ts))
                .await
                .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut alerts: Vec<(Option<String>, i32)> = Vec::new();
    for _ in 0..50 {
        alerts = sqlx::query_as(
            "SELECT labels->>'xid', occurrences FROM alerts WHERE rule = 'gpu-row-remap-xids' AND state = 'firing' ORDER BY labels->>'xid'",
        )
        .fetch_all(&r.app.store.pool)
        .await
        .unwrap();
        if alerts.len() == 2 && alerts[0].1 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        alerts,
        vec![(Some("63".to_string()), 2), (Some("64".to_string()), 1)]
    );
    // The grouped rule watching the same GPU still holds one alert for all three.
    let grouped: Vec<i32> = sqlx::query_scalar(
        "SELECT occurrences FROM alerts WHERE rule = 'gpu-xid' AND labels->>'host' = 'gpu-22'",
    )
    .fetch_all(&r.app.store.pool)
    .await
    .unwrap();
    assert_eq!(grouped, vec![3]);
    r.app.stop().await;
}

#[tokio::test]
async fn a_fault_committed_after_a_later_one_is_still_mailed() {
    late_commit(false).await;
}

#[tokio::test]
async fn a_fault_committed_late_across_a_leader_handover_is_mailed_once() {
    late_commit(true).await;
}

/// An event's received_at is its ingest transaction's start, and transactions commit out
/// of that order: here the first one commits after a later one was alerted on. With
/// `handover`, the server that alerted on the later fault stops before the late one
/// commits, and a new one (a new job leader, or the same server restarted) takes over.
/// Either way the late fault is mailed, and the earlier one is not mailed or counted again.
async fn late_commit(handover: bool) {
    let mut r = rig().await;
    let db_url = r.app.db_url.clone();
    let t = Utc::now() - chrono::Duration::seconds(1);
    let mut tokens = Vec::new();
    for h in ["slow-commit", "fast-commit"] {
        let token = r.app.token(h).await;
        let body = json!({"host": {"name": h}, "host_samples": [{"ts": t, "cpu_util_pct": 1.0}]});
        assert_eq!(r.app.ingest(&token, &body).await.status(), 200);
        tokens.push(token);
    }
    let slow: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'slow-commit'")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    // Its own connection: the first server's pool closes while the transaction is open.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db_url)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(
        "INSERT INTO hardware_events (host_id, gpu_index, ts, kind, code, message)
         VALUES ($1, 0, $2, 'xid', 79, 'the late commit')",
    )
    .bind(slow)
    .bind(t)
    .execute(&mut *tx)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        r.app
            .ingest(&tokens[1], &xid("fast-commit", 1, 48, t))
            .await
            .status(),
        200
    );
    let first = r.smtp.wait_for(1, 20).await;
    assert!(first[0].contains("fast-commit"), "{}", first[0]);
    // The evaluator's watermark is now past the slow transaction's received_at.
    if handover {
        let Rig { app, smtp, .. } = r;
        app.stop().await;
        r = rig_with(smtp, Some(db_url)).await;
    }
    tx.commit().await.unwrap();
    let late = |m: &[String]| m.iter().any(|m| m.contains("the late commit"));
    assert!(
        late(&r.smtp.wait_until(late, 20).await),
        "the fault committed late was never mailed"
    );
    // A few more rounds: the earlier fault stays mailed once and counted once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = r.smtp.mails();
    let fast: Vec<_> = mails
        .iter()
        .filter(|m| subject(m).starts_with("[FIRING") && m.contains("XID 48"))
        .collect();
    assert_eq!(fast.len(), 1, "{fast:?}");
    let counted: Vec<i32> = sqlx::query_scalar(
        "SELECT occurrences FROM alerts WHERE labels->>'host' = 'fast-commit' AND rule LIKE 'gpu-xid%'",
    )
    .fetch_all(&r.app.store.pool)
    .await
    .unwrap();
    assert!(
        !counted.is_empty() && counted.iter().all(|&n| n == 1),
        "{counted:?}"
    );
    r.app.stop().await;
}

#[tokio::test]
async fn a_round_that_cannot_record_its_watermark_leaves_nothing_behind() {
    // A round's alerts, mails and watermark commit together: here the watermark write
    // fails (as if the leader died just before it) for a few rounds, and no alert, mail or
    // count is left over from them; once it can be written, the fault is alerted once.
    let r = rig().await;
    sqlx::raw_sql(
        "CREATE SEQUENCE watermark_refusals;
         CREATE FUNCTION fail_alert_watermark() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           -- Counted by a sequence, which the failed round's rollback does not undo.
           IF NEW.name = 'alert_events' THEN
             PERFORM nextval('watermark_refusals');
             RAISE EXCEPTION 'watermark write refused';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_alert_watermark BEFORE INSERT OR UPDATE ON job_state
            FOR EACH ROW EXECUTE FUNCTION fail_alert_watermark();",
    )
    .execute(&r.app.store.pool)
    .await
    .unwrap();
    let token = r.app.token("gpu-31").await;
    let t = Utc::now() - chrono::Duration::seconds(1);
    let status = r
        .app
        .ingest(&token, &xid("gpu-31", 2, 79, t))
        .await
        .status();
    assert_eq!(status, 200);
    // Wait for rounds that saw the XID and failed at the watermark.
    let refused = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM watermark_refusals",
        )
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap()
    };
    let watching = std::time::Instant::now();
    while refused().await < 3 && watching.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused().await >= 3,
        "the rounds never reached the watermark"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE rule LIKE 'gpu-%'")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "alerts left by rounds that did not finish");
    let xid_mail = |m: &[String]| m.iter().any(|m| m.contains("XID 79"));
    assert!(!xid_mail(&r.smtp.mails()));
    sqlx::raw_sql("DROP TRIGGER fail_alert_watermark ON job_state")
        .execute(&r.app.store.pool)
        .await
        .unwrap();
    assert!(xid_mail(&r.smtp.wait_until(xid_mail, 15).await));
    let counted: Vec<i32> = sqlx::query_scalar(
        "SELECT occurrences FROM alerts WHERE rule = 'gpu-xid' AND labels->>'host' = 'gpu-31'",
    )
    .fetch_all(&r.app.store.pool)
    .await
    .unwrap();
    assert_eq!(counted, vec![1]);
    let mails = r.smtp.mails();
    assert_eq!(mails.iter().filter(|m| m.contains("XID 79")).count(), 1);
    r.app.stop().await;
}

#[tokio::test]
async fn fifty_simultaneous_xids_arrive_as_one_mail() {
    // Seven hosts' batches, sent at once; on a loaded machine or a distributed database
    // (the Citus run) the last may be stored seconds after the first, so the group waits
    // 10 s: the test is of grouping, not of ingest speed. (Their transactions also commit
    // out of order: `a_fault_committed_after_a_later_one_is_still_mailed`.)
    let r = rig_grouped(SmtpServer::start().await, None, 10).await;
    let t = Utc::now() - chrono::Duration::seconds(1);
    let mut n = 0;
    // Tokens first, then the seven hosts' batches at once.
    let mut batches = Vec::new();
    for h in 0..7 {
        let host = format!("node-{h:02}");
        let token = r.app.token(&host).await;
        let events: Vec<_> = (0..8u8)
            .filter(|_| {
                n += 1;
                n <= 50
            })
            .map(|g| json!({"ts": t, "index": g, "kind": "xid", "code": 48, "message": "DBE (double bit error) ECC error"}))
            .collect();
        batches.push((token, json!({"host": {"name": host}, "events": events})));
    }
    let sent: Vec<_> = batches
        .into_iter()
        .map(|(token, body)| {
            let req = r
                .app
                .http
                .post(format!("{}/api/v1/ingest", r.app.base))
                .bearer_auth(token)
                .json(&body);
            tokio::spawn(async move { req.send().await.unwrap().status() })
        })
        .collect();
    for s in sent {
        assert_eq!(s.await.unwrap(), 200);
    }
    r.smtp.wait_for(1, 30).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // (They resolve later: only the firing mails count here.)
    let mails: Vec<String> = r
        .smtp
        .mails()
        .into_iter()
        .filter(|m| subject(m).starts_with("[FIRING"))
        .collect();
    assert_eq!(mails.len(), 1, "one grouped mail, got {}", mails.len());
    assert!(
        subject(&mails[0]).contains("50 firing"),
        "{}",
        subject(&mails[0])
    );
    assert_eq!(mails[0].matches("[FIRING]").count(), 50);
    let fired: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE fired_at IS NOT NULL")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert_eq!(fired, 50);
    r.app.stop().await;
}

/// Alert rounds take turns across servers: while another server's round holds the
/// evaluation lock (two leaders for a moment), this one fires nothing; once it is let go,
/// the fault fires at once, and once.
#[tokio::test]
async fn an_alert_round_waits_while_another_server_evaluates() {
    let r = rig().await;
    let mut other = r.app.store.dedicated_connection().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(rackwatch::alert::EVAL_ROUND_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    let token = r.app.token("node-1").await;
    let xid = json!({"host": {"name": "node-1"}, "events": [
        {"ts": Utc::now(), "index": 0, "kind": "xid", "code": 48, "message": "DBE (double bit error) ECC error"}
    ]});
    assert_eq!(r.app.ingest(&token, &xid).await.status(), 200);
    let alerts = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM alerts")
            .fetch_one(&r.app.store.pool)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        alerts().await,
        0,
        "evaluated while another round held the lock"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(rackwatch::alert::EVAL_ROUND_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    while alerts().await == 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alerts().await, 1);
    assert_eq!(r.smtp.wait_for(1, 10).await.len(), 1);
    r.app.stop().await;
}

#[tokio::test]
async fn a_silence_suppresses_matching_alerts_only() {
    let r = rig().await;
    let now = Utc::now();
    let mut m = rackwatch::alert::Labels::new();
    m.insert("host".into(), "maint-1".into());
    r.app
        .store
        .create_silence(
            &m,
            now - chrono::Duration::minutes(1),
            now + chrono::Duration::hours(1),
            "ops",
            "firmware update",
        )
        .await
        .unwrap();
    let ta = r.app.token("maint-1").await;
    let tb = r.app.token("prod-1").await;
    assert_eq!(
        r.app
            .ingest(&ta, &xid("maint-1", 0, 79, now))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.app.ingest(&tb, &xid("prod-1", 0, 79, now)).await.status(),
        200
    );
    let mails = r.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("prod-1") && !mails[0].contains("maint-1"),
        "{}",
        mails[0]
    );
    // The silenced alert still fires (visible on the alerts page), it just does not
    // mail: neither when it fires nor when it resolves.
    let fired: bool = sqlx::query_scalar(
        "SELECT fired_at IS NOT NULL FROM alerts WHERE labels->>'host' = 'maint-1'",
    )
    .fetch_one(&r.app.store.pool)
    .await
    .unwrap();
    assert!(fired);
    let mails = r.smtp.wait_for(2, 15).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(mails.len(), 2, "prod-1 firing + resolved");
    assert!(r.smtp.mails().iter().all(|m| !m.contains("maint-1")));
    r.app.stop().await;
}

#[tokio::test]
async fn mail_survives_an_smtp_outage_and_is_delivered_once() {
    let port = crate::support::free_port();
    let mut smtp = SmtpServer::stopped(port);
    let r = rig_with(SmtpServer::stopped(port), None).await;
    let token = r.app.token("h").await;
    assert_eq!(
        r.app
            .ingest(&token, &xid("h", 1, 79, Utc::now()))
            .await
            .status(),
        200
    );
    // The sender tries and fails while the SMTP server is down.
    let mut attempts = 0;
    for _ in 0..50 {
        attempts = sqlx::query_scalar::<_, i32>(
            "SELECT coalesce(max(attempts), 0) FROM notification_outbox",
        )
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
        if attempts >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(attempts >= 1, "no delivery attempt was recorded");
    let err: Option<String> = sqlx::query_scalar("SELECT last_error FROM notification_outbox")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert!(err.is_some());
    // SMTP comes back (same Maildir the test reads).
    smtp.maildir = r.smtp.maildir.clone();
    smtp.run().await;
    let mails = r.smtp.wait_for(1, 30).await;
    assert_eq!(mails.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The firing notice once (its resolve, 3 s after the XID, may follow on its own).
    let subjects: Vec<String> = r.smtp.mails().iter().map(|m| subject(m)).collect();
    let firing = subjects.iter().filter(|s| s.starts_with("[FIRING")).count();
    assert_eq!(firing, 1, "delivered exactly once: {subjects:?}");
    r.app.stop().await;
}

/// An SMTP server that takes the connection and then says nothing holds a send for the
/// exchange's limit (six times `alerting.smtp.timeout_secs`), not for good: the attempt
/// fails, is recorded, and the sender goes on.
#[tokio::test]
async fn a_silent_smtp_server_fails_the_send_within_its_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // never a greeting
        }
    });
    let r = rig_tweaked(SmtpServer::stopped(port), None, 1, |c| {
        c.alerting.smtp.timeout_secs = 1;
    })
    .await;
    let token = r.app.token("h").await;
    let sent = std::time::Instant::now();
    assert_eq!(
        r.app
            .ingest(&token, &xid("h", 1, 79, Utc::now()))
            .await
            .status(),
        200
    );
    let mut err = None;
    while sent.elapsed() < Duration::from_secs(25) {
        err = sqlx::query_scalar::<_, Option<String>>(
            "SELECT last_error FROM notification_outbox WHERE last_error IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&r.app.store.pool)
        .await
        .unwrap()
        .flatten();
        if err.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let err = err.expect("the send never failed: it hangs on the silent server");
    assert!(err.contains("did not finish the exchange in 6 s"), "{err}");
    r.app.stop().await;
}

/// Each address of a route gets the mail in an envelope of its own: one the mail server
/// refuses for good (550 5.1.1) is recorded and not tried again, one refused for now (a
/// 451 greylisting) gets it on the retry, and the address that took it at once does not
/// get it twice. An address refused with a bare 550, and nobody else on its route to
/// show the server works, is retried: the cause may be the sender or the login.
#[tokio::test]
async fn a_refused_recipient_does_not_hold_back_the_rest_of_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("refusing.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"

[[rule]]
name = "host-load-high"
kind = "threshold"
metric = "host.load1"
op = ">"
value = 64
for_secs = 0
severity = "warning"
summary = "Host load high"

[[route]]
match = { severity = "critical" }
to = ["nobody@example.com", "busy@example.com", "oncall@example.com"]

[[route]]
to = ["gone@example.com"]
"#,
    )
    .unwrap();
    let path = rules.to_string_lossy().into_owned();
    let r = rig_tweaked(SmtpServer::start().await, None, 0, |c| {
        c.alerting.rules_file = path;
    })
    .await;
    let token = r.app.token("h").await;
    let now = Utc::now();
    let mut body = xid("h", 1, 79, now);
    body["host_samples"][0]["load1"] = json!(99.0);
    assert_eq!(r.app.ingest(&token, &body).await.status(), 200);
    let to = |m: &str, who: &str| m.contains(&format!("X-RcptTo: {who}"));
    let mails = r
        .smtp
        .wait_until(
            |m| m.iter().any(|m| to(m, "busy@")) && m.iter().any(|m| to(m, "oncall@")),
            30,
        )
        .await;
    let count = |who: &str| mails.iter().filter(|m| to(m, who)).count();
    assert_eq!(count("oncall@"), 1, "{mails:?}");
    assert_eq!(
        count("busy@"),
        1,
        "the greylisted address gets it on the retry"
    );
    assert_eq!(count("nobody@") + count("gone@"), 0);
    let asked = |who: &str| {
        r.smtp
            .rcpt_asked()
            .iter()
            .filter(|a| a.as_str() == who)
            .count()
    };
    let m = mails.iter().find(|m| to(m, "oncall@")).unwrap();
    assert!(subject(m).starts_with("[FIRING:CRITICAL]"), "{m}");
    assert!(
        m.contains("To: nobody@example.com, busy@example.com, oncall@example.com"),
        "the header names the whole route: {m}"
    );
    // The XID's row is sent (recorded just after the mail arrived), with who has it and
    // who refused it.
    type Row = (
        Vec<String>,
        Vec<String>,
        Option<String>,
        bool,
        Option<String>,
    );
    let mut row: Row = Default::default();
    for _ in 0..50 {
        row = sqlx::query_as::<_, Row>(
            "SELECT delivered_to, ARRAY(SELECT jsonb_object_keys(refused)), last_error,
                    sent_at IS NOT NULL, message_id
               FROM notification_outbox WHERE recipients[1] = 'nobody@example.com'",
        )
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
        if row.3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row.0, ["oncall@example.com", "busy@example.com"]);
    assert_eq!(row.1, ["nobody@example.com"]);
    let err = row.2.unwrap_or_default();
    assert!(
        err.contains("nobody@example.com refused for good") && err.contains("5.1.1"),
        "{err}"
    );
    assert!(row.3, "sent once everyone has it or refused it");
    assert!(row.4.is_some());
    // The bare 550, alone on its route, is retried, not dropped.
    let mut gone = (0, false, true);
    for _ in 0..100 {
        gone = sqlx::query_as::<_, (i32, bool, bool)>(
            "SELECT attempts, sent_at IS NOT NULL, refused = '{}' FROM notification_outbox
              WHERE recipients = ARRAY['gone@example.com']",
        )
        .fetch_optional(&r.app.store.pool)
        .await
        .unwrap()
        .unwrap_or((0, false, true));
        if gone.0 >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone.0 >= 2, "tried again: {gone:?}");
    assert!(!gone.1 && gone.2, "neither sent nor refused: {gone:?}");
    // The alerts page shows the refusal beside the delivery.
    let cookie = r.app.login("ops", "correct horse").await;
    let (status, page) = r.app.page(&cookie, "/alerts").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("nobody@example.com refused for good"),
        "{page}"
    );
    assert_eq!(count("oncall@"), 1);
    assert_eq!(
        r.smtp.mails().iter().filter(|m| to(m, "oncall@")).count(),
        1,
        "not sent twice"
    );
    // Asked for once each, by the first attempt and (busy@) the retry: the refused address
    // is not tried again, the one that took the mail is not sent it again.
    assert_eq!(asked("nobody@example.com"), 1, "{:?}", r.smtp.rcpt_asked());
    assert_eq!(asked("oncall@example.com"), 1, "{:?}", r.smtp.rcpt_asked());
    assert_eq!(asked("busy@example.com"), 2, "{:?}", r.smtp.rcpt_asked());
    assert!(asked("gone@example.com") >= 2, "{:?}", r.smtp.rcpt_asked());
    r.app.stop().await;
}

/// A mail one address keeps deferring (452, a mailbox over its quota) still counts as
/// sent for its group: the group's next notice waits `group_interval_secs` from it. The
/// retries to the deferred address do not wait for it.
#[tokio::test]
async fn a_mail_deferred_for_one_address_keeps_its_group_interval() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("slow.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"

[[route]]
to = ["slow@example.com", "oncall@example.com"]
"#,
    )
    .unwrap();
    let path = rules.to_string_lossy().into_owned();
    let r = rig_tweaked(SmtpServer::start().await, None, 0, |c| {
        c.alerting.rules_file = path;
        c.alerting.group_interval_secs = 8;
    })
    .await;
    let token = r.app.token("h").await;
    let oncall = |m: &[String]| m.iter().filter(|m| m.contains("X-RcptTo: oncall@")).count();
    assert_eq!(
        r.app
            .ingest(&token, &xid("h", 1, 79, Utc::now()))
            .await
            .status(),
        200
    );
    assert_eq!(oncall(&r.smtp.wait_until(|m| oncall(m) >= 1, 15).await), 1);
    let first = std::time::Instant::now();
    assert_eq!(
        r.app
            .ingest(&token, &xid("h", 2, 79, Utc::now()))
            .await
            .status(),
        200
    );
    assert_eq!(oncall(&r.smtp.wait_until(|m| oncall(m) >= 2, 30).await), 2);
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_secs(7),
        "the second notice came {waited:?} after the first"
    );
    // Meanwhile the deferring address was tried again (after 2 s and 4 s of backoff).
    let slow = r
        .smtp
        .rcpt_asked()
        .iter()
        .filter(|a| a.as_str() == "slow@example.com")
        .count();
    assert!(slow >= 3, "{:?}", r.smtp.rcpt_asked());
    r.app.stop().await;
}

#[tokio::test]
async fn a_server_killed_before_sending_sends_after_restart() {
    let db_url = fresh_database().await;
    let smtp = SmtpServer::start().await;
    // First server: no SMTP configured (as if it died before sending): the mail waits.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let rules_path = rules.to_string_lossy().into_owned();
    let first = TestApp::spawn_full(db_url.clone(), |c| {
        c.alerting.rules_file = rules_path.clone();
        c.alerting.eval_interval_secs = 1;
    })
    .await;
    let token = first.token("h").await;
    assert_eq!(
        first
            .ingest(&token, &xid("h", 2, 79, Utc::now()))
            .await
            .status(),
        200
    );
    let mut queued = 0;
    for _ in 0..50 {
        queued = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&first.store.pool)
        .await
        .unwrap();
        if queued > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queued, 1);
    first.stop().await;
    assert!(smtp.mails().is_empty());
    // Second server on the same database, SMTP configured: sends the queued mail once.
    let second = rig_with(smtp, Some(db_url)).await;
    let mails = second.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The alert resolves 3 s after its event, and a slow restart can also leave the host
    // silent long enough to be reported down: only the queued XID alert counts here.
    let xid_mails: Vec<String> = second
        .smtp
        .mails()
        .into_iter()
        .filter(|m| subject(m).contains("GPU reported an XID error"))
        .collect();
    let fired: usize = xid_mails
        .iter()
        .map(|m| m.matches("[FIRING]").count())
        .sum();
    assert_eq!(fired, 1, "the queued mail, sent once: {xid_mails:?}");
    assert!(xid_mails[0].contains("GPU 2"), "{}", xid_mails[0]);
    second.app.stop().await;
}

#[tokio::test]
async fn thresholds_wait_for_their_duration_and_resolve_with_hysteresis() {
    let r = rig().await;
    let token = r.app.token("warm").await;
    let temp = |c: f64| json!({"host": {"name": "warm"}, "gpu_samples": [{"ts": Utc::now(), "index": 0, "temp_celsius": c}]});
    assert_eq!(r.app.ingest(&token, &temp(90.0)).await.status(), 200);
    let hot = std::time::Instant::now();
    // The first evaluation (every second) files the alert as pending, unmailed.
    let mut state = None;
    while state.is_none() && hot.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = sqlx::query_scalar::<_, String>("SELECT state FROM alerts WHERE rule = 'gpu-hot'")
            .fetch_optional(&r.app.store.pool)
            .await
            .unwrap();
    }
    if hot.elapsed() < Duration::from_millis(1900) {
        assert_eq!(state.as_deref(), Some("pending"));
        assert!(r.smtp.mails().is_empty());
    }
    // Still hot after for_secs → firing, mailed to the warning route.
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(hot.elapsed())).await;
    assert_eq!(r.app.ingest(&token, &temp(91.0)).await.status(), 200);
    let mails = r.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1);
    // However slow the machine, it was pending for for_secs before it fired.
    let pending_secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM fired_at - started_at)::float8 FROM alerts WHERE rule = 'gpu-hot'",
    )
    .fetch_one(&r.app.store.pool)
    .await
    .unwrap();
    assert!(pending_secs >= 2.0, "fired after {pending_secs} s pending");
    assert!(
        subject(&mails[0]).starts_with("[FIRING:WARNING] GPU temperature high"),
        "{}",
        subject(&mails[0])
    );
    assert!(mails[0].contains("To: ops@example.com"));
    // 83 °C is below the threshold but above the resolve value: still firing.
    assert_eq!(r.app.ingest(&token, &temp(83.0)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(r.smtp.mails().len(), 1);
    assert_eq!(r.app.ingest(&token, &temp(79.0)).await.status(), 200);
    let mails = r.smtp.wait_for(2, 15).await;
    assert_eq!(mails.len(), 2);
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:WARNING]"),
        "{}",
        subject(&mails[1])
    );
    r.app.stop().await;
}

/// A host metric's threshold: the evaluator's host-sample query (the GPU one is above).
#[tokio::test]
async fn a_host_threshold_fires_for_the_host_and_resolves() {
    let r = rig().await;
    let token = r.app.token("busy").await;
    let load = |l: f64| json!({"host": {"name": "busy", "site": "fra1", "rack": "r12"}, "host_samples": [{"ts": Utc::now(), "load1": l}]});
    assert_eq!(r.app.ingest(&token, &load(100.0)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.app.ingest(&token, &load(101.0)).await.status(), 200);
    let mails = r.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1);
    assert!(
        subject(&mails[0]).starts_with("[FIRING:WARNING] Host load high"),
        "{}",
        subject(&mails[0])
    );
    assert!(mails[0].contains("fra1 / r12 / busy"), "{}", mails[0]);
    let (labels, value): (serde_json::Value, f64) = sqlx::query_as(
        "SELECT labels, value FROM alerts WHERE rule = 'host-load-high' AND state = 'firing'",
    )
    .fetch_one(&r.app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        labels,
        json!({"host": "busy", "site": "fra1", "rack": "r12"})
    );
    assert_eq!(value, 101.0);
    // Between the values: still firing; below the resolve value: resolved.
    assert_eq!(r.app.ingest(&token, &load(40.0)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(r.smtp.mails().len(), 1);
    assert_eq!(r.app.ingest(&token, &load(10.0)).await.status(), 200);
    let mails = r.smtp.wait_for(2, 15).await;
    assert_eq!(mails.len(), 2);
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:WARNING] Host load high"),
        "{}",
        subject(&mails[1])
    );
    r.app.stop().await;
}

#[tokio::test]
async fn a_down_host_fires_once_and_mutes_its_gpu_alerts() {
    let r = rig().await;
    let token = r.app.token("quiet").await;
    // One sample, 10 s old on arrival, then silence: down after_secs = 5 after it arrived.
    let ts = recent(1, 1, 10)[0];
    assert_eq!(r.app.ingest(&token, &json!({"host": {"name": "quiet"}, "host_samples": [{"ts": ts, "cpu_util_pct": 1.0}], "gpu_samples": [{"ts": ts, "index": 0, "temp_celsius": 40.0}]})).await.status(), 200);
    let mails = r.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1);
    assert!(
        subject(&mails[0]).contains("Host stopped reporting"),
        "{}",
        subject(&mails[0])
    );
    // A GPU fault on the down host (e.g. a delayed event) is recorded but not mailed.
    let late = json!({"host": {"name": "quiet"}, "events": [{"ts": Utc::now(), "index": 0, "kind": "gpu_lost", "message": "GPU lost"}]});
    assert_eq!(r.app.ingest(&token, &late).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        r.smtp.mails().len(),
        1,
        "GPU alert of a down host must be inhibited"
    );
    let firing: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE state = 'firing'")
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap();
    assert_eq!(firing, 2);
    // Back: the host's alert resolves, and the GPU alert (still firing: a lost GPU does not
    // come back by itself) is mailed now that nothing mutes it.
    let back = || json!({"host": {"name": "quiet"}, "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}]});
    for _ in 0..40 {
        assert_eq!(r.app.ingest(&token, &back()).await.status(), 200);
        if r.smtp.mails().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mails = r.smtp.mails();
    assert_eq!(mails.len(), 3, "{mails:?}");
    let subjects: Vec<String> = mails[1..].iter().map(|m| subject(m)).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("[RESOLVED:CRITICAL] Host stopped reporting")),
        "{subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("[FIRING:CRITICAL] GPU reported an XID error")),
        "{subjects:?}"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let gpu_mails = r
        .smtp
        .mails()
        .iter()
        .filter(|m| subject(m).starts_with("[FIRING:CRITICAL] GPU reported"))
        .count();
    assert_eq!(gpu_mails, 1, "announced once");
    r.app.stop().await;
}

/// An alert that fires under a silence is mailed when the silence ends while it still
/// fires; an alert already mailed still mails its resolve when a silence set meanwhile
/// covers it (whoever was paged hears that it ended).
#[tokio::test]
async fn a_silence_that_ends_lets_a_firing_alert_mail_and_never_hides_a_resolve() {
    let r = rig().await;
    let store = &r.app.store;
    let now = Utc::now();
    let silence = |host: &str| {
        let mut m = rackwatch::alert::Labels::new();
        m.insert("host".into(), host.into());
        async move {
            store
                .create_silence(
                    &m,
                    Utc::now() - chrono::Duration::minutes(1),
                    Utc::now() + chrono::Duration::hours(1),
                    "ops",
                    "maintenance",
                )
                .await
                .unwrap()
        }
    };
    let report = |host: &str, ts: chrono::DateTime<Utc>| json!({"host": {"name": host}, "host_samples": [{"ts": ts, "cpu_util_pct": 1.0}]});
    let firing = |host: &'static str| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM alerts WHERE labels->>'host' = $1 AND state = 'firing')",
        )
        .bind(host)
        .fetch_one(&store.pool)
        .await
        .unwrap()
    };
    // maint-2 is silenced, then stops reporting: its alert fires without a mail.
    let quiet = silence("maint-2").await;
    let t2 = r.app.token("maint-2").await;
    let old = now - chrono::Duration::seconds(10);
    assert_eq!(
        r.app.ingest(&t2, &report("maint-2", old)).await.status(),
        200
    );
    for _ in 0..60 {
        if firing("maint-2").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(firing("maint-2").await);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(r.smtp.mails().is_empty(), "silenced");
    // The silence ends early: the alert, still firing, is mailed.
    store.expire_silence(quiet.id).await.unwrap().unwrap();
    let mails = r.smtp.wait_for(1, 20).await;
    assert_eq!(mails.len(), 1);
    assert!(
        subject(&mails[0]).starts_with("[FIRING:CRITICAL] Host stopped reporting")
            && mails[0].contains("maint-2"),
        "{}",
        subject(&mails[0])
    );
    // Mailed, then silenced, then resolved: the resolve is mailed all the same.
    silence("maint-2").await;
    assert_eq!(
        r.app
            .ingest(&t2, &report("maint-2", Utc::now()))
            .await
            .status(),
        200
    );
    let mails = r.smtp.wait_for(2, 20).await;
    assert_eq!(mails.len(), 2);
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:CRITICAL] Host stopped reporting"),
        "{}",
        subject(&mails[1])
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.smtp.mails().len(), 2);
    r.app.stop().await;
}

/// A host whose clock runs 3 minutes behind (its samples older on arrival than the
/// threshold rules' 2-minute window) still has its GPU temperature judged: the agent's
/// `sent_at` against the arrival time says how far behind it is, and the window moves back
/// by as much. Its page names the clock, not a backlog.
#[tokio::test]
async fn a_hot_gpu_on_a_host_whose_clock_is_behind_still_alerts() {
    let r = rig().await;
    let token = r.app.token("late-clock").await;
    let behind = chrono::Duration::minutes(3);
    let started = std::time::Instant::now();
    let mut mails = Vec::new();
    while started.elapsed() < Duration::from_secs(20) && mails.is_empty() {
        let agent_now = Utc::now() - behind;
        let body = json!({"host": {"name": "late-clock"},
                          "agent": {"version": "test", "sent_at": agent_now},
                          "gpu_samples": [{"ts": agent_now, "index": 0, "temp_celsius": 95.0}]});
        assert_eq!(r.app.ingest(&token, &body).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        mails = r.smtp.mails();
    }
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        subject(&mails[0]).starts_with("[FIRING:WARNING] GPU temperature high"),
        "{}",
        subject(&mails[0])
    );
    let cookie = r.app.login("ops", "correct horse").await;
    let (_, page) = r.app.page(&cookie, "/hosts/late-clock").await;
    assert!(
        page.contains("the agent&#39;s clock is 3 min behind the server&#39;s"),
        "{page}"
    );
    r.app.stop().await;
}

/// A server back from an outage longer than `after_secs` does not report every host as
/// down at its first round: silence counts from when its evaluator began watching, so an
/// agent that reconnects within `after_secs` (agents retry every 5 s at most) raises
/// nothing, while a host that stays silent still fires, `after_secs` into the watch.
#[tokio::test]
async fn after_a_server_outage_only_the_hosts_that_stay_silent_fire() {
    let db_url = fresh_database().await;
    let first = rig_with(SmtpServer::start().await, Some(db_url.clone())).await;
    let mut tokens = Vec::new();
    for h in ["back", "gone"] {
        let token = first.app.token(h).await;
        let body =
            json!({"host": {"name": h}, "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}]});
        assert_eq!(first.app.ingest(&token, &body).await.status(), 200);
        tokens.push(token);
    }
    first.app.stop().await;
    // The outage: longer than after_secs = 5.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = rig_with(SmtpServer::start().await, Some(db_url)).await;
    // "back" reconnects at once and keeps reporting; "gone" stays silent.
    let started = std::time::Instant::now();
    let mut gone_fired = false;
    while started.elapsed() < Duration::from_secs(15) && !gone_fired {
        let body = json!({"host": {"name": "back"}, "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}]});
        assert_eq!(second.app.ingest(&tokens[0], &body).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        gone_fired = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alerts WHERE rule = 'host-down' AND labels->>'host' = 'gone' AND state = 'firing'",
        )
        .fetch_one(&second.app.store.pool)
        .await
        .unwrap()
            == 1;
    }
    assert!(gone_fired, "the host that stayed silent fires");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "not before after_secs of watching: {:?}",
        started.elapsed()
    );
    let back: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alerts WHERE rule = 'host-down' AND labels->>'host' = 'back'",
    )
    .fetch_one(&second.app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        back, 0,
        "the host that reconnected raised nothing, not even pending"
    );
    let mails = second.smtp.wait_for(1, 15).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].contains("gone") && !mails[0].contains("back"),
        "{}",
        mails[0]
    );
    second.app.stop().await;
}

/// Silence is judged by when samples arrive, not by their own timestamps: a host whose
/// clock runs 90 s behind (past after_secs = 5) reports every half second and is never
/// called down; when it stops, it fires.
#[tokio::test]
async fn a_host_whose_clock_is_behind_is_not_down_while_it_reports() {
    let r = rig().await;
    let token = r.app.token("slow-clock").await;
    let behind = chrono::Duration::seconds(90);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let ts = Utc::now() - behind;
        let body = json!({"host": {"name": "slow-clock"}, "host_samples": [{"ts": ts, "cpu_util_pct": 1.0}],
                          "gpu_samples": [{"ts": ts, "index": 0, "util_pct": 50.0, "power_watts": 300.0}]});
        assert_eq!(r.app.ingest(&token, &body).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alerts WHERE rule = 'host-down' AND state = 'firing'",
        )
        .fetch_one(&r.app.store.pool)
        .await
        .unwrap()
    };
    assert_eq!(count().await, 0, "a reporting host is not down");
    assert!(r.smtp.mails().is_empty(), "{:?}", r.smtp.mails());
    // The fleet counts it and its GPU as reporting, and its page says why its last
    // sample looks old.
    let cookie = r.app.login("ops", "correct horse").await;
    let fleet = r.app.json(&cookie, "/api/v1/fleet").await;
    assert_eq!(
        (
            &fleet["hosts_up"],
            &fleet["gpus_up"],
            &fleet["gpu_power_watts"]
        ),
        (&json!(1), &json!(1), &json!(300.0)),
        "{fleet}"
    );
    let (_, page) = r.app.page(&cookie, "/hosts/slow-clock").await;
    assert!(
        page.contains(
            "its samples arrive 90 s after their own time: the agent&#39;s clock is behind"
        ) || page
            .contains("its samples arrive 90 s after their own time: the agent's clock is behind"),
        "{page}"
    );
    // Silent from now on: down after after_secs.
    let mails = r.smtp.wait_for(1, 20).await;
    assert_eq!(mails.len(), 1);
    assert!(
        subject(&mails[0]).contains("Host stopped reporting"),
        "{}",
        subject(&mails[0])
    );
    assert_eq!(count().await, 1);
    r.app.stop().await;
}

/// Post the host page's "take out of the fleet" form for old-box, its name typed as
/// `confirm`.
async fn post_remove(app: &TestApp, cookie: &str, page: &str, confirm: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/hosts/old-box/remove", app.base))
        .header("cookie", cookie)
        .form(&[("csrf", csrf_of(page)), ("confirm", confirm.to_string())])
        .send()
        .await
        .unwrap()
}

/// `DELETE /api/v1/hosts/{name}` with a session cookie.
async fn delete_host(app: &TestApp, cookie: &str, name: &str) -> reqwest::Response {
    app.http
        .delete(format!("{}/api/v1/hosts/{name}", app.base))
        .header("cookie", cookie)
        .header(
            rackwatch::web::access::CSRF_HEADER,
            rackwatch::web::access::csrf_for_cookie(cookie),
        )
        .send()
        .await
        .unwrap()
}

/// A decommissioned host: taken out of the fleet from its page by an admin, its "stopped
/// reporting" alert resolves (mailed), it leaves the fleet, rack and inventory, its token
/// is revoked, the audit trail records it; an agent reporting for it with a new token
/// brings it back.
#[tokio::test]
async fn an_admin_takes_a_silent_host_out_of_the_fleet_and_it_comes_back_when_it_reports() {
    use rackwatch::store::auth::Role;
    let r = rig().await;
    let app = &r.app;
    let sample = |h: &str| {
        json!({"host": {"name": h, "site": "fra1", "rack": "r12"}, "gpus": [{"index": 0}],
        "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}], "gpu_samples": [{"ts": Utc::now(), "index": 0, "util_pct": 1.0}]})
    };
    let old_token = app.token("old-box").await;
    assert_eq!(
        app.ingest(&old_token, &sample("old-box")).await.status(),
        200
    );
    let keeper = app.token("keeper").await;
    // "keeper" reports throughout; "old-box" goes silent and fires.
    let mut mails = Vec::new();
    for _ in 0..40 {
        assert_eq!(app.ingest(&keeper, &sample("keeper")).await.status(), 200);
        mails = r.smtp.mails();
        if !mails.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(subject(&mails[0]).contains("Host stopped reporting") && mails[0].contains("old-box"));
    // A viewer sees no button and may not post the form.
    let viewer = app.login_as("watcher", "watcher-pass", Role::Viewer).await;
    let (_, page) = app.page(&viewer, "/hosts/old-box").await;
    assert!(!page.contains("remove-host"), "{page}");
    let refused = post_remove(app, &viewer, &page, "old-box").await;
    assert_eq!(refused.status(), 403);
    // The admin takes it out from its page.
    let admin = app.login("admin", "admin-password").await;
    let (_, page) = app.page(&admin, "/hosts/old-box").await;
    assert!(page.contains(r#"action="/hosts/old-box/remove""#), "{page}");
    // Without its name typed: a clear 400, nothing taken out.
    let unconfirmed = post_remove(app, &admin, &page, "old-bo").await;
    assert_eq!(unconfirmed.status(), 400);
    assert!(unconfirmed
        .text()
        .await
        .unwrap()
        .contains("type the host&#39;s name"));
    let done = post_remove(app, &admin, &page, "old-box").await;
    assert_eq!(done.status(), 303);
    let mails = r.smtp.wait_for(2, 15).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:CRITICAL] Host stopped reporting"),
        "{}",
        subject(&mails[1])
    );
    let fleet = app.json(&admin, "/api/v1/fleet").await;
    assert_eq!(
        (&fleet["hosts_total"], &fleet["hosts_up"]),
        (&json!(1), &json!(1)),
        "{fleet}"
    );
    let (_, rack) = app.page(&admin, "/racks/fra1/r12").await;
    assert!(
        rack.contains(">keeper</a>") && !rack.contains(">old-box</a>"),
        "{rack}"
    );
    let (_, inventory) = app.page(&admin, "/inventory").await;
    assert!(!inventory.contains("old-box"), "{inventory}");
    let (status, page) = app.page(&admin, "/hosts/old-box").await;
    assert_eq!(status, 200, "its history stays reachable");
    assert!(page.contains("Taken out of the fleet by admin"), "{page}");
    assert!(!page.contains("remove-host"), "{page}");
    assert!(
        !page.contains("href=\"/racks/"),
        "no rack page lists it: its rack is not a link"
    );
    // Its GPU's page says so too.
    let (status, gpu) = app.page(&admin, "/hosts/old-box/gpus/0").await;
    assert_eq!(status, 200);
    assert!(
        gpu.contains("id=\"removed\">Taken out of the fleet by admin")
            && !gpu.contains("href=\"/racks/"),
        "{gpu}"
    );
    assert_eq!(
        app.ingest(&old_token, &sample("old-box")).await.status(),
        401,
        "its token is revoked"
    );
    let audit = app.audit("host.removed").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].target, "host old-box (1 agent token revoked)");
    // Taking it out twice: a clear 404.
    let again = post_remove(app, &admin, &page, "old-box").await;
    assert_eq!(again.status(), 404);
    assert!(again.text().await.unwrap().contains("already taken out"));
    // The API does the same for automation: admins only, JSON errors.
    let refused = delete_host(app, &viewer, "keeper").await;
    assert_eq!(refused.status(), 403);
    let missing = delete_host(app, &admin, "old-box").await;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already taken out"),
        "{body}"
    );
    // Reinstalled with a new token: back in the fleet, and no alert while it reports.
    let new_token = app.token("old-box").await;
    assert_eq!(
        app.ingest(&new_token, &sample("old-box")).await.status(),
        200
    );
    let fleet = app.json(&admin, "/api/v1/fleet").await;
    assert_eq!(
        (&fleet["hosts_total"], &fleet["hosts_up"]),
        (&json!(2), &json!(2)),
        "{fleet}"
    );
    let (_, page) = app.page(&admin, "/hosts/old-box").await;
    assert!(
        !page.contains("Taken out of the fleet")
            && page.contains("remove-host")
            && page.contains("href=\"/racks/"),
        "{page}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.smtp.mails().len(), 2);
    // Taken out again, through the API.
    let removed = delete_host(app, &admin, "old-box").await;
    assert_eq!(removed.status(), 200);
    let body: serde_json::Value = removed.json().await.unwrap();
    assert_eq!(body, json!({"host": "old-box", "tokens_revoked": 1}));
    assert_eq!(
        app.ingest(&new_token, &sample("old-box")).await.status(),
        401
    );
    assert_eq!(app.audit("host.removed").await.len(), 2);
    r.app.stop().await;
}

/// An XID 79 on `host`'s GPU `gpu`, fired and kept firing for the rest of the test, as a
/// fault that keeps recurring would (the test rules resolve hardware alerts after 3 quiet
/// seconds). Returns the alert's fingerprint.
async fn keep_firing_xid(app: &TestApp, host: &str, gpu: u8) -> String {
    let token = app.token(host).await;
    assert_eq!(
        app.ingest(&token, &xid(host, gpu, 79, Utc::now()))
            .await
            .status(),
        200
    );
    for _ in 0..50 {
        let fp: Option<String> =
            sqlx::query_scalar("SELECT fingerprint FROM alerts WHERE state = 'firing'")
                .fetch_optional(&app.store.pool)
                .await
                .unwrap();
        if let Some(fp) = fp {
            sqlx::query("UPDATE alerts SET last_active_at = now() + interval '1 hour'")
                .execute(&app.store.pool)
                .await
                .unwrap();
            return fp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the XID alert on {host} did not fire");
}

#[tokio::test]
async fn alerts_page_lists_and_operators_acknowledge_and_silence() {
    use rackwatch::store::auth::Role;
    let r = rig_with(SmtpServer::stopped(crate::support::free_port()), None).await;
    let app = &r.app;
    let fp = keep_firing_xid(app, "pg-host", 5).await;
    let get = |cookie: String| {
        let c = app
            .http
            .get(format!("{}/alerts", app.base))
            .header("cookie", cookie);
        async move { c.send().await.unwrap().text().await.unwrap() }
    };
    let post = |path: &str, cookie: &str, form: Vec<(&str, String)>| {
        app.http
            .post(format!("{}{path}", app.base))
            .header("cookie", cookie.to_string())
            .form(&form)
            .send()
    };

    let viewer = app.login_as("viewer1", "viewer-pass", Role::Viewer).await;
    let html = get(viewer.clone()).await;
    assert!(
        html.contains("GPU reported an XID error") && html.contains("fra1 / r12 / pg-host / GPU 5"),
        "{html}"
    );
    assert!(!html.contains("Acknowledge"), "viewers cannot acknowledge");
    let csrf = crate::support::csrf_of(&html);
    let denied = post(
        "/alerts/ack",
        &viewer,
        vec![("fingerprint", fp.clone()), ("csrf", csrf)],
    )
    .await
    .unwrap();
    assert_eq!(denied.status(), 403);

    let op = app.login_as("oper", "operator-pass", Role::Operator).await;
    let csrf = crate::support::csrf_of(&get(op.clone()).await);
    // Without the form's CSRF token the same request is refused.
    let forged = post("/alerts/ack", &op, vec![("fingerprint", fp.clone())])
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let ok = post(
        "/alerts/ack",
        &op,
        vec![("fingerprint", fp.clone()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 303);
    let by: Option<String> = sqlx::query_scalar("SELECT acknowledged_by FROM alerts")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(by.as_deref(), Some("oper"));
    // Back to the alert's own row, which the page can move focus to.
    let to = ok.headers()["location"].to_str().unwrap().to_string();
    let row = to
        .strip_prefix("/alerts#")
        .expect("the alerts page at a row");
    assert!(row.starts_with("alert-") && row.len() == 22, "{to}");
    // The GPU's own page lists the alert, linked to that row; another GPU's page does not.
    let token = app.token("pg-host").await;
    let ts = Utc::now();
    let gpus: Vec<_> = [0, 5]
        .iter()
        .map(|g| json!({"index": g, "uuid": format!("GPU-pg-{g}")}))
        .collect();
    let samples: Vec<_> = [0, 5]
        .iter()
        .map(|g| json!({"ts": ts, "index": g, "util_pct": 50.0}))
        .collect();
    let inventory = json!({"host": {"name": "pg-host", "site": "fra1", "rack": "r12"},
        "gpus": gpus, "gpu_samples": samples});
    assert_eq!(app.ingest(&token, &inventory).await.status(), 200);
    let gpu_page = |i: u8| {
        let c = app
            .http
            .get(format!("{}/hosts/pg-host/gpus/{i}", app.base))
            .header("cookie", viewer.clone());
        async move { c.send().await.unwrap().text().await.unwrap() }
    };
    let html5 = gpu_page(5).await;
    let alerts5 = &html5[html5.find("id=\"alerts\"").expect("an alerts section")..];
    assert!(
        alerts5.contains(&format!(
            "<a href=\"/alerts#{row}\">GPU reported an XID error</a>"
        )),
        "{alerts5}"
    );
    let html0 = gpu_page(0).await;
    assert!(!html0.contains("GPU reported an XID error"), "{html0}");
    // Taken back from the page (acknowledged by mistake), then acknowledged again.
    let html = get(op.clone()).await;
    assert!(
        html.contains(&format!("<tr id=\"{row}\" tabindex=\"-1\"")),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<form method="post" action="/alerts/unack" data-announce="Acknowledgement taken back: GPU reported an XID error, "#
        ),
        "{html}"
    );
    let back = post(
        "/alerts/unack",
        &op,
        vec![("fingerprint", fp.clone()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(back.status(), 303);
    let by: Option<String> = sqlx::query_scalar("SELECT acknowledged_by FROM alerts")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(by, None);
    let again = post(
        "/alerts/ack",
        &op,
        vec![("fingerprint", fp.clone()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 303);
    // Acknowledged meanwhile (another tab, another person): the list again, with why.
    let twice = post(
        "/alerts/ack",
        &op,
        vec![("fingerprint", fp.clone()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(twice.status(), 409);
    let html = twice.text().await.unwrap();
    assert!(
        html.contains("id=\"alerts-notice\">already acknowledged by ")
            && html.contains("the list below is as it is now")
            && html.contains("<h2>Firing (1)</h2>"),
        "{html}"
    );
    let form = vec![
        ("matchers", "host=pg-host, rule=gpu-xid".to_string()),
        ("hours", "2".to_string()),
        ("comment", "reseating the GPU".to_string()),
        ("csrf", csrf.clone()),
    ];
    assert_eq!(post("/silences", &op, form).await.unwrap().status(), 303);
    // A refused form: the alerts page again (400), with what was wrong at the form and
    // what was typed in it.
    let refused = |fields: Vec<(&'static str, String)>| {
        let post = &post;
        let op = &op;
        async move {
            let r = post("/silences", op, fields).await.unwrap();
            assert_eq!(r.status(), 400);
            let html = r.text().await.unwrap();
            assert!(html.contains("Alerts</h1>"), "{html}");
            html[html.find("id=\"new-silence\"").expect("the form")..].to_string()
        }
    };
    let at_form = refused(vec![
        ("matchers", "colour=red".to_string()),
        ("hours", "2".to_string()),
        ("comment", "typed & kept".to_string()),
        ("csrf", csrf.clone()),
    ])
    .await;
    assert!(
        at_form.contains("<p class=\"error\" role=\"alert\" id=\"silence-error\">")
            && at_form.contains("colour")
            && at_form.contains("value=\"colour=red\"")
            && at_form.contains("value=\"typed &#38; kept\""),
        "{at_form}"
    );
    // Hours that are not a number, and a start in the past: said in the form's words.
    for (hours, start, said) in [
        ("two", "", "Hours: &#34;two&#34; is not a number of hours"),
        (
            "2",
            "2020-01-01T00:00",
            "Starts: 2020-01-01T00:00:00+00:00 is in the past",
        ),
    ] {
        let at_form = refused(vec![
            ("matchers", "host=pg-host".to_string()),
            ("hours", hours.to_string()),
            ("start", start.to_string()),
            ("csrf", csrf.clone()),
        ])
        .await;
        assert!(
            at_form.contains(said) && at_form.contains(&format!("value=\"{hours}\"")),
            "{at_form}"
        );
    }
    // A maintenance window tomorrow at 22:00 on a viewer's clock one hour east of UTC
    // (getTimezoneOffset() = -60): 21:00 UTC.
    let day = (Utc::now() + chrono::Duration::days(1)).date_naive();
    let window = vec![
        ("matchers", "host=other-host".to_string()),
        ("start", format!("{day}T22:00")),
        ("tzo", "-60".to_string()),
        ("hours", "4".to_string()),
        ("csrf", csrf.clone()),
    ];
    // other-host reports nothing (yet): the silence is kept, and the list says so.
    let ahead = post("/silences", &op, window).await.unwrap();
    assert_eq!(ahead.status(), 200);
    let html = ahead.text().await.unwrap();
    assert!(
        html.contains("created. Note: no host named &#34;other-host&#34; reports to this server"),
        "{html}"
    );
    let (starts, ends): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT starts_at, ends_at FROM silences WHERE matchers = '{\"host\": \"other-host\"}'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(starts, day.and_hms_opt(21, 0, 0).unwrap().and_utc());
    assert_eq!(ends - starts, chrono::Duration::hours(4));
    let garbled = vec![
        ("matchers", "host=other-host".to_string()),
        ("start", "tomorrow".to_string()),
        ("hours", "4".to_string()),
        ("csrf", csrf.clone()),
    ];
    assert_eq!(post("/silences", &op, garbled).await.unwrap().status(), 400);
    let api: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/alerts", app.base))
        .header("cookie", &op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api[0]["silenced"], true);
    assert_eq!(api[0]["acknowledged_by"], "oper");
    let fleet = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &op)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        fleet.contains(r#"<b id="kpi-alerts"><a href="/alerts">0</a></b><small class="muted" id="kpi-alerts-handled">+ 1 acknowledged or silenced</small>"#),
        "{fleet}"
    );
    let html = get(op.clone()).await;
    assert!(
        html.contains("reseating the GPU")
            && html.contains("silenced")
            && html.contains("acknowledged by oper"),
        "{html}"
    );
    r.app.stop().await;
}

/// Scripts acknowledge and silence through the JSON API with HTTP Basic, with the same
/// checks, roles and audit rows as the page's forms.
#[tokio::test]
async fn operators_acknowledge_and_silence_through_the_json_api() {
    use rackwatch::store::auth::Role;
    let r = rig_with(SmtpServer::stopped(crate::support::free_port()), None).await;
    let app = &r.app;
    let fp = keep_firing_xid(app, "api-host", 2).await;
    let viewer = app.login_as("viewer2", "viewer-pass", Role::Viewer).await;
    app.login_as("oper2", "operator-pass", Role::Operator).await;
    app.login_as("admin-api", "admin-pass", Role::Admin).await;
    let call = |method: reqwest::Method, path: String, user: &'static str| {
        let pass = match user {
            "oper2" => "operator-pass",
            "admin-api" => "admin-pass",
            _ => "viewer-pass",
        };
        app.http
            .request(method, format!("{}{path}", app.base))
            .basic_auth(user, Some(pass))
    };
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    };
    use reqwest::Method;
    let ack = format!("/api/v1/alerts/{fp}/ack");

    // Viewers read, and may not act.
    let (s, b) = send(call(Method::POST, ack.clone(), "viewer2")).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = send(call(Method::GET, "/api/v1/silences".into(), "viewer2")).await;
    assert_eq!((s, b), (200, serde_json::json!([])));

    // Acknowledge: unknown fingerprint 404, then the firing alert.
    let (s, b) = send(call(
        Method::POST,
        "/api/v1/alerts/nope/ack".into(),
        "oper2",
    ))
    .await;
    assert_eq!(s, 404);
    assert!(
        b["error"].as_str().unwrap().contains("no firing alert"),
        "{b}"
    );
    let (s, b) = send(call(Method::POST, format!("{ack}?x=1"), "oper2")).await;
    assert_eq!(s, 400, "a parameter it does not take: {b}");
    // Prometheus can alert on a critical alert nobody is on.
    let m = app.metrics().await;
    for line in [
        "rackwatch_alerts{severity=\"critical\",state=\"firing\"} 1\n",
        "rackwatch_alerts{severity=\"warning\",state=\"pending\"} 0\n",
        "rackwatch_alerts_unhandled{severity=\"critical\"} 1\n",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    let (s, b) = send(call(Method::POST, ack.clone(), "oper2")).await;
    assert_eq!(s, 200, "{b}");
    let m = app.metrics().await;
    assert!(
        m.contains("rackwatch_alerts{severity=\"critical\",state=\"firing\"} 1\n")
            && m.contains("rackwatch_alerts_unhandled{severity=\"critical\"} 0\n"),
        "{m}"
    );
    assert_eq!(b["fingerprint"], fp.as_str());
    assert_eq!(b["acknowledged_by"], "oper2");
    // A second acknowledgement keeps the first and says who has it.
    let (s, b) = send(call(Method::POST, ack.clone(), "admin-api")).await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("already acknowledged by oper2 at 20"),
        "{b}"
    );
    assert!(b["error"].as_str().unwrap().ends_with(" UTC"), "{b}");
    // One that is not firing is named.
    let (s, b) = send(call(
        Method::POST,
        "/api/v1/alerts/no-such-alert/ack".into(),
        "oper2",
    ))
    .await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(
        b["error"], "no firing alert with fingerprint \"no-such-alert\"",
        "{b}"
    );
    // Taken back (a viewer may not), it can be acknowledged anew; taking back what is
    // not acknowledged is a 404.
    let (s, _) = send(call(Method::DELETE, ack.clone(), "viewer2")).await;
    assert_eq!(s, 403);
    let (s, b) = send(call(Method::DELETE, ack.clone(), "admin-api")).await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = send(call(Method::DELETE, ack.clone(), "admin-api")).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = send(call(Method::POST, ack.clone(), "oper2")).await;
    assert_eq!(
        (s, &b["acknowledged_by"]),
        (200, &serde_json::json!("oper2")),
        "{b}"
    );
    let was: serde_json::Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'alert.unacknowledged' AND actor = 'admin-api'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(was["was_acknowledged_by"], "oper2");

    // Bad silences are refused with the field named.
    let silence = |body: serde_json::Value| {
        call(Method::POST, "/api/v1/silences".into(), "oper2").json(&body)
    };
    for (body, says) in [
        (
            serde_json::json!({"matchers": {"colour": "red"}, "hours": 2}),
            "matchers.colour: unknown label",
        ),
        (
            serde_json::json!({"matchers": {"host": ""}, "hours": 2}),
            "matchers.host: host has no value",
        ),
        (
            serde_json::json!({"matchers": {}, "hours": 2}),
            "matchers: a silence needs at least one matcher",
        ),
        (
            serde_json::json!({"matchers": {"host": "api-host"}, "hours": 0}),
            "hours: a silence lasts at least 1 second",
        ),
        (
            serde_json::json!({"matchers": {"host": "api-host"}, "hours": 0.0001}),
            "hours: a silence lasts at least 1 second",
        ),
        (
            serde_json::json!({"matchers": {"gpu": "abc"}, "hours": 2}),
            "matchers.gpu: \"abc\" is not a GPU index",
        ),
        (
            serde_json::json!({"matchers": {"event": "bogus"}, "hours": 2}),
            "matchers.event: \"bogus\" is not one of xid",
        ),
        (
            serde_json::json!({"matchers": {"host": "a host=b"}, "hours": 2}),
            "matchers.host: \"a host=b\" holds a second matcher (host=b)",
        ),
        (
            serde_json::json!({"matchers": {"rule": "no-such-rule"}, "hours": 2}),
            "matchers.rule: \"no-such-rule\" is not a rule of",
        ),
        (
            serde_json::json!({"matchers": {"host": " api-host "}, "hours": 2}),
            "has spaces around it",
        ),
        (
            serde_json::json!({"matchers": {"host": "api-host"}, "hours": 3000}),
            "at most 2160 hours",
        ),
        (
            serde_json::json!({"matchers": {"host": "api-host"}, "hours": 2, "comment": "x".repeat(1001)}),
            "comment: the comment is over 1000 characters",
        ),
        (
            serde_json::json!({"matchers": {"host": "api-host"}, "hours": 2, "until": "tomorrow"}),
            "unknown field `until`",
        ),
        (
            serde_json::json!({"matchers": {"host": 7}, "hours": 2}),
            "matchers.host: invalid type",
        ),
        (
            serde_json::json!([{"host": "api-host"}, 2]),
            "the body is an array",
        ),
    ] {
        let (s, b) = send(silence(body.clone())).await;
        assert_eq!(s, 400, "{body}: {b}");
        let e = b["error"].as_str().unwrap();
        assert!(e.contains(says), "{body}: {e}");
    }
    // Fields given twice are refused, not read as the last one.
    for body in [
        r#"{"matchers": {"host": "a", "host": "b"}, "hours": 1}"#,
        r#"{"matchers": {"host": "a"}, "hours": 1, "hours": 2}"#,
    ] {
        let (s, b) = send(
            call(Method::POST, "/api/v1/silences".into(), "oper2")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(s, 400, "{body}: {b}");
        let e = b["error"].as_str().unwrap();
        assert!(
            e.contains("given twice") || e.contains("duplicate field `hours`"),
            "{e}"
        );
    }
    let (s, _) = send(
        call(Method::POST, "/api/v1/silences".into(), "oper2")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("matchers=host%3Dapi-host&hours=2"),
    )
    .await;
    assert_eq!(s, 415);
    let (s, _) = send(
        call(Method::POST, "/api/v1/silences".into(), "viewer2")
            .json(&serde_json::json!({"matchers": {"host": "api-host"}, "hours": 2})),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM silences")
            .fetch_one(&app.store.pool)
            .await
            .unwrap(),
        0,
        "nothing refused was stored"
    );

    // A silence for the host mutes the alert.
    let (s, made) = send(silence(serde_json::json!({
        "matchers": {"host": "api-host", "rule": "gpu-xid"}, "hours": 2, "comment": "reseating"
    })))
    .await;
    assert_eq!(s, 201, "{made}");
    let id = made["id"].as_i64().unwrap();
    assert_eq!(made["matchers"]["host"], "api-host");
    assert_eq!(made["author"], "oper2");
    assert_eq!(made["notes"], serde_json::json!([]), "every name is known");
    let ends: chrono::DateTime<Utc> = made["ends_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (ends - Utc::now() - chrono::Duration::hours(2))
            .num_seconds()
            .abs()
            < 60
    );
    let (_, alerts) = send(call(Method::GET, "/api/v1/alerts".into(), "viewer2")).await;
    assert_eq!(alerts[0]["silenced"], true, "{alerts}");
    assert_eq!(alerts[0]["acknowledged_by"], "oper2", "{alerts}");
    // The command line says the same.
    let url = app.db_url.clone();
    let ((ok, out, err), (json_ok, json_out, _)) = tokio::task::spawn_blocking(move || {
        (
            crate::cli::rackwatch(&url, &["alerts", "list"], ""),
            crate::cli::rackwatch(&url, &["alerts", "list", "--format", "JSON"], ""),
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("[{fp}]  (acknowledged by oper2, silenced)"))
            && out.ends_with("1 alert\n"),
        "{out}"
    );
    // Its JSON is the API's.
    assert!(json_ok, "{json_out}");
    let cli_alerts: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    for key in [
        "fingerprint",
        "silenced",
        "acknowledged_by",
        "summary",
        "started_at",
    ] {
        assert_eq!(cli_alerts[0][key], alerts[0][key], "{key}: {cli_alerts}");
    }
    assert_eq!(cli_alerts.as_array().map(Vec::len), Some(1), "{cli_alerts}");
    let (_, list) = send(call(Method::GET, "/api/v1/silences".into(), "viewer2")).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id);

    let end = |id: String| call(Method::DELETE, format!("/api/v1/silences/{id}"), "oper2");
    // A maintenance window ahead is listed but does not mute yet; one too far ahead is
    // refused.
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let (s, window) = send(silence(serde_json::json!({
        "matchers": {"host": "api-host"}, "starts_at": tomorrow, "hours": 4
    })))
    .await;
    assert_eq!(s, 201, "{window}");
    let starts: chrono::DateTime<Utc> = window["starts_at"].as_str().unwrap().parse().unwrap();
    assert!((starts - tomorrow).num_seconds().abs() <= 1, "{window}");
    let (s, b) = send(silence(serde_json::json!({
        "matchers": {"host": "api-host"}, "starts_at": Utc::now() + chrono::Duration::days(91), "hours": 4
    })))
    .await;
    assert_eq!(s, 400);
    assert!(b["error"].as_str().unwrap().contains("starts_at: "), "{b}");
    let (_, list) = send(call(Method::GET, "/api/v1/silences".into(), "viewer2")).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let (_, page) = app.page(&viewer, "/alerts").await;
    assert!(
        page.contains("<span class=\"badge\">scheduled</span>"),
        "{page}"
    );

    // End it: a bad id 400, an unknown one 404, then the silence, then 404.
    assert_eq!(send(end("abc".into())).await.0, 400);
    assert_eq!(send(end("999999".into())).await.0, 404);
    assert_eq!(
        send(call(
            Method::DELETE,
            format!("/api/v1/silences/{id}"),
            "viewer2"
        ))
        .await
        .0,
        403
    );
    let (s, ended) = send(end(id.to_string())).await;
    assert_eq!(s, 200, "{ended}");
    let ended_at: chrono::DateTime<Utc> = ended["ends_at"].as_str().unwrap().parse().unwrap();
    assert!(ended_at <= Utc::now());
    assert_eq!(send(end(id.to_string())).await.0, 404);
    // Left: the window ahead, which does not mute the alert now.
    let (_, list) = send(call(Method::GET, "/api/v1/silences".into(), "viewer2")).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], window["id"]);
    let (_, alerts) = send(call(Method::GET, "/api/v1/alerts".into(), "viewer2")).await;
    assert_eq!(alerts[0]["silenced"], false, "{alerts}");
    let (s, cancelled) = send(end(window["id"].to_string())).await;
    assert_eq!(s, 200, "{cancelled}");
    assert_eq!(cancelled["starts_at"], window["starts_at"], "as planned");
    assert_eq!(send(end(window["id"].to_string())).await.0, 404);

    // One audit row per action, by the operator.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE actor = 'oper2' AND action NOT LIKE 'login%' ORDER BY id",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "alert.acknowledged",
            "alert.acknowledged",
            "silence.created",
            "silence.created",
            "silence.expired",
            "silence.cancelled"
        ]
    );
    // A name no host carries is kept, with a note, as the page and the command line say.
    let (s, typo) = send(silence(serde_json::json!({
        "matchers": {"host": "api-hots", "pool": "nowhere"}, "hours": 1
    })))
    .await;
    assert_eq!(s, 201, "{typo}");
    let notes = typo["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2, "{typo}");
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .starts_with("no host named \"api-hots\""),
        "{typo}"
    );
    assert!(
        notes[1].as_str().unwrap().contains("pool \"nowhere\""),
        "{typo}"
    );
    let typo_id = typo["id"].as_i64().unwrap();
    let (s, _) = send(call(
        Method::DELETE,
        format!("/api/v1/silences/{typo_id}"),
        "oper2",
    ))
    .await;
    assert_eq!(s, 200);
    r.app.stop().await;
}

/// Flapping is three re-fires within an hour, not three re-fires each within an hour of
/// the last resolve; a flapping alert is not mailed when it re-fires, and is mailed once
/// it has fired steadily for an hour.
#[tokio::test]
async fn an_alert_flaps_on_three_refires_within_an_hour_and_is_mailed_once_it_settles() {
    use rackwatch::alert::{eval::evaluate, rules::RuleSet};
    let app = TestApp::spawn().await;
    // The GPU rule alone: evaluated at instants ahead of the wall clock, the host would
    // look silent to an absence rule, and that inhibits its GPUs' mail.
    let rules = RuleSet::parse(
        r#"
[[rule]]
name = "gpu-hot"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
resolve_value = 80
for_secs = 2
severity = "warning"

[[route]]
to = ["ops@example.com"]
"#,
    )
    .unwrap();
    let token = app.token("flappy").await;
    let t0 = Utc::now();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let temp = |s: i64, c: f64| json!({"host": {"name": "flappy"}, "gpu_samples": [{"ts": at(s), "index": 0, "temp_celsius": c}]});
    let eval = |s: i64| {
        let (store, cfg, rules) = (&app.store, &app.cfg, &rules);
        async move {
            evaluate(
                store,
                rules,
                cfg,
                at(s),
                t0 - chrono::Duration::hours(1),
                true,
            )
            .await
            .unwrap()
        }
    };
    let mailed = || async {
        sqlx::query_scalar::<_, String>("SELECT kind FROM notification_outbox ORDER BY id")
            .fetch_all(&app.store.pool)
            .await
            .unwrap()
    };
    let flaps = || async {
        sqlx::query_scalar::<_, i32>("SELECT flaps FROM alerts WHERE rule = 'gpu-hot'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap()
    };
    // Hot for its 2 s: fires and is mailed.
    assert_eq!(app.ingest(&token, &temp(0, 90.0)).await.status(), 200);
    eval(1).await;
    eval(4).await;
    assert_eq!(mailed().await, ["firing"]);
    // It fired twice more in the last hour (40 and 20 minutes ago): resolving is mailed,
    // but the third re-fire makes it flapping, and that firing is not mailed.
    sqlx::query(
        "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at, resolved_at)
         SELECT fingerprint, rule, severity, labels, summary, $1 - m * interval '1 minute', $1 - (m - 5) * interval '1 minute'
           FROM alerts, unnest(ARRAY[40, 20]) m WHERE rule = 'gpu-hot'",
    )
    .bind(t0)
    .execute(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(app.ingest(&token, &temp(5, 79.0)).await.status(), 200);
    eval(6).await;
    assert_eq!(mailed().await, ["firing", "resolved"]);
    assert_eq!(app.ingest(&token, &temp(7, 90.0)).await.status(), 200);
    eval(8).await;
    eval(11).await;
    assert_eq!(flaps().await, 3);
    assert_eq!(mailed().await, ["firing", "resolved"]);
    // Firing steadily for an hour since: settled, mailed, flapping no more.
    sqlx::query(
        "UPDATE alerts SET fired_at = fired_at - interval '61 minutes' WHERE rule = 'gpu-hot'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    eval(12).await;
    assert_eq!(mailed().await, ["firing", "resolved", "firing"]);
    assert_eq!(flaps().await, 0);
    eval(13).await;
    assert_eq!(mailed().await.len(), 3, "settling is mailed once");
    // Firings more than an hour back do not count: three over the last two hours (as a
    // restarted fleet gives) re-fire without flapping, and are mailed.
    sqlx::query("UPDATE incidents SET started_at = started_at - interval '2 hours', resolved_at = coalesce(resolved_at, $1) - interval '2 hours'")
        .bind(t0)
        .execute(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(app.ingest(&token, &temp(14, 79.0)).await.status(), 200);
    eval(15).await;
    assert_eq!(app.ingest(&token, &temp(16, 90.0)).await.status(), 200);
    eval(17).await;
    eval(20).await;
    assert_eq!(flaps().await, 0);
    assert_eq!(
        mailed().await,
        ["firing", "resolved", "firing", "resolved", "firing"]
    );
    app.stop().await;
}

/// A hot GPU pulled for repair while its host keeps reporting: its alert resolves after
/// 10 minutes without a value, saying why; the other hot GPU of the host keeps firing.
#[tokio::test]
async fn a_threshold_alert_resolves_when_its_gpu_stops_reporting_while_the_host_reports() {
    use rackwatch::alert::{eval::evaluate, rules::RuleSet};
    let app = TestApp::spawn().await;
    let rules = RuleSet::parse(
        r#"
[[rule]]
name = "gpu-hot"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85
severity = "warning"

[[route]]
to = ["ops@example.com"]
"#,
    )
    .unwrap();
    let token = app.token("rma").await;
    let t0 = Utc::now();
    let eval = |at: chrono::DateTime<Utc>| {
        let (store, cfg, rules) = (&app.store, &app.cfg, &rules);
        async move {
            evaluate(store, rules, cfg, at, t0 - chrono::Duration::hours(1), true)
                .await
                .unwrap()
        }
    };
    let hot = |ts: chrono::DateTime<Utc>, gpus: &[u8]| {
        let g: Vec<_> = gpus
            .iter()
            .map(|i| json!({"ts": ts, "index": i, "temp_celsius": 95.0}))
            .collect();
        json!({"host": {"name": "rma"}, "host_samples": [{"ts": ts, "cpu_util_pct": 5.0}], "gpu_samples": g})
    };
    let alerts = || async {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT labels->>'gpu', state, description FROM alerts WHERE rule = 'gpu-hot' ORDER BY 1",
        )
        .fetch_all(&app.store.pool)
        .await
        .unwrap()
    };
    let early = t0 - chrono::Duration::seconds(100);
    assert_eq!(app.ingest(&token, &hot(early, &[0, 1])).await.status(), 200);
    eval(t0).await;
    let a = alerts().await;
    assert_eq!(
        (a.len(), a[0].1.as_str(), a[1].1.as_str()),
        (2, "firing", "firing")
    );
    // GPU 1 is pulled: the host reports GPU 0 only. Within 10 minutes nothing changes.
    assert_eq!(app.ingest(&token, &hot(t0, &[0])).await.status(), 200);
    let later = t0 + chrono::Duration::seconds(30);
    eval(later).await;
    assert!(alerts().await.iter().all(|a| a.1 == "firing"));
    // Ten minutes on (the alert last seen 11 minutes ago): GPU 1's alert resolves.
    sqlx::query(
        "UPDATE alerts SET last_active_at = last_active_at - interval '11 minutes' WHERE labels->>'gpu' = '1'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    eval(later).await;
    let a = alerts().await;
    assert_eq!(a[0].1, "firing", "{a:?}");
    assert_eq!(a[1].1, "resolved", "{a:?}");
    assert_eq!(
        a[1].2,
        "GPU 1 no longer reports gpu.temp_celsius (10 min without a value while the host reports)"
    );
    app.stop().await;
}

/// Before: a host that went silent, then reported with a site and a pool, left its first
/// "stopped reporting" alert (filed under its name alone) firing for good, counted as
/// firing on the fleet page and mailed again every 4 hours.
#[tokio::test]
async fn an_alert_under_old_labels_or_of_a_removed_rule_resolves_instead_of_firing_for_good() {
    let r = rig().await;
    let app = &r.app;
    let bare = json!({"host": {"name": "moved-box"}, "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}]});
    let token = app.token("moved-box").await;
    assert_eq!(app.ingest(&token, &bare).await.status(), 200);
    let mails = r.smtp.wait_for(1, 30).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(subject(&mails[0]).contains("Host stopped reporting"));
    let labelled = json!({"host": {"name": "moved-box", "site": "fra1", "pool": "train-a"},
                          "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 1.0}]});
    assert_eq!(app.ingest(&token, &labelled).await.status(), 200);
    let mails = r.smtp.wait_for(2, 15).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED:CRITICAL] Host stopped reporting"),
        "{}",
        subject(&mails[1])
    );
    let open: Vec<(String, String)> =
        sqlx::query_as("SELECT fingerprint, state FROM alerts WHERE state <> 'resolved'")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert!(open.is_empty(), "{open:?}");
    // Silent again, it fires under its new labels; then the rule is removed from the rules
    // file (reloaded while running): its alert resolves, it does not fire on for good.
    let mails = r.smtp.wait_for(3, 30).await;
    assert_eq!(mails.len(), 3, "{mails:?}");
    assert!(subject(&mails[2]).starts_with("[FIRING:CRITICAL] Host stopped reporting"));
    let without = RULES.replace(
        "[[rule]]\nname = \"host-down\"\nkind = \"absent\"\nafter_secs = 5\nseverity = \"critical\"\nsummary = \"Host stopped reporting\"\n",
        "",
    );
    assert_ne!(without, RULES);
    std::fs::write(r._rules.path().join("alerts.toml"), without).unwrap();
    let mails = r.smtp.wait_for(4, 30).await;
    assert_eq!(mails.len(), 4, "{mails:?}");
    assert!(
        subject(&mails[3]).starts_with("[RESOLVED:CRITICAL] Host stopped reporting"),
        "{}",
        subject(&mails[3])
    );
    let open: Vec<(String, String)> =
        sqlx::query_as("SELECT fingerprint, state FROM alerts WHERE state <> 'resolved'")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert!(open.is_empty(), "{open:?}");
    r.app.stop().await;
}

/// Before: a host taken out of the fleet resolved its "stopped reporting" alert, but its
/// GPUs' threshold alerts fired on (nothing observes a host that no longer reports).
#[tokio::test]
async fn a_host_taken_out_resolves_its_gpu_alerts_too() {
    let r = rig().await;
    let app = &r.app;
    let token = app.token("hot-box").await;
    let state = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT state, description FROM alerts WHERE rule = 'gpu-hot'",
        )
        .fetch_optional(&app.store.pool)
        .await
        .unwrap()
    };
    let mut fired = false;
    for _ in 0..40 {
        let hot = json!({"host": {"name": "hot-box", "site": "fra1"},
                         "gpu_samples": [{"ts": Utc::now(), "index": 0, "temp_celsius": 95.0}]});
        assert_eq!(app.ingest(&token, &hot).await.status(), 200);
        if state().await.is_some_and(|(s, _)| s == "firing") {
            fired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fired, "{:?}", state().await);
    app.store.remove_host("hot-box", "admin").await.unwrap();
    let mut last = None;
    for _ in 0..40 {
        last = state().await;
        if last.as_ref().is_some_and(|(s, _)| s == "resolved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last,
        Some((
            "resolved".to_string(),
            "the host was taken out of the fleet".to_string()
        ))
    );
    r.app.stop().await;
}
