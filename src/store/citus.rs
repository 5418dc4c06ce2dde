//! Citus: the same schema, distributed by host over worker nodes.
//!
//! Every big table carries `host_id` and has no cross-host foreign key (migrations
//! 0002–0009), so Citus can shard them by host and keep one host's samples, rollups,
//! latest rows, events, anomaly scores and energy hours on the same worker
//! ("co-located"): a query about one host runs on one worker, a fleet-wide one on all
//! workers in parallel. The inventory (`hosts`, `gpus`) is small and joined with every
//! big table, so it is a reference table (a copy on every node). Everything else (users,
//! sessions, tokens, alerts, silences, the outbox, forecasts, job state, the queues of
//! late minutes and hours) stays a plain table on the coordinator, where only the server
//! reads it.
//!
//! [`distribute`] turns a migrated database into that layout; it is idempotent and runs
//! at every start with `database.distributed = true` (and once with `rackwatch migrate
//! --citus`). Partitioned tables stay partitioned: a daily partition created later
//! (`rackwatch_ensure_partition`) is distributed like its parent by Citus itself.
//!
//! [`LocalCluster`] starts a coordinator and workers on one machine with the managed
//! Postgres code, for `scripts/citus`, the Citus test run and the Citus benchmark.

use std::path::{Path, PathBuf};

use sqlx::{Connection, PgConnection, PgPool};

use super::managed::{ManagedError, ManagedOptions, ManagedPostgres};

/// Where a table lives on a Citus cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Sharded by `host_id`, co-located with [`COLOCATION_ANCHOR`].
    Distributed,
    /// A full copy on every node (small, joined with distributed tables).
    Reference,
    /// A plain table on the coordinator.
    Local,
}

/// The table every distributed table is co-located with.
pub const COLOCATION_ANCHOR: &str = "host_samples";

/// The distribution column of every distributed table.
pub const DISTRIBUTION_COLUMN: &str = "host_id";

/// Every table of the schema and where it lives. A new migration's table belongs here
/// (`citus::tests` and `every_table_has_a_citus_placement` in tests/it name the
/// missing ones); a table left out stays local and `distribute` warns about it.
pub const TABLES: &[(&str, Placement)] = &[
    // Samples, rollups, latest rows, events, anomaly work, energy hours: by host.
    ("host_samples", Placement::Distributed),
    ("gpu_samples", Placement::Distributed),
    ("host_samples_1m", Placement::Distributed),
    ("gpu_samples_1m", Placement::Distributed),
    ("host_samples_15m", Placement::Distributed),
    ("gpu_samples_15m", Placement::Distributed),
    ("host_latest", Placement::Distributed),
    ("gpu_latest", Placement::Distributed),
    ("hardware_events", Placement::Distributed),
    ("anomaly_scores", Placement::Distributed),
    ("anomaly_models", Placement::Distributed),
    ("energy_hourly", Placement::Distributed),
    ("forecast_hourly", Placement::Distributed),
    // Inventory: joined with every table above by host_id.
    ("hosts", Placement::Reference),
    ("gpus", Placement::Reference),
    // Server-side state: read and written by the server only, never joined with samples
    // on a worker.
    ("users", Placement::Local),
    ("sessions", Placement::Local),
    ("agent_tokens", Placement::Local),
    ("login_throttle", Placement::Local),
    ("login_known_addresses", Placement::Local),
    ("server_secrets", Placement::Local),
    ("alerts", Placement::Local),
    ("incidents", Placement::Local),
    ("silences", Placement::Local),
    ("notification_outbox", Placement::Local),
    ("forecasts", Placement::Local),
    ("job_state", Placement::Local),
    // Queues of late minutes and hours the leader drains in small chunks.
    ("rollup_dirty", Placement::Local),
    ("energy_dirty", Placement::Local),
    ("facility_readings", Placement::Local),
    ("grid_intensity", Placement::Local),
    ("report_deliveries", Placement::Local),
    // Capacity: per pool (a pool spans hosts on every worker), written by the leader.
    ("pool_demand", Placement::Local),
    ("pool_queue", Placement::Local),
    ("capacity_recommendations", Placement::Local),
    ("capacity_exhaustion", Placement::Local),
    ("capacity_history", Placement::Local),
    ("rack_power_hourly", Placement::Local),
    ("host_power_hourly", Placement::Local),
    ("rack_power_hours", Placement::Local),
    ("forecast_hours", Placement::Local),
    // Who did what (append-only; read on the admin page).
    ("audit_log", Placement::Local),
];

/// Where `table` lives, if it is listed.
pub fn placement(table: &str) -> Option<Placement> {
    TABLES.iter().find(|(t, _)| *t == table).map(|(_, p)| *p)
}

/// What went wrong making a database distributed.
#[derive(Debug, thiserror::Error)]
pub enum CitusError {
    #[error(
        "the Citus extension is not available on the database server ({0}). \
         Citus must be installed on the coordinator and every worker and loaded with \
         shared_preload_libraries = 'citus' (scripts/citus builds and starts a local cluster)"
    )]
    NoExtension(sqlx::Error),
    #[error(
        "the Citus coordinator has no active worker nodes: add them with \
         SELECT citus_add_node('worker-host', 5432) on the coordinator, then start again"
    )]
    NoWorkers,
    #[error("distributing {table}: {error}")]
    Table { table: String, error: sqlx::Error },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What [`distribute`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub workers: usize,
    /// Tables made distributed or reference tables by this call.
    pub converted: Vec<String>,
    /// Tables that already were.
    pub already: usize,
    /// Tables of the schema missing from [`TABLES`] (left local).
    pub unlisted: Vec<String>,
}

/// Make the migrated database behind `pool` (the Citus coordinator) distributed as
/// [`TABLES`] says. Idempotent; existing rows move to the workers.
pub async fn distribute(pool: &PgPool) -> Result<Distribution, CitusError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
        .execute(&mut *conn)
        .await
        .map_err(CitusError::NoExtension)?;
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM citus_get_active_worker_nodes()")
        .fetch_one(&mut *conn)
        .await?;
    if workers == 0 {
        return Err(CitusError::NoWorkers);
    }
    let mut out = Distribution {
        workers: workers as usize,
        ..Default::default()
    };
    let tables: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.relname::text, p.partmethod::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
          WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            AND c.relname NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let done = |name: &str| -> Option<bool> {
        tables
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, m)| m.is_some())
    };
    // Reference tables first (distributed tables may join them), the anchor before the
    // tables co-located with it.
    let mut order: Vec<(&str, Placement)> = TABLES
        .iter()
        .filter(|(_, p)| *p == Placement::Reference)
        .copied()
        .collect();
    order.push((COLOCATION_ANCHOR, Placement::Distributed));
    order.extend(
        TABLES
            .iter()
            .filter(|(t, p)| *p == Placement::Distributed && *t != COLOCATION_ANCHOR)
            .copied(),
    );
    for (table, placement) in order {
        match done(table) {
            None => continue, // not in this schema version
            Some(true) => {
                out.already += 1;
                continue;
            }
            Some(false) => {}
        }
        let q = match placement {
            Placement::Reference => sqlx::query("SELECT create_reference_table($1::regclass)"),
            Placement::Distributed if table == COLOCATION_ANCHOR => sqlx::query(
                "SELECT create_distributed_table($1::regclass, $2, colocate_with => 'none')",
            ),
            Placement::Distributed => sqlx::query(
                "SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)",
            ),
            Placement::Local => continue,
        };
        q.bind(table)
            .bind(DISTRIBUTION_COLUMN)
            .bind(COLOCATION_ANCHOR)
            .execute(&mut *conn)
            .await
            .map_err(|error| CitusError::Table {
                table: table.to_string(),
                error,
            })?;
        out.converted.push(table.to_string());
    }
    out.unlisted = tables
        .iter()
        .map(|(t, _)| t.clone())
        .filter(|t| placement(t).is_none())
        .collect();
    if !out.unlisted.is_empty() {
        tracing::warn!(
            tables = ?out.unlisted,
            "tables without a Citus placement stay on the coordinator; list them in store::citus::TABLES"
        );
    }
    Ok(out)
}

/// Whether the database behind `pool` has distributed tables (a Citus coordinator that
/// [`distribute`] has run on).
pub async fn is_distributed(pool: &PgPool) -> Result<bool, sqlx::Error> {
    if !has_extension(pool).await? {
        return Ok(false);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
    )
    .bind(COLOCATION_ANCHOR)
    .fetch_one(pool)
    .await
}

/// Whether the database has the Citus extension (distributed or about to be).
pub async fn has_extension(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS "exists!""#
    )
    .fetch_one(pool)
    .await
}

/// Rows of a distributed table per worker node (node name and port), from its shards.
pub async fn rows_per_node(
    pool: &PgPool,
    table: &str,
) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.nodename::text, p.nodeport, sum(r.result::bigint)::bigint
           FROM run_command_on_shards($1::regclass, 'SELECT count(*) FROM %s') r
           JOIN pg_dist_shard_placement p ON p.shardid = r.shardid
          WHERE r.success
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(table)
    .fetch_all(pool)
    .await
}

/// Server settings every node of a local Citus cluster runs with.
pub fn node_settings() -> Vec<String> {
    vec![
        "shared_preload_libraries=citus".into(),
        // Citus commits a transaction that wrote to several nodes in two phases.
        "max_prepared_transactions=200".into(),
    ]
}

/// A Citus coordinator and its workers, each a managed cluster on this machine with its
/// own port and private socket directory. The nodes reach each other over their unix
/// sockets (a libpq host that starts with `/`), so no TCP port is opened.
pub struct LocalCluster {
    pub coordinator: ManagedPostgres,
    pub workers: Vec<ManagedPostgres>,
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Directory holding one subdirectory per node (`coordinator`, `worker1`, …).
    pub root: PathBuf,
    pub workers: usize,
    /// The coordinator's port; worker `i` gets `port + i`.
    pub port: u16,
    /// Settings added to [`node_settings`] on every node.
    pub settings: Vec<String>,
    /// Adopt and own clusters already running there (see [`ManagedOptions`]).
    pub own_adopted: bool,
    pub bin_dir: String,
    pub user: String,
}

impl LocalClusterOptions {
    /// `workers` workers under `root`, the coordinator on `port`.
    pub fn new(root: impl Into<PathBuf>, workers: usize, port: u16) -> Self {
        LocalClusterOptions {
            root: root.into(),
            workers,
            port,
            settings: Vec::new(),
            own_adopted: true,
            bin_dir: String::new(),
            user: "postgres".into(),
        }
    }
}

impl LocalCluster {
    /// Start (initializing the first time) the coordinator and the workers. Blocking.
    pub fn start(opts: &LocalClusterOptions) -> Result<LocalCluster, ManagedError> {
        let node = |name: String, port: u16| {
            let mut settings = node_settings();
            settings.extend(opts.settings.iter().cloned());
            ManagedPostgres::start(&ManagedOptions {
                root: opts.root.join(name),
                bin_dir: opts.bin_dir.clone(),
                user: opts.user.clone(),
                settings,
                own_adopted: opts.own_adopted,
                port,
                standby_of: None,
            })
        };
        let coordinator = node("coordinator".into(), opts.port)?;
        let workers = (1..=opts.workers)
            .map(|i| node(format!("worker{i}"), opts.port + i as u16))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalCluster {
            coordinator,
            workers,
        })
    }

    /// Where the nodes listen.
    pub fn nodes(&self) -> Nodes {
        let node = |pg: &ManagedPostgres| Node {
            socket_dir: pg.socket_dir().to_path_buf(),
            port: pg.port(),
        };
        Nodes {
            coordinator: node(&self.coordinator),
            workers: self.workers.iter().map(node).collect(),
        }
    }

    /// Stop every node (workers first). Blocking.
    pub fn stop(&mut self) -> Result<(), ManagedError> {
        for w in &mut self.workers {
            w.stop()?;
        }
        self.coordinator.stop()
    }

    /// Stop every node at once (process exit).
    pub fn stop_immediate(&mut self) {
        for w in &mut self.workers {
            w.stop_immediate();
        }
        self.coordinator.stop_immediate();
    }

    /// Leave the nodes running when this handle is dropped.
    pub fn detach(self) {
        self.coordinator.detach();
        for w in self.workers {
            w.detach();
        }
    }
}

/// Where one node of a local cluster listens: its socket directory and port.
#[derive(Debug, Clone)]
pub struct Node {
    pub socket_dir: PathBuf,
    pub port: u16,
}

impl Node {
    /// URL of database `db` on this node.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{db}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }

    /// URL of the node's maintenance database.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// The node's host as Citus' metadata names it (the socket directory).
    fn host(&self) -> String {
        socket_host(&self.socket_dir)
    }
}

/// The nodes of a local Citus cluster: what is needed to make and copy databases on it.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub coordinator: Node,
    pub workers: Vec<Node>,
}

impl Nodes {
    /// Every node, the coordinator first.
    pub fn all(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.coordinator).chain(self.workers.iter())
    }

    /// URL of database `db` on the coordinator (what Rackwatch connects to).
    pub fn url_for(&self, db: &str) -> String {
        self.coordinator.url_for(db)
    }

    /// Create database `db` on every node with the Citus extension, and register the
    /// workers (and the coordinator, so reference tables join local ones) with the
    /// coordinator's copy. Skips what exists.
    pub async fn create_database(&self, db: &str) -> anyhow::Result<()> {
        for n in self.all() {
            super::create_database_if_missing(&n.admin_url(), db).await?;
            let mut c = PgConnection::connect(&n.url_for(db)).await?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
                .execute(&mut c)
                .await
                .map_err(CitusError::NoExtension)?;
            c.close().await?;
        }
        let mut c = PgConnection::connect(&self.url_for(db)).await?;
        sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
            .bind(self.coordinator.host())
            .bind(i32::from(self.coordinator.port))
            .execute(&mut c)
            .await?;
        for w in &self.workers {
            sqlx::query(
                "SELECT citus_add_node($1, $2) WHERE NOT EXISTS
                   (SELECT 1 FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2)",
            )
            .bind(w.host())
            .bind(i32::from(w.port))
            .execute(&mut c)
            .await?;
        }
        c.close().await?;
        Ok(())
    }

    /// Copy database `template` to `db` on every node (`CREATE DATABASE … TEMPLATE`).
    ///
    /// A distributed database is its coordinator's metadata plus the workers' shards, all
    /// found by database name: copying each node's database under the same new name gives
    /// a complete, independent distributed database in about a second, where creating and
    /// distributing one takes far longer. The template must have no connections: call
    /// [`Nodes::seal_template`] once after preparing it.
    pub async fn clone_database(&self, template: &str, db: &str) -> Result<(), sqlx::Error> {
        for n in self.all() {
            let mut c = PgConnection::connect(&n.admin_url()).await?;
            // FILE_COPY: one checkpoint instead of WAL for every page of the template.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{db}\" TEMPLATE \"{template}\" STRATEGY FILE_COPY"
            )))
            .execute(&mut c)
            .await?;
            c.close().await?;
        }
        Ok(())
    }

    /// Close database `template` to connections on every node and end the ones it has
    /// (Citus' maintenance daemon and cached connections between nodes), so that it can
    /// be copied.
    pub async fn seal_template(&self, template: &str) -> Result<(), sqlx::Error> {
        for n in self.all() {
            let mut c = PgConnection::connect(&n.admin_url()).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{template}\" ALLOW_CONNECTIONS false"
            )))
            .execute(&mut c)
            .await?;
            for _ in 0..100 {
                let left: i64 = sqlx::query_scalar!(
                    r#"SELECT count(pg_terminate_backend(pid)) AS "n!" FROM pg_stat_activity WHERE datname = $1"#,
                    template,
                )
                .fetch_one(&mut c)
                .await?;
                if left == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            c.close().await?;
        }
        Ok(())
    }
}

/// A socket directory as a libpq host name.
fn socket_host(dir: &Path) -> String {
    dir.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_big_table_is_distributed_and_co_located_by_host() {
        // The tables the product owner named: samples, rollups, latest, events,
        // anomaly scores, energy hours.
        for t in [
            "host_samples",
            "gpu_samples",
            "host_samples_1m",
            "gpu_samples_1m",
            "host_samples_15m",
            "gpu_samples_15m",
            "host_latest",
            "gpu_latest",
            "hardware_events",
            "anomaly_scores",
            "energy_hourly",
        ] {
            assert_eq!(placement(t), Some(Placement::Distributed), "{t}");
        }
        for t in ["hosts", "gpus"] {
            assert_eq!(placement(t), Some(Placement::Reference), "{t}");
        }
        for t in ["users", "silences", "notification_outbox", "alerts"] {
            assert_eq!(placement(t), Some(Placement::Local), "{t}");
        }
        let mut names: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a table is listed twice");
    }
}
