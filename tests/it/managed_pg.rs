//! The embedded default: Rackwatch starting, reusing and stopping its own Postgres.

use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use serde_json::json;
use sqlx::Connection;

use crate::support::{cluster_root, fast_settings, recent, TestApp};

fn opts(root: std::path::PathBuf, own_adopted: bool) -> ManagedOptions {
    ManagedOptions {
        root,
        bin_dir: String::new(),
        user: "postgres".into(),
        settings: fast_settings(),
        own_adopted,
        port: rackwatch::store::managed::DEFAULT_PORT,
        standby_of: None,
    }
}

async fn is_up(url: &str) -> bool {
    sqlx::PgConnection::connect(url).await.is_ok()
}

#[tokio::test]
async fn start_stop_restart_keeps_data_and_one_shot_commands_leave_it_running() {
    // Laid out as a data_dir's cluster, so the CLI can adopt it below.
    let data_dir = cluster_root("managed");
    let _ = std::fs::remove_dir_all(&data_dir);
    let root = data_dir.join("postgres");
    // A data directory without PG_VERSION that holds files (an unfinished initdb, or a
    // base backup being unpacked) is moved aside, not deleted.
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data").join("base.tar"), b"unpacking").unwrap();
    let o = opts(root.clone(), true);
    let mut pg = tokio::task::spawn_blocking({
        let o = o.clone();
        move || ManagedPostgres::start(&o)
    })
    .await
    .unwrap()
    .unwrap();
    let url = pg.admin_url();
    let aside: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("data.incomplete-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].join("base.tar").is_file());
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (v int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (42)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    // A one-shot command adopts the running cluster and leaves it running.
    let one_shot = tokio::task::spawn_blocking({
        let o = opts(root.clone(), false);
        move || ManagedPostgres::start(&o)
    })
    .await
    .unwrap()
    .unwrap();
    drop(one_shot);
    assert!(
        is_up(&url).await,
        "a one-shot command must not stop the cluster"
    );
    // Nor does the CLI, which does not claim to have stopped it: `migrate` (which makes
    // the schema), then a command on the database it made.
    for args in [&["migrate"][..], &["token", "create", "--host", "cli-host"]] {
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .args(args)
            .env_remove("RACKWATCH_DATABASE__URL")
            .env("RACKWATCH_DATA_DIR", &data_dir)
            .env("RACKWATCH_LOG", "info")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&cli.stderr);
        assert!(cli.status.success(), "{args:?}: {log}");
        assert!(!log.contains("managed Postgres stopped"), "{args:?}: {log}");
        assert!(is_up(&url).await, "{args:?} stopped the cluster it adopted");
    }

    pg = tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    assert!(!is_up(&url).await, "stopped cluster still answers");
    drop(pg);

    // Restart reuses the data directory (no second initdb).
    let mut pg = tokio::task::spawn_blocking(move || ManagedPostgres::start(&o))
        .await
        .unwrap()
        .unwrap();
    let mut c = sqlx::PgConnection::connect(&pg.admin_url()).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42);
    c.close().await.unwrap();

    // Its Postgres killed under it (crash, OOM killer, stopped by hand): the server's
    // watchdog starts it again; once the owner stops it, the watchdog leaves it stopped.
    let url = pg.admin_url();
    let watcher = pg.watcher();
    let root2 = root.clone();
    tokio::task::spawn_blocking(move || {
        let mut killer = ManagedPostgres::start(&opts(root2, false)).unwrap();
        killer.stop_immediate();
    })
    .await
    .unwrap();
    assert!(!is_up(&url).await, "killed");
    let (watcher, restarted) = tokio::task::spawn_blocking(move || {
        let r = watcher.ensure_running().unwrap();
        (watcher, r)
    })
    .await
    .unwrap();
    assert!(restarted);
    assert!(is_up(&url).await, "started again");
    let (watcher, again) = tokio::task::spawn_blocking(move || {
        let r = watcher.ensure_running().unwrap();
        (watcher, r)
    })
    .await
    .unwrap();
    assert!(!again, "running: nothing to do");
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let after_stop = tokio::task::spawn_blocking(move || watcher.ensure_running().unwrap())
        .await
        .unwrap();
    assert!(!after_stop, "the owner stopped it: not started again");
    assert!(!is_up(&url).await);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn ingest_survives_a_database_restart() {
    let root = cluster_root("restart");
    let _ = std::fs::remove_dir_all(&root);
    let o = opts(root.clone(), true);
    let pg = tokio::task::spawn_blocking({
        let o = o.clone();
        move || ManagedPostgres::start(&o)
    })
    .await
    .unwrap()
    .unwrap();
    rackwatch::store::create_database_if_missing(&pg.admin_url(), "rw")
        .await
        .unwrap();
    let url = pg.url_for("rw");
    let store = rackwatch::store::Store::connect(&url, 2, 5).await.unwrap();
    store.migrate().await.unwrap();
    store.pool.close().await;
    let app = TestApp::spawn_on(url, |_| {}).await;
    let token = app.token("r").await;
    let body = |i: usize| json!({"host": {"name": "r"}, "host_samples": [{"ts": recent(3, 1, 1)[i], "cpu_util_pct": 5.0}]});
    assert_eq!(app.ingest(&token, &body(0)).await.status(), 200);

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    let r = app.ingest(&token, &body(1)).await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());

    pg = tokio::task::spawn_blocking(move || {
        drop(pg);
        ManagedPostgres::start(&o).unwrap()
    })
    .await
    .unwrap();
    let mut ok = false;
    for _ in 0..20 {
        if app.ingest(&token, &body(2)).await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(ok, "ingest did not recover after the database came back");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM host_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
    app.stop().await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// The socket directory is used only when it is a directory of ours: a symlink there (in
/// /tmp, where a long data directory's socket goes, anyone may make one first) would have
/// the server's chmod and chown follow it.
#[tokio::test]
async fn a_symlink_where_the_socket_directory_goes_is_refused() {
    let data_dir = cluster_root("symlinked");
    let _ = std::fs::remove_dir_all(&data_dir);
    let root = data_dir.join("postgres");
    std::fs::create_dir_all(&root).unwrap();
    let elsewhere = data_dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("run")).unwrap();
    let o = opts(root.clone(), true);
    let r = tokio::task::spawn_blocking(move || ManagedPostgres::start(&o))
        .await
        .unwrap();
    let Err(e) = r else {
        panic!("started on a symlinked socket directory")
    };
    assert!(
        e.to_string()
            .contains("is not a directory (a symlink or a file): remove it"),
        "{e}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&elsewhere).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o755, "the symlink's target is untouched");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Run as root on a cluster of the configured user that already exists where it is asked
/// for, under a directory closed to others (the packaged server's, owned by the
/// `rackwatch` user under `/var/lib/rackwatch`, mode 0750, with `managed_user =
/// "rackwatch"`): `rackwatch token create` and the like work on that cluster. They used to
/// start a new, empty cluster elsewhere (and open `/var/lib/rackwatch` to others doing
/// so). A cluster of another user is not taken over.
#[tokio::test]
async fn root_works_on_an_existing_cluster_as_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root starts the cluster as another user");
        return;
    }
    let parent = cluster_root("closed-parent");
    let _ = std::fs::remove_dir_all(&parent);
    std::fs::create_dir_all(&parent).unwrap();
    let root = parent.join("postgres");
    let first = opts(root.clone(), true);
    let url = tokio::task::spawn_blocking(move || {
        let mut pg = ManagedPostgres::start(&first).unwrap();
        let url = pg.admin_url();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query("CREATE TABLE kept AS SELECT 7 AS v")
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        });
        pg.stop().unwrap();
        url
    })
    .await
    .unwrap();
    // The parent closes to others, as the package's state directory is; the cluster's
    // owner (postgres here) is its group.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o750)).unwrap();
    let postgres_gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(root.join("data")).unwrap().gid()
    };
    std::os::unix::fs::chown(&parent, None, Some(postgres_gid)).unwrap();
    // Configured for another user, the cluster is not that user's to run.
    let mut other = opts(root.clone(), true);
    other.user = "rackwatch-no-such-user".into();
    let refused = tokio::task::spawn_blocking(move || ManagedPostgres::start(&other))
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            Err(rackwatch::store::managed::ManagedError::NoUser(_))
        ),
        "{:?}",
        refused.err()
    );
    // Configured for its owner, it is adopted where it is.
    let again = opts(root.clone(), true);
    let mut pg = tokio::task::spawn_blocking(move || ManagedPostgres::start(&again))
        .await
        .unwrap()
        .expect("started the existing cluster of the configured user");
    assert_eq!(pg.admin_url(), url, "the same cluster, not one elsewhere");
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 7);
    c.close().await.unwrap();
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&parent);
}
