//! 1-minute rollups, late data, partitions and retention.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn rollups_average_each_minute_and_recompute_late_minutes() {
    let app = TestApp::spawn().await;
    let token = app.token("r").await;
    let now = Utc::now();
    let minute = (now - Duration::minutes(3))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    // 12 samples in one minute: util 0, 10, …, 110 → clamp-free values 0..=100 only.
    let ts: Vec<DateTime<Utc>> = (0..12).map(|i| minute + Duration::seconds(i * 5)).collect();
    let body = json!({"host": {"name": "r"},
        "host_samples": ts.iter().enumerate().map(|(i, t)| json!({"ts": t, "cpu_util_pct": (i * 5) as f64})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().enumerate().map(|(i, t)| json!({"ts": t, "index": 0, "util_pct": (i * 5) as f64,
            "power_watts": 100.0 + i as f64, "energy_joules_total": 1000.0 + i as f64 * 500.0})).collect::<Vec<_>>()});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let run = app.store.run_rollups(now).await.unwrap();
    assert!(run.host_rows >= 1 && run.gpu_rows >= 1, "{run:?}");
    let (n, avg, max): (i32, f32, f32) = sqlx::query_as(
        "SELECT samples, cpu_util_pct, cpu_util_pct_max FROM host_samples_1m WHERE bucket = $1",
    )
    .bind(minute)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!((n, avg, max), (12, 27.5, 55.0));
    let (pavg, pmax, energy): (f32, f32, f64) = sqlx::query_as("SELECT power_watts, power_watts_max, energy_joules_total FROM gpu_samples_1m WHERE bucket = $1")
        .bind(minute)
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(
        (pavg, pmax, energy),
        (105.5, 111.0, 6500.0),
        "energy counter = last value of the minute"
    );

    // A spool replay delivers an older minute after the job passed it.
    let old = (now - Duration::minutes(30))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    let late = json!({"host": {"name": "r"}, "host_samples": [{"ts": old, "cpu_util_pct": 10.0}, {"ts": old + Duration::seconds(30), "cpu_util_pct": 30.0}]});
    assert_eq!(app.ingest(&token, &late).await.status(), 200);
    let dirty: i64 = sqlx::query_scalar("SELECT count(*) FROM rollup_dirty")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(dirty, 1);
    let run = app
        .store
        .run_rollups(now + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(run.dirty_buckets, 1);
    let avg: f32 = sqlx::query_scalar("SELECT cpu_util_pct FROM host_samples_1m WHERE bucket = $1")
        .bind(old)
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(avg, 20.0);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rollup_dirty")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "a redone minute's mark is gone");

    // A run that died mid-way left its claim: taken again once it is 15 minutes old, not
    // while another run may still hold it; and marked again while claimed (more late
    // samples), a mark is no longer the claimer's to delete.
    let other = (now - Duration::minutes(40))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    let host: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'r'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rollup_dirty (host_id, bucket, claimed_at)
         VALUES ($1, $2, now() - interval '20 minutes'), ($1, $3, now())",
    )
    .bind(host)
    .bind(old)
    .bind(other)
    .execute(&app.store.pool)
    .await
    .unwrap();
    let run = app
        .store
        .run_rollups(now + Duration::seconds(120))
        .await
        .unwrap();
    assert_eq!(run.dirty_buckets, 1, "only the stale claim");
    let again =
        json!({"host": {"name": "r"}, "host_samples": [{"ts": other, "cpu_util_pct": 50.0}]});
    assert_eq!(app.ingest(&token, &again).await.status(), 200);
    let claimed: Vec<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT claimed_at FROM rollup_dirty")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(claimed, vec![None], "marked again: unclaimed");
    app.stop().await;
}

#[tokio::test]
async fn partitions_are_made_ahead_and_dropped_past_retention() {
    let app = TestApp::spawn().await;
    let now: DateTime<Utc> = Utc::now();
    let parts = |app: &TestApp| {
        let pool = app.store.pool.clone();
        async move {
            let v: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'host_samples' ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            v
        }
    };
    let before = parts(&app).await;
    let ahead = format!(
        "host_samples_{}",
        (now + Duration::days(3)).format("%Y%m%d")
    );
    assert!(before.contains(&ahead), "{before:?}");
    // Ten days later: partitions older than raw_days (7) go, rollups (90 days) stay.
    let later = now + Duration::days(10);
    app.store.ensure_partitions(later, 7, 3).await.unwrap();
    // The rollups stalled today: today's raw samples stay, past raw_days as they are,
    // until their minutes are rolled up.
    app.set_rollup_watermark(now).await;
    app.store
        .drop_expired_partitions(later, 7, 90, 30)
        .await
        .unwrap();
    let today = format!("host_samples_{}", now.format("%Y%m%d"));
    assert!(parts(&app).await.contains(&today), "{today} dropped");
    app.set_rollup_watermark(later).await;
    // While a long reader holds the table (a backup's dump), the drop waits 5 s at most
    // and leaves it for the next run, instead of queueing every insert behind it.
    let mut reader = app.store.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE host_samples IN ACCESS SHARE MODE")
        .execute(&mut *reader)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let held = app
        .store
        .drop_expired_partitions(later, 7, 90, 30)
        .await
        .unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );
    assert!(
        held.iter().all(|p| !p.starts_with("host_samples_")),
        "{held:?}"
    );
    reader.rollback().await.unwrap();
    let dropped = app
        .store
        .drop_expired_partitions(later, 7, 90, 30)
        .await
        .unwrap();
    let oldest_kept = (later - Duration::days(7)).date_naive();
    assert!(dropped.contains(&today), "{dropped:?}");
    assert!(dropped.iter().all(|p| !p.contains("_1m_")), "{dropped:?}");
    let after = parts(&app).await;
    assert!(
        after.iter().all(
            |p| p.as_str() >= format!("host_samples_{}", oldest_kept.format("%Y%m%d")).as_str()
        ),
        "{after:?}"
    );
    assert!(after.contains(&format!(
        "host_samples_{}",
        (later + Duration::days(3)).format("%Y%m%d")
    )));
    app.stop().await;
}

#[tokio::test]
async fn charts_over_rollups_reach_now_through_the_raw_tail() {
    use rackwatch::store::series::Source;
    let app = TestApp::spawn().await;
    let token = app.token("t").await;
    let base = (Utc::now() - Duration::minutes(11))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    // Ten minutes of 5 s samples: GPU 0 at 10 × the minute's number, GPU 1 at 50 %.
    let ts: Vec<DateTime<Utc>> = (0..120).map(|i| base + Duration::seconds(i * 5)).collect();
    let minute = |t: &DateTime<Utc>| ((*t - base).num_minutes()) as f64;
    let body = json!({"host": {"name": "t"},
        "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": minute(t)})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().flat_map(|t| [json!({"ts": t, "index": 0, "util_pct": minute(t) * 10.0}),
                                              json!({"ts": t, "index": 1, "util_pct": 50.0})]).collect::<Vec<_>>()});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    // The rollup job last ran six minutes in: minutes 0–5 are rolled up, 6–9 are not.
    let watermark = base + Duration::minutes(6);
    app.store.run_rollups(watermark).await.unwrap();
    // Mark the rolled-up minutes so the test sees which source each point came from.
    sqlx::query("UPDATE gpu_samples_1m SET util_pct = util_pct + 1000")
        .execute(&app.store.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE host_samples_1m SET cpu_util_pct = cpu_util_pct + 1000")
        .execute(&app.store.pool)
        .await
        .unwrap();
    let to = base + Duration::minutes(10);
    let gpus = app
        .store
        .gpu_series("t", None, base, to, 60, Source::Rollup1m)
        .await
        .unwrap();
    assert_eq!(gpus.len(), 20, "ten minutes of two GPUs: {gpus:?}");
    for p in &gpus {
        let m = (p.ts - base).num_minutes();
        let raw = if p.index == 0 { m as f64 * 10.0 } else { 50.0 };
        let want = if m < 6 { raw + 1000.0 } else { raw };
        assert_eq!(p.util_pct, Some(want), "GPU {} minute {m}", p.index);
    }
    let one = app
        .store
        .gpu_series("t", Some(1), base, to, 120, Source::Rollup1m)
        .await
        .unwrap();
    assert_eq!(one.len(), 5);
    assert!(one.iter().all(|p| p.index == 1));
    let hosts = app
        .store
        .host_series(&["t".to_string()], base, to, 60, Source::Rollup1m)
        .await
        .unwrap();
    let cpu: Vec<f64> = hosts.iter().map(|p| p.cpu_util_pct.unwrap()).collect();
    assert_eq!(
        cpu,
        [1000.0, 1001.0, 1002.0, 1003.0, 1004.0, 1005.0, 6.0, 7.0, 8.0, 9.0]
    );
    app.stop().await;
}

#[tokio::test]
async fn quarter_hour_rollups_follow_the_minutes_and_feed_long_charts() {
    use rackwatch::store::rollup::quarter;
    use rackwatch::store::series::Source;
    let app = TestApp::spawn().await;
    let token = app.token("q").await;
    let base = quarter(Utc::now() - Duration::minutes(50));
    // 45 minutes of 5 s samples: GPU 0 (and the host's CPU) at 1 %, 11 %, 21 % in the
    // three quarter-hours.
    let ts: Vec<DateTime<Utc>> = (0..540).map(|i| base + Duration::seconds(i * 5)).collect();
    let level = |t: &DateTime<Utc>| ((*t - base).num_minutes() / 15) as f64 * 10.0 + 1.0;
    let body = json!({"host": {"name": "q"},
        "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": level(t)})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().map(|t| json!({"ts": t, "index": 0, "util_pct": level(t)})).collect::<Vec<_>>()});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    // The job last ran 40 minutes in: quarter-hours 0 and 1 are complete.
    let run = app
        .store
        .run_rollups(base + Duration::minutes(40))
        .await
        .unwrap();
    assert!(run.quarter_rows >= 4, "{run:?}");
    let quarters: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT bucket FROM gpu_samples_15m ORDER BY 1")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(
        quarters,
        [base, base + Duration::minutes(15)],
        "the third is not complete"
    );
    let q0 = || async {
        let r: (i32, f32, f32) = sqlx::query_as(
            "SELECT samples, util_pct, util_pct_max FROM gpu_samples_15m WHERE bucket = $1",
        )
        .bind(base)
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
        r
    };
    assert_eq!(q0().await, (180, 1.0, 1.0));
    // A late sample in minute 3: that minute and its quarter-hour are recomputed.
    let late = json!({"host": {"name": "q"},
        "gpu_samples": [{"ts": base + Duration::seconds(182), "index": 0, "util_pct": 97.0}]});
    assert_eq!(app.ingest(&token, &late).await.status(), 200);
    let run = app
        .store
        .run_rollups(base + Duration::minutes(41))
        .await
        .unwrap();
    assert_eq!(run.dirty_buckets, 1);
    let (n, mean, max) = q0().await;
    assert_eq!((n, max), (181, 97.0));
    assert!((mean - (14.0 + 109.0 / 13.0) / 15.0).abs() < 1e-4, "{mean}");

    // A long chart: quarter-hours from the 15-minute rows, then minutes from the
    // 1-minute rows up to the watermark (41 min), then raw samples. Marked so the test
    // sees which source each value came from.
    for sql in [
        "UPDATE gpu_samples_15m SET util_pct = util_pct + 1000",
        "UPDATE gpu_samples_1m SET util_pct = util_pct + 100",
        "UPDATE host_samples_15m SET cpu_util_pct = cpu_util_pct + 1000",
        "UPDATE host_samples_1m SET cpu_util_pct = cpu_util_pct + 100",
    ] {
        sqlx::query(sql).execute(&app.store.pool).await.unwrap();
    }
    let to = base + Duration::minutes(45);
    let g = app
        .store
        .gpu_series("q", Some(0), base, to, 900, Source::Rollup15m)
        .await
        .unwrap();
    let got: Vec<(i64, f64)> = g
        .iter()
        .map(|p| ((p.ts - base).num_minutes(), p.util_pct.unwrap()))
        .collect();
    // Third quarter: 11 minutes of rollups (121 %) and 4 minutes of raw samples (21 %).
    let third = (11.0 * 121.0 + 4.0 * 21.0) / 15.0;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, got[1].0, got[2].0), (0, 15, 30));
    assert!(
        (got[0].1 - (1000.0 + f64::from(mean))).abs() < 1e-3,
        "{got:?}"
    );
    assert!((got[1].1 - 1011.0).abs() < 1e-9, "{got:?}");
    assert!((got[2].1 - third).abs() < 1e-9, "{got:?}");
    let h = app
        .store
        .host_series(&["q".to_string()], base, to, 900, Source::Rollup15m)
        .await
        .unwrap();
    let cpu: Vec<f64> = h.iter().map(|p| p.cpu_util_pct.unwrap()).collect();
    assert_eq!(cpu.len(), 3);
    assert!((cpu[0] - 1001.0).abs() < 1e-9 && (cpu[1] - 1011.0).abs() < 1e-9);
    assert!((cpu[2] - third).abs() < 1e-9, "{cpu:?}");
    app.stop().await;
}

/// `rackwatch demo`'s first start: days of simulated history written and rolled up range
/// by range, so the analytics have data at once; a restart does not write it again.
#[tokio::test]
async fn demo_history_is_rolled_up_and_feeds_the_analytics_at_once() {
    use rackwatch::analytics::anomaly::AnomalyJob;
    use rackwatch::collect::simulator::SimulatedHost;

    let app = TestApp::spawn_with(|c| {
        c.simulator.hosts = 2;
        c.simulator.gpus_per_host = 2;
        c.simulator.history_days = 2;
    })
    .await;
    let cfg = app.cfg.clone();
    let now = Utc::now();
    let mut fleet = SimulatedHost::fleet(2, 2);
    let filled = rackwatch::app::backfill_history(&cfg, &app.store, &mut fleet, now)
        .await
        .unwrap();
    let from = (now - Duration::days(2))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let to = (now - Duration::minutes(60))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    let minutes = (to - from).num_minutes() as u64;
    // Per host and minute: one host sample and two GPU samples.
    assert_eq!(filled.samples, 2 * minutes * 3);
    assert_eq!(filled.rollup_rows, 2 * minutes * 3);
    let count = |sql: &'static str| {
        let pool = app.store.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM gpu_samples_1m").await as u64,
        4 * minutes
    );
    assert_eq!(
        count("SELECT count(*) FROM host_samples_1m").await as u64,
        2 * minutes
    );
    assert!(count("SELECT count(*) FROM gpu_samples_15m").await > 0);
    assert_eq!(
        count("SELECT count(*) FROM rollup_dirty").await,
        0,
        "no minute is left for the rollup job to redo one by one"
    );
    assert!(count("SELECT count(*) FROM energy_dirty").await >= 2 * 47);
    // Old simulated XIDs are not replayed into alerting.
    assert_eq!(count("SELECT count(*) FROM hardware_events").await, 0);

    // The analytics find enough history on their first run.
    let settle = Duration::minutes(rackwatch::analytics::anomaly::SETTLE_MINUTES);
    let run = AnomalyJob::default()
        .run(&app.store, &cfg.anomaly, to + settle)
        .await
        .unwrap();
    assert_eq!(run.trained, 2, "{run:?}");
    assert!(
        rackwatch::analytics::forecast::run(&app.store, now)
            .await
            .unwrap()
            .written
            > 0
    );
    // Hours whose samples arrived late are accounted once they settle, not before: an
    // accounting run 30 minutes before the history ends leaves its last hours alone.
    let early = to - Duration::minutes(30);
    let settled = rackwatch::analytics::energy::run(&app.store, &cfg.energy, early)
        .await
        .unwrap()
        .until
        .unwrap();
    let at_or_after = |table: &str| {
        let pool = app.store.pool.clone();
        let sql = format!("SELECT count(*) FROM {table} WHERE hour >= $1");
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .bind(settled)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(at_or_after("energy_hourly").await, 0, "unsettled hours");
    assert!(at_or_after("energy_dirty").await > 0, "they wait");
    rackwatch::analytics::energy::run(&app.store, &cfg.energy, now)
        .await
        .unwrap();
    assert!(
        at_or_after("energy_hourly").await > 0,
        "accounted once settled"
    );
    assert!(
        count("SELECT count(*) FROM energy_hourly WHERE measured_j > 0 AND hour < now() - interval '1 day'").await
            > 0
    );

    // A restarted demo finds the history and leaves it.
    let mut again = SimulatedHost::fleet(2, 2);
    let second = rackwatch::app::backfill_history(&cfg, &app.store, &mut again, Utc::now())
        .await
        .unwrap();
    assert_eq!(second, rackwatch::app::Backfill::default());
}

#[tokio::test]
async fn the_job_leader_reports_each_jobs_runs_on_metrics_and_the_admin_page() {
    let db = crate::support::fresh_database().await;
    let app = TestApp::spawn_full(db, |c| c.anomaly.enabled = false).await;
    // The leader runs every job at its first tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let m = app.metrics().await;
        if m.contains("rackwatch_job_last_success_timestamp_seconds{job_name=\"energy\"}") {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no job ran:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("rackwatch_job_leader 1"), "{metrics}");
    for job in ["maintenance", "rollups", "forecasts", "energy"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "rackwatch_job_last_success_timestamp_seconds{{job_name=\"{job}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{job} missing:\n{metrics}"));
        let t: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((Utc::now().timestamp() as f64 - t).abs() < 60.0, "{line}");
        assert!(
            metrics.contains(&format!(
                "rackwatch_job_duration_seconds{{job_name=\"{job}\"}}"
            )),
            "{job}"
        );
        assert!(
            metrics.contains(&format!(
                "rackwatch_job_runs_total{{job_name=\"{job}\",outcome=\"error\"}} 0"
            )),
            "{job}"
        );
    }
    // Turned off in the config: not registered, not run.
    assert!(!metrics.contains("job=\"anomaly\""), "{metrics}");
    let cookie = app.login("admin", "pw-for-jobs").await;
    let (status, html) = app.page(&cookie, "/admin").await;
    assert_eq!(status, 200);
    let jobs = &html[html.find("id=\"jobs\"").expect("jobs table")..];
    assert!(html.contains("holds the job lock"), "leader note");
    for job in ["maintenance", "rollups", "forecasts", "energy"] {
        assert!(jobs.contains(&format!("<td>{job}</td>")), "{job} row");
    }
    assert!(!jobs.contains("not yet</td>"), "every job ran");
    app.stop().await;
}

/// A job whose server loses the leader lock while it runs (the lock's connection cut:
/// a firewall's idle timeout, a terminated backend, a partition) is stopped within the
/// lock check, so it never runs on beside the next leader's.
#[tokio::test]
async fn a_job_stops_when_its_server_loses_the_leader_lock_while_it_runs() {
    use sqlx::Connection as _;
    let db = crate::support::fresh_database().await;
    // The maintenance job, first at the first tick, waits on this lock until released.
    let mut holder = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE rack_power_hourly IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let app = TestApp::spawn_full(db, |c| c.anomaly.enabled = false).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = app.metrics().await;
        if m.contains("rackwatch_job_leader 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND objsubid = 1
            AND (classid::bigint << 32 | objid::bigint) = $1
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(rackwatch::store::LEADER_LOCK)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(cut, 1, "the leader lock's connection");
    let stopped = "rackwatch_job_runs_total{job_name=\"maintenance\",outcome=\"error\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        let m = app.metrics().await;
        if m.contains(stopped) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job ran on:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let cookie = app.login("admin", "pw-for-jobs").await;
    let (_, html) = app.page(&cookie, "/admin").await;
    assert!(html.contains("lost the leader lock while it ran"), "{html}");
    app.stop().await;
}

/// The hourly maintenance job deletes history past `retention.events_days`,
/// `alert_history_days` and `energy_hourly_days`, and keeps what still matters at any age:
/// an open incident, a silence whose end is not yet in the audit trail.
#[tokio::test]
async fn history_past_retention_is_deleted_and_what_still_matters_is_kept() {
    let db = crate::support::fresh_database().await;
    let store = rackwatch::store::Store::connect(&db, 2, 10).await.unwrap();
    let p = &store.pool;
    let day = |d: i64| Utc::now() - Duration::days(d);
    let exec = |sql: &'static str, at: DateTime<Utc>, tag: &'static str| async move {
        sqlx::query(sql)
            .bind(at)
            .bind(tag)
            .execute(p)
            .await
            .unwrap();
    };
    // Events 30 and 500 days old (retention 400).
    let event =
        "INSERT INTO hardware_events (host_id, gpu_index, ts, kind, code, message, received_at)
                 VALUES (424242, 0, $1, 'xid', 79, $2, $1)";
    exec(event, day(500), "old").await;
    exec(event, day(30), "recent").await;
    let alert = "INSERT INTO alerts (fingerprint, rule, severity, labels, state, started_at,
                     fired_at, resolved_at, last_active_at)
                 VALUES ($2, 'gpu-xid', 'critical', '{}', 'resolved', $1, $1, $1, $1)";
    exec(alert, day(500), "old").await;
    exec(alert, day(30), "recent").await;
    let incident = "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at, resolved_at)
                    VALUES ($2, 'gpu-xid', 'critical', '{}', $2, $1, $1)";
    exec(incident, day(500), "old").await;
    exec(incident, day(30), "recent").await;
    sqlx::query(
        "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at)
         VALUES ('open', 'gpu-xid', 'critical', '{}', 'open', $1)",
    )
    .bind(day(500))
    .execute(p)
    .await
    .unwrap();
    let silence =
        "INSERT INTO silences (matchers, starts_at, ends_at, author, comment, end_recorded)
                   VALUES ('{\"host\": \"h\"}', $1 - interval '1 day', $1, 'ops', $2, true)";
    exec(silence, day(500), "old").await;
    exec(silence, day(30), "recent").await;
    sqlx::query(
        "INSERT INTO silences (matchers, starts_at, ends_at, author, comment, end_recorded)
         VALUES ('{\"host\": \"h\"}', $1 - interval '1 day', $1, 'ops', 'unrecorded', false)",
    )
    .bind(day(500))
    .execute(p)
    .await
    .unwrap();
    let mail = "INSERT INTO notification_outbox (group_key, fingerprint, kind, recipients, alert,
                    created_at, sent_at) VALUES ($2, $2, 'firing', '{ops@example.com}', '{}', $1, $1)";
    exec(mail, day(500), "old").await;
    exec(mail, day(30), "recent").await;
    // Facility readings and grid intensity 900 and 30 days old (energy retention 800).
    let reading = "INSERT INTO facility_readings (site, start_ts, end_ts, energy_kwh)
                   VALUES ($2, $1 - interval '1 hour', $1, 10)";
    exec(reading, day(900), "old").await;
    exec(reading, day(30), "recent").await;
    let grid = "INSERT INTO grid_intensity (site, hour, g_co2_per_kwh)
                VALUES ($2, date_trunc('hour', $1), 300)";
    exec(grid, day(900), "old").await;
    exec(grid, day(30), "recent").await;
    store.pool.close().await;

    let app = TestApp::spawn_full(db, |c| {
        c.anomaly.enabled = false;
        c.capacity.enabled = false;
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m = app.metrics().await;
        if m.contains("rackwatch_job_last_success_timestamp_seconds{job_name=\"maintenance\"}") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "maintenance did not run:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let p = &app.store.pool;
    let left = |sql: &'static str| async move {
        let v: Vec<String> = sqlx::query_scalar(sql).fetch_all(p).await.unwrap();
        v
    };
    assert_eq!(
        left("SELECT message FROM hardware_events WHERE host_id = 424242").await,
        ["recent"]
    );
    assert_eq!(
        left("SELECT fingerprint FROM alerts ORDER BY 1").await,
        ["recent"]
    );
    assert_eq!(
        left("SELECT fingerprint FROM incidents ORDER BY 1").await,
        ["open", "recent"]
    );
    // The unrecorded silence stays until its end is in the audit trail (this run records
    // it; the next run past retention deletes it).
    assert_eq!(
        left("SELECT comment FROM silences ORDER BY 1").await,
        ["recent", "unrecorded"]
    );
    assert_eq!(
        left("SELECT action FROM audit_log WHERE action = 'silence.expired'").await,
        ["silence.expired"]
    );
    assert_eq!(
        left("SELECT group_key FROM notification_outbox ORDER BY 1").await,
        ["recent"]
    );
    assert_eq!(
        left("SELECT site FROM facility_readings ORDER BY 1").await,
        ["recent"]
    );
    assert_eq!(
        left("SELECT site FROM grid_intensity ORDER BY 1").await,
        ["recent"]
    );
    app.stop().await;
}

/// A chart point that would hold quarter-hours and minutes is read from minutes only: a
/// quarter-hour row weighed as one minute tilted the newest point towards its last
/// minutes.
#[tokio::test]
async fn the_newest_chart_point_weighs_every_minute_once() {
    use rackwatch::store::series::Source;
    let app = TestApp::spawn().await;
    let token = app.token("w").await;
    let body = json!({"host": {"name": "w"}, "host_samples": [{"ts": Utc::now() - Duration::hours(3), "cpu_util_pct": 1.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let host: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'w'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    let end = Utc::now().duration_trunc(Duration::hours(1)).unwrap() + Duration::minutes(40);
    let from = end - Duration::minutes(100);
    // Minutes at 10 % CPU, then the last 30 at 40 %.
    sqlx::query(
        "INSERT INTO host_samples_1m (host_id, bucket, samples, cpu_util_pct)
         SELECT $1, b, 6, CASE WHEN b >= $3::timestamptz - interval '30 minutes' THEN 40 ELSE 10 END
           FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') b
         ON CONFLICT (host_id, bucket) DO UPDATE SET cpu_util_pct = EXCLUDED.cpu_util_pct",
    )
    .bind(host)
    .bind(from - Duration::hours(1))
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    app.store
        .rollup_quarters(from - Duration::hours(1), end, None)
        .await
        .unwrap();
    app.set_rollup_watermark(end).await;
    let points = app
        .store
        .host_series(&["w".to_string()], from, end, 3600, Source::Rollup15m)
        .await
        .unwrap();
    // Points start at the first quarter-hour (`from` is one); the second covers the last
    // 40 minutes: 10 at 10 % and 30 at 40 %.
    let last = points.last().unwrap();
    assert_eq!(last.ts, from + Duration::minutes(60));
    let cpu = last.cpu_util_pct.unwrap();
    assert!((cpu - 32.5).abs() < 1e-6, "{cpu}");
    app.stop().await;
}
