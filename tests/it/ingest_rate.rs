//! Per-agent-token rate limits on ingest: a token over its rate gets 429 with
//! Retry-After, its agent spools and comes back later, and other tokens are not slowed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{recent, TestApp};

fn body(host: &str) -> serde_json::Value {
    let ts = recent(1, 5, 10)[0].to_rfc3339();
    json!({
        "host": {"name": host},
        "host_samples": [{"ts": ts, "cpu_util_pct": 12.5}],
    })
}

/// Status, Retry-After and seconds taken of one ingest request.
async fn post(app: &TestApp, token: &str, host: &str) -> (u16, Option<u64>, f64) {
    let t0 = Instant::now();
    let r = app.ingest(token, &body(host)).await;
    let after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), after, t0.elapsed().as_secs_f64())
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_and_cannot_starve_another() {
    let app = TestApp::spawn_with(|c| {
        c.ingest.token_rate_per_sec = 2.0;
        c.ingest.token_burst = 4;
        // Two slots for everyone: without a per-token limit, eight busy clients of one
        // token would hold both nearly all the time.
        c.server.ingest_concurrency = 2;
    })
    .await;
    let noisy = app.token("noisy").await;
    let quiet = app.token("quiet").await;
    // The noisy token hammers for as long as the quiet one takes for its five batches,
    // however slow the machine.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut hammers = Vec::new();
    for _ in 0..8 {
        let (http, base, token) = (app.http.clone(), app.base.clone(), noisy.clone());
        let done = done.clone();
        hammers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/api/v1/ingest"))
                    .bearer_auth(&token)
                    .json(&body("noisy"))
                    .send()
                    .await
                    .unwrap();
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                seen.push((r.status().as_u16(), after));
            }
            seen
        }));
    }
    // The quiet agent, under its rate, all the while.
    let mut quiet_answers = Vec::new();
    for _ in 0..5 {
        quiet_answers.push(post(&app, &quiet, "quiet").await);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut noisy_answers = Vec::new();
    for h in hammers {
        noisy_answers.extend(h.await.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for (status, _, secs) in &quiet_answers {
        assert_eq!(
            *status, 200,
            "the quiet token is never refused: {quiet_answers:?}"
        );
        assert!(*secs < 2.0, "nor kept waiting: {quiet_answers:?}");
    }
    let ok = noisy_answers.iter().filter(|a| a.0 == 200).count();
    let limited: Vec<_> = noisy_answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(
        ok + limited.len(),
        noisy_answers.len(),
        "only 200 and 429: {noisy_answers:?}"
    );
    // Its burst and its rate over the run, and no more.
    let allowed = 4.0 + 2.0 * elapsed;
    assert!(
        (ok as f64) <= allowed + 1.0,
        "{ok} accepted, at most {allowed:.1} allowed"
    );
    assert!(ok >= 4, "the burst goes through: {ok}");
    assert!(limited.len() > 20, "{} refused", limited.len());
    assert!(
        limited.iter().all(|a| a.1.is_some_and(|s| s >= 1)),
        "every 429 says when to come back"
    );
    let m = app.metrics().await;
    assert!(
        m.lines().any(
            |l| l.starts_with("rackwatch_ingest_errors_total{reason=\"rate_limited\"}")
                && !l.ends_with(" 0")
        ),
        "refusals are counted"
    );

    app.stop().await;
}

#[tokio::test]
async fn an_agent_over_its_rate_spools_and_comes_back_when_told() {
    // One request every 4 s: the second comes back with Retry-After 4.
    let app = TestApp::spawn_with(|c| {
        c.ingest.token_rate_per_sec = 0.25;
        c.ingest.token_burst = 1;
    })
    .await;
    let token = app.token("slow").await;
    let spool = tempfile::tempdir().unwrap();
    let mut shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, spool.path()).unwrap();
    assert_eq!(post(&app, &token, "slow").await.0, 200);
    let batch: rackwatch::model::Batch = serde_json::from_value(body("slow")).unwrap();
    match shipper.send(&batch).await {
        rackwatch::collect::shipper::Delivery::Retry { after, why } => {
            assert!(why.starts_with("429"), "{why}");
            assert!(
                after.is_some_and(|a| a >= Duration::from_secs(3)),
                "{after:?}"
            );
        }
        other => panic!("expected a retry after 429: {other:?}"),
    }
    shipper.ship(batch).await;
    assert!(shipper.pending(), "a refused batch waits in the spool");
    // Draining at once does nothing: the agent waits as long as it was told.
    assert!(!shipper.drain().await);
    let t0 = Instant::now();
    while shipper.pending() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the spool drains once the rate allows"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        shipper.drain().await;
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "not before Retry-After: {:?}",
        t0.elapsed()
    );
    assert!(shipper.replayed_total >= 1);
    app.stop().await;
}

#[tokio::test]
async fn an_agent_waiting_for_a_busy_server_hears_busy_before_its_timeout() {
    let app = TestApp::spawn_with(|c| c.server.ingest_concurrency = 1).await;
    let token = app.token("busy").await;
    // An agent holds the only ingest slot: its body arrives slowly.
    let slow = crate::support::stalled_upload(&app, &token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another agent, with the default request timeout (10 s), is told the server is busy
    // and when to come back, instead of timing out as if the server were unreachable.
    assert_eq!(app.cfg.agent.request_timeout_secs, 10);
    let spool = tempfile::tempdir().unwrap();
    let shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, spool.path()).unwrap();
    let batch: rackwatch::model::Batch = serde_json::from_value(body("busy")).unwrap();
    let t0 = Instant::now();
    match shipper.send(&batch).await {
        rackwatch::collect::shipper::Delivery::Retry { why, after } => {
            assert!(
                why.starts_with("503") && why.contains("ingest concurrency limit"),
                "{why}"
            );
            assert!(after.is_some(), "503 says when to retry");
        }
        other => panic!("expected a retry after 503: {other:?}"),
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    drop(slow);
    app.stop().await;
}

/// Before: eight slow uploads with one agent's token held every ingest slot, and every
/// other agent was answered 503 for as long as it went on.
#[tokio::test]
async fn one_agent_cannot_hold_the_ingest_slots_the_others_need() {
    let app = TestApp::spawn().await;
    let noisy = app.token("noisy").await;
    let quiet = app.token("quiet").await;
    // Two slow uploads of one agent are in flight; its third is refused at once.
    let _held = (
        crate::support::stalled_upload(&app, &noisy).await,
        crate::support::stalled_upload(&app, &noisy).await,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, after, secs) = post(&app, &noisy, "noisy").await;
    assert_eq!((status, after), (429, Some(1)));
    assert!(secs < 1.0, "{secs}");
    let r = app.ingest(&noisy, &body("noisy")).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("already has 2 uploads in flight"), "{text}");
    // Another agent is not kept waiting.
    let (status, _, secs) = post(&app, &quiet, "quiet").await;
    assert_eq!(status, 200);
    assert!(secs < 1.0, "{secs}");
    app.stop().await;
}

/// Before: one agent token stored 100,000 samples per request at 5 requests a second,
/// enough to fill 51 GB of free disk in about 15 minutes.
#[tokio::test]
async fn a_token_over_its_sample_volume_gets_429_and_stores_nothing_of_that_batch() {
    let app = TestApp::spawn_with(|c| {
        c.ingest.token_samples_per_sec = 100.0;
        c.ingest.token_samples_burst = 1000;
        c.ingest.max_samples_per_batch = 1000;
    })
    .await;
    let big = app.token("big").await;
    let other = app.token("other").await;
    let batch = |host: &str, n: usize, secs_ago: i64| {
        let samples: Vec<_> = recent(n, 1, secs_ago)
            .into_iter()
            .map(|ts| json!({"ts": ts, "cpu_util_pct": 1.0}))
            .collect();
        json!({"host": {"name": host}, "host_samples": samples})
    };
    let stored = |host: &'static str| {
        let pool = app.store.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = $1",
            )
            .bind(host)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        app.ingest(&big, &batch("big", 800, 2000)).await.status(),
        200
    );
    // 200 samples left in its bucket: 500 more wait for 300 to refill (3 s at 100/s).
    let r = app.ingest(&big, &batch("big", 500, 1000)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let text = r.text().await.unwrap();
    assert!(text.contains("ingest.token_samples_per_sec"), "{text}");
    assert_eq!(stored("big").await, 800, "nothing of the refused batch");
    // Another agent is not held back.
    assert_eq!(
        app.ingest(&other, &batch("other", 800, 2000))
            .await
            .status(),
        200
    );
    // Rejected samples count too: checking them is work. 150 of them (a CPU at 500 %)
    // leave 50 in the bucket, so 100 valid ones then wait.
    let bad: Vec<_> = recent(150, 1, 500)
        .into_iter()
        .map(|ts| json!({"ts": ts, "cpu_util_pct": 500.0}))
        .collect();
    let r = app
        .ingest(
            &other,
            &json!({"host": {"name": "other"}, "host_samples": bad}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["rejected"],
        150
    );
    let r = app.ingest(&other, &batch("other", 100, 100)).await;
    assert_eq!(r.status(), 429, "rejected samples were not charged");
    assert_eq!(stored("other").await, 800);
    // A burst smaller than a batch could never store a full one: refused at start.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[ingest]\ntoken_samples_burst = 10\n").unwrap();
    let e = rackwatch::config::Config::load(Some(&file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ingest.token_samples_burst"), "{e}");
    app.stop().await;
}
