//! Postgres: the only store. Pool, migrations, the managed local cluster, partitions,
//! rollups, retention and the queries the other stages use.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod citus;
pub mod failover;
pub mod history;
pub mod managed;
pub mod queries;
pub mod rollup;
pub mod samples;
pub mod series;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::Config;
use managed::{ManagedOptions, ManagedPostgres};

/// Name of the database inside the managed cluster.
pub const MANAGED_DB: &str = "rackwatch";

/// Why a connection failed, once: the server's own message for an error it returned
/// (without the driver's "at line N", a line of Postgres's source), the driver's
/// otherwise (its error's source repeats it, so the chain is not printed).
fn connect_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Protocol(m) => format!("{m} (is a Postgres server listening there?)"),
        other => other.to_string(),
    }
}

/// The database handle every stage shares.
#[derive(Clone, Debug)]
pub struct Store {
    pub pool: PgPool,
    /// Small read caches on the ingest path, shared by all clones of this store.
    pub(crate) cache: std::sync::Arc<Cache>,
    /// Follows the primary when `database.url` names several hosts (None: one host).
    pub router: Option<std::sync::Arc<failover::Router>>,
    /// The streaming replica that serves history reads (`database.read_url`).
    pub replica: Option<std::sync::Arc<failover::ReadReplica>>,
    /// The URL it was opened with (for the Postgres tools: scheduled backups).
    pub url: DbUrl,
}

/// A database URL, which may hold a password: never printed by `Debug`.
#[derive(Clone)]
pub struct DbUrl(std::sync::Arc<str>);

impl DbUrl {
    /// The URL itself, for a Postgres tool's `--dbname`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbUrl(..)")
    }
}

/// What ingest would otherwise ask Postgres on every batch.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Token SHA-256 → (the token's host and when it was issued, when looked up).
    /// Revocation through this process takes effect at once; through another replica
    /// within `TOKEN_TTL`.
    pub tokens:
        std::sync::Mutex<std::collections::HashMap<Vec<u8>, (auth::TokenHost, std::time::Instant)>>,
    /// Counts the times `tokens` was emptied (a revocation): a lookup that read the
    /// database before one and finishes after it does not put its answer back.
    pub tokens_emptied: std::sync::atomic::AtomicU64,
    /// Host id → (hash of the GPU inventory last written, the `last_seen` it wrote).
    pub inventory:
        std::sync::Mutex<std::collections::HashMap<i64, (u64, chrono::DateTime<chrono::Utc>)>>,
}

/// How long a token lookup is trusted.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long an unchanged GPU inventory is not rewritten (its `last_seen` has this
/// resolution), in the time of the batches: history written in seconds (the demo's first
/// start) still moves `last_seen` with each hour it writes.
pub(crate) const INVENTORY_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// A connected store plus the managed cluster it may own.
pub struct Database {
    pub store: Store,
    pub managed: Option<ManagedPostgres>,
    pub url: String,
}

/// How an opened database is used: long-running owners stop the managed cluster on
/// exit, one-shot commands leave a running one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    /// A one-shot command that may make the managed cluster (`migrate`, `restore`).
    OneShot,
    /// A one-shot command on an existing database: without `database.url`, a managed
    /// cluster must already be under `data_dir` (a mistyped `--data-dir` is an error, not
    /// a new empty database that answers "no hosts").
    Existing,
}

impl Database {
    /// Connect to `database.url`, or start the managed cluster when it is empty; then
    /// run migrations and create partitions.
    ///
    /// A command on an existing database ([`Role::Existing`]) changes no schema: run with
    /// a newer binary than the server's, it would migrate the schema under that server.
    /// It checks that the schema is the one it knows instead.
    pub async fn open(cfg: &Config, role: Role) -> anyhow::Result<Database> {
        let db = Self::open_bare(cfg, role).await?;
        if role == Role::Existing {
            db.store.check_schema(false).await?;
            return Ok(db);
        }
        db.store.migrate().await?;
        if cfg.database.distributed {
            let d = citus::distribute(&db.store.pool).await?;
            if !d.converted.is_empty() {
                tracing::info!(workers = d.workers, tables = ?d.converted, "distributed the schema over the Citus workers");
            }
        }
        db.store
            .ensure_partitions(
                Utc::now(),
                cfg.retention.raw_days,
                cfg.retention.partitions_ahead_days,
            )
            .await?;
        Ok(db)
    }

    /// As [`Database::open`] without touching the schema (`restore` needs the database
    /// as it is: empty, or to be replaced).
    pub async fn open_bare(cfg: &Config, role: Role) -> anyhow::Result<Database> {
        let (url, managed) = if cfg.database.url.is_empty() {
            let root = cfg.data_dir.join("postgres");
            if role == Role::Existing && !managed::cluster_exists(&root) {
                anyhow::bail!(
                    "no Rackwatch database under {}: start the server there first (`rackwatch serve` or `rackwatch demo`), \
                     pass the --data-dir it uses (data_dir in its config), or set database.url (RACKWATCH_DATABASE__URL)",
                    root.display()
                );
            }
            let opts = ManagedOptions {
                root: cfg.data_dir.join("postgres"),
                bin_dir: cfg.database.managed_bin_dir.clone(),
                user: cfg.database.managed_user.clone(),
                settings: Vec::new(),
                own_adopted: role == Role::Owner,
                port: managed::DEFAULT_PORT,
                standby_of: None,
            };
            let pg = tokio::task::spawn_blocking(move || ManagedPostgres::start(&opts)).await??;
            create_database_if_missing(&pg.admin_url(), MANAGED_DB).await?;
            (pg.url_for(MANAGED_DB), Some(pg))
        } else {
            (cfg.database.url.expose().to_string(), None)
        };
        let mut store = Store::connect(
            &url,
            cfg.database.max_connections,
            cfg.database.acquire_timeout_secs,
        )
        .await?;
        if !cfg.database.read_url.is_empty() {
            store = store.with_read_replica(
                cfg.database.read_url.expose(),
                cfg.database.max_connections,
                Duration::from_secs(cfg.database.read_max_lag_secs),
            )?;
        }
        Ok(Database {
            store,
            managed,
            url,
        })
    }

    /// For a long-running owner of a managed cluster: check every 10 s that its Postgres
    /// runs and start it again if it stopped (killed, crashed, stopped by hand); the
    /// server reconnects on its own. If it cannot be started for a minute, the process
    /// exits with an error so a supervisor (systemd) restarts it and shows the failure.
    pub fn watch_managed(&self) {
        let Some(pg) = self.managed.as_ref().filter(|pg| pg.owns()) else {
            return;
        };
        let pg = std::sync::Arc::new(pg.watcher());
        tokio::spawn(async move {
            let mut failures = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let check = pg.clone();
                let data = pg.data_dir().display().to_string();
                match tokio::task::spawn_blocking(move || check.ensure_running()).await {
                    Ok(Ok(false)) => failures = 0,
                    Ok(Ok(true)) => {
                        failures = 0;
                        tracing::error!(data, "managed Postgres had stopped; started it again (its log: postgres.log beside the data directory)");
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        tracing::error!(
                            data,
                            "managed Postgres is not running and does not start: {e}"
                        );
                        if failures >= 6 {
                            tracing::error!("exiting: the database has been down for a minute");
                            std::process::exit(1);
                        }
                    }
                    Err(e) => tracing::warn!("managed Postgres check: {e}"),
                }
            }
        });
    }

    /// Close the pool and stop the managed cluster (if we own it).
    pub async fn close(self) {
        self.store.pool.close().await;
        if let Some(mut pg) = self.managed.filter(|pg| pg.owns()) {
            let r = tokio::task::spawn_blocking(move || pg.stop()).await;
            match r {
                Ok(Ok(())) => tracing::info!("managed Postgres stopped"),
                Ok(Err(e)) => tracing::warn!("stopping managed Postgres: {e}"),
                Err(e) => tracing::warn!("stopping managed Postgres: {e}"),
            }
        }
    }
}

/// The `application_name` of Rackwatch's connections, unless the URL sets one: a
/// restore finds the servers still connected by it, and `pg_stat_activity` shows whose
/// they are.
pub const APP_NAME: &str = "rackwatch";

/// `opts` with [`APP_NAME`] unless it names an application already.
pub(crate) fn named(opts: PgConnectOptions) -> PgConnectOptions {
    if opts.get_application_name().is_some() {
        opts
    } else {
        opts.application_name(APP_NAME)
    }
}

/// `CREATE DATABASE` unless it exists (connects to the maintenance database).
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let opts: PgConnectOptions = admin_url.parse()?;
    let mut conn = sqlx::PgConnection::connect_with(&opts)
        .await
        .context("connecting to the maintenance database")?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
    .fetch_one(&mut conn)
    .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is ours and quoted.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        )))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    Ok(())
}

impl Store {
    /// Open a pool. A one-host URL connects at once (migrations run next) and, when it
    /// cannot, says why: the host, port and database with the connection's own error
    /// (systemd restarts the server until the database is up).
    ///
    /// A URL with several hosts (`postgres://u@db1,db2/rackwatch?target_session_attrs=read-write`)
    /// connects to the usable one and follows the primary across failovers
    /// ([`failover::Router`]).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout_secs: u64,
    ) -> anyhow::Result<Store> {
        let targets = failover::parse(url).map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        let options = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(acquire_timeout_secs.max(1)));
        if targets.routed() {
            // As with one host: wait up to the acquire timeout for a usable host, then
            // say what each one answered.
            let secs = acquire_timeout_secs.max(1);
            let deadline = std::time::Instant::now() + Duration::from_secs(secs);
            while !failover::any_usable(&targets).await {
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "connecting to Postgres ({} hosts in database.url{}) for {secs} s: {}",
                        targets.hosts.len(),
                        if targets.read_write {
                            ", a primary wanted"
                        } else {
                            ""
                        },
                        failover::diagnose(&targets).await
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let router = failover::Router::start(targets).await;
            let pool = router
                .pool_options(options)
                .connect_lazy_with(router.current());
            router.clone().watch(pool.clone());
            return Ok(Store {
                pool,
                cache: Default::default(),
                router: Some(router),
                replica: None,
                url: DbUrl(url.into()),
            });
        }
        let opts: PgConnectOptions = named(
            url.parse()
                .context("database.url is not a valid Postgres URL")?,
        );
        let pool = match options.connect_with(opts.clone()).await {
            Ok(pool) => pool,
            // The pool retries until its timeout and then says only that; one more
            // attempt tells what is wrong (refused, unknown host, password, database).
            Err(sqlx::Error::PoolTimedOut) => {
                let why = match sqlx::PgConnection::connect_with(&opts).await {
                    Ok(_) => "it answers now; try again".to_string(),
                    Err(e) => connect_error(&e),
                };
                anyhow::bail!(
                    "connecting to Postgres at {}:{} (database {:?}) for {} s: {why}",
                    opts.get_host(),
                    opts.get_port(),
                    opts.get_database().unwrap_or("default"),
                    acquire_timeout_secs.max(1)
                );
            }
            Err(e) => anyhow::bail!(
                "connecting to Postgres at {}:{} (database {:?}): {}",
                opts.get_host(),
                opts.get_port(),
                opts.get_database().unwrap_or("default"),
                connect_error(&e)
            ),
        };
        Ok(Store {
            pool,
            cache: Default::default(),
            router: None,
            replica: None,
            url: DbUrl(url.into()),
        })
    }

    /// Send history reads (charts, raw samples, events) to the streaming replica at
    /// `url` while it is at most `max_lag` behind (checked once a second).
    pub fn with_read_replica(
        mut self,
        url: &str,
        max_connections: u32,
        max_lag: Duration,
    ) -> anyhow::Result<Store> {
        let replica = failover::ReadReplica::connect(url, max_connections, max_lag)
            .map_err(anyhow::Error::msg)?;
        replica.clone().watch(self.pool.clone());
        self.replica = Some(replica);
        Ok(self)
    }

    /// The pool for reads that may be up to `database.read_max_lag_secs` (+ 1 s) old:
    /// the replica while it is that fresh, the primary otherwise. "Now" views (latest
    /// samples, alerts, inventory) read the primary.
    pub fn history(&self) -> &PgPool {
        match &self.replica {
            Some(r) if r.healthy() => &r.pool,
            _ => &self.pool,
        }
    }

    /// The database's clock: what the leader's alert rounds and mail sender go by, since
    /// the outbox's times and a silence's early end are stamped by it (a server whose
    /// clock is 30 s behind would otherwise hold every mail 30 s). The server's own clock
    /// when the database does not answer.
    pub async fn clock(&self) -> DateTime<Utc> {
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|_| Utc::now())
    }

    /// A connection outside the pool to the current primary (the job leader's lock).
    pub async fn dedicated_connection(&self) -> Result<sqlx::PgConnection, sqlx::Error> {
        sqlx::PgConnection::connect_with(&self.pool.connect_options()).await
    }

    /// Apply the numbered migrations in `migrations/`.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = sqlx::migrate!("./migrations");
        match migrator.run(&self.pool).await {
            Ok(()) => Ok(()),
            // A database a newer Rackwatch migrated: said in words, with what to do.
            Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
                let ours = latest_migration();
                anyhow::bail!(
                    "this database was migrated by a newer Rackwatch (its schema has migration {v}; \
                     this binary knows up to {ours}): run that version or newer, or restore a \
                     backup made before the upgrade into an empty database"
                )
            }
            Err(e) => Err(e).context("running database migrations"),
        }
    }

    /// Whether the schema is the one this binary's migrations make, said in words with
    /// what to do when it is not.
    /// `older_ok`: a schema this binary's migrations would bring up to date is fine too
    /// (a backup made before an upgrade).
    pub async fn check_schema(&self, older_ok: bool) -> anyhow::Result<()> {
        let ours = latest_migration();
        let table =
            sqlx::query_scalar!("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS \"found!\"")
                .fetch_one(&self.pool)
                .await?;
        let theirs = if table {
            sqlx::query_scalar!("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?
        } else {
            None
        };
        if older_ok && theirs.is_none_or(|v| v <= ours) {
            return Ok(());
        }
        match theirs {
            None => anyhow::bail!(
                "this database has no Rackwatch schema yet: start the server on it first \
                 (`rackwatch serve`, which migrates it), or run `rackwatch migrate`"
            ),
            Some(v) if v < ours => anyhow::bail!(
                "this database's schema is at migration {v} and this rackwatch needs {ours}: \
                 upgrade the server first (it migrates the schema when it starts), or run \
                 `rackwatch migrate`; this command does not change the schema under a running server"
            ),
            Some(v) if v > ours => anyhow::bail!(
                "this database was migrated by a newer Rackwatch (its schema has migration {v}; \
                 this binary knows up to {ours}): run that version or newer"
            ),
            Some(_) => Ok(()),
        }
    }

    /// Create the daily partitions from the oldest accepted day to `ahead` days ahead.
    ///
    /// Server replicas started together would race on the same `CREATE TABLE IF NOT
    /// EXISTS` (Postgres reports "already exists" to the loser), so the work runs under an
    /// advisory lock, on a connection of its own: should anything fail, closing that
    /// connection releases the lock.
    pub async fn ensure_partitions(
        &self,
        now: DateTime<Utc>,
        raw_days: u32,
        ahead: u32,
    ) -> Result<(), StoreError> {
        let first = (now - chrono::Duration::days(i64::from(raw_days))).date_naive();
        let last = now.date_naive() + chrono::Duration::days(i64::from(ahead));
        let mut conn = self.dedicated_connection().await?;
        sqlx::query!("SELECT pg_advisory_lock($1)", PARTITION_LOCK)
            .execute(&mut conn)
            .await?;
        let mut day = first;
        while day <= last {
            for parent in PARTITIONED {
                sqlx::query!("SELECT rackwatch_ensure_partition($1, $2)", parent, day)
                    .execute(&mut conn)
                    .await?;
            }
            day = day.succ_opt().expect("date in range");
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Drop daily partitions past retention: raw samples after `raw_days`, 1-minute
    /// rollups after `rollup_days`, anomaly scores after `score_days`. Returns the dropped
    /// partition names.
    pub async fn drop_expired_partitions(
        &self,
        now: DateTime<Utc>,
        raw_days: u32,
        rollup_days: u32,
        score_days: u32,
    ) -> anyhow::Result<Vec<String>> {
        let parents: Vec<String> = PARTITIONED.iter().map(|s| s.to_string()).collect();
        let rows = sqlx::query!(
            r#"SELECT p.relname::text AS "parent!", c.relname::text AS "child!" FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
              WHERE p.relname = ANY($1::text[])"#,
            &parents,
        )
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(|r| (r.parent, r.child));
        // Raw samples are kept until their minutes are rolled up, whatever their age: a
        // rollup job that stalled past `raw_days`, or late minutes still marked, would
        // otherwise lose those minutes for good.
        let rolled_up: Option<DateTime<Utc>> =
            sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        let first_marked: Option<DateTime<Utc>> =
            sqlx::query_scalar!("SELECT min(bucket) FROM rollup_dirty")
                .fetch_one(&self.pool)
                .await?;
        let rolled_up_by = rolled_up
            .into_iter()
            .chain(first_marked)
            .min()
            .map(|t| t.date_naive());
        let mut dropped = Vec::new();
        // Parents whose lock could not be had this run: their other partitions wait too.
        let mut busy: std::collections::HashSet<String> = Default::default();
        for (parent, child) in rows {
            let keep_days = if parent == "anomaly_scores" {
                score_days
            } else if parent.ends_with("_1m") || parent.ends_with("_15m") {
                rollup_days
            } else {
                raw_days
            };
            let cutoff = (now - chrono::Duration::days(i64::from(keep_days))).date_naive();
            let Some(day) = child
                .rsplit('_')
                .next()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            else {
                continue;
            };
            let raw = matches!(parent.as_str(), "host_samples" | "gpu_samples");
            if day < cutoff && raw && rolled_up_by.is_none_or(|r| day >= r) {
                tracing::warn!(
                    partition = %child,
                    rolled_up_to = ?rolled_up_by,
                    "retention: raw samples past raw_days kept: the rollups have not finished their day"
                );
                continue;
            }
            if day < cutoff && !busy.contains(&parent) {
                // Dropping a partition locks its parent: behind a long reader (a backup's
                // dump holds a share lock for its whole run) every insert and chart would
                // queue behind the drop. It waits 5 s at most, and the next run retries.
                let mut tx = self.pool.begin().await?;
                sqlx::query("SET LOCAL lock_timeout = '5s'")
                    .execute(&mut *tx)
                    .await?;
                let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS \"{child}\""
                )))
                .execute(&mut *tx)
                .await;
                match r {
                    Ok(_) => {
                        tx.commit().await?;
                        dropped.push(child);
                    }
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                        tracing::info!(partition = %child, "retention: the table is in use (a backup?); dropped at the next run");
                        busy.insert(parent);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(dropped)
    }
}

/// Advisory lock key of the job leader ("rackwatch" in ASCII, truncated to 63 bits): the
/// jobs take it to lead, a restore to know that no server runs.
pub const LEADER_LOCK: i64 = 0x7261_636b_7761_7463;

/// The advisory lock key under which partitions are created ("rwpart").
pub const PARTITION_LOCK: i64 = 0x7277_7061_7274;

/// Tables partitioned by day. Rollups (`_1m`, and `_15m` made from them) are kept
/// `retention.rollup_1m_days`, raw samples `retention.raw_days`, anomaly scores
/// `retention.anomaly_scores_days`.
pub const PARTITIONED: [&str; 7] = [
    "host_samples",
    "gpu_samples",
    "host_samples_1m",
    "gpu_samples_1m",
    "host_samples_15m",
    "gpu_samples_15m",
    "anomaly_scores",
];

/// What went wrong in the store, as the stages above it must tell apart: retry later,
/// create a partition, or report a bug.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now (connection lost, shutting down, pool
    /// exhausted): answer 503 and let the client retry.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A row's time falls outside every partition of its table (SQLSTATE 23514 without a
    /// constraint name: the sample tables have no CHECK constraints of their own).
    #[error("no partition holds the row's time")]
    MissingPartition,
    /// Any other database error: a bug or a broken database, never the client's fault.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            return StoreError::Unavailable(e);
        }
        if let sqlx::Error::Database(db) = &e {
            if db.code().as_deref() == Some("23514") && db.constraint().is_none() {
                return StoreError::MissingPartition;
            }
        }
        StoreError::Database(e)
    }
}

/// True when an error means "the database is not reachable right now" (answer 503
/// and let the client retry) rather than a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // 08: connection exception; 57P0x: shutting down / cannot connect now;
            // 3D000: database does not exist (dropped or not yet created); 53: resources;
            // 25006: read-only transaction (the host was demoted to a standby by a
            // failover; the router moves to the new primary within a second).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "3D000"
                || code.starts_with("53")
                || code == "25006"
        }
        _ => false,
    }
}

/// The newest migration this binary has.
pub fn latest_migration() -> i64 {
    sqlx::migrate!("./migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}
