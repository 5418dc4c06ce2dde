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

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

use super::Store;
use crate::model::{Batch, GpuSample, HostSample};

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub host_id: i64,
    /// Samples and events newly stored (the rest of the accepted ones were duplicates).
    pub stored: usize,
}

pub const HOST_COLUMNS: &str =
    "host_id, ts, cpu_util_pct, load1, mem_used_bytes, mem_total_bytes, \
     disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s, \
     disk_used_bytes, disk_total_bytes, energy_joules";
pub const GPU_COLUMNS: &str = "host_id, gpu_index, ts, util_pct, mem_util_pct, mem_used_bytes, mem_total_bytes, \
     power_watts, energy_joules_total, temp_celsius, mem_temp_celsius, sm_clock_mhz, mem_clock_mhz, fan_pct, throttle_reasons, \
     power_limit_watts, energy_joules, pcie_rx_bytes_per_s, pcie_tx_bytes_per_s, pcie_replay_total, \
     ecc_sbe_total, ecc_dbe_total, retired_pages_sbe, retired_pages_dbe, retired_pages_pending, \
     remapped_rows_correctable, remapped_rows_uncorrectable, remapped_rows_pending, remapped_rows_failure, mig_enabled";

/// Samples older than this relative to now were probably replayed from a spool after
/// the rollup job passed their minute: mark those minutes for recomputation.
const ROLLUP_LATE_AFTER: i64 = 240;

impl Store {
    /// Store a validated batch for the host it names.
    pub async fn write_batch(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
    ) -> Result<WriteOutcome, super::StoreError> {
        Ok(self.write_batch_tx(batch, now).await?)
    }

    async fn write_batch_tx(
        &self,
        batch: &Batch,
        now: DateTime<Utc>,
    ) -> Result<WriteOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let host_id = upsert_host(&mut tx, batch, now).await?;
        let copied = copy_samples(&mut tx, host_id, batch).await;
        let (mut tx, stored_samples) = match copied {
            Ok(n) => (tx, n),
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                let mut tx = self.pool.begin().await?;
                upsert_host(&mut tx, batch, now).await?;
                let n = insert_samples_idempotent(&mut tx, host_id, batch).await?;
                (tx, n)
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
            .is_some_and(|(h, at)| *h == inventory && at.elapsed() < super::INVENTORY_TTL);
        if !unchanged {
            upsert_gpus(&mut tx, host_id, batch, now).await?;
        }
        mark_late_minutes(&mut tx, host_id, batch, now).await?;
        tx.commit().await?;
        if !unchanged {
            let mut c = self.cache.inventory.lock().expect("inventory cache");
            c.insert(host_id, (inventory, std::time::Instant::now()));
        }
        Ok(WriteOutcome {
            host_id,
            stored: stored_samples + stored_events,
        })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
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

/// Upsert the host (returning its id) and, in the same statement, move its
/// `host_latest` / `gpu_latest` rows forward to the batch's newest samples: only where
/// the batch's sample is newer, so late or replayed samples never move them back.
async fn upsert_host(
    tx: &mut Transaction<'_, Postgres>,
    b: &Batch,
    now: DateTime<Utc>,
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
    let f32s = |f: fn(&GpuSample) -> Option<f64>| -> Vec<Option<f32>> {
        gpus.iter().map(|g| f(g).map(|v| v as f32)).collect()
    };
    sqlx::query_scalar(
        "WITH h AS (
            INSERT INTO hosts (name, site, rack, pool, labels, agent_version, agent_stats, last_seen)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (name) DO UPDATE SET
               site = EXCLUDED.site, rack = EXCLUDED.rack, pool = EXCLUDED.pool, labels = EXCLUDED.labels,
               agent_version = CASE WHEN EXCLUDED.agent_version = '' THEN hosts.agent_version ELSE EXCLUDED.agent_version END,
               agent_stats = CASE WHEN EXCLUDED.agent_version = '' THEN hosts.agent_stats ELSE EXCLUDED.agent_stats END,
               last_seen = GREATEST(hosts.last_seen, EXCLUDED.last_seen)
            RETURNING id
         ), host_latest_up AS (
            INSERT INTO host_latest (host_id, ts, cpu_util_pct, load1, mem_used_bytes, mem_total_bytes,
                disk_read_bytes_per_s, disk_write_bytes_per_s, net_rx_bytes_per_s, net_tx_bytes_per_s)
            SELECT h.id, $9, $10, $11, $12, $13, $14, $15, $16, $17 FROM h WHERE $9::timestamptz IS NOT NULL
            ON CONFLICT (host_id) DO UPDATE SET ts = EXCLUDED.ts, cpu_util_pct = EXCLUDED.cpu_util_pct,
               load1 = EXCLUDED.load1, mem_used_bytes = EXCLUDED.mem_used_bytes,
               mem_total_bytes = EXCLUDED.mem_total_bytes, disk_read_bytes_per_s = EXCLUDED.disk_read_bytes_per_s,
               disk_write_bytes_per_s = EXCLUDED.disk_write_bytes_per_s,
               net_rx_bytes_per_s = EXCLUDED.net_rx_bytes_per_s, net_tx_bytes_per_s = EXCLUDED.net_tx_bytes_per_s
             WHERE host_latest.ts < EXCLUDED.ts
         ), gpu_latest_up AS (
            INSERT INTO gpu_latest (host_id, gpu_index, ts, util_pct, mem_util_pct, mem_used_bytes, power_watts,
                temp_celsius, sm_clock_mhz, energy_joules_total, energy_day_start)
            SELECT h.id, g.*, g.e FROM h, UNNEST($18::int2[], $19::timestamptz[], $20::float4[], $21::float4[],
                $22::int8[], $23::float4[], $24::float4[], $25::float4[], $26::float8[]) AS g(i, t, u, mu, m, p, tc, c, e)
            ON CONFLICT (host_id, gpu_index) DO UPDATE SET ts = EXCLUDED.ts, util_pct = EXCLUDED.util_pct,
               mem_util_pct = EXCLUDED.mem_util_pct, mem_used_bytes = EXCLUDED.mem_used_bytes,
               power_watts = EXCLUDED.power_watts, temp_celsius = EXCLUDED.temp_celsius,
               sm_clock_mhz = EXCLUDED.sm_clock_mhz,
               -- A new UTC day starts counting at its first sample; within a day a
               -- counter that went backwards (driver reload) keeps what was counted.
               energy_joules_total = CASE WHEN rackwatch_utc_day(gpu_latest.ts) <> rackwatch_utc_day(EXCLUDED.ts)
                  THEN EXCLUDED.energy_joules_total
                  ELSE COALESCE(EXCLUDED.energy_joules_total, gpu_latest.energy_joules_total) END,
               energy_day_start = CASE
                  WHEN rackwatch_utc_day(gpu_latest.ts) <> rackwatch_utc_day(EXCLUDED.ts) THEN EXCLUDED.energy_joules_total
                  WHEN EXCLUDED.energy_joules_total IS NULL THEN gpu_latest.energy_day_start
                  WHEN gpu_latest.energy_day_start IS NULL OR gpu_latest.energy_joules_total IS NULL
                       THEN EXCLUDED.energy_joules_total
                  WHEN EXCLUDED.energy_joules_total < gpu_latest.energy_joules_total
                       THEN EXCLUDED.energy_joules_total - (gpu_latest.energy_joules_total - gpu_latest.energy_day_start)
                  ELSE gpu_latest.energy_day_start END
             WHERE gpu_latest.ts < EXCLUDED.ts
         )
         SELECT id FROM h",
    )
    .bind(&b.host.name)
    .bind(&b.host.site)
    .bind(&b.host.rack)
    .bind(&b.host.pool)
    .bind(labels)
    .bind(version)
    .bind(stats)
    .bind(last_seen)
    .bind(h.map(|s| s.ts))
    .bind(h.and_then(|s| s.cpu_util_pct).map(|v| v as f32))
    .bind(h.and_then(|s| s.load1).map(|v| v as f32))
    .bind(h.and_then(|s| s.mem_used_bytes).map(|v| v as i64))
    .bind(h.and_then(|s| s.mem_total_bytes).map(|v| v as i64))
    .bind(h.and_then(|s| s.disk_read_bytes_per_s))
    .bind(h.and_then(|s| s.disk_write_bytes_per_s))
    .bind(h.and_then(|s| s.net_rx_bytes_per_s))
    .bind(h.and_then(|s| s.net_tx_bytes_per_s))
    .bind(gpus.iter().map(|g| i16::from(g.index)).collect::<Vec<_>>())
    .bind(gpus.iter().map(|g| g.ts).collect::<Vec<_>>())
    .bind(f32s(|g| g.util_pct))
    .bind(f32s(|g| g.mem_util_pct))
    .bind(
        gpus.iter()
            .map(|g| g.mem_used_bytes.map(|v| v as i64))
            .collect::<Vec<_>>(),
    )
    .bind(f32s(|g| g.power_watts))
    .bind(f32s(|g| g.temp_celsius))
    .bind(f32s(|g| g.sm_clock_mhz))
    .bind(
        gpus.iter()
            .map(|g| g.energy_joules_total)
            .collect::<Vec<_>>(),
    )
    .fetch_one(&mut **tx)
    .await
}

/// COPY text-format encoding of the sample rows.
pub fn encode_host_rows(host_id: i64, rows: &[HostSample], out: &mut String) {
    for s in rows {
        let _ = write!(out, "{host_id}\t");
        ts(out, s.ts);
        opt(out, s.cpu_util_pct);
        opt(out, s.load1);
        opt(out, s.mem_used_bytes);
        opt(out, s.mem_total_bytes);
        opt(out, s.disk_read_bytes_per_s);
        opt(out, s.disk_write_bytes_per_s);
        opt(out, s.net_rx_bytes_per_s);
        opt(out, s.net_tx_bytes_per_s);
        opt(out, s.disk_used_bytes);
        opt(out, s.disk_total_bytes);
        opt(out, s.energy_joules);
        out.push('\n');
    }
}

/// COPY text-format encoding of GPU sample rows.
pub fn encode_gpu_rows(host_id: i64, rows: &[GpuSample], out: &mut String) {
    for s in rows {
        let _ = write!(out, "{host_id}\t{}\t", s.index);
        ts(out, s.ts);
        opt(out, s.util_pct);
        opt(out, s.mem_util_pct);
        opt(out, s.mem_used_bytes);
        opt(out, s.mem_total_bytes);
        opt(out, s.power_watts);
        opt(out, s.energy_joules_total);
        opt(out, s.temp_celsius);
        opt(out, s.mem_temp_celsius);
        opt(out, s.sm_clock_mhz);
        opt(out, s.mem_clock_mhz);
        opt(out, s.fan_pct);
        opt(out, s.throttle_reasons.map(|v| v as i64));
        opt(out, s.power_limit_watts);
        opt(out, s.energy_joules);
        opt(out, s.pcie_rx_bytes_per_s);
        opt(out, s.pcie_tx_bytes_per_s);
        opt(out, s.pcie_replay_total);
        opt(out, s.ecc_sbe_total);
        opt(out, s.ecc_dbe_total);
        opt(out, s.retired_pages_sbe);
        opt(out, s.retired_pages_dbe);
        opt(out, s.retired_pages_pending);
        opt(out, s.remapped_rows_correctable);
        opt(out, s.remapped_rows_uncorrectable);
        opt(out, s.remapped_rows_pending);
        opt(out, s.remapped_rows_failure);
        opt(out, s.mig_enabled);
        out.push('\n');
    }
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

fn opt<T: std::fmt::Display>(out: &mut String, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(out, "\t{v}");
        }
        None => out.push_str("\t\\N"),
    }
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

/// Binary `COPY` rows of the optional sample columns that at least one row of the
/// batch has: a column every row leaves out is not sent (it is NULL either way: the
/// sample tables have no column defaults, which a test checks), so Postgres reads
/// fewer fields per row. Writes the rows through `$w` and the column list they fill to
/// `$columns`.
macro_rules! encode_present {
    ($w:ident, $rows:ident, $columns:ident, $fixed:literal, |$s:ident| $prefix:block,
     [$($field:ident: $write:ident),* $(,)?]) => {{
        let has = [$($rows.iter().any(|s| s.$field.is_some())),*];
        $columns.push_str($fixed);
        let mut k = 0;
        $(
            if has[k] {
                $columns.push_str(concat!(", ", stringify!($field)));
            }
            k += 1;
        )*
        let _ = k;
        let fields = $fixed.split(',').count() as i16 + has.iter().filter(|h| **h).count() as i16;
        for $s in $rows {
            $w.row(fields);
            $prefix
            let mut k = 0;
            $(
                if has[k] {
                    $w.$write($s.$field);
                }
                k += 1;
            )*
            let _ = k;
        }
    }};
}

/// Binary `COPY` stream of host sample rows into `out`; returns its column list (those
/// of [`HOST_COLUMNS`] that some row has).
pub fn encode_host_rows_binary(host_id: i64, rows: &[HostSample], out: &mut Vec<u8>) -> String {
    out.reserve(19 + rows.len() * 150 + 2);
    let mut columns = String::with_capacity(HOST_COLUMNS.len());
    let mut w = BinaryRows::start(out);
    encode_present!(w, rows, columns, "host_id, ts", |s| {
        w.int8(host_id);
        w.ts(s.ts);
    }, [
        cpu_util_pct: opt_real,
        load1: opt_real,
        mem_used_bytes: opt_int8,
        mem_total_bytes: opt_int8,
        disk_read_bytes_per_s: opt_double,
        disk_write_bytes_per_s: opt_double,
        net_rx_bytes_per_s: opt_double,
        net_tx_bytes_per_s: opt_double,
        disk_used_bytes: opt_int8,
        disk_total_bytes: opt_int8,
        energy_joules: opt_double,
    ]);
    w.finish();
    columns
}

/// Binary `COPY` stream of GPU sample rows into `out`; returns its column list (those
/// of [`GPU_COLUMNS`] that some row has).
pub fn encode_gpu_rows_binary(host_id: i64, rows: &[GpuSample], out: &mut Vec<u8>) -> String {
    out.reserve(19 + rows.len() * 300 + 2);
    let mut columns = String::with_capacity(GPU_COLUMNS.len());
    let mut w = BinaryRows::start(out);
    encode_present!(w, rows, columns, "host_id, gpu_index, ts", |s| {
        w.int8(host_id);
        w.int2(i16::from(s.index));
        w.ts(s.ts);
    }, [
        util_pct: opt_real,
        mem_util_pct: opt_real,
        mem_used_bytes: opt_int8,
        mem_total_bytes: opt_int8,
        power_watts: opt_real,
        energy_joules_total: opt_double,
        temp_celsius: opt_real,
        mem_temp_celsius: opt_real,
        sm_clock_mhz: opt_real,
        mem_clock_mhz: opt_real,
        fan_pct: opt_real,
        throttle_reasons: opt_bits,
        power_limit_watts: opt_real,
        energy_joules: opt_double,
        pcie_rx_bytes_per_s: opt_double,
        pcie_tx_bytes_per_s: opt_double,
        pcie_replay_total: opt_int8,
        ecc_sbe_total: opt_int8,
        ecc_dbe_total: opt_int8,
        retired_pages_sbe: opt_int8,
        retired_pages_dbe: opt_int8,
        retired_pages_pending: opt_bool,
        remapped_rows_correctable: opt_int8,
        remapped_rows_uncorrectable: opt_int8,
        remapped_rows_pending: opt_bool,
        remapped_rows_failure: opt_bool,
        mig_enabled: opt_bool,
    ]);
    w.finish();
    columns
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
) -> Result<usize, sqlx::Error> {
    let mut n = 0;
    if !b.host_samples.is_empty() {
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS replay_host_samples (LIKE host_samples) ON COMMIT DELETE ROWS")
            .execute(&mut **tx)
            .await?;
        let mut data = Vec::new();
        let columns = encode_host_rows_binary(host_id, &b.host_samples, &mut data);
        copy_into(tx, "replay_host_samples", &columns, data).await?;
        n += sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO host_samples ({HOST_COLUMNS}) SELECT {HOST_COLUMNS} FROM replay_host_samples ON CONFLICT DO NOTHING"
        )))
        .execute(&mut **tx)
        .await?
        .rows_affected() as usize;
    }
    if !b.gpu_samples.is_empty() {
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS replay_gpu_samples (LIKE gpu_samples) ON COMMIT DELETE ROWS")
            .execute(&mut **tx)
            .await?;
        let mut data = Vec::new();
        let columns = encode_gpu_rows_binary(host_id, &b.gpu_samples, &mut data);
        copy_into(tx, "replay_gpu_samples", &columns, data).await?;
        n += sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO gpu_samples ({GPU_COLUMNS}) SELECT {GPU_COLUMNS} FROM replay_gpu_samples ON CONFLICT DO NOTHING"
        )))
        .execute(&mut **tx)
        .await?
        .rows_affected() as usize;
    }
    Ok(n)
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
    let r = sqlx::query(
        "INSERT INTO hardware_events (host_id, gpu_index, ts, kind, code, message, count)
         SELECT $1, * FROM UNNEST($2::int2[], $3::timestamptz[], $4::text[], $5::int8[], $6::text[], $7::int4[])
         ON CONFLICT DO NOTHING",
    )
    .bind(host_id)
    .bind(idx)
    .bind(ts)
    .bind(kind)
    .bind(code)
    .bind(msg)
    .bind(count)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() as usize)
}

/// Identity of a batch's GPU inventory (or of the GPU indexes it samples), so an
/// unchanged inventory is not rewritten on every batch.
fn inventory_hash(b: &Batch) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&b.gpus).unwrap_or_default().hash(&mut h);
    if b.gpus.is_empty() {
        let mut idx: Vec<u8> = b.gpu_samples.iter().map(|s| s.index).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.hash(&mut h);
    }
    h.finish()
}

async fn upsert_gpus(
    tx: &mut Transaction<'_, Postgres>,
    host_id: i64,
    b: &Batch,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if b.gpus.is_empty() {
        if !b.gpu_samples.is_empty() {
            // GPUs seen only through samples still belong in the inventory.
            let mut idx: Vec<i16> = b.gpu_samples.iter().map(|s| i16::from(s.index)).collect();
            idx.sort_unstable();
            idx.dedup();
            sqlx::query(
                "INSERT INTO gpus (host_id, gpu_index, last_seen) SELECT $1, i, $3 FROM UNNEST($2::int2[]) i
                 ON CONFLICT (host_id, gpu_index) DO UPDATE SET last_seen = EXCLUDED.last_seen",
            )
            .bind(host_id)
            .bind(idx)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
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
    sqlx::query(
        "INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_total_bytes, power_limit_watts, driver_version, last_seen)
         SELECT $1, * , $8 FROM UNNEST($2::int2[], $3::text[], $4::text[], $5::int8[], $6::float8[], $7::text[])
         ON CONFLICT (host_id, gpu_index) DO UPDATE SET
            uuid = COALESCE(EXCLUDED.uuid, gpus.uuid), model = COALESCE(EXCLUDED.model, gpus.model),
            memory_total_bytes = COALESCE(EXCLUDED.memory_total_bytes, gpus.memory_total_bytes),
            power_limit_watts = COALESCE(EXCLUDED.power_limit_watts, gpus.power_limit_watts),
            driver_version = COALESCE(EXCLUDED.driver_version, gpus.driver_version),
            last_seen = EXCLUDED.last_seen",
    )
    .bind(host_id)
    .bind(idx)
    .bind(uuid)
    .bind(model)
    .bind(mem)
    .bind(plim)
    .bind(drv)
    .bind(now)
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
    sqlx::query(
        "INSERT INTO rollup_dirty (host_id, bucket)
         SELECT DISTINCT $1::int8, date_trunc('minute', t) FROM UNNEST($2::timestamptz[]) t ON CONFLICT DO NOTHING",
    )
    .bind(host_id)
    .bind(late)
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
