//! Capacity: demand measured from what agents send, recommendations and exhaustion dates
//! from the capacity job, and the page, API, gauges, alert and CLI that show them.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use rackwatch::analytics::capacity;
use serde_json::{json, Value};

use crate::support::{fresh_database, recent, subject, SmtpServer, TestApp};

/// Hosts of `pool` with `gpus` GPUs each, known to the inventory (one ingest each).
pub(crate) async fn hosts(app: &TestApp, pool: &str, site: &str, rack: &str, n: usize, gpus: u8) {
    for i in 0..n {
        let name = format!("{pool}-{i}");
        let token = app.token(&name).await;
        let ts = recent(1, 1, 1)[0];
        let body = json!({
            "host": {"name": name, "site": site, "rack": rack, "pool": pool},
            "gpus": (0..gpus).map(|g| json!({"index": g, "uuid": format!("GPU-{name}-{g}")})).collect::<Vec<_>>(),
            "gpu_samples": (0..gpus).map(|g| json!({"ts": ts, "index": g, "util_pct": 50.0})).collect::<Vec<_>>(),
        });
        assert_eq!(app.ingest(&token, &body).await.status(), 200);
    }
}

/// Fill `pool_demand` for the last 28 days with `demand(days since start, hour of day)`.
pub(crate) async fn demand_history(
    app: &TestApp,
    pool: &str,
    installed: i32,
    demand: impl Fn(f64, u32) -> f64,
) -> DateTime<Utc> {
    let end = Utc::now().duration_trunc(Duration::minutes(5)).unwrap();
    let start = end - Duration::days(28);
    let mut buckets = Vec::new();
    let mut values = Vec::new();
    let mut t = start;
    while t < end {
        let days = (t - start).num_seconds() as f64 / 86_400.0;
        buckets.push(t);
        values.push(demand(days, chrono::Timelike::hour(&t)) as f32);
        t += Duration::minutes(5);
    }
    sqlx::query(
        "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
         SELECT $1, b, v, v, 0, $4 FROM UNNEST($2::timestamptz[], $3::real[]) AS x(b, v)",
    )
    .bind(pool)
    .bind(&buckets)
    .bind(&values)
    .bind(installed)
    .execute(&app.store.pool)
    .await
    .unwrap();
    // The demand of these slots is final: the job does not rebuild it from rollups.
    sqlx::query(
        "INSERT INTO job_state (name, watermark) VALUES ('pool_demand', $1)
         ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark",
    )
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    start
}

/// One run of the capacity job, now.
async fn job(app: &TestApp) -> capacity::CapacityRun {
    capacity::run(&app.store, &app.cfg, Utc::now())
        .await
        .unwrap()
}

async fn recommendation(app: &TestApp, pool: &str) -> capacity::PoolRecommendation {
    app.store
        .recommendations(Some(pool))
        .await
        .unwrap()
        .pop()
        .unwrap_or_else(|| panic!("no recommendation for {pool}"))
}

#[tokio::test]
async fn a_diurnal_pool_gets_a_night_day_schedule_within_one_host_of_the_answer() {
    let app = TestApp::spawn().await;
    hosts(&app, "infer", "fra1", "r1", 5, 8).await;
    // 40 GPUs of work from 07:00 to 22:00 UTC, 16 at night: the cost-optimal schedule is
    // exactly that, night and day.
    demand_history(&app, "infer", 40, |_, h| {
        if (7..22).contains(&h) {
            40.0
        } else {
            16.0
        }
    })
    .await;
    let run = job(&app).await;
    assert_eq!(run.pools, 1, "{run:?}");
    let r = recommendation(&app, "infer").await;
    assert_eq!((r.installed_gpus, r.host_size), (40, 8));
    assert_eq!(r.week_schedule.len(), 168);
    for (i, g) in r.week_schedule.iter().enumerate() {
        let hour = chrono::Timelike::hour(&(r.decided_at + Duration::hours(i as i64)));
        let (want, label) = if (7..22).contains(&hour) {
            (40, "day")
        } else {
            (16, "night")
        };
        // Whole hosts of 8. The hour-of-day candidate reads each clock hour ±1 h, and the
        // schedule's hours start at the decision time, so the hours next to a change of
        // level may take either level.
        let edge = [5, 6, 7, 21, 22, 23].contains(&hour);
        if !edge {
            assert!(
                (want..=want + 8).contains(g),
                "{label} hour {hour}: {g} GPUs, want {want} within one host: {:?}",
                r.week_schedule
            );
        }
        assert_eq!(g % 8, 0, "whole hosts");
    }
    let a = capacity::actions(&r, 7, Utc::now());
    assert!(
        a.iter()
            .any(|a| a.starts_with("release") && a.contains("nights")),
        "{a:?}"
    );
    // The stored release names the hosts least busy at night, from the energy job's host
    // sums of the last 7 days: infer-3 and infer-1 are, though infer-0 is the least busy
    // over whole days (1 % by day, 70 % at night).
    for (host, day, night) in [
        ("infer-0", 1.0, 70.0),
        ("infer-1", 80.0, 10.0),
        ("infer-2", 80.0, 50.0),
        ("infer-3", 80.0, 5.0),
        ("infer-4", 80.0, 60.0),
    ] {
        sqlx::query(
            "INSERT INTO host_power_hourly (hour, host_id, watts, gpu_util_sum, gpu_minutes, gpu_idle_j)
             SELECT t, h.id, 3000, 480 * CASE WHEN extract(hour FROM t AT TIME ZONE 'UTC') BETWEEN 7 AND 21
                                              THEN $2::float8 ELSE $3::float8 END, 480, 0
               FROM hosts h, generate_series(date_trunc('hour', now()) - interval '7 days',
                                             date_trunc('hour', now()) - interval '1 hour', interval '1 hour') t
              WHERE h.name = $1",
        )
        .bind(host)
        .bind(day)
        .bind(night)
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    job(&app).await;
    let r = recommendation(&app, "infer").await;
    let release = r
        .actions
        .iter()
        .find(|a| a.starts_with("release") && a.contains("nights"))
        .unwrap_or_else(|| panic!("{:?}", r.actions));
    assert!(
        release.contains("; least busy then over the last 7 days: infer-3, infer-1"),
        "{release}"
    );
    app.stop().await;
}

/// A pool none of whose hosts reports keeps its last plan, ageing, and says since when.
#[tokio::test]
async fn a_pool_whose_hosts_stopped_reporting_keeps_its_plan_ageing_and_says_so() {
    let app = TestApp::spawn().await;
    hosts(&app, "quiet", "fra1", "r1", 2, 8).await;
    let end = demand_history(&app, "quiet", 16, |_, h| if h < 12 { 6.0 } else { 12.0 }).await
        + Duration::days(28);
    job(&app).await;
    let before = recommendation(&app, "quiet").await;
    assert_eq!(before.decided_at, end);
    assert!(!before.week_schedule.is_empty() && before.demand_now.is_some());
    // Three hours on, with no demand from the pool since: the plan is not made again from
    // old demand (its decision time would read as now).
    let later = Utc::now() + Duration::hours(3);
    app.set_rollup_watermark(later).await;
    capacity::run(&app.store, &app.cfg, later).await.unwrap();
    let after = recommendation(&app, "quiet").await;
    assert_eq!(after.decided_at, before.decided_at);
    assert_eq!(after.week_schedule, before.week_schedule);
    assert_eq!(after.next_hour, before.next_hour);
    assert_eq!(after.demand_now, None);
    let said = format!(
        "no demand since {}: no host of the pool has reported since, so this is the plan made then (hold, do not scale on it)",
        end.format("%Y-%m-%d %H:%M UTC")
    );
    assert_eq!(after.actions[0], said, "{:?}", after.actions);
    // Said once, however many runs go by.
    capacity::run(&app.store, &app.cfg, later + Duration::hours(1))
        .await
        .unwrap();
    let again = recommendation(&app, "quiet").await;
    assert_eq!(again.actions.iter().filter(|a| **a == said).count(), 1);
    assert_eq!(again.decided_at, before.decided_at);
    // The autoscalers' gauge carries the age.
    let metrics = app.metrics().await;
    let line = format!(
        "rackwatch_pool_recommendation_timestamp_seconds{{pool=\"quiet\"}} {}",
        end.timestamp()
    );
    assert!(metrics.contains(&line), "{line} not in /metrics");
}

/// The demo's first start writes days of history in seconds, then the capacity job runs:
/// the GPUs it wrote are installed now (their inventory was last seen with the history's
/// last batch, an hour ago), not days ago.
#[tokio::test]
async fn a_back_filled_fleet_is_installed_at_the_first_capacity_run() {
    let app = TestApp::spawn_with(|c| {
        c.simulator.history_days = 2;
        c.simulator.backfill_minutes = 60;
    })
    .await;
    let mut fleet = rackwatch::collect::simulator::SimulatedHost::fleet(3, 8);
    let now = Utc::now();
    let filled = rackwatch::app::backfill_history(&app.cfg, &app.store, &mut fleet, now)
        .await
        .unwrap();
    assert!(filled.samples > 0);
    let newest: DateTime<Utc> = sqlx::query_scalar("SELECT min(last_seen) FROM gpus")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert!(
        newest >= now - Duration::minutes(61),
        "every GPU last seen with the newest history, not {newest}"
    );
    job(&app).await;
    let recs = app.store.recommendations(None).await.unwrap();
    assert_eq!(recs.len(), 3, "{recs:?}");
    for r in &recs {
        assert_eq!(r.installed_gpus, 8, "{}: one host of 8 GPUs", r.pool);
    }
    app.stop().await;
}

/// A host taken out of the fleet stops counting as installed at the next capacity run, not
/// after the day its GPUs stay "recently seen", and is not offered for draining.
#[tokio::test]
async fn a_host_taken_out_of_the_fleet_is_not_installed() {
    let app = TestApp::spawn_with(|c| {
        c.simulator.history_days = 2;
        c.simulator.backfill_minutes = 60;
    })
    .await;
    // Six hosts of 8 GPUs, two in each of the three simulated pools.
    let mut fleet = rackwatch::collect::simulator::SimulatedHost::fleet(6, 8);
    rackwatch::app::backfill_history(&app.cfg, &app.store, &mut fleet, Utc::now())
        .await
        .unwrap();
    job(&app).await;
    let gone = fleet[0].info.name.clone();
    let pool = fleet[0].info.pool.clone();
    let r = recommendation(&app, &pool).await;
    assert_eq!(r.installed_gpus, 16, "{pool}: two hosts of 8");
    assert_eq!(
        app.store.remove_host(&gone, "test").await.unwrap(),
        Some(0),
        "back-filled, no token"
    );
    // The pool's other host reports the minutes since, and they are rolled up.
    let now = Utc::now();
    let from = (now - Duration::minutes(70))
        .duration_trunc(Duration::minutes(5))
        .unwrap();
    let to = now.duration_trunc(Duration::minutes(1)).unwrap();
    let other = &mut fleet[3];
    assert_eq!(other.info.pool, pool);
    let c = other.history(from, to, Duration::minutes(1));
    let batch = rackwatch::model::Batch {
        host: other.info.clone(),
        gpus: c.gpus,
        host_samples: c.host_samples,
        gpu_samples: c.gpu_samples,
        events: Vec::new(),
        agent: None,
    };
    app.store.write_batch(&batch, to).await.unwrap();
    app.store.rollup_range(from, to, None).await.unwrap();
    job(&app).await;
    let r = recommendation(&app, &pool).await;
    assert_eq!(r.installed_gpus, 8, "{pool} without {gone}");
    let listed = app
        .store
        .pool_hosts(std::slice::from_ref(&pool), Utc::now())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1.host, other.info.name);
    assert!(
        r.consolidation.0.iter().all(|d| d.host != gone),
        "{:?}",
        r.consolidation
    );
    // Its last host goes too: the pool leaves the recommendations (pages, API, gauges) at
    // the next run, though its demand history stays.
    app.store
        .remove_host(&other.info.name.clone(), "test")
        .await
        .unwrap();
    job(&app).await;
    let left: Vec<String> = app
        .store
        .recommendations(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.pool)
        .collect();
    assert!(!left.contains(&pool), "{pool} is gone: {left:?}");
    assert_eq!(left.len(), 2, "the other two pools stay: {left:?}");
    assert!(app
        .store
        .exhaustions(Some("pool"))
        .await
        .unwrap()
        .iter()
        .all(|e| e.key != pool));
    app.stop().await;
}

#[tokio::test]
async fn a_growing_pool_gets_its_exhaustion_date_and_an_order_that_covers_it() {
    let app = TestApp::spawn_with(|c| {
        c.capacity.racks.insert("fra1/r2".into(), 10.0);
    })
    .await;
    hosts(&app, "train", "fra1", "r2", 5, 4).await;
    // Each host draws 1 kW, steadily, for the 28 days: the rack's 10 kW budget has room
    // for five more.
    sqlx::query(
        "INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j, covered_minutes, power_max_w)
         SELECT h.id, 0, t, 3.6e6, 60, 1000
           FROM hosts h, generate_series(date_trunc('hour', now()) - interval '28 days',
                                         date_trunc('hour', now()) - interval '1 hour', interval '1 hour') t
          WHERE h.pool = 'train'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    // 10 GPUs growing 2 %/day for 28 days (17.4 now) on 20 installed: 20 is reached
    // ln 2 / ln 1.02 = 35.0 days after the start, 7 days from now.
    let start = demand_history(&app, "train", 20, |d, _| 10.0 * 1.02f64.powf(d)).await;
    job(&app).await;
    let r = recommendation(&app, "train").await;
    let expected = start + Duration::seconds((2f64.ln() / 1.02f64.ln() * 86_400.0) as i64);
    let got = r.exhausted_at.expect("an exhaustion date");
    assert!(
        (got - expected).num_hours().abs() <= 24,
        "exhausted {got}, expected {expected}"
    );
    let growth = r.growth_per_day.unwrap();
    assert!((growth - 0.02).abs() < 0.003, "{growth}");
    // The plan from a week ahead covers the demand then (≈ 20 GPUs) and asks for more.
    let lead_peak = *r.lead_plan.iter().max().unwrap();
    assert!(lead_peak >= 20, "{lead_peak}");
    let a = capacity::actions(&r, 7, Utc::now());
    let add = a.iter().find(|a| a.starts_with("add ")).expect("an order");
    assert!(
        add.contains(&r.lead_start.format("%Y-%m-%d").to_string()),
        "{add}"
    );
    assert!(add.contains("host"), "whole hosts of 4: {add}");
    // The order says where the hosts fit: the stored actions, as pages, the CLI and the
    // capacity alert's mail show them.
    assert!(r.actions[0].starts_with("add "), "{:?}", r.actions);
    assert_eq!(
        r.actions[1],
        "power: the racks with a budget at fra1 take 5 more of these hosts at 1.0 kW each (fra1/r2 5)"
    );
    app.stop().await;
}

/// The energy job's host and rack sums of `hour`.
async fn sum_hour(app: &TestApp, hour: DateTime<Utc>) {
    rackwatch::analytics::energy::refresh_power_sums(&app.store, hour, hour + Duration::hours(1))
        .await
        .unwrap();
}

/// A rack's hourly power is its GPUs' mean draw over the minutes they reported: an hour
/// a host reported half of is not half its draw, and the counter energy of an outage that
/// lands in the first minute after it is not a spike.
#[tokio::test]
async fn a_racks_hourly_power_is_the_mean_over_the_minutes_its_gpus_reported() {
    let app = TestApp::spawn().await;
    hosts(&app, "pp", "fra1", "r4", 3, 1).await;
    let hour = Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(3);
    // (host, covered minutes, joules, highest minute's watts): all 400 W while reporting;
    // pp-1 reported the last 30 minutes; pp-2 came back for the last 10 minutes with the
    // 50 minutes of its outage in its first counter delta.
    for (host, minutes, joules, max_w) in [
        ("pp-0", 60, 400.0 * 3600.0, 420.0),
        ("pp-1", 30, 400.0 * 1800.0, 420.0),
        ("pp-2", 10, 400.0 * 3600.0, 450.0),
    ] {
        sqlx::query(
            "INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j, covered_minutes, power_max_w)
             SELECT id, 0, $2, $3, $4, $5 FROM hosts WHERE name = $1",
        )
        .bind(host)
        .bind(hour)
        .bind(joules)
        .bind(minutes)
        .bind(max_w)
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    sum_hour(&app, hour).await;
    let watts: f64 = sqlx::query_scalar(
        "SELECT watts FROM rack_power_hourly WHERE site = 'fra1' AND rack = 'r4' AND hour = $1",
    )
    .bind(hour)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    // 400 + 400 + 450 (pp-2's mean, 2,400 W, held to its highest minute), not
    // (1.44 + 0.72 + 1.44) MJ / 3,600 s = 1,000 W.
    assert!((watts - 1250.0).abs() < 1e-6, "{watts}");
    // The same per host, as the pool's page and the job's power line read it. These GPU
    // rows count no idle or busy minute: no utilization, and no idle energy.
    let mut listed = app
        .store
        .pool_hosts(&["pp".to_string()], Utc::now())
        .await
        .unwrap();
    listed.sort_by(|a, b| a.1.host.cmp(&b.1.host));
    let peaks: Vec<(&str, Option<f64>)> = listed
        .iter()
        .map(|(_, h)| (h.host.as_str(), h.peak_kw_7d))
        .collect();
    assert_eq!(
        peaks,
        [
            ("pp-0", Some(0.4)),
            ("pp-1", Some(0.4)),
            ("pp-2", Some(0.45))
        ]
    );
    assert!(
        listed
            .iter()
            .all(|(_, h)| h.idle_kwh_7d == Some(0.0) && h.util_pct.is_none()),
        "{listed:?}"
    );
    // Recomputing the hour replaces its sums: one row per host, none left stale.
    sqlx::query("UPDATE energy_hourly SET measured_j = measured_j / 2 WHERE hour = $1")
        .bind(hour)
        .execute(&app.store.pool)
        .await
        .unwrap();
    sum_hour(&app, hour).await;
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT h.name, p.watts FROM host_power_hourly p JOIN hosts h ON h.id = p.host_id
          WHERE p.hour = $1 ORDER BY 1",
    )
    .bind(hour)
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("pp-0".to_string(), 200.0),
            ("pp-1".to_string(), 200.0),
            ("pp-2".to_string(), 450.0)
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_racks_power_forecast_crosses_its_budget_on_the_expected_date() {
    let app = TestApp::spawn_with(|c| {
        c.capacity.racks.insert("fra1/r3".into(), 6.0);
    })
    .await;
    hosts(&app, "rackpool", "fra1", "r3", 1, 1).await;
    demand_history(&app, "rackpool", 1, |_, _| 1.0).await;
    let host_id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'rackpool-0'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    // 4 kW growing 1 %/day: 6 kW after ln 1.5 / ln 1.01 = 40.7 days, 12.7 days from now.
    let end = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    let start = end - Duration::days(28);
    let hours: Vec<DateTime<Utc>> = (0..28 * 24).map(|h| start + Duration::hours(h)).collect();
    let joules: Vec<f64> = hours
        .iter()
        .map(|t| 4000.0 * 1.01f64.powf((*t - start).num_seconds() as f64 / 86_400.0) * 3600.0)
        .collect();
    sqlx::query(
        "INSERT INTO energy_hourly (host_id, gpu_index, hour, measured_j)
         SELECT $1, 0, h, j FROM UNNEST($2::timestamptz[], $3::float8[]) AS x(h, j)",
    )
    .bind(host_id)
    .bind(&hours)
    .bind(&joules)
    .execute(&app.store.pool)
    .await
    .unwrap();
    let run = job(&app).await;
    assert_eq!(run.racks, 1, "{run:?}");
    let rack = app
        .store
        .exhaustions(Some("rack"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(rack.key, "fra1/r3");
    let expected = start + Duration::seconds((1.5f64.ln() / 1.01f64.ln() * 86_400.0) as i64);
    let got = rack.exhausted_at.expect("a date");
    assert!(
        (got - expected).num_hours().abs() <= 24,
        "{got} vs {expected}"
    );
    // The page lists it with its budget.
    let cookie = app.login("admin", "pw-capacity").await;
    let (status, html) = app.page(&cookie, "/capacity").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("fra1/r3") && html.contains("6.0 kW"),
        "rack row"
    );
    assert!(html.contains(&got.format("%Y-%m-%d").to_string()));
    // So does the rack's own page, and its JSON twin.
    let (status, html) = app.page(&cookie, "/racks/fra1/r3").await;
    assert_eq!(status, 200);
    let kpi = &html[html.find("id=\"kpi-rack-budget\"").expect("budget figure")..];
    let kpi = &kpi[..kpi.find("</div>").unwrap()];
    assert!(kpi.contains(">6.0 kW</a>"), "{kpi}");
    assert!(
        kpi.contains(&format!(
            "the budget runs out on {}",
            got.format("%Y-%m-%d")
        )),
        "{kpi}"
    );
    // Its chart: the hourly power it is dated from, the budget line, the trend and the date.
    let chart = &html[html.find("id=\"rack-budget\"").expect("budget chart")..];
    let chart = &chart[..chart.find("</section>").unwrap()];
    for want in [
        "<title>rack power (GPUs and hosts, hourly mean)</title>",
        "<title>trend of the daily peak</title>",
        "budget 6.0 kW",
        &format!("<title>budget runs out {}</title>", got.format("%Y-%m-%d")),
    ] {
        assert!(chart.contains(want), "{want} in {chart}");
    }
    let j = app.json(&cookie, "/api/v1/racks/fra1/r3").await;
    assert_eq!(j["power_budget"]["capacity"].as_f64(), Some(6000.0), "{j}");
    let hourly = j["power_hourly"].as_array().expect("power_hourly");
    assert_eq!(hourly.len(), 28 * 24, "the 28 days it is dated from");
    assert!((hourly[0]["watts"].as_f64().unwrap() - 4000.0).abs() < 1.0);
    // The pool's page says where more of its hosts could go: a host draws up to its last
    // hour (4 kW × 1.01^27.96 = 5.28 kW), more than the rack's headroom.
    let pj = app.json(&cookie, "/api/v1/capacity/pools/rackpool").await;
    let power = &pj["power"];
    let peak = power["host_peak_kw"]
        .as_f64()
        .unwrap_or_else(|| panic!("{pj}"));
    assert!(
        (peak - 4.0 * 1.01f64.powf(27.0 + 23.0 / 24.0)).abs() < 0.01,
        "{power}"
    );
    let room = &power["racks"][0];
    assert_eq!(room["rack"], "fra1/r3");
    assert_eq!(room["budget_kw"].as_f64(), Some(6.0));
    let headroom = room["headroom_kw"].as_f64().unwrap();
    assert!(headroom > 0.0 && headroom < peak, "{room}");
    assert_eq!(room["hosts"], 0, "{room}");
    let (_, html) = app.page(&cookie, "/capacity/pools/rackpool").await;
    assert!(
        html.contains(&format!("A host of this pool draws up to {peak:.1} kW"))
            && html.contains("take 0 more in all"),
        "{html}"
    );
    // And the planner's table on the command line.
    let url = app.db_url.clone();
    let ((ok, out, err), (json_ok, json_out, _)) = tokio::task::spawn_blocking(move || {
        (
            crate::cli::rackwatch(&url, &["capacity", "plan"], ""),
            crate::cli::rackwatch(&url, &["capacity", "plan", "--format", "json"], ""),
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    // Its JSON twin carries the racks too, in kW as the table prints them.
    assert!(json_ok, "{json_out}");
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    let rack = parsed["racks"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["rack"] == "fra1/r3"))
        .unwrap_or_else(|| panic!("no rack in {parsed}"));
    assert_eq!(rack["budget_kw"].as_f64(), Some(6.0), "{rack}");
    assert_eq!(
        rack["exhausted_at"]
            .as_str()
            .map(|d| d.parse::<DateTime<Utc>>().unwrap()),
        Some(got)
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("fra1/r3 "))
        .unwrap_or_else(|| panic!("no rack line in\n{out}"));
    assert!(
        line.contains("6.0  the budget runs out on")
            && line.ends_with(&got.format("%Y-%m-%d").to_string()),
        "{line}"
    );
    assert_eq!(
        j["power_budget"]["exhausted_at"]
            .as_str()
            .map(|d| d.parse::<DateTime<Utc>>().unwrap()),
        Some(got)
    );
    // The budget is taken out of the configuration: the rack is dated no more. Nor is the
    // disk of a host that is not in the fleet.
    sqlx::query(
        "INSERT INTO capacity_exhaustion (kind, key, computed_at, capacity, level_now, growth_per_day, unit)
         VALUES ('disk', 'gone-host', now(), 1e12, 5e11, 0.01, 'B')",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let mut cfg = (*app.cfg).clone();
    cfg.capacity.racks.clear();
    capacity::run(&app.store, &cfg, Utc::now()).await.unwrap();
    let left = app.store.exhaustions(None).await.unwrap();
    assert!(
        left.iter()
            .all(|e| e.kind != "rack" && e.key != "gone-host"),
        "{left:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn gauges_and_the_api_agree_with_the_page() {
    let app = TestApp::spawn().await;
    hosts(&app, "infer", "fra1", "r1", 5, 8).await;
    hosts(&app, "train", "ams2", "r9", 5, 4).await;
    demand_history(&app, "infer", 40, |_, h| {
        if (7..22).contains(&h) {
            30.0
        } else {
            10.0
        }
    })
    .await;
    demand_history(&app, "train", 20, |d, _| 10.0 * 1.02f64.powf(d)).await;
    // A pool whose demand is already above its installed GPUs.
    hosts(&app, "full", "ams2", "r8", 1, 8).await;
    demand_history(&app, "full", 8, |_, _| 12.0).await;
    // ... and only 9 days old: its chart starts on the day its demand does.
    sqlx::query(
        "DELETE FROM pool_demand WHERE pool = 'full' AND bucket < now() - interval '9 days'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    // A pool half an hour old: no recommendation yet, the same absence on every surface.
    hosts(&app, "young", "ams2", "r7", 1, 8).await;
    sqlx::query(
        "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
         SELECT 'young', b, 3, 3, 0, 8
           FROM generate_series(date_trunc('hour', now()) + interval '5 minutes' * floor(extract(minute FROM now()) / 5)
                - interval '30 minutes', date_trunc('hour', now()) + interval '5 minutes' * floor(extract(minute FROM now()) / 5)
                - interval '5 minutes', interval '5 minutes') b",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    job(&app).await;
    // The forecast job forecasts each pool's demand from the capacity job's slots.
    rackwatch::analytics::forecast::run(&app.store, Utc::now())
        .await
        .unwrap();
    let cookie = app.login("admin", "pw-capacity").await;
    let demand_forecast = |pool: &str| {
        let (app, cookie) = (&app, &cookie);
        let pool = pool.to_string();
        async move {
            let f = app
                .json(
                    cookie,
                    &format!("/api/v1/forecasts?scope=pool&key={pool}&metric=demand_gpus"),
                )
                .await;
            serde_json::from_value::<Vec<f64>>(f[0]["point"].clone())
                .unwrap_or_else(|e| panic!("{pool}: {e}: {f}"))
        }
    };
    // A steady 12 GPUs stays 12; the diurnal 10 / 30 keeps its nights and days.
    let full = demand_forecast("full").await;
    assert!(full.iter().all(|v| (v - 12.0).abs() < 0.5), "{full:?}");
    let infer = demand_forecast("infer").await;
    let (lo, hi) = infer
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    assert!(lo < 13.0 && hi > 27.0, "{infer:?}");
    let api = app.json(&cookie, "/api/v1/capacity/recommendations").await;
    let metrics = app.metrics().await;
    let (_, page) = app.page(&cookie, "/capacity").await;
    let pools = api.as_array().unwrap();
    assert_eq!(pools.len(), 4);
    // One site's pools: each names it among its sites.
    let site = pools[0]["sites"][0].as_str().unwrap();
    let at_site = app
        .json(
            &cookie,
            &format!("/api/v1/capacity/recommendations?site={site}"),
        )
        .await;
    let at_site = at_site.as_array().unwrap();
    assert!(!at_site.is_empty());
    assert!(
        at_site
            .iter()
            .all(|p| p["sites"].as_array().unwrap().iter().any(|s| s == site)),
        "{at_site:?}"
    );
    // When each pool runs out, as the page says it: a date, or "already" once it has passed.
    let overview = app.json(&cookie, "/api/v1/capacity").await;
    let runs_out = |pool: &str| {
        let p = overview["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == pool)
            .unwrap_or_else(|| panic!("{pool} not in {overview}"));
        let at = p["exhausted_at"]
            .as_str()
            .map(|d| d.parse::<DateTime<Utc>>().unwrap());
        match at {
            Some(t) if t <= Utc::now() => "already".to_string(),
            Some(t) => t.format("%Y-%m-%d").to_string(),
            None => "not within 90 days".to_string(),
        }
    };
    assert_eq!(runs_out("full"), "already");
    assert_ne!(runs_out("train"), "already");
    // The page says from when its figures are, and that they are of now.
    let newest = pools
        .iter()
        .map(|p| {
            p["decided_at"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
        })
        .max()
        .unwrap();
    let decided = format!(
        "<p class=\"muted\" id=\"decided\">Planned from demand up to <time datetime=\"{}\">",
        newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(page.contains(&decided), "{decided} not in the page");
    for p in pools {
        let pool = p["pool"].as_str().unwrap();
        if pool == "young" {
            young_pool_has_no_recommendation_anywhere(&app, &cookie, p, &metrics, &page).await;
            continue;
        }
        let (h1, d7, inst) = (
            p["recommended_1h"].as_i64().unwrap(),
            p["recommended_7d"].as_i64().unwrap(),
            p["installed_gpus"].as_i64().unwrap(),
        );
        for line in [
            format!("rackwatch_pool_recommended_gpus{{pool=\"{pool}\",horizon=\"1h\"}} {h1}"),
            format!("rackwatch_pool_recommended_gpus{{pool=\"{pool}\",horizon=\"7d\"}} {d7}"),
            format!("rackwatch_pool_installed_gpus{{pool=\"{pool}\"}} {inst}"),
        ] {
            assert!(metrics.contains(&line), "{line} not in\n{metrics}");
        }
        // How old the recommendation is: the gauge and the page say the decision time.
        let decided: DateTime<Utc> = p["decided_at"].as_str().unwrap().parse().unwrap();
        let stamp = format!(
            "rackwatch_pool_recommendation_timestamp_seconds{{pool=\"{pool}\"}} {}",
            decided.timestamp()
        );
        assert!(metrics.contains(&stamp), "{stamp} not in\n{metrics}");
        let demand = p["demand_gpus"].as_f64().unwrap();
        assert_eq!((demand * 1000.0).round() / 1000.0, demand, "three decimals");
        let series = format!("rackwatch_pool_demand_gpus{{pool=\"{pool}\"}} ");
        let exposed: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} not in\n{metrics}"))
            .parse()
            .unwrap();
        assert!((exposed - demand).abs() < 1e-9, "{exposed} vs {demand}");
        let card = &page[page.find(&format!("id=\"pool-{pool}\"")).unwrap()..];
        let card = &card[..card.find("</section>").unwrap()];
        assert!(card.contains(&format!("<dd>{h1} GPUs</dd>")), "{card}");
        assert!(card.contains(&format!("{d7} GPUs</dd>")), "{card}");
        assert!(card.contains(&format!("<dd>{inst} GPUs</dd>")), "{card}");
        let out = runs_out(pool);
        // Already run out: in the colour of a fault.
        let class = if out == "already" {
            " class=\"error\""
        } else {
            ""
        };
        assert!(
            card.contains(&format!("<dt>Runs out</dt><dd{class}>{out}</dd>")),
            "{card}"
        );
        // The pool's page draws its chart with the forecast-free plan lines.
        let (status, html) = app.page(&cookie, &format!("/capacity/pools/{pool}")).await;
        assert_eq!(status, 200);
        assert!(html.contains("<svg class=\"chart\"") && html.contains("installed"));
        assert!(html.contains("forecast of demand"), "{pool}");
        let j = app
            .json(&cookie, &format!("/api/v1/capacity/pools/{pool}"))
            .await;
        assert_eq!(j["summary"]["next_hour"].as_i64(), Some(h1));
        // The pool's hosts, each linked from its page, add up to its installed GPUs.
        let listed = j["hosts"].as_array().unwrap();
        let gpus: i64 = listed.iter().map(|h| h["gpus"].as_i64().unwrap()).sum();
        assert_eq!(gpus, inst, "{pool}: {listed:?}");
        for h in listed {
            let name = h["host"].as_str().unwrap();
            assert!(name.starts_with(&format!("{pool}-")), "{name}");
            assert!(
                html.contains(&format!("<a href=\"/hosts/{name}\">{name}</a>")),
                "{name}"
            );
        }
        // The command line's plan: the same figures in its table, every hour in its CSV.
        let (url, p) = (app.db_url.clone(), pool.to_string());
        let (table, csv, json_out) = tokio::task::spawn_blocking(move || {
            let run = |format: &str| {
                let (ok, out, err) = crate::cli::rackwatch(
                    &url,
                    &["capacity", "plan", "--pool", &p, "--format", format],
                    "",
                );
                assert!(ok, "{err}");
                out
            };
            (run("table"), run("csv"), run("json"))
        })
        .await
        .unwrap();
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("{table}"))
            .split_whitespace()
            .collect();
        assert_eq!(
            (row[0], row[1], row[3]),
            (pool, inst.to_string().as_str(), h1.to_string().as_str()),
            "{table}"
        );
        let week = csv.lines().filter(|l| l.contains(",week,")).count();
        assert_eq!(week, 168, "{csv}");
        assert!(csv
            .lines()
            .filter(|l| l.contains(",week,"))
            .all(|l| l.starts_with(&format!("{pool},week,")) && l.ends_with(&format!(",{inst}"))));
        let parsed: Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!(
            parsed["pools"][0]["recommendation"]["next_hour"].as_i64(),
            Some(h1)
        );
        let from: DateTime<Utc> = j["from"].as_str().unwrap().parse().unwrap();
        let first: DateTime<Utc> = j["demand"][0]["bucket"].as_str().unwrap().parse().unwrap();
        let days_back = (Utc::now() - from).num_hours() as f64 / 24.0;
        if pool == "full" {
            // Its first point is the chart bin (about half an hour) holding its first
            // demand, 9 days back; the chart starts on that point's day.
            assert_eq!(from, first.duration_trunc(Duration::days(1)).unwrap());
            let first_back = (Utc::now() - first).num_minutes() as f64 / 1440.0;
            assert!((first_back - 9.0).abs() < 0.05, "{first}");
        } else {
            assert!((days_back - 28.0).abs() < 0.01, "{from}");
        }
    }
    // A pool whose first host reports after the capacity job's run: its installed GPUs
    // are a gauge at once (an autoscaler's fallback), its recommendations wait for the job.
    let token = app.token("fresh-01").await;
    let body = json!({"host": {"name": "fresh-01", "pool": "fresh"},
        "gpus": [{"index": 0, "uuid": "GPU-f0"}, {"index": 1, "uuid": "GPU-f1"}],
        "gpu_samples": [{"ts": recent(1, 1, 2)[0], "index": 0, "util_pct": 40.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rackwatch_pool_installed_gpus{pool=\"fresh\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("rackwatch_pool_recommended_gpus{pool=\"fresh\""));
    assert!(!metrics.contains("rackwatch_pool_demand_gpus{pool=\"fresh\""));
    app.stop().await;
}

/// A pool with half an hour of demand: its installed GPUs and demand everywhere, and no
/// recommendation anywhere (no gauge, null in both JSON views, dashes on the pages and in
/// the command line's table), with the same reason.
async fn young_pool_has_no_recommendation_anywhere(
    app: &TestApp,
    cookie: &str,
    p: &Value,
    metrics: &str,
    page: &str,
) {
    let why = "no plan yet: only 30 min of demand history";
    assert!(
        p["recommended_1h"].is_null() && p["recommended_7d"].is_null(),
        "{p}"
    );
    assert_eq!(p["schedule"], json!([]));
    assert_eq!(p["installed_gpus"], 8);
    assert_eq!(p["demand_gpus"].as_f64(), Some(3.0));
    assert!(p["note"].as_str().unwrap().starts_with(why), "{p}");
    assert!(
        !metrics.contains("rackwatch_pool_recommended_gpus{pool=\"young\""),
        "{metrics}"
    );
    assert!(metrics.contains("rackwatch_pool_installed_gpus{pool=\"young\"} 8"));
    assert!(metrics.contains("rackwatch_pool_demand_gpus{pool=\"young\"} 3"));
    let card = &page[page.find("id=\"pool-young\"").unwrap()..];
    let card = &card[..card.find("</section>").unwrap()];
    assert!(card.contains("<dt>Next hour</dt><dd>–</dd>"), "{card}");
    assert!(card.contains(why), "{card}");
    let j = app.json(cookie, "/api/v1/capacity/pools/young").await;
    for k in ["next_hour", "week_peak", "week_low", "lead_peak"] {
        assert!(j["summary"][k].is_null(), "{k}: {j}");
    }
    let (status, html) = app.page(cookie, "/capacity/pools/young").await;
    assert_eq!(status, 200);
    assert!(html.contains("<dt>Next hour</dt><dd>–</dd>"), "{html}");
    let one = app
        .json(cookie, "/api/v1/capacity/recommendations?pool=young")
        .await;
    assert!(one[0]["recommended_1h"].is_null(), "{one}");
    let url = app.db_url.clone();
    let table = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = crate::cli::rackwatch(
            &url,
            &["capacity", "plan", "--pool", "young", "--format", "table"],
            "",
        );
        assert!(ok, "{err}");
        out
    })
    .await
    .unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["young", "8", "3.0", "-", "-", "-"], "{table}");
    assert!(table.contains(why), "{table}");
}

#[tokio::test]
async fn demand_is_measured_from_gpu_work_and_the_schedulers_queue() {
    let app = TestApp::spawn().await;
    let token = app.token("q-0").await;
    let minute = (Utc::now() - Duration::minutes(15))
        .duration_trunc(Duration::minutes(5))
        .unwrap();
    let ts: Vec<DateTime<Utc>> = (0..60).map(|i| minute + Duration::seconds(i * 5)).collect();
    // 4 GPUs: two at 75 %, one at 50 %, one idle (2 %): 2.02 GPUs of work, 3 busy.
    let utils = [75.0, 75.0, 50.0, 2.0];
    let body = json!({"host": {"name": "q-0", "pool": "queued"},
        "gpus": (0..4).map(|g| json!({"index": g})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().flat_map(|t| (0..4).map(move |g| json!({"ts": t, "index": g, "util_pct": utils[g]}))).collect::<Vec<_>>()});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    // The pool's scheduler reports 6 GPUs waiting.
    let sched = app
        .store
        .create_pool_token("queued", "slurm")
        .await
        .unwrap();
    let r = app
        .http
        .post(format!("{}/api/v1/pools/queued/demand", app.base))
        .bearer_auth(&sched)
        .json(&json!({"pending_gpus": 6, "ts": minute + Duration::minutes(2), "source": "slurm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The admin page shows when the scheduler last reported.
    let used: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM agent_tokens WHERE pool = 'queued'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert!(used.is_some(), "the scheduler token's use is recorded");
    app.store
        .run_rollups(Utc::now() - Duration::minutes(1))
        .await
        .unwrap();
    capacity::update_demand(&app.store, &app.cfg, Utc::now())
        .await
        .unwrap();
    let (busy, util, queued, installed): (f32, f32, f32, i32) = sqlx::query_as(
        "SELECT busy_gpus, util_gpus, queued_gpus, installed_gpus FROM pool_demand WHERE pool = 'queued' AND bucket = $1",
    )
    .bind(minute)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!((busy, queued, installed), (3.0, 6.0, 4));
    assert!((util - 2.02).abs() < 1e-3, "{util}");
    // A late report for a slot the job has written (an exporter catching up) rewrites its
    // queue; the slots after its 15 minutes of validity keep theirs.
    let late = |ts: DateTime<Utc>, n: f64| {
        app.http
            .post(format!("{}/api/v1/pools/queued/demand", app.base))
            .bearer_auth(&sched)
            .json(&json!({"pending_gpus": n, "ts": ts}))
            .send()
    };
    let r = late(minute + Duration::minutes(3), 10.0).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let queued = |at: DateTime<Utc>| {
        sqlx::query_scalar::<_, f32>(
            "SELECT queued_gpus FROM pool_demand WHERE pool = 'queued' AND bucket = $1",
        )
        .bind(at)
        .fetch_one(&app.store.pool)
    };
    assert_eq!(queued(minute).await.unwrap(), 10.0);
    // A report older than the slot's latest one changes nothing.
    let r = late(minute + Duration::minutes(1), 1.0).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(queued(minute).await.unwrap(), 10.0);
    app.stop().await;
}

/// The answer has this status and its body says this.
async fn answer_says(r: reqwest::Response, status: u16, needle: &str) {
    assert_eq!(r.status(), status);
    let body = r.text().await.unwrap();
    assert!(body.contains(needle), "{status} {needle:?}: {body}");
}

#[tokio::test]
async fn bad_capacity_input_gets_a_clear_error() {
    let app = TestApp::spawn().await;
    hosts(&app, "p1", "fra1", "r1", 1, 2).await;
    let url = |pool: &str| format!("{}/api/v1/pools/{pool}/demand", app.base);
    let token = app.store.create_pool_token("p1", "").await.unwrap();
    let post = |u: String, t: &str, body: Value| {
        app.http
            .post(u)
            .bearer_auth(t.to_string())
            .json(&body)
            .send()
    };
    let r = post(url("p1"), &token, json!({"pending_gpus": -1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("pending_gpus"));
    let r = post(url("p1"), &token, json!({"pending": 3}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("pending_gpus"));
    // The report's fields written as an array would decode field by field; it is not
    // the documented body and is refused, as are other top-level kinds.
    for body in [json!([3, null, "slurm"]), json!(3), json!(null)] {
        let r = post(url("p1"), &token, body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        let e = e["error"].as_str().unwrap();
        assert!(
            e.starts_with("expected {\"pending_gpus\": N") && e.contains("the body is"),
            "{e}"
        );
    }
    let r = post(url("p1"), &token, json!({"pending_gpus": "3"}))
        .await
        .unwrap();
    answer_says(
        r,
        400,
        "pending_gpus: invalid type: string \\\"3\\\", expected a number",
    )
    .await;
    // A revoked token says so, not that none was sent.
    let old = app
        .store
        .create_pool_token("p1", "to revoke")
        .await
        .unwrap();
    assert_eq!(
        app.store
            .revoke_tokens_with_note("to revoke")
            .await
            .unwrap(),
        1
    );
    let r = post(url("p1"), &old, json!({"pending_gpus": 1}))
        .await
        .unwrap();
    answer_says(r, 401, "unknown or revoked pool token").await;
    // The body cap is the server's (`server.max_body_bytes`), answered 413, not a
    // framework default answered 400; under the cap a long body is read and judged.
    let max = rackwatch::config::Config::default().server.max_body_bytes;
    let padded = |n: usize| format!("{{\"pending_gpus\": 1, \"source\": \"{}\"}}", "x".repeat(n));
    let send = |body: String| {
        app.http
            .post(url("p1"))
            .bearer_auth(token.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = send(padded(max)).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("server.max_body_bytes"));
    let r = send(padded(3 << 20)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("at most 64 printable characters"));
    let r = app
        .http
        .post(url("p1"))
        .bearer_auth(token.clone())
        .header("content-type", "text/plain")
        .body(r#"{"pending_gpus": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post(url("other"), &token, json!({"pending_gpus": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(url("p1"), "not-a-token", json!({"pending_gpus": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An agent token is the wrong kind of token, and the answer says so.
    let agent = app.token("p1-0").await;
    let r = post(url("p1"), &agent, json!({"pending_gpus": 1}))
        .await
        .unwrap();
    answer_says(r, 401, "this is an agent token").await;
    // A wrong password says that, not which token to send.
    let r = app
        .http
        .post(url("p1"))
        .basic_auth("admin", Some("wrong"))
        .json(&json!({"pending_gpus": 1}))
        .send()
        .await
        .unwrap();
    answer_says(r, 401, "user name or password is wrong").await;
    // -0 is 0; an absurd number is printed short.
    let r = post(url("p1"), &token, json!({"pending_gpus": -0.0}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["pending_gpus"].to_string(), "0.0");
    let r = post(url("p1"), &token, json!({"pending_gpus": 1e308}))
        .await
        .unwrap();
    answer_says(r, 400, "pending_gpus = 1e308 must be").await;
    let r = post(url("p1"), &token, json!({"pending_gpus": -1e-300}))
        .await
        .unwrap();
    answer_says(r, 400, "pending_gpus = -1e-300 must be").await;
    // A queue far beyond the pool (2 GPUs) is a unit mistake: refused, saying the bound.
    let r = post(url("p1"), &token, json!({"pending_gpus": 1000}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a 1,000-GPU backlog is always taken");
    let r = post(url("p1"), &token, json!({"pending_gpus": 10_000_000}))
        .await
        .unwrap();
    answer_says(
        r,
        400,
        "pending_gpus = 10000000 is more than 1000 (100 × the pool's 2 installed GPUs, at least 1,000)",
    )
    .await;
    // An operator may report for any pool, but only for pools that exist.
    let cookie = app
        .login_as("op", "op-password", rackwatch::store::auth::Role::Operator)
        .await;
    let r = app
        .post_json(
            &cookie,
            "/api/v1/pools/nope/demand",
            &json!({"pending_gpus": 1}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let viewer = app
        .login_as("v", "v-password", rackwatch::store::auth::Role::Viewer)
        .await;
    let r = app
        .post_json(
            &viewer,
            "/api/v1/pools/p1/demand",
            &json!({"pending_gpus": 1}),
        )
        .await;
    assert_eq!(r.status(), 403);
    // Refused as any change the role does not allow: in the audit trail.
    let refused = app.wait_audit("access.refused", 1).await;
    assert_eq!(
        (refused[0].actor.as_str(), refused[0].target.as_str()),
        ("v", "POST /api/v1/pools/p1/demand")
    );
    // A wrong password is checked once: one refused login in the trail.
    let logins = app.audit("login").await.len();
    let r = app
        .http
        .post(format!("{}/api/v1/pools/p1/demand", app.base))
        .basic_auth("op", Some("not-the-password"))
        .json(&json!({"pending_gpus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let after = app.audit("login").await;
    assert_eq!(after.len(), logins + 1, "{after:?}");
    assert_eq!(after[0].outcome, "refused");
    // Unknown pools on the page and the API.
    let (status, html) = app.page(&cookie, "/capacity/pools/nope").await;
    assert_eq!(status, 404);
    assert!(html.contains("no pool named"));
    let r = app
        .get(&cookie, "/api/v1/capacity/recommendations?pool=nope")
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .get(&cookie, "/api/v1/capacity/recommendations?site=nowhere")
        .await;
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("no pool has hosts at site"));
    // Configuration: budgets and lead times that cannot be right are refused at start.
    for (toml, want) in [
        (
            "[capacity.racks]\n\"fra1/r1\" = 0\n",
            "positive number of kW",
        ),
        ("[capacity.racks]\n\"r1\" = 5\n", "site/rack"),
        (
            "[capacity]\nlead_days = 30\nhistory_days = 28\n",
            "not shorter than capacity.history_days",
        ),
        ("[capacity]\nprice = -1\n", "capacity.price"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        let e = rackwatch::config::Config::load(Some(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
    // A pool with a day of history gets its next hour and week, and says why the plan a
    // lead time ahead has to wait (the lead is longer than its history).
    demand_history_short(&app, "p1").await;
    job(&app).await;
    let r = recommendation(&app, "p1").await;
    assert_eq!(r.week_schedule.len(), 168);
    assert!(r.lead_plan.is_empty());
    assert!(
        r.note
            .starts_with("no plan ahead yet: it looks 168 h ahead (capacity.lead_days)")
            && !r.note.contains("Settings::"),
        "{}",
        r.note
    );
    let (_, html) = app.page(&cookie, "/capacity").await;
    assert!(html.contains("no plan ahead yet"), "the page says why");
    // A pool whose hosts were all taken out of the fleet takes no more reports: the capacity
    // job no longer plans it.
    let r = post(url("p1"), &token, json!({"pending_gpus": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "p1 has a host");
    app.store.remove_host("p1-0", "test").await.unwrap();
    let r = post(url("p1"), &token, json!({"pending_gpus": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no host belongs to pool \"p1\"");
    app.stop().await;
}

/// A pool's queue reports are rate-limited like an agent's batches: an hour of minutely
/// reports at once, then one a second (each report is a row kept for 90 days).
#[tokio::test]
async fn queue_reports_beyond_their_rate_are_refused_with_retry_after() {
    let app = TestApp::spawn().await;
    hosts(&app, "rq", "fra1", "r1", 1, 2).await;
    let token = app.store.create_pool_token("rq", "").await.unwrap();
    let url = format!("{}/api/v1/pools/rq/demand", app.base);
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..65 {
        let r = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"pending_gpus": 1}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(r.status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((60..=62).contains(&ok), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429));
    assert!(retry.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    app.stop().await;
}

async fn demand_history_short(app: &TestApp, pool: &str) {
    let end = Utc::now().duration_trunc(Duration::minutes(5)).unwrap();
    sqlx::query(
        "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
         SELECT $1, b, 1, 1, 0, 2 FROM generate_series($2 - interval '1 day', $2 - interval '5 minutes', interval '5 minutes') b
         ON CONFLICT DO NOTHING",
    )
    .bind(pool)
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_state (name, watermark) VALUES ('pool_demand', $1)
         ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark",
    )
    .bind(end)
    .execute(&app.store.pool)
    .await
    .unwrap();
}

const RULES: &str = r#"
[[rule]]
name = "capacity-short"
kind = "capacity"
lead_days = 10
severity = "warning"
summary = "Capacity runs short"

[[route]]
to = ["planners@example.com"]
"#;

/// A server with the capacity rule loaded, mailing through a real SMTP server at once.
async fn rule_app() -> (SmtpServer, TestApp, tempfile::TempDir) {
    rule_app_with(RULES).await
}

async fn rule_app_with(rules_toml: &str) -> (SmtpServer, TestApp, tempfile::TempDir) {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, rules_toml).unwrap();
    let app = TestApp::spawn_full(fresh_database().await, |c| {
        smtp.alert_through(c, &rules);
        c.alerting.group_wait_secs = 1;
        c.alerting.group_interval_secs = 0;
        c.anomaly.enabled = false;
    })
    .await;
    (smtp, app, dir)
}

/// The capacity job runs again and the alert it fired is mailed as resolved.
async fn resolves_at_the_next_run(app: &TestApp, smtp: &SmtpServer) {
    job(app).await;
    let mails = smtp.wait_for(2, 20).await;
    assert_eq!(mails.len(), 2);
    assert!(
        subject(&mails[1]).to_lowercase().contains("resolved"),
        "{}",
        subject(&mails[1])
    );
}

/// A firing capacity alert resolves when its pool leaves the fleet (every host taken out):
/// the pool is in the plan no more, so nothing would ever clear it otherwise.
#[tokio::test]
async fn a_capacity_alert_resolves_when_its_pool_leaves_the_fleet() {
    let (smtp, app, _rules) = rule_app().await;
    hosts(&app, "old", "fra1", "r2", 2, 4).await;
    demand_history(&app, "old", 8, |d, _| 4.0 * 1.02f64.powf(d)).await;
    job(&app).await;
    let mails = smtp.wait_for(1, 20).await;
    assert!(subject(&mails[0]).contains("Capacity runs short"));
    // It links the pool's capacity page.
    assert!(mails[0].contains("/capacity/pools/old"), "{}", mails[0]);
    for i in 0..2 {
        app.store
            .remove_host(&format!("old-{i}"), "test")
            .await
            .unwrap();
    }
    resolves_at_the_next_run(&app, &smtp).await;
    app.stop().await;
}

#[tokio::test]
async fn the_capacity_rule_fires_once_with_the_plan_and_resolves_when_it_changes() {
    let (smtp, app, _rules) = rule_app().await;
    hosts(&app, "train", "fra1", "r2", 5, 4).await;
    demand_history(&app, "train", 20, |d, _| 10.0 * 1.02f64.powf(d)).await;
    job(&app).await;
    let mails = smtp.wait_for(1, 20).await;
    assert_eq!(mails.len(), 1);
    assert!(
        subject(&mails[0]).contains("Capacity runs short"),
        "{}",
        subject(&mails[0])
    );
    assert!(
        mails[0].contains("pool train") && mails[0].contains("add "),
        "the plan is in the mail"
    );
    // The mail says where (the pool), and the alerts page links the pool's page.
    assert!(
        subject(&mails[0]).ends_with(" pool train") && mails[0].contains("Where:   pool train"),
        "{}",
        mails[0]
    );
    let cookie = app.login("admin", "pw-capacity-rule").await;
    let (_, html) = app.page(&cookie, "/alerts").await;
    assert!(
        html.contains(r#"<a href="/capacity/pools/train">pool train</a>"#),
        "{html}"
    );
    // More rounds of evaluation do not mail again.
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 1);
    // The pool gets 5 more hosts of 4 GPUs: the plan no longer needs more, it resolves.
    hosts(&app, "train", "fra1", "r2", 10, 4).await;
    sqlx::query("UPDATE pool_demand SET installed_gpus = 40 WHERE pool = 'train'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    resolves_at_the_next_run(&app, &smtp).await;
    app.stop().await;
}

/// A rule matching a site watches the pools with hosts there (a pool may span sites),
/// not only that site's racks.
#[tokio::test]
async fn a_site_matched_capacity_rule_watches_the_pools_with_hosts_there() {
    let (smtp, app, _rules) = rule_app_with(&RULES.replace(
        "lead_days = 10",
        "lead_days = 10\nmatch = { site = \"fra1\" }",
    ))
    .await;
    hosts(&app, "here", "fra1", "r2", 2, 4).await;
    hosts(&app, "there", "ams2", "r1", 2, 4).await;
    for pool in ["here", "there"] {
        demand_history(&app, pool, 8, |d, _| 4.0 * 1.02f64.powf(d)).await;
    }
    job(&app).await;
    let mails = smtp.wait_for(1, 20).await;
    assert!(
        subject(&mails[0]).ends_with(" pool here"),
        "{}",
        subject(&mails[0])
    );
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 1, "the pool at ams2 is not this rule's");
    app.stop().await;
}

#[tokio::test]
async fn capacity_history_past_retention_is_deleted() {
    let app = TestApp::spawn().await;
    let now = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    for days in [100, 10] {
        let t = now - Duration::days(days);
        sqlx::query(
            "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
             VALUES ('p', $1, 1, 1, 0, 2)",
        )
        .bind(t)
        .execute(&app.store.pool)
        .await
        .unwrap();
        app.store.record_queue("p", t, 3.0, "slurm").await.unwrap();
        sqlx::query("INSERT INTO capacity_history (pool, hour, recommended) VALUES ('p', $1, 2)")
            .bind(t)
            .execute(&app.store.pool)
            .await
            .unwrap();
    }
    let deleted = app
        .store
        .drop_capacity_history_before(now - Duration::days(90))
        .await
        .unwrap();
    assert_eq!(deleted, 3, "the 100-day-old row of each table");
    for (table, column) in [
        ("pool_demand", "bucket"),
        ("pool_queue", "ts"),
        ("capacity_history", "hour"),
    ] {
        let left: Vec<DateTime<Utc>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {column} FROM {table}")))
                .fetch_all(&app.store.pool)
                .await
                .unwrap();
        assert_eq!(left, vec![now - Duration::days(10)], "{table}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_chart_point_is_its_busiest_slot_not_a_mix_of_slots() {
    let app = TestApp::spawn().await;
    let t = Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(2);
    // One 30-minute point: the most work in one slot, the longest queue in another, the
    // highest demand (31) in the second; the maxima of each (41) were never one slot's.
    for (min, util, queued) in [(0, 30.0f32, 0.0f32), (5, 20.0, 11.0), (10, 25.0, 0.0)] {
        sqlx::query(
            "INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
             VALUES ('p', $1, $2, $2, $3, 32)",
        )
        .bind(t + Duration::minutes(min))
        .bind(util)
        .bind(queued)
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    let points = app
        .store
        .pool_demand_series("p", t - Duration::hours(1), t + Duration::hours(1), 1800)
        .await
        .unwrap();
    assert_eq!(points.len(), 1);
    let p = &points[0];
    assert_eq!(p.bucket, t);
    assert_eq!((p.util_gpus, p.queued_gpus), (20.0, 11.0), "{p:?}");
    assert_eq!(p.demand(), 31.0);
    app.stop().await;
}
