//! Backup and restore of the whole database with the Postgres tools.
//!
//! A backup is one `pg_dump` custom-format archive: a consistent snapshot (one
//! repeatable-read transaction) that ingest and the jobs keep running through, compressed,
//! restorable table by table with `pg_restore`. It is made with the binaries of the
//! managed cluster (or `database.managed_bin_dir`, or PATH), against the managed cluster
//! or `database.url`. A restore goes into an empty database (a non-empty one is refused
//! unless forced), and then checks the schema version against this binary's migrations.
//! For point-in-time recovery of production databases use continuous WAL archiving
//! (docs/reliability.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use super::managed::ManagedPostgres;
use super::Store;

/// What a backup or restore did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Size of the archive.
    pub bytes: u64,
    /// Wall time of the Postgres tool.
    pub seconds: f64,
}

/// A Postgres client tool (`pg_dump`, `pg_restore`): next to the managed cluster's
/// server binaries (or in `bin_dir` when set), else on PATH.
pub fn pg_tool(bin_dir: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = ManagedPostgres::locate_binaries(bin_dir) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{name} not found next to the PostgreSQL server binaries or on PATH; install the \
         PostgreSQL client tools (Debian/Ubuntu: `apt-get install postgresql-client`) or set \
         database.managed_bin_dir"
    )
}

async fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    run_with(tool, args, None).await
}

/// `tool` with `args`, and the database password (if any) in `PGPASSWORD`: on the
/// command line, any local user would read it in the process list for the whole dump.
async fn run_with(
    tool: &Path,
    args: &[&std::ffi::OsStr],
    password: Option<&str>,
) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(tool);
    // A backup job stopped (its server lost the leader lock, or is stopping) ends its
    // pg_dump too, instead of leaving it writing beside the next one.
    cmd.kill_on_drop(true);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `url` without its password, and the password: the tools get it from `PGPASSWORD`.
/// Read by hand, not by a URL parser: a multi-host URL (`db1:5432,db2:5432`) is no URL to
/// one, and must not keep its password for the process list. A `password=` parameter
/// (which libpq reads too) is taken out as well, and wins, as it does in libpq.
fn without_password(url: &str) -> (String, Option<String>) {
    let decode = |p: &str| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    };
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.to_string(), None);
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let mut password = None;
    let mut out = url[..scheme_end].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, pw)) => {
                    password = Some(decode(pw));
                    out.push_str(user);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let rest = &url[authority_end..];
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| match kv.strip_prefix("password=") {
                    Some(pw) => {
                        password = Some(decode(pw));
                        false
                    }
                    None => true,
                })
                .collect();
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept.join("&"));
            }
        }
        None => out.push_str(rest),
    }
    (out, password)
}

/// The first bytes of every custom-format archive.
const ARCHIVE_MAGIC: &[u8] = b"PGDMP";

/// Whether `path` starts like a custom-format archive (a cheap check: an empty or cut
/// file from a crash does not).
fn looks_like_archive(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == ARCHIVE_MAGIC)
}

/// Write a consistent custom-format archive of the database at `url` to `out`. The
/// archive is written next to `out`, flushed to disk, its table of contents read back, and
/// then renamed into place (the directory flushed too), so `out` is either the previous
/// archive or the complete new one, also after a power cut.
pub async fn backup(bin_dir: &str, url: &str, out: &Path) -> anyhow::Result<Done> {
    // Said before the dump, which takes a while: a directory, or a place that is missing.
    if out.is_dir() {
        anyhow::bail!(
            "{} is a directory: name the archive file, like {}",
            out.display(),
            out.join(archive_name(chrono::Utc::now())).display()
        );
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            anyhow::bail!("the directory {} does not exist", dir.display());
        }
    }
    let pg_dump = pg_tool(bin_dir, "pg_dump")?;
    // Found before the dump: the new archive is read back with it.
    let pg_restore = pg_tool(bin_dir, "pg_restore")?;
    let tmp = out.with_extension("partial");
    let started = Instant::now();
    let (url, password) = without_password(url);
    let dbname = format!("--dbname={url}");
    // Readable by this user only: the archive holds password and token hashes and the
    // server's secrets. Created before pg_dump opens it, which keeps the mode.
    private_file(&tmp)?;
    let file = tmp.as_os_str();
    let dumped = run_with(
        &pg_dump,
        &[
            "--format=custom".as_ref(),
            "--compress=6".as_ref(),
            "--file".as_ref(),
            file,
            dbname.as_ref(),
        ],
        password.as_deref(),
    )
    .await;
    // On disk before it takes the name (and the old archives are pruned), and readable.
    let dumped = match dumped {
        Ok(()) => sync_file(&tmp),
        Err(e) => Err(e),
    };
    let dumped = match dumped {
        Ok(()) => run(&pg_restore, &["--list".as_ref(), file])
            .await
            .context("reading the new archive back"),
        Err(e) => Err(e),
    };
    if dumped.is_err() {
        // A half-written archive is no backup; leave nothing that looks like one.
        let _ = std::fs::remove_file(&tmp);
    }
    dumped?;
    let seconds = started.elapsed().as_secs_f64();
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("moving the archive to {}", out.display()));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_file(dir)?;
    }
    let bytes = std::fs::metadata(out)?.len();
    Ok(Done { bytes, seconds })
}

/// Flush a file's (or a directory's) contents to disk.
fn sync_file(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {} to disk", path.display()))
}

/// Create (or empty) `path` with mode 0600.
fn private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

/// A scheduled backup's archive in the backup directory.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: PathBuf,
    /// When it was made (from its name).
    pub made: chrono::DateTime<chrono::Utc>,
    pub bytes: u64,
    /// It starts like an archive: an empty or cut file (a crash while it was written)
    /// does not, and counts as no backup.
    pub valid: bool,
}

const PREFIX: &str = "rackwatch-";
const SUFFIX: &str = ".dump";
const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// The file name of a scheduled backup made at `at`: `rackwatch-20261204T170000Z.dump`.
pub fn archive_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.format(STAMP))
}

/// The scheduled backups in `dir`, oldest first (creating `dir` when it is missing).
/// Other files are left alone.
pub fn archives(dir: &Path) -> anyhow::Result<Vec<Archive>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the backup directory {}", dir.display()))?;
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let Some(stamp) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        let Ok(made) = chrono::NaiveDateTime::parse_from_str(stamp, STAMP) else {
            continue;
        };
        found.push(Archive {
            path: e.path(),
            made: made.and_utc(),
            bytes: e.metadata()?.len(),
            valid: looks_like_archive(&e.path()),
        });
    }
    found.sort_by_key(|a| a.made);
    Ok(found)
}

/// Delete the oldest scheduled backups in `dir` beyond the newest `keep` that look like
/// archives; returns them. A file that does not look like one is neither counted nor
/// deleted (it is for a person to look at): it never pushes a good archive out.
pub fn prune(dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let all: Vec<Archive> = archives(dir)?.into_iter().filter(|a| a.valid).collect();
    let excess = all.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for a in all.into_iter().take(excess) {
        std::fs::remove_file(&a.path)
            .with_context(|| format!("deleting the old backup {}", a.path.display()))?;
        deleted.push(a.path);
    }
    Ok(deleted)
}

/// Tables in the database's `public` schema (a fresh database has none).
pub async fn table_count(store: &Store) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pg_tables WHERE schemaname = 'public'"#
    )
    .fetch_one(&store.pool)
    .await?)
}

/// Restore the archive `file` into the database at `url`. Refuses a database that has
/// tables unless `force` (then everything in its `public` schema is dropped first). After the
/// restore the schema version is checked: an archive from a newer Rackwatch is an error,
/// one from an older Rackwatch is migrated forward.
pub async fn restore(
    bin_dir: &str,
    store: &Store,
    url: &str,
    file: &Path,
    force: bool,
) -> anyhow::Result<Done> {
    let pg_restore = pg_tool(bin_dir, "pg_restore")?;
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    // Read the archive's table of contents first: a file that is not an archive is
    // refused before anything else is said or touched.
    run(&pg_restore, &["--list".as_ref(), file.as_os_str()])
        .await
        .with_context(|| format!("{} is not a readable backup archive", file.display()))?;
    // The archive's schema version, read from it before anything is touched: an archive
    // of a newer Rackwatch (or of no Rackwatch) is refused here, not after a restore.
    let theirs = archive_schema_version(&pg_restore, file).await?;
    let ours = sqlx::migrate!("./migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    match theirs {
        None => bail!(
            "{} holds no Rackwatch schema (no _sqlx_migrations rows); nothing was touched",
            file.display()
        ),
        Some(v) if v > ours => bail!(
            "the archive's schema is at migration {v}, newer than this Rackwatch's {ours}; \
             restore it with that version or newer (nothing was touched)"
        ),
        Some(_) => {}
    }
    let tables = table_count(store).await?;
    if tables > 0 && !force {
        bail!(
            "the target database is not empty ({tables} tables); restore into an empty \
             database, or pass --force to replace its contents with the archive's"
        );
    }
    let bytes = std::fs::metadata(file)?.len();
    let started = Instant::now();
    let (url, password) = without_password(url);
    let dbname = format!("--dbname={url}");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--no-owner".as_ref(),
        "--no-privileges".as_ref(),
        "--exit-on-error".as_ref(),
        "--single-transaction".as_ref(),
        dbname.as_ref(),
    ];
    args.push(file.as_os_str());
    // Dropping the schema of a database with the Citus extension (distributed, or
    // restored from a distributed one) fails in Citus' drop hooks or leaves its metadata
    // pointing at dropped tables.
    if tables > 0 && super::citus::has_extension(&store.pool).await? {
        bail!(
            "the target database has the Citus extension (it is, or was restored from, one \
             distributed with Citus): --force would drop its tables with the schema under \
             Citus' metadata; \
             restore into a new, empty database on the coordinator instead, then run \
             `rackwatch migrate --citus` there to distribute it"
        );
    }
    // A server running on the database (one of them holds the job lock) would go on
    // writing into it, and cache hosts and tokens the restore replaces: the lock is taken
    // here, and held until the restore is done.
    let mut guard = store.dedicated_connection().await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(super::LEADER_LOCK)
        .fetch_one(&mut guard)
        .await?;
    if tables > 0 && !free {
        bail!(
            "a Rackwatch server is running on this database (it holds the job lock): stop \
             every server that uses it, then restore; nothing was touched"
        );
    }
    // Servers that do not lead are connected too, and would go on storing what agents
    // send (and answering 200) into tables the restore replaces: their connections carry
    // Rackwatch's application name. This command's own pool is idle now.
    // Connections idle for a minute are left out: a pooler such as pgbouncer keeps its
    // server connections (with the name) open after the servers are gone, and a server
    // storing what agents send is never idle that long.
    if tables > 0 {
        // The pool's connections (read first: one closing meanwhile is not counted as
        // another's), and a multi-host URL's watcher.
        let ours = i64::from(store.pool.size()) + i64::from(store.router.is_some());
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
                AND (state IS DISTINCT FROM 'idle' OR state_change > now() - interval '1 minute')",
        )
        .bind(super::APP_NAME)
        .fetch_one(&mut guard)
        .await?;
        if others > ours {
            bail!(
                "{} connections of other Rackwatch servers or commands are open on this database \
                 (pg_stat_activity, application_name = '{}'): stop every server that uses it, \
                 then restore; nothing was touched",
                others - ours,
                super::APP_NAME
            );
        }
    }
    if tables > 0 {
        // The whole archive is read before the target is emptied: a truncated or damaged
        // archive lists fine and fails only partway through its data.
        let dev_null: &std::ffi::OsStr = "--file=/dev/null".as_ref();
        run(&pg_restore, &[dev_null, file.as_os_str()])
            .await
            .with_context(|| {
                format!(
                    "{} cannot be read to its end (truncated or damaged); the target was not touched",
                    file.display()
                )
            })?;
        // `pg_restore --clean` cannot drop the daily partitions' inherited keys one by
        // one; the schema is replaced as a whole instead. It is set aside, not dropped,
        // until the restore has succeeded: a restore that fails partway (the disk fills)
        // puts it back, and the database is as it was.
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(ASIDE)
                .fetch_one(&store.pool)
                .await?;
        if left {
            bail!(
                "the schema {ASIDE} is left from an interrupted restore and holds the data \
                 from before it: rename it back to public (ALTER SCHEMA), or drop it once it is \
                 not needed, then restore again; nothing was touched"
            );
        }
        tracing::warn!(
            tables,
            "--force: the public schema is set aside as {ASIDE} and replaced by the archive's"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER SCHEMA public RENAME TO {ASIDE}; CREATE SCHEMA public;"
        )))
        .execute(&store.pool)
        .await
        .context("setting the target's schema aside")?;
    }
    let restored = run_with(&pg_restore, &args, password.as_deref()).await;
    if tables > 0 {
        let sql = if restored.is_ok() {
            format!("DROP SCHEMA {ASIDE} CASCADE;")
        } else {
            format!("DROP SCHEMA public CASCADE; ALTER SCHEMA {ASIDE} RENAME TO public;")
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&store.pool)
            .await
            .with_context(|| {
                format!("finishing the restore (the old data is in the schema {ASIDE})")
            })?;
    }
    restored.with_context(|| {
        format!(
            "restoring {}{}",
            file.display(),
            if tables > 0 {
                "; the database is as it was"
            } else {
                ""
            }
        )
    })?;
    drop(guard);
    let seconds = started.elapsed().as_secs_f64();
    check_schema_version(store).await?;
    Ok(Done { bytes, seconds })
}

/// Where `restore --force` keeps the target's schema until the restore has succeeded.
const ASIDE: &str = "rackwatch_before_restore";

/// The newest migration recorded in an archive (its `_sqlx_migrations` rows, read as the
/// text of their COPY block); `None` when it holds none.
async fn archive_schema_version(pg_restore: &Path, file: &Path) -> anyhow::Result<Option<i64>> {
    let out = tokio::process::Command::new(pg_restore)
        .args(["--data-only", "--table=_sqlx_migrations", "--file=-"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", pg_restore.display()))?;
    if !out.status.success() {
        bail!(
            "{} is not a readable backup archive: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .skip_while(|l| !l.starts_with("COPY ") || !l.contains("_sqlx_migrations"))
        .skip(1)
        .take_while(|l| *l != "\\.")
        .filter_map(|l| l.split('\t').next()?.parse::<i64>().ok())
        .max())
}

/// The restored schema's migration against this binary's: newer is refused, older is
/// brought forward.
async fn check_schema_version(store: &Store) -> anyhow::Result<()> {
    let restored: Option<i64> = sqlx::query_scalar!("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&store.pool)
        .await
        .context("the archive holds no Rackwatch schema (no _sqlx_migrations table)")?;
    let ours = super::latest_migration();
    match restored {
        Some(v) if v > ours => bail!(
            "the archive's schema is at migration {v}, newer than this Rackwatch's {ours}; \
             restore it with the Rackwatch version that made it (or newer)"
        ),
        Some(v) if v < ours => {
            tracing::info!(from = v, to = ours, "migrating the restored schema forward");
            store.migrate().await
        }
        Some(_) => Ok(()),
        None => bail!("the archive's _sqlx_migrations table is empty"),
    }
}

/// One table's rows: how many, and an order-independent checksum of their text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

/// Every table of the `public` schema (partitioned tables as a whole, not their daily
/// partitions) with its row count and checksum: two databases with equal lists hold the
/// same rows.
pub async fn fingerprint(store: &Store) -> anyhow::Result<Vec<TableSum>> {
    let tables: Vec<String> = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "relname!" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          ORDER BY 1"#,
    )
    .fetch_all(&store.pool)
    .await?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        // The name comes from the catalog and is quoted.
        let q = format!(
            "SELECT count(*)::int8, coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
               FROM \"{}\" t",
            t.replace('"', "\"\"")
        );
        let (rows, checksum): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(&store.pool)
            .await?;
        out.push(TableSum {
            table: t,
            rows,
            checksum,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn archives_are_found_by_name_oldest_first_and_pruned_to_keep() {
        let dir = tempfile::tempdir().unwrap();
        let at = |d| Utc.with_ymd_and_hms(2026, 12, d, 3, 0, 0).unwrap();
        for d in [3, 1, 2, 4] {
            std::fs::write(dir.path().join(archive_name(at(d))), b"PGDMP x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
        std::fs::write(dir.path().join("rackwatch-garbage.dump"), b"keep me").unwrap();
        let found = archives(dir.path()).unwrap();
        let days: Vec<_> = found.iter().map(|a| a.made).collect();
        assert_eq!(days, vec![at(1), at(2), at(3), at(4)]);
        let gone = prune(dir.path(), 2).unwrap();
        assert_eq!(gone.len(), 2);
        let left: Vec<_> = archives(dir.path())
            .unwrap()
            .iter()
            .map(|a| a.made)
            .collect();
        assert_eq!(left, vec![at(3), at(4)]);
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join("rackwatch-garbage.dump").exists());
        // A newer file cut short by a crash is no archive: it neither counts toward `keep`
        // nor is deleted, so the good ones stay.
        std::fs::write(dir.path().join(archive_name(at(5))), b"").unwrap();
        assert!(prune(dir.path(), 2).unwrap().is_empty());
        let found = archives(dir.path()).unwrap();
        assert_eq!(
            found.iter().map(|a| (a.made, a.valid)).collect::<Vec<_>>(),
            vec![(at(3), true), (at(4), true), (at(5), false)]
        );
    }

    #[test]
    fn the_password_goes_to_the_environment_not_the_command_line() {
        let (url, pw) =
            without_password("postgres://rw:p%40ss%2Fw@db.example:5432/rackwatch?sslmode=require");
        assert_eq!(
            url,
            "postgres://rw@db.example:5432/rackwatch?sslmode=require"
        );
        assert_eq!(pw.as_deref(), Some("p@ss/w"));
        let socket = "postgres://postgres@localhost/rackwatch?host=/run/pg";
        assert_eq!(without_password(socket), (socket.to_string(), None));
        // Multi-host (pg_auto_failover's form), which no URL parser reads.
        assert_eq!(
            without_password(
                "postgresql://rw:s3cret@db1:5432,db2:5432/rackwatch?target_session_attrs=read-write"
            ),
            (
                "postgresql://rw@db1:5432,db2:5432/rackwatch?target_session_attrs=read-write"
                    .to_string(),
                Some("s3cret".to_string())
            )
        );
        // As a parameter, alone or among others.
        assert_eq!(
            without_password("postgres://rw@db/rackwatch?password=a%26b"),
            (
                "postgres://rw@db/rackwatch".to_string(),
                Some("a&b".to_string())
            )
        );
        assert_eq!(
            without_password("postgres://rw@db/rw?sslmode=require&password=x&connect_timeout=5"),
            (
                "postgres://rw@db/rw?sslmode=require&connect_timeout=5".to_string(),
                Some("x".to_string())
            )
        );
    }
}
