//! Writing validated batches: host upsert (with the host's latest-sample rows),
//! inventory, samples, events — one transaction.
//!
//! Samples go in with `COPY` in its binary format, the fastest path Postgres has: no
//! number or timestamp is printed here and parsed again there. A replayed batch hits the
//! primary key; then the transaction is retried through a temporary table with
//! `INSERT … ON CONFLICT DO NOTHING`, so a replay is stored once and costs a little
//! more, while the common case runs at COPY speed.
//!
//! The text-format encoders are kept: the ingest benchmark's reference peer is a text
//! `COPY`, and a test checks that both formats store exactly the same values.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, Transaction};

use super::Store;
use crate::model::metrics::{Bounds, Metric, Sample, SqlType, Value, GPU_METRICS, HOST_METRICS};
use crate::model::{Batch, GpuSample, HostInfo, HostSample};

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub host_id: i64,
    /// Samples and events newly stored (the rest of the accepted ones were duplicates).
    pub stored: usize,
}

/// `host_samples`' columns in COPY order: the key, then every metric of the table.
pub fn host_columns() -> &'static str {
    static COLUMNS: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| columns("host_id, ts", HOST_METRICS));
    &COLUMNS
}

/// `gpu_samples`' columns in COPY order.
pub fn gpu_columns() -> &'static str {
    static COLUMNS: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| columns("host_id, gpu_index, ts", GPU_METRICS));
    &COLUMNS
}

fn columns(key: &str, table: &[Metric]) -> String {
    let mut s = key.to_string();
    for m in table {
        s.push_str(", ");
        s.push_str(m.name);
    }
    s
}

/// Samples older than this relative to now were probably replayed from a spool after
/// the rollup job passed their minute: mark those minutes for recomputation. Well inside
/// the rollup job's redo of its last 5 minutes, with room for the minute's truncation and
/// for clocks a minute or two apart.
const ROLLUP_LATE_AFTER: i64 = 120;

impl Store {
    /// Store a validated batch for the host it names.
    pub async fn write_batch(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
    ) -> Result<WriteOutcome, super::StoreError> {
        Ok(self.write_batch_tx(batch, now, Write::Append, None).await?)
    }

    /// [`Store::write_batch`] for an agent whose token was issued at `token_issued`: a
    /// host taken out of the fleet after that stays out (its revoked token may still be
    /// trusted by another server for a minute), though the samples are stored. A host
    /// taken out before it, or a batch without a token (a client certificate), comes back.
    pub async fn write_agent_batch(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
        token_issued: Option<DateTime<Utc>>,
    ) -> Result<WriteOutcome, super::StoreError> {
        Ok(self
            .write_batch_tx(batch, now, Write::Append, token_issued)
            .await?)
    }

    /// Store a validated batch whose samples may be parts of rows already stored: a
    /// sample at a stored `(host, GPU, time)` sets the metrics it holds and keeps the
    /// ones it lacks (and counts as stored only when the row changes), and the
    /// latest-sample rows keep what a newer part leaves out. Prometheus remote write
    /// spreads one scrape's series over several requests.
    pub async fn merge_batch(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
    ) -> Result<WriteOutcome, super::StoreError> {
        Ok(self.write_batch_tx(batch, now, Write::Merge, None).await?)
    }

    async fn write_batch_tx(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
        mode: Write,
        issued: Option<DateTime<Utc>>,
    ) -> Result<WriteOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let host_id = upsert_host(&mut tx, batch, now, mode, issued).await?;
        let copied = copy_samples(&mut tx, host_id, batch).await;
        let (mut tx, host_id, stored_samples) = match copied {
            Ok(n) => (tx, host_id, n),
            Err(e) if is_unique_violation(&e) || is_citus_copy_error(&e) => {
                tx.rollback().await?;
                let mut tx = self.pool.begin().await?;
                // The id from the rolled-back transaction is gone if it created the host.
                let host_id = upsert_host(&mut tx, batch, now, mode, issued).await?;
                let n = insert_samples_idempotent(&mut tx, host_id, batch, mode).await?;
                (tx, host_id, n)
            }
            Err(e) => return Err(e),
        };
        let stored_events = insert_events(&mut tx, host_id, batch).await?;
        let inventory = inventory_hash(batch);
        let unchanged = self
            .cache
            .inventory
            .lock()
            .expect("inventory cache")
            .get(&host_id)
            .is_some_and(|(h, at)| {
                *h == inventory && *at <= now && now - *at < super::INVENTORY_TTL
            });
        if !unchanged {
            upsert_gpus(&mut tx, host_id, batch, now).await?;
        }
        mark_late_minutes(&mut tx, host_id, batch, now).await?;
        tx.commit().await?;
        if !unchanged {
            let mut c = self.cache.inventory.lock().expect("inventory cache");
            c.insert(host_id, (inventory, now));
        }
        Ok(WriteOutcome {
            host_id,
            stored: stored_samples + stored_events,
        })
    }
}

impl Store {
    /// The placement (site, rack, pool, labels) of the named hosts that exist.
    pub async fn host_placements(&self, names: &[String]) -> Result<Vec<HostInfo>, sqlx::Error> {
        Ok(sqlx::query!(
            r#"SELECT name, site, rack, pool, labels AS "labels: Json<BTreeMap<String, String>>"
                 FROM hosts WHERE name = ANY($1)"#,
            names,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| HostInfo {
            name: r.name,
            site: r.site,
            rack: r.rack,
            pool: r.pool,
            labels: r.labels.0,
        })
        .collect())
    }

    /// The code of the newest XID event of each GPU of the named hosts:
    /// `(host, GPU index, code)`.
    pub async fn latest_xid_codes(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, i16, i64)>, sqlx::Error> {
        Ok(sqlx::query!(
            // DISTINCT ON the distribution column, no LATERAL: Citus pushes this down to
            // the workers (a lateral subquery correlated with the reference table `hosts`
            // it cannot).
            r#"SELECT DISTINCT ON (e.host_id, e.gpu_index) h.name, e.gpu_index AS "gpu_index!", e.code AS "code!"
                 FROM hardware_events e JOIN hosts h ON h.id = e.host_id
                WHERE h.name = ANY($1) AND e.kind = 'xid' AND e.gpu_index >= 0
                ORDER BY e.host_id, e.gpu_index, e.ts DESC"#,
            names,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.name, r.gpu_index, r.code))
        .collect())
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// A `COPY` into a Citus distributed table that a worker refused. Citus re-raises the
/// worker's error with SQLSTATE XX000 (`ReportCopyError` in its multi_copy.c), so a
/// replayed batch's duplicate key is not told apart by its code there. The batch is
/// then written again through `INSERT … ON CONFLICT DO NOTHING`, which stores the new
/// rows of a replay and fails again, with the real SQLSTATE, for anything else (a
/// missing partition included).
fn is_citus_copy_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("XX000")
                && db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.routine())
                    == Some("ReportCopyError")
        }
        _ => false,
    }
}

/// The newest host sample and the newest sample of each GPU in a batch (agents may
/// send them in any order), GPUs sorted by index so that concurrent batches of one
/// host lock `gpu_latest` rows in the same order.
fn newest(b: &Batch) -> (Option<&HostSample>, Vec<&GpuSample>) {
    let host = b.host_samples.iter().max_by_key(|s| s.ts);
    let mut gpus: Vec<&GpuSample> = Vec::new();
    for s in &b.gpu_samples {
        match gpus.iter_mut().find(|g| g.index == s.index) {
            Some(g) if g.ts < s.ts => *g = s,
            Some(_) => {}
            None => gpus.push(s),
        }
    }
    gpus.sort_by_key(|g| g.index);
    (host, gpus)
}

/// For each of `newest`'s GPUs, its energy counter and time at the batch's first sample
/// on the newest sample's UTC day: where that day's count starts when the batch brings a
/// new day, or an earlier start than the stored one when it brings the day's earlier
/// samples late. A batch can span midnight (an agent replaying an outage, the demo's
/// back-fill): the newest sample's counter would leave the day's earlier energy out.
fn day_first_energy(
    b: &Batch,
    newest: &[&GpuSample],
) -> (Vec<Option<f64>>, Vec<Option<DateTime<Utc>>>) {
    let day = |t: DateTime<Utc>| t.date_naive();
    newest
        .iter()
        .map(|n| {
            b.gpu_samples
                .iter()
                .filter(|s| s.index == n.index && day(s.ts) == day(n.ts))
                .filter_map(|s| Some((s.ts, s.energy_joules_total?)))
                .min_by_key(|(t, _)| *t)
                .map_or((None, None), |(t, e)| (Some(e), Some(t)))
        })
        .unzip()
}

/// The most a GPU can draw, W (the metric table's bound on `power_watts`): a late sample
/// moves the day's start back only if the energy between it and the stored start fits
/// under it, so a counter reset in between is not read as energy.
fn max_gpu_watts() -> f64 {
    GPU_METRICS
        .iter()
        .find(|m| m.name == "power_watts")
        .and_then(|m| match m.bounds {
            Bounds::Range { hi, .. } => Some(hi),
            _ => None,
        })
        .expect("power_watts has a range in the metric table")
}

/// How a batch's samples meet rows already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// A stored row wins: a replay is stored once.
    Append,
    /// A stored row takes the metrics the new one holds and keeps the rest
    /// ([`Store::merge_batch`]).
    Merge,
}

/// The host upsert with its latest-sample rows: `$1..$8` the host, `$9` the newest host
/// sample's time and then its `latest` metrics, then the newest GPU samples as arrays
/// (index, time, their `latest` metrics, and the energy counter where the day's count
/// starts). Built once from the metric table.
static UPSERT_HOST: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| upsert_host_sql(Write::Append));
static UPSERT_HOST_MERGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| upsert_host_sql(Write::Merge));

fn upsert_host_sql(mode: Write) -> String {
    // Merging: a part of a newer sample keeps the metrics it lacks, and a part of the
    // same sample fills them.
    let (value, newer) = match mode {
        Write::Append => ("EXCLUDED.{c}", "<"),
        Write::Merge => ("COALESCE(EXCLUDED.{c}, {t}.{c})", "<="),
    };
    let value_of = |t: &str, c: &str| value.replace("{t}", t).replace("{c}", c);
    let host: Vec<&Metric> = HOST_METRICS.iter().filter(|m| m.latest).collect();
    let gpu: Vec<&Metric> = GPU_METRICS.iter().filter(|m| m.latest).collect();
    let mut n = 10;
    let mut next = || {
        n += 1;
        n
    };
    let host_cols: Vec<&str> = host.iter().map(|m| m.name).collect();
    let host_params: Vec<String> = host.iter().map(|_| format!("${}", next())).collect();
    let host_set: Vec<String> = host_cols
        .iter()
        .map(|c| format!("{c} = {}", value_of("host_latest", c)))
        .collect();
    let (gi, gt) = (next(), next());
    let gpu_cols: Vec<&str> = gpu.iter().map(|m| m.name).collect();
    let gpu_arrays: Vec<String> = gpu
        .iter()
        .map(|m| format!("${}::{}[]", next(), pg_array_type(m.sql)))
        .collect();
    // Each GPU's energy counter, and its time, at the batch's first sample of the newest
    // sample's day.
    let (gdf, gdt) = (next(), next());
    // When the sender's token was issued: a host taken out after it stays out.
    let issued = next();
    let aliases: Vec<String> = (0..gpu.len()).map(|k| format!("c{k}")).collect();
    // The energy counter also starts the day's count (energy_day_start), below.
    let energy = gpu_cols.iter().position(|c| *c == "energy_joules_total");
    // A GPU row takes a batch newer than it; an older one (a spool replayed after live
    // samples, a back-fill) can only move back where its day's energy count starts.
    let newer_gpu = format!("gpu_latest.ts {newer} EXCLUDED.ts");
    let gpu_set: Vec<String> = gpu_cols
        .iter()
        .filter(|c| **c != "energy_joules_total")
        .map(|c| {
            format!(
                "{c} = CASE WHEN {newer_gpu} THEN {v} ELSE gpu_latest.{c} END",
                v = value_of("gpu_latest", c)
            )
        })
        .collect();
    // The day's start moves back to a sample of the same day from before it when the
    // energy between the two fits under the most a GPU draws; otherwise a counter reset
    // lies between them. `start` and `at` are the batch's first counter of the day and
    // its time.
    let earlier = |start: &str, at: &str| {
        format!(
            "rackwatch_utc_day({at}) = rackwatch_utc_day(gpu_latest.ts)
                       AND {at} < gpu_latest.energy_day_ts AND {start} <= gpu_latest.energy_day_start
                       AND gpu_latest.energy_day_start - {start}
                           <= extract(epoch FROM gpu_latest.energy_day_ts - {at}) * {w}",
            w = max_gpu_watts()
        )
    };
    let moves_back = earlier("EXCLUDED.energy_day_start", "EXCLUDED.energy_day_ts");
    // Where a stored GPU's day starts: its counter (k = 0), then its time (k = 1).
    let day_case = |k: usize| {
        let same = ["gpu_latest.energy_day_start", "gpu_latest.energy_day_ts"][k];
        let new = ["EXCLUDED.energy_day_start", "EXCLUDED.energy_day_ts"][k];
        // After a counter reset the start is computed, no sample's counter: no later
        // sample can move it back (its time is forgotten).
        let reset = [
            "EXCLUDED.energy_joules_total - (gpu_latest.energy_joules_total - gpu_latest.energy_day_start)",
            "NULL",
        ][k];
        format!(
            "CASE WHEN {newer_gpu} AND rackwatch_utc_day(gpu_latest.ts) <> rackwatch_utc_day(EXCLUDED.ts) THEN {new}
                  WHEN {newer_gpu} AND EXCLUDED.energy_joules_total IS NULL THEN {same}
                  WHEN {newer_gpu} AND (gpu_latest.energy_day_start IS NULL OR gpu_latest.energy_joules_total IS NULL)
                       THEN {new}
                  WHEN {newer_gpu} AND EXCLUDED.energy_joules_total < gpu_latest.energy_joules_total THEN {reset}
                  WHEN {moves_back} THEN {new}
                  ELSE {same} END"
        )
    };
    let (day_col, day_val, day_set, gpu_where) = match energy {
        Some(k) => (
            ", energy_day_start, energy_day_ts",
            format!(", COALESCE(g.df, g.c{k}), CASE WHEN g.df IS NULL THEN g.t ELSE g.dt END"),
            format!(
                ",
               -- A new UTC day starts counting at its first sample (in the batch, which
               -- may span midnight); within a day a counter that went backwards (driver
               -- reload) keeps what was counted.
               energy_joules_total = CASE WHEN NOT ({newer_gpu}) THEN gpu_latest.energy_joules_total
                  WHEN rackwatch_utc_day(gpu_latest.ts) <> rackwatch_utc_day(EXCLUDED.ts) THEN EXCLUDED.energy_joules_total
                  ELSE COALESCE(EXCLUDED.energy_joules_total, gpu_latest.energy_joules_total) END,
               energy_day_start = {start},
               energy_day_ts = {start_ts}",
                start = day_case(0),
                start_ts = day_case(1),
            ),
            format!("{newer_gpu} OR ({moves_back})"),
        ),
        None => ("", String::new(), String::new(), newer_gpu.clone()),
    };
    format!(
        "WITH h AS (
            INSERT INTO hosts (name, site, rack, pool, labels, agent_version, agent_stats, last_seen, last_heard)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10)
            ON CONFLICT (name) DO UPDATE SET
               site = EXCLUDED.site, rack = EXCLUDED.rack, pool = EXCLUDED.pool, labels = EXCLUDED.labels,
               agent_version = CASE WHEN EXCLUDED.agent_version = '' THEN hosts.agent_version ELSE EXCLUDED.agent_version END,
               agent_stats = CASE WHEN EXCLUDED.agent_version = '' THEN hosts.agent_stats ELSE EXCLUDED.agent_stats END,
               last_seen = GREATEST(hosts.last_seen, EXCLUDED.last_seen),
               last_heard = GREATEST(hosts.last_heard, EXCLUDED.last_heard),
               removed_at = CASE WHEN hosts.removed_at > ${issued}::timestamptz THEN hosts.removed_at END,
               removed_by = CASE WHEN hosts.removed_at > ${issued}::timestamptz THEN hosts.removed_by END,
               -- Two agents as one host: batches going back to the instance they left
               -- less than 5 minutes before (a restarted agent never goes back).
               agent_prev_instance = CASE WHEN {switched} THEN hosts.agent_stats->>'instance'
                  ELSE hosts.agent_prev_instance END,
               -- Times are the batch's arrival ($10): Citus refuses now() and other
               -- non-immutable functions (timestamptz - interval) here.
               agent_prev_heard = CASE WHEN {switched} THEN {arrived} ELSE hosts.agent_prev_heard END,
               two_agents_at = CASE WHEN {switched}
                    AND EXCLUDED.agent_stats->>'instance' = hosts.agent_prev_instance
                    AND {arrived} - hosts.agent_prev_heard < interval '5 minutes'
                  THEN {arrived} ELSE hosts.two_agents_at END
            RETURNING id
         ), host_latest_up AS (
            INSERT INTO host_latest (host_id, ts, {hc})
            SELECT h.id, $9, {hp} FROM h WHERE $9::timestamptz IS NOT NULL
            ON CONFLICT (host_id) DO UPDATE SET ts = EXCLUDED.ts, {hs}
             WHERE host_latest.ts {newer} EXCLUDED.ts
         ), gpu_latest_up AS (
            INSERT INTO gpu_latest (host_id, gpu_index, ts, {gc}{day_col})
            SELECT h.id, g.i, g.t, {gal}{day_val} FROM h, UNNEST(${gi}::int2[], ${gt}::timestamptz[], {ga}, ${gdf}::float8[], ${gdt}::timestamptz[]) AS g(i, t, {al}, df, dt)
            ON CONFLICT (host_id, gpu_index) DO UPDATE SET ts = GREATEST(gpu_latest.ts, EXCLUDED.ts), {gs}{day_set}
             WHERE {gpu_where}
         )
         SELECT id FROM h",
        hc = host_cols.join(", "),
        hp = host_params.join(", "),
        hs = host_set.join(", "),
        gc = gpu_cols.join(", "),
        ga = gpu_arrays.join(", "),
        al = aliases.join(", "),
        gal = aliases.iter().map(|a| format!("g.{a}")).collect::<Vec<_>>().join(", "),
        gs = gpu_set.join(", "),
        arrived = "COALESCE(EXCLUDED.last_heard, hosts.last_heard)",
        switched = "EXCLUDED.agent_stats->>'instance' IS NOT NULL
                    AND hosts.agent_stats->>'instance' IS NOT NULL
                    AND EXCLUDED.agent_stats->>'instance' <> hosts.agent_stats->>'instance'",
    )
}

/// The Postgres element type of a metric's array parameter.
fn pg_array_type(sql: SqlType) -> &'static str {
    match sql {
        SqlType::Real => "float4",
        SqlType::Double => "float8",
        SqlType::BigInt | SqlType::Bits => "int8",
        SqlType::Boolean => "bool",
    }
}

type Query<'q> = sqlx::query::QueryScalar<'q, Postgres, i64, sqlx::postgres::PgArguments>;

/// Bind one metric value in its column's type.
fn bind_value<'q>(q: Query<'q>, sql: SqlType, v: Value) -> Query<'q> {
    match (sql, v) {
        (SqlType::Real, v) => q.bind(v.as_f64().map(|x| x as f32)),
        (SqlType::Double, v) => q.bind(v.as_f64()),
        (SqlType::BigInt | SqlType::Bits, Value::U64(x)) => q.bind(x.map(|x| x as i64)),
        (SqlType::Boolean, Value::Bool(x)) => q.bind(x),
        (sql, v) => unreachable!("{sql:?} column for a {v:?} field"),
    }
}

/// Bind one metric of several samples as an array in its column's type.
fn bind_array<'q, S: Sample>(q: Query<'q>, m: &Metric, i: usize, rows: &[&S]) -> Query<'q> {
    let vals = rows.iter().map(|r| r.value(i));
    match m.sql {
        SqlType::Real => q.bind(
            vals.map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Vec<_>>(),
        ),
        SqlType::Double => q.bind(vals.map(|v| v.as_f64()).collect::<Vec<_>>()),
        SqlType::BigInt | SqlType::Bits => q.bind(
            vals.map(|v| match v {
                Value::U64(x) => x.map(|x| x as i64),
                _ => None,
            })
            .collect::<Vec<_>>(),
        ),
        SqlType::Boolean => q.bind(
            vals.map(|v| match v {
                Value::Bool(x) => x,
                _ => None,
            })
            .collect::<Vec<_>>(),
        ),
    }
}

/// Upsert the host (returning its id) and, in the same statement, move its
/// `host_latest` / `gpu_latest` rows forward to the batch's newest samples: only where
/// the batch's sample is newer, so late or replayed samples never move them back.
async fn upsert_host(
    tx: &mut Transaction<'_, Postgres>,
    b: &Batch,
    now: DateTime<Utc>,
    mode: Write,
    issued: Option<DateTime<Utc>>,
) -> Result<i64, sqlx::Error> {
    let labels = sqlx::types::Json(&b.host.labels);
    let (version, stats) = match &b.agent {
        Some(a) => (
            a.version.as_str(),
            serde_json::to_value(a).unwrap_or_default(),
        ),
        None => ("", serde_json::json!({})),
    };
    let last_seen = b
        .host_samples
        .iter()
        .map(|s| s.ts)
        .chain(b.gpu_samples.iter().map(|s| s.ts))
        .max()
        .map(|t| t.min(now));
    let (h, gpus) = newest(b);
    let sql = match mode {
        Write::Append => UPSERT_HOST.as_str(),
        Write::Merge => UPSERT_HOST_MERGE.as_str(),
    };
    let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&b.host.name)
        .bind(&b.host.site)
        .bind(&b.host.rack)
        .bind(&b.host.pool)
        .bind(labels)
        .bind(version)
        .bind(stats)
        .bind(last_seen)
        .bind(h.map(|s| s.ts))
        // Received now (the server's clock), when the batch carries a sample.
        .bind(last_seen.map(|_| now));
    for (i, m) in HOST_METRICS.iter().enumerate().filter(|(_, m)| m.latest) {
        let v = h.map_or(Value::F64(None), |s| s.value(i));
        // A missing host sample binds NULLs of the column's type.
        let v = match (h, m.sql) {
            (None, SqlType::BigInt | SqlType::Bits) => Value::U64(None),
            (None, SqlType::Boolean) => Value::Bool(None),
            _ => v,
        };
        q = bind_value(q, m.sql, v);
    }
    q = q
        .bind(gpus.iter().map(|g| i16::from(g.index)).collect::<Vec<_>>())
        .bind(gpus.iter().map(|g| g.ts).collect::<Vec<_>>());
    for (i, m) in GPU_METRICS.iter().enumerate().filter(|(_, m)| m.latest) {
        q = bind_array(q, m, i, &gpus);
    }
    let (day_energy, day_ts) = day_first_energy(b, &gpus);
    q = q.bind(day_energy).bind(day_ts).bind(issued);
    q.fetch_one(&mut **tx).await
}

/// `2026-11-23 12:00:00.123456+00`. Written field by field: chrono's `format` re-parses
/// its pattern on every call, which showed up in ingest profiles.
fn ts(out: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let _ = write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_micros().min(999_999)
    );
}

/// COPY text-format encoding of host sample rows (every column of [`host_columns`]).
pub fn encode_host_rows(host_id: i64, rows: &[HostSample], out: &mut String) {
    for s in rows {
        let _ = write!(out, "{host_id}\t");
        ts(out, s.ts);
        text_values(s, out);
        out.push('\n');
    }
}

/// COPY text-format encoding of GPU sample rows (every column of [`gpu_columns`]).
pub fn encode_gpu_rows(host_id: i64, rows: &[GpuSample], out: &mut String) {
    for s in rows {
        let _ = write!(out, "{host_id}\t{}\t", s.index);
        ts(out, s.ts);
        text_values(s, out);
        out.push('\n');
    }
}

/// The metrics of a row, tab-separated, `\N` for missing ones.
fn text_values<S: Sample>(s: &S, out: &mut String) {
    let _ = s.try_for_each_value(|_, m, v| {
        let _ = match (m.sql, v) {
            (_, Value::F64(Some(x))) => write!(out, "\t{x}"),
            // A bit mask is stored as the signed value with the same bits.
            (SqlType::Bits, Value::U64(Some(x))) => write!(out, "\t{}", x as i64),
            (_, Value::U64(Some(x))) => write!(out, "\t{x}"),
            (_, Value::Bool(Some(x))) => write!(out, "\t{x}"),
            _ => {
                out.push_str("\t\\N");
                Ok(())
            }
        };
        Ok::<(), std::convert::Infallible>(())
    });
}

/// A binary-format `COPY` stream (header, rows, trailer) appended to a buffer. The
/// encoders write each column in the exact type of its table column (binary `COPY` has
/// no casts; the `binary_copy_stores_exactly_what_text_copy_stores` test covers every
/// column).
struct BinaryRows<'a> {
    out: &'a mut Vec<u8>,
}

/// `PGCOPY\n\377\r\n\0`, no flags, no header extension.
const BINARY_HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Seconds from the Unix epoch to Postgres' (2000-01-01).
const PG_EPOCH_SECS: i64 = 946_684_800;

impl<'a> BinaryRows<'a> {
    fn start(out: &'a mut Vec<u8>) -> Self {
        out.extend_from_slice(BINARY_HEADER);
        BinaryRows { out }
    }
    fn row(&mut self, fields: i16) {
        self.out.extend_from_slice(&fields.to_be_bytes());
    }
    fn null(&mut self) {
        self.out.extend_from_slice(&(-1i32).to_be_bytes());
    }
    fn field(&mut self, bytes: &[u8]) {
        self.out
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.out.extend_from_slice(bytes);
    }
    fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }
    fn int2(&mut self, v: i16) {
        self.field(&v.to_be_bytes());
    }
    fn ts(&mut self, t: DateTime<Utc>) {
        // Microseconds, truncated like the text form (a leap second's nanoseconds past
        // 1e9 stay in their second).
        let micros = i64::from(t.timestamp_subsec_micros().min(999_999));
        self.int8((t.timestamp() - PG_EPOCH_SECS) * 1_000_000 + micros);
    }
    fn opt_int8(&mut self, v: Option<u64>) {
        // Validation keeps every stored count at or below i64::MAX.
        match v {
            Some(v) => self.int8(v as i64),
            None => self.null(),
        }
    }
    /// A bit mask: stored as the signed 64-bit value with the same bits.
    fn opt_bits(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.int8(v as i64),
            None => self.null(),
        }
    }
    fn opt_real(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.field(&real(v).to_bits().to_be_bytes()),
            None => self.null(),
        }
    }
    fn opt_double(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.field(&v.to_bits().to_be_bytes()),
            None => self.null(),
        }
    }
    fn opt_bool(&mut self, v: Option<bool>) {
        match v {
            Some(v) => self.field(&[u8::from(v)]),
            None => self.null(),
        }
    }
    /// A metric in the exact type of its column (binary `COPY` has no casts).
    fn value(&mut self, sql: SqlType, v: Value) {
        match (sql, v) {
            (SqlType::Real, Value::F64(x)) => self.opt_real(x),
            (SqlType::Double, Value::F64(x)) => self.opt_double(x),
            (SqlType::BigInt, Value::U64(x)) => self.opt_int8(x),
            (SqlType::Bits, Value::U64(x)) => self.opt_bits(x),
            (SqlType::Boolean, Value::Bool(x)) => self.opt_bool(x),
            // The metric table test checks every column type against its field's type.
            (sql, v) => unreachable!("{sql:?} column for a {v:?} field"),
        }
    }
    fn finish(self) {
        self.out.extend_from_slice(&(-1i16).to_be_bytes());
    }
}

/// The `REAL` a text `COPY` of `x` stores: Postgres parses the shortest decimal of `x`
/// with `strtof`, which rounds that decimal to the nearest `f32`. Rounding the double
/// itself gives the same `f32` except where `x` lies exactly halfway between two of them
/// (the decimal may not), or where the result is subnormal; those take the text route.
/// A nonzero value below the smallest `f32` becomes 0 (text `COPY` refused it, and with
/// it the whole batch).
fn real(x: f64) -> f32 {
    let f = x as f32;
    let halfway = x.to_bits() & 0x1fff_ffff == 0x1000_0000;
    if halfway || f.abs() < f32::MIN_POSITIVE {
        if x == 0.0 {
            return f;
        }
        return x.to_string().parse::<f32>().unwrap_or(f);
    }
    f
}

/// Binary `COPY` rows of the sample columns that at least one row of the batch has: a
/// column every row leaves out is not sent (it is NULL either way: the sample tables have
/// no column defaults, which a test checks), so Postgres reads fewer fields per row.
/// `key` names the leading key columns that `prefix` writes. Returns the column list.
fn encode_binary<S: Sample>(
    rows: &[S],
    key: &str,
    prefix: impl Fn(&mut BinaryRows<'_>, &S),
    out: &mut Vec<u8>,
) -> String {
    let mut has = vec![false; S::METRICS.len()];
    for r in rows {
        let _ = r.try_for_each_value(|i, _, v| {
            has[i] |= v.is_some();
            Ok::<(), std::convert::Infallible>(())
        });
    }
    let mut columns = String::with_capacity(key.len() + 32 * S::METRICS.len());
    columns.push_str(key);
    for (m, _) in S::METRICS.iter().zip(&has).filter(|(_, h)| **h) {
        columns.push_str(", ");
        columns.push_str(m.name);
    }
    let fields = (key.split(',').count() + has.iter().filter(|h| **h).count()) as i16;
    let mut w = BinaryRows::start(out);
    for r in rows {
        w.row(fields);
        prefix(&mut w, r);
        let _ = r.try_for_each_value(|i, m, v| {
            if has[i] {
                w.value(m.sql, v);
            }
            Ok::<(), std::convert::Infallible>(())
        });
    }
    w.finish();
    columns
}

/// Binary `COPY` stream of host sample rows into `out`; returns its column list (those
/// of [`host_columns`] that some row has).
pub fn encode_host_rows_binary(host_id: i64, rows: &[HostSample], out: &mut Vec<u8>) -> String {
    out.reserve(19 + rows.len() * 150 + 2);
    encode_binary(
        rows,
        "host_id, ts",
        |w, s| {
            w.int8(host_id);
            w.ts(s.ts);
        },
        out,
    )
}

/// Binary `COPY` stream of GPU sample rows into `out`; returns its column list (those
/// of [`gpu_columns`] that some row has).
pub fn encode_gpu_rows_binary(host_id: i64, rows: &[GpuSample], out: &mut Vec<u8>) -> String {
    out.reserve(19 + rows.len() * 300 + 2);
    encode_binary(
        rows,
        "host_id, gpu_index, ts",
        |w, s| {
            w.int8(host_id);
            w.int2(i16::from(s.index));
            w.ts(s.ts);
        },
        out,
    )
}

/// `COPY … FROM STDIN` of one binary stream.
async fn copy_into(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    data: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    copy.finish().await
}

async fn copy_samples(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
) -> Result<usize, sqlx::Error> {
    let mut n = 0;
    if !b.host_samples.is_empty() {
        let mut data = Vec::new();
        let columns = encode_host_rows_binary(host_id, &b.host_samples, &mut data);
        n += copy_into(tx, "host_samples", &columns, data).await? as usize;
    }
    if !b.gpu_samples.is_empty() {
        let mut data = Vec::new();
        let columns = encode_gpu_rows_binary(host_id, &b.gpu_samples, &mut data);
        n += copy_into(tx, "gpu_samples", &columns, data).await? as usize;
    }
    Ok(n)
}

async fn insert_samples_idempotent(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
    mode: Write,
) -> Result<usize, sqlx::Error> {
    let mut n = 0;
    if !b.host_samples.is_empty() {
        sqlx::query!("CREATE TEMP TABLE IF NOT EXISTS replay_host_samples (LIKE host_samples) ON COMMIT DELETE ROWS")
            .execute(&mut **tx)
            .await?;
        let mut data = Vec::new();
        let columns = encode_host_rows_binary(host_id, &b.host_samples, &mut data);
        copy_into(tx, "replay_host_samples", &columns, data).await?;
        n += count_inserted(
            tx,
            &format!(
                "INSERT INTO host_samples ({c}) SELECT {c} FROM replay_host_samples {k}",
                c = host_columns(),
                k = on_conflict(mode, "host_samples", "host_id, ts", HOST_METRICS),
            ),
        )
        .await?;
    }
    if !b.gpu_samples.is_empty() {
        sqlx::query!("CREATE TEMP TABLE IF NOT EXISTS replay_gpu_samples (LIKE gpu_samples) ON COMMIT DELETE ROWS")
            .execute(&mut **tx)
            .await?;
        let mut data = Vec::new();
        let columns = encode_gpu_rows_binary(host_id, &b.gpu_samples, &mut data);
        copy_into(tx, "replay_gpu_samples", &columns, data).await?;
        n += count_inserted(
            tx,
            &format!(
                "INSERT INTO gpu_samples ({c}) SELECT {c} FROM replay_gpu_samples {k}",
                c = gpu_columns(),
                k = on_conflict(mode, "gpu_samples", "host_id, gpu_index, ts", GPU_METRICS),
            ),
        )
        .await?;
    }
    Ok(n)
}

/// The conflict clause of a replayed or merged insert. Merging takes the metrics the new
/// part holds and keeps the stored ones it lacks: a later part of a scrape split over
/// requests holds the earlier part's series too, so its sums over CPUs, devices and RAPL
/// packages are the fuller ones. Only rows that change are touched (counted), so a merge
/// replayed is stored once too.
fn on_conflict(mode: Write, table: &str, key: &str, metrics: &[Metric]) -> String {
    match mode {
        Write::Append => "ON CONFLICT DO NOTHING".into(),
        Write::Merge => {
            let set: Vec<String> = metrics
                .iter()
                .map(|m| format!("{c} = COALESCE(EXCLUDED.{c}, {table}.{c})", c = m.name))
                .collect();
            let gains: Vec<String> = metrics
                .iter()
                .map(|m| {
                    format!(
                        "(EXCLUDED.{c} IS NOT NULL AND EXCLUDED.{c} IS DISTINCT FROM {table}.{c})",
                        c = m.name
                    )
                })
                .collect();
            format!(
                "ON CONFLICT ({key}) DO UPDATE SET {} WHERE {}",
                set.join(", "),
                gains.join(" OR ")
            )
        }
    }
}

/// Run `INSERT … SELECT … ON CONFLICT DO NOTHING` and count the rows it stored. The
/// count comes from `RETURNING`, not the command tag: Citus answers an `INSERT … SELECT`
/// it runs through the coordinator with the number of rows selected, duplicates included.
async fn count_inserted(
    tx: &mut Transaction<'_, Postgres>,
    insert: &str,
) -> Result<usize, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH i AS ({insert} RETURNING 1) SELECT count(*) FROM i"
    )))
    .fetch_one(&mut **tx)
    .await?;
    Ok(n as usize)
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
) -> Result<usize, sqlx::Error> {
    if b.events.is_empty() {
        return Ok(0);
    }
    let idx: Vec<i16> = b
        .events
        .iter()
        .map(|e| e.index.map_or(-1, i16::from))
        .collect();
    let ts: Vec<DateTime<Utc>> = b.events.iter().map(|e| e.ts).collect();
    let kind: Vec<String> = b.events.iter().map(|e| e.kind.clone()).collect();
    let code: Vec<i64> = b.events.iter().map(|e| e.code.unwrap_or(0)).collect();
    let msg: Vec<String> = b.events.iter().map(|e| e.message.clone()).collect();
    let count: Vec<i32> = b
        .events
        .iter()
        .map(|e| e.count.unwrap_or(1).min(i32::MAX as u32) as i32)
        .collect();
    // Counted through RETURNING, like the replayed samples (see `count_inserted`).
    let n: i64 = sqlx::query_scalar!(
        r#"WITH i AS (
            INSERT INTO hardware_events (host_id, gpu_index, ts, kind, code, message, count)
            SELECT $1, * FROM UNNEST($2::int2[], $3::timestamptz[], $4::text[], $5::int8[], $6::text[], $7::int4[])
            ON CONFLICT DO NOTHING RETURNING 1)
         SELECT count(*) AS "n!" FROM i"#,
        host_id,
        &idx,
        &ts,
        &kind,
        &code,
        &msg,
        &count,
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(n as usize)
}

/// Identity of a batch's GPU inventory (or of the GPU indexes it samples), so an
/// unchanged inventory is not rewritten on every batch.
fn inventory_hash(b: &Batch) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&b.gpus).unwrap_or_default().hash(&mut h);
    // With the GPUs sampled but not listed (all of them, with no list): a GPU that
    // starts reporting outside the list is a change.
    let mut idx: Vec<u8> = b
        .gpu_samples
        .iter()
        .map(|s| s.index)
        .filter(|i| !b.gpus.iter().any(|g| g.index == *i))
        .collect();
    idx.sort_unstable();
    idx.dedup();
    idx.hash(&mut h);
    h.finish()
}

async fn upsert_gpus(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // GPUs seen only through samples (none listed, or one the list left out) still belong
    // in the inventory: their samples are stored, and their pages must open.
    let listed: std::collections::HashSet<u8> = b.gpus.iter().map(|g| g.index).collect();
    let mut unlisted: Vec<i16> = b
        .gpu_samples
        .iter()
        .filter(|s| !listed.contains(&s.index))
        .map(|s| i16::from(s.index))
        .collect();
    unlisted.sort_unstable();
    unlisted.dedup();
    if !unlisted.is_empty() {
        sqlx::query!(
            "INSERT INTO gpus (host_id, gpu_index, last_seen) SELECT $1, i, $3 FROM UNNEST($2::int2[]) i
             ON CONFLICT (host_id, gpu_index) DO UPDATE SET last_seen = GREATEST(gpus.last_seen, EXCLUDED.last_seen)",
            host_id,
            &unlisted,
            now,
        )
        .execute(&mut **tx)
        .await?;
    }
    if b.gpus.is_empty() {
        return Ok(());
    }
    let idx: Vec<i16> = b.gpus.iter().map(|g| i16::from(g.index)).collect();
    let uuid: Vec<Option<String>> = b.gpus.iter().map(|g| g.uuid.clone()).collect();
    let model: Vec<Option<String>> = b.gpus.iter().map(|g| g.model.clone()).collect();
    let mem: Vec<Option<i64>> = b
        .gpus
        .iter()
        .map(|g| g.memory_total_bytes.map(|v| v as i64))
        .collect();
    let plim: Vec<Option<f64>> = b.gpus.iter().map(|g| g.power_limit_watts).collect();
    let drv: Vec<Option<String>> = b.gpus.iter().map(|g| g.driver_version.clone()).collect();
    sqlx::query!(
        "INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_total_bytes, power_limit_watts, driver_version, last_seen)
         SELECT $1, * , $8 FROM UNNEST($2::int2[], $3::text[], $4::text[], $5::int8[], $6::float8[], $7::text[])
         ON CONFLICT (host_id, gpu_index) DO UPDATE SET
            uuid = COALESCE(EXCLUDED.uuid, gpus.uuid), model = COALESCE(EXCLUDED.model, gpus.model),
            memory_total_bytes = COALESCE(EXCLUDED.memory_total_bytes, gpus.memory_total_bytes),
            power_limit_watts = COALESCE(EXCLUDED.power_limit_watts, gpus.power_limit_watts),
            driver_version = COALESCE(EXCLUDED.driver_version, gpus.driver_version),
            last_seen = GREATEST(gpus.last_seen, EXCLUDED.last_seen)",
        host_id,
        &idx,
        &uuid as _,
        &model as _,
        &mem as _,
        &plim as _,
        &drv as _,
        now,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn mark_late_minutes(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let late = late_minute_marks(b, now - Duration::seconds(ROLLUP_LATE_AFTER));
    if late.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO rollup_dirty (host_id, bucket)
         SELECT DISTINCT $1::int8, date_trunc('minute', t) FROM UNNEST($2::timestamptz[]) t
         ON CONFLICT (host_id, bucket) DO UPDATE SET claimed_at = NULL WHERE rollup_dirty.claimed_at IS NOT NULL",
        host_id,
        &late,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The earliest and latest sample time before `cutoff` in each UTC minute: enough for
/// Postgres to find every rollup minute the late samples fall in (in any session time
/// zone a UTC minute overlaps at most two local minutes), without sending every
/// timestamp of the batch.
fn late_minute_marks(b: &Batch, cutoff: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut minutes: std::collections::BTreeMap<i64, (DateTime<Utc>, DateTime<Utc>)> =
        Default::default();
    let mut last: Option<(i64, DateTime<Utc>, DateTime<Utc>)> = None;
    let times = b
        .host_samples
        .iter()
        .map(|s| s.ts)
        .chain(b.gpu_samples.iter().map(|s| s.ts));
    for t in times.filter(|t| *t < cutoff) {
        let m = t.timestamp().div_euclid(60);
        match &mut last {
            Some((lm, lo, hi)) if *lm == m => {
                *lo = (*lo).min(t);
                *hi = (*hi).max(t);
            }
            _ => {
                if let Some((lm, lo, hi)) = last.take() {
                    let e = minutes.entry(lm).or_insert((lo, hi));
                    *e = (e.0.min(lo), e.1.max(hi));
                }
                last = Some((m, t, t));
            }
        }
    }
    if let Some((lm, lo, hi)) = last {
        let e = minutes.entry(lm).or_insert((lo, hi));
        *e = (e.0.min(lo), e.1.max(hi));
    }
    let mut out = Vec::with_capacity(minutes.len() * 2);
    for (lo, hi) in minutes.into_values() {
        out.push(lo);
        if hi != lo {
            out.push(hi);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// What Postgres stores for a text `COPY` of `x` into a `REAL` column: the shortest
    /// decimal of `x`, rounded to the nearest `f32` (strtof).
    fn via_text(x: f64) -> f32 {
        x.to_string().parse().unwrap()
    }

    #[test]
    fn binary_reals_are_what_text_copy_stored() {
        let tie = 1.0 + f64::from(f32::EPSILON) / 2.0; // halfway between two f32
        for x in [
            0.0,
            -0.0,
            0.1,
            71.3,
            100.0,
            650.5,
            1e6,
            tie,
            -tie,
            1.0 + f64::from(f32::EPSILON) * 1.5,
            f64::from(f32::MIN_POSITIVE),
            1e-40,
            1e-45,
            7e-46,
            1e-300,
            5e-324,
        ] {
            assert_eq!(super::real(x).to_bits(), via_text(x).to_bits(), "{x:e}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..200_000 {
            let x: f64 = match i % 4 {
                0 => rng.gen_range(0.0..100.0),
                1 => rng.gen_range(-40.0..5000.0),
                // Halfway cases: an f32 plus half its last place.
                2 => {
                    let f = rng.gen_range(-1e6f32..1e6);
                    let up = f32::from_bits(f.to_bits() + 1);
                    (f64::from(f) + f64::from(up)) / 2.0
                }
                _ => f64::from_bits(rng.gen::<u64>() & 0x7fff_ffff_ffff_ffff) % 1e7,
            };
            if x.is_finite() {
                assert_eq!(super::real(x).to_bits(), via_text(x).to_bits(), "{x:e}");
            }
        }
    }
    #[test]
    fn late_minutes_keep_each_minutes_first_and_last_sample() {
        use crate::model::{Batch, GpuSample, HostSample};
        let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let b = Batch {
            host_samples: vec![
                HostSample {
                    ts: t("2026-11-23T11:00:50Z"),
                    ..Default::default()
                },
                HostSample {
                    ts: t("2026-11-23T11:01:05Z"),
                    ..Default::default()
                },
            ],
            gpu_samples: [
                "2026-11-23T11:00:10Z",
                "2026-11-23T11:00:55.5Z",
                "2026-11-23T11:01:00Z",
                "2026-11-23T10:59:59Z",
                "2026-11-23T11:00:30Z",
                "2026-11-23T11:58:00Z",
            ]
            .iter()
            .map(|s| GpuSample {
                ts: t(s),
                ..Default::default()
            })
            .collect(),
            ..Default::default()
        };
        let marks = super::late_minute_marks(&b, t("2026-11-23T11:30:00Z"));
        assert_eq!(
            marks,
            [
                "2026-11-23T10:59:59Z",
                "2026-11-23T11:00:10Z",
                "2026-11-23T11:00:55.5Z",
                "2026-11-23T11:01:00Z",
                "2026-11-23T11:01:05Z",
            ]
            .map(t)
        );
        assert!(super::late_minute_marks(&b, t("2026-11-23T10:00:00Z")).is_empty());
    }

    #[test]
    fn copy_timestamps_are_postgres_text() {
        let mut s = String::new();
        super::ts(&mut s, "2026-11-23T07:05:09.123456789Z".parse().unwrap());
        assert_eq!(s, "2026-11-23 07:05:09.123456+00");
        let mut s = String::new();
        super::ts(&mut s, "0999-01-02T00:00:00Z".parse().unwrap());
        assert_eq!(s, "0999-01-02 00:00:00.000000+00");
    }
}
