//! The hourly forecast job on rollups, and GET /api/v1/forecasts.

use chrono::{Duration, DurationRound, Timelike, Utc};
use serde_json::json;

use crate::support::{recent, TestApp};

/// A host of `pool` that has reported once (through ingest); its id.
async fn host_in_pool(app: &TestApp, name: &str, pool: &str) -> i64 {
    let token = app.token(name).await;
    let body = json!({"host": {"name": name, "pool": pool}, "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 1.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
        .bind(name)
        .fetch_one(&app.store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn hourly_job_forecasts_pools_and_hosts_from_rollups() {
    let app = TestApp::spawn().await;
    let host_id = host_in_pool(&app, "f1", "train").await;
    let now = Utc::now();
    let end = now.duration_trunc(Duration::hours(1)).unwrap();
    // Rollups are kept longer than raw samples: make their partitions for three weeks.
    app.store.ensure_partitions(now, 22, 3).await.unwrap();
    // Three weeks of a daily cycle on two GPUs (util 50 ± 40 %, power 300 ± 200 W) with a
    // small irregular wobble, so that "same hour yesterday" is not a perfect forecast.
    sqlx::query(
        "INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, power_watts)
         SELECT $1, g, b, 12, 50 + 40 * sin(2 * pi() * extract(hour FROM b) / 24) + 2 * sin(extract(epoch FROM b) / 7919),
                300 + 200 * sin(2 * pi() * extract(hour FROM b) / 24) + 10 * sin(extract(epoch FROM b) / 7919)
           FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b,
                generate_series(0, 1) g",
    )
    .bind(host_id)
    .bind(end - Duration::days(21))
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    // Disk usage filling steadily by 1 GB per hour from 10 TB.
    sqlx::query(
        "INSERT INTO host_samples_1m (host_id, bucket, samples, disk_used_bytes, disk_total_bytes)
         SELECT $1, b, 12, (1e13 + extract(epoch FROM b - $2::timestamptz) / 3600 * 1e9)::bigint, 30000000000000
           FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b",
    )
    .bind(host_id)
    .bind(end - Duration::days(21))
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    // The job reads the quarter-hours the rollup job makes from those minutes.
    app.store
        .rollup_quarters(end - Duration::days(21), end, None)
        .await
        .unwrap();
    let run = rackwatch::analytics::forecast::run(&app.store, now)
        .await
        .unwrap();
    assert_eq!(
        run.written, 6,
        "host and pool × utilization, power and disk"
    );

    let cookie = app.login("planner", "planner-pass").await;
    let r = app
        .http
        .get(format!(
            "{}/api/v1/forecasts?scope=pool&key=train&metric=gpu_power_watts",
            app.base
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let f = &v[0];
    assert_eq!(f["history_hours"], 504);
    let point: Vec<f64> = serde_json::from_value(f["point"].clone()).unwrap();
    let lo95: Vec<f64> = serde_json::from_value(f["lo95"].clone()).unwrap();
    let hi95: Vec<f64> = serde_json::from_value(f["hi95"].clone()).unwrap();
    let lo80: Vec<f64> = serde_json::from_value(f["lo80"].clone()).unwrap();
    let hi80: Vec<f64> = serde_json::from_value(f["hi80"].clone()).unwrap();
    assert_eq!(point.len(), 168);
    assert!(!f["model"].as_str().unwrap().is_empty());
    assert!(f["backtest_mase"].as_f64().is_some());
    for i in 0..168 {
        assert!(
            lo95[i] <= lo80[i] + 1e-9
                && lo80[i] <= point[i] + 1e-9
                && point[i] <= hi80[i] + 1e-9
                && hi80[i] <= hi95[i] + 1e-9,
            "intervals nest at {i}"
        );
        // The pool's power is the sum of its two GPUs: 600 ± 400 W on the daily cycle.
        let hour = (end + Duration::hours(i as i64)).hour() as f64;
        let expected = 2.0 * (300.0 + 200.0 * (2.0 * std::f64::consts::PI * hour / 24.0).sin());
        assert!(
            (point[i] - expected).abs() < 40.0,
            "hour {i}: forecast {} W, expected {expected} W",
            point[i]
        );
    }
    let disk: serde_json::Value = app
        .http
        .get(format!(
            "{}/api/v1/forecasts?scope=host&key=f1&metric=disk_used_bytes",
            app.base
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d: Vec<f64> = serde_json::from_value(disk[0]["point"].clone()).unwrap();
    let last_seen = 1e13 + 21.0 * 24.0 * 1e9;
    // The engine (tuned for seasonal load) carries the last level forward rather than
    // the trend; its 95 % interval must still reach the continued trend a week out.
    let hi: Vec<f64> = serde_json::from_value(disk[0]["hi95"].clone()).unwrap();
    let expected = last_seen + 168e9;
    assert!(
        d[167] >= 0.99 * last_seen,
        "disk forecast {} vs last {last_seen}",
        d[167]
    );
    assert!(
        hi[167] >= expected,
        "95 % upper bound {} below the trend {expected}",
        hi[167]
    );
    let bad = app
        .http
        .get(format!("{}/api/v1/forecasts?metric=cpu", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // A key that names nothing is a 404; a host without forecasts yet an empty list.
    for (query, status, error) in [
        ("key=nope", 404, "no pool or host named \"nope\""),
        ("scope=host&key=train", 404, "no host named \"train\""),
        ("scope=pool&key=f1", 404, "no pool named \"f1\""),
        ("key=f1&metric=demand_gpus", 200, ""),
    ] {
        let r = app
            .http
            .get(format!("{}/api/v1/forecasts?{query}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 404 {
            assert_eq!(body["error"], error, "{query}");
        } else {
            assert_eq!(body, json!([]), "{query}");
        }
    }
    let all: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/forecasts", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 6);
    let doc = crate::openapi::document();
    crate::openapi::assert_matches(&doc, "get", "/api/v1/forecasts", 200, &all);

    // The host page draws the host's forecasts with their intervals; its JSON twin has them.
    let (status, html) = app.page(&cookie, "/hosts/f1").await;
    assert_eq!(status, 200);
    let section = html
        .split("<h2>Forecast</h2>")
        .nth(1)
        .unwrap()
        .split("<h2>")
        .next()
        .unwrap();
    for what in [
        "GPU utilization, next 7 days",
        "GPU power, next 7 days",
        "Disk used, next 7 days",
    ] {
        assert!(section.contains(what), "host page forecast lacks {what}");
    }
    assert!(section.contains("95 % interval"), "no interval band drawn");
    // Each says in words how it was made and how its method did on its backtest, without
    // the engine's model names.
    assert_eq!(
        section.matches(r#"<p class="small muted note">"#).count(),
        3
    );
    assert!(section.contains("erred"), "{section}");
    assert!(
        !section.contains("snaive") && !section.contains("h1-24"),
        "{section}"
    );
    let host: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/hosts/f1", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(host["forecasts"].as_array().unwrap().len(), 3);
    // A host taken out of the fleet is forecast no more, and its pool (it was the pool's
    // only host) neither: their forecasts go at the next run.
    app.store.remove_host("f1", "test").await.unwrap();
    let run = rackwatch::analytics::forecast::run(&app.store, now + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(run.written, 0);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM forecasts")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    app.stop().await;
}

#[tokio::test]
async fn gpus_without_power_readings_still_get_their_utilization_forecast() {
    let app = TestApp::spawn().await;
    let host_id = host_in_pool(&app, "np1", "nopower").await;
    let now = Utc::now();
    let end = now.duration_trunc(Duration::hours(1)).unwrap();
    app.store.ensure_partitions(now, 4, 3).await.unwrap();
    // Two days of two GPUs whose driver reports utilization but no power.
    sqlx::query(
        "INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct)
         SELECT $1, g, b, 12, 50 + 40 * sin(2 * pi() * extract(hour FROM b) / 24)
           FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b,
                generate_series(0, 1) g",
    )
    .bind(host_id)
    .bind(end - Duration::days(2))
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    // A second host of the pool, silent for the last 30 hours: no forecast of its own
    // (the week before would stand in for its silence).
    let quiet = host_in_pool(&app, "np2", "nopower").await;
    sqlx::query(
        "INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct)
         SELECT $1, 0, b, 12, 30
           FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b",
    )
    .bind(quiet)
    .bind(end - Duration::days(2))
    .bind(end - Duration::hours(30))
    .execute(&app.store.pool)
    .await
    .unwrap();
    app.store
        .rollup_quarters(end - Duration::days(2), end, None)
        .await
        .unwrap();
    let run = rackwatch::analytics::forecast::run(&app.store, now)
        .await
        .expect("a GPU without power readings does not stop the job");
    let stored: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT scope, key, metric, history_hours FROM forecasts ORDER BY 1, 2, 3")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![
            ("host".into(), "np1".into(), "gpu_util_pct".into(), 48),
            ("pool".into(), "nopower".into(), "gpu_util_pct".into(), 48),
        ],
        "utilization only: there is no power to forecast"
    );
    assert_eq!(run.written, 2);
    app.stop().await;
}

/// Per host and hour for the forecast job: (utilization GPUs, their sum, power GPUs, their
/// sum) at `hour`.
async fn hourly_sums(app: &TestApp, hour: chrono::DateTime<Utc>) -> (i32, f64, i32, f64) {
    sqlx::query_as(
        "SELECT util_gpus, util_sum, power_gpus, power_sum FROM forecast_hourly f
           JOIN hosts h ON h.id = f.host_id WHERE h.name = 'lt' AND f.hour = $1",
    )
    .bind(hour)
    .fetch_one(&app.store.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn hourly_sums_follow_the_rollups_late_minutes_and_older_history() {
    let app = TestApp::spawn().await;
    let token = app.token("lt").await;
    let now = Utc::now();
    app.store.ensure_partitions(now, 2, 1).await.unwrap();
    // An hour and a half of minutes: GPU 0 at 50 % and 300 W, GPU 1 at 70 % without power.
    let a = now.duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(2);
    let minutes: Vec<_> = (0..90).map(|m| a + Duration::minutes(m)).collect();
    let body = json!({"host": {"name": "lt", "pool": "late"},
        "gpu_samples": minutes.iter().flat_map(|t| [
            json!({"ts": t, "index": 0, "util_pct": 50.0, "power_watts": 300.0}),
            json!({"ts": t, "index": 1, "util_pct": 70.0})]).collect::<Vec<_>>()});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    app.store.run_rollups(now).await.unwrap();
    let b = a + Duration::hours(1);
    assert_eq!(hourly_sums(&app, a).await, (2, 120.0, 1, 300.0));
    assert_eq!(
        hourly_sums(&app, b).await,
        (2, 120.0, 1, 300.0),
        "half an hour"
    );
    // A spool replay brings a second sample of GPU 0 for a minute of the first hour: its
    // minute now averages 75 %, its quarter (14 × 50 + 75) / 15, its hour a quarter of that
    // plus three quarters of 50.
    let late = json!({"host": {"name": "lt"}, "gpu_samples": [
        {"ts": a + Duration::minutes(5) + Duration::seconds(30), "index": 0, "util_pct": 100.0, "power_watts": 300.0}]});
    assert_eq!(app.ingest(&token, &late).await.status(), 200);
    let run = app
        .store
        .run_rollups(now + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(run.dirty_buckets, 1);
    let want = ((14.0 * 50.0 + 75.0) / 15.0 + 3.0 * 50.0) / 4.0 + 70.0;
    let (_, util, _, power) = hourly_sums(&app, a).await;
    assert!((util - want).abs() < 1e-3, "{util} vs {want}");
    assert!((power - 300.0).abs() < 1e-3);
    // History rolled up before these sums were kept: the forecast job sums it at its run.
    sqlx::raw_sql("DELETE FROM forecast_hourly; DELETE FROM forecast_hours")
        .execute(&app.store.pool)
        .await
        .unwrap();
    rackwatch::analytics::forecast::run(&app.store, now)
        .await
        .unwrap();
    let (n, util, _, _) = hourly_sums(&app, a).await;
    assert_eq!(n, 2);
    assert!((util - want).abs() < 1e-3, "{util} vs {want}");
    let hours: i64 = sqlx::query_scalar("SELECT count(*) FROM forecast_hours")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(hours, 28 * 24, "every hour the job reads is summed once");
    app.stop().await;
}
