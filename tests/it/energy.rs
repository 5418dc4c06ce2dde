//! The weekly energy report end to end: samples → rollups → hourly accounting → report,
//! with exact expected kWh, cost and carbon (counter reset, sampling gap, a GPU without
//! an energy counter, a modeled host, a DST week in Europe/Berlin, ISO-week edges),
//! files read back by pandas/pyarrow, the energy page, facility meter readings, and the
//! weekly mail with its attachments at a real SMTP server.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};

use rackwatch::config::{Config, HostPowerModel, SiteEnergy, TouPeriod};
use rackwatch::model::{Batch, GpuSample, HostInfo, HostSample};
use rackwatch::report::{energy, export, IsoWeek};
use rackwatch::store::Store;

use crate::support::{SmtpServer, TestApp};

const J_PER_KWH: f64 = 3.6e6;

fn configure(cfg: &mut Config) {
    cfg.energy.time_zone = "Europe/Berlin".into();
    cfg.energy.idle_util_pct = 5.0;
    cfg.energy.default_host_model = HostPowerModel {
        idle_watts: 100.0,
        max_watts: 300.0,
    };
    cfg.energy.sites.insert(
        "fra1".into(),
        SiteEnergy {
            pue: 1.5,
            carbon_g_per_kwh: 400.0,
            price_per_kwh: 0.20,
            currency: "EUR".into(),
            time_of_use: vec![TouPeriod {
                days: ["mon", "tue", "wed", "thu", "fri"]
                    .map(String::from)
                    .to_vec(),
                start_hour: 8,
                end_hour: 20,
                price_per_kwh: 0.30,
            }],
        },
    );
}

/// What the test expects, accumulated independently of the accounting code: energy per
/// sample, priced and weighted by the local hour of the sample.
#[derive(Default, Debug)]
struct Expected {
    gpu0_j: f64,
    gpu1_j: f64,
    host_j: f64,
    cost: f64,
    carbon_g: f64,
    idle_j: f64,
}

impl Expected {
    fn add(&mut self, ts: DateTime<Utc>, j: f64, low_carbon_until: DateTime<Utc>, tz: Tz) {
        let local = ts.with_timezone(&tz);
        let weekday = local.weekday().num_days_from_monday() < 5;
        let price = if weekday && (8..20).contains(&local.hour()) {
            0.30
        } else {
            0.20
        };
        let g = if ts < low_carbon_until { 100.0 } else { 400.0 };
        let fac_kwh = j * 1.5 / J_PER_KWH;
        self.cost += fac_kwh * price;
        self.carbon_g += fac_kwh * g;
    }
}

async fn write(store: &Store, host: &HostInfo, hs: Vec<HostSample>, gs: Vec<GpuSample>) {
    let batch = Batch {
        host: host.clone(),
        host_samples: hs,
        gpu_samples: gs,
        ..Default::default()
    };
    store.write_batch(&batch, Utc::now()).await.unwrap();
}

/// One week of 1-minute samples for host h1 (fra1/r1/train), sampled at second 30:
/// GPU 0 has the energy counter (400 W, 50 % busy) with a 2-hour sampling gap and a
/// counter reset; GPU 1 has no counter (200 W, idle); the host has no RAPL (CPU 50 %:
/// 200 W with the 100/300 W model). Plus samples just outside the week on both sides.
async fn load_week(app: &TestApp, week: IsoWeek, tz: Tz) -> Expected {
    let start = week.start(tz);
    let end = week.end(tz);
    app.store
        .ensure_partitions(end + Duration::days(1), 10, 1)
        .await
        .unwrap();
    let host = HostInfo {
        name: "h1".into(),
        site: "fra1".into(),
        rack: "r1".into(),
        pool: "train".into(),
        ..Default::default()
    };
    let gap_from = start + Duration::hours(34); // Tuesday 10:00 local
    let gap_to = gap_from + Duration::hours(2);
    let reset_at = start + Duration::hours(60) + Duration::seconds(30);
    let low_carbon_until = start + Duration::hours(24);
    let mut exp = Expected::default();
    let mut counter = 5.0e9; // joules since the driver loaded
    let (mut hs, mut gs) = (Vec::new(), Vec::new());
    let mut t = start + Duration::seconds(30);
    let mut last_gpu0: Option<DateTime<Utc>> = None;
    while t < end {
        // Host: every minute.
        hs.push(HostSample {
            ts: t,
            cpu_util_pct: Some(50.0),
            ..Default::default()
        });
        exp.host_j += 200.0 * 60.0;
        exp.add(t, 200.0 * 60.0, low_carbon_until, tz);
        // GPU 1: power only.
        gs.push(GpuSample {
            ts: t,
            index: 1,
            util_pct: Some(0.0),
            power_watts: Some(200.0),
            ..Default::default()
        });
        exp.gpu1_j += 200.0 * 60.0;
        exp.idle_j += 200.0 * 60.0;
        exp.add(t, 200.0 * 60.0, low_carbon_until, tz);
        // GPU 0: counter deltas; nothing sampled in the gap, the counter keeps counting.
        if t < gap_from || t >= gap_to {
            let since = last_gpu0.map_or(60.0, |p| (t - p).num_seconds() as f64);
            let mut delta = 400.0 * since;
            counter += delta;
            if t == reset_at {
                // Driver reload 30 s before this sample: the counter restarts at zero.
                counter = 400.0 * 30.0;
                delta = counter;
            }
            gs.push(GpuSample {
                ts: t,
                index: 0,
                util_pct: Some(50.0),
                power_watts: Some(400.0),
                energy_joules_total: Some(counter),
                energy_joules: Some(delta),
                ..Default::default()
            });
            exp.gpu0_j += delta;
            exp.add(t, delta, low_carbon_until, tz);
            last_gpu0 = Some(t);
        }
        if gs.len() >= 20_000 {
            write(
                &app.store,
                &host,
                std::mem::take(&mut hs),
                std::mem::take(&mut gs),
            )
            .await;
        }
        t += Duration::minutes(1);
    }
    // Outside the week: Sunday 23:30 local before, Monday 00:30 local after. Their
    // energy must not count in this week (the first is last week's).
    for ts in [start - Duration::minutes(30), end + Duration::minutes(30)] {
        gs.push(GpuSample {
            ts,
            index: 0,
            util_pct: Some(50.0),
            power_watts: Some(400.0),
            energy_joules_total: Some(1e9),
            energy_joules: Some(1_000_000.0),
            ..Default::default()
        });
    }
    write(&app.store, &host, hs, gs).await;
    app.store
        .rollup_range(start - Duration::hours(2), end + Duration::hours(2), None)
        .await
        .unwrap();
    exp
}

/// The report's daily figures summed: its facility energy, when they add up.
fn days_kwh(r: &energy::EnergyReport) -> f64 {
    r.days
        .iter()
        .map(|d| d.gpu_busy_kwh + d.gpu_idle_kwh + d.host_kwh + d.overhead_kwh)
        .sum()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: got {a}, expected {b}"
    );
}

#[tokio::test]
async fn weekly_report_is_exact_across_reset_gap_missing_counter_and_dst() {
    let app = TestApp::spawn_with(configure).await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    // 2026-W43: daylight saving time ends on Sunday 25 October, so the week has 169 hours.
    let week: IsoWeek = "2026-W43".parse().unwrap();
    let exp = load_week(&app, week, tz).await;
    // Hourly carbon intensity for the first day (100 g/kWh), from CSV.
    let mut csv = String::from("hour,g_co2_per_kwh\n");
    for h in 0..24 {
        csv.push_str(&format!(
            "{},100\n",
            (week.start(tz) + Duration::hours(h)).to_rfc3339()
        ));
    }
    let (good, bad) = rackwatch::report::inputs::parse_carbon_csv(&csv);
    assert!(bad.is_empty(), "{bad:?}");
    rackwatch::report::inputs::store_carbon(&app.store, "fra1", &good)
        .await
        .unwrap();

    let now = week.end(tz) + Duration::hours(12);
    let run = rackwatch::analytics::energy::run(&app.store, &app.cfg.energy, now)
        .await
        .unwrap();
    assert!(run.rows > 0, "{run:?}");
    let r = energy::build(&app.store, &app.cfg.energy, week, None, now)
        .await
        .unwrap();
    assert!(
        !r.partial(),
        "the whole week is accounted: {:?}",
        r.accounted_until
    );
    assert_eq!((r.end - r.start).num_hours(), 169);

    let fleet = r.total();
    assert_eq!(fleet.level, "fleet");
    assert_eq!(fleet.gpus, 2);
    let kwh = |j: f64| j / J_PER_KWH;
    let it = kwh(exp.gpu0_j + exp.gpu1_j + exp.host_j);
    close(
        fleet.measured_energy_kwh,
        kwh(exp.gpu0_j),
        "measured (GPU 0 counter)",
    );
    close(
        fleet.estimated_energy_kwh,
        kwh(exp.gpu1_j),
        "estimated (GPU 1 power)",
    );
    assert!(
        r.notes.iter().any(|n| n.ends_with(
            "kWh of GPU energy are estimated from sampled power: minutes with no energy counter delta (GPUs without a counter, a counter's first reading, the first reading after a gap or a reset)."
        )),
        "{:?}",
        r.notes
    );
    // Every day of the week has data: no day is named as missing.
    assert!(
        r.notes
            .iter()
            .all(|n| !n.starts_with("No energy was accounted on")),
        "{:?}",
        r.notes
    );
    close(fleet.modeled_energy_kwh, kwh(exp.host_j), "modeled (host)");
    close(fleet.it_energy_kwh, it, "IT energy");
    close(
        fleet.gpu_energy_kwh,
        kwh(exp.gpu0_j + exp.gpu1_j),
        "GPU energy",
    );
    close(fleet.facility_energy_kwh, it * 1.5, "facility energy");
    close(fleet.pue.unwrap(), 1.5, "PUE");
    assert_eq!(fleet.pue_source, "configured");
    close(
        fleet.cost.unwrap(),
        exp.cost,
        "cost with time-of-use tariff",
    );
    assert_eq!(fleet.currency, "EUR");
    close(
        fleet.carbon_kg,
        exp.carbon_g / 1000.0,
        "carbon with hourly intensity",
    );
    close(
        fleet.idle_gpu_energy_kwh,
        kwh(exp.idle_j),
        "idle GPU energy",
    );
    assert_eq!(fleet.counter_resets, 1);
    // The gap (2 h of GPU 0) is the only missing data: 3 entities × 10,140 minutes.
    let coverage = 100.0 * (3.0 * 10_140.0 - 120.0) / (3.0 * 10_140.0);
    close(fleet.coverage_pct.unwrap(), coverage, "coverage");
    close(
        fleet.idle_gpu_hours,
        169.0,
        "idle GPU-hours (GPU 1 all week)",
    );
    close(
        fleet.busy_gpu_hours,
        (10_140.0 - 120.0) / 60.0,
        "busy GPU-hours",
    );
    // Last week holds only the sample at Sunday 23:30 local: 1 MJ.
    close(
        fleet.prev_week_it_energy_kwh.expect("last week's energy"),
        kwh(1_000_000.0),
        "last week's energy",
    );

    let gpu0 = r
        .level("gpu")
        .find(|g| g.gpu_index == Some(0))
        .expect("GPU 0 line");
    close(gpu0.it_energy_kwh, kwh(exp.gpu0_j), "GPU 0 line");
    assert_eq!(gpu0.counter_resets, 1);
    assert_eq!(gpu0.estimated_energy_kwh, 0.0);
    let host = r.level("host").next().expect("host line");
    close(host.host_energy_kwh, kwh(exp.host_j), "host non-GPU energy");
    assert!(r.level("site").any(|s| s.site == "fra1"));
    assert!(r.level("rack").any(|s| s.rack == "r1"));
    assert!(r.level("pool").any(|s| s.pool == "train"));
    // GPU 1 idled all week: consolidation is recommended.
    assert!(
        r.actions
            .iter()
            .any(|a| a.title.contains("Consolidate idle GPUs in pool train")
                && a.detail.contains(" EUR). Pack work")),
        "{:?}",
        r.actions
    );
    // Daily figures add up to the week (IT + overhead = facility).
    let days = days_kwh(&r);
    close(days, it * 1.5, "days add up to facility energy");

    // CSV and Parquet, read back by pandas and pyarrow.
    let dir = tempfile::tempdir().unwrap();
    for f in [export::Format::Csv, export::Format::Parquet] {
        let p = dir.path().join(export::file_name(&r, f));
        std::fs::write(&p, export::render(&r, f).unwrap()).unwrap();
        let sums = read_back(&p);
        close(
            sums["fleet_it_kwh"].as_f64().unwrap(),
            it,
            "file: fleet IT energy",
        );
        close(
            sums["gpu_lines_kwh"].as_f64().unwrap(),
            kwh(exp.gpu0_j + exp.gpu1_j),
            "file: sum of GPU lines",
        );
        close(sums["fleet_cost"].as_f64().unwrap(), exp.cost, "file: cost");
        close(
            sums["fleet_carbon_kg"].as_f64().unwrap(),
            exp.carbon_g / 1000.0,
            "file: carbon",
        );
        assert_eq!(
            sums["levels"],
            json!(["fleet", "gpu", "host", "pool", "rack", "site"])
        );
        assert_eq!(sums["week"], "2026-W43");
    }

    // The energy page, the files and the JSON API.
    let cookie = app.login("ops", "correct horse").await;
    let (status, html) = app.page(&cookie, "/energy?week=2026-W43").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Energy report 2026-W43"), "{html}");
    // The week never breaks at its hyphen on a phone.
    assert!(
        html.contains(r#"<h1>Energy report <span class="nw">2026-W43</span></h1>"#),
        "{html}"
    );
    assert!(html.contains("/energy/reports/2026-W43.parquet"));
    // Its 169 hours are seven days, not eight.
    let row = html
        .split("<tr")
        .find(|r| r.contains(">2026-W43</a>"))
        .expect("the week in the list");
    assert!(row.contains(r#"<td class="num">7 / 7</td>"#), "{row}");
    assert!(html.contains("Consolidate idle GPUs"));
    let idle_pools = &html[html
        .find("Top pools by idle GPU waste")
        .expect("idle pools table")..];
    assert!(idle_pools[..idle_pools.find("</table>").unwrap()].contains("<td>train</td>"));
    // The file name names the week: another in the query is an error, not ignored.
    let resp = app
        .get(&cookie, "/energy/reports/2026-W43.csv?week=2026-W42")
        .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("leave out `week`"));
    // The same week in any spelling is fine, and so is a running week's `-partial` name.
    for path in [
        "/energy/reports/2026-W43.csv?week=2026-w43",
        "/energy/reports/2026-W43-partial.csv",
    ] {
        assert_eq!(app.get(&cookie, path).await.status(), 200, "{path}");
    }
    let resp = app.get(&cookie, "/energy/reports/2026-W43.csv").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("rackwatch-energy-2026-W43.csv"));
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with("week,period_start,period_end,accounted_until,level,"),
        "{body}"
    );
    // Figures carry twelve significant digits at most, not the arithmetic's last bits.
    let noisy: Vec<&str> = body
        .split([',', '\n'])
        .filter(|f| f.parse::<f64>().is_ok())
        .filter(|f| {
            let digits: String = f.chars().filter(char::is_ascii_digit).collect();
            digits.trim_start_matches('0').trim_end_matches('0').len() > 12
        })
        .collect();
    assert!(noisy.is_empty(), "{noisy:?}");
    let api: Value = app
        .get(&cookie, "/api/v1/energy/weekly?week=2026-W43&site=fra1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["rows"][0]["level"], "site");
    // Every row of a site's report is of that site, its pools' shares too.
    let rows = api["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["level"] == "pool"), "{api}");
    assert!(rows.iter().all(|r| r["site"] == "fra1"), "{api}");
    // A finished week is accounted to its end, as its CSV says (not to the job's last hour).
    assert_eq!(api["partial"], false);
    assert_eq!(
        api["accounted_until"], api["end"],
        "{}",
        api["accounted_until"]
    );
    close(
        api["rows"][0]["it_energy_kwh"].as_f64().unwrap(),
        it,
        "API site line",
    );
    // A week before any data says so, rather than reading as a week of zero energy.
    let empty: Value = app
        .get(&cookie, "/api/v1/energy/weekly?week=2026-W30")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        empty["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("No data in this week")),
        "{empty}"
    );
    assert!(!api["notes"].to_string().contains("No data in this week"));
    for (url, status) in [
        ("/api/v1/energy/weekly?week=2026-43", 400),
        ("/api/v1/energy/weekly?week=2026-W43&site=nowhere", 404),
        ("/api/v1/energy/weekly?week=2099-W01", 400),
        ("/energy/reports/2026-W43.xlsx", 404),
        // An empty week's table is not a table of zeros; its printable report says why.
        ("/energy/reports/2026-W30.csv", 404),
        ("/energy/reports/2026-W30.parquet", 404),
        ("/energy/reports/2026-W30.html", 200),
    ] {
        let r = app.get(&cookie, url).await;
        assert_eq!(r.status().as_u16(), status, "{url}");
    }
    app.stop().await;
}

/// Sums over a report file, computed by pandas (CSV) or pyarrow (Parquet).
fn read_back(path: &std::path::Path) -> Value {
    let script = r#"
import json, os, sys
import pandas as pd
p = sys.argv[1]
df = pd.read_parquet(p, engine="pyarrow") if p.endswith(".parquet") else pd.read_csv(p)
fleet = df[df.level == "fleet"].iloc[0]
print(json.dumps({
    "week": str(fleet.week),
    "fleet_it_kwh": float(fleet.it_energy_kwh),
    "fleet_cost": float(fleet.cost),
    "fleet_carbon_kg": float(fleet.carbon_kg),
    "gpu_lines_kwh": float(df[df.level == "gpu"].gpu_energy_kwh.sum()),
    "levels": sorted(df.level.unique().tolist()),
}))
# Leave without interpreter teardown: pyarrow 26's thread pools can abort it
# ("terminate called without an active exception") after the answer is printed.
sys.stdout.flush()
os._exit(0)
"#;
    let py = std::env::var("RACKWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(py)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python with pandas and pyarrow (scripts/test installs them)");
    assert!(
        out.status.success(),
        "pandas could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An app for a one-day energy test: the configured sites, and partitions for 2026-W44
/// (Europe/Berlin), whose first day the test fills.
async fn one_day_app() -> (TestApp, IsoWeek, Tz) {
    let app = TestApp::spawn_with(configure).await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let week: IsoWeek = "2026-W44".parse().unwrap();
    app.store
        .ensure_partitions(week.end(tz) + Duration::days(1), 10, 1)
        .await
        .unwrap();
    (app, week, tz)
}

/// Store one day of GPU samples of host `name` in fra1 (the first day of `week`), roll them
/// up, account the energy and build the week's report.
async fn one_day_report(
    app: &TestApp,
    name: &str,
    gs: Vec<GpuSample>,
    week: IsoWeek,
    tz: Tz,
) -> energy::EnergyReport {
    let start = week.start(tz);
    let host = HostInfo {
        name: name.into(),
        site: "fra1".into(),
        ..Default::default()
    };
    write(&app.store, &host, Vec::new(), gs).await;
    app.store
        .rollup_range(start - Duration::hours(1), start + Duration::days(1), None)
        .await
        .unwrap();
    account_and_build(app, week, week.end(tz) + Duration::hours(12)).await
}

/// A server configured as [`configure`] does, its energy weeks in `zone`.
async fn app_in(zone: &'static str) -> (TestApp, Tz) {
    let app = TestApp::spawn_with(move |c| {
        configure(c);
        c.energy.time_zone = zone.into();
    })
    .await;
    (app, zone.parse().unwrap())
}

/// In a zone half an hour off UTC's hours (India), the week's first UTC hour starts at
/// 23:30 on Sunday: its energy is Monday's in the daily figures, which add up to the week.
#[tokio::test]
async fn daily_figures_add_up_in_a_half_hour_time_zone() {
    let (app, tz) = app_in("Asia/Kolkata").await;
    let week: IsoWeek = "2026-W47".parse().unwrap();
    let first_utc_hour = week.start(tz) - Duration::minutes(30);
    app.store
        .ensure_partitions(week.end(tz) + Duration::days(1), 10, 1)
        .await
        .unwrap();
    let gs: Vec<GpuSample> = (0..120)
        .map(|m| GpuSample {
            ts: first_utc_hour + Duration::minutes(m) + Duration::seconds(30),
            index: 0,
            util_pct: Some(50.0),
            power_watts: Some(300.0),
            ..Default::default()
        })
        .collect();
    let r = one_day_report(&app, "in-1", gs, week, tz).await;
    let total = r.total();
    assert!(total.facility_energy_kwh > 0.0);
    let days = days_kwh(&r);
    close(days, total.facility_energy_kwh, "days add up to the week");
    assert!(r.days[0].gpu_busy_kwh > 0.0, "{:?}", r.days[0]);
    app.stop().await;
}

/// Account the energy up to `now` and build `week`'s report as of then.
async fn account_and_build(
    app: &TestApp,
    week: IsoWeek,
    now: DateTime<Utc>,
) -> energy::EnergyReport {
    rackwatch::analytics::energy::run(&app.store, &app.cfg.energy, now)
        .await
        .unwrap();
    energy::build(&app.store, &app.cfg.energy, week, None, now)
        .await
        .unwrap()
}

/// A GPU that reports only its total-energy counter (Prometheus remote write from DCGM,
/// the simulator, older agents): the server differences it. A difference no GPU could
/// draw is two counters mixed, not energy: for an hour a second source reports the same
/// GPU with another counter (samples interleaved), and later the GPU is renumbered (the
/// counter jumps by 3 GJ). Those samples are estimated from power; a real reset still
/// counts from zero. Before, the mixed hour alone counted ~1,000 kWh per sample.
#[tokio::test]
async fn a_counter_mixed_with_another_is_not_counted_as_energy() {
    let (app, week, tz) = one_day_app().await;
    let start = week.start(tz);
    let sample = |ts, counter| GpuSample {
        ts,
        index: 0,
        util_pct: Some(60.0),
        power_watts: Some(400.0),
        energy_joules_total: Some(counter),
        ..Default::default()
    };
    let (mut gs, mut counter) = (Vec::new(), 5.0e9);
    let mut other = 1.0e9;
    for m in 0..1440 {
        let t = start + Duration::minutes(m) + Duration::seconds(30);
        counter += 400.0 * 60.0;
        if m == 360 {
            counter = 400.0 * 30.0; // driver reload 30 s before this sample
        }
        if m == 600 {
            counter += 3.0e9; // renumbered: now another GPU's counter
        }
        if (120..180).contains(&m) {
            other += 400.0 * 60.0;
            gs.push(sample(t - Duration::seconds(30), other));
        }
        gs.push(sample(t, counter));
    }
    let r = one_day_report(&app, "mix", gs, week, tz).await;
    let fleet = r.total();
    // Nothing the week before: no figure, not 0 kWh.
    assert_eq!(fleet.prev_week_it_energy_kwh, None);
    assert_eq!(fleet.wow_change_pct, None);
    // 400 W all day, less the 30 s before the reset that no counter saw.
    let expected = (400.0 * 60.0 * 1440.0 - 400.0 * 30.0) / J_PER_KWH;
    close(fleet.gpu_energy_kwh, expected, "GPU energy");
    // The first sample (no predecessor), the mixed hour and the renumbering are estimated
    // from power; the rest is measured.
    close(
        fleet.estimated_energy_kwh,
        400.0 * 60.0 * (1.0 + 60.0 + 1.0) / J_PER_KWH,
        "estimated",
    );
}

/// A 167-hour week (daylight saving time starts) is compared with all of last week's 168
/// hours, its last hour included, not with its first 167.
#[tokio::test]
async fn a_short_dst_week_is_compared_with_all_of_last_week() {
    let app = TestApp::spawn_with(configure).await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    // 2026-W13: the clocks go forward on Sunday 29 March.
    let week: IsoWeek = "2026-W13".parse().unwrap();
    load_week(&app, week, tz).await;
    let now = week.end(tz) + Duration::hours(12);
    rackwatch::analytics::energy::run(&app.store, &app.cfg.energy, now)
        .await
        .unwrap();
    let r = energy::build(&app.store, &app.cfg.energy, week, None, now)
        .await
        .unwrap();
    assert_eq!((r.end - r.start).num_hours(), 167);
    assert!(!r.partial());
    // Last week holds only the sample in its last hour (Sunday 23:30 local): 1 MJ.
    close(
        r.total()
            .prev_week_it_energy_kwh
            .expect("last week's energy"),
        1_000_000.0 / J_PER_KWH,
        "last week's energy, its last hour included",
    );
    app.stop().await;
}

/// In a zone half an hour off UTC's hours (India), the energy page's list of weeks counts
/// the same whole UTC hours as the report: it used to start half an hour later and drop
/// the week's first accounting hour.
#[tokio::test]
async fn the_week_list_and_the_report_agree_in_a_half_hour_zone() {
    let (app, tz) = app_in("Asia/Kolkata").await;
    let now = Utc::now();
    let week = IsoWeek::containing(now, tz).prev();
    load_week(&app, week, tz).await;
    rackwatch::analytics::energy::run(&app.store, &app.cfg.energy, now)
        .await
        .unwrap();
    let r = energy::build(&app.store, &app.cfg.energy, week, None, now)
        .await
        .unwrap();
    let want = rackwatch::report::export::fmt_kwh(r.total().it_energy_kwh);
    let cookie = app.login("ops", "correct horse").await;
    let (status, page) = app.page(&cookie, &format!("/energy?week={week}")).await;
    assert_eq!(status, 200);
    let row = page
        .split("<tr")
        .find(|r| r.contains(&format!(">{week}</a>")) && r.contains(" / 7</td>"))
        .unwrap_or_else(|| panic!("no row for {week}: {page}"));
    assert!(
        row.contains(&format!(r#"<td class="num">{want}</td>"#)),
        "the list says otherwise than the report ({want}): {row}"
    );
    app.stop().await;
}

/// A running week is compared with the same hours of last week: on Tuesday, this week's
/// Monday against last week's Monday, not against all of last week (which read −50 %
/// here, with last Friday's day in it).
#[tokio::test]
async fn a_running_week_is_compared_with_the_same_hours_of_last_week() {
    let (app, week, tz) = one_day_app().await;
    let start = week.start(tz);
    app.store
        .ensure_partitions(week.end(tz) + Duration::days(1), 16, 1)
        .await
        .unwrap();
    let host = HostInfo {
        name: "wow".into(),
        site: "fra1".into(),
        ..Default::default()
    };
    // 300 W all day on last Monday, last Friday and this Monday.
    let mut gs = Vec::new();
    for day in [start - Duration::days(7), start - Duration::days(3), start] {
        for m in 0..1440 {
            gs.push(GpuSample {
                ts: day + Duration::minutes(m) + Duration::seconds(30),
                index: 0,
                util_pct: Some(50.0),
                power_watts: Some(300.0),
                ..Default::default()
            });
        }
    }
    write(&app.store, &host, Vec::new(), gs).await;
    app.store
        .rollup_range(
            start - Duration::days(8),
            start + Duration::days(1) + Duration::hours(1),
            None,
        )
        .await
        .unwrap();
    // Tuesday 02:00: this week's first 26 hours are accounted.
    let r = account_and_build(&app, week, start + Duration::hours(26)).await;
    assert!(r.partial(), "{:?}", r.accounted_until);
    let fleet = r.total();
    let day_kwh = 300.0 * 86_400.0 / J_PER_KWH;
    close(fleet.gpu_energy_kwh, day_kwh, "this week's Monday");
    close(
        fleet.prev_week_it_energy_kwh.expect("last week's energy"),
        day_kwh,
        "last week's same hours (Monday)",
    );
    assert!(
        fleet.wow_change_pct.is_some_and(|v| v.abs() < 1.0),
        "{:?}",
        fleet.wow_change_pct
    );
    let html = export::to_html(&r).unwrap();
    assert!(
        html.contains("same hours last week"),
        "the figure says what it compares"
    );
    // The files say so too: named partial, and each row says how far hours are accounted.
    let until = r.accounted_until.expect("accounted").with_timezone(&tz);
    assert!(until < week.end(tz) && until > start, "{until}");
    let until = until.to_rfc3339();
    for f in [
        export::Format::Csv,
        export::Format::Parquet,
        export::Format::Html,
    ] {
        let name = export::file_name(&r, f);
        assert!(
            name.ends_with(&format!("-partial.{}", f.extension())),
            "{name}"
        );
    }
    let csv = String::from_utf8(export::to_csv(&r).unwrap()).unwrap();
    let second = csv.lines().nth(1).unwrap();
    assert_eq!(second.split(',').nth(3), Some(until.as_str()), "{second}");

    // Tuesday's first two hours had no host reporting: the notes say which days the
    // totals leave out.
    let day = |d: i64| {
        (start + Duration::days(d))
            .with_timezone(&tz)
            .format("%Y-%m-%d")
            .to_string()
    };
    assert!(
        r.notes.contains(&format!(
            "No energy was accounted on {} (no host reported then): the totals cover 1 of the week's 2 accounted days.",
            day(1)
        )),
        "{:?}",
        r.notes
    );

    // Once the week is complete, all of last week is the comparison.
    let r = account_and_build(&app, week, week.end(tz) + Duration::hours(1)).await;
    assert!(!r.partial());
    let empty: Vec<String> = (1..7).map(day).collect();
    assert!(
        r.notes.contains(&format!(
            "No energy was accounted on {} (no host reported then): the totals cover 1 of the week's 7 days.",
            empty.join(", ")
        )),
        "{:?}",
        r.notes
    );
    let name = export::file_name(&r, export::Format::Csv);
    assert!(!name.contains("partial"), "{name}");
    let csv = String::from_utf8(export::to_csv(&r).unwrap()).unwrap();
    let second = csv.lines().nth(1).unwrap();
    let end = week.end(tz).with_timezone(&tz).to_rfc3339();
    assert_eq!(second.split(',').nth(3), Some(end.as_str()), "{second}");
    close(
        r.total()
            .prev_week_it_energy_kwh
            .expect("last week's energy"),
        2.0 * day_kwh,
        "all of last week",
    );
}

/// A GPU reported by its agent (counter and per-sample delta) and by Prometheus remote
/// write from DCGM (the bare counter) at other instants counts once: each sample's
/// difference to the previous one, whoever sent it. Summing the agent's deltas and the
/// remote counter's differences counted the overlapping intervals twice (1.5× here).
#[tokio::test]
async fn a_gpu_reported_by_an_agent_and_by_remote_write_counts_once() {
    let (app, week, tz) = one_day_app().await;
    let start = week.start(tz);
    let counter = |t: DateTime<Utc>| 7.0e9 + 400.0 * (t - start).num_seconds() as f64;
    let mut gs = Vec::new();
    for m in 0..1440 {
        let agent_t = start + Duration::minutes(m) + Duration::seconds(30);
        gs.push(GpuSample {
            ts: agent_t,
            index: 0,
            util_pct: Some(60.0),
            power_watts: Some(400.0),
            energy_joules_total: Some(counter(agent_t)),
            energy_joules: (m > 0).then_some(400.0 * 60.0),
            ..Default::default()
        });
        if m > 0 {
            let rw_t = start + Duration::minutes(m);
            gs.push(GpuSample {
                ts: rw_t,
                index: 0,
                power_watts: Some(400.0),
                energy_joules_total: Some(counter(rw_t)),
                ..Default::default()
            });
        }
    }
    let r = one_day_report(&app, "both", gs, week, tz).await;
    // Measured from 00:00:30 to 23:59:30; the first minute (no predecessor) from power.
    let fleet = r.total();
    close(
        fleet.gpu_energy_kwh,
        400.0 * 86_400.0 / J_PER_KWH,
        "GPU energy",
    );
    close(
        fleet.estimated_energy_kwh,
        400.0 * 60.0 / J_PER_KWH,
        "estimated",
    );
}

#[tokio::test]
async fn facility_meter_readings_make_the_pue_measured() {
    let app = TestApp::spawn_with(|c| {
        c.energy.sites.insert(
            "ams2".into(),
            SiteEnergy {
                pue: 1.6,
                ..Default::default()
            },
        );
    })
    .await;
    let token = app.token("m1").await;
    let tz = app.cfg.energy.tz();
    let now = Utc::now();
    // Two whole hours of one week: of the current week, or of last week early on a
    // Monday (an hour earlier when the two would straddle the week's start).
    let h0 = (now - Duration::hours(3))
        .with_minute(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    let last = h0 + Duration::hours(2) - Duration::seconds(1);
    let h0 = if IsoWeek::containing(last, tz) == IsoWeek::containing(h0, tz) {
        h0
    } else {
        h0 - Duration::hours(1)
    };
    let week = IsoWeek::containing(h0, tz);
    let samples: Vec<Value> = (0..120)
        .map(|m| {
            json!({"ts": h0 + Duration::minutes(m) + Duration::seconds(10), "index": 0,
            "util_pct": 90.0, "power_watts": 500.0, "energy_joules": 30000.0})
        })
        .collect();
    let host: Vec<Value> = (0..120)
        .map(|m| {
            json!({"ts": h0 + Duration::minutes(m) + Duration::seconds(10), "cpu_util_pct": 10.0,
            "energy_joules": 6000.0})
        })
        .collect();
    let body = json!({"host": {"name": "m1", "site": "ams2"}, "gpu_samples": samples, "host_samples": host});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    app.store
        .rollup_range(h0, h0 + Duration::hours(2), None)
        .await
        .unwrap();
    rackwatch::analytics::energy::account_range(
        &app.store,
        &app.cfg.energy,
        h0,
        h0 + Duration::hours(2),
        None,
    )
    .await
    .unwrap();
    // IT: GPU 500 W + host RAPL 100 W for 2 h = 1.2 kWh. The meter says 1.56 kWh.
    let admin = app.login("ops", "correct horse").await;
    let readings = json!([
        {"site": "ams2", "start": h0, "end": h0 + Duration::hours(2), "energy_kwh": 1.56},
        {"site": "ams2", "start": h0, "end": h0 - Duration::hours(1), "energy_kwh": 1.0},
        {"site": "ams2", "start": h0 - Duration::hours(5), "end": h0 - Duration::hours(4), "energy_kwh": -3.0},
        {"site": "ams2", "start": h0 - Duration::hours(6), "end": h0 - Duration::hours(5), "energy_kwh": "1.2"},
        {"site": "ams2", "start": h0 - Duration::hours(6)}
    ]);
    let resp = send_readings(&app, &admin, &readings).await;
    // A reading that does not decode is rejected at its index like one that fails its
    // checks; the good one is stored either way.
    assert_eq!(resp["stored"], 1, "{resp}");
    assert_eq!(resp["rejected"], 4);
    let errors: Vec<(u64, &str)> = resp["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{resp}"
    );
    assert!(errors[0].1.contains("not after"), "{resp}");
    assert!(
        errors[2].1.starts_with("energy_kwh: invalid type: string"),
        "{resp}"
    );
    assert!(errors[3].1.contains("missing field `end`"), "{resp}");
    assert_eq!(resp["unknown_sites"], json!([]), "ams2 has a host");
    // A reading for a site no host reports (a typo) is kept, and the answer names it.
    let typo = json!([
        {"site": "AMS2", "start": h0 - Duration::hours(8), "end": h0 - Duration::hours(7), "energy_kwh": 0.5},
        {"site": "ams2", "start": h0 - Duration::hours(8), "end": h0 - Duration::hours(7), "energy_kwh": 0.5}
    ]);
    let resp = send_readings(&app, &admin, &typo).await;
    assert_eq!(
        (resp["stored"].as_u64(), &resp["unknown_sites"]),
        (Some(2), &json!(["AMS2"])),
        "{resp}"
    );
    // A field given twice rejects its reading, by index, instead of storing it for the
    // last value; the other reading is stored.
    let twice = format!(
        r#"[{{"site":"lab9","start":"{a}","end":"{b}","energy_kwh":1,"site":"fra1"}},
            {{"site":"lab9","start":"{a}","end":"{b}","energy_kwh":0.5}}]"#,
        a = (h0 - Duration::hours(9)).to_rfc3339(),
        b = (h0 - Duration::hours(8)).to_rfc3339()
    );
    let resp: Value = app
        .post_json_text(&admin, "/api/v1/facility/readings", twice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["stored"], 1, "{resp}");
    assert_eq!(resp["errors"][0]["index"], 0, "{resp}");
    assert_eq!(
        resp["errors"][0]["reason"], "duplicate field `site`",
        "{resp}"
    );
    let fra1: i64 =
        sqlx::query_scalar("SELECT count(*) FROM facility_readings WHERE site = 'fra1'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(fra1, 0);
    // Many bad readings: all counted, the first 1,000 explained (the answer stays small).
    // Nothing stored: 422, so that a script's `curl -f` notices.
    let zeros = format!("[{}]", vec!["0"; 5000].join(","));
    let r = app
        .post_json_text(&admin, "/api/v1/facility/readings", zeros)
        .await;
    assert_eq!(r.status(), 422);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(
        (resp["stored"].as_u64(), resp["rejected"].as_u64()),
        (Some(0), Some(5000))
    );
    assert_eq!(resp["errors"].as_array().unwrap().len(), 1000);
    // Past the most readings one request takes: refused while it is read.
    let many = format!(
        "[{}]",
        vec!["0"; rackwatch::web::energy::MAX_READINGS + 1].join(",")
    );
    let r = app
        .post_json_text(&admin, "/api/v1/facility/readings", many)
        .await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("readings in one request; send them in parts"));
    // Not JSON of the right shape: a clear 400.
    let r = app
        .post_json(
            &admin,
            "/api/v1/facility/readings",
            &json!({"site": "ams2"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("JSON array"));
    // Viewers may read reports but not send meter readings.
    let viewer = app
        .login_as(
            "vera",
            "pw-vera-viewer",
            rackwatch::store::auth::Role::Viewer,
        )
        .await;
    let r = app
        .post_json(&viewer, "/api/v1/facility/readings", &readings)
        .await;
    assert_eq!(r.status(), 403);

    let r = energy::build(&app.store, &app.cfg.energy, week, Some("ams2"), now)
        .await
        .unwrap();
    let site = r.total();
    assert_eq!(site.level, "site");
    close(site.it_energy_kwh, 1.2, "IT energy");
    close(
        site.measured_energy_kwh,
        1.2,
        "GPU counter + host RAPL are measured",
    );
    close(
        site.facility_energy_kwh,
        1.56,
        "facility energy from the meter",
    );
    close(site.pue.unwrap(), 1.3, "measured PUE");
    assert_eq!(site.pue_source, "measured");
    assert!(
        r.notes.iter().all(|n| !n.contains("facility readings")),
        "{:?}",
        r.notes
    );

    // A reading no facility could give (less than its IT energy: kWh sent for MWh, a
    // period off by hours) replaces the good one: its hours are left out, with a note,
    // and the configured PUE stands for them instead of 0.1 for the whole site.
    let wrong =
        json!([{"site": "ams2", "start": h0, "end": h0 + Duration::hours(2), "energy_kwh": 0.12}]);
    let resp = send_readings(&app, &admin, &wrong).await;
    assert_eq!(resp["stored"], 1, "{resp}");
    let r = energy::build(&app.store, &app.cfg.energy, week, Some("ams2"), now)
        .await
        .unwrap();
    let site = r.total();
    close(site.pue.unwrap(), 1.6, "the configured PUE");
    close(site.facility_energy_kwh, 1.92, "IT × the configured PUE");
    assert_eq!(site.pue_source, "configured");
    assert!(
        r.notes.iter().any(|n| n.starts_with(
            "Site ams2: facility readings of 2 hours left out: they give a PUE of 0.10"
        )),
        "{:?}",
        r.notes
    );

    // A reading that overlaps a stored one (not the one it replaces) is refused: the
    // overlap would count twice.
    let overlapping = json!([
        {"site": "ams2", "start": h0 + Duration::minutes(30), "end": h0 + Duration::minutes(90), "energy_kwh": 0.7}
    ]);
    let resp = send_readings(&app, &admin, &overlapping).await;
    assert_eq!(resp["stored"], 0, "{resp}");
    let reason = resp["errors"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("overlaps the stored reading of site ams2 from "),
        "{reason}"
    );
    // Within one upload too, and the errors come in the order sent.
    let within = json!([
        {"site": "zz9", "start": h0, "end": h0 + Duration::hours(1), "energy_kwh": 1.0},
        {"site": "zz9", "start": h0, "end": h0, "energy_kwh": 1.0},
        {"site": "zz9", "start": h0 + Duration::minutes(30), "end": h0 + Duration::minutes(90), "energy_kwh": 1.0}
    ]);
    let resp = send_readings(&app, &admin, &within).await;
    assert_eq!(resp["stored"], 1, "{resp}");
    let at: Vec<u64> = resp["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(at, [1, 2], "{resp}");
    assert!(
        resp["errors"][1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("overlaps the stored reading of site zz9 from "),
        "{resp}"
    );
    // A reading that covers the second hour only in part: that hour is not metered (its
    // PUE would be a quarter low), and the note says so; the first hour is.
    let part = json!([
        {"site": "ams2", "start": h0, "end": h0 + Duration::minutes(105), "energy_kwh": 1.365}
    ]);
    let resp = send_readings(&app, &admin, &part).await;
    assert_eq!(resp["stored"], 1, "{resp}");
    let r = energy::build(&app.store, &app.cfg.energy, week, Some("ams2"), now)
        .await
        .unwrap();
    let site = r.total();
    assert_eq!(site.pue_source, "partly measured");
    // Hour 1 metered: 1.365 × 60/105 = 0.78 kWh; hour 2: 0.6 kWh IT × 1.6.
    close(
        site.facility_energy_kwh,
        0.78 + 0.96,
        "one metered hour, one configured",
    );
    assert!(
        r.notes.iter().any(|n| n.starts_with(
            "Site ams2: facility readings cover 1 hour only in part or more than once"
        )),
        "{:?}",
        r.notes
    );
    app.stop().await;
}

/// Post facility meter readings as `cookie`'s user; the answer's JSON.
async fn send_readings(app: &TestApp, cookie: &str, readings: &Value) -> Value {
    app.post_json(cookie, "/api/v1/facility/readings", readings)
        .await
        .json()
        .await
        .unwrap()
}

/// A server that mails the weekly report to `to` through a real SMTP server on Mondays at
/// `hour`.
async fn mailing_app(hour: u32, to: &[&str]) -> (SmtpServer, TestApp) {
    let to: Vec<String> = to.iter().map(|t| t.to_string()).collect();
    let smtp = SmtpServer::start().await;
    let port = smtp.port;
    let app = TestApp::spawn_with(move |c| {
        configure(c);
        c.alerting.smtp.host = "127.0.0.1".into();
        c.alerting.smtp.port = port;
        c.alerting.smtp.security = "plain".into();
        c.energy.report.recipients = to;
        c.energy.report.send_weekday = "mon".into();
        c.energy.report.send_hour = hour;
    })
    .await;
    (smtp, app)
}

/// Mailed at midnight, the week's last hour is not accounted yet: the mail waits for it
/// instead of going out partial, once and for good. An address the mail server refuses
/// (550 5.1.1) does not keep it from the other.
#[tokio::test]
async fn a_weekly_mail_due_before_its_last_hour_is_accounted_waits_for_it() {
    let (smtp, app) = mailing_app(
        0,
        &[
            "nobody@example.com",
            "busy@example.com",
            "energy@example.com",
        ],
    )
    .await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let week: IsoWeek = "2026-W47".parse().unwrap();
    load_week(&app, week, tz).await;
    let telemetry = rackwatch::model::telemetry::Telemetry::new();
    // Monday 00:02 local: due, but the hour before midnight settles only at 00:05.
    let due = week.end(tz) + Duration::minutes(2);
    let sent = rackwatch::report::mail::send_due(&app.store, &app.cfg, due, &telemetry)
        .await
        .unwrap();
    assert_eq!(sent, None, "a partial week is not mailed");
    let sent = rackwatch::report::mail::send_due(
        &app.store,
        &app.cfg,
        due + Duration::hours(1),
        &telemetry,
    )
    .await
    .unwrap();
    assert_eq!(sent, Some(week));
    let mails = smtp.wait_for(1, 10).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("rackwatch-energy-2026-W47"),
        "attachments named"
    );
    assert!(!mails[0].contains("-partial"), "the whole week is attached");
    assert!(
        mails[0].contains("X-RcptTo: energy@example.com"),
        "{}",
        mails[0]
    );
    // Recorded as mailed to the address that got it, the greylisted one (451) pending;
    // the refusal (550 5.1.1) is in the audit log, and that address is done with.
    let delivery = || async {
        sqlx::query_as::<_, (String, Vec<String>)>(
            "SELECT recipients, pending FROM report_deliveries",
        )
        .fetch_one(&app.store.pool)
        .await
        .unwrap()
    };
    assert_eq!(
        delivery().await,
        (
            "energy@example.com".to_string(),
            vec!["busy@example.com".to_string()]
        )
    );
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'report.mailed'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    let missed = details["not_delivered"].to_string();
    assert!(
        missed.contains("nobody@example.com: permanent error (550)"),
        "{missed}"
    );
    // The next energy run sends the week to the deferred address only.
    let again = due + Duration::hours(1) + Duration::minutes(5);
    let sent = rackwatch::report::mail::send_due(&app.store, &app.cfg, again, &telemetry)
        .await
        .unwrap();
    assert_eq!(sent, Some(week));
    let mails = smtp.wait_for(2, 10).await;
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].contains("X-RcptTo: busy@example.com"),
        "{}",
        mails[1]
    );
    assert_eq!(
        delivery().await,
        ("energy@example.com, busy@example.com".to_string(), vec![])
    );
    let sent = rackwatch::report::mail::send_due(
        &app.store,
        &app.cfg,
        again + Duration::minutes(5),
        &telemetry,
    )
    .await
    .unwrap();
    assert_eq!(sent, None, "nothing left to send");
    assert_eq!(smtp.mails().len(), 2);
    let nobody = smtp
        .rcpt_asked()
        .iter()
        .filter(|a| a.as_str() == "nobody@example.com")
        .count();
    assert_eq!(nobody, 1, "the refused address is not tried again");
    // A deferral that lasts a day is given up, and said so.
    let later = again + Duration::minutes(10);
    sqlx::query("UPDATE report_deliveries SET pending = '{late@example.com}', sent_at = $1")
        .bind(later - Duration::hours(25))
        .execute(&app.store.pool)
        .await
        .unwrap();
    let sent = rackwatch::report::mail::send_due(&app.store, &app.cfg, later, &telemetry)
        .await
        .unwrap();
    assert_eq!(sent, None);
    assert_eq!(delivery().await.1, Vec::<String>::new());
    let gave_up: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'report.mailed' AND outcome = 'failed'
            AND details->'given_up' ? 'late@example.com'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(gave_up, 1);
    app.stop().await;
}

#[tokio::test]
async fn weekly_mail_arrives_once_with_csv_parquet_and_html_attached() {
    let (smtp, app) = mailing_app(6, &["energy@example.com"]).await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let week: IsoWeek = "2026-W47".parse().unwrap();
    let exp = load_week(&app, week, tz).await;
    let it = (exp.gpu0_j + exp.gpu1_j + exp.host_j) / J_PER_KWH;

    // Monday 05:59 local of the next week: not due yet.
    let monday = tz
        .with_ymd_and_hms(2026, 11, 23, 5, 59, 0)
        .unwrap()
        .with_timezone(&Utc);
    let telemetry = rackwatch::model::telemetry::Telemetry::new();
    let sent = rackwatch::report::mail::send_due(&app.store, &app.cfg, monday, &telemetry)
        .await
        .unwrap();
    assert_eq!(sent, None);
    let due = monday + Duration::minutes(2);
    let sent = rackwatch::report::mail::send_due(&app.store, &app.cfg, due, &telemetry)
        .await
        .unwrap();
    assert_eq!(sent, Some(week));
    let mails = smtp.wait_for(1, 10).await;
    assert_eq!(mails.len(), 1);
    let subject = crate::support::subject(&mails[0]);
    assert!(subject.contains("energy report 2026-W47"), "{subject}");
    // Sent once: a later run (or a restarted server) does not mail it again.
    let later = due + Duration::hours(1);
    let again = rackwatch::report::mail::send_due(&app.store, &app.cfg, later, &telemetry)
        .await
        .unwrap();
    assert_eq!(again, None);
    // The energy page says where and when the report goes, and the last one sent.
    let status = rackwatch::report::mail::status(&app.store, &app.cfg)
        .await
        .unwrap();
    assert!(
        status.starts_with("The weekly report is mailed to 1 recipient each Mon at 06:00 (Europe/Berlin); last: 2026-W47 at "),
        "{status}"
    );
    let mut unsent = (*app.cfg).clone();
    unsent.alerting.smtp.host.clear();
    let status = rackwatch::report::mail::status(&app.store, &unsent)
        .await
        .unwrap();
    assert!(status.contains("alerting.smtp.host is not"), "{status}");
    unsent.energy.report.recipients.clear();
    let status = rackwatch::report::mail::status(&app.store, &unsent)
        .await
        .unwrap();
    assert!(status.contains("set energy.report.recipients"), "{status}");
    // The one SMTP send was timed.
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, telemetry.registry()).unwrap();
    assert!(
        text.contains(
            "rackwatch_smtp_send_duration_seconds_count{mail=\"report\",outcome=\"sent\"} 1\n"
        ),
        "{text}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(smtp.mails().len(), 1);

    // The attachments, taken apart by Python's mail parser and read by pandas/pyarrow.
    let script = r#"
import email, io, json, os, sys
import pandas as pd
msg = email.message_from_binary_file(open(sys.argv[1], "rb"))
out = {"to": msg["To"], "files": {}}
for part in msg.walk():
    name = part.get_filename()
    if not name:
        continue
    data = part.get_payload(decode=True)
    if name.endswith(".csv"):
        df = pd.read_csv(io.BytesIO(data))
    elif name.endswith(".parquet"):
        df = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    else:
        out["files"][name] = {"html": b"Energy report 2026-W47" in data}
        continue
    out["files"][name] = {"it_kwh": float(df[df.level == "fleet"].it_energy_kwh.iloc[0]), "rows": len(df)}
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)  # no teardown: see read_back
"#;
    let file = ["new", "cur"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(smtp.maildir.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .next()
        .expect("mail file");
    let py = std::env::var("RACKWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(py)
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["to"], "energy@example.com");
    let files = v["files"].as_object().unwrap();
    assert_eq!(files.len(), 3, "{v}");
    for ext in ["csv", "parquet"] {
        let f = &files[&format!("rackwatch-energy-2026-W47.{ext}")];
        close(f["it_kwh"].as_f64().unwrap(), it, ext);
        assert!(f["rows"].as_u64().unwrap() >= 7, "{f}");
    }
    assert_eq!(files["rackwatch-energy-2026-W47.html"]["html"], true);

    // No server ran from before W48's send to after W49's: back on Tuesday of W50, the
    // missed W48 goes first, then W49, one a run; then nothing more.
    let back = tz
        .with_ymd_and_hms(2026, 12, 8, 9, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let mut caught_up = Vec::new();
    for k in 0..3 {
        let at = back + Duration::minutes(k);
        caught_up.push(
            rackwatch::report::mail::send_due(&app.store, &app.cfg, at, &telemetry)
                .await
                .unwrap()
                .map(|w| w.to_string()),
        );
    }
    assert_eq!(
        caught_up,
        [
            Some("2026-W48".to_string()),
            Some("2026-W49".to_string()),
            None
        ]
    );
    app.stop().await;
}

fn rackwatch(db_url: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(args)
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn report_commands_write_files_and_check_their_inputs() {
    let app = TestApp::spawn().await;
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    // The CLI reads weeks in its own configuration's zone (UTC by default): a week of
    // Berlin data spans two UTC weeks' edges by an hour, which is fine for this test.
    let week: IsoWeek = "2026-W45".parse().unwrap();
    load_week(&app, week, tz).await;
    let url = app.db_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("carbon.csv");
    std::fs::write(
        &csv,
        "hour,g_co2_per_kwh\n2026-11-02T00:00:00Z,250\n2026-11-02T01:00:00Z,not-a-number\n2026-11-02T02:00:00Z,260\n",
    )
    .unwrap();
    let out_file = dir.path().join("w45.parquet");
    let (csv_s, out_s) = (
        csv.to_string_lossy().into_owned(),
        out_file.to_string_lossy().into_owned(),
    );
    let (import, report, reading, bad_week) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(&url, &["report", "import-carbon", "--site", "fra1", &csv_s]),
            rackwatch(
                &url,
                &[
                    "report", "energy", "--week", "2026-W45", "--format", "parquet", "--out",
                    &out_s,
                ],
            ),
            rackwatch(
                &url,
                &[
                    "report",
                    "facility-reading",
                    "--site",
                    "fra1",
                    "--start",
                    "2026-11-02T02:00:00Z",
                    "--end",
                    "2026-11-02T01:00:00Z",
                    "--energy-kwh",
                    "10",
                ],
            ),
            rackwatch(
                &url,
                &["report", "energy", "--week", "2026-W60", "--out", "-"],
            ),
        )
    })
    .await
    .unwrap();
    // The import stores the good lines and names the bad one.
    assert!(!import.0, "a bad line makes the import fail");
    assert!(String::from_utf8_lossy(&import.1).contains("2 hours of carbon intensity stored"));
    assert!(
        import.2.contains("carbon.csv:3: g_co2_per_kwh"),
        "{}",
        import.2
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM grid_intensity WHERE site = 'fra1'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
    assert!(
        !import.2.contains("warning"),
        "fra1 has hosts: {}",
        import.2
    );
    // A reading for a site no host reports is stored, with a warning naming the site.
    let url = app.db_url.clone();
    let typo = tokio::task::spawn_blocking(move || {
        rackwatch(
            &url,
            &[
                "report",
                "facility-reading",
                "--site",
                "fra-1",
                "--start",
                "2026-11-02T01:00:00Z",
                "--end",
                "2026-11-02T02:00:00Z",
                "--energy-kwh",
                "10",
            ],
        )
    })
    .await
    .unwrap();
    assert!(typo.0, "{}", typo.2);
    assert!(
        typo.2
            .contains("warning: no host in the fleet reports site \"fra-1\""),
        "{}",
        typo.2
    );
    // A past week without data is written, and the summary says it has none (not a
    // complete week of zeros, no cost without a currency).
    let url = app.db_url.clone();
    let empty = tokio::task::spawn_blocking(move || {
        rackwatch(
            &url,
            &["report", "energy", "--week", "2026-W40", "--out", "-"],
        )
    })
    .await
    .unwrap();
    assert!(empty.0, "{}", empty.2);
    assert!(
        empty.2.contains("warning: no data in 2026-W40")
            && empty.2.contains("idle GPU 0.0 kWh; 1 line\n")
            && !empty.2.contains(" , "),
        "{}",
        empty.2
    );
    // The report file is written and readable by pyarrow.
    assert!(report.0, "{}", report.2);
    assert!(report.2.contains("2026-W45: IT "), "{}", report.2);
    let sums = read_back(&out_file);
    assert_eq!(sums["week"], "2026-W45");
    assert!(sums["fleet_it_kwh"].as_f64().unwrap() > 100.0, "{sums}");
    // Bad inputs are refused with the reason.
    assert!(!reading.0);
    assert!(reading.2.contains("is not after start"), "{}", reading.2);
    assert!(!bad_week.0);
    assert!(
        bad_week.2.contains("2026 has no ISO week 60"),
        "{}",
        bad_week.2
    );
    // The file's extension picks the format; a contradiction and a week that has not
    // started are errors, not an HTML file or an empty report.
    let url = app.db_url.clone();
    let csv_out = dir.path().join("w45.csv");
    let csv_s = csv_out.to_string_lossy().into_owned();
    let (by_ext, clash, future, unknown) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(
                &url,
                &["report", "energy", "--week", "2026-W45", "--out", &csv_s],
            ),
            rackwatch(
                &url,
                &[
                    "report", "energy", "--week", "2026-W45", "--format", "html", "--out", &csv_s,
                ],
            ),
            rackwatch(
                &url,
                &["report", "energy", "--week", "2099-W01", "--out", "-"],
            ),
            rackwatch(
                &url,
                &["report", "energy", "--week", "2026-W45", "--out", "w45.txt"],
            ),
        )
    })
    .await
    .unwrap();
    assert!(by_ext.0, "{}", by_ext.2);
    let written = std::fs::read_to_string(&csv_out).unwrap();
    assert!(
        written.starts_with("week,") || written.lines().next().unwrap().contains(','),
        "{}",
        &written[..written.len().min(200)]
    );
    assert!(!written.contains("<html"), "a .csv file holds HTML");
    assert!(!clash.0);
    assert!(clash.2.contains("--format html but --out"), "{}", clash.2);
    assert!(!future.0);
    assert!(
        future.2.contains("week 2099-W01 has not started yet"),
        "{}",
        future.2
    );
    assert!(!unknown.0);
    assert!(
        unknown.2.contains("cannot tell the format"),
        "{}",
        unknown.2
    );
    // The format in capitals is the format; a directory that does not exist is named.
    let (url, upper) = (app.db_url.clone(), dir.path().join("W45-upper.csv"));
    let missing = dir.path().join("no-such-dir").join("w45.csv");
    let (upper_s, missing_s) = (
        upper.to_string_lossy().into_owned(),
        missing.to_string_lossy().into_owned(),
    );
    let (caps, nodir) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(
                &url,
                &[
                    "report", "energy", "--week", "2026-W45", "--format", "CSV", "--out", &upper_s,
                ],
            ),
            rackwatch(
                &url,
                &[
                    "report", "energy", "--week", "2026-W45", "--out", &missing_s,
                ],
            ),
        )
    })
    .await
    .unwrap();
    assert!(caps.0, "{}", caps.2);
    assert!(std::fs::read_to_string(&upper).unwrap().contains(','));
    assert!(!nodir.0);
    assert!(
        nodir.2.contains("no-such-dir does not exist"),
        "{}",
        nodir.2
    );
    // Logs to a pipe carry no terminal colour codes.
    let logged = std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["report", "energy", "--week", "2026-W45", "--out"])
        .arg(&csv_out)
        .env("RACKWATCH_DATABASE__URL", &app.db_url)
        .env("RACKWATCH_LOG", "debug")
        .output()
        .unwrap();
    let logged = String::from_utf8_lossy(&logged.stderr);
    assert!(logged.contains("DEBUG"), "{logged}");
    assert!(
        !logged.contains('\u{1b}'),
        "escape codes in piped logs: {logged:?}"
    );
    app.stop().await;
}
