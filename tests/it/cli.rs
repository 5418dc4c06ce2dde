//! The `rackwatch` binary as an admin uses it.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{recent, TestApp};

pub(crate) fn rackwatch(db_url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(args)
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_LOG", "warn")
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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_create_and_user_add_work_against_the_database() {
    let app = TestApp::spawn().await;
    let url = app.db_url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        rackwatch(&url, &["token", "create", "--host", "cli-host"], "")
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("rwa_") && token.len() > 60, "{out}");
    let body = json!({"host": {"name": "cli-host"}, "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 2.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);

    let url = app.db_url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        rackwatch(
            &url,
            &["user", "add", "bob", "--role", "operator"],
            "bobs password\n",
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let user = app
        .store
        .authenticate("bob", "bobs password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.role, rackwatch::store::auth::Role::Operator);
    // Resetting bob's password keeps his role; the only admin cannot be demoted; an empty
    // stdin and a password of spaces say what is wrong.
    let url = app.db_url.clone();
    let (reset, demote, empty, spaces) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(&url, &["user", "add", "bob"], "bobs new password\n"),
            {
                rackwatch(
                    &url,
                    &[
                        "user",
                        "add",
                        "root",
                        "--role",
                        "admin",
                        "--password",
                        "root password",
                    ],
                    "",
                );
                rackwatch(
                    &url,
                    &[
                        "user",
                        "add",
                        "root",
                        "--role",
                        "viewer",
                        "--password",
                        "root password",
                    ],
                    "",
                )
            },
            rackwatch(&url, &["user", "add", "dan"], ""),
            rackwatch(
                &url,
                &["user", "add", "dan", "--password", "          "],
                "",
            ),
        )
    })
    .await
    .unwrap();
    assert!(
        reset.0 && reset.1.contains("user bob (operator) saved"),
        "{reset:?}"
    );
    let user = app
        .store
        .authenticate("bob", "bobs new password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.role, rackwatch::store::auth::Role::Operator);
    assert!(
        !demote.0 && demote.2.contains("root is the only admin"),
        "{demote:?}"
    );
    // A role alone changes with `user role`: the password stays.
    let url = app.db_url.clone();
    let (role, again, nobody, bad) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(&url, &["user", "role", "bob", "viewer"], ""),
            rackwatch(&url, &["user", "role", "bob", "viewer"], ""),
            rackwatch(&url, &["user", "role", "nobody", "viewer"], ""),
            rackwatch(&url, &["user", "role", "bob", "superuser"], ""),
        )
    })
    .await
    .unwrap();
    assert!(
        role.0
            && role
                .1
                .contains("user bob now viewer (was operator); password unchanged"),
        "{role:?}"
    );
    assert!(again.0 && again.1.contains("viewer already"), "{again:?}");
    assert!(
        !nobody.0 && nobody.2.contains("no user named \"nobody\""),
        "{nobody:?}"
    );
    assert!(!bad.0 && bad.2.contains("superuser"), "{bad:?}");
    let user = app
        .store
        .authenticate("bob", "bobs new password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.role, rackwatch::store::auth::Role::Viewer);
    assert_eq!(app.audit("user.role_changed").await.len(), 1);
    assert!(
        !empty.0 && empty.2.contains("no password: pass --password"),
        "{empty:?}"
    );
    assert!(
        !spaces.0 && spaces.2.contains("besides spaces"),
        "{spaces:?}"
    );

    let url = app.db_url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        rackwatch(
            &url,
            &[
                "user",
                "add",
                "eve",
                "--role",
                "wizard",
                "--password",
                "xxxxxxxxxx",
            ],
            "",
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("unknown role \"wizard\""), "{err}");

    // A scheduler token may be minted before the pool's first host reports; the command
    // says that its reports are refused until then.
    let url = app.db_url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        rackwatch(&url, &["token", "create", "--pool", "night-queue"], "")
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.trim().starts_with("rwp_"), "{out}");
    assert!(
        err.contains("no host belongs to pool \"night-queue\" yet")
            && err.contains("pools now: none"),
        "{err}"
    );

    let url = app.db_url.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || rackwatch(&url, &["token", "list"], ""))
        .await
        .unwrap();
    assert!(ok);
    assert!(out.contains("cli-host") && !out.contains(&token), "{out}");
    // Each token says its kind: the scheduler token reads as one, not as a host.
    assert!(
        out.lines()
            .any(|l| l.contains("scheduler") && l.contains("pool:night-queue")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("agent") && l.contains("cli-host")),
        "{out}"
    );
    // Revoked tokens are left out unless --all asks for them.
    let id: i64 = out
        .lines()
        .find(|l| l.contains("cli-host"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(app.store.revoke_token(id).await.unwrap().is_some());
    let url = app.db_url.clone();
    let (live, all) = tokio::task::spawn_blocking(move || {
        (
            rackwatch(&url, &["token", "list"], ""),
            rackwatch(&url, &["token", "list", "--all"], ""),
        )
    })
    .await
    .unwrap();
    assert!(!live.1.contains("cli-host"), "{}", live.1);
    assert!(
        all.1.contains("cli-host") && all.1.contains("revoked"),
        "{}",
        all.1
    );

    // Bad input is an error that says what is wrong, never a panic (exit 101) and never a
    // token or silence that can do nothing.
    for (args, want) in [
        (
            vec!["token", "create", "--pool", ""],
            "host.pool must not be empty",
        ),
        (
            vec!["token", "create", "--host", "a\nb"],
            "host.name contains control characters",
        ),
        (
            vec![
                "alerts",
                "silence",
                "--match",
                "host=x",
                "--duration",
                "100000000d",
            ],
            "--duration 100000000d: a silence lasts at least 1 second and at most 2160 hours (90 days)",
        ),
        (
            vec![
                "alerts",
                "silence",
                "--match",
                "host=x",
                "--duration",
                "9999999999999999999999h",
            ],
            "at most 2160 hours",
        ),
        (
            vec!["alerts", "silence", "--match", "host=x", "--duration", "0m"],
            "at least 1 second",
        ),
        (
            vec!["alerts", "silence", "--match", "host=x", "--duration", "5"],
            "duration \"5\": give its unit, like 5m, 5h or 5d",
        ),
        (
            vec!["alerts", "silence", "--match", "host=x", "--duration", "1h30m"],
            "use one number and one unit (90m rather than 1h30m)",
        ),
        (
            vec![
                "alerts", "silence", "--match", "host=x", "--start", "2020-01-01T00:00:00Z",
            ],
            "--start: 2020-01-01T00:00:00+00:00 is in the past",
        ),
        (
            vec![
                "alerts", "silence", "--match", "host=a", "--match", "host=b",
            ],
            "label host is given twice",
        ),
        (
            vec!["alerts", "silence", "--match", "host="],
            "has no value",
        ),
        (
            vec![
                "alerts", "silence", "--match", "host=x", "--start", "tonight",
            ],
            "--start tonight: ",
        ),
        (
            vec![
                "alerts",
                "silence",
                "--match",
                "host=x",
                "--start",
                "2099-01-01T00:00:00Z",
            ],
            "--start: 2099-01-01T00:00:00+00:00 is more than 90 days ahead",
        ),
    ] {
        let url = app.db_url.clone();
        let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (ok, _, err) = tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            rackwatch(&url, &argv, "")
        })
        .await
        .unwrap();
        assert!(
            !ok && err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // The longest silence is accepted, and so are a decimal duration and a maintenance
    // window tomorrow.
    let start = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for args in [
        vec!["--match", "host=x", "--duration", "90d"],
        vec!["--match", "host=z", "--duration", "1.5h"],
        vec!["--match", "host=y", "--start", &start, "--duration", "3h"],
    ] {
        let url = app.db_url.clone();
        let argv: Vec<String> = ["alerts", "silence"]
            .iter()
            .chain(args.iter())
            .map(|a| a.to_string())
            .collect();
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            rackwatch(&url, &argv, "")
        })
        .await
        .unwrap();
        assert!(ok && out.starts_with("silence "), "{args:?}: {err}");
        // No host x, y or z reports: kept, with a note against a misspelt name.
        assert!(
            err.contains("note: no host named") && err.contains("reports to this server"),
            "{args:?}: {err}"
        );
    }
    let (from, until): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT starts_at, ends_at FROM silences WHERE matchers = '{\"host\": \"y\"}'",
        )
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert!(
        (from - chrono::Utc::now() - chrono::Duration::days(1))
            .num_seconds()
            .abs()
            < 60
    );
    assert_eq!(until - from, chrono::Duration::hours(3));
    // The list has a header and a count, and a silence without a comment ends at its author.
    let url = app.db_url.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || rackwatch(&url, &["alerts", "silences"], ""))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.lines().next().unwrap().contains("from")
            && out.contains("3 active or scheduled silences"),
        "{out}"
    );
    // The author is the account that ran the command, as the audit trail names it.
    let line = out.lines().find(|l| l.contains("host=y")).unwrap();
    let author = line.rsplit(" by ").next().unwrap().trim_end();
    assert!(
        author.starts_with("cli:") && author.len() > 4 && !author.contains(' '),
        "{out}"
    );
    app.stop().await;
}

#[tokio::test]
async fn host_remove_warns_when_the_agent_still_reports() {
    let app = TestApp::spawn().await;
    let token = app.token("busy-1").await;
    let batch = json!({"host": {"name": "busy-1"}, "host_samples": [{"ts": recent(1, 1, 2)[0], "cpu_util_pct": 3.0}]});
    assert_eq!(app.ingest(&token, &batch).await.status(), 200);
    let url = app.db_url.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || rackwatch(&url, &["host", "remove", "busy-1"], ""))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("taken out of the fleet"), "{out}");
    assert!(
        err.contains("warning: busy-1 reported") && err.contains("its agent is still running"),
        "{err}"
    );
    app.stop().await;
}

#[tokio::test]
async fn commands_on_an_existing_database_never_change_its_schema() {
    use sqlx::Connection;
    // A schema one migration behind this binary: a server not yet upgraded, and an admin
    // running the new binary's commands against its database.
    let url = crate::support::fresh_database().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let ours: i64 = sqlx::query_scalar(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations) RETURNING version",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let theirs: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for cmd in [
        &["user", "list"][..],
        &["host", "list"],
        &["capacity", "plan"],
        &["token", "create", "--host", "h1"],
    ] {
        let u = url.clone();
        let (ok, out, err) = tokio::task::spawn_blocking(move || rackwatch(&u, cmd, ""))
            .await
            .unwrap();
        assert!(!ok, "{cmd:?}: {out}");
        assert!(
            err.contains(&format!(
                "schema is at migration {theirs} and this rackwatch needs {ours}"
            )) && err.contains("rackwatch migrate"),
            "{cmd:?}: {err}"
        );
    }
    // A backup is what one makes before an upgrade: the older schema is backed up as is.
    let dump = tempfile::tempdir().unwrap();
    let out = dump.path().join("before-upgrade.dump");
    let (u, o) = (url.clone(), out.to_string_lossy().into_owned());
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || rackwatch(&u, &["backup", "--out", &o], ""))
            .await
            .unwrap();
    assert!(ok && out.exists(), "{err}");
    let after: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, theirs, "a command migrated the schema");
    // No schema at all: the same words name what makes one.
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&mut conn)
        .await
        .unwrap();
    let u = url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || rackwatch(&u, &["user", "list"], ""))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("no Rackwatch schema yet"), "{err}");
    conn.close().await.unwrap();
}

#[test]
fn configuration_and_setup_errors_say_what_to_do() {
    // A command that reads the database does not make an empty one where none is (a
    // mistyped --data-dir would otherwise answer "no hosts").
    let nowhere = tempfile::tempdir().unwrap();
    let dir = nowhere.path().join("typo");
    for cmd in [
        &["host", "list"][..],
        &["capacity", "plan"],
        &["alerts", "silences"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--data-dir", dir.to_str().unwrap()]);
        let (ok, out, err) = rackwatch("", &args, "");
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.contains(&format!(
                "no Rackwatch database under {}/postgres",
                dir.display()
            )) && err.contains("--data-dir"),
            "{args:?}: {err}"
        );
        assert!(!dir.exists(), "{args:?} made {}", dir.display());
    }
    let (ok, _, err) = rackwatch(
        "",
        &["--config", "/nonexistent/rackwatch.toml", "migrate"],
        "",
    );
    assert!(!ok);
    assert!(err.contains("/nonexistent/rackwatch.toml"), "{err}");
    // The reason once, not once per layer of the error.
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A bad --listen is refused before the demo sets up a database and its history.
    let (ok, _, err) = rackwatch(
        "",
        &[
            "demo",
            "--listen",
            "notanaddr",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        "",
    );
    assert!(!ok);
    assert!(
        err.contains("--listen") && err.contains("notanaddr"),
        "{err}"
    );
    assert!(!dir.exists(), "the demo made {}", dir.display());

    // A token needs a scope, and the error names every kind.
    let (ok, _, err) = rackwatch("", &["token", "create"], "");
    assert!(!ok);
    for flag in ["--host", "--pool", "--write-site", "--write-hosts"] {
        assert!(err.contains(flag), "{flag}: {err}");
    }

    // Output piped into a reader that has gone (`… | head -1`) ends the command quietly,
    // as Unix tools do, instead of a panic and a backtrace. The reading end is closed
    // before the command starts, so its first write meets the broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .arg("routes")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success()
            || std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["migrate", "--data-dir", dir.path().to_str().unwrap()])
        .env("RACKWATCH_DATABASE__MANAGED_BIN_DIR", "/nonexistent/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("apt-get install postgresql") && err.contains("database.url"),
        "{err}"
    );

    // `alerts check-rules --config` reads what `serve` reads at start: the rules file the
    // configuration names and the HTTPS certificate and key.
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/config/alerts.toml");
    for (toml, key, file) in [
        (
            "[alerting]\nrules_file = \"/nonexistent/rules.toml\"\n",
            "alerting.rules_file",
            "/nonexistent/rules.toml",
        ),
        (
            "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "server.tls",
            "/nonexistent/cert.pem",
        ),
    ] {
        let conf = dir.path().join("check.toml");
        std::fs::write(&conf, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .args(["--config", conf.to_str().unwrap(), "alerts", "check-rules", rules])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: {err}");
        assert!(err.contains(key) && err.contains(file), "{err}");
    }

    // A URL with several hosts, none of them up: each host says what it answered.
    let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["host", "list"])
        .env(
            "RACKWATCH_DATABASE__URL",
            "postgres://rw:pw@127.0.0.1:1,127.0.0.1:2/rackwatch",
        )
        .env("RACKWATCH_DATABASE__ACQUIRE_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("127.0.0.1:1: ") && err.contains("127.0.0.1:2: ") && err.contains("refused"),
        "{err}"
    );
    assert!(!err.contains("pw@"), "{err}");

    // A log filter that cannot be what was meant is said, not obeyed in silence
    // (`warning` used to read as a module name, turning every log off).
    for (filter, said) in [
        ("=bad", "is not a log filter"),
        ("rackwatchx", "is read as a module name"),
        ("warning", ""),
        ("sqlx=warning,info", ""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .args(["alerts", "check-rules", rules])
            .env("RACKWATCH_LOG", filter)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{filter}: {err}");
        if said.is_empty() {
            assert!(!err.contains("RACKWATCH_LOG"), "{filter}: {err}");
        } else {
            assert!(err.contains(said), "{filter}: {err}");
        }
    }

    let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(["agent"])
        .env("RACKWATCH_AGENT__INTERVAL_SECS", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("interval_secs"), "{err}");
}

/// `user list` and `user remove`: an admin manages users from a shell (no dashboard
/// needed), the removal ends the user's sessions and is audited under the Unix account
/// that ran it even where `USER` is unset (cron, containers), and the last admin stays.
#[tokio::test]
async fn user_list_and_remove_keep_the_last_admin() {
    let app = TestApp::spawn().await;
    let cli = |args: &'static [&'static str]| {
        let url = app.db_url.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
                .args(args)
                .env("RACKWATCH_DATABASE__URL", &url)
                .env("RACKWATCH_LOG", "warn")
                .env_remove("USER")
                .env_remove("LOGNAME")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let bob = app.login_as(
        "bob",
        "bobs password",
        rackwatch::store::auth::Role::Operator,
    );
    let bob = bob.await;
    app.store
        .upsert_user("ada", rackwatch::store::auth::Role::Admin, "adas password")
        .await
        .unwrap();
    let (ok, out, err) = cli(&["user", "list"]).await.unwrap();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("name") && lines.len() == 3, "{out}");
    assert!(
        lines[1].starts_with("ada") && lines[1].contains("admin"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("bob") && lines[2].contains("operator"),
        "{out}"
    );

    let (ok, _, err) = cli(&["user", "remove", "ada"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("ada is the only admin"), "{err}");
    let (ok, _, err) = cli(&["user", "remove", "carl"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("no user named \"carl\""), "{err}");

    assert_eq!(app.get(&bob, "/api/v1/fleet").await.status(), 200);
    let (ok, out, err) = cli(&["user", "remove", "bob"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "user bob (operator) deleted; their sessions have ended"
    );
    assert_eq!(app.get(&bob, "/api/v1/fleet").await.status(), 401);
    assert!(app
        .store
        .authenticate("bob", "bobs password")
        .await
        .unwrap()
        .is_none());
    let me = Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    let rows = app.audit("user.deleted").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].target.as_str()),
        (format!("cli:{me}").as_str(), "bob")
    );
    app.stop().await;
}

/// `host list`: the fleet from a shell, with what needs a look; hosts taken out are not in
/// it.
#[tokio::test]
async fn host_list_shows_the_fleet_and_what_needs_a_look() {
    let app = TestApp::spawn().await;
    for (name, site) in [("gpu-a", "fra1"), ("gpu-b", ""), ("gpu-old", "fra1")] {
        let token = app.token(name).await;
        let body = json!({"host": {"name": name, "site": site, "rack": "r1", "pool": "train"},
            "gpus": [{"index": 0}],
            "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 2.0}]});
        assert_eq!(app.ingest(&token, &body).await.status(), 200);
    }
    sqlx::query("UPDATE hosts SET last_heard = now() - interval '10 minutes' WHERE name = 'gpu-b'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE hosts SET removed_at = now() WHERE name = 'gpu-old'")
        .execute(&app.store.pool)
        .await
        .unwrap();
    let url = app.db_url.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || rackwatch(&url, &["host", "list"], ""))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two hosts:\n{out}");
    assert!(
        lines[0].starts_with("host") && lines[0].ends_with("note"),
        "{out}"
    );
    let row = |name: &str| lines.iter().find(|l| l.starts_with(name)).copied().unwrap();
    let a: Vec<&str> = row("gpu-a").split_whitespace().collect();
    assert_eq!(&a[..4], ["gpu-a", "fra1/r1", "train", "1"], "{out}");
    assert!(!row("gpu-a").contains("not reporting"), "{out}");
    assert!(row("gpu-b").contains("-/r1"), "{out}");
    assert!(
        row("gpu-b").contains("10 min ago") && row("gpu-b").ends_with("not reporting"),
        "{out}"
    );
    app.stop().await;
}

/// `user add` on a terminal asks twice and echoes nothing; two different answers save
/// nothing. Run under a real pseudo-terminal (Python's `pty`).
#[tokio::test]
async fn user_add_on_a_terminal_asks_twice_without_echo() {
    let app = TestApp::spawn().await;
    const DRIVE: &str = r#"
import os, pty, select, sys, time
first, second = sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], ["rackwatch", "user", "add", "tina"])
out = b""
def read(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return
def wait_for(text):
    end = time.time() + 30
    while text not in out and time.time() < end:
        read(0.2)
wait_for(b"Password for tina: ")
os.write(fd, (first + "\n").encode())
wait_for(b"The same again: ")
os.write(fd, (second + "\n").encode())
read(15)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.WEXITSTATUS(status))
"#;
    let drive = |first: &'static str, second: &'static str| {
        let url = app.db_url.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("python3")
                .args(["-c", DRIVE, env!("CARGO_BIN_EXE_rackwatch"), first, second])
                .env("RACKWATCH_DATABASE__URL", url)
                .env("RACKWATCH_LOG", "warn")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    let (ok, screen) = drive("tty secret 1", "something else").await.unwrap();
    assert!(
        !ok && screen.contains("the two passwords differ; nothing was saved"),
        "{screen}"
    );
    assert!(app.store.password_row("tina").await.unwrap().is_none());
    let (ok, screen) = drive("tty secret 1", "tty secret 1").await.unwrap();
    assert!(
        ok && screen.contains("user tina (viewer) saved"),
        "{screen}"
    );
    assert!(
        !screen.contains("tty secret"),
        "the password was echoed: {screen}"
    );
    assert!(app
        .store
        .authenticate("tina", "tty secret 1")
        .await
        .unwrap()
        .is_some());
    app.stop().await;
}
