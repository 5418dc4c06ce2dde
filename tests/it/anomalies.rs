//! The anomaly job on real rollups, `GET /api/v1/anomalies` and the `anomaly` alert rule:
//! a week of normal history, a one-minute glitch, then a GPU whose temperature and power
//! jump for half an hour.

use chrono::{DateTime, Duration, DurationRound, Utc};
use rackwatch::alert::rules::RuleSet;
use rackwatch::analytics::anomaly::{AnomalyJob, RunSummary};
use serde_json::{json, Value};

use crate::support::{recent, subject, SmtpServer, TestApp};

/// The timeline, in minutes after the end of training (`e`).
const SPIKE_AT: i64 = 20;
const FAULT: std::ops::Range<i64> = 45..75;
/// Data ends this long after `e`.
const AFTER: i64 = 150;
/// The GPU that misbehaves.
const BAD_GPU: i16 = 2;

/// Normal host rollups for `$1` over `[$2, $3)`.
const HOST_ROLLUPS: &str = "
INSERT INTO host_samples_1m (host_id, bucket, samples, cpu_util_pct, load1, mem_used_bytes, mem_total_bytes,
    disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s)
SELECT $1, b, 12, 30 + 15 * d + 3 * (random() + random() - 1), 6 + 2 * d + 0.4 * (random() - 0.5),
       ((0.4 + 0.01 * (random() - 0.5)) * 549755813888)::bigint, 549755813888,
       5e6 * exp(0.3 * (random() - 0.5)), 2e6 * exp(0.3 * (random() - 0.5)),
       1e8 * (1 + 0.3 * d) * exp(0.2 * (random() - 0.5)), 4e7 * (1 + 0.3 * d) * exp(0.2 * (random() - 0.5))
  FROM (SELECT b, sin(2 * pi() * extract(epoch FROM b - $2::timestamptz) / 86400) AS d
          FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b) t";

/// Normal rollups of 4 GPUs whose power and temperature follow their utilization.
const GPU_ROLLUPS: &str = "
INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max, mem_util_pct, mem_used_bytes,
    power_watts, power_watts_max, temp_celsius, temp_celsius_max, sm_clock_mhz)
SELECT $1, g, b, 12, u, u, 0.6 * u, ((0.05 + 0.85 * u / 100) * 85899345920)::bigint,
       100 + 5 * u + 15 * (random() + random() - 1), 100 + 5 * u,
       35 + 0.4 * u + 1.5 * (random() + random() - 1), 35 + 0.4 * u, 1980
  FROM (SELECT g, b, least(100, greatest(0, 60 + 30 * sin(2 * pi() * extract(epoch FROM b - $2::timestamptz) / 86400 + 0.3 * g)
                                            + 8 * (random() + random() - 1))) AS u
          FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b,
               generate_series(0, 3) g) t";

struct Timeline {
    /// End of the training window: minutes before it are normal history.
    e: DateTime<Utc>,
    host_id: i64,
}

impl Timeline {
    fn at(&self, minute: i64) -> DateTime<Utc> {
        self.e + Duration::minutes(minute)
    }
}

/// The minute the seeded data ends: the current one. Hosts of one test share it, so a minute
/// boundary passing while one host's week is written cannot shorten another's history.
fn data_end() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::minutes(1)).unwrap()
}

/// Register `host` through ingest and give it `minutes` of normal 1-minute rollups (4 GPUs)
/// up to `end`; with `faults`, the glitch and the fault after `e`, which is `AFTER` minutes
/// before `end`.
async fn seed(
    app: &TestApp,
    host: &str,
    minutes: i64,
    faults: bool,
    end: DateTime<Utc>,
) -> Timeline {
    let token = app.token(host).await;
    let body = json!({"host": {"name": host, "site": "fra1", "rack": "r12", "pool": "train-a"},
                      "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 1.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let host_id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
        .bind(host)
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    let e = end - Duration::minutes(AFTER);
    let start = end - Duration::minutes(minutes);
    app.store
        .ensure_partitions(Utc::now(), (minutes / 1440 + 2) as u32, 3)
        .await
        .unwrap();
    // One connection, so the seeded random() is reproducible.
    let mut conn = app.store.pool.acquire().await.unwrap();
    sqlx::query("SELECT setseed(0.42)")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A daily cycle plus noise (sums of uniforms); 1-minute means as the rollup job writes.
    for sql in [HOST_ROLLUPS, GPU_ROLLUPS] {
        sqlx::query(sql)
            .bind(host_id)
            .bind(start)
            .bind(end)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let t = Timeline { e, host_id };
    if faults {
        // A one-minute glitch, then half an hour of a GPU running hot and drawing more.
        for (from, to, temp, power) in [
            (SPIKE_AT, SPIKE_AT + 1, 25.0, 250.0),
            (FAULT.start, FAULT.end, 20.0, 200.0),
        ] {
            sqlx::query(
                "UPDATE gpu_samples_1m SET temp_celsius = temp_celsius + $5, power_watts = least(700, power_watts + $6)
                  WHERE host_id = $1 AND gpu_index = $2 AND bucket >= $3 AND bucket < $4",
            )
            .bind(host_id)
            .bind(BAD_GPU)
            .bind(t.at(from))
            .bind(t.at(to))
            .bind(temp)
            .bind(power)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    t
}

/// Train at the end of the history, then score everything after it.
async fn train_and_score(app: &TestApp, t: &Timeline) -> (RunSummary, RunSummary) {
    let mut job = AnomalyJob::default();
    let settle = Duration::minutes(rackwatch::analytics::anomaly::SETTLE_MINUTES);
    let trained = job
        .run(&app.store, &app.cfg.anomaly, t.e + settle)
        .await
        .unwrap();
    let scored = job
        .run(&app.store, &app.cfg.anomaly, t.at(AFTER) + settle)
        .await
        .unwrap();
    (trained, scored)
}

#[derive(Debug)]
struct Score {
    minute: i64,
    score: f32,
    threshold: f32,
    anomalous: bool,
    top: Value,
}

async fn scores(app: &TestApp, t: &Timeline) -> Vec<Score> {
    let rows: Vec<(DateTime<Utc>, f32, f32, bool, Value)> = sqlx::query_as(
        "SELECT ts, score, threshold, is_anomalous, top FROM anomaly_scores WHERE host_id = $1 ORDER BY ts",
    )
    .bind(t.host_id)
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(ts, score, threshold, anomalous, top)| Score {
            minute: (ts - t.e).num_minutes(),
            score,
            threshold,
            anomalous,
            top,
        })
        .collect()
}

/// Minutes that must look normal: before the glitch, between its echo and the fault, and
/// once the fault's smoothed score has decayed.
fn normal(minute: i64) -> bool {
    (0..SPIKE_AT).contains(&minute)
        || (SPIKE_AT + 15..FAULT.start).contains(&minute)
        || (FAULT.end + 30..AFTER).contains(&minute)
}

async fn get(app: &TestApp, cookie: &str, query: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}/api/v1/anomalies{query}", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn job_scores_a_hot_gpu_high_explains_it_and_the_api_serves_it() {
    let app = TestApp::spawn().await;
    let end = data_end();
    let t = seed(&app, "gpu-a", 7 * 1440 + AFTER, true, end).await;
    // A host that reports for 100 minutes only: no model, and the API says why.
    seed(&app, "gpu-new", 100, false, end).await;
    let (trained, scored) = train_and_score(&app, &t).await;
    assert_eq!((trained.trained, trained.skipped), (1, 1), "{trained:?}");
    assert_eq!(trained.scored_minutes, 0, "training ends at the watermark");
    assert_eq!(scored.scored_minutes, AFTER as usize, "{scored:?}");
    let (status, minutes, metrics, threshold): (String, i32, Vec<String>, f64) = sqlx::query_as(
        "SELECT status, train_minutes, metrics, threshold FROM anomaly_models WHERE host_id = $1",
    )
    .bind(t.host_id)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(status, "trained");
    assert_eq!(minutes, 7 * 1440, "a week of minutes before the watermark");
    assert_eq!(
        metrics.len(),
        16,
        "host and GPU metrics all reported: {metrics:?}"
    );
    assert!(threshold > 0.0);

    let s = scores(&app, &t).await;
    assert_eq!(s.len(), AFTER as usize);
    assert_eq!(s[0].minute, 0, "scoring starts where training stopped");
    let normal_max = s
        .iter()
        .filter(|x| normal(x.minute))
        .map(|x| x.score)
        .fold(0.0f32, f32::max);
    for x in s.iter().filter(|x| normal(x.minute)) {
        assert!(!x.anomalous, "normal minute {x:?}");
        assert!(x.threshold as f64 >= threshold - 1e-6);
    }
    // The fault, after the smoothed score has had three minutes to rise.
    let fault: Vec<&Score> = s
        .iter()
        .filter(|x| (FAULT.start + 3..FAULT.end).contains(&x.minute))
        .collect();
    assert_eq!(fault.len(), 27);
    for x in &fault {
        assert!(x.anomalous, "fault minute {x:?}");
        assert!(
            x.score > 4.0 * normal_max && x.score > 2.0 * x.threshold,
            "fault {x:?} vs normal max {normal_max}"
        );
        let top = x.top.as_array().unwrap();
        let names: Vec<&str> = top.iter().map(|e| e["metric"].as_str().unwrap()).collect();
        assert!(
            names[..2].contains(&"gpu_temp_max_celsius")
                && names[..2].contains(&"gpu_power_max_watts"),
            "minute {}: {names:?}",
            x.minute
        );
        let temp = top
            .iter()
            .find(|e| e["metric"] == "gpu_temp_max_celsius")
            .unwrap();
        assert_eq!(temp["gpu"], BAD_GPU, "{temp}");
        assert!(
            temp["value"].as_f64().unwrap() > temp["typical"].as_f64().unwrap() + 10.0,
            "{temp}"
        );
        assert!(top[0]["share"].as_f64().unwrap() > 0.3);
    }
    // Running again at the same instant scores nothing twice.
    let again = AnomalyJob::default()
        .run(
            &app.store,
            &app.cfg.anomaly,
            t.at(AFTER) + Duration::minutes(2),
        )
        .await
        .unwrap();
    assert_eq!(again, RunSummary::default());

    // The API, with a session and with Basic credentials.
    let cookie = app.login("ops", "correct horse").await;
    let range = format!("from={}&to={}", rfc(t.e), rfc(t.at(AFTER)));
    let (code, body) = get(
        &app,
        &cookie,
        &format!("?host=gpu-a&{range}&anomalous=true"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let flagged = s.iter().filter(|x| x.anomalous).count();
    let api = body["scores"].as_array().unwrap();
    assert_eq!(api.len(), flagged);
    assert!(api
        .iter()
        .all(|x| x["anomalous"] == true && x["host"] == "gpu-a"));
    assert!(
        api.windows(2)
            .all(|w| w[0]["ts"].as_str() > w[1]["ts"].as_str()),
        "newest first"
    );
    let mid = rfc(t.at(FAULT.start + 15));
    let at_mid = api
        .iter()
        .find(|x| x["ts"].as_str().map(|s| s.starts_with(&mid[..16])) == Some(true));
    let at_mid = at_mid.unwrap_or_else(|| panic!("{mid} not in {api:?}"));
    assert_eq!(at_mid["top"][0]["gpu"], BAD_GPU);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["models"][0]["status"], "trained");
    let doc = crate::openapi::document();
    crate::openapi::assert_matches(&doc, "get", "/api/v1/anomalies", 200, &body);

    let min = fault[10].score;
    let (_, body) = get(
        &app,
        &cookie,
        &format!("?host=gpu-a&{range}&min_score={min}"),
    )
    .await;
    let api = body["scores"].as_array().unwrap();
    assert_eq!(api.len(), s.iter().filter(|x| x.score >= min).count());
    assert!(
        !api.is_empty()
            && api
                .iter()
                .all(|x| x["score"].as_f64().unwrap() as f32 >= min)
    );
    let (_, body) = get(&app, &cookie, &format!("?{range}&anomalous=false&limit=5")).await;
    assert_eq!(body["scores"].as_array().unwrap().len(), 5);
    assert_eq!(body["truncated"], true);
    assert!(body["scores"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["anomalous"] == false));
    // Both hosts' models are listed when no host is named.
    assert_eq!(body["models"].as_array().unwrap().len(), 2);
    // Paging: a second host scored at the same minutes as gpu-a (ties in the answer's
    // order); following `next` reaches every anomalous minute of both once, newest first.
    sqlx::query(
        "INSERT INTO anomaly_scores (host_id, ts, score, threshold, is_anomalous, top)
         SELECT (SELECT id FROM hosts WHERE name = 'gpu-new'), ts, score, threshold, is_anomalous, top
           FROM anomaly_scores WHERE host_id = (SELECT id FROM hosts WHERE name = 'gpu-a') AND is_anomalous",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let want = 2 * s.iter().filter(|x| x.anomalous).count();
    assert!(want > 14, "{want}");
    let mut seen = Vec::new();
    let mut next = Some(format!("/api/v1/anomalies?{range}&anomalous=true&limit=7"));
    while let Some(path) = next.take() {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let body: Value = r.json().await.unwrap();
        assert!(seen.len() <= want, "the links end");
        for x in body["scores"].as_array().unwrap() {
            seen.push((
                x["ts"].as_str().unwrap().to_string(),
                x["host"].as_str().unwrap().to_string(),
            ));
        }
        next = body["next"].as_str().map(String::from);
        assert_eq!(next.is_some(), body["truncated"] == true, "{body}");
        assert_eq!(link, next.as_ref().map(|n| format!("<{n}>; rel=\"next\"")));
    }
    let mut ordered = seen.clone();
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ordered.dedup();
    assert_eq!(seen, ordered, "newest first, each once");
    assert_eq!(seen.len(), want);
    let (code, body) = get(&app, &cookie, "?after=xyz").await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("`after`"),
        "{body}"
    );
    sqlx::query(
        "DELETE FROM anomaly_scores WHERE host_id = (SELECT id FROM hosts WHERE name = 'gpu-new')",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let r = app
        .http
        .get(format!("{}/api/v1/anomalies?host=gpu-new", app.base))
        .basic_auth("ops", Some("correct horse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scores"], json!([]));
    assert_eq!(body["models"][0]["status"], "insufficient_history");
    let note = body["models"][0]["note"].as_str().unwrap();
    assert!(note.contains("100 of the 1440 minutes"), "{note}");

    // The host page lists the anomalous minutes with what drove them, and the model.
    let (code, html) = app.page(&cookie, "/hosts/gpu-a?range=6h").await;
    assert_eq!(code, 200);
    let section = &html[html.find("<h2>Anomalies</h2>").expect("anomaly section")..];
    let section = &section[..section.find("<h2>Hardware events</h2>").unwrap()];
    assert!(
        section.contains("trained") && section.contains("10080 minutes of 16 metrics"),
        "{section}"
    );
    // One row per episode: anomalous minutes at most 5 apart, newest first, each with its
    // length (the fault's 27+ minutes are one row, not 27).
    let mut episodes: Vec<(i64, i64, usize)> = Vec::new();
    for x in s.iter().filter(|x| x.anomalous) {
        match episodes.last_mut() {
            Some((_, last, n)) if x.minute - *last <= 5 => {
                *last = x.minute;
                *n += 1;
            }
            _ => episodes.push((x.minute, x.minute, 1)),
        }
    }
    assert!(episodes.len() < 10, "{episodes:?}");
    let rows: Vec<&str> = section
        .split("<tr><td data-label=\"When\">")
        .skip(1)
        .collect();
    assert_eq!(rows.len(), episodes.len(), "{episodes:?}\n{section}");
    for (row, (first, last, n)) in rows.iter().zip(episodes.iter().rev()) {
        assert!(
            row.starts_with(&format!(
                "<time datetime=\"{}",
                t.at(*first).format("%Y-%m-%dT%H:%M")
            )),
            "{row}"
        );
        if last > first {
            assert!(
                row.contains(&format!(
                    " – <time datetime=\"{}",
                    t.at(*last).format("%Y-%m-%dT%H:%M")
                )),
                "{row}"
            );
        }
        let length = if *n == 1 {
            "1 anomalous minute".to_string()
        } else {
            format!("{n} anomalous minutes")
        };
        assert!(row.contains(&length), "{length}: {row}");
    }
    assert!(
        episodes
            .iter()
            .any(|(a, b, _)| *a <= FAULT.start + 3 && *b >= FAULT.end - 1),
        "the fault is one episode: {episodes:?}"
    );
    assert!(
        section.contains("gpu_temp_max_celsius") && section.contains("on GPU 2"),
        "{section}"
    );
    // The score is charted against its level, on the page and in the page's JSON.
    assert!(html.contains("Anomaly score") && html.contains("alert level"));
    let host = app.json(&cookie, "/api/v1/hosts/gpu-a?range=6h").await;
    let series = host["anomaly_series"].as_array().expect("anomaly_series");
    let max = |k: &str| {
        series
            .iter()
            .map(|p| p[k].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert!(series.len() > 100, "{} points", series.len());
    assert!(max("score") > 4.0 * max("level"), "the fault stands out");
    let (_, html) = app.page(&cookie, "/hosts/gpu-new").await;
    assert!(
        html.contains("No anomaly model yet: 100 of the 1440 minutes"),
        "{html}"
    );
    assert!(!html.contains("Anomaly score"), "no chart without scores");

    // Bad parameters: 400 with the parameter named; unknown host 404; no login 401.
    let reversed = format!("?from={}&to={}", rfc(t.at(10)), rfc(t.e));
    let too_long = format!("?from={}&to={}", rfc(t.e - Duration::days(40)), rfc(t.e));
    for (query, needle) in [
        ("?from=yesterday", "`from`"),
        ("?to=2026-13-01T00:00:00Z", "`to`"),
        (reversed.as_str(), "before"),
        (too_long.as_str(), "31 days"),
        ("?min_score=-1", "`min_score`"),
        ("?min_score=lots", "`min_score`"),
        ("?anomalous=maybe", "`anomalous`"),
        ("?limit=0", "`limit`"),
        ("?limit=many", "`limit`"),
    ] {
        let (code, body) = get(&app, &cookie, query).await;
        assert_eq!(code, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{query}: {msg}");
    }
    // A limit above the most is capped, as on the events and audit endpoints.
    let (code, body) = get(&app, &cookie, &format!("?{range}&limit=100000")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&app, &cookie, "?host=nope").await;
    assert_eq!(code, 404, "{body}");
    // A host taken out of the fleet leaves the list of models; asked for by name, its
    // model is still there.
    app.store.remove_host("gpu-new", "test").await.unwrap();
    let (_, body) = get(&app, &cookie, &format!("?{range}")).await;
    let hosts: Vec<&str> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["gpu-a"]);
    let (code, body) = get(&app, &cookie, &format!("?{range}&host=gpu-new")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["models"][0]["host"], "gpu-new");
    let r = app
        .http
        .get(format!("{}/api/v1/anomalies", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

const RULES: &str = r#"
[[rule]]
name = "host-anomaly"
kind = "anomaly"
for_secs = 600
severity = "warning"
summary = "Host behaves unusually"

[[route]]
to = ["ops@example.com"]
"#;

/// The alert state of the rule for gpu-a, if any.
async fn alert_state(app: &TestApp) -> Option<(String, String)> {
    sqlx::query_as("SELECT state, description FROM alerts WHERE rule = 'host-anomaly'")
        .fetch_optional(&app.store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn anomaly_rule_fires_on_a_sustained_fault_not_on_a_glitch_and_mails_the_metrics() {
    let smtp = SmtpServer::start().await;
    let port = smtp.port;
    let app = TestApp::spawn_with(|c| {
        c.alerting.group_wait_secs = 0;
        c.alerting.group_interval_secs = 0;
        c.alerting.smtp.host = "127.0.0.1".into();
        c.alerting.smtp.port = port;
        c.alerting.smtp.security = "plain".into();
    })
    .await;
    let end = data_end();
    let t = seed(&app, "gpu-a", 7 * 1440 + AFTER, true, end).await;
    train_and_score(&app, &t).await;
    let rules = RuleSet::parse(RULES).unwrap();
    let mut sender = rackwatch::alert::notify::Sender::new(&app.cfg, Default::default());
    // Evaluate as the evaluator would have, half a minute after each scored minute, one
    // that has been watching since long before.
    let watching = t.at(0) - Duration::days(1);
    let mut states = Vec::new();
    let mut fired_mail = Vec::new();
    for minute in 0..AFTER {
        let now = t.at(minute) + Duration::seconds(30);
        rackwatch::alert::eval::evaluate(&app.store, &rules, &app.cfg, now, watching, true)
            .await
            .unwrap();
        let state = alert_state(&app).await;
        if state.as_ref().map(|s| s.0.as_str()) == Some("firing") && fired_mail.is_empty() {
            assert_eq!(sender.send_due(&app.store, Utc::now()).await.unwrap(), 1);
            fired_mail = smtp.wait_for(1, 10).await;
        }
        states.push((minute, state));
    }
    let state_at = |m: i64| states[m as usize].1.as_ref().map(|s| s.0.clone());
    // The glitch raised the score above the level for a few minutes: pending, never firing.
    assert!(
        (SPIKE_AT..FAULT.start).any(|m| state_at(m).as_deref() == Some("pending")),
        "{states:?}"
    );
    assert!(
        (0..FAULT.start + 9).all(|m| state_at(m).as_deref() != Some("firing")),
        "{states:?}"
    );
    // Ten minutes into the fault it fires, and stays firing while the score is high.
    let first_firing = states
        .iter()
        .find(|(_, s)| s.as_ref().map(|s| s.0.as_str()) == Some("firing"))
        .map(|(m, _)| *m)
        .expect("the fault fires");
    assert!(
        (FAULT.start + 9..=FAULT.start + 11).contains(&first_firing),
        "fired at minute {first_firing}: {states:?}"
    );
    assert!((first_firing..FAULT.end).all(|m| state_at(m).as_deref() == Some("firing")));
    // It resolves once the score has fallen well below the level (hysteresis), and stays so.
    let resolved = (FAULT.end..AFTER)
        .find(|&m| state_at(m).as_deref() == Some("resolved"))
        .expect("resolves after the fault");
    assert!(resolved < FAULT.end + 30, "resolved at {resolved}");
    assert!((resolved..AFTER).all(|m| state_at(m).as_deref() == Some("resolved")));
    let incidents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM incidents WHERE rule = 'host-anomaly'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(incidents, 1, "one incident for one fault");
    // The firing mail says what looked wrong and where.
    assert_eq!(fired_mail.len(), 1);
    let m = &fired_mail[0];
    assert!(
        subject(m).contains("Host behaves unusually"),
        "{}",
        subject(m)
    );
    assert!(m.contains("fra1 / r12 / gpu-a"), "{m}");
    assert!(m.contains("anomaly score"), "{m}");
    assert!(m.contains("gpu_temp_max_celsius"), "{m}");
    assert!(m.contains("gpu_power_max_watts"), "{m}");
    assert!(m.contains(&format!("on GPU {BAD_GPU}")), "{m}");
    assert!(m.contains("for 10 min"), "{m}");
    // And the resolved mail follows.
    assert_eq!(sender.send_due(&app.store, Utc::now()).await.unwrap(), 1);
    let mails = smtp.wait_for(2, 10).await;
    assert!(
        subject(&mails[1]).starts_with("[RESOLVED"),
        "{}",
        subject(&mails[1])
    );
    app.stop().await;
}

/// Every stored score of every host, in host and time order, and every model's level.
#[cfg(feature = "gpu")]
async fn fleet_results(
    app: &TestApp,
) -> (
    Vec<(i64, DateTime<Utc>, f32, f32, bool, Value)>,
    Vec<(i64, String, Option<f64>)>,
) {
    let scores = sqlx::query_as(
        "SELECT host_id, ts, score, threshold, is_anomalous, top FROM anomaly_scores ORDER BY host_id, ts",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    let models =
        sqlx::query_as("SELECT host_id, status, threshold FROM anomaly_models ORDER BY host_id")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    (scores, models)
}

/// The product's job on the GPU backend trains and scores a fleet like the CPU backend. Here
/// the GPU is lavapipe (Mesa's software Vulkan device: the same WGSL kernels a real GPU
/// runs, executed on the CPU); the job trains every host in one device batch and scores
/// each run of minutes in one submit with the models resident. Agreement, as stated in
/// docs/gpu.md: scores and alert levels within 1e-3 relative (f32 on the device against the
/// CPU's f64 statistics; measured differences are ~1e-5), the same alert decision wherever
/// the score is not within that tolerance of its level, and the same explanations (each
/// metric's share within 0.005; a metric may trade places only with one of a share within
/// 0.01 of it, a tie at the cut).
#[cfg(feature = "gpu")]
#[tokio::test]
async fn anomaly_job_on_a_gpu_scores_a_fleet_like_the_cpu() {
    use rackwatch_anomaly::{BackendChoice, SelectOptions, SelectedBackend};
    use std::collections::HashMap;

    let app = TestApp::spawn().await;
    let end = data_end();
    let t = seed(&app, "fleet-a", 7 * 1440 + AFTER, true, end).await;
    seed(&app, "fleet-b", 3 * 1440 + AFTER, false, end).await;
    seed(&app, "fleet-c", 2 * 1440 + AFTER, true, end).await;
    seed(&app, "fleet-new", 100, false, end).await;
    let settle = Duration::minutes(rackwatch::analytics::anomaly::SETTLE_MINUTES);
    let run = |mut job: AnomalyJob| {
        let app = &app;
        let t = &t;
        async move {
            let a = job
                .run(&app.store, &app.cfg.anomaly, t.e + settle)
                .await
                .unwrap();
            let b = job
                .run(&app.store, &app.cfg.anomaly, t.at(AFTER) + settle)
                .await
                .unwrap();
            (a, b)
        }
    };
    let on_cpu = run(AnomalyJob::default()).await;
    let cpu = fleet_results(&app).await;
    for table in ["anomaly_scores", "anomaly_models"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&app.store.pool)
            .await
            .unwrap();
    }
    // Every scoring call on the device, however small (the product leaves one-minute runs
    // to the CPU, where they are faster).
    let backend = std::sync::Arc::new(
        SelectedBackend::select(
            BackendChoice::Gpu,
            &SelectOptions {
                allow_software_adapter: true,
                min_gpu_score_work: Some(0),
                ..SelectOptions::default()
            },
        )
        .expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)"),
    );
    eprintln!(
        "backend: {}",
        rackwatch_anomaly::Backend::info(backend.as_ref())
    );
    let on_gpu = run(AnomalyJob::new(backend.clone())).await;
    let gpu = fleet_results(&app).await;
    assert_eq!(on_cpu, on_gpu, "the same hosts trained, skipped and scored");
    assert_eq!((on_gpu.0.trained, on_gpu.0.skipped), (3, 1), "{on_gpu:?}");
    assert_eq!(backend.cpu_fallback_hosts(), 0, "nothing left to the CPU");
    assert_eq!(backend.cpu_scoring_calls(), 0);
    let stats = backend.gpu().expect("a GPU backend").stats();
    assert!(stats.calls >= 2 && stats.model_uploads >= 3, "{stats:?}");

    let close = |c: f64, g: f64| (c - g).abs() <= 1e-3 * c.abs().max(0.1);
    assert_eq!(cpu.1.len(), gpu.1.len());
    for (c, g) in cpu.1.iter().zip(&gpu.1) {
        assert_eq!((c.0, &c.1), (g.0, &g.1));
        match (c.2, g.2) {
            (Some(c2), Some(g2)) => assert!(close(c2, g2), "host {} level cpu {c2} gpu {g2}", c.0),
            (c2, g2) => assert_eq!(c2, g2),
        }
    }
    let (cpu, gpu) = (cpu.0, gpu.0);
    assert_eq!(cpu.len(), gpu.len());
    assert!(
        cpu.len() >= 3 * AFTER as usize - 3,
        "{} minutes scored",
        cpu.len()
    );
    let mut alerts = 0;
    for (c, g) in cpu.iter().zip(&gpu) {
        let at = format!("host {} at {}", c.0, c.1);
        assert_eq!((c.0, c.1), (g.0, g.1));
        let (cs, gs, ct, gt) = (c.2 as f64, g.2 as f64, c.3 as f64, g.3 as f64);
        assert!(close(cs, gs), "{at}: score cpu {cs} gpu {gs}");
        assert!(close(ct, gt), "{at}: level cpu {ct} gpu {gt}");
        if !close(cs, ct) {
            assert_eq!(c.4, g.4, "{at}: alert, score {cs} level {ct}");
        }
        alerts += usize::from(c.4);
        let shares = |top: &Value| -> HashMap<String, (f64, f64, f64)> {
            top.as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let f = |k: &str| e[k].as_f64().unwrap();
                    (
                        e["metric"].as_str().unwrap().to_string(),
                        (f("share"), f("value"), f("typical")),
                    )
                })
                .collect()
        };
        let (ct_, gt_) = (shares(&c.5), shares(&g.5));
        assert_eq!(ct_.len(), gt_.len(), "{at}");
        let cut = gt_.values().map(|v| v.0).fold(f64::INFINITY, f64::min);
        for (m, (share, value, typical)) in &ct_ {
            match gt_.get(m) {
                Some((gs, gv, gty)) => {
                    assert!(
                        (share - gs).abs() <= 0.005,
                        "{at}: {m} share cpu {share} gpu {gs}"
                    );
                    assert!(close(*value, *gv) && close(*typical, *gty), "{at}: {m}");
                }
                None => assert!(
                    (share - cut).abs() <= 0.01,
                    "{at}: {m} ({share}) not in the GPU's explanation {:?}",
                    g.5
                ),
            }
        }
    }
    assert!(alerts > 0, "the faults alert on both");
}

/// `/metrics` and the admin page say which backend the detector runs on: the CPU here, with
/// `anomaly.backend = "auto"` and no hardware GPU (a software adapter is not taken unless
/// `anomaly.software_adapter` says so).
#[tokio::test]
async fn metrics_and_the_admin_page_name_the_detectors_backend() {
    let db = crate::support::fresh_database().await;
    let app = TestApp::spawn_full(db, |_| {}).await;
    assert_eq!(
        app.cfg.anomaly.backend,
        rackwatch_anomaly::BackendChoice::Auto
    );
    let metrics = app.metrics().await;
    let info = metrics
        .lines()
        .find(|l| l.starts_with("rackwatch_anomaly_backend_info{"))
        .unwrap_or_else(|| panic!("no backend info:\n{metrics}"));
    assert!(
        info.starts_with(
            "rackwatch_anomaly_backend_info{backend=\"cpu\",adapter=\"cpu\",device_type=\""
        ) && info.ends_with("} 1"),
        "{info}"
    );
    assert!(
        metrics.contains("\nrackwatch_anomaly_cpu_fallback_hosts_total 0\n"),
        "{metrics}"
    );
    let cookie = app.login("admin", "pw-for-backend").await;
    let (status, html) = app.page(&cookie, "/admin").await;
    assert_eq!(status, 200);
    let at = html.find("id=\"anomaly-backend\"").expect("backend line");
    let line = &html[at..at + html[at..].find("</p>").unwrap()];
    assert!(line.contains("<strong>cpu ("), "{line}");
    // Why auto runs on the CPU.
    assert!(
        line.contains("anomaly backend auto: using the CPU"),
        "{line}"
    );
    app.stop().await;
}

/// Scored minutes of the timeline, in order.
async fn scored_minutes(app: &TestApp, t: &Timeline) -> Vec<i64> {
    scores(app, t).await.iter().map(|s| s.minute).collect()
}

/// Minutes are scored only once rolled up, a host's minutes delivered late are scored when
/// they come, and a retraining that fails keeps the model that works.
#[tokio::test]
async fn scoring_waits_for_rollups_and_late_minutes_and_a_failed_retrain_keeps_the_model() {
    let app = TestApp::spawn().await;
    let end = data_end();
    let t = seed(&app, "gpu-late", 7 * 1440 + AFTER, false, end).await;
    let mut job = AnomalyJob::default();
    let settle = Duration::minutes(rackwatch::analytics::anomaly::SETTLE_MINUTES);
    let cfg = &app.cfg.anomaly;
    job.run(&app.store, cfg, t.e + settle).await.unwrap();

    // The rollups have reached minute 30 only (their job failed since): scoring stops there.
    app.set_rollup_watermark(t.at(30)).await;
    job.run(&app.store, cfg, t.at(AFTER) + settle)
        .await
        .unwrap();
    assert_eq!(scored_minutes(&app, &t).await, (0..30).collect::<Vec<_>>());

    // The rollups catch up, but the host's last 50 minutes are still in its agent's spool
    // (kept aside in temporary tables of one connection).
    let held = ["host_samples_1m", "gpu_samples_1m"];
    let mut conn = app.store.pool.acquire().await.unwrap();
    for table in held {
        for sql in [
            format!("CREATE TEMP TABLE late_{table} AS SELECT * FROM {table} WHERE host_id = $1 AND bucket >= $2"),
            format!("DELETE FROM {table} WHERE host_id = $1 AND bucket >= $2"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(t.host_id)
                .bind(t.at(100))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    app.set_rollup_watermark(Utc::now()).await;
    job.run(&app.store, cfg, t.at(AFTER) + settle)
        .await
        .unwrap();
    assert_eq!(scored_minutes(&app, &t).await, (0..100).collect::<Vec<_>>());
    // They arrive (30 minutes late): scored, in order, each once.
    for table in held {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} SELECT * FROM late_{table}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    drop(conn);
    job.run(&app.store, cfg, t.at(AFTER) + settle)
        .await
        .unwrap();
    assert_eq!(
        scored_minutes(&app, &t).await,
        (0..AFTER).collect::<Vec<_>>()
    );

    // Retraining is due, and the week before has been pruned: it fails, the model stays
    // and keeps scoring, and it is not retried within the hour.
    sqlx::query(
        "UPDATE anomaly_models SET trained_at = trained_at - make_interval(hours => $2) WHERE host_id = $1",
    )
    .bind(t.host_id)
    .bind(cfg.retrain_hours as i32)
    .execute(&app.store.pool)
    .await
    .unwrap();
    for table in ["host_samples_1m", "gpu_samples_1m"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE host_id = $1 AND bucket < $2"
        )))
        .bind(t.host_id)
        .bind(t.at(0))
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    let later = end + Duration::minutes(10);
    for sql in [HOST_ROLLUPS, GPU_ROLLUPS] {
        sqlx::query(sql)
            .bind(t.host_id)
            .bind(end)
            .bind(later)
            .execute(&app.store.pool)
            .await
            .unwrap();
    }
    app.set_rollup_watermark(later + settle).await;
    let run = job.run(&app.store, cfg, later + settle).await.unwrap();
    assert_eq!(run.trained, 0);
    let (status, note, retried): (String, String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, note, retried_at FROM anomaly_models WHERE host_id = $1")
            .bind(t.host_id)
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(status, "trained");
    assert!(note.starts_with("retraining failed at "), "{note}");
    assert!(note.contains("is kept and retried hourly"), "{note}");
    assert!(retried.is_some());
    assert_eq!(
        scored_minutes(&app, &t).await,
        (0..AFTER + 10).collect::<Vec<_>>(),
        "the kept model scores the new minutes"
    );
    let again = job
        .run(&app.store, cfg, later + settle + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(again.skipped, 0, "not retried within the hour");

    // Taken out of the fleet: no longer scored, and the fleet-wide list leaves it out
    // (asked by name, its scores are still there).
    app.store.remove_host("gpu-late", "test").await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM anomaly_scores WHERE host_id = $1")
            .bind(t.host_id)
            .fetch_one(&app.store.pool)
            .await
            .unwrap()
    };
    let before = count().await;
    for sql in [HOST_ROLLUPS, GPU_ROLLUPS] {
        sqlx::query(sql)
            .bind(t.host_id)
            .bind(later)
            .bind(later + Duration::minutes(10))
            .execute(&app.store.pool)
            .await
            .unwrap();
    }
    app.set_rollup_watermark(later + Duration::minutes(12))
        .await;
    job.run(&app.store, cfg, later + Duration::minutes(12))
        .await
        .unwrap();
    assert_eq!(count().await, before);
    let cookie = app.login("vic", "vic-pass-1").await;
    let range = format!("?from={}&to={}", rfc(t.at(0)), rfc(later));
    let (status, all) = get(&app, &cookie, &range).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["scores"].as_array().map(Vec::len), Some(0), "{all}");
    let (_, one) = get(&app, &cookie, &format!("{range}&host=gpu-late")).await;
    assert!(!one["scores"].as_array().unwrap().is_empty(), "{one}");
    app.stop().await;
}
