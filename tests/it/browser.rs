//! The dashboard in a real browser: headless Chromium driven by Playwright
//! (tests/browser/drive.mjs) logs in, reads the heatmap, clicks through to the faulty
//! GPU, uses the range picker, and saves screenshots to test-artifacts/browser/.
//! Needs Node.js, `npm ci` in tests/browser and Debian's `chromium` (scripts/test installs
//! them); without them this test fails and says what is missing.

use std::path::Path;
use std::process::Command;

use crate::dashboard::seed_fleet;
use crate::support::TestApp;

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
    let app = TestApp::spawn().await;
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
    // The forecast job's pool forecast (its own test is in forecasts.rs): 168 hours of
    // 60 ± 10 / 20 % utilization.
    let hour =
        chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::hours(1))
            .unwrap();
    let v = |x: f64| vec![x; 168];
    sqlx::query(
        "INSERT INTO forecasts (scope, key, metric, generated_at, start_at, history_hours, model, backtest_mase,
                                point, lo80, hi80, lo95, hi95)
         VALUES ('pool', 'infer', 'gpu_util_pct', now(), $1, 672, 'seasonal', 0.5, $2, $3, $4, $5, $6)",
    )
    .bind(hour)
    .bind(v(60.0))
    .bind(v(50.0))
    .bind(v(70.0))
    .bind(v(40.0))
    .bind(v(80.0))
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
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("drive.mjs"))
            .args([base.as_str(), "nina", "night-shift"])
            .arg(&out_dir)
            .env("CHROMIUM", chromium)
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
    assert!(
        custom.contains("raw samples, 39 s per point") || custom.contains("s per point"),
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
        pool.starts_with("OK capacity-pool path=/capacity/pools/infer charts=1 bands=2 "),
        "{pool}"
    );
    assert_eq!(
        line(&stdout, "OK capacity-phone"),
        "OK capacity-phone horizontal-overflow=0 pool-overflow=0"
    );
    for shot in [
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
