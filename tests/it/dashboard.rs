//! The operations dashboard as an operator uses it: heatmap → rack → host → GPU, the
//! range picker, inventory search, the admin page, roles, CSRF and login limits.

use chrono::{DateTime, Utc};
use rackwatch::store::auth::Role;
use serde_json::json;

use crate::support::{csrf_of, recent, TestApp};

/// Two hosts in rack fra1/r07; GPU 1 of `gpu-node-7` runs hot, throttles in the middle
/// third of the hour and threw XID 79.
pub async fn seed_fleet(app: &TestApp) {
    for (host, rack) in [
        ("gpu-node-7", "r07"),
        ("gpu-node-8", "r07"),
        ("gpu-node-9", "r08"),
    ] {
        let token = app.token(host).await;
        let ts = recent(720, 5, 5);
        let body = json!({
            "host": {"name": host, "site": "fra1", "rack": rack, "pool": "train-a"},
            "gpus": [{"index": 0, "uuid": format!("GPU-{host}-0"), "model": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85_899_345_920u64, "power_limit_watts": 700.0, "driver_version": "550.54.15"},
                     {"index": 1, "uuid": format!("GPU-{host}-1"), "model": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85_899_345_920u64, "power_limit_watts": 700.0, "driver_version": "550.54.15"}],
            "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 40.0, "mem_used_bytes": 8u64 << 30,
                "mem_total_bytes": 64u64 << 30, "disk_read_bytes_per_s": 1.5e6, "disk_write_bytes_per_s": 2e5,
                "net_rx_bytes_per_s": 1.25e8, "net_tx_bytes_per_s": 3e7})).collect::<Vec<_>>(),
            "gpu_samples": ts.iter().enumerate().flat_map(|(i, t)| (0..2).map(move |g| json!({"ts": t, "index": g,
                "util_pct": 97.0, "mem_util_pct": 40.0, "power_watts": 350.0, "temp_celsius": 66.0 + g as f64 * 25.0,
                "mem_used_bytes": 60u64 << 30, "sm_clock_mhz": 1980.0, "mem_clock_mhz": 2619.0, "fan_pct": 55.0,
                "throttle_reasons": if g == 1 && (240..480).contains(&i) { 0x40 } else { 0 }}))).collect::<Vec<_>>(),
            "events": if host == "gpu-node-7" { json!([{"ts": ts[360], "index": 1, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus"}]) } else { json!([]) }
        });
        assert_eq!(app.ingest(&token, &body).await.status(), 200);
    }
}

#[tokio::test]
async fn heatmap_leads_to_the_faulty_gpu_in_three_clicks() {
    let app = TestApp::spawn().await;
    seed_fleet(&app).await;
    let cookie = app.login("ops", "correct horse").await;

    // 1. Fleet: six GPUs, GPU 1 of node 7 flagged and linked.
    let (st, html) = app.page(&cookie, "/").await;
    assert_eq!(st, 200);
    assert_eq!(html.matches("<a class=\"cell").count(), 6, "{html}");
    // Hot now and with a hardware event: both marks, hot first (it is now).
    assert!(
        html.contains(r#"<a class="cell hot fault q31" href="/hosts/gpu-node-7/gpus/1?range=1h""#)
    );
    assert_eq!(html.matches("class=\"cell hot fault ").count(), 1);
    assert!(html.contains(">1▲✖</a>"), "{html}");
    assert_eq!(
        html.matches("class=\"cell hot ").count(),
        3,
        "91 °C GPUs of nodes 7, 8 and 9"
    );
    assert!(html.contains(
        "gpu-node-7 GPU 1: 97 % util, 91 °C, 350 W, memory 60.0 GiB; hot, 1 hardware event in 24 h"
    ));
    assert!(html.contains(r#"<b id="kpi-faulty">1</b>"#));
    assert!(html.contains(r#"href="/racks/fra1/r07?range=1h""#));
    // Utilization 97 % is step 31 of 0–32 (near the light end of viridis); the page
    // carries the rule of every step once.
    assert_eq!(html.matches(" q31\" href=").count(), 6, "colored cells");
    assert_eq!(
        html.matches("{background:#").count(),
        33 + 5,
        "step and health rules"
    );
    // Colored by temperature, 91 °C is the top of the 30–90 °C scale.
    let (_, t) = app.page(&cookie, "/?metric=temp").await;
    assert!(
        t.contains(r#"<a class="cell hot q32" href="/hosts/gpu-node-8/gpus/1?range=1h""#),
        "{t}"
    );
    assert!(t.contains(".heat .q32{background:#fde725;color:#000}"));
    // The rack keeps the coloring it was reached by.
    assert!(
        t.contains(r#"href="/racks/fra1/r08?range=1h&#38;metric=temp""#),
        "{t}"
    );
    assert!(t.contains(r#"Temperature: <span class="nw">30 °C <span class="scale""#));
    let (st, _) = app.page(&cookie, "/?metric=fanciness").await;
    assert_eq!(st, 400);

    // 2. Rack page: its hosts, charts of each, the rack's heatmap.
    let (st, rack) = app.page(&cookie, "/racks/fra1/r07?range=1h").await;
    assert_eq!(st, 200);
    assert!(rack.contains("href=\"/hosts/gpu-node-8?range=1h\""));
    assert!(!rack.contains("gpu-node-9"), "other rack's host shown");
    // Four host charts and the rack's GPU power; per-host GPU power and temperature as
    // small multiples.
    assert_eq!(rack.matches("<svg class=\"chart\"").count(), 5);
    assert_eq!(rack.matches("<figure class=\"strip\"").count(), 2);
    // Per-host power in kW, as the rack's total: two GPUs at 350 W are 0.7 kW.
    assert!(rack.contains("GPU power per host (0–0.8 kW)"), "{rack}");
    assert!(rack.contains("mean 0.7 kW, highest 0.7 kW"), "{rack}");
    // Each line chart is followed by its phone twin (400 × 240), which phones show instead.
    assert_eq!(
        rack.matches("</svg><svg class=\"chart phone\" viewBox=\"0 0 400 240\"")
            .count(),
        5
    );
    assert!(
        rack.contains(r#"<b id="kpi-rack-power">1.4 kW</b>"#),
        "{rack}"
    );
    assert_eq!(rack.matches("<a class=\"cell").count(), 4);
    assert!(rack.contains("XID 79"));
    // The heatmap's metric tabs keep the rack page's range.
    assert!(
        rack.contains(r#"href="?metric=temp&#38;range=1h""#),
        "{rack}"
    );
    assert_eq!(app.page(&cookie, "/racks/fra1/r99").await.0, 404);

    // 3. Host page: GPU table with sparklines linking to GPU pages, and the agent's labels.
    let token = app.token("gpu-node-7").await;
    let labelled = json!({"host": {"name": "gpu-node-7", "site": "fra1", "rack": "r07",
        "pool": "train-a", "labels": {"team": "ml", "env": "prod"}}});
    assert_eq!(app.ingest(&token, &labelled).await.status(), 200);
    let (st, host) = app.page(&cookie, "/hosts/gpu-node-7?range=6h").await;
    assert_eq!(st, 200);
    assert!(
        host.contains(r#"<span id="labels">labels <code class="label">env=prod</code> <code class="label">team=ml</code></span>"#),
        "{host}"
    );
    assert_eq!(host.matches("<svg class=\"spark\"").count(), 2);
    assert!(host.contains(r#"<a href="/hosts/gpu-node-7/gpus/1?range=6h">GPU 1</a>"#));
    // Host pages read 1-minute rollups from 1 h on; without a rollup job (none runs
    // here) the newest 6 h come from raw samples rolled up on the fly.
    assert!(
        host.contains("Showing last 6 h · 1-minute rollups, 60 s per point"),
        "{host}"
    );
    let (_, spark) = app.page(&cookie, "/hosts/gpu-node-7?range=15m").await;
    assert!(spark.contains("raw samples, 5 s per point"), "{spark}");

    // 4. GPU page: aligned charts, throttling shaded, the XID marked and explained.
    let (st, gpu) = app.page(&cookie, "/hosts/gpu-node-7/gpus/1?range=1h").await;
    assert_eq!(st, 200);
    assert_eq!(
        gpu.matches("<svg class=\"chart\" viewBox=\"0 0 640 180\"")
            .count(),
        6,
        "util, memory, power, temperature, clocks, fan"
    );
    // Shaded by reason: HW thermal slowdown (0x40) is "thermal".
    assert!(gpu.contains("<rect class=\"throttle thermal\""));
    assert!(!gpu.contains("<rect class=\"throttle power\""));
    assert!(
        gpu.contains("Clocks throttled by thermal (1 period)."),
        "{gpu}"
    );
    // The H100's 700 W limit on the power chart.
    assert!(gpu.contains(">power limit 700 W<"), "{gpu}");
    // The XID mark on every chart (and on its phone twin), with its meaning.
    assert_eq!(gpu.matches("<g class=\"event\">").count(), 2 * 6);
    assert!(gpu.contains("XID 79: GPU has fallen off the bus"));
    assert!(
        gpu.contains("restart the node: drain it and reboot"),
        "{gpu}"
    );
    assert!(gpu.contains(r#"<b id="kpi-events">1</b>"#));
    assert!(gpu.contains("91 °C") && gpu.contains("1980 MHz") && gpu.contains("350 W"));
    // GPU 0 had no throttling.
    let (_, g0) = app.page(&cookie, "/hosts/gpu-node-7/gpus/0?range=1h").await;
    assert!(g0.contains("No clock throttling in this range."));
    assert_eq!(app.page(&cookie, "/hosts/gpu-node-7/gpus/5").await.0, 404);

    // Range picker: presets in the URL, long ranges from rollups, custom from/to.
    assert!(gpu.contains(r#"href="/hosts/gpu-node-7/gpus/1?range=7d""#));
    assert!(gpu.contains(r#"href="/hosts/gpu-node-7/gpus/1?range=1h" aria-current="true""#));
    assert!(gpu.contains("data-refresh=\"30\""), "live ranges refresh");
    let (_, week) = app.page(&cookie, "/hosts/gpu-node-7/gpus/1?range=7d").await;
    assert!(week.contains("Showing last 7 d · 15-minute rollups, 15 min per point"));
    // Throttling by reason and the fan speed come from raw samples up to 7 days.
    assert!(
        week.contains("Clocks throttled by thermal (1 period)."),
        "{week}"
    );
    assert!(week.contains("<h3>Fan speed</h3>"), "fan speed on 7 days");
    let (_, month) = app
        .page(&cookie, "/hosts/gpu-node-7/gpus/1?range=30d")
        .await;
    assert!(
        month.contains("are shown for ranges up to 7 days"),
        "{month}"
    );
    let from = (chrono::Utc::now() - chrono::Duration::minutes(40))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let to = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let (st, custom) = app
        .page(
            &cookie,
            &format!("/hosts/gpu-node-7/gpus/1?from={from}&to={to}&tzo=0"),
        )
        .await;
    assert_eq!(st, 200);
    assert!(custom.contains(&format!("value=\"{from}\"")));
    assert!(
        !custom.contains("data-refresh=\"30\""),
        "a fixed range does not refresh"
    );
    assert!(custom.contains("raw samples, 5 s per point"));
    let (st, _) = app.page(&cookie, "/hosts/gpu-node-7/gpus/1?range=2w").await;
    assert_eq!(st, 400);
    // A custom range typed the wrong way round, or too long, on the host, GPU and rack
    // pages: the page with the last hour, the times as typed and why, at the picker.
    let two_years = (chrono::Utc::now() - chrono::Duration::days(730))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    for (path, from, to, why) in [
        (
            "/hosts/gpu-node-7",
            &to,
            &from,
            "start (`from`) must be before its end",
        ),
        ("/hosts/gpu-node-7/gpus/1", &to, &from, "must be before"),
        ("/racks/fra1/r07", &two_years, &to, "anges up to 90 days"),
    ] {
        let (st, html) = app
            .page(&cookie, &format!("{path}?from={from}&to={to}&tzo=0"))
            .await;
        assert_eq!(st, 200, "{path}");
        let error = html
            .split("id=\"range-error\">")
            .nth(1)
            .unwrap_or_else(|| panic!("{path}: no range error\n{html}"));
        assert!(
            error.contains(why) && error.contains("showing last 1 h instead"),
            "{path}: {error}"
        );
        assert!(html.contains(&format!("value=\"{from}\"")), "{path}");
        assert!(html.contains(&format!("value=\"{to}\"")), "{path}");
        assert!(
            !html.contains("id=\"range-empty\""),
            "{path}: the last hour has samples"
        );
    }
    // A range with no samples (tomorrow) says so instead of drawing empty charts.
    let day = |d: i64| {
        (chrono::Utc::now() + chrono::Duration::days(d))
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    };
    for path in ["/hosts/gpu-node-7", "/hosts/gpu-node-7/gpus/1"] {
        let (st, html) = app
            .page(
                &cookie,
                &format!("{path}?from={}&to={}&tzo=0", day(1), day(2)),
            )
            .await;
        assert_eq!(st, 200);
        assert!(
            html.contains(
                r#"<p class="stale" role="status" id="range-empty">No samples in this range.</p>"#
            ),
            "{path}"
        );
    }
    app.stop().await;
}

/// A GPU capped for one sample in ten (never the first or the last five, so no chart
/// point at the data's edges holds a cap alone) is shaded where a chart point holds one sample,
/// not across a 24-hour chart whose points each hold a brief cap; the note names it.
#[tokio::test]
async fn brief_throttling_shades_only_points_it_holds_for_half_of() {
    let app = TestApp::spawn().await;
    let token = app.token("capped").await;
    let ts = recent(720, 5, 5);
    let body = json!({
        "host": {"name": "capped", "site": "fra1", "rack": "r01"},
        "gpus": [{"index": 0}],
        "gpu_samples": ts.iter().enumerate().map(|(i, t)| json!({"ts": t, "index": 0, "util_pct": 90.0,
            "power_watts": 690.0, "throttle_reasons": if i % 10 == 5 { 0x4 } else { 0 }})).collect::<Vec<_>>(),
    });
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app.login("ops", "correct horse").await;
    let api = app
        .json(&cookie, "/api/v1/hosts/capped/gpus/0?range=24h")
        .await;
    assert_eq!(api["throttled"], json!([]), "{}", api["throttled"]);
    let (_, day) = app.page(&cookie, "/hosts/capped/gpus/0?range=24h").await;
    let note = &day[day.find("id=\"throttle-note\">").expect("note")..];
    let note = &note[..note.find("</p>").unwrap()];
    assert!(
        note.contains("No sustained clock throttling in this range. Brief power cap in ")
            && note.contains(" points (under half of each point&#39;s samples), not shaded."),
        "{note}"
    );
    // An hour's points hold one sample each: every capped sample is its own period.
    let api = app
        .json(&cookie, "/api/v1/hosts/capped/gpus/0?range=1h")
        .await;
    let spans = api["throttled"].as_array().expect("spans");
    assert!(
        (60..=73).contains(&spans.len()) && spans.iter().all(|s| s["reason"] == "power cap"),
        "{spans:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn inventory_search_finds_gpus_by_uuid_model_and_driver() {
    let app = TestApp::spawn().await;
    seed_fleet(&app).await;
    let cookie = app.login("ops", "correct horse").await;
    let (_, all) = app.page(&cookie, "/inventory").await;
    assert!(
        all.contains(r#"<p class="muted" id="inv-count">3 hosts, 6 GPUs</p>"#),
        "{all}"
    );
    assert!(all.contains("550.54.15") && all.contains("80.0 GiB"));
    let (_, one) = app.page(&cookie, "/inventory?q=GPU-gpu-node-8-1").await;
    assert!(
        one.contains("1 host, 1 GPU matching “GPU-gpu-node-8-1”"),
        "{one}"
    );
    assert!(one.contains(r#"<a href="/hosts/gpu-node-8/gpus/1">GPU 1</a>"#));
    let (_, rack) = app.page(&cookie, "/inventory?q=R08").await;
    assert!(rack.contains("1 host, 2 GPUs"));
    // Words must all match, and "GPU N" is the index, as the page labels GPUs.
    let (_, r07_gpu1) = app.page(&cookie, "/inventory?q=r07+H100+GPU+1").await;
    assert!(r07_gpu1.contains("2 hosts, 2 GPUs"), "{r07_gpu1}");
    assert!(r07_gpu1.contains(r#"<a href="/hosts/gpu-node-8/gpus/1">GPU 1</a>"#));
    assert!(!r07_gpu1.contains(r#"<a href="/hosts/gpu-node-8/gpus/0">"#));
    let (_, no_match) = app.page(&cookie, "/inventory?q=r07+r08").await;
    assert!(no_match.contains("0 hosts, 0 GPUs"), "{no_match}");
    // Said in words, without an empty table.
    assert!(
        no_match.contains("id=\"inv-none\">Nothing matches") && !no_match.contains("<table"),
        "{no_match}"
    );
    // LIKE wildcards are searched for literally.
    let (_, none) = app.page(&cookie, "/inventory?q=%25").await;
    assert!(none.contains("0 hosts, 0 GPUs"));
    app.stop().await;
}

#[tokio::test]
async fn admin_manages_tokens_and_users_viewers_cannot() {
    let app = TestApp::spawn().await;
    let admin = app.login("boss", "correct horse").await;
    let viewer = app.login_as("val", "viewer-pass", Role::Viewer).await;

    // Viewers see pages but not the admin page or its API.
    assert_eq!(app.page(&viewer, "/").await.0, 200);
    assert_eq!(app.page(&viewer, "/admin").await.0, 403);
    assert_eq!(app.page(&viewer, "/api/v1/admin/tokens").await.0, 403);
    let (_, vhtml) = app.page(&viewer, "/").await;
    assert!(
        !vhtml.contains("href=\"/admin\""),
        "no admin link for viewers"
    );
    let vtoken = csrf_of(&vhtml);
    let viewer_mints = || async {
        app.http
            .post(format!("{}/admin/tokens", app.base))
            .header("cookie", &viewer)
            .form(&[("csrf", vtoken.as_str()), ("host", "x")])
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(viewer_mints().await, 403);
    // The refused change is in the audit trail, as a change that succeeds is.
    let refused = app.audit("access.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (
            refused[0].actor.as_str(),
            refused[0].target.as_str(),
            refused[0].outcome.as_str()
        ),
        ("val", "POST /admin/tokens", "refused")
    );
    assert_eq!(refused[0].details["needs"], "admin");
    // A script retrying it does not flood the trail: 20 rows, then one per 10 s.
    for _ in 0..30 {
        assert_eq!(viewer_mints().await, 403);
    }
    let n = app.audit("access.refused").await.len();
    assert!((20..=21).contains(&n), "{n} rows");

    let (st, page) = app.page(&admin, "/admin").await;
    assert_eq!(st, 200);
    let token = csrf_of(&page);
    // Without the CSRF token nothing happens.
    let r = app
        .http
        .post(format!("{}/admin/tokens", app.base))
        .header("cookie", &admin)
        .form(&[("host", "node-a")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // With a foreign Origin nothing happens either, even with the token.
    let r = app
        .http
        .post(format!("{}/admin/tokens", app.base))
        .header("cookie", &admin)
        .header("origin", "https://evil.example")
        .form(&[("csrf", token.as_str()), ("host", "node-a")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(app.store.list_tokens().await.unwrap().is_empty());

    let r = app
        .http
        .post(format!("{}/admin/tokens", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("host", "node-a"),
            ("note", "rack 7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    let i = html.find("<code id=\"new-token\">").unwrap() + 21;
    let secret = &html[i..i + html[i..].find('<').unwrap()];
    assert!(secret.starts_with("rwa_") && secret.len() == 68, "{secret}");
    let batch = json!({"host": {"name": "node-a"}, "host_samples": [{"ts": recent(1, 1, 2)[0], "cpu_util_pct": 3.0}]});
    assert_eq!(app.ingest(secret, &batch).await.status(), 200);
    let list = app.store.list_tokens().await.unwrap();
    assert_eq!((list.len(), list[0].note.as_str()), (1, "rack 7"));
    let r = app
        .http
        .post(format!("{}/admin/tokens/{}/revoke", app.base, list[0].id))
        .header("cookie", &admin)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains(&format!(
            "id=\"admin-notice\">Token {} (agent, node-a) revoked",
            list[0].id
        )),
        "{html}"
    );
    let revoked = app.audit("token.revoked").await;
    assert_eq!(
        (&revoked[0].details["kind"], &revoked[0].details["scope"]),
        (&json!("agent"), &json!("node-a"))
    );
    assert_eq!(
        app.ingest(secret, &batch).await.status(),
        401,
        "revoked token refused"
    );
    let (_, page) = app.page(&admin, "/admin").await;
    // The revoked token leaves the live table for the folded record of revoked ones.
    assert!(page.contains("revoked <time"));
    assert!(page.contains("Revoked tokens (1)"), "{page}");
    assert!(!page.contains(&format!("Revoke token {}\"", list[0].id)));

    // Users: create an operator who can then log in; delete them, their session ends.
    let r = app
        .http
        .post(format!("{}/admin/users", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("name", "olga"),
            ("role", "operator"),
            ("password", "operator-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(r#"<p role="status" id="user-saved">User olga created as operator.</p>"#));
    let r = app
        .http
        .post(format!("{}/admin/users", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("name", "short"),
            ("role", "viewer"),
            ("password", "short"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // Said at the form, with the name and role kept (never the password).
    let html = r.text().await.unwrap();
    let at_form = &html[html.find("id=\"user-form\"").expect("the user form")..];
    assert!(
        at_form.contains("value=\"short\"")
            && at_form.contains("<option selected>viewer</option>")
            && at_form.contains(r#"<input name="password" type="password" minlength="8" autocomplete="new-password" aria-describedby="user-password-hint" autofocus>"#)
            && at_form.contains("id=\"user-error\">")
            && at_form.contains("at least 8 characters"),
        "{at_form}"
    );
    // A host name a token cannot have: the admin page again, the reason at the form.
    let r = app
        .http
        .post(format!("{}/admin/tokens", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("host", "   "),
            ("note", "rack 7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let html = r.text().await.unwrap();
    let at_form = &html[html.find("id=\"token-form\"").expect("the token form")..];
    assert!(
        at_form.contains("value=\"rack 7\"")
            && at_form.contains("id=\"token-error\">a token is scoped to one host"),
        "{at_form}"
    );
    // A note past the form's 200 characters is refused by the server too.
    let long = "n".repeat(201);
    let r = app
        .http
        .post(format!("{}/admin/tokens", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("host", "node-b"),
            ("note", long.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("the note has 201 characters; at most 200"));
    // The audit trail names the token an admin minted by its id (as `token list` does).
    let created = app.audit("token.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].details["token_id"], list[0].id, "{created:?}");
    // "system" and "proxy" are the server's own names in the audit trail, and "BOSS" would
    // read as "boss".
    for (name, why) in [
        ("System", "is reserved for the server&#39;s own actions"),
        ("Proxy", "is reserved for the server&#39;s own actions"),
        (
            "BOSS",
            "a user named &#34;boss&#34; exists: names may not differ only in case",
        ),
    ] {
        let r = app
            .http
            .post(format!("{}/admin/users", app.base))
            .header("cookie", &admin)
            .form(&[
                ("csrf", token.as_str()),
                ("name", name),
                ("role", "viewer"),
                ("password", "long-enough-pw"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{name}");
        let html = r.text().await.unwrap();
        assert!(html.contains(why), "{name}: {html}");
    }
    // Each refused change is in the audit trail: who tried what on what, and why.
    let mut refused: Vec<(String, String, String, String)> = app
        .audit("admin.refused")
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.actor, "boss");
            (
                r.details["attempt"].as_str().unwrap().to_string(),
                r.target,
                r.outcome,
                r.details["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    refused.sort();
    let summary: Vec<(&str, &str, &str)> = refused
        .iter()
        .map(|(a, t, o, _)| (a.as_str(), t.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("token.created", "", "refused"),
            ("token.created", "node-b", "refused"),
            ("user.saved", "BOSS", "refused"),
            ("user.saved", "Proxy", "refused"),
            ("user.saved", "System", "refused"),
            ("user.saved", "short", "refused"),
        ]
    );
    assert!(
        refused[5].3.contains("at least 8 characters"),
        "{refused:?}"
    );
    // Deleting yourself is refused, and recorded the same way.
    let me = app
        .store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.name == "boss")
        .unwrap();
    let r = app
        .http
        .post(format!("{}/admin/users/{}/delete", app.base, me.id))
        .header("cookie", &admin)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let rows = app.audit("admin.refused").await;
    assert_eq!(rows.len(), 7);
    assert_eq!(
        (rows[0].details["attempt"].as_str(), rows[0].target.as_str()),
        (Some("user.deleted"), "boss")
    );
    // The same name again updates the user, and says so.
    let r = app
        .http
        .post(format!("{}/admin/users", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", token.as_str()),
            ("name", "olga"),
            ("role", "operator"),
            ("password", "operator-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("User olga updated: role operator, new password"));
    let r = app.post_login("olga", "operator-pw").await;
    assert_eq!(r.status(), 303);
    let olga = crate::support::session_cookie(&r);
    assert_eq!(app.page(&olga, "/").await.0, 200);
    // Without a password, an existing user's role changes and their password stays; a
    // new user needs one.
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let (app, admin, token) = (&app, &admin, &token);
        async move {
            let mut form = form;
            form.push(("csrf", token.clone()));
            let r = app
                .http
                .post(format!("{}{path}", app.base))
                .header("cookie", admin)
                .form(&form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let save = |name: &'static str, role: &'static str| {
        post(
            "/admin/users",
            vec![
                ("name", name.into()),
                ("role", role.into()),
                ("password", String::new()),
            ],
        )
    };
    let (status, html) = save("olga", "viewer").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("User olga is now viewer (was operator); password unchanged"),
        "{html}"
    );
    assert_eq!(
        app.page(&olga, "/").await.0,
        303,
        "a role change ends sessions"
    );
    let changed = app.audit("user.role_changed").await;
    assert_eq!(
        (&changed[0].details["from"], &changed[0].details["to"]),
        (&json!("operator"), &json!("viewer"))
    );
    assert_eq!(app.audit("user.password_reset").await.len(), 1);
    assert!(save("olga", "viewer")
        .await
        .1
        .contains("User olga already is viewer; nothing changed"));
    let (status, html) = save("nadia", "viewer").await;
    assert_eq!(status, 422);
    assert!(html.contains("is a new user: give a password"), "{html}");
    let long = "p".repeat(1025);
    for (password, why) in [
        ("Patricia", "must not be the user name"),
        (long.as_str(), "1025 characters; at most 1024"),
    ] {
        let form = vec![
            ("name", "patricia".into()),
            ("role", "viewer".into()),
            ("password", password.into()),
        ];
        let (status, html) = post("/admin/users", form).await;
        assert_eq!(status, 422);
        assert!(html.contains(why), "{why}");
    }
    let r = app.post_login("olga", "operator-pw").await;
    assert_eq!(r.status(), 303, "olga's password stayed");
    let olga = crate::support::session_cookie(&r);
    assert_eq!(app.page(&olga, "/").await.0, 200);
    // A path id that is no number says so.
    let (status, html) = post("/admin/users/abc/delete", vec![]).await;
    assert_eq!(status, 400);
    assert!(
        html.contains("user id &#34;abc&#34; is not a number"),
        "{html}"
    );
    // Another kind of token's scope is no host name.
    let (status, html) = post("/admin/tokens", vec![("host", "pool:train-a".into())]).await;
    assert_eq!(status, 400);
    assert!(html.contains("starts with pool:"), "{html}");
    let users: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/admin/users", app.base))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "olga")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "olga")
            .unwrap()["role"],
        "viewer"
    );
    let r = app
        .http
        .post(format!("{}/admin/users/{id}/delete", app.base))
        .header("cookie", &admin)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("id=\"admin-notice\">User olga deleted; their sessions ended."));
    assert_eq!(
        app.page(&olga, "/").await.0,
        303,
        "deleted user's session ended"
    );
    app.stop().await;
}

#[tokio::test]
async fn login_needs_csrf_is_rate_limited_and_sessions_expire() {
    let app = TestApp::spawn_with(|c| c.server.secure_cookies = true).await;
    app.store
        .upsert_user("ann", Role::Viewer, "right-password")
        .await
        .unwrap();
    // A form posted without the login CSRF cookie (a cross-site login) is refused.
    let r = app
        .http
        .post(format!("{}/login", app.base))
        .form(&[
            ("username", "ann"),
            ("password", "right-password"),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Behind TLS every response also pins browsers to HTTPS.
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert!(r.text().await.unwrap().contains("CSRF"));
    // The login form's own cookie is Secure behind TLS.
    let (c, _) = app.login_csrf().await;
    assert!(c.starts_with("rw_login_csrf="));
    let r = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    // Five wrong passwords from one address: the next attempt there waits a moment (1 s,
    // doubling with each further failure, at most 60 s), the right password included,
    // but only that long: the owner is slowed, never locked out.
    for _ in 0..5 {
        assert_eq!(app.post_login("ann", "wrong-password").await.status(), 401);
    }
    let r = app.post_login("ann", "right-password").await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert!(r.text().await.unwrap().contains("Too many login attempts"));
    tokio::time::sleep(std::time::Duration::from_millis(wait * 1000 + 200)).await;
    assert_eq!(app.post_login("ann", "right-password").await.status(), 303);
    // Another user is not locked out by ann's failures.
    let r = app.post_login_ok("bob").await;
    assert!(
        r.contains("; Secure") && r.contains("HttpOnly") && r.contains("SameSite=Lax"),
        "{r}"
    );

    // Sessions expire.
    let cookie = r.split(';').next().unwrap().to_string();
    assert_eq!(app.page(&cookie, "/").await.0, 200);
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    let (st, _) = app.page(&cookie, "/").await;
    assert_eq!(st, 303, "expired session goes back to login");

    // Logout needs the page's token.
    let cookie = app
        .post_login_ok("bob")
        .await
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = app
        .http
        .post(format!("{}/logout", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.page(&cookie, "/").await.0, 200, "still logged in");
    app.stop().await;
}

impl TestApp {
    /// Create a viewer and log in; returns the session Set-Cookie header.
    async fn post_login_ok(&self, user: &str) -> String {
        self.store
            .upsert_user(user, Role::Viewer, "bob-password")
            .await
            .unwrap();
        let r = self.post_login(user, "bob-password").await;
        assert_eq!(r.status(), 303);
        crate::support::session_set_cookie(&r)
    }
}

#[tokio::test]
async fn hostile_names_are_escaped_on_every_page() {
    let app = TestApp::spawn().await;
    let evil = "<script>alert('x')</script>\"><img/src=x/onerror=alert(1)>";
    let site = "<b>s</b>";
    let rack = "r\"><svg onload=alert(2)>";
    let token = app.token(evil).await;
    let body = json!({"host": {"name": evil, "site": site, "rack": rack, "pool": "<i>p</i>"},
        "gpus": [{"index": 0, "uuid": "<u>uuid</u>", "model": "<marquee>m</marquee>", "driver_version": "<s>d</s>"}],
        "gpu_samples": [{"ts": recent(1, 1, 2)[0], "index": 0, "util_pct": 5.0}],
        "host_samples": [{"ts": recent(1, 1, 2)[0], "cpu_util_pct": 1.0}],
        "events": [{"ts": recent(1, 1, 3)[0], "index": 0, "kind": "xid", "code": 31, "message": "<script>alert(3)</script>"}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    app.store
        .create_agent_token("<script>tok</script>", "<b>note</b>")
        .await
        .unwrap();
    let cookie = app.login("ops", "correct horse").await;
    let enc = rackwatch::web::page::seg;
    let pages = [
        "/".to_string(),
        "/?metric=health".to_string(),
        format!("/hosts/{}", enc(evil)),
        format!("/hosts/{}/gpus/0", enc(evil)),
        format!("/racks/{}/{}", enc(site), enc(rack)),
        "/inventory?q=%3Cscript".to_string(),
        "/admin".to_string(),
    ];
    for p in pages {
        let (st, html) = app.page(&cookie, &p).await;
        assert_eq!(st, 200, "{p}: {html}");
        for raw in [
            "<script>alert",
            "<img src=x",
            "<b>s</b>",
            "<svg onload",
            "<marquee>",
            "<u>uuid",
            "<s>d</s>",
            "<i>p</i>",
            "<script>tok",
            "<b>note",
        ] {
            assert!(!html.contains(raw), "{p} contains raw {raw}");
        }
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{p}: escaped name shown"
        );
    }
    app.stop().await;
}

const ALERT_RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid"]
severity = "critical"
summary = "GPU reported an XID error"
resolve_after_secs = 86400

[[rule]]
name = "gpu-throttling"
kind = "hardware"
events = ["thermal_throttle"]
severity = "warning"
summary = "GPU is being throttled"
resolve_after_secs = 2
"#;

/// The `<section id="alerts">` of a page.
fn alerts_section(html: &str) -> &str {
    let i = html
        .find("<section id=\"alerts\"")
        .unwrap_or_else(|| panic!("no alerts section: {html}"));
    &html[i..i + html[i..].find("</section>").unwrap()]
}

#[tokio::test]
async fn alerts_touching_a_host_show_on_its_host_and_rack_pages_only() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, ALERT_RULES).unwrap();
    let db = crate::support::fresh_database().await;
    let app = TestApp::spawn_full(db, |c| {
        c.alerting.rules_file = rules.to_string_lossy().into_owned();
        c.alerting.eval_interval_secs = 1;
    })
    .await;
    // XID 79 on GPU 1 of gpu-node-7 (rack r07) stays firing; a thermal throttle on
    // GPU 0 of gpu-node-8 (same rack) fires and resolves after 2 quiet seconds.
    seed_fleet(&app).await;
    let token = app.token("gpu-node-8").await;
    let ten_min_ago = recent(1, 1, 600)[0];
    let body = json!({"host": {"name": "gpu-node-8", "site": "fra1", "rack": "r07", "pool": "train-a"},
        "events": [{"ts": ten_min_ago, "index": 0, "kind": "thermal_throttle", "message": "HW thermal slowdown"}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let states: Vec<(String, String)> =
            sqlx::query_as("SELECT rule, state FROM alerts ORDER BY rule")
                .fetch_all(&app.store.pool)
                .await
                .unwrap();
        if states
            == [
                ("gpu-throttling".to_string(), "resolved".to_string()),
                ("gpu-xid".to_string(), "firing".to_string()),
            ]
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts did not settle: {states:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let cookie = app.login("ops", "correct horse").await;
    let xid = "GPU reported an XID error";
    let throttle = "GPU is being throttled";

    // The host with the faulty GPU: its firing GPU alert, linked to the alerts page.
    let (st, html) = app.page(&cookie, "/hosts/gpu-node-7?range=1h").await;
    assert_eq!(st, 200);
    let s = alerts_section(&html);
    assert!(
        s.contains(xid) && s.contains("GPU 1") && s.contains("firing"),
        "{s}"
    );
    assert!(s.contains("href=\"/alerts\""), "{s}");
    assert!(!s.contains(throttle), "another host's alert: {s}");
    // Its neighbour in the rack: only its own (resolved) alert.
    let (_, html) = app.page(&cookie, "/hosts/gpu-node-8").await;
    let s = alerts_section(&html);
    assert!(s.contains(throttle) && s.contains("resolved"), "{s}");
    assert!(
        !s.contains(xid),
        "gpu-node-7's alert on gpu-node-8's page: {s}"
    );
    // The XID alert's earlier firings: the one resolved 2 hours ago shows as resolved
    // beside the firing one, the one resolved 30 hours ago does not.
    sqlx::query(
        "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at, resolved_at, description)
         SELECT fingerprint, rule, severity, labels, summary, now() - h * interval '1 hour', now() - (h - 1) * interval '1 hour',
                'XID 79 then'
           FROM alerts, unnest(ARRAY[3, 31]) h WHERE rule = 'gpu-xid'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let api = app.json(&cookie, "/api/v1/hosts/gpu-node-7").await;
    let states: Vec<&str> = api["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{}", api["alerts"]);
    // The earlier firing says what it said then; the firing one's incident keeps its text.
    assert_eq!(api["alerts"][1]["description"], "XID 79 then");
    let open: String = sqlx::query_scalar(
        "SELECT description FROM incidents WHERE rule = 'gpu-xid' AND resolved_at IS NULL",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert!(open.starts_with("XID 79: "), "{open}");
    let (_, html) = app.page(&cookie, "/hosts/gpu-node-7?range=6h").await;
    assert_eq!(alerts_section(&html).matches(xid).count(), 2);
    // A GPU that failed again and again: the page lists 4 resolved firings and points to
    // the Alerts page for the rest; the API has them all.
    sqlx::query(
        "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at, resolved_at)
         SELECT fingerprint, rule, severity, labels, summary, now() - h * interval '1 hour', now() - (h - 1) * interval '1 hour'
           FROM alerts, unnest(ARRAY[5, 7, 9, 11, 13]) h WHERE rule = 'gpu-xid'",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let (_, html) = app.page(&cookie, "/hosts/gpu-node-7?range=24h").await;
    let s = alerts_section(&html);
    assert_eq!(s.matches(xid).count(), 1 + 4, "{s}");
    assert!(
        s.contains("2 more resolved in the last 24 h: see the history on the Alerts page."),
        "{s}"
    );
    let api = app.json(&cookie, "/api/v1/hosts/gpu-node-7").await;
    assert_eq!(api["alerts"].as_array().map(Vec::len), Some(7));
    sqlx::query("DELETE FROM incidents WHERE started_at < now() - interval '4 hours'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    // A host in another rack: none.
    let (_, html) = app.page(&cookie, "/hosts/gpu-node-9").await;
    let s = alerts_section(&html);
    assert!(!s.contains(xid) && !s.contains(throttle), "{s}");
    assert!(
        s.contains("No firing, pending or recently resolved alerts"),
        "{s}"
    );
    // The rack page shows the alerts of every host in it, and no other rack's.
    let (_, html) = app.page(&cookie, "/racks/fra1/r07?range=1h").await;
    let s = alerts_section(&html);
    assert!(s.contains(xid) && s.contains(throttle), "{s}");
    assert!(s.contains("gpu-node-7") && s.contains("gpu-node-8"), "{s}");
    let (_, html) = app.page(&cookie, "/racks/fra1/r08").await;
    assert!(!alerts_section(&html).contains(xid));
    // The JSON API carries the same list.
    let v = app.json(&cookie, "/api/v1/hosts/gpu-node-7").await;
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(
        alerts.len(),
        2,
        "the firing one and its earlier firing: {v}"
    );
    assert_eq!(
        (&alerts[0]["rule"], &alerts[0]["state"], &alerts[0]["gpu"]),
        (&json!("gpu-xid"), &json!("firing"), &json!(1))
    );
    // Resolved long ago: no longer "recent".
    for table in ["alerts", "incidents"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET resolved_at = now() - interval '2 days' WHERE resolved_at IS NOT NULL"
        )))
        .execute(&app.store.pool)
        .await
        .unwrap();
    }
    let (_, html) = app.page(&cookie, "/hosts/gpu-node-8").await;
    assert!(!alerts_section(&html).contains(throttle));
    app.stop().await;
}

/// The latest sample of every host and GPU, straight from the raw tables.
async fn latest_from_raw(app: &TestApp) -> Vec<(String, i16, DateTime<Utc>, Option<f32>)> {
    sqlx::query_as(
        "SELECT DISTINCT ON (h.name, s.gpu_index) h.name, s.gpu_index, s.ts, s.util_pct
           FROM gpu_samples s JOIN hosts h ON h.id = s.host_id ORDER BY h.name, s.gpu_index, s.ts DESC",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn latest_samples_never_go_back_in_time() {
    let app = TestApp::spawn().await;
    let token = app.token("n1").await;
    let host = json!({"name": "n1", "site": "s", "rack": "r"});
    let gpus = |ts: &[DateTime<Utc>], util: f64| -> Vec<serde_json::Value> {
        ts.iter()
            .flat_map(|t| {
                (0..2).map(move |g| json!({"ts": t, "index": g, "util_pct": util + g as f64}))
            })
            .collect()
    };
    let hosts = |ts: &[DateTime<Utc>], cpu: f64| -> Vec<serde_json::Value> {
        ts.iter()
            .map(|t| json!({"ts": t, "cpu_util_pct": cpu}))
            .collect()
    };
    let now_ts = recent(6, 5, 10);
    let batch = json!({"host": host, "host_samples": hosts(&now_ts, 40.0), "gpu_samples": gpus(&now_ts, 50.0)});
    assert_eq!(app.ingest(&token, &batch).await.status(), 200);
    let newest = *now_ts.last().unwrap();
    let check = |hs: Vec<rackwatch::store::queries::GpuLatest>, ts: DateTime<Utc>, util: f32| {
        assert_eq!(hs.len(), 2);
        for g in &hs {
            assert_eq!(g.ts, Some(ts), "GPU {}", g.index);
            assert_eq!(g.util_pct, Some(util + g.index as f32), "GPU {}", g.index);
        }
    };
    check(
        app.store.gpus_latest(Some("n1")).await.unwrap(),
        newest,
        50.0,
    );

    // A spool replay of older samples (late data) does not replace the newer ones.
    let old = recent(6, 5, 600);
    let late =
        json!({"host": host, "host_samples": hosts(&old, 99.0), "gpu_samples": gpus(&old, 90.0)});
    assert_eq!(app.ingest(&token, &late).await.status(), 200);
    check(
        app.store.gpus_latest(Some("n1")).await.unwrap(),
        newest,
        50.0,
    );
    let h = app.store.host_latest("n1").await.unwrap().unwrap();
    assert_eq!((h.ts, h.cpu_util_pct), (Some(newest), Some(40.0)));
    // Replaying the same batch again stores nothing and changes nothing.
    let r: serde_json::Value = app.ingest(&token, &batch).await.json().await.unwrap();
    assert_eq!(r["stored"], 0, "{r}");
    check(
        app.store.gpus_latest(Some("n1")).await.unwrap(),
        newest,
        50.0,
    );

    // Out of order within one batch: the newest sample wins, not the last one listed.
    let t = recent(2, 2, 2);
    let mixed = json!({"host": host,
        "host_samples": [{"ts": t[1], "cpu_util_pct": 7.0}, {"ts": t[0], "cpu_util_pct": 8.0}],
        "gpu_samples": [{"ts": t[1], "index": 0, "util_pct": 20.0}, {"ts": t[1], "index": 1, "util_pct": 21.0},
                        {"ts": t[0], "index": 0, "util_pct": 30.0}, {"ts": t[0], "index": 1, "util_pct": 31.0}]});
    assert_eq!(app.ingest(&token, &mixed).await.status(), 200);
    check(app.store.gpus_latest(Some("n1")).await.unwrap(), t[1], 20.0);
    let h = app.store.host_latest("n1").await.unwrap().unwrap();
    assert_eq!((h.ts, h.cpu_util_pct), (Some(t[1]), Some(7.0)));
    // One GPU moving on alone leaves the other where it was.
    let t2 = recent(1, 1, 0)[0];
    let one = json!({"host": host, "gpu_samples": [{"ts": t2, "index": 1, "util_pct": 5.0}]});
    assert_eq!(app.ingest(&token, &one).await.status(), 200);
    let g = app.store.gpus_latest(Some("n1")).await.unwrap();
    assert_eq!((g[0].ts, g[0].util_pct), (Some(t[1]), Some(20.0)));
    assert_eq!((g[1].ts, g[1].util_pct), (Some(t2), Some(5.0)));
    // Always what the raw samples say is newest.
    let truth = latest_from_raw(&app).await;
    let table: Vec<(String, i16, DateTime<Utc>, Option<f32>)> = sqlx::query_as(
        "SELECT h.name, l.gpu_index, l.ts, l.util_pct FROM gpu_latest l JOIN hosts h ON h.id = l.host_id ORDER BY 1, 2",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(table, truth);
    // And the pages show it.
    let cookie = app.login("ops", "correct horse").await;
    let v = app.json(&cookie, "/api/v1/hosts/n1").await;
    assert_eq!(v["gpus"][1]["util_pct"], 5.0, "{v}");
    assert_eq!(v["host"]["cpu_util_pct"], 7.0, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn energy_since_midnight_survives_late_samples_and_counter_resets() {
    let now = Utc::now();
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    if now - midnight < chrono::Duration::minutes(2) {
        return; // the samples below would straddle midnight
    }
    let app = TestApp::spawn().await;
    let token = app.token("e1").await;
    let send = |ts: DateTime<Utc>, joules: f64| json!({"host": {"name": "e1"}, "gpu_samples": [{"ts": ts, "index": 0, "util_pct": 50.0, "energy_joules_total": joules}]});
    let kwh = || async {
        let rows = rackwatch::web::fleet::rows(&app.store, Utc::now())
            .await
            .unwrap();
        rows.energy_today_j / 3.6e6
    };
    // Yesterday's last sample, then today's first: today counts from the latter.
    let t = recent(4, 5, 30);
    assert_eq!(
        app.ingest(
            &token,
            &send(midnight - chrono::Duration::seconds(10), 1.0e6)
        )
        .await
        .status(),
        200
    );
    assert_eq!(app.ingest(&token, &send(t[0], 9.0e6)).await.status(), 200);
    assert_eq!(kwh().await, 0.0);
    assert_eq!(
        app.ingest(&token, &send(t[1], 9.0e6 + 3.6e6))
            .await
            .status(),
        200
    );
    assert_eq!(kwh().await, 1.0);
    // A late sample from before (a spool replay) changes nothing.
    assert_eq!(
        app.ingest(&token, &send(t[0] - chrono::Duration::seconds(20), 2.0e6))
            .await
            .status(),
        200
    );
    assert_eq!(kwh().await, 1.0);
    // The driver reloads: the counter restarts near zero, today's kWh are kept.
    assert_eq!(app.ingest(&token, &send(t[2], 0.0)).await.status(), 200);
    assert_eq!(kwh().await, 1.0);
    assert_eq!(app.ingest(&token, &send(t[3], 1.8e6)).await.status(), 200);
    assert_eq!(kwh().await, 1.5);
    // One batch across midnight (an agent replaying an outage): today counts from its
    // first sample of the day, not from its newest.
    let e2 = app.token("e2").await;
    let gpu = |ts: DateTime<Utc>, joules: f64| json!({"ts": ts, "index": 0, "util_pct": 50.0, "energy_joules_total": joules});
    let across = json!({"host": {"name": "e2"}, "gpu_samples": [
        gpu(midnight - chrono::Duration::seconds(10), 5.0e6),
        gpu(midnight + chrono::Duration::seconds(5), 5.1e6),
        gpu(t[3], 5.1e6 + 3.6e6),
    ]});
    assert_eq!(app.ingest(&e2, &across).await.status(), 200);
    assert_eq!(kwh().await, 2.5);
    // Samples of today that arrive after later ones (a spool replayed after live samples,
    // a back-fill) move today's start back to them, when the energy between fits what a
    // GPU can draw (the late 2.0e6 J above, 7 MJ in 20 s, did not).
    let e3 = app.token("e3").await;
    let batch = |s: Vec<(DateTime<Utc>, f64)>| {
        json!({"host": {"name": "e3"}, "gpu_samples":
        s.into_iter().map(|(t, j)| gpu(t, j)).collect::<Vec<_>>()})
    };
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let send3 = |s| {
        let body = batch(s);
        let (app, e3) = (&app, &e3);
        async move {
            let r = app.ingest(e3, &body).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    send3(vec![(t[2], 7.0e6), (t[3], 7.36e6)]).await;
    assert!(near(kwh().await, 2.6));
    // 180 kJ a minute before: 3 kW.
    let a = t[2] - chrono::Duration::seconds(60);
    send3(vec![(a, 6.82e6)]).await;
    assert!(near(kwh().await, 2.65), "{}", kwh().await);
    // Yesterday's late sample starts nothing today.
    send3(vec![(midnight - chrono::Duration::seconds(5), 1.0e6)]).await;
    assert!(near(kwh().await, 2.65));
    // A batch reaching both before today's start and past the stored sample.
    let newest = Utc::now() - chrono::Duration::seconds(10);
    send3(vec![
        (a - chrono::Duration::seconds(30), 6.73e6),
        (newest, 7.45e6),
    ])
    .await;
    assert!(near(kwh().await, 2.7), "{}", kwh().await);
    // The fleet page shows it.
    let cookie = app.login("ops", "correct horse").await;
    let (_, html) = app.page(&cookie, "/").await;
    assert!(html.contains("<b>2.7 kWh</b>"), "{html}");
    // A host taken out is no longer the fleet's: its GPUs' energy leaves the figure.
    app.store.remove_host("e3", "test").await.unwrap();
    assert!(near(kwh().await, 2.5), "{}", kwh().await);
    app.stop().await;
}

/// Two admins deleting each other at the same moment: one deletion happens, the other is
/// refused as the last admin's, so the fleet keeps an admin.
#[tokio::test]
async fn two_admins_deleting_each_other_at_once_leave_one() {
    let app = TestApp::spawn().await;
    let ann = app.login("ann", "ann-pass-1").await;
    let ben = app.login("ben", "ben-pass-1").await;
    let id_of = |users: &[rackwatch::store::auth::UserInfo], name: &str| {
        users.iter().find(|u| u.name == name).unwrap().id
    };
    let users = app.store.list_users().await.unwrap();
    let (ann_id, ben_id) = (id_of(&users, "ann"), id_of(&users, "ben"));
    let ann_token = csrf_of(&app.page(&ann, "/admin").await.1);
    let ben_token = csrf_of(&app.page(&ben, "/admin").await.1);
    let delete = |cookie: String, token: String, target: i64| {
        let app = &app;
        async move {
            app.http
                .post(format!("{}/admin/users/{target}/delete", app.base))
                .header("cookie", &cookie)
                .form(&[("csrf", token.as_str())])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (a, b) = tokio::join!(
        delete(ann, ann_token, ben_id),
        delete(ben, ben_token, ann_id)
    );
    // One is deleted; the other's request is refused as the last admin's (400), or, when
    // the deletion came first, finds its session gone (303 to the login page).
    let mut codes = [a, b];
    codes.sort();
    assert!(codes == [200, 400] || codes == [200, 303], "{codes:?}");
    let admins: Vec<_> = app
        .store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == "admin")
        .collect();
    assert_eq!(admins.len(), 1, "{admins:?}");
    app.stop().await;
}
