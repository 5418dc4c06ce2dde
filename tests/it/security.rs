//! Who may do what, and the record of it: the authorization table walked with every kind
//! of caller against the real server, CSRF on every state-changing call made with a
//! session cookie, the audit trail, and secrets read from files.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use rackwatch::store::audit::Filter;
use rackwatch::store::auth::{Role, WriteScope};
use rackwatch::web::access::{self, Access, RouteRule, ROUTES};
use serde_json::json;

use crate::support::{recent, TestApp, METRICS_TOKEN};

/// A kind of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    Viewer,
    Operator,
    Admin,
    /// The agent token of host `host-a`, which the requests name.
    AgentToken,
    /// The agent token of another host.
    OtherHostToken,
    /// The scheduler token of pool `pool-a`, which the requests name.
    PoolToken,
    /// The Prometheus scrape token.
    ScrapeToken,
    /// A remote-write token of site `fra1`.
    WriteToken,
}

const EVERYONE: [Who; 9] = [
    Who::Anonymous,
    Who::Viewer,
    Who::Operator,
    Who::Admin,
    Who::AgentToken,
    Who::OtherHostToken,
    Who::PoolToken,
    Who::ScrapeToken,
    Who::WriteToken,
];

/// How to call a route, and what an allowed caller gets.
struct Call {
    path: String,
    form: Option<Vec<(&'static str, String)>>,
    json: Option<serde_json::Value>,
    /// A remote-write body (snappy-compressed protobuf).
    protobuf: Option<Vec<u8>>,
    /// The status of an allowed call.
    allowed: u16,
}

fn concrete(template: &str) -> String {
    template
        .replace("{site}", "fra1")
        .replace("{rack}", "r1")
        .replace("{name}", "host-a")
        .replace("{index}", "0")
        .replace("{pool}", "pool-a")
        .replace("{file}", "none.html")
        .replace("{id}", "999999")
        .replace("{fingerprint}", "no-such-alert")
}

/// The request for each row. A row without an entry here fails the test.
fn call(r: &RouteRule) -> Call {
    let path = concrete(r.path);
    let page = |allowed| Call {
        path: path.clone(),
        form: None,
        json: None,
        protobuf: None,
        allowed,
    };
    let form = |fields: Vec<(&'static str, String)>, allowed| Call {
        path: path.clone(),
        form: Some(fields),
        json: None,
        protobuf: None,
        allowed,
    };
    let ts = recent(1, 1, 5)[0].to_rfc3339();
    match (r.method, r.path) {
        // The file name is not one of a report's: refused after the caller is let in.
        ("GET", "/energy/reports/{file}") => page(400),
        ("GET", "/hosts/{name}/gpus/{index}") | ("GET", "/api/v1/hosts/{name}/gpus/{index}") => {
            page(200)
        }
        // The capacity job has not run here: the pool is not known yet.
        ("GET", "/capacity/pools/{pool}") | ("GET", "/api/v1/capacity/pools/{pool}") => page(404),
        ("GET", _) => page(200),
        // A wrong password without the login form's cookie: refused the same for everyone.
        ("POST", "/login") => form(
            vec![("username", "nobody".into()), ("password", "x".into())],
            403,
        ),
        ("POST", "/logout") => form(vec![], 303),
        ("POST", "/alerts/ack") | ("POST", "/alerts/unack") => {
            form(vec![("fingerprint", "no-such-alert".into())], 404)
        }
        ("POST", "/silences") => form(
            vec![
                ("matchers", "host=host-a".into()),
                ("hours", "1".into()),
                ("comment", "matrix".into()),
            ],
            303,
        ),
        ("POST", "/silences/expire") => form(vec![("id", "999999".into())], 404),
        ("POST", "/admin/users") => form(
            vec![
                ("name", "matrix-made".into()),
                ("role", "viewer".into()),
                ("password", "matrix-password".into()),
            ],
            200,
        ),
        ("POST", "/admin/users/{id}/delete") => form(vec![], 404),
        ("POST", "/admin/tokens") => form(
            vec![("host", "host-z".into()), ("note", "matrix".into())],
            200,
        ),
        ("POST", "/admin/tokens/{id}/revoke") => form(vec![], 404),
        // Not host-a: the other rows still use its token.
        ("DELETE", "/api/v1/hosts/{name}") => Call {
            path: "/api/v1/hosts/no-such-host".into(),
            form: None,
            json: None,
            protobuf: None,
            allowed: 404,
        },
        ("POST", "/hosts/{name}/remove") => Call {
            path: "/hosts/no-such-host/remove".into(),
            form: Some(vec![("confirm", "no-such-host".into())]),
            json: None,
            protobuf: None,
            allowed: 404,
        },
        ("POST", "/api/v1/alerts/{fingerprint}/ack")
        | ("DELETE", "/api/v1/alerts/{fingerprint}/ack")
        | ("DELETE", "/api/v1/silences/{id}") => page(404),
        ("POST", "/api/v1/silences") => Call {
            path,
            form: None,
            json: Some(json!({"matchers": {"host": "host-a"}, "hours": 1, "comment": "matrix"})),
            protobuf: None,
            allowed: 201,
        },
        ("POST", "/api/v1/facility/readings") => Call {
            path,
            form: None,
            json: Some(json!([])),
            protobuf: None,
            allowed: 200,
        },
        ("POST", "/api/v1/pools/{pool}/demand") => Call {
            path,
            form: None,
            json: Some(json!({"pending_gpus": 3, "source": "matrix"})),
            protobuf: None,
            allowed: 200,
        },
        ("POST", "/api/v1/ingest") => Call {
            path,
            form: None,
            json: Some(json!({
                "host": {"name": "host-a", "site": "fra1", "rack": "r1", "pool": "pool-a"},
                "host_samples": [{"ts": ts, "cpu_util_pct": 12.0}],
            })),
            protobuf: None,
            allowed: 200,
        },
        ("POST", "/api/v1/write") => Call {
            path,
            form: None,
            json: None,
            protobuf: Some(crate::remote_write::body(&[crate::remote_write::series(
                &[("__name__", "node_load1"), ("instance", "host-a:9100")],
                &[(recent(1, 1, 5)[0].timestamp_millis(), 1.5)],
            )])),
            allowed: 204,
        },
        (m, p) => panic!("{m} {p} is in the authorization table but the matrix test has no request for it: add one to call()"),
    }
}

/// What `who` must get from `row`, given an allowed call's status.
fn expected(row: &RouteRule, who: Who, allowed: u16) -> u16 {
    let anonymous = if row.login_redirect { 303 } else { 401 };
    let user_role = match who {
        Who::Viewer => Some(Role::Viewer),
        Who::Operator => Some(Role::Operator),
        Who::Admin => Some(Role::Admin),
        _ => None,
    };
    match row.access {
        Access::Public => allowed,
        Access::User(need) => match user_role {
            Some(r) if r >= need => allowed,
            Some(_) => 403,
            None => anonymous,
        },
        Access::AgentToken => match who {
            Who::AgentToken => allowed,
            Who::OtherHostToken => 403,
            _ => 401,
        },
        Access::PoolTokenOrOperator => match (who, user_role) {
            (Who::PoolToken, _) => allowed,
            (_, Some(r)) if r >= Role::Operator => allowed,
            (_, Some(_)) => 403,
            _ => 401,
        },
        Access::ScrapeTokenOrUser => match (who, user_role) {
            (Who::ScrapeToken, _) | (_, Some(_)) => allowed,
            _ => 401,
        },
        Access::WriteToken => match who {
            Who::WriteToken => allowed,
            _ => 401,
        },
    }
}

struct Callers {
    cookies: BTreeMap<Who, String>,
    bearers: BTreeMap<Who, String>,
}

async fn callers(app: &TestApp) -> Callers {
    let mut cookies = BTreeMap::new();
    for (who, name, role) in [
        (Who::Viewer, "vera", Role::Viewer),
        (Who::Operator, "otto", Role::Operator),
        (Who::Admin, "ada", Role::Admin),
    ] {
        cookies.insert(who, app.login_as(name, "correct-horse", role).await);
    }
    let mut bearers = BTreeMap::new();
    bearers.insert(Who::AgentToken, app.token("host-a").await);
    bearers.insert(Who::OtherHostToken, app.token("host-b").await);
    bearers.insert(
        Who::PoolToken,
        app.store
            .create_pool_token("pool-a", "matrix")
            .await
            .unwrap(),
    );
    bearers.insert(Who::ScrapeToken, METRICS_TOKEN.to_string());
    bearers.insert(
        Who::WriteToken,
        app.store
            .create_write_token(&WriteScope::Site("fra1".into()), "matrix")
            .await
            .unwrap(),
    );
    Callers { cookies, bearers }
}

async fn send(app: &TestApp, row: &RouteRule, c: &Call, who: Who, cs: &Callers) -> u16 {
    let url = format!("{}{}", app.base, c.path);
    let mut req = match row.method {
        "GET" => app.http.get(&url),
        "DELETE" => app.http.delete(&url),
        _ => app.http.post(&url),
    };
    if let Some(cookie) = cs.cookies.get(&who) {
        req = req.header("cookie", cookie);
    }
    if let Some(b) = cs.bearers.get(&who) {
        req = req.bearer_auth(b);
    }
    let csrf = cs
        .cookies
        .get(&who)
        .map(|c| access::csrf_for_cookie(c))
        .unwrap_or_default();
    if let Some(f) = &c.form {
        let mut f = f.clone();
        if row.path != "/login" {
            f.push(("csrf", csrf.clone()));
        }
        req = req.form(&f);
    }
    // A state-changing API call with a cookie carries the session's CSRF token.
    if row.method != "GET" && row.path.starts_with("/api/") && !csrf.is_empty() {
        req = req.header(access::CSRF_HEADER, &csrf);
    }
    if let Some(j) = &c.json {
        req = req.json(j);
    }
    if let Some(b) = &c.protobuf {
        req = req
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(b.clone());
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_the_table_says() {
    let app = TestApp::spawn().await;
    let cs = callers(&app).await;
    // Host `host-a` in pool `pool-a` with one GPU, so that its pages exist.
    let ts = recent(2, 5, 10);
    let r = app
        .ingest(
            &cs.bearers[&Who::AgentToken],
            &json!({
                "host": {"name": "host-a", "site": "fra1", "rack": "r1", "pool": "pool-a"},
                "gpus": [{"index": 0, "uuid": "GPU-a0", "model": "NVIDIA H100 80GB HBM3"}],
                "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 10.0})).collect::<Vec<_>>(),
                "gpu_samples": ts.iter().map(|t| json!({"ts": t, "index": 0, "util_pct": 50.0})).collect::<Vec<_>>(),
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut wrong = Vec::new();
    let mut cells = 0;
    // Log out last: it ends the caller's session.
    let rows = ROUTES
        .iter()
        .filter(|r| r.path != "/logout")
        .chain(ROUTES.iter().filter(|r| r.path == "/logout"));
    for row in rows {
        let c = call(row);
        for who in EVERYONE {
            let want = expected(row, who, c.allowed);
            let got = send(&app, row, &c, who, &cs).await;
            cells += 1;
            if got != want {
                wrong.push(format!(
                    "{} {} as {who:?}: {got}, expected {want} ({})",
                    row.method,
                    c.path,
                    row.access.label()
                ));
            }
        }
    }
    assert_eq!(cells, ROUTES.len() * EVERYONE.len());
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells differ from the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    app.stop().await;
}

#[test]
fn a_route_without_a_row_cannot_be_registered() {
    async fn h() -> &'static str {
        "x"
    }
    let r = std::panic::catch_unwind(|| access::Routes::new().get("/not-in-the-table", h));
    let msg = r.err().expect("registering an unknown route must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("no row in web::access::ROUTES"), "{msg}");
    // The same for a documented API handler, registered with `routes!` (its path and
    // method come from its `#[utoipa::path]`).
    #[utoipa::path(post, path = "/api/v1/not-in-the-table", responses((status = 200)))]
    async fn documented() -> &'static str {
        "x"
    }
    let r =
        std::panic::catch_unwind(|| access::Routes::new().routes(utoipa_axum::routes!(documented)));
    let msg = r
        .err()
        .expect("registering an unknown API route must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("POST /api/v1/not-in-the-table has no row in web::access::ROUTES"),
        "{msg}"
    );
    // Every row is unique, and the printed table lists them all.
    let table = access::table();
    for (i, r) in ROUTES.iter().enumerate() {
        assert!(
            !ROUTES[..i]
                .iter()
                .any(|o| o.method == r.method && o.path == r.path),
            "{} {} twice",
            r.method,
            r.path
        );
        assert!(table.contains(r.path), "{}", r.path);
    }
}

#[tokio::test]
async fn cookie_posts_need_the_csrf_token_and_this_origin() {
    let app = TestApp::spawn().await;
    let admin = app.login_as("ada", "correct-horse", Role::Admin).await;
    let csrf = access::csrf_for_cookie(&admin);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for row in ROUTES
        .iter()
        .filter(|r| r.method != "GET" && r.path != "/login")
    {
        let c = call(row);
        for (case, with_token, origin) in [
            ("no token", false, None),
            ("foreign Origin", true, Some("https://evil.example")),
            ("Origin null", true, Some("null")),
        ] {
            let method = reqwest::Method::from_bytes(row.method.as_bytes()).unwrap();
            let mut req = app
                .http
                .request(method, format!("{}{}", app.base, c.path))
                .header("cookie", &admin);
            if with_token && c.form.is_none() {
                req = req.header(access::CSRF_HEADER, &csrf);
            }
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            if let Some(f) = &c.form {
                let mut f = f.clone();
                if with_token {
                    f.push(("csrf", csrf.clone()));
                }
                req = req.form(&f);
            }
            if let Some(j) = &c.json {
                req = req.json(j);
            }
            let got = req.send().await.unwrap().status().as_u16();
            checked += 1;
            if got != 403 {
                wrong.push(format!(
                    "{} {} with {case}: {got}, expected 403",
                    row.method, c.path
                ));
            }
        }
    }
    assert!(checked >= 3 * 17, "{checked}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The same request from this server's own page (same Origin, token) is accepted.
    let host = app.base.trim_start_matches("http://").to_string();
    let r = app
        .http
        .post(format!("{}/api/v1/facility/readings", app.base))
        .header("cookie", &admin)
        .header("origin", format!("http://{host}"))
        .header(access::CSRF_HEADER, &csrf)
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // HTTP Basic is not a cookie: scripts need no CSRF token.
    let basic = |origin: Option<&str>| {
        let mut req = app
            .http
            .post(format!("{}/api/v1/facility/readings", app.base))
            .basic_auth("ada", Some("correct-horse"))
            .json(&json!([]));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    assert_eq!(basic(None).await.unwrap().status(), 200);
    // But a browser that was given the password sends it with another site's form post
    // too: a foreign Origin is refused whatever the credentials.
    for origin in ["https://evil.example", "null"] {
        let r = basic(Some(origin)).await.unwrap();
        assert_eq!(r.status(), 403, "{origin}");
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("cross-origin form post refused"));
    }
    assert_eq!(
        basic(Some(&format!("http://{host}")))
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

/// The rows of `action`, as (actor, target, outcome).
async fn rows(app: &TestApp, action: &str) -> Vec<(String, String, String)> {
    app.audit(action)
        .await
        .into_iter()
        .map(|r| (r.actor, r.target, r.outcome))
        .collect()
}

fn one(v: &[(String, String, String)], actor: &str, target: &str, outcome: &str) -> bool {
    v.len() == 1 && v[0] == (actor.into(), target.into(), outcome.into())
}

#[tokio::test]
async fn each_action_leaves_one_audit_row_with_its_actor_and_target() {
    let app = TestApp::spawn().await;
    // The server's start, with a hash of its configuration and never a secret.
    let started = app.audit("server.started").await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].actor, "system");
    let details = started[0].details.to_string();
    assert_eq!(
        started[0].details["config_sha256"].as_str().unwrap().len(),
        64
    );
    assert!(!details.contains(METRICS_TOKEN), "{details}");

    // Logins through the form: one refused, one good.
    app.store
        .upsert_user("ada", Role::Admin, "correct-horse")
        .await
        .unwrap();
    assert_eq!(app.post_login("ada", "wrong-horse").await.status(), 401);
    let logins = rows(&app, "login").await;
    assert!(one(&logins, "(anonymous)", "ada", "refused"), "{logins:?}");
    let admin = app.login_as("ada", "correct-horse", Role::Admin).await;
    let logins = rows(&app, "login").await;
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0], ("ada".into(), "ada".into(), "ok".into()));
    let row = &app
        .store
        .audit_rows(&Filter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0];
    assert_eq!(row.source.as_deref(), Some("127.0.0.1"));
    assert!(!row.details.to_string().contains("horse"));
    // A wrong HTTP Basic password.
    let r = app
        .http
        .get(format!("{}/api/v1/fleet", app.base))
        .basic_auth("ada", Some("wrong-again"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The answer says the credentials were wrong, not that none were sent.
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["error"],
        "the HTTP Basic user name or password is wrong (or the user was deleted)"
    );
    // A session that ended, and a token where a user is needed, say so too.
    for (header, value, says) in [
        (
            "cookie",
            "rw_session=no-such-session",
            "the session has ended",
        ),
        (
            "authorization",
            "bearer some-token",
            "a bearer token does not log in a user here",
        ),
    ] {
        let r = app
            .http
            .get(format!("{}/api/v1/fleet", app.base))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().starts_with(says), "{v}");
    }
    let logins = rows(&app, "login").await;
    assert_eq!(logins.len(), 3);
    assert_eq!(
        logins[0],
        ("(anonymous)".into(), "ada".into(), "refused".into())
    );

    let csrf = access::csrf_for_cookie(&admin);
    let post = |path: &'static str, mut f: Vec<(&'static str, String)>| {
        f.push(("csrf", csrf.clone()));
        app.http
            .post(format!("{}{path}", app.base))
            .header("cookie", &admin)
            .form(&f)
            .send()
    };
    // Users: created, then its role changed (which resets its password too), then deleted.
    let r = post(
        "/admin/users",
        vec![
            ("name", "bob".into()),
            ("role", "viewer".into()),
            ("password", "bob-password".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(one(&rows(&app, "user.created").await, "ada", "bob", "ok"));
    let r = post(
        "/admin/users",
        vec![
            ("name", "bob".into()),
            ("role", "operator".into()),
            ("password", "bob-password-2".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(one(
        &rows(&app, "user.role_changed").await,
        "ada",
        "bob",
        "ok"
    ));
    assert!(one(
        &rows(&app, "user.password_reset").await,
        "ada",
        "bob",
        "ok"
    ));
    assert_eq!(rows(&app, "user.created").await.len(), 1);
    let bob_id = app
        .store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.name == "bob")
        .unwrap()
        .id;
    let r = app
        .http
        .post(format!("{}/admin/users/{bob_id}/delete", app.base))
        .header("cookie", &admin)
        .form(&[("csrf", csrf.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(one(&rows(&app, "user.deleted").await, "ada", "bob", "ok"));

    // Tokens: minted on the admin page, revoked there.
    let r = post(
        "/admin/tokens",
        vec![("host", "gpu-9".into()), ("note", "rack 4".into())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(one(
        &rows(&app, "token.created").await,
        "ada",
        "gpu-9",
        "ok"
    ));
    let listed = app.store.list_tokens().await.unwrap();
    assert_eq!(
        (listed[0].kind.as_str(), listed[0].host_name.as_str()),
        ("agent", "gpu-9")
    );
    let id = listed[0].id;
    // The form checks a host name as the command line and ingest do.
    let r = post("/admin/tokens", vec![("host", "gpu-9\nx".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("host.name contains control characters"));
    assert_eq!(app.store.list_tokens().await.unwrap().len(), 1);
    let r = app
        .http
        .post(format!("{}/admin/tokens/{id}/revoke", app.base))
        .header("cookie", &admin)
        .form(&[("csrf", csrf.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(one(
        &rows(&app, "token.revoked").await,
        "ada",
        &format!("token {id}"),
        "ok"
    ));

    // A silence, created and expired on the alerts page.
    let r = post(
        "/silences",
        vec![
            ("matchers", "host=gpu-9".into()),
            ("hours", "2".into()),
            ("comment", "swap".into()),
        ],
    )
    .await
    .unwrap();
    // gpu-9 does not report here: the list comes back with a notice instead of a redirect.
    assert_eq!(r.status(), 200);
    let sil = app.store.active_silences(chrono::Utc::now()).await.unwrap()[0].id;
    assert!(one(
        &rows(&app, "silence.created").await,
        "ada",
        &format!("silence {sil}"),
        "ok"
    ));
    let r = post("/silences/expire", vec![("id", sil.to_string())])
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(one(
        &rows(&app, "silence.expired").await,
        "ada",
        &format!("silence {sil}"),
        "ok"
    ));

    // An acknowledgement of a firing alert.
    sqlx::query(
        r#"INSERT INTO alerts (fingerprint, rule, severity, labels, state, value, summary, description,
                               started_at, fired_at, last_active_at)
           VALUES ('fp-audit', 'gpu-xid', 'critical', '{"host": "gpu-9"}', 'firing', 79,
                   'XID', 'XID 79', now(), now(), now())"#,
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let r = post("/alerts/ack", vec![("fingerprint", "fp-audit".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(one(
        &rows(&app, "alert.acknowledged").await,
        "ada",
        "fp-audit",
        "ok"
    ));

    // The command line: a user and a token, by the Unix user who ran it.
    let cli = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .args(args)
            .env("RACKWATCH_DATABASE__URL", &app.db_url)
            .env("RACKWATCH_LOG", "warn")
            .env("USER", "ops-oncall")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(
        &["user", "add", "carol", "--role", "viewer"],
        "carol-password\n",
    );
    cli(&["token", "create", "--host", "gpu-10"], "");
    let created = rows(&app, "user.created").await;
    assert_eq!(
        created[0],
        ("cli:ops-oncall".into(), "carol".into(), "ok".into())
    );
    let tokens = rows(&app, "token.created").await;
    assert_eq!(
        tokens[0],
        ("cli:ops-oncall".into(), "gpu-10".into(), "ok".into())
    );

    // Logout, then the page and the API show the trail to admins, filtered.
    let r = app
        .http
        .get(format!(
            "{}/api/v1/audit?actor=ADA&action=token.created",
            app.base
        ))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["target"], "gpu-9");
    let (status, html) = app
        .page(&admin, "/admin/audit?action=silence.created")
        .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("silence.created") && html.contains("host=gpu-9"),
        "{html}"
    );
    assert!(!html.contains("user.deleted</td>"));
    let (status, _) = app.page(&admin, "/admin/audit?since=yesterday").await;
    assert_eq!(status, 400);
    // The form's own format (UTC) is read; an end before the start is said, not an
    // empty list.
    let (status, html) = app
        .page(
            &admin,
            "/admin/audit?action=silence.created&since=2000-01-01T00:00",
        )
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("host=gpu-9"), "{html}");
    let (status, html) = app
        .page(
            &admin,
            "/admin/audit?since=2026-12-06T10:00&until=2026-12-06T09:00",
        )
        .await;
    assert_eq!(status, 400);
    assert!(html.contains("is before `since`"), "{html}");
    // Paging: the API's next-page links (`before`) and the page's "Older rows" link walk
    // the whole trail, each row once, newest first, with the filter kept.
    let api = |path: String| {
        let (http, url, admin) = (
            app.http.clone(),
            format!("{}{path}", app.base),
            admin.clone(),
        );
        async move {
            let r = http.get(url).header("cookie", admin).send().await.unwrap();
            let status = r.status().as_u16();
            let next = r.headers().get("link").map(|l| {
                let l = l.to_str().unwrap();
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                l[1..l.find('>').unwrap()].to_string()
            });
            (status, next, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let (_, last, everything) = api("/api/v1/audit".into()).await;
    let all = ids(&everything);
    assert!(all.len() >= 5 && last.is_none(), "{all:?} {last:?}");
    let (mut walked, mut next) = (Vec::new(), Some("/api/v1/audit?limit=2".to_string()));
    while let Some(path) = next.take() {
        let (status, link, page) = api(path).await;
        assert_eq!(status, 200);
        walked.extend(ids(&page));
        next = link;
    }
    assert_eq!(walked, all);
    let (status, _, e) = api("/api/v1/audit?before=-5".into()).await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("`before` is -5"),
        "{e}"
    );
    let (mut url, mut shown, mut pages) = (Some("/admin/audit?limit=2".to_string()), 0, 0);
    while let Some(u) = url.take() {
        let (status, html) = app.page(&admin, &u).await;
        assert_eq!(status, 200, "{u}");
        pages += 1;
        shown += html.matches("<tr><td data-label=\"Time\"><time").count();
        if pages > 1 {
            assert!(
                html.contains(r#"<a href="/admin/audit?limit=2">Newest rows</a>"#),
                "{html}"
            );
        }
        url = html
            .split(r#"rel="next">Older rows"#)
            .next()
            .filter(|_| html.contains("Older rows"))
            .and_then(|h| h.rsplit("<a href=\"").next())
            .map(|h| h.split('"').next().unwrap().replace("&#38;", "&"));
        assert!(pages <= all.len(), "the pages do not end");
    }
    assert_eq!(shown, all.len());
    let (_, html) = app
        .page(&admin, "/admin/audit?action=silence.created&limit=1")
        .await;
    assert!(
        html.contains("/admin/audit?action=silence.created&#38;limit=1&#38;before="),
        "{html}"
    );
    let r = app
        .http
        .post(format!("{}/logout", app.base))
        .header("cookie", &admin)
        .form(&[("csrf", csrf.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(one(&rows(&app, "logout").await, "ada", "ada", "ok"));

    // Rows cannot be changed.
    let e = sqlx::query("UPDATE audit_log SET actor = 'someone-else'")
        .execute(&app.store.pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    app.stop().await;
}

#[test]
fn secrets_come_from_files_that_only_their_owner_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_string_lossy().into_owned()
    };
    let smtp = write("smtp", "s3cret smtp\n", 0o600);
    let scrape = write("scrape", "scrape-token\n", 0o640);
    let dbpw = write("dbpw", "p@ss/word\n", 0o400);
    let cfg_file = dir.path().join("rackwatch.toml");
    std::fs::write(
        &cfg_file,
        format!(
            "[database]\nurl = \"postgres://rackwatch@db.example:5432/rackwatch\"\npassword_file = \"{dbpw}\"\n\
             [server]\nmetrics_token_file = \"{scrape}\"\n"
        ),
    )
    .unwrap();
    let cfg = rackwatch::config::Config::load_with_env(
        Some(&cfg_file),
        vec![(
            "RACKWATCH_ALERTING__SMTP__PASSWORD_FILE".to_string(),
            smtp.clone(),
        )],
    )
    .unwrap();
    assert_eq!(cfg.alerting.smtp.password.expose(), "s3cret smtp");
    assert_eq!(cfg.server.metrics_token.expose(), "scrape-token");
    assert_eq!(
        cfg.database.url.expose(),
        "postgres://rackwatch:p%40ss%2Fword@db.example:5432/rackwatch"
    );
    // Nothing of them shows when the configuration is printed.
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("s3cret") && !dbg.contains("scrape-token") && !dbg.contains("p%40ss"));

    // A file others may read is refused, naming the key, the file and the fix.
    let open = write("open", "x\n", 0o644);
    let e = rackwatch::config::Config::load_with_env(
        None,
        vec![(
            "RACKWATCH_ALERTING__SMTP__PASSWORD_FILE".to_string(),
            open.clone(),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alerting.smtp.password_file") && e.contains(&open) && e.contains("chmod"),
        "{e}"
    );
    // Both the secret and its file: refused.
    let e = rackwatch::config::Config::load_with_env(
        None,
        vec![
            (
                "RACKWATCH_SERVER__METRICS_TOKEN".to_string(),
                "inline".to_string(),
            ),
            (
                "RACKWATCH_SERVER__METRICS_TOKEN_FILE".to_string(),
                scrape.clone(),
            ),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("both set"), "{e}");
    // A missing file and an empty one.
    let e = rackwatch::config::Config::load_with_env(
        None,
        vec![(
            "RACKWATCH_DATABASE__URL_FILE".to_string(),
            "/nonexistent/db-url".to_string(),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("database.url_file") && e.contains("/nonexistent/db-url"),
        "{e}"
    );
    let empty = write("empty", "", 0o600);
    let e = rackwatch::config::Config::load_with_env(
        None,
        vec![("RACKWATCH_DATABASE__URL_FILE".to_string(), empty)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty"), "{e}");
    // The agent's token file is held to the same rule.
    let mut cfg = rackwatch::config::Config::default();
    cfg.agent.token_file = open;
    let e = rackwatch::app::agent_token(&cfg).unwrap_err().to_string();
    assert!(e.contains("agent.token_file") && e.contains("chmod"), "{e}");
    cfg.agent.token_file = write("agent", "rwa_abc\n", 0o600);
    assert_eq!(rackwatch::app::agent_token(&cfg).unwrap(), "rwa_abc");
}

#[test]
fn docs_show_the_current_matrix() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    assert!(
        doc.contains(&access::markdown()),
        "docs/security.md does not hold the current matrix; paste `rackwatch::web::access::markdown()`:\n{}",
        access::markdown()
    );
}

/// Polls until `action` has `n` rows (the rules file is read by the alert task).
fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn rules_files_expired_sessions_and_ended_silences_leave_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.toml");
    let good = "[[rule]]\nname = \"gpu-xid\"\nkind = \"hardware\"\nevents = [\"xid\"]\nseverity = \"critical\"\nsummary = \"XID\"\n";
    std::fs::write(&path, good).unwrap();
    let p = path.to_string_lossy().into_owned();
    let app = TestApp::spawn_full(crate::support::fresh_database().await, |c| {
        c.alerting.rules_file = p.clone();
        c.alerting.eval_interval_secs = 1;
    })
    .await;

    // The rules in force at the start, with the file's hash.
    let loaded = app.wait_audit("rules.loaded", 1).await;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].actor, "system");
    assert_eq!(loaded[0].target, p);
    assert_eq!(loaded[0].details["sha256"], sha256_hex(good.as_bytes()));
    assert_eq!(loaded[0].details["rules"], 1);
    let reload_gauges = |m: &str| {
        let v = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} not in\n{m}"))
                .parse()
                .unwrap()
        };
        (
            v("rackwatch_alert_rules_last_reload_successful"),
            v("rackwatch_alert_rules_last_reload_success_timestamp_seconds"),
        )
    };
    let (ok, at_start) = reload_gauges(&app.metrics().await);
    assert_eq!(ok, 1.0);
    assert!(
        (chrono::Utc::now().timestamp() as f64 - at_start).abs() < 120.0,
        "{at_start}"
    );

    // A broken edit is refused (the previous rules stay), with the broken file's hash.
    let touch = |text: &str, secs: u64| {
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(secs))
            .unwrap();
    };
    let broken = "[[rule]]\nname = \"gpu-xid\"\nkind = \"no-such-kind\"\n";
    touch(broken, 10);
    let refused = app.wait_audit("rules.refused", 1).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].outcome, "refused");
    assert_eq!(refused[0].details["sha256"], sha256_hex(broken.as_bytes()));
    assert!(
        !refused[0].details["error"].as_str().unwrap().is_empty(),
        "{}",
        refused[0].details
    );
    // ... and the gauge an operator alerts on says so; the last good load keeps its time.
    assert_eq!(reload_gauges(&app.metrics().await), (0.0, at_start));
    // The fix is loaded: a second `rules.loaded`, and no second refusal.
    let fixed = good.replace("summary = \"XID\"", "summary = \"XID, fixed\"");
    touch(&fixed, 20);
    let loaded = app.wait_audit("rules.loaded", 2).await;
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].details["sha256"], sha256_hex(fixed.as_bytes()));
    assert_eq!(rows(&app, "rules.refused").await.len(), 1);
    let (ok, at_fix) = reload_gauges(&app.metrics().await);
    assert!(ok == 1.0 && at_fix >= at_start, "{ok} {at_fix}");

    // Sessions: one idle past the idle timeout, one past its absolute timeout, one live.
    app.store
        .upsert_user("eve", Role::Viewer, "eve-password-1")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(app.post_login("eve", "eve-password-1").await.status(), 303);
    }
    sqlx::query(
        "UPDATE sessions SET last_seen_at = now() - interval '2 hours'
          WHERE token_sha256 = (SELECT token_sha256 FROM sessions ORDER BY created_at LIMIT 1)",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second'
          WHERE token_sha256 = (SELECT token_sha256 FROM sessions ORDER BY created_at LIMIT 1 OFFSET 1)",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let ended = app
        .store
        .expire_sessions(chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(ended, 2);
    let expired = app.audit("session.expired").await;
    assert_eq!(expired.len(), 2);
    assert!(expired
        .iter()
        .all(|r| r.actor == "system" && r.target == "eve"));
    let mut reasons: Vec<String> = expired
        .iter()
        .map(|r| r.details["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["absolute timeout", "idle timeout"]);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(live, 1);
    assert_eq!(
        app.store
            .expire_sessions(chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );

    // Silences: one that ends on its own is recorded once, by `system`; one an operator
    // ended is not recorded again.
    let now = chrono::Utc::now();
    let labels: rackwatch::alert::Labels = [("host".to_string(), "gpu-1".to_string())]
        .into_iter()
        .collect();
    let silence = |comment: &'static str| {
        app.store.create_silence(
            &labels,
            now - chrono::Duration::hours(2),
            now + chrono::Duration::hours(1),
            "ada",
            comment,
        )
    };
    let own = silence("swap").await.unwrap().id;
    let by_hand = silence("fan").await.unwrap().id;
    assert!(app.store.expire_silence(by_hand).await.unwrap().is_some());
    assert_eq!(app.store.record_ended_silences().await.unwrap(), 0);
    sqlx::query("UPDATE silences SET ends_at = now() - interval '1 second' WHERE id = $1")
        .bind(own)
        .execute(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(app.store.record_ended_silences().await.unwrap(), 1);
    assert_eq!(app.store.record_ended_silences().await.unwrap(), 0);
    let ended = rows(&app, "silence.expired").await;
    assert_eq!(
        ended,
        [(
            "system".to_string(),
            format!("silence {own}"),
            "ok".to_string()
        )]
    );
    app.stop().await;
}
