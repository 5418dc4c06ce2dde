//! No secret in the logs: a `rackwatch serve` and a `rackwatch agent` process, both
//! logging at debug level, go through logins (good and bad, form and HTTP Basic), a
//! session, a logout, a scrape with the scrape token, an agent shipping with its token and
//! a request with a wrong token; then their whole output is searched for every password,
//! token and session id used.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::support::{csrf_of, form_login, free_port};

fn spawn(args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rackwatch"));
    c.args(args)
        .env("RACKWATCH_LOG", "debug")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn stop(mut c: Child) {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

#[tokio::test]
async fn no_password_token_or_session_id_reaches_the_logs() {
    let db = crate::support::fresh_database().await;
    let store = rackwatch::store::Store::connect(&db, 2, 10).await.unwrap();
    let password = "Pa55word-in-the-log-check";
    let wrong = "Wr0ng-guess-in-the-log-check";
    let scrape = "scrape-token-in-the-log-check";
    store
        .upsert_user("logcheck", rackwatch::store::auth::Role::Admin, password)
        .await
        .unwrap();
    let token = store.create_agent_token("log-host", "test").await.unwrap();
    store.pool.close().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server_log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let server = spawn(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &data.display().to_string(),
        ],
        &[
            ("RACKWATCH_DATABASE__URL", &db),
            ("RACKWATCH_SERVER__METRICS_TOKEN", scrape),
        ],
        &server_log,
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..300 {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A wrong password through the form, then the right one, a page, the logout.
    let (csrf_cookie, csrf) = {
        let r = http.get(format!("{base}/login")).send().await.unwrap();
        let c = r.headers()["set-cookie"].to_str().unwrap().to_string();
        (
            c.split(';').next().unwrap().to_string(),
            csrf_of(&r.text().await.unwrap()),
        )
    };
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &csrf_cookie)
        .form(&[
            ("username", "logcheck"),
            ("password", wrong),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let session = form_login(&http, &base, "logcheck", password).await;
    let page = http
        .get(format!("{base}/alerts"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page_csrf = csrf_of(&page.text().await.unwrap());
    // HTTP Basic, wrong and right.
    for (pw, want) in [(wrong, 401), (password, 200)] {
        let r = http
            .get(format!("{base}/api/v1/fleet"))
            .basic_auth("logcheck", Some(pw))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    // The scrape token, and a wrong agent token.
    let r = http
        .get(format!("{base}/metrics"))
        .bearer_auth(scrape)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bogus = "bogus-agent-token-in-the-log-check";
    let r = http
        .post(format!("{base}/api/v1/ingest"))
        .bearer_auth(bogus)
        .json(&serde_json::json!({"host": {"name": "log-host"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // An agent with its token ships for a few seconds.
    let agent_log = dir.path().join("agent.log");
    let agent = spawn(
        &[
            "agent",
            "--server",
            &base,
            "--data-dir",
            &data.display().to_string(),
        ],
        &[
            ("RACKWATCH_AGENT__TOKEN", &token),
            ("RACKWATCH_AGENT__HOST__NAME", "log-host"),
            ("RACKWATCH_AGENT__KERNEL_LOG", "off"),
            ("RACKWATCH_AGENT__INTERVAL_SECS", "1"),
            ("RACKWATCH_AGENT__SHIP_INTERVAL_SECS", "1"),
        ],
        &agent_log,
    );
    let mut shipped = false;
    for _ in 0..100 {
        let r = http
            .get(format!("{base}/api/v1/hosts/log-host"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            shipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &session)
        .form(&[("csrf", &page_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    stop(agent);
    stop(server);
    assert!(shipped, "the agent's samples did not arrive");

    let logs = std::fs::read_to_string(&server_log).unwrap()
        + &std::fs::read_to_string(&agent_log).unwrap();
    // The logs are there, and at debug level they say a lot.
    assert!(logs.contains("serving"), "{logs:.2000}");
    assert!(logs.contains("agent started"), "{logs:.2000}");
    assert!(logs.lines().count() > 50, "{} lines", logs.lines().count());
    let session_id = session.trim_start_matches("rw_session=");
    let basic =
        |pw: &str| base64::engine::general_purpose::STANDARD.encode(format!("logcheck:{pw}"));
    let login_csrf = csrf_cookie.split('=').nth(1).unwrap();
    for (what, secret) in [
        ("the password", password.to_string()),
        ("a wrong password", wrong.to_string()),
        ("the HTTP Basic credentials", basic(password)),
        ("wrong HTTP Basic credentials", basic(wrong)),
        ("the session id", session_id.to_string()),
        ("the login form's CSRF secret", login_csrf.to_string()),
        ("the agent token", token.clone()),
        ("a wrong agent token", bogus.to_string()),
        ("the scrape token", scrape.to_string()),
    ] {
        assert!(
            !logs.contains(&secret),
            "{what} is in the logs: {}",
            logs.lines().find(|l| l.contains(&secret)).unwrap_or("")
        );
    }
}
