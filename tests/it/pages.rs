//! Dashboard pages and the JSON read API, as a browser and a script see them.

use serde_json::json;

use crate::support::{recent, TestApp};

pub async fn seed(app: &TestApp, host: &str) {
    let token = app.token(host).await;
    let ts = recent(60, 5, 5);
    let body = json!({
        "host": {"name": host, "site": "fra1", "rack": "r07", "pool": "train-a"},
        "gpus": [{"index": 0, "uuid": "GPU-1111", "model": "NVIDIA H100 80GB HBM3"}, {"index": 1, "uuid": "GPU-2222", "model": "NVIDIA H100 80GB HBM3"}],
        "host_samples": ts.iter().enumerate().map(|(i, t)| json!({"ts": t, "cpu_util_pct": 40.0 + (i % 10) as f64,
            "mem_used_bytes": 8u64 << 30, "mem_total_bytes": 64u64 << 30, "disk_read_bytes_per_s": 1.5e6, "disk_write_bytes_per_s": 2e5,
            "net_rx_bytes_per_s": 1.25e8, "net_tx_bytes_per_s": 3e7})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().flat_map(|t| (0..2).map(move |g| json!({"ts": t, "index": g, "util_pct": 97.0, "power_watts": 612.0,
            "temp_celsius": 66.0 + g as f64 * 25.0, "mem_used_bytes": 60u64 << 30}))).collect::<Vec<_>>(),
        "events": [{"ts": ts[30], "index": 1, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus"}]
    });
    let r = app.ingest(&token, &body).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn login_then_fleet_and_host_pages_show_the_data() {
    let app = TestApp::spawn().await;
    seed(&app, "gpu-node-7").await;

    // Anonymous visitors are sent to the login form.
    let r = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=/");
    // Wrong password: 401 and a message.
    let r = app.post_login("nobody", "wrongwrong").await;
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Wrong user name or password"));

    let cookie = app.login("ops", "correct horse").await;
    let fleet = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(fleet.status(), 200);
    let html = fleet.text().await.unwrap();
    assert!(html.contains("href=\"/hosts/gpu-node-7\""), "{html}");
    assert!(html.contains("fra1 / r07"));
    assert!(html.contains("125.0 MB/s"), "network rx with units");
    assert!(html.contains("8.0 GiB / 64.0 GiB"), "memory with units");
    assert!(
        html.contains(
            "2 GPUs · util 97 % (max 97 %) · 1.2 kW · max 91 °C · ▲ 1 hot · ✖ 1 with hardware events"
        ),
        "GPU summary: {html}"
    );
    assert!(
        html.contains("chip hot"),
        "a host with a 91 °C GPU is outlined"
    );
    assert!(html.contains("<b>2 / 2</b>"), "GPUs reporting");

    let host = app
        .http
        .get(format!("{}/hosts/gpu-node-7", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(host.status(), 200);
    let html = host.text().await.unwrap();
    assert_eq!(
        html.matches("<svg class=\"chart\"").count(),
        4,
        "4 host charts"
    );
    assert_eq!(
        html.matches("<figure class=\"strip\"").count(),
        4,
        "GPU utilization, power, temperature and memory, one row per GPU"
    );
    assert!(html.contains("GPU-2222"));
    assert!(html.contains("GPU has fallen off the bus"));
    // An error page keeps the signed-in header (Admin, the user, Log out), whether a
    // page found nothing or no page has the path.
    for path in ["/hosts/nope", "/no-such-page"] {
        let (status, html) = app.page(&cookie, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            html.contains(r#"<a href="/admin""#)
                && html.contains("Log out")
                && html.contains(r#"name="csrf""#),
            "{path}: {html}"
        );
    }
    // An obvious address with no list page of its own says where the list is.
    let (status, html) = app.page(&cookie, "/pools").await;
    assert_eq!(status, 404);
    assert!(
        html.contains("pools are on the capacity page, /capacity"),
        "{html}"
    );
    // Without a session it is the plain header.
    let r = app
        .http
        .get(format!("{}/no-such-page", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("Log out"));

    // Logging out ends the session.
    let token = crate::support::csrf_of(&html);
    let r = app
        .http
        .post(format!("{}/logout", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    app.stop().await;
}

/// A GPU that falls silent (off the bus) stops counting as reporting within the minute
/// its host would, and the heatmap shows it as "no data", not its last values as live.
#[tokio::test]
async fn a_silent_gpu_stops_counting_as_reporting_within_a_minute() {
    let app = TestApp::spawn().await;
    let token = app.token("quiet-gpu-host").await;
    let now = recent(1, 1, 2)[0];
    let before = recent(1, 1, 120)[0];
    let body = json!({
        "host": {"name": "quiet-gpu-host", "site": "fra1", "rack": "r01"},
        "gpus": [{"index": 0}, {"index": 1}],
        "gpu_samples": [
            {"ts": now, "index": 0, "util_pct": 80.0, "power_watts": 500.0},
            {"ts": before, "index": 1, "util_pct": 20.0, "power_watts": 300.0},
        ],
        "host_samples": [{"ts": now, "cpu_util_pct": 10.0}],
    });
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app
        .login_as(
            "viewer",
            "viewer-pass",
            rackwatch::store::auth::Role::Viewer,
        )
        .await;
    let fleet = app.json(&cookie, "/api/v1/fleet").await;
    assert_eq!(
        (&fleet["hosts_up"], &fleet["gpus_total"], &fleet["gpus_up"]),
        (&json!(1), &json!(2), &json!(1)),
        "{fleet}"
    );
    // Power and utilization now are the reporting GPU's.
    assert_eq!(fleet["gpu_power_watts"], 500.0, "{fleet}");
    assert_eq!(fleet["mean_gpu_util_pct"], 80.0, "{fleet}");
    let cells = fleet["gpus"].as_array().unwrap();
    let cell = |i: i64| cells.iter().find(|c| c["index"] == i).unwrap();
    assert_eq!(
        (&cell(0)["reporting"], &cell(0)["health"]),
        (&json!(true), &json!("ok"))
    );
    assert_eq!(
        (&cell(1)["reporting"], &cell(1)["health"], &cell(1)["scale"]),
        (&json!(false), &json!("stale"), &json!(null)),
        "{fleet}"
    );
    let (_, html) = app.page(&cookie, "/").await;
    assert!(
        html.contains(r#"class="cell stale h-stale" href="/hosts/quiet-gpu-host/gpus/1"#),
        "{html}"
    );
    // Its page says its figures are from its last sample; the reporting GPU's does not.
    let (_, silent) = app.page(&cookie, "/hosts/quiet-gpu-host/gpus/1").await;
    assert!(
        silent.contains(r#"<p class="stale" role="status" id="gpu-silent">Not reporting: the figures below are its last sample's, from <time"#),
        "{silent}"
    );
    let (_, live) = app.page(&cookie, "/hosts/quiet-gpu-host/gpus/0").await;
    assert!(!live.contains("gpu-silent"));
    // The host page's GPU table says so in its row instead of showing its last values as
    // now, and the fleet's host row counts only the reporting GPU.
    let (_, host) = app.page(&cookie, "/hosts/quiet-gpu-host").await;
    let table = &host[host.find(r#"<table id="gpus">"#).expect("GPU table")..];
    let table = &table[..table.find("</table>").unwrap()];
    let row = |i: usize| {
        let at = table
            .find(&format!(">GPU {i}</a>"))
            .unwrap_or_else(|| panic!("GPU {i} in {table}"));
        &table[at..at + table[at..].find("</tr>").unwrap()]
    };
    assert!(
        row(1).contains(r#"<td colspan="5" class="stale silent-gpu">Not reporting since <time"#)
            && !row(1).contains("300 W"),
        "{}",
        row(1)
    );
    assert!(row(0).contains("500 W") && !row(0).contains("Not reporting"));
    assert!(
        html.contains("2 GPUs · util 80 % (max 80 %) · 500 W · 1 not reporting"),
        "{html}"
    );
    // The rack counts its reporting GPUs as the fleet does.
    let (_, rack) = app.page(&cookie, "/racks/fra1/r01").await;
    assert!(
        rack.contains(r#"<b id="kpi-rack-gpus">1 / 2</b>"#),
        "{rack}"
    );
    // Fallen off the bus: the silent GPU with a hardware event is lost, and says it is
    // not reporting.
    let lost = json!({"host": {"name": "quiet-gpu-host", "site": "fra1", "rack": "r01"},
        "events": [{"ts": now, "index": 1, "kind": "gpu_lost", "code": 79, "message": "GPU has fallen off the bus"}]});
    assert_eq!(app.ingest(&token, &lost).await.status(), 200);
    let fleet = app.json(&cookie, "/api/v1/fleet").await;
    let cells = fleet["gpus"].as_array().unwrap();
    let gpu1 = cells.iter().find(|c| c["index"] == 1).unwrap();
    assert_eq!(
        (&gpu1["health"], &gpu1["reporting"]),
        (&json!("lost"), &json!(false))
    );
    let (_, html) = app.page(&cookie, "/").await;
    assert!(
        html.contains(r#"class="cell fault stale h-lost" href="/hosts/quiet-gpu-host/gpus/1"#)
            && html.contains("; lost, 1 hardware event in 24 h, not reporting (last values)"),
        "{html}"
    );
    app.stop().await;
}

/// An agent that sets no site, rack or pool (the demo's local agent, a first install):
/// every page names the missing placement and the rack link leads to a page that lists
/// the host, instead of "/ " and a link to `/racks//`.
#[tokio::test]
async fn a_host_without_site_rack_or_pool_is_shown_and_linked_as_such() {
    let app = TestApp::spawn().await;
    let token = app.token("bare-host").await;
    let now = recent(1, 1, 2)[0];
    let body = json!({
        "host": {"name": "bare-host"},
        "gpus": [{"index": 0}],
        "gpu_samples": [{"ts": now, "index": 0, "util_pct": 50.0}],
        "host_samples": [{"ts": now, "cpu_util_pct": 10.0}],
    });
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app.login("ops", "correct horse").await;
    let (status, fleet) = app.page(&cookie, "/").await;
    assert_eq!(status, 200);
    assert!(fleet.contains("<td>no site / no rack</td>"), "{fleet}");
    assert!(fleet.contains("<h3>Site no site</h3>"), "{fleet}");
    assert!(fleet.contains(r#"href="/racks/-/-?"#), "{fleet}");
    assert!(!fleet.contains("/racks//"), "{fleet}");
    let (status, host) = app.page(&cookie, "/hosts/bare-host").await;
    assert_eq!(status, 200);
    assert!(host.contains("› no site › <a href=\"/racks/-/-?"), "{host}");
    assert!(host.contains(">no rack</a>"), "{host}");
    assert!(host.contains("Pool – · agent"), "{host}");
    let (status, gpu) = app.page(&cookie, "/hosts/bare-host/gpus/0").await;
    assert_eq!(status, 200);
    assert!(gpu.contains("› no site › <a href=\"/racks/-/-?"), "{gpu}");
    let (status, rack) = app.page(&cookie, "/racks/-/-").await;
    assert_eq!(status, 200, "{rack}");
    assert!(rack.contains("<h1>Hosts without a rack"), "{rack}");
    assert!(rack.contains(">bare-host</a>"), "{rack}");
    let api = app.json(&cookie, "/api/v1/racks/-/-").await;
    assert_eq!(api["hosts"][0]["name"], "bare-host", "{api}");
    assert_eq!(
        (&api["site"], &api["rack"]),
        (&json!(""), &json!("")),
        "{api}"
    );
    let (status, inventory) = app.page(&cookie, "/inventory").await;
    assert_eq!(status, 200);
    assert!(
        inventory.contains("<td>no site / no rack</td><td>–</td>"),
        "{inventory}"
    );
    // A rack whose hosts report no GPUs says so instead of an empty heatmap and 0 W.
    let token = app.token("cpu-only").await;
    let body = json!({"host": {"name": "cpu-only", "site": "fra1", "rack": "r9"},
        "host_samples": [{"ts": now, "cpu_util_pct": 10.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let (status, rack) = app.page(&cookie, "/racks/fra1/r9").await;
    assert_eq!(status, 200, "{rack}");
    assert!(
        rack.contains(r#"<p class="muted" id="no-gpus">No host in this rack reports GPUs.</p>"#),
        "{rack}"
    );
    assert!(
        !rack.contains("kpi-rack-power") && !rack.contains("class=\"heat"),
        "{rack}"
    );
    app.stop().await;
}

#[tokio::test]
async fn hostile_host_names_are_escaped() {
    let app = TestApp::spawn().await;
    let evil = "<script>alert('x')</script>\"><img/src=x/onerror=alert(1)>";
    let token = app.token(evil).await;
    let body = json!({"host": {"name": evil, "site": "<b>s</b>"}, "host_samples": [{"ts": recent(1, 1, 2)[0], "cpu_util_pct": 1.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app.login("ops", "correct horse").await;
    let html = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>alert"), "raw script tag in page");
    assert!(!html.contains("<img src=x"), "raw img tag in page");
    assert!(!html.contains("<b>s</b>"));
    assert!(
        html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
        "escaped name shown: {html}"
    );
    app.stop().await;
}

#[tokio::test]
async fn json_api_with_basic_auth() {
    let app = TestApp::spawn().await;
    seed(&app, "api-host").await;
    app.store
        .upsert_user(
            "script",
            rackwatch::store::auth::Role::Viewer,
            "s3cret-pass",
        )
        .await
        .unwrap();
    let r = app
        .http
        .get(format!("{}/api/v1/hosts", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(format!("{}/api/v1/hosts", app.base))
        .basic_auth("script", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let hosts: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/hosts", app.base))
        .basic_auth("script", Some("s3cret-pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hosts[0]["name"], "api-host");
    assert_eq!(hosts[0]["gpu_count"], 2);
    assert_eq!(hosts[0]["net_rx_bytes_per_s"], 1.25e8);

    let from = (chrono::Utc::now() - chrono::Duration::minutes(30)).to_rfc3339();
    let to = chrono::Utc::now().to_rfc3339();
    let r = app
        .http
        .get(format!("{}/api/v1/hosts/api-host/samples", app.base))
        .query(&[("from", from.as_str()), ("to", to.as_str())])
        .basic_auth("script", Some("s3cret-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["host_samples"].as_array().unwrap().len(), 60);
    assert_eq!(v["gpu_samples"].as_array().unwrap().len(), 120);
    assert_eq!(v["gpu_samples"][0]["power_watts"], 612.0);

    let r = app
        .http
        .get(format!(
            "{}/api/v1/hosts/api-host/samples?from=yesterday",
            app.base
        ))
        .basic_auth("script", Some("s3cret-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("RFC 3339"));

    let events: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/events", app.base))
        .basic_auth("script", Some("s3cret-pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events[0]["code"], 79);
    assert_eq!(events[0]["index"], 1);
    app.stop().await;
}

/// A host with more hardware events in the range than a page lists: the newest 200 are
/// listed, and the page and its JSON say there are more, with the API's link to all of
/// them (on a GPU's page, all of that GPU's and the host-wide ones).
#[tokio::test]
async fn a_page_whose_events_are_cut_says_so_and_links_to_all_of_them() {
    let app = TestApp::spawn().await;
    let token = app.token("noisy").await;
    let mut events: Vec<_> = recent(205, 1, 600)
        .into_iter()
        .map(|t| json!({"ts": t, "index": 0, "kind": "xid", "code": 13, "message": "x"}))
        .collect();
    let others = recent(3, 1, 120);
    events.extend(
        others
            .iter()
            .map(|t| json!({"ts": t, "index": 1, "kind": "xid", "code": 48, "message": "dbe"})),
    );
    events.push(json!({"ts": others[0], "kind": "gpu_lost", "message": "host-wide"}));
    let body =
        json!({"host": {"name": "noisy"}, "gpus": [{"index": 0}, {"index": 1}], "events": events});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app.login("erin", "erin-pass").await;
    let api = app.json(&cookie, "/api/v1/hosts/noisy?range=1h").await;
    assert_eq!(api["events"].as_array().unwrap().len(), 200);
    assert_eq!(api["events_truncated"], true);
    let (_, html) = app.page(&cookie, "/hosts/noisy?range=1h").await;
    let note = &html[html.find(r#"id="events-more""#).expect("the cut is said")..];
    assert!(note.starts_with(r#"id="events-more">The newest 200 of this range; all of them in <a href="/api/v1/events?host=noisy&#38;since="#), "{note}");
    let href = note[note.find("href=\"").unwrap() + 6..]
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&");
    let all = app.json(&cookie, &href).await;
    assert_eq!(all.as_array().unwrap().len(), 209, "{href}");
    let (_, gpu) = app.page(&cookie, "/hosts/noisy/gpus/0?range=1h").await;
    assert!(gpu.contains(r#"<b id="kpi-events">200+</b>"#), "{gpu}");
    let note = &gpu[gpu.find(r#"id="events-more""#).expect("the cut is said")..];
    let href = note[note.find("href=\"").unwrap() + 6..]
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&");
    assert!(href.contains("&gpu=0&"), "{href}");
    let of_gpu = app.json(&cookie, &href).await;
    let of_gpu = of_gpu.as_array().unwrap();
    assert_eq!(of_gpu.len(), 206, "GPU 0's and the host-wide one: {href}");
    assert!(of_gpu.iter().all(|e| e["index"] != 1), "{of_gpu:?}");
    // `gpu` names a GPU only on its host.
    let r = app
        .http
        .get(format!("{}/api/v1/events?gpu=0", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("`gpu` needs `host`"));
    // Fewer than that: no note.
    let (_, quiet) = app.page(&cookie, "/hosts/noisy?range=5m").await;
    assert!(!quiet.contains("events-more"));
    app.stop().await;
}

/// An inventory larger than one answer lists says so, on the page and in the JSON.
#[tokio::test]
async fn an_inventory_past_its_row_limit_says_it_lists_the_first_rows() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO hosts (name, site, last_seen)
         SELECT 'inv-' || lpad(i::text, 5, '0'), 'fra1', now() FROM generate_series(1, 5001) i",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let cookie = app.login("erin", "erin-pass").await;
    let api = app.json(&cookie, "/api/v1/inventory").await;
    assert_eq!(api["rows"].as_array().unwrap().len(), 5000);
    assert_eq!(api["truncated"], true);
    let (_, html) = app.page(&cookie, "/inventory").await;
    assert!(
        html.contains("5000 hosts, 0 GPUs: the first 5000 rows of more; narrow the search"),
        "the cut is said"
    );
    let api = app.json(&cookie, "/api/v1/inventory?q=inv-00001").await;
    assert_eq!(api["truncated"], false);
    app.stop().await;
}

#[tokio::test]
async fn events_page_back_with_until_and_take_the_page_time_format() {
    let app = TestApp::spawn().await;
    app.store
        .upsert_user(
            "script",
            rackwatch::store::auth::Role::Viewer,
            "s3cret-pass",
        )
        .await
        .unwrap();
    let token = app.token("ev-host").await;
    let ts = recent(6, 60, 600);
    // Six instants; the fourth has five events (GPUs 0 to 4): more than a page of 3.
    let mut events: Vec<_> = ts
        .iter()
        .map(|t| json!({"ts": t, "index": 0, "kind": "xid", "code": 13, "message": "x"}))
        .collect();
    for g in 1..5 {
        events.push(json!({"ts": ts[3], "index": g, "kind": "xid", "code": 13, "message": "x"}));
    }
    let body = json!({"host": {"name": "ev-host"}, "events": events});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let fetch = |path: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .get(format!("{}{path}", app.base))
                .basic_auth("script", Some("s3cret-pass"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let link = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_string());
            (status, link, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let get = |q: String| {
        let fetch = &fetch;
        async move {
            let (status, _, page) = fetch(format!("/api/v1/events?{q}")).await;
            (status, page)
        }
    };
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/events?host=ev-host&limit=3".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (status, link, page) = fetch(path).await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        pages += 1;
        assert!(pages <= 5, "the links end");
        for e in &page {
            seen.push((
                e["ts"].as_str().unwrap().to_string(),
                e["index"].as_i64().unwrap(),
            ));
        }
        // Only a full page links on; its link keeps the request's other parameters.
        assert_eq!(link.is_some(), page.len() == 3, "{link:?}");
        next = link.map(|l| {
            // The default window is pinned to the times the first page resolved, so
            // the pages after it read the same window however late they are asked.
            assert!(
                l.ends_with(">; rel=\"next\"")
                    && l.contains("host=ev-host&since=")
                    && l.contains("&until=")
                    && l.contains("&limit=3&after="),
                "{l}"
            );
            l[1..l.find('>').unwrap()].to_string()
        });
    }
    assert_eq!(pages, 4, "10 events, 3 a page: the fourth page has one");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (seen.len(), unique.len()),
        (10, 10),
        "each event once: {seen:?}"
    );
    // Newest first, then by GPU within an instant.
    let mut ordered = seen.clone();
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen, ordered);
    // A cursor that is not one is named, not ignored.
    let (status, page) = get("after=not-a-cursor".into()).await;
    assert_eq!(status, 400);
    assert!(
        page["error"].as_str().unwrap().contains("`after`"),
        "{page}"
    );
    // Nor is a cursor of another endpoint.
    let (_, first, _) = fetch("/api/v1/events?host=ev-host&limit=3".into()).await;
    let first = first.unwrap();
    let cursor = &first[first.find("after=").unwrap() + 6..first.find('>').unwrap()];
    let r = app
        .http
        .get(format!("{}/api/v1/anomalies?after={cursor}", app.base))
        .basic_auth("script", Some("s3cret-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "an events cursor on the anomalies endpoint"
    );
    // The page's time format is taken here too (UTC); `until` before `since` is named.
    let minute = ts[5].format("%Y-%m-%dT%H:%M").to_string();
    let (status, page) = get(format!(
        "until={minute}&since={}",
        ts[0].format("%Y-%m-%dT%H:%M")
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page.as_array().unwrap().len(), 9, "{page}");
    let (status, e) = get(format!(
        "since={minute}&until={}",
        ts[0].format("%Y-%m-%dT%H:%M")
    ))
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("is before `since`"),
        "{e}"
    );
    // An unencoded `+` of an offset reads as a space: the error says so.
    let (status, e) = get("until=2026-11-23T12:00:00+01:00".into()).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("%2B"), "{e}");
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_the_script_is_external() {
    let app = TestApp::spawn().await;
    seed(&app, "gpu-node-7").await;
    let cookie = app.login("ops", "correct horse").await;
    for (path, with_cookie) in [
        ("/login", false),
        ("/", false),
        ("/", true),
        ("/hosts/gpu-node-7", true),
        ("/api/v1/fleet", true),
        ("/no/such/page", true),
        ("/assets/app.js", false),
    ] {
        let mut req = app.http.get(format!("{}{path}", app.base));
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        let r = req.send().await.unwrap();
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        assert!(
            h.get("strict-transport-security").is_none(),
            "{path}: no HSTS on plain HTTP"
        );
    }
    // Pages load their one script from the server; none is inline (the policy would
    // block it).
    let (_, html) = app.page(&cookie, "/").await;
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script src="/assets/app.js"></script>"#));
    let js = app
        .http
        .get(format!("{}/assets/app.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(js.text().await.unwrap().contains("visibilitychange"));
}

#[tokio::test]
async fn pages_answer_errors_as_pages_and_the_api_as_json() {
    let app = TestApp::spawn().await;
    seed(&app, "gpu-err").await;
    let cookie = app.login("admin", "pw-for-errors").await;
    let get = |path: &str| {
        app.http
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .send()
    };
    for path in [
        "/hosts/no-such-host",
        "/hosts/gpu-err/gpus/7",
        "/racks/nowhere/r0",
        "/no/such/page",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        let body = r.text().await.unwrap();
        assert!(body.contains("<h1>Not found</h1>"), "{path}: {body}");
        assert!(body.contains("href=\"/\""), "{path}: a way back");
    }
    let r = get("/hosts/gpu-err?metric=bogus&range=nonsense")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("<h1>Bad request</h1>"));
    // API-looking paths (`/api`, `//api/…`, `/API/…`) answer JSON too.
    for path in [
        "/api/v1/hosts/no-such-host",
        "/api/v1/no-such-endpoint",
        "/api",
        "//api/v1/hosts",
        "/API/V1/HOSTS",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("no"), "{path}: {v}");
    }
}

/// A malformed or unknown query parameter is refused with the parameter's name and what
/// the route takes: as JSON on the API, as an error page on pages, never silently ignored
/// (`?host=` on the forecasts API used to answer with every host's forecasts).
#[tokio::test]
async fn unknown_or_malformed_parameters_are_named_not_ignored() {
    let app = TestApp::spawn().await;
    seed(&app, "gpu-par").await;
    let cookie = app.login("admin", "pw-for-params").await;
    let get = |path: String| {
        app.http
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .send()
    };
    for (path, expect) in [
        (
            "/api/v1/events?limit=0",
            "`limit` = 0: use 1 to 10000 (larger values are capped)",
        ),
        (
            "/api/v1/audit?limit=-5",
            "`limit` = -5: use 1 to 10000 (larger values are capped)",
        ),
        (
            "/api/v1/forecasts?host=gpu-par",
            "query string: unknown parameter `host`, expected one of `scope`, `key`, `metric`",
        ),
        (
            "/api/v1/hosts/gpu-par?range=1h&tzo=east",
            "query string: parameter `tzo`: not a whole number",
        ),
        (
            "/api/v1/events?limit=ten",
            "query string: parameter `limit`: not a whole number",
        ),
        (
            "/api/v1/hosts/gpu-par/samples?metric=gpu_temp_c",
            "query string: unknown parameter `metric`, expected `from` or `to`",
        ),
        // Each page's endpoint takes its own parameters, not every page's.
        (
            "/api/v1/inventory?range=6h",
            "query string: unknown parameter `range`, expected `q`",
        ),
        (
            "/api/v1/fleet?q=h100",
            "query string: unknown parameter `q`, expected `metric`",
        ),
        (
            "/api/v1/hosts/gpu-par?metric=power",
            "query string: unknown parameter `metric`, expected one of `range`, `from`, `to`, `tzo`",
        ),
        (
            "/api/v1/hosts/gpu-par/gpus/0?q=x",
            "query string: unknown parameter `q`, expected one of `range`, `from`, `to`, `tzo`",
        ),
        (
            "/api/v1/forecasts?scope=host&metric=demand_gpus",
            "metric \"demand_gpus\" is forecast for pools only (scope=pool)",
        ),
    ] {
        let r = get(path.to_string()).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], expect, "{path}");
    }
    // A host filter names a host, as on the anomalies endpoint: an unknown one is a 404,
    // an empty one is every host.
    let r = get("/api/v1/events?host=no-such-host".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "no host named \"no-such-host\"");
    for path in ["/api/v1/events?host=", "/api/v1/events?host=gpu-par"] {
        assert_eq!(get(path.into()).await.unwrap().status(), 200, "{path}");
    }
    // Another method on a known path: 405 with the error body every error has, and Allow.
    let r = app
        .http
        .put(format!("{}/api/v1/capacity", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["error"],
        "method PUT is not allowed here; this path takes GET"
    );
    let r = app
        .http
        .delete(format!("{}/alerts", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<h1>Method not allowed</h1>")
            && body.contains("method DELETE is not allowed here; this path takes GET"),
        "{body}"
    );
    let r = get("/hosts/gpu-par?rnage=6h".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<h1>Bad request</h1>") && body.contains("unknown parameter `rnage`"),
        "{body}"
    );
    // The framework's own refusals (a path segment that is not UTF-8) keep their reason, as JSON for the API and as the error page for people.
    for (path, reason) in [
        ("/api/v1/hosts/%FF%FE", "Invalid UTF-8 in `name`"),
        ("/api/v1/capacity/pools/%FF", "Invalid UTF-8 in `pool`"),
    ] {
        let r = get(path.into()).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(reason), "{path}: {v}");
    }
    let r = get("/hosts/%FF".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<h1>Bad request</h1>") && body.contains("Invalid UTF-8 in `name`"),
        "{body}"
    );
    // A time range parameter that would be ignored is refused, naming it.
    let r = get("/api/v1/hosts/gpu-par?to=garbage".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("`to` = \"garbage\" needs `from`"),
        "{v}"
    );
    // A page that takes no parameters says so instead of ignoring a filter.
    for path in [
        "/alerts?state=firing",
        "/docs/energy?week=2026-W47",
        "/admin?tab=users",
    ] {
        let r = get(path.to_string()).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body = r.text().await.unwrap();
        let name = &path[path.find('?').unwrap() + 1..path.find('=').unwrap()];
        assert!(
            body.contains(&format!(
                "unknown parameter `{name}`: this takes no parameters"
            )),
            "{path}: {body}"
        );
    }
    // The parameters a page's own links and forms send are all accepted: the rack page's
    // custom range form carries its heatmap metric along.
    let r = get("/racks/fra1/r07?range=6h&metric=power".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(r#"<input type="hidden" name="metric" value="power">"#),
        "the custom range keeps the metric"
    );
    assert!(body.contains("?range=24h&#38;metric=power"), "{body}");
    let from = (chrono::Utc::now() - chrono::Duration::hours(2)).format("%Y-%m-%dT%H:%M");
    let to = chrono::Utc::now().format("%Y-%m-%dT%H:%M");
    let r = get(format!(
        "/racks/fra1/r07?from={from}&to={to}&tzo=-60&metric=power"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}
