//! The metric table: every measured value of a host or GPU sample, declared once with its
//! JSON field (= column name), Postgres type, unit, ingest bounds, rollup and whether the
//! "latest" tables keep it.
//!
//! From these two lists come the sample structs themselves ([`HostSample`],
//! [`GpuSample`]), the store's column lists and COPY encoders, ingest validation, the
//! rollup SQL and the threshold-rule fields; tests check the migrations, the OpenAPI
//! document and the chart queries against them.
//!
//! Adding a metric (docs/ARCHITECTURE.md has the whole recipe): add a line to a list
//! below, add its column(s) in a new migration (raw table; `_1m`/`_15m` when it is rolled
//! up, `_max` too for `MeanMax`; `*_latest` when `latest`), collect it in `collect/`, and
//! chart it in `web/`. The `metric_table_*` tests name anything left out.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a metric is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// `REAL` (f32): percentages, temperatures, watts, clocks.
    Real,
    /// `DOUBLE PRECISION`: rates and energies, which need more than 7 digits.
    Double,
    /// `BIGINT`: byte counts and lifetime counters.
    BigInt,
    /// `BIGINT` holding a bit mask (the same 64 bits, read as signed).
    Bits,
    /// `BOOLEAN`: flags.
    Boolean,
}

impl SqlType {
    /// The Postgres type name, as `information_schema.columns.data_type` spells it.
    pub fn pg_name(self) -> &'static str {
        match self {
            SqlType::Real => "real",
            SqlType::Double => "double precision",
            SqlType::BigInt | SqlType::Bits => "bigint",
            SqlType::Boolean => "boolean",
        }
    }
}

/// What ingest accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bounds {
    /// Anything (flags, bit masks).
    Any,
    /// A finite number from `lo` to `hi`.
    Range { lo: f64, hi: f64 },
    /// A count stored as `BIGINT`: at most `i64::MAX` (compared as integers).
    Count,
    /// A byte count or rate from 0 to 2^53 (where f64 stops counting exactly).
    Bytes,
    /// A total of bytes, at least the named used-bytes metric of the same sample.
    TotalOf(&'static str),
}

/// Bytes and rates: 2^53 is where f64 stops counting exactly, far above any real value.
pub const MAX_BYTES: f64 = 9.007_199_254_740_992e15;

/// How the rollup job reduces a metric into 1-minute (from raw samples) and 15-minute (from
/// 1-minute rows) rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Not rolled up: raw samples only (short chart ranges, the samples API).
    No,
    /// The mean, in a column of the metric's name.
    Mean,
    /// The mean, and the maximum in `<name>_max`.
    MeanMax,
    /// The maximum (totals that do not change within a minute).
    Max,
    /// The last value (counters: differences of consecutive rows give the increase).
    Last,
    /// Computed by hand in `store::rollup` (energy, with its counter fallback and sample
    /// counts), in the 1-minute rows only.
    Custom,
}

/// One metric of a sample table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// JSON field and column name; carries the unit (`_pct`, `_bytes`, `_watts`, …).
    pub name: &'static str,
    pub sql: SqlType,
    /// The unit as people read it (`%`, `B`, `B/s`, `W`, `°C`, `MHz`, `J`), empty when none.
    pub unit: &'static str,
    pub bounds: Bounds,
    pub rollup: Rollup,
    /// Kept in `host_latest` / `gpu_latest` (the fleet page's "now").
    pub latest: bool,
    /// One line for people (API docs, rule errors).
    pub doc: &'static str,
}

/// A metric's value in a sample, typed as the struct holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    F64(Option<f64>),
    U64(Option<u64>),
    Bool(Option<bool>),
}

impl Value {
    pub fn is_some(self) -> bool {
        match self {
            Value::F64(v) => v.is_some(),
            Value::U64(v) => v.is_some(),
            Value::Bool(v) => v.is_some(),
        }
    }

    /// The value when it is an integer above `max`, else nothing.
    pub fn filter_above(self, max: u64) -> Value {
        match self {
            Value::U64(Some(v)) if v > max => self,
            _ => Value::U64(None),
        }
    }

    /// As a number (flags as 0/1), for thresholds and charts.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Value::F64(v) => v,
            Value::U64(v) => v.map(|v| v as f64),
            Value::Bool(v) => v.map(|b| f64::from(u8::from(b))),
        }
    }
}

/// What the metric fields of a sample struct can hold.
pub trait FieldValue: Copy {
    fn value(self) -> Value;
    fn set(&mut self, v: Value);
}

impl FieldValue for Option<f64> {
    fn value(self) -> Value {
        Value::F64(self)
    }
    fn set(&mut self, v: Value) {
        *self = v.as_f64();
    }
}

impl FieldValue for Option<u64> {
    fn value(self) -> Value {
        Value::U64(self)
    }
    fn set(&mut self, v: Value) {
        *self = match v {
            Value::U64(v) => v,
            Value::F64(v) => v.map(|x| x as u64),
            Value::Bool(v) => v.map(u64::from),
        };
    }
}

impl FieldValue for Option<bool> {
    fn value(self) -> Value {
        Value::Bool(self)
    }
    fn set(&mut self, v: Value) {
        *self = match v {
            Value::Bool(v) => v,
            other => other.as_f64().map(|x| x != 0.0),
        };
    }
}

/// A sample struct made from a metric table.
pub trait Sample {
    /// Its metric table, in field order.
    const METRICS: &'static [Metric];
    fn ts(&self) -> DateTime<Utc>;
    fn set_ts(&mut self, ts: DateTime<Utc>);
    /// The value of `METRICS[i]`.
    fn value(&self, i: usize) -> Value;
    /// Set `METRICS[i]` (converting between number types where needed).
    fn set(&mut self, i: usize, v: Value);
    /// Every metric with its value, in table order, until `f` fails (the hot path of
    /// validation and encoding: one pass, no lookups).
    fn try_for_each_value<E>(
        &self,
        f: impl FnMut(usize, &'static Metric, Value) -> Result<(), E>,
    ) -> Result<(), E>;
}

/// The index of the metric called `name` in `table`.
pub fn index_of(table: &[Metric], name: &str) -> Option<usize> {
    table.iter().position(|m| m.name == name)
}

/// Declares a sample struct and its metric table from one list: each line is a field of
/// the struct and a [`Metric`] of the table, in the same order.
macro_rules! sample_table {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident / $table:ident {
            $( $(#[$fmeta:meta])* pub $fixed:ident: $fty:ty, )*
        }
        metrics {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $sql:ident, $unit:literal, $bounds:expr, $rollup:ident, $latest:literal;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $fixed: $fty, )*
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        #[doc = concat!("The metric table of [`", stringify!($name), "`], in field order.")]
        pub const $table: &[Metric] = &[
            $(
                Metric {
                    name: stringify!($field),
                    sql: SqlType::$sql,
                    unit: $unit,
                    bounds: $bounds,
                    rollup: Rollup::$rollup,
                    latest: $latest,
                    doc: concat!($($doc),*),
                },
            )*
        ];

        // The schema an agent sends (`POST /api/v1/ingest`), from the table's lines.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                super::schema::sample(
                    concat!($($sdoc),*).trim(),
                    vec![$((
                        stringify!($fixed),
                        <$fty as super::schema::FieldSchema>::field_schema(),
                    )),*],
                    $table,
                    super::schema::SampleUse::Ingest,
                )
            }
        }

        impl utoipa::ToSchema for $name {}

        impl Sample for $name {
            const METRICS: &'static [Metric] = $table;
            fn ts(&self) -> DateTime<Utc> {
                self.ts
            }
            fn set_ts(&mut self, ts: DateTime<Utc>) {
                self.ts = ts;
            }
            #[allow(unused_assignments)]
            fn value(&self, i: usize) -> Value {
                let mut k = 0;
                $(
                    if i == k {
                        return FieldValue::value(self.$field);
                    }
                    k += 1;
                )*
                panic!("{} has {} metrics, not {i}", stringify!($name), k)
            }
            #[allow(unused_assignments)]
            fn set(&mut self, i: usize, v: Value) {
                let mut k = 0;
                $(
                    if i == k {
                        return FieldValue::set(&mut self.$field, v);
                    }
                    k += 1;
                )*
                panic!("{} has {} metrics, not {i}", stringify!($name), k)
            }
            #[allow(unused_assignments)]
            fn try_for_each_value<E>(
                &self,
                mut f: impl FnMut(usize, &'static Metric, Value) -> Result<(), E>,
            ) -> Result<(), E> {
                let mut k = 0;
                $(
                    f(k, &$table[k], FieldValue::value(self.$field))?;
                    k += 1;
                )*
                Ok(())
            }
        }
    };
}

const fn range(lo: f64, hi: f64) -> Bounds {
    Bounds::Range { lo, hi }
}

sample_table! {
    /// One host-level sample.
    pub struct HostSample / HOST_METRICS {
        #[serde(deserialize_with = "super::ts_serde::deserialize")]
        pub ts: DateTime<Utc>,
    }
    metrics {
        /// CPU utilization, all cores.
        cpu_util_pct: f64 = Real, "%", range(0.0, 100.0), MeanMax, true;
        /// One-minute load average.
        load1: f64 = Real, "", range(0.0, 1e6), Mean, true;
        /// Memory in use.
        mem_used_bytes: u64 = BigInt, "B", Bounds::Bytes, Mean, true;
        /// Memory installed.
        mem_total_bytes: u64 = BigInt, "B", Bounds::TotalOf("mem_used_bytes"), Max, true;
        /// Disk reads, all local disks.
        disk_read_bytes_per_s: f64 = Double, "B/s", Bounds::Bytes, Mean, true;
        /// Disk writes, all local disks.
        disk_write_bytes_per_s: f64 = Double, "B/s", Bounds::Bytes, Mean, true;
        /// Network receive, physical interfaces (all but loopback where none is).
        net_rx_bytes_per_s: f64 = Double, "B/s", Bounds::Bytes, Mean, true;
        /// Network transmit, physical interfaces (all but loopback where none is).
        net_tx_bytes_per_s: f64 = Double, "B/s", Bounds::Bytes, Mean, true;
        /// Filesystem space used, summed over local disks (each device once).
        disk_used_bytes: u64 = BigInt, "B", Bounds::Bytes, Mean, false;
        /// Filesystem space, summed over local disks.
        disk_total_bytes: u64 = BigInt, "B", Bounds::TotalOf("disk_used_bytes"), Max, false;
        /// Energy the host measured itself (RAPL: CPU packages and DRAM) since its previous sample, computed by the agent and safe across counter wrap-around. GPUs are counted separately. At most 20 kW for a day (catches µJ sent as J).
        energy_joules: f64 = Double, "J", range(0.0, 1.728e9), Custom, false;
    }
}

sample_table! {
    /// One GPU sample.
    pub struct GpuSample / GPU_METRICS {
        #[serde(deserialize_with = "super::ts_serde::deserialize")]
        pub ts: DateTime<Utc>,
        pub index: u8,
    }
    metrics {
        /// SM utilization (time a kernel ran).
        util_pct: f64 = Real, "%", range(0.0, 100.0), MeanMax, true;
        /// Memory controller utilization.
        mem_util_pct: f64 = Real, "%", range(0.0, 100.0), Mean, true;
        /// Frame buffer memory in use.
        mem_used_bytes: u64 = BigInt, "B", Bounds::Bytes, Mean, true;
        /// Frame buffer memory installed.
        mem_total_bytes: u64 = BigInt, "B", Bounds::TotalOf("mem_used_bytes"), No, false;
        /// Board power draw. The largest accelerator boards draw about 1.2 kW; 5 kW leaves room without letting unit mistakes (mW sent as W) through.
        power_watts: f64 = Real, "W", range(0.0, 5_000.0), MeanMax, true;
        /// NVML total-energy counter since the driver loaded.
        energy_joules_total: f64 = Double, "J", range(0.0, 1e18), Last, true;
        /// GPU core temperature.
        temp_celsius: f64 = Real, "°C", range(-40.0, 150.0), MeanMax, true;
        /// HBM / memory temperature.
        mem_temp_celsius: f64 = Real, "°C", range(-40.0, 150.0), No, false;
        /// SM clock.
        sm_clock_mhz: f64 = Real, "MHz", range(0.0, 10_000.0), Mean, true;
        /// Memory clock.
        mem_clock_mhz: f64 = Real, "MHz", range(0.0, 20_000.0), No, true;
        /// Fan speed, of its maximum.
        fan_pct: f64 = Real, "%", range(0.0, 100.0), No, false;
        /// NVML clocks-event (throttle) reason bit mask.
        throttle_reasons: u64 = Bits, "", Bounds::Any, Custom, false;
        /// Enforced power limit.
        power_limit_watts: f64 = Real, "W", range(0.0, 5_000.0), No, false;
        /// Energy used since this GPU's previous sample, from the total-energy counter (`energy_joules_total`), computed by the agent and safe across counter resets (see `collect::nvml::energy_delta`). The server counts it where the counter gives no plausible difference to the GPU's previous sample (none within 10 minutes, or a jump no GPU could draw), and the counter's difference elsewhere, so a GPU also reported by another sender counts once. At most 5 kW for a day (catches mJ sent as J).
        energy_joules: f64 = Double, "J", range(0.0, 4.32e8), Custom, false;
        /// PCIe receive throughput. PCIe 6.0 x16 moves about 128 GB/s per direction.
        pcie_rx_bytes_per_s: f64 = Double, "B/s", range(0.0, 1e12), No, false;
        /// PCIe transmit throughput.
        pcie_tx_bytes_per_s: f64 = Double, "B/s", range(0.0, 1e12), No, false;
        /// PCIe replay counter (link-level retries), as NVML counts it.
        pcie_replay_total: u64 = BigInt, "", Bounds::Count, No, false;
        /// ECC corrected (single-bit) errors, lifetime (aggregate) count.
        ecc_sbe_total: u64 = BigInt, "", Bounds::Count, No, false;
        /// ECC uncorrected (double-bit) errors, lifetime (aggregate) count.
        ecc_dbe_total: u64 = BigInt, "", Bounds::Count, No, false;
        /// Pages retired for single-bit errors (pre-Ampere GPUs).
        retired_pages_sbe: u64 = BigInt, "", Bounds::Count, No, false;
        /// Pages retired for double-bit errors (pre-Ampere GPUs).
        retired_pages_dbe: u64 = BigInt, "", Bounds::Count, No, false;
        /// A page retirement waits for the next GPU reset.
        retired_pages_pending: bool = Boolean, "", Bounds::Any, No, false;
        /// Rows remapped for correctable errors (Ampere and newer).
        remapped_rows_correctable: u64 = BigInt, "", Bounds::Count, No, false;
        /// Rows remapped for uncorrectable errors (Ampere and newer).
        remapped_rows_uncorrectable: u64 = BigInt, "", Bounds::Count, No, false;
        /// A row remap waits for the next GPU reset.
        remapped_rows_pending: bool = Boolean, "", Bounds::Any, No, false;
        /// A row remap failed: the GPU needs service.
        remapped_rows_failure: bool = Boolean, "", Bounds::Any, No, false;
        /// MIG mode is on (the GPU is partitioned; its samples cover the whole board).
        mig_enabled: bool = Boolean, "", Bounds::Any, No, false;
    }
}

/// How a GPU metric appears among dcgm-exporter's series: its DCGM field name and the
/// factor from the table's unit to DCGM's (bytes → MiB, J → mJ). `/metrics/fleet` names
/// GPU series this way so that NVIDIA's dashboards and existing alert rules work
/// unchanged; remote-write maps these names back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DcgmField {
    pub name: &'static str,
    /// Multiply the table's value by this to get DCGM's.
    pub scale: f64,
    /// A counter in dcgm-exporter's CSV (exposed as a gauge: the `_total` suffix rule
    /// of Prometheus linters would reject its names as counters).
    pub counter: bool,
    /// dcgm-exporter's help text.
    pub help: &'static str,
}

const MIB: f64 = 1.0 / 1_048_576.0;

/// The DCGM field of a GPU metric, for those dcgm-exporter has.
pub fn dcgm_field(metric: &str) -> Option<DcgmField> {
    let f = |name, scale, counter, help| {
        Some(DcgmField {
            name,
            scale,
            counter,
            help,
        })
    };
    match metric {
        "util_pct" => f(
            "DCGM_FI_DEV_GPU_UTIL",
            1.0,
            false,
            "GPU utilization (in %).",
        ),
        "mem_util_pct" => f(
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            1.0,
            false,
            "Memory utilization (in %).",
        ),
        "mem_used_bytes" => f(
            "DCGM_FI_DEV_FB_USED",
            MIB,
            false,
            "Framebuffer memory used (in MiB).",
        ),
        "mem_total_bytes" => f(
            "DCGM_FI_DEV_FB_TOTAL",
            MIB,
            false,
            "Framebuffer memory total (in MiB).",
        ),
        "power_watts" => f("DCGM_FI_DEV_POWER_USAGE", 1.0, false, "Power draw (in W)."),
        "energy_joules_total" => f(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            1000.0,
            true,
            "Total energy consumption since boot (in mJ).",
        ),
        "temp_celsius" => f(
            "DCGM_FI_DEV_GPU_TEMP",
            1.0,
            false,
            "GPU temperature (in C).",
        ),
        "mem_temp_celsius" => f(
            "DCGM_FI_DEV_MEMORY_TEMP",
            1.0,
            false,
            "Memory temperature (in C).",
        ),
        "sm_clock_mhz" => f(
            "DCGM_FI_DEV_SM_CLOCK",
            1.0,
            false,
            "SM clock frequency (in MHz).",
        ),
        "mem_clock_mhz" => f(
            "DCGM_FI_DEV_MEM_CLOCK",
            1.0,
            false,
            "Memory clock frequency (in MHz).",
        ),
        "fan_pct" => f("DCGM_FI_DEV_FAN_SPEED", 1.0, false, "Fan speed (in %)."),
        "throttle_reasons" => f(
            "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
            1.0,
            false,
            "Current clock throttle reasons (bit mask).",
        ),
        "power_limit_watts" => f(
            "DCGM_FI_DEV_POWER_MGMT_LIMIT",
            1.0,
            false,
            "Power management limit (in W).",
        ),
        "pcie_rx_bytes_per_s" => f(
            "DCGM_FI_PROF_PCIE_RX_BYTES",
            1.0,
            false,
            "The rate of data received over the PCIe bus (in B/s).",
        ),
        "pcie_tx_bytes_per_s" => f(
            "DCGM_FI_PROF_PCIE_TX_BYTES",
            1.0,
            false,
            "The rate of data transmitted over the PCIe bus (in B/s).",
        ),
        "pcie_replay_total" => f(
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
            1.0,
            true,
            "Total number of PCIe retries.",
        ),
        "ecc_sbe_total" => f(
            "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
            1.0,
            true,
            "Total number of single-bit persistent ECC errors.",
        ),
        "ecc_dbe_total" => f(
            "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
            1.0,
            true,
            "Total number of double-bit persistent ECC errors.",
        ),
        "retired_pages_sbe" => f(
            "DCGM_FI_DEV_RETIRED_SBE",
            1.0,
            true,
            "Total number of retired pages due to single-bit errors.",
        ),
        "retired_pages_dbe" => f(
            "DCGM_FI_DEV_RETIRED_DBE",
            1.0,
            true,
            "Total number of retired pages due to double-bit errors.",
        ),
        "retired_pages_pending" => f(
            "DCGM_FI_DEV_RETIRED_PENDING",
            1.0,
            false,
            "Number of pages pending retirement.",
        ),
        "remapped_rows_correctable" => f(
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            1.0,
            true,
            "Number of remapped rows for correctable errors.",
        ),
        "remapped_rows_uncorrectable" => f(
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            1.0,
            true,
            "Number of remapped rows for uncorrectable errors.",
        ),
        "remapped_rows_failure" => f(
            "DCGM_FI_DEV_ROW_REMAP_FAILURE",
            1.0,
            false,
            "Whether remapping of rows has failed.",
        ),
        _ => None,
    }
}

/// The Prometheus name of a metric dcgm-exporter lacks (and of every host metric):
/// `rackwatch_{gpu|host}_` and the column name, its unit spelled out (`_pct` →
/// `_percent`, `_per_s` → `_per_second`).
pub fn prometheus_name(prefix: &str, metric: &str) -> String {
    let base = if let Some(b) = metric.strip_suffix("_pct") {
        format!("{b}_percent")
    } else if let Some(b) = metric.strip_suffix("_per_s") {
        format!("{b}_per_second")
    } else {
        metric.to_string()
    };
    format!("rackwatch_{prefix}_{base}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_and_written_by_table_position() {
        let mut s = GpuSample {
            util_pct: Some(97.0),
            ecc_dbe_total: Some(3),
            mig_enabled: Some(true),
            ..Default::default()
        };
        let i = |n| index_of(GPU_METRICS, n).unwrap();
        assert_eq!(s.value(i("util_pct")), Value::F64(Some(97.0)));
        assert_eq!(s.value(i("ecc_dbe_total")), Value::U64(Some(3)));
        assert_eq!(s.value(i("mig_enabled")), Value::Bool(Some(true)));
        assert_eq!(s.value(i("fan_pct")), Value::F64(None));
        s.set(i("fan_pct"), Value::F64(Some(40.0)));
        assert_eq!(s.fan_pct, Some(40.0));
        // Every field is reachable, in order, and nothing past the end.
        for (k, m) in GPU_METRICS.iter().enumerate() {
            let _ = s.value(k);
            assert_eq!(index_of(GPU_METRICS, m.name), Some(k));
        }
        assert!(std::panic::catch_unwind(|| s.value(GPU_METRICS.len())).is_err());
    }

    /// Each column type fits the field's Rust type (the COPY encoders rely on it).
    fn types_fit<S: Sample + Default>() {
        let s = S::default();
        let _ = s.try_for_each_value(|_, m, v| {
            let ok = matches!(
                (m.sql, v),
                (SqlType::Real | SqlType::Double, Value::F64(_))
                    | (SqlType::BigInt | SqlType::Bits, Value::U64(_))
                    | (SqlType::Boolean, Value::Bool(_))
            );
            assert!(ok, "{}: {:?} column for {v:?}", m.name, m.sql);
            Ok::<(), ()>(())
        });
    }

    #[test]
    fn the_tables_are_consistent() {
        types_fit::<HostSample>();
        types_fit::<GpuSample>();
        for table in [HOST_METRICS, GPU_METRICS] {
            for m in table {
                if let Bounds::TotalOf(used) = m.bounds {
                    let u = index_of(table, used).expect("TotalOf names a metric");
                    assert!(
                        u < index_of(table, m.name).unwrap(),
                        "{used} before {}",
                        m.name
                    );
                }
                assert!(!m.doc.is_empty(), "{} has no doc", m.name);
                assert!(
                    m.name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{} is not a column name",
                    m.name
                );
                if m.rollup == Rollup::MeanMax || m.rollup == Rollup::Mean {
                    assert_ne!(m.sql, SqlType::Boolean, "{}", m.name);
                }
            }
        }
    }

    #[test]
    fn dcgm_fields_are_distinct_and_name_table_metrics() {
        let mut seen = std::collections::BTreeSet::new();
        for m in GPU_METRICS {
            if let Some(f) = dcgm_field(m.name) {
                assert!(seen.insert(f.name), "{} mapped twice", f.name);
                assert!(f.name.starts_with("DCGM_FI_"), "{}", f.name);
                assert!(f.scale > 0.0);
            }
        }
        // Every metric the latest table keeps has a DCGM name (what dashboards read).
        for m in GPU_METRICS.iter().filter(|m| m.latest) {
            assert!(dcgm_field(m.name).is_some(), "{} has no DCGM field", m.name);
        }
        assert_eq!(
            prometheus_name("host", "disk_read_bytes_per_s"),
            "rackwatch_host_disk_read_bytes_per_second"
        );
        assert_eq!(
            prometheus_name("host", "cpu_util_pct"),
            "rackwatch_host_cpu_util_percent"
        );
    }
}
