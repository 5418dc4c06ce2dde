//! The dashboard in a real browser: headless Chromium driven by Playwright
//! (tests/browser/drive.mjs) logs in, reads the heatmap, clicks through to the faulty
//! GPU, uses the range picker, and saves screenshots to test-artifacts/browser/.
//! Needs Node.js, `npm ci` in tests/browser and Debian's `chromium` (scripts/test installs
//! them); without them this test fails and says what is missing.

use std::path::Path;
use std::process::Command;

use crate::dashboard::seed_fleet;
use crate::support::TestApp;

/// A realistic corner of a fleet for the layout check: four of the demo's simulated 8-GPU
/// hosts with three days of history (the demo's own back-fill) and their last hour at the
/// agent interval, a login node without GPUs, and alerts firing (one acknowledged by
/// someone else), pending and resolved, with the product's texts.
async fn seed_realistic(app: &TestApp) {
    use chrono::{Duration, Utc};
    let now = Utc::now();
    app.store.ensure_partitions(now, 5, 2).await.unwrap();
    let mut fleet = rackwatch::collect::simulator::SimulatedHost::fleet(4, 8);
    let mut cfg = (*app.cfg).clone();
    cfg.simulator.history_days = 3;
    cfg.simulator.backfill_minutes = 60;
    rackwatch::app::backfill_history(&cfg, &app.store, &mut fleet, now)
        .await
        .unwrap();
    for h in fleet.iter_mut() {
        let c = h.history(now - Duration::minutes(60), now, Duration::seconds(30));
        let batch = rackwatch::model::Batch {
            host: h.info.clone(),
            gpus: c.gpus,
            host_samples: c.host_samples,
            gpu_samples: c.gpu_samples,
            events: Vec::new(),
            agent: None,
        };
        // Through ingest, as the agent sends it (latest tables, health and all).
        let token = app.token(&h.info.name).await;
        let resp = app
            .ingest(&token, &serde_json::to_value(&batch).unwrap())
            .await;
        assert_eq!(resp.status(), 200, "{}", h.info.name);
    }
    // The energy job accounts the back-filled hours, as it does in the demo.
    rackwatch::analytics::energy::run(&app.store, &app.cfg.energy, now)
        .await
        .unwrap();
    // A login node: no GPUs, an idle network.
    let token = app.token("login-01").await;
    let ts = crate::support::recent(120, 30, 30);
    let body = serde_json::json!({
        "host": {"name": "login-01", "site": "ams2", "rack": "r01", "pool": "infra"},
        "host_samples": ts.iter().map(|t| serde_json::json!({"ts": t, "cpu_util_pct": 3.0, "mem_used_bytes": 2u64 << 30,
            "mem_total_bytes": 16u64 << 30, "net_rx_bytes_per_s": 0.0, "net_tx_bytes_per_s": 0.0,
            "disk_read_bytes_per_s": 0.0, "disk_write_bytes_per_s": 0.0})).collect::<Vec<_>>(),
    });
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let xid = rackwatch::model::xid::describe_event("xid", 79);
    for (rule, sev, labels, summary, description, state, acked) in [
        (
            "gpu-xid",
            "critical",
            serde_json::json!({"site": "fra1", "rack": "r01", "host": "sim-fra1-r01-n03", "gpu": "2", "xid": "79"}),
            "GPU fell off the bus (XID 79)",
            format!("{} {}", xid.meaning, xid.action),
            "firing",
            None,
        ),
        (
            "gpu-hot",
            "warning",
            serde_json::json!({"site": "fra1", "rack": "r01", "host": "sim-fra1-r01-n03", "gpu": "2"}),
            "GPU temperature high",
            "gpu.temp_celsius 91.0 > 85 for 60 s".to_string(),
            "firing",
            None,
        ),
        (
            "host-down",
            "critical",
            serde_json::json!({"site": "ams2", "rack": "r01", "host": "sim-ams2-r01-n04"}),
            "Host stopped reporting",
            "no sample for 180 s; the agent or the host is down, or the network between them"
                .to_string(),
            "firing",
            None,
        ),
        (
            "gpu-ecc-dbe",
            "critical",
            serde_json::json!({"site": "ams2", "rack": "r01", "host": "sim-ams2-r01-n02", "gpu": "5"}),
            "Uncorrectable ECC errors",
            "ecc_dbe_total rose by 2; drain the node and reset the GPU".to_string(),
            "firing",
            Some("omar"),
        ),
        (
            "gpu-throttling",
            "warning",
            serde_json::json!({"site": "fra1", "rack": "r01", "host": "sim-fra1-r01-n01", "gpu": "0"}),
            "GPU is being throttled",
            "thermal slowdown started (clock reasons: sw_thermal_slowdown)".to_string(),
            "pending",
            None,
        ),
    ] {
        let labels_map: std::collections::BTreeMap<String, String> =
            serde_json::from_value(labels.clone()).unwrap();
        let fp = rackwatch::alert::fingerprint(rule, &labels_map);
        sqlx::query(
            "INSERT INTO alerts (fingerprint, rule, severity, labels, state, summary, description, started_at, fired_at,
                                 last_active_at, occurrences, acknowledged_by, acknowledged_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now() - interval '25 minutes',
                     CASE WHEN $5 = 'firing' THEN now() - interval '24 minutes' END, now(), 2, $8,
                     CASE WHEN $8 IS NOT NULL THEN now() END)",
        )
        .bind(&fp)
        .bind(rule)
        .bind(sev)
        .bind(&labels)
        .bind(state)
        .bind(summary)
        .bind(&description)
        .bind(acked)
        .execute(&app.store.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at)
             VALUES ($1, $2, $3, $4, $5, now() - interval '24 minutes')",
        )
        .bind(&fp)
        .bind(rule)
        .bind(sev)
        .bind(&labels)
        .bind(summary)
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
}

/// What the pages say on the realistic fleet, read from their HTML.
async fn pages_say_what_they_show(app: &TestApp) {
    let cookie = app.login("erin", "erin-pass").await;
    // A GPU over 7 days: fan speed (raw samples only) still charted, the power limit and
    // the temperature alert drawn, throttling named by reason.
    let (st, gpu) = app
        .page(&cookie, "/hosts/sim-fra1-r01-n03/gpus/2?range=7d")
        .await;
    assert_eq!(st, 200);
    assert!(gpu.contains("<h3>Fan speed</h3>"), "fan chart on 7 days");
    assert!(
        gpu.contains(">gpu-hot alert &gt;= 85 °C<"),
        "temperature rule line"
    );
    assert!(gpu.contains("power limit "), "power limit line");
    assert!(
        !gpu.contains("power cap, thermal or power brake"),
        "one shading for all reasons"
    );
    // Round ticks only: every y label of every chart is a 1-2-5 multiple.
    for lab in gpu.split(r#"<text class="ylab" "#).skip(1) {
        let text = lab.split('>').nth(1).unwrap().split('<').next().unwrap();
        let v: f64 = text.split(' ').next().unwrap().parse().unwrap();
        assert!(
            v == 0.0
                || [
                    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0
                ]
                .iter()
                .any(|m| {
                    let r = (v / m).log10();
                    (r - r.round()).abs() < 1e-9
                }),
            "tick {text}"
        );
    }
    // A host: its 8 GPUs as small multiples, not 8 lines in one chart.
    let (_, host) = app.page(&cookie, "/hosts/sim-fra1-r01-n03").await;
    assert_eq!(host.matches(r#"<figure class="strip""#).count(), 4);
    assert!(!host.contains("<h3>GPU utilization</h3>"));
    // A host without GPUs says so, and its idle network has no made-up axis.
    let (_, login) = app.page(&cookie, "/hosts/login-01").await;
    assert!(login.contains("This host reports no GPUs."));
    assert!(!login.contains("<table id=\"gpus\">"));
    assert!(
        !login.contains(">1 B/s<"),
        "an idle network's axis reads 0 B/s only, not 1 B/s, 1 B/s, 0 B/s"
    );
    // The rack: its GPU power in kW now and over time, per-host power and temperature.
    let (_, rack) = app.page(&cookie, "/racks/fra1/r01").await;
    assert!(
        rack.contains(r#"<b id="kpi-rack-power">"#) && rack.contains(" kW</b>"),
        "rack kW"
    );
    assert!(rack.contains("Rack GPU power (all GPUs)"));
    assert!(rack.contains("GPU power per host") && rack.contains("Hottest GPU per host"));
    // Energy: the week shown says it is partial (still running) or, finished, on how
    // many of its days there was data (which one is shown depends on the weekday the
    // test runs on); weeks without data offer no downloads; the definitions are a link
    // that works.
    let (_, energy) = app.page(&cookie, "/energy").await;
    assert!(
        energy.contains("<strong>partial week</strong>: still running")
            || energy.contains("complete week, <strong>data on "),
        "partial week"
    );
    assert!(
        energy.contains(">no data</td>"),
        "empty weeks without downloads"
    );
    assert!(energy.contains(r#"<a href="/docs/energy">docs/energy.md</a>"#));
    assert!(
        energy.contains("Energy per day"),
        "a week with data shows its report"
    );
    // A finished week without data says so once, without a report of zeros.
    let (st, empty) = app.page(&cookie, "/energy?week=2026-W01").await;
    assert_eq!(st, 200);
    assert!(
        empty.contains(" · no data</p>")
            && empty.contains("Nothing was measured in this week")
            && !empty.contains("Energy per day")
            && !empty.contains("partial week"),
        "an empty week"
    );
    let (st, doc) = app.page(&cookie, "/docs/energy").await;
    assert!(
        st == 200 && doc.contains("<article class=\"doc\"><h1>") && !doc.contains("\n# "),
        "{st}: the definitions are rendered, not Markdown text"
    );
    // Browser routes answer errors as pages, the API as JSON.
    let (st, bad) = app.page(&cookie, "/hosts/sim-fra1-r01-n03/gpus/abc").await;
    assert!(
        st == 404 && bad.contains("<h1>") && !bad.starts_with('{'),
        "{st} {bad}"
    );
    let (st, icon) = app.page(&cookie, "/favicon.ico").await;
    assert!(st == 200 && icon.starts_with("<svg"), "favicon");
}

/// Every page at 1,440 and 390 px on the realistic fleet: no sideways overflow, chart
/// labels inside their charts, no console errors or failed requests, the alerts table's
/// buttons on screen, dates on charts over days; then acknowledge and silence from the
/// alerts table. Screenshots of every page at both widths go to test-artifacts/browser/.
async fn layout_check(app: &TestApp, chromium: &str) {
    seed_realistic(app).await;
    app.store
        .upsert_user("ada", rackwatch::store::auth::Role::Admin, "day-shift")
        .await
        .unwrap();
    // An audit row with long client-chosen text (a token's note, a long host name) must
    // wrap, not widen the audit table.
    app.store
        .audit(
            rackwatch::store::audit::Entry::ok(
                "ada",
                "token.created",
                &format!("rack-7-{}", "node-".repeat(45)),
            )
            .details(serde_json::json!({"note": "n".repeat(200), "token_id": 1})),
        )
        .await
        .unwrap();
    // A guess at a long user name (logins record what was typed, up to 64 characters).
    let typed = "x".repeat(64);
    app.store
        .audit(
            rackwatch::store::audit::Entry::ok(&typed, "login", &typed)
                .outcome(rackwatch::store::audit::Outcome::Refused),
        )
        .await
        .unwrap();
    pages_say_what_they_show(app).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gpu = "/hosts/sim-fra1-r01-n03/gpus/2";
    // This week's report as the downloadable HTML file (no script, its own style).
    let week = rackwatch::report::IsoWeek::containing(chrono::Utc::now(), app.cfg.energy.tz());
    let pages = serde_json::json!([
        ["fleet", "/", ""],
        ["alerts", "/alerts", ""],
        ["inventory", "/inventory", ""],
        ["capacity", "/capacity", ""],
        ["capacity-pool", "/capacity/pools/infer", ""],
        ["energy", "/energy", ""],
        ["energy-definitions", "/docs/energy", ""],
        [
            "energy-report-file",
            format!("/energy/reports/{week}.html"),
            ""
        ],
        ["admin", "/admin", ""],
        ["admin-audit", "/admin/audit", ""],
        ["rack", "/racks/fra1/r01", ""],
        ["rack-7d", "/racks/fra1/r01?range=7d", "days"],
        ["host", "/hosts/sim-fra1-r01-n03", ""],
        ["host-7d", "/hosts/sim-fra1-r01-n03?range=7d", "days"],
        ["host-without-gpus", "/hosts/login-01", ""],
        ["gpu", gpu, ""],
        ["gpu-6h", format!("{gpu}?range=6h"), ""],
        ["gpu-7d", format!("{gpu}?range=7d"), "days"],
        ["no-such-host", "/hosts/no-such-host", "error"],
        ["no-such-gpu", "/hosts/sim-fra1-r01-n03/gpus/abc", "error"],
    ]);
    let dir = root.join("tests/browser");
    let out_dir = root.join("test-artifacts/browser");
    let base = app.base.clone();
    let chromium = chromium.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("layout.mjs"))
            .args([base.as_str(), "ada", "day-shift"])
            .arg(&out_dir)
            .arg(pages.to_string())
            .env("CHROMIUM", chromium)
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && !stdout.contains("PROBLEM"),
        "layout check failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("OK layout ").count(), 20 * 3 + 1, "{stdout}");
    // Every width: the alerts table's actions are there (two rows not yet acknowledged
    // get Acknowledge, every unsilenced row gets Silence).
    for w in ["1440", "768", "390"] {
        let l = line(&stdout, &format!("OK layout alerts@{w} "));
        let actions = l.split(" actions=").nth(1).unwrap_or_default();
        assert_eq!(
            (
                actions.matches("\"Acknowledge\"").count(),
                actions.matches("\"Silence 2 h\"").count()
            ),
            (3, 4),
            "{l}"
        );
        let l = line(&stdout, &format!("OK layout gpu-7d@{w} "));
        assert!(
            l.contains("charts=6 dated=6"),
            "fan speed over 7 days too: {l}"
        );
    }
    // Acknowledging and silencing change the rows and the fleet's count: 3 unhandled
    // alerts (the fourth was acknowledged by omar), then 2, then 1.
    let acts = line(&stdout, "OK alerts-actions");
    assert!(
        acts.starts_with(
            "OK alerts-actions open-rows=3->1 fleet-unhandled=3->2->1 ack-badges=2 silenced-badges=1 "
        ) && acts.contains(r#"note="+ 3 acknowledged or silenced""#),
        "{acts}"
    );
    // The refresh waited for the typing and ran once the form was as served.
    line(&stdout, "OK refresh-keeps-typing kept=\"host=half-typed\"");
    // Revoke asks before it posts.
    line(&stdout, "OK confirm-revoke asked=\"Revoke token");
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in the browser's output:\n{out}"))
}

#[tokio::test]
async fn operator_finds_the_faulty_gpu_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: install it (apt-get install -y chromium) or set CHROMIUM; scripts/test does this"
    );
    assert!(
        Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "Node.js not found: install it (apt-get install -y nodejs npm); scripts/test does this"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci` in tests/browser (scripts/test does this)"
    );
    let rules = root.join("config/alerts.toml");
    let app =
        TestApp::spawn_with(|c| c.alerting.rules_file = rules.to_string_lossy().into_owned()).await;
    seed_fleet(&app).await;
    // A diurnal pool of 5 hosts × 8 GPUs (40 more heatmap cells) with a recommendation,
    // for the capacity pages.
    crate::capacity::hosts(&app, "infer", "fra1", "r1", 5, 8).await;
    crate::capacity::demand_history(&app, "infer", 40, |_, h| {
        if (7..22).contains(&h) {
            40.0
        } else {
            16.0
        }
    })
    .await;
    rackwatch::analytics::capacity::run(&app.store, &app.cfg, chrono::Utc::now())
        .await
        .unwrap();
    // The forecast job's forecast of the pool's demand (its own test is in capacity.rs):
    // 168 hours of 28 ± 4 / 8 GPUs.
    let hour =
        chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::hours(1))
            .unwrap();
    let v = |x: f64| vec![x; 168];
    sqlx::query(
        "INSERT INTO forecasts (scope, key, metric, generated_at, start_at, history_hours, model, backtest_mase,
                                point, lo80, hi80, lo95, hi95)
         VALUES ('pool', 'infer', 'demand_gpus', now(), $1, 672, 'seasonal', 0.5, $2, $3, $4, $5, $6)",
    )
    .bind(hour)
    .bind(v(28.0))
    .bind(v(24.0))
    .bind(v(32.0))
    .bind(v(20.0))
    .bind(v(36.0))
    .execute(&app.store.pool)
    .await
    .unwrap();
    app.store
        .upsert_user(
            "nina",
            rackwatch::store::auth::Role::Operator,
            "night-shift",
        )
        .await
        .unwrap();
    let out_dir = root.join("test-artifacts/browser");
    let base = app.base.clone();
    let chromium_run = chromium.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("drive.mjs"))
            .args([base.as_str(), "nina", "night-shift"])
            .arg(&out_dir)
            .env("CHROMIUM", &chromium_run)
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(line(&stdout, "OK login"), "OK login url=/");
    assert_eq!(line(&stdout, "OK fleet"), "OK fleet cells=46 faults=1");
    assert_eq!(
        line(&stdout, "OK keyboard"),
        "OK keyboard first-tab=\"Skip to content\""
    );
    assert_eq!(line(&stdout, "OK metric"), "OK metric url=?metric=temp");
    assert_eq!(
        line(&stdout, "OK hot color"),
        "OK hot color=rgb(253, 231, 37)",
        "a 91 °C GPU takes the top of the viridis scale"
    );
    let tip = line(&stdout, "OK tooltip");
    assert!(tip.contains("gpu-node-7 GPU 1: 97 % util, 91 °C"), "{tip}");
    let gpu = line(&stdout, "OK gpu");
    assert!(
        gpu.starts_with("OK gpu path=/hosts/gpu-node-7/gpus/1 charts=6 marks=6 shaded=6 "),
        "{gpu}"
    );
    assert!(gpu.contains("gpu-node-7 GPU 1: 97 % util, 91 °C"), "{gpu}");
    let ev = line(&stdout, "OK event");
    assert!(
        ev.contains("XID 79")
            && ev.contains("fallen off the bus")
            && ev.contains("restart the node"),
        "{ev}"
    );
    // The event time is shown in the browser's zone (Tokyo), not UTC.
    let lt: serde_json::Value =
        serde_json::from_str(line(&stdout, "OK localtime ").trim_start_matches("OK localtime "))
            .unwrap();
    assert_eq!(lt["shown"], lt["tokyo"], "{lt}");
    assert!(
        lt["shown"].as_str().is_some_and(|s| s.ends_with("GMT+9")),
        "the zone is named: {lt}"
    );
    let range = line(&stdout, "OK range");
    assert!(
        range.starts_with("OK range url=?range=6h current=\"6 h\""),
        "{range}"
    );
    assert!(range.contains("raw samples, 39 s per point"), "{range}");
    let custom = line(&stdout, "OK custom");
    assert!(
        custom.contains("tzo=-540"),
        "Tokyo is 540 min ahead of UTC: {custom}"
    );
    // The custom range (the form's 6 hours, in the viewer's zone) is the page's range now.
    assert!(
        custom.contains("url=?from=") && custom.contains("&to=") && !custom.contains("range=6h"),
        "{custom}"
    );
    // The page now shows the range asked for, in the viewer's zone (Tokyo).
    let from_local = custom
        .split(" from-local=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_default()
        .replace('T', " ");
    assert!(from_local.starts_with("20"), "{custom}");
    assert!(
        custom.contains(&format!("note=\"Showing {from_local}:00 GMT+9 – "))
            && custom.contains("raw samples, ")
            && custom.contains(" s per point"),
        "{custom}"
    );
    assert_eq!(
        line(&stdout, "OK dark"),
        "OK dark background=rgb(17, 20, 24)"
    );
    assert_eq!(line(&stdout, "OK phone"), "OK phone horizontal-overflow=0");
    let cap = line(&stdout, "OK capacity ");
    assert!(
        cap.starts_with("OK capacity path=/capacity pools=1 ") && cap.contains("release"),
        "the diurnal pool is told to release GPUs at night: {cap}"
    );
    let pool = line(&stdout, "OK capacity-pool");
    assert!(
        pool.starts_with("OK capacity-pool path=/capacity/pools/infer charts=1 bands=2 wide=true "),
        "{pool}"
    );
    let evidence: usize = pool
        .rsplit("evidence=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        evidence > 0,
        "the pool's backtest evidence is shown: {pool}"
    );
    assert_eq!(
        line(&stdout, "OK capacity-phone"),
        "OK capacity-phone horizontal-overflow=0 pool-overflow=0"
    );
    layout_check(&app, &chromium).await;
    for shot in [
        "layout-fleet-1440.png",
        "layout-fleet-390.png",
        "layout-alerts-390.png",
        "layout-gpu-7d-1440.png",
        "layout-host-390.png",
        "fleet-1280.png",
        "gpu-1280.png",
        "gpu-dark.png",
        "fleet-phone-dark.png",
        "capacity-1280.png",
        "capacity-pool-1280.png",
        "capacity-phone.png",
    ] {
        let p = root.join("test-artifacts/browser").join(shot);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 10_000),
            "screenshot {shot}"
        );
    }
    app.stop().await;
}
