//! Proxy sign-on (`server.auth_proxy`): the user header is believed from trusted
//! addresses only, users are created and their roles follow the proxy's groups, each
//! sign-on is in the audit trail, and a proxied browser still needs the CSRF token.

use rackwatch::store::auth::Role;

use crate::support::{csrf_of, TestApp};

const USER: &str = "X-Forwarded-User";
const GROUPS: &str = "X-Forwarded-Groups";

async fn proxied(trusted: &str, f: impl FnOnce(&mut rackwatch::config::AuthProxy)) -> TestApp {
    TestApp::spawn_with(|c| {
        let p = &mut c.server.auth_proxy;
        p.enabled = true;
        p.header = USER.into();
        p.groups_header = GROUPS.into();
        p.trusted = vec![trusted.into()];
        p.admin_groups = vec!["rackwatch-admins".into()];
        p.operator_groups = vec!["sre".into()];
        f(p);
    })
    .await
}

/// GET `path` as the proxy would send it for `user` in `groups`.
async fn get(app: &TestApp, path: &str, user: &str, groups: &str) -> reqwest::Response {
    app.http
        .get(format!("{}{path}", app.base))
        .header(USER, user)
        .header(GROUPS, groups)
        .send()
        .await
        .unwrap()
}

/// POST the logout form as grace through the proxy; the status.
async fn logout(app: &TestApp, csrf: &str, origin: Option<&str>) -> u16 {
    let mut r = app
        .http
        .post(format!("{}/logout", app.base))
        .header(USER, "grace")
        .header(GROUPS, "rackwatch-admins")
        .form(&[("csrf", csrf)]);
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    r.send().await.unwrap().status().as_u16()
}

/// (actor, target, outcome, details) of the rows of `action`, newest first.
async fn audit(app: &TestApp, action: &str) -> Vec<(String, String, String, serde_json::Value)> {
    app.audit(action)
        .await
        .into_iter()
        .map(|r| (r.actor, r.target, r.outcome, r.details))
        .collect()
}

#[tokio::test]
async fn a_trusted_proxy_signs_users_on_with_roles_from_their_groups() {
    let app = proxied("127.0.0.0/8", |_| {}).await;
    // A new user in no group: created as a viewer, signed on once however many requests.
    for _ in 0..3 {
        assert_eq!(get(&app, "/api/v1/fleet", "grace", "").await.status(), 200);
    }
    assert_eq!(get(&app, "/api/v1/audit", "grace", "").await.status(), 403);
    let created = audit(&app, "user.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(
        (created[0].0.as_str(), created[0].1.as_str()),
        ("proxy", "grace")
    );
    assert_eq!(created[0].3["role"], "viewer");
    let logins = audit(&app, "login").await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(
        (
            logins[0].0.as_str(),
            logins[0].1.as_str(),
            logins[0].2.as_str()
        ),
        ("grace", "grace", "ok")
    );
    assert_eq!(logins[0].3["method"], "proxy");
    // The proxy now says she is in the admins' group: her role follows at once.
    let r = get(&app, "/api/v1/audit", "grace", "staff, rackwatch-admins").await;
    assert_eq!(r.status(), 200);
    let changed = audit(&app, "user.role_changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].0, "proxy");
    assert_eq!(changed[0].3["from"], "viewer");
    assert_eq!(changed[0].3["to"], "admin");
    let (_, role, _) = app.store.password_row("grace").await.unwrap().unwrap();
    assert_eq!(role, "admin");
    // Pages work as for a session, and their forms need the CSRF token: without it a
    // cross-site post riding on the proxy's cookie is refused.
    let r = get(&app, "/alerts", "grace", "rackwatch-admins").await;
    assert_eq!(r.status(), 200);
    let csrf = csrf_of(&r.text().await.unwrap());
    assert_eq!(logout(&app, "", None).await, 403, "no token");
    assert_eq!(
        logout(&app, &csrf, Some("https://evil.example")).await,
        403,
        "a foreign Origin"
    );
    assert_eq!(logout(&app, &csrf, None).await, 303);
    // Operators by their group; a user outside every group with default_role = none is
    // refused, and so is an unknown user when auto_create is off.
    assert_eq!(
        get(&app, "/api/v1/admin/users", "sam", "sre")
            .await
            .status(),
        403
    );
    assert_eq!(
        app.store.password_row("sam").await.unwrap().unwrap().1,
        "operator"
    );
    app.stop().await;

    let app = proxied("127.0.0.1", |p| {
        p.default_role = "none".into();
        p.auto_create = false;
    })
    .await;
    app.store
        .upsert_user("ola", Role::Viewer, "a-long-password")
        .await
        .unwrap();
    assert_eq!(get(&app, "/api/v1/fleet", "ola", "").await.status(), 403);
    assert_eq!(get(&app, "/api/v1/fleet", "ola", "sre").await.status(), 200);
    assert_eq!(
        get(&app, "/api/v1/fleet", "nobody", "sre").await.status(),
        403
    );
    assert!(app.store.password_row("nobody").await.unwrap().is_none());
    let refused: Vec<_> = audit(&app, "login")
        .await
        .into_iter()
        .filter(|r| r.2 == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    app.stop().await;

    // Without a groups header, roles stay as Rackwatch has them; default_role = none
    // then only keeps unknown users out.
    let app = proxied("127.0.0.1", |p| {
        p.groups_header = String::new();
        p.default_role = "none".into();
    })
    .await;
    app.store
        .upsert_user("ola", Role::Operator, "a-long-password")
        .await
        .unwrap();
    assert_eq!(
        get(&app, "/api/v1/fleet", "ola", "rackwatch-admins")
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&app, "/api/v1/audit", "ola", "rackwatch-admins")
            .await
            .status(),
        403
    );
    assert_eq!(
        app.store.password_row("ola").await.unwrap().unwrap().1,
        "operator"
    );
    assert_eq!(
        get(&app, "/api/v1/fleet", "newcomer", "").await.status(),
        403
    );
    assert!(app.store.password_row("newcomer").await.unwrap().is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_header_from_an_untrusted_address_is_refused() {
    // The proxy is somewhere else; this test's client (127.0.0.1) is not it.
    let app = proxied("192.0.2.0/24", |_| {}).await;
    let admin = app.login("root", "a-long-password").await;
    for path in ["/healthz", "/api/v1/fleet", "/"] {
        let r = get(&app, path, "root", "rackwatch-admins").await;
        assert_eq!(r.status(), 403, "{path}");
    }
    // Not even with a good session alongside.
    let r = app
        .http
        .get(format!("{}/api/v1/fleet", app.base))
        .header("cookie", &admin)
        .header(USER, "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(app.store.password_row("root").await.unwrap().is_some());
    let refused: Vec<_> = audit(&app, "login")
        .await
        .into_iter()
        .filter(|r| r.2 == "refused")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.3["method"] == "proxy"
                && r.3["reason"].as_str().unwrap().contains("untrusted"))
    );
    // Without the header the same client is an ordinary one.
    assert_eq!(app.get(&admin, "/api/v1/fleet").await.status(), 200);
    assert_eq!(
        app.http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[test]
fn trusted_ranges_match_addresses() {
    use rackwatch::config::Cidr;
    let c = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(c.contains("10.1.255.3".parse().unwrap()));
    assert!(!c.contains("10.2.0.1".parse().unwrap()));
    // An IPv4 client on a dual-stack socket.
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("proxy.local").is_err());
}

/// Without a groups header a proxy-signed user keeps the role the admin gives: a change on
/// the admin page holds from the next request (it was remembered for up to a minute).
#[tokio::test]
async fn a_role_changed_on_the_admin_page_holds_from_the_next_proxied_request() {
    let app = proxied("127.0.0.1", |p| p.groups_header = String::new()).await;
    app.store
        .upsert_user("hana", Role::Admin, "hana-password-1")
        .await
        .unwrap();
    // Signed on as the admin she is: the admin page opens.
    assert_eq!(get(&app, "/admin", "hana", "").await.status(), 200);
    // Another admin makes her a viewer.
    let admin = app.login("root", "a-long-password").await;
    let (_, page) = app.page(&admin, "/admin").await;
    let r = app
        .http
        .post(format!("{}/admin/users", app.base))
        .header("cookie", &admin)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("name", "hana"),
            ("role", "viewer"),
            ("password", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&app, "/admin", "hana", "").await.status(),
        403,
        "the viewer role holds at once"
    );
    app.stop().await;
}
