//! `/metrics` as Prometheus and its tools read it: after ingest, page loads, the jobs'
//! first runs and an alert mail, the exposition passes `promtool check metrics`, every
//! `*_total` series is typed counter and each histogram has observations.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use crate::support::{fresh_database, SmtpServer, TestApp, METRICS_TOKEN};

const RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"

[[route]]
to = ["oncall@example.com"]
"#;

/// The `# TYPE` of each family.
fn types(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[tokio::test]
async fn metrics_pass_promtool_with_counters_and_histograms_after_real_traffic() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let app = TestApp::spawn_full(fresh_database().await, |c| {
        smtp.alert_through(c, &rules);
        c.anomaly.enabled = false;
    })
    .await;

    // Ingest: one batch with an XID (which mails) and the agent's spool stats, one refused.
    let token = app.token("gpu-17").await;
    let ts = Utc::now() - chrono::Duration::seconds(1);
    let batch = json!({
        "host": {"name": "gpu-17", "site": "fra1", "rack": "r12"},
        "agent": {"version": "test", "spool_batches": 2, "spool_bytes": 4096,
                  "replayed_batches_total": 5, "dropped_batches_total": 1},
        "host_samples": [{"ts": ts, "cpu_util_pct": 10.0}],
        "gpus": [{"index": 3}],
        "gpu_samples": [{"ts": ts, "index": 3, "util_pct": 50.0}],
        "events": [{"ts": ts, "index": 3, "kind": "xid", "code": 79,
                    "message": "NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus."}],
    });
    assert_eq!(app.ingest(&token, &batch).await.status(), 200);
    assert_eq!(app.ingest("wrong", &batch).await.status(), 401);

    // Pages: the fleet, a host twice, a GPU, and a host that does not exist (404).
    let cookie = app.login("admin", "pw-metrics").await;
    for (path, status) in [
        ("/", 200),
        ("/hosts/gpu-17", 200),
        ("/hosts/gpu-17", 200),
        ("/hosts/gpu-17/gpus/3", 200),
        ("/hosts/nobody", 404),
    ] {
        assert_eq!(app.page(&cookie, path).await.0, status, "{path}");
    }

    // The alert mail, and the jobs' first runs (the leader runs every job at once).
    assert_eq!(smtp.wait_for(1, 15).await.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = app.metrics().await;
        let ran = |job: &str| {
            value(
                &text,
                &format!("rackwatch_job_run_duration_seconds_count{{job_name=\"{job}\"}}"),
            )
            .is_some()
        };
        if ran("rollups") && ran("energy") {
            break text;
        }
        assert!(Instant::now() < deadline, "the jobs did not run:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    // The version, for spotting two versions on one database.
    assert!(
        text.contains(&format!(
            "rackwatch_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );

    // Every HELP text is a sentence with one full stop, whichever part of the server
    // writes its family.
    let unfinished: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# HELP "))
        .filter(|l| !l.ends_with('.') || l.ends_with(".."))
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:#?}");

    // Counters are counters, the two agent counters included (gauges before).
    let types = types(&text);
    // docs/metrics.md lists every family the server exposes.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let undocumented: Vec<_> = types
        .keys()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
    for (family, kind) in &types {
        if family.ends_with("_total") {
            assert_eq!(*kind, "counter", "{family}");
        }
    }
    for family in [
        "rackwatch_ingest_requests_total",
        "rackwatch_ingest_seconds_total",
        "rackwatch_ingest_errors_total",
        "rackwatch_job_runs_total",
        "rackwatch_agent_replayed_batches_total",
        "rackwatch_agent_dropped_batches_total",
        "rackwatch_http_connections_accepted_total",
    ] {
        assert_eq!(types.get(family), Some(&"counter"), "{family}\n{text}");
    }
    for family in [
        "rackwatch_job_leader",
        "rackwatch_job_duration_seconds",
        "rackwatch_db_pool_connections",
        "rackwatch_agent_spool_batches",
    ] {
        assert_eq!(types.get(family), Some(&"gauge"), "{family}");
    }

    // What the traffic above did, by value.
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(v("rackwatch_ingest_requests_total"), 2.0);
    assert_eq!(v("rackwatch_samples_accepted_total"), 3.0);
    assert_eq!(v("rackwatch_hardware_events_received_total"), 1.0);
    assert_eq!(
        v("rackwatch_ingest_errors_total{reason=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        v("rackwatch_agent_replayed_batches_total{host=\"gpu-17\"}"),
        5.0
    );
    assert_eq!(v("rackwatch_agent_spool_bytes{host=\"gpu-17\"}"), 4096.0);
    // Not heard from in an hour: its agent's series go (what it last said is no longer so).
    sqlx::query(
        "UPDATE hosts SET last_heard = now() - interval '61 minutes' WHERE name = 'gpu-17'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let later = app.metrics().await;
    assert!(
        !later.contains("rackwatch_agent_spool_bytes{host=\"gpu-17\"}"),
        "{later}"
    );
    assert!(v("rackwatch_http_connections_accepted_total") >= 1.0);
    assert!(v("rackwatch_http_connections_open") >= 1.0);
    assert_eq!(v("rackwatch_job_leader"), 1.0);

    // Each histogram has its observations, in cumulative buckets that end at +Inf.
    for (histogram, count) in [
        (
            "rackwatch_ingest_request_duration_seconds{outcome=\"ok\"",
            1.0,
        ),
        (
            "rackwatch_ingest_request_duration_seconds{outcome=\"unauthorized\"",
            1.0,
        ),
        ("rackwatch_page_render_duration_seconds{route=\"/\"", 1.0),
        (
            "rackwatch_page_render_duration_seconds{route=\"/hosts/{name}\"",
            3.0,
        ),
        (
            "rackwatch_page_render_duration_seconds{route=\"/hosts/{name}/gpus/{index}\"",
            1.0,
        ),
        (
            "rackwatch_job_run_duration_seconds{job_name=\"rollups\"",
            1.0,
        ),
        (
            "rackwatch_smtp_send_duration_seconds{mail=\"alert\",outcome=\"sent\"",
            1.0,
        ),
    ] {
        let (name, labels) = histogram.split_once('{').unwrap();
        assert_eq!(
            v(&format!("{name}_count{{{labels}}}")),
            count,
            "{histogram}"
        );
        assert_eq!(
            v(&format!("{name}_bucket{{{labels},le=\"+Inf\"}}")),
            count,
            "{histogram}"
        );
        assert!(v(&format!("{name}_sum{{{labels}}}")) > 0.0, "{histogram}");
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{{labels},")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.len() > 5, "{histogram}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{histogram}");
    }
    // Pages are labelled by route, never by the name asked for; a form's POST is not a
    // page load (the login form was shown once and posted once).
    assert!(!text.contains("route=\"/hosts/nobody\""), "{text}");
    assert_eq!(
        v("rackwatch_page_render_duration_seconds_count{route=\"/login\"}"),
        1.0
    );

    // The format Prometheus is told it gets.
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    app.stop().await;
}
