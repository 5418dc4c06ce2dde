//! Attacks found when the server was probed, each replayed against the real server. Every
//! test here failed before the fix it guards (the comments say how).

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{recent, TestApp};

/// Tests that measure this process's peak memory run one at a time with tests that use
/// much of it (all tests share the process).
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Peak resident memory of this process (the server runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// Read from a raw connection until it closes or `secs` pass; `None` on timeout.
async fn read_until_closed(s: &mut TcpStream, secs: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Before: every Basic request ran argon2id (19 MiB) on its own thread, with no limit and
/// no throttle — 48 clients left 9.1 GB retained, 200 guesses went through unthrottled.
#[tokio::test]
async fn basic_auth_floods_run_few_password_checks_and_are_throttled() {
    let _alone = MEMORY.lock().await;
    let app = TestApp::spawn_with(|c| c.server.password_checks = 2).await;
    let before = peak_rss_mib();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (http, url) = (app.http.clone(), format!("{}/api/v1/hosts", app.base));
            tokio::spawn(async move {
                let r = http
                    .get(url)
                    .header("authorization", basic(&format!("nobody-{i}"), "guess"))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    // One address gets 30 attempts at once; the rest wait for its bucket to refill.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 10,
        "{statuses:?}"
    );
    assert!(grown < 150, "peak RSS grew {grown} MiB");
    // Guessing one user's password over Basic is throttled like the login form.
    let mut throttled = None;
    for i in 0..12 {
        let r = app
            .http
            .get(format!("{}/api/v1/hosts", app.base))
            .header("authorization", basic("admin", &format!("guess-{i}")))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            throttled = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            break;
        }
    }
    assert!(throttled.is_some(), "no 429 for repeated Basic guesses");
    app.stop().await;
}

/// Before: guesses sent at once all passed the back-off check before the first failure
/// was counted (25 wrong passwords at once: 25 checked). Now an attempt is counted before
/// its check, so a burst is throttled as if sent one by one.
#[tokio::test]
async fn guesses_sent_at_once_are_throttled_as_if_sent_one_by_one() {
    let app = TestApp::spawn().await;
    app.store
        .upsert_user(
            "target",
            rackwatch::store::auth::Role::Viewer,
            "right-pass-1",
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (http, url) = (app.http.clone(), format!("{}/api/v1/hosts", app.base));
            tokio::spawn(async move {
                http.get(url)
                    .header("authorization", basic("target", &format!("guess-{i}")))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    // Five free failures per (name, address), then each waits 1 s, 2 s, …: a burst that
    // takes over a second may get one more.
    assert!((5..=6).contains(&checked), "{statuses:?}");
    assert_eq!(checked + statuses.iter().filter(|s| **s == 429).count(), 20);
    // Each refusal is in the audit trail, the throttled ones with their reason.
    let rows = app.audit("login").await;
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.outcome == "refused" && r.details["method"] == "basic"));
    assert_eq!(
        rows.iter()
            .filter(|r| r.details["reason"]
                .as_str()
                .unwrap()
                .starts_with("too many failed logins"))
            .count(),
        20 - checked
    );
    app.stop().await;
}

/// Before: a 64 KiB gzip body of empty samples inflated to 22 M items, each became a
/// rejection before the sample cap was checked (21 s, 6.45 GB peak), then 413.
#[tokio::test]
async fn an_item_bomb_is_refused_at_the_item_limit_without_building_rejections() {
    let _alone = MEMORY.lock().await;
    let app = TestApp::spawn_with(|c| c.ingest.max_samples_per_batch = 1000).await;
    let token = app.token("bomb").await;
    let mut raw = Vec::with_capacity(7_000_000);
    raw.extend_from_slice(br#"{"host":{"name":"bomb"},"host_samples":["#);
    for i in 0..2_000_000 {
        if i > 0 {
            raw.push(b',');
        }
        raw.extend_from_slice(b"{}");
    }
    raw.extend_from_slice(b"]}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw).unwrap();
    let body = gz.finish().unwrap();
    assert!(body.len() < 64 * 1024, "{}", body.len());
    let before = peak_rss_mib();
    let r = app
        .http
        .post(format!("{}/api/v1/ingest", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(text.contains("more than 1000"), "{text}");
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 60, "peak RSS grew {grown} MiB");

    // Under the cap, a batch of bad samples lists the first 1000 reasons and counts all.
    let ts = recent(1, 1, 1)[0];
    let bad: Vec<_> = (0..999)
        .map(|_| json!({"ts": ts, "cpu_util_pct": 500.0}))
        .collect();
    let gpus: Vec<_> = (0..1)
        .map(|_| json!({"ts": ts, "index": 0, "util_pct": 50.0}))
        .collect();
    let r = app
        .ingest(
            &token,
            &json!({"host": {"name": "bomb"}, "host_samples": bad, "gpu_samples": gpus}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"], 999);
    assert_eq!(v["errors"].as_array().unwrap().len(), 999);
    app.stop().await;
}

#[tokio::test]
async fn rejections_past_a_thousand_are_counted_not_listed() {
    let app = TestApp::spawn().await;
    let token = app.token("many").await;
    let ts = recent(1, 1, 1)[0];
    let bad: Vec<_> = (0..5000)
        .map(|i| json!({"ts": ts, "index": (i % 8) as u8, "util_pct": 500.0}))
        .collect();
    let r = app
        .ingest(
            &token,
            &json!({"host": {"name": "many"}, "gpu_samples": bad}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rejected"], 5000);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1000);
    app.stop().await;
}

/// Before: ingest read the whole body before looking at the token, so anonymous clients
/// could make it hold 8 MiB each.
#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n\
          Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{\"host\":",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    app.stop().await;
}

/// Before: half-sent headers and idle connections stayed open for at least 45 s
/// (slowloris), and nothing bounded the number of connections.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_counted() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout_secs = 1;
        c.server.body_timeout_secs = 1;
        c.server.max_connections = 4;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Half-sent headers.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert!(read_until_closed(&mut s, 5).await.is_some(), "still open");
    assert!(t.elapsed() < Duration::from_secs(4));
    // An idle keep-alive connection after one request.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until_closed(&mut s, 5)
        .await
        .expect("idle connection closed");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A body that stops arriving, from a client with a valid token.
    let token = app.token("slow").await;
    let mut s = crate::support::stalled_upload(&app, &token).await;
    let out = read_until_closed(&mut s, 5)
        .await
        .expect("stalled body cut off");
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // At most four connections: a fifth is closed at once, and served again later.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = TcpStream::connect(&addr).await.unwrap();
    let closed = read_until_closed(&mut fifth, 1).await;
    assert_eq!(
        closed.as_deref(),
        Some(""),
        "fifth connection closed unanswered"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// Before: a NUL in `agent.version` answered 500 (the agent then retried that batch
/// forever), and a 10 MB version was stored and shown on the inventory page.
#[tokio::test]
async fn a_bad_agent_section_is_left_out_with_a_reason_and_the_samples_kept() {
    let app = TestApp::spawn().await;
    let token = app.token("agent-x").await;
    let ts = recent(1, 1, 1)[0];
    for version in ["1.0\u{0}evil".to_string(), "v".repeat(100_000)] {
        let r = app
            .ingest(
                &token,
                &json!({"host": {"name": "agent-x"}, "agent": {"version": version},
                        "host_samples": [{"ts": ts, "cpu_util_pct": 12.0}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["accepted"], 1, "{v}");
        let e = &v["errors"][0];
        assert_eq!(
            (e["section"].as_str(), e["field"].as_str()),
            (Some("agent"), Some("version")),
            "{v}"
        );
    }
    let stored: String =
        sqlx::query_scalar("SELECT agent_version FROM hosts WHERE name = 'agent-x'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(stored, "");
    app.stop().await;
}

/// Before: `next=/\t/evil.example/` passed the check and browsers followed it off-site;
/// `next=/\n/x` gave a 500 after a good login.
#[tokio::test]
async fn login_redirects_only_to_this_site() {
    let app = TestApp::spawn().await;
    app.store
        .upsert_user("ann", rackwatch::store::auth::Role::Viewer, "ann-password")
        .await
        .unwrap();
    for (next, want) in [
        ("/\t/evil.example/", "/"),
        ("/\n/x", "/"),
        ("//evil.example/", "/"),
        // Dot segments that normalize to a protocol-relative path.
        ("/.//evil.example/", "/"),
        ("/x/..//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/%2F%2Fevil.example", "/%2F%2Fevil.example"),
        ("/hosts/gpu-1?range=6h", "/hosts/gpu-1?range=6h"),
    ] {
        let (cookie, csrf) = app.login_csrf().await;
        let r = app
            .http
            .post(format!("{}/login", app.base))
            .header("cookie", cookie)
            .form(&[
                ("username", "ann"),
                ("password", "ann-password"),
                ("csrf", csrf.as_str()),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{next:?}");
        assert_eq!(r.headers()["location"], want, "{next:?}");
    }
    // A login form too large to be one is 413, like any other body over its cap.
    let (cookie, csrf) = app.login_csrf().await;
    let r = app
        .http
        .post(format!("{}/login", app.base))
        .header("cookie", cookie)
        .form(&[
            ("username", "ann"),
            ("password", &"x".repeat(3 << 20)),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A Basic user name no user can have is a wrong name, not a server error.
    let r = app
        .http
        .get(format!("{}/api/v1/hosts", app.base))
        .basic_auth("u".repeat(10_000), Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("user name or password is wrong"));
    app.stop().await;
}

/// Right passwords sent at once from many new addresses are each counted before their
/// check: past ten, the name's back-off would block. Taken back as they succeed, they
/// leave no block: the next login from yet another address gets in at once.
#[tokio::test]
async fn right_passwords_sent_at_once_leave_no_block_behind() {
    let app = TestApp::spawn().await;
    app.store
        .upsert_user(
            "svc",
            rackwatch::store::auth::Role::Viewer,
            "svc-password-1",
        )
        .await
        .unwrap();
    let from = |last: u8| {
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap();
        let url = format!("{}/api/v1/hosts", app.base);
        async move {
            http.get(url)
                .header("authorization", basic("svc", "svc-password-1"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let tasks: Vec<_> = (20..34).map(|i| tokio::spawn(from(i))).collect();
    let mut burst = Vec::new();
    for t in tasks {
        burst.push(t.await.unwrap());
    }
    assert!(burst.iter().all(|s| [200, 429].contains(s)), "{burst:?}");
    assert!(
        burst.iter().filter(|s| **s == 200).count() >= 10,
        "{burst:?}"
    );
    assert_eq!(
        from(40).await,
        200,
        "no block left by the burst ({burst:?})"
    );
    app.stop().await;
}

/// Before: every refused attempt wrote an audit row, so a flood from one address wrote
/// rows as fast as it sent requests. Attempts past the address's bucket are recorded
/// once a minute; every attempt checked is still recorded.
#[tokio::test]
async fn a_login_flood_from_one_address_writes_few_audit_rows() {
    let app = TestApp::spawn().await;
    let mut statuses = Vec::new();
    for i in 0..45 {
        let r = app
            .http
            .get(format!("{}/api/v1/hosts", app.base))
            .header("authorization", basic(&format!("flood{i}"), "x"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 10, "{statuses:?}");
    let rows = app.audit("login").await;
    let bucket = rows
        .iter()
        .filter(|r| {
            r.details["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("too many login attempts from this address")
        })
        .count();
    assert_eq!(bucket, 1, "{rows:?}");
    assert_eq!(rows.len(), 45 - limited + 1, "{rows:?}");
    app.stop().await;
}

/// Behind a reverse proxy every client connects from the proxy's address: one guesser
/// emptied that address's login bucket for everyone. With the proxy in
/// `server.trusted_proxies`, each client is counted, remembered and audited by the address
/// the proxy forwards; from anyone else the header is ignored.
#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_forwarded_for() {
    let app = TestApp::spawn_with(|c| c.server.trusted_proxies = vec!["127.0.0.1".into()]).await;
    app.store
        .upsert_user("ann", rackwatch::store::auth::Role::Viewer, "ann-password")
        .await
        .unwrap();
    let get = |who: &'static str, pw: &'static str| {
        let app = &app;
        async move {
            app.http
                .get(format!("{}/api/v1/hosts", app.base))
                .header("x-forwarded-for", who)
                .basic_auth("ann", Some(pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // A guesser at 203.0.113.66 (one a client claimed first is not believed) spends its
    // own bucket and its own back-off.
    let mut refused = 0;
    for _ in 0..40 {
        if get("10.9.9.9, 203.0.113.66", "guess").await == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 30, "{refused} of 40 guesses throttled");
    // Ann, through the same proxy from her own address, gets in.
    assert_eq!(get("198.51.100.7", "ann-password").await, 200);
    let rows = app.audit("login").await;
    assert!(
        rows.iter()
            .filter(|r| r.outcome == "refused")
            .all(|r| r.source.as_deref() == Some("203.0.113.66")),
        "{rows:?}"
    );
    app.stop().await;
}

impl TestApp {
    /// A form login carrying `extra` cookies; returns the response.
    async fn login_with(&self, user: &str, pw: &str, extra: &str) -> reqwest::Response {
        let (cookie, csrf) = self.login_csrf().await;
        let cookies = if extra.is_empty() {
            cookie
        } else {
            format!("{cookie}; {extra}")
        };
        self.http
            .post(format!("{}/login", self.base))
            .header("cookie", cookies)
            .form(&[
                ("username", user),
                ("password", pw),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await
            .unwrap()
    }
}

/// Before: five bad tries locked a user's form login for 300 s even with the right
/// password, and 20 from one address locked every user out of that address.
#[tokio::test]
async fn guessing_slows_the_guesser_and_never_locks_the_owner_out() {
    let app = TestApp::spawn().await;
    use rackwatch::store::auth::Role;
    for u in ["ann", "bob"] {
        app.store
            .upsert_user(u, Role::Viewer, &format!("{u}-password"))
            .await
            .unwrap();
    }
    // Ann logs in once from her browser, which keeps a device cookie.
    let r = app.login_with("ann", "ann-password", "").await;
    assert_eq!(r.status(), 303);
    let device = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("rw_device="))
        .expect("device cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Someone guesses at ann's password (without her cookie) until throttled.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            app.login_with("ann", &format!("guess-{i}"), "")
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Ann, from her browser, gets in at once.
    assert_eq!(
        app.login_with("ann", "ann-password", &device)
            .await
            .status(),
        303
    );
    // Her password is reset (it leaked): a browser that logged in with the old one is no
    // longer trusted, and waits like anyone at that address.
    app.store
        .upsert_user("ann", Role::Viewer, "ann-new-password")
        .await
        .unwrap();
    assert_eq!(
        app.login_with("ann", "ann-new-password", &device)
            .await
            .status(),
        429
    );
    // Guesses spread over many names from one address do not lock its other users out.
    for i in 0..22 {
        app.login_with(&format!("user{i}"), "guess", "").await;
    }
    // (The address's bucket may be empty after 30 attempts at once: bob then waits a
    // couple of seconds, never minutes.)
    let mut r = app.login_with("bob", "bob-password", "").await;
    if r.status() == 429 {
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait <= 2, "{wait}");
        tokio::time::sleep(Duration::from_millis(wait * 1000 + 100)).await;
        r = app.login_with("bob", "bob-password", "").await;
    }
    assert_eq!(r.status(), 303);
    app.stop().await;
}

/// Before: sessions survived a password reset or a role change for their full 12 h, and
/// had no idle timeout.
#[tokio::test]
async fn sessions_end_on_password_or_role_change_and_when_idle() {
    let app = TestApp::spawn().await;
    use rackwatch::store::auth::Role;
    let cookie = app.login_as("ann", "ann-password", Role::Operator).await;
    assert_eq!(app.page(&cookie, "/").await.0, 200);
    app.store
        .upsert_user("ann", Role::Operator, "new-password")
        .await
        .unwrap();
    assert_eq!(
        app.page(&cookie, "/").await.0,
        303,
        "password reset ends sessions"
    );
    let cookie = app.login_as("ann", "ann-password", Role::Operator).await;
    app.store
        .upsert_user("ann", Role::Viewer, "ann-password")
        .await
        .unwrap();
    assert_eq!(
        app.page(&cookie, "/").await.0,
        303,
        "role change ends sessions"
    );
    let cookie = app.login_as("ann", "ann-password", Role::Viewer).await;
    assert_eq!(app.page(&cookie, "/").await.0, 200);
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '61 minutes'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(app.page(&cookie, "/").await.0, 303, "idle session ended");
    app.stop().await;
}

/// Before: `/metrics` was open to anyone and named every host; content types were never
/// checked; a rejected label key was echoed back in full.
#[tokio::test]
async fn metrics_need_credentials_ingest_needs_json_and_errors_quote_briefly() {
    let app = TestApp::spawn().await;
    let url = format!("{}/metrics", app.base);
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        app.http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert!(app
        .metrics()
        .await
        .contains("rackwatch_ingest_requests_total"));
    app.store
        .upsert_user(
            "viewer",
            rackwatch::store::auth::Role::Viewer,
            "viewer-password",
        )
        .await
        .unwrap();
    let r = app
        .http
        .get(&url)
        .header("authorization", basic("viewer", "viewer-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let open = TestApp::spawn_with(|c| c.server.metrics_public = true).await;
    let r = open
        .http
        .get(format!("{}/metrics", open.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    open.stop().await;

    let token = app.token("ct").await;
    let r = app
        .http
        .post(format!("{}/api/v1/ingest", app.base))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"host":{"name":"ct"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.text().await.unwrap().contains("application/json"));

    let key = "k".repeat(10_000) + "!";
    let r = app
        .ingest(
            &token,
            &json!({"host": {"name": "ct", "labels": {key: "v"}}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.len() < 600, "{} bytes: {text}", text.len());
    app.stop().await;
}

/// A raw connection to the server from the loopback address `from` (127.0.0.x).
async fn connect_from(app: &TestApp, from: &str, recv_buffer: Option<u32>) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    sock.connect(addr).await.unwrap()
}

/// Before: 1,100 idle connections from one address (reopened as the server closed them)
/// took all 1,024 connection slots, and every other client was refused for as long as
/// it went on.
#[tokio::test]
async fn one_client_cannot_take_the_other_clients_connections() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections_per_client = 4;
        c.server.per_client_exempt = vec!["127.0.0.3".into()];
    })
    .await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Four half-sent requests from 127.0.0.1: a fifth connection from there is closed
    // unanswered.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from(&app, "127.0.0.1", None).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect_from(&app, "127.0.0.1", None).await;
    let _ = fifth.write_all(healthz).await;
    assert_eq!(read_until_closed(&mut fifth, 2).await.as_deref(), Some(""));
    // Another client is served.
    let mut other = connect_from(&app, "127.0.0.2", None).await;
    other.write_all(healthz).await.unwrap();
    let out = read_until_closed(&mut other, 5).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // An exempt address (a reverse proxy) may hold more.
    let mut proxied = Vec::new();
    for _ in 0..5 {
        let mut c = connect_from(&app, "127.0.0.3", None).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        proxied.push(c);
    }
    let mut sixth = connect_from(&app, "127.0.0.3", None).await;
    sixth.write_all(healthz).await.unwrap();
    let out = read_until_closed(&mut sixth, 5).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Closed connections count no more, and the refusal is counted.
    drop(held);
    drop(proxied);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == "rackwatch_http_connections_refused_per_client_total 1"),
        "{m}"
    );
    app.stop().await;
}

/// Before: 16 connections that asked for a day of a host's raw samples (55 MB each) and
/// then read nothing held 1.4 GB for as long as they stayed open.
#[tokio::test]
async fn a_client_that_stops_reading_a_large_answer_is_closed_and_frees_its_turn() {
    let _alone = MEMORY.lock().await;
    let app = TestApp::spawn_with(|c| c.server.write_timeout_secs = 2).await;
    let token = app.token("big").await;
    let samples: Vec<_> = recent(40_000, 1, 60)
        .into_iter()
        .map(|ts| json!({"ts": ts, "cpu_util_pct": 12.5, "mem_used_bytes": 1_000_000}))
        .collect();
    let r = app
        .ingest(
            &token,
            &json!({"host": {"name": "big"}, "host_samples": samples}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let cookie = app
        .login_as(
            "reader",
            "reader-password",
            rackwatch::store::auth::Role::Viewer,
        )
        .await;
    let from = (chrono::Utc::now() - chrono::Duration::hours(23))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let path = format!("/api/v1/hosts/big/samples?from={from}");
    // Two clients ask and read nothing: they hold both turns to send a large answer.
    let mut stalled = Vec::new();
    for _ in 0..rackwatch::web::body::BULK_ANSWERS {
        let mut c = connect_from(&app, "127.0.0.1", Some(4096)).await;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    // Both are being answered (their status lines arrived), so both hold a turn, however
    // long the machine took to build the answers.
    let mut heads = Vec::new();
    for c in &mut stalled {
        let mut head = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut head))
            .await
            .expect("the answer starts within 30 s")
            .unwrap();
        heads.push(String::from_utf8_lossy(&head).into_owned());
    }
    // A third is served once the write timeout has closed them, not refused.
    let t0 = std::time::Instant::now();
    let r = app.get(&cookie, &path).await;
    assert_eq!(r.status(), 200);
    let full = r.bytes().await.unwrap().len();
    // Larger than what the sockets' buffers hold (4 MiB sent, 4 KiB received).
    assert!(full > 6 << 20, "{full} bytes");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "it waited for a turn: {waited:?}"
    );
    // The stalled connections were closed with most of their answer unsent.
    for (mut c, head) in stalled.into_iter().zip(heads) {
        let got = head
            + &read_until_closed(&mut c, 5)
                .await
                .expect("closed by the server");
        assert!(
            got.starts_with("HTTP/1.1 200"),
            "{}",
            &got[..got.len().min(100)]
        );
        assert!(got.len() < full, "{} of {full} bytes", got.len());
    }
    app.stop().await;
}

/// Before: guesses at one user from many addresses locked the user's HTTP Basic clients
/// (scripts, Prometheus) out with 429, even with the right password.
#[tokio::test]
async fn guesses_from_many_addresses_do_not_lock_out_a_known_basic_client() {
    let app = TestApp::spawn().await;
    app.store
        .upsert_user("ops", rackwatch::store::auth::Role::Viewer, "ops-password")
        .await
        .unwrap();
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let url = format!("{}/api/v1/hosts", app.base);
    let call = |client: reqwest::Client, pw: &'static str| {
        let url = url.clone();
        async move {
            client
                .get(url)
                .basic_auth("ops", Some(pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The script logs in once from its address.
    assert_eq!(call(from(2), "ops-password").await, 200);
    // Three guesses each from five other addresses: the user's back-off starts.
    for last in 10..15 {
        for _ in 0..3 {
            call(from(last), "guess").await;
        }
    }
    // (A verified password is remembered for a few minutes: a new one makes every
    // request below a real password check.)
    app.store
        .upsert_user(
            "ops",
            rackwatch::store::auth::Role::Viewer,
            "ops-password-2",
        )
        .await
        .unwrap();
    assert_eq!(
        call(from(3), "ops-password-2").await,
        429,
        "an address new to the user waits"
    );
    // The script's address is known: it gets in.
    assert_eq!(call(from(2), "ops-password-2").await, 200);
    // Before: the script's verified password was remembered for any address, so during
    // the back-off the right guess from a new address got in at once (and the wrong ones
    // were refused without a password check: a guesser could tell at full speed). Now the
    // memory is per address: the guesser's right guess waits like its wrong ones.
    for _ in 0..3 {
        call(from(20), "guess").await;
    }
    assert_eq!(
        call(from(20), "ops-password-2").await,
        429,
        "the right password from the guessing address waits too"
    );
    assert_eq!(
        call(from(2), "ops-password-2").await,
        200,
        "the script is not slowed"
    );
    app.stop().await;
}
