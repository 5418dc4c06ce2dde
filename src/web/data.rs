//! The data behind each page, gathered once and served two ways: rendered by the page
//! handlers and returned as JSON by the API (so the API shows exactly what the page does).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::error::ApiError;
use super::events::title;
use super::range::TimeRange;
use super::AppState;
use crate::analytics::anomaly::{ModelInfo, ScoreFilter, ScorePoint, StoredScore};
use crate::store::queries::{AlertTouching, EventRow, GpuLatest, HostLatest};
use crate::store::series::{FaultCount, GpuPoint, HostPoint, InventoryRow, Source};
use crate::store::Store;

/// Temperature at which a GPU is flagged hot.
pub const HOT_CELSIUS: f32 = 85.0;
/// Window in which a hardware event marks a GPU faulty on the heatmap.
pub const FAULT_WINDOW_HOURS: i64 = 24;

/// What a heatmap cell is colored by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Util,
    Temp,
    Power,
    Mem,
    Health,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Util,
        Metric::Temp,
        Metric::Power,
        Metric::Mem,
        Metric::Health,
    ];
    pub fn key(self) -> &'static str {
        match self {
            Metric::Util => "util",
            Metric::Temp => "temp",
            Metric::Power => "power",
            Metric::Mem => "mem",
            Metric::Health => "health",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Metric::Util => "Utilization",
            Metric::Temp => "Temperature",
            Metric::Power => "Power",
            Metric::Mem => "Memory",
            Metric::Health => "Health",
        }
    }
    pub fn parse(s: Option<&str>) -> Result<Metric, ApiError> {
        match s.unwrap_or("util") {
            "util" => Ok(Metric::Util),
            "temp" => Ok(Metric::Temp),
            "power" => Ok(Metric::Power),
            "mem" => Ok(Metric::Mem),
            "health" => Ok(Metric::Health),
            other => Err(ApiError::BadRequest(format!(
                "unknown metric {other:?}; use util, temp, power, mem or health"
            ))),
        }
    }
    /// Scale ends as shown in the legend.
    pub fn scale(self) -> (&'static str, &'static str) {
        match self {
            Metric::Util => ("0 %", "100 %"),
            Metric::Temp => ("30 °C", "90 °C"),
            Metric::Power => ("0 % of limit", "100 % of limit"),
            Metric::Mem => ("0 % used", "100 % used"),
            Metric::Health => ("", ""),
        }
    }
}

/// A GPU's health as the heatmap shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Hot,
    Fault,
    Stale,
}

/// One GPU on the fleet heatmap.
#[derive(Debug, Clone, Serialize)]
pub struct HeatCell {
    pub host_name: String,
    pub site: String,
    pub rack: String,
    pub index: i16,
    pub model: Option<String>,
    pub ts: Option<DateTime<Utc>>,
    pub util_pct: Option<f32>,
    pub temp_celsius: Option<f32>,
    pub power_watts: Option<f32>,
    pub power_limit_watts: Option<f64>,
    pub mem_used_bytes: Option<i64>,
    pub memory_total_bytes: Option<i64>,
    pub health: Health,
    /// Hardware events of this GPU in the last 24 h.
    pub faults_24h: i64,
    /// Position on the chosen metric's scale, 0–1 (null when unknown).
    pub scale: Option<f64>,
}

/// Fleet page data.
#[derive(Debug, Clone, Serialize)]
pub struct FleetData {
    pub generated_at: DateTime<Utc>,
    pub metric: Metric,
    pub hosts_total: usize,
    pub hosts_up: usize,
    pub gpus_total: usize,
    pub gpus_up: usize,
    pub mean_gpu_util_pct: Option<f64>,
    pub gpu_power_watts: f64,
    /// GPU energy since 00:00 UTC (energy counters, kept by ingest in `gpu_latest`).
    pub gpu_energy_today_kwh: f64,
    pub gpus_faulty: usize,
    /// Alerts firing now (any rule).
    pub alerts_firing: i64,
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<HeatCell>,
}

/// A sample older than this marks a host stale.
pub const STALE_SECS: i64 = 60;

fn scale(metric: Metric, g: &GpuLatest) -> Option<f64> {
    match metric {
        Metric::Util => g.util_pct.map(|u| f64::from(u) / 100.0),
        Metric::Temp => g.temp_celsius.map(|t| (f64::from(t) - 30.0) / 60.0),
        Metric::Power => match (g.power_watts, g.power_limit_watts) {
            (Some(p), Some(l)) if l > 0.0 => Some(f64::from(p) / l),
            // Without a known limit, 700 W (an H100 SXM) is the top of the scale.
            (Some(p), _) => Some(f64::from(p) / 700.0),
            _ => None,
        },
        Metric::Mem => match (g.mem_used_bytes, g.memory_total_bytes) {
            (Some(u), Some(t)) if t > 0 => Some(u as f64 / t as f64),
            _ => None,
        },
        Metric::Health => None,
    }
    .map(|f| f.clamp(0.0, 1.0))
}

/// Heatmap cells for GPUs, with health from recent hardware events (`faults`, counted
/// since `FAULT_WINDOW_HOURS` ago). GPUs come grouped by host, in the hosts' order.
pub fn heat_cells(
    hosts: &[HostLatest],
    gpus: &[GpuLatest],
    faults: &[FaultCount],
    metric: Metric,
) -> Vec<HeatCell> {
    let mut events: HashMap<(&str, i16), i64> = HashMap::new();
    for f in faults {
        *events.entry((f.host_name.as_str(), f.index)).or_default() += f.events;
    }
    let count = |host: &str, index: i16| {
        if events.is_empty() {
            0
        } else {
            events.get(&(host, index)).copied().unwrap_or(0)
        }
    };
    let mut cells = Vec::with_capacity(gpus.len());
    // Hosts and GPUs come in the same order: walk both, searching only out of step.
    let mut hi = 0;
    for g in gpus {
        let name = g.host_name.as_str();
        if hosts.get(hi).is_none_or(|h| h.name != name) {
            if hosts.get(hi + 1).is_some_and(|h| h.name == name) {
                hi += 1;
            } else if let Some(i) = hosts.iter().position(|h| h.name == name) {
                hi = i;
            } else {
                continue;
            }
        }
        let h = &hosts[hi];
        // Host-wide events (index -1) count against every GPU of the host.
        let n = count(name, g.index) + count(name, -1);
        let health = if g.ts.is_none() {
            Health::Stale
        } else if n > 0 {
            Health::Fault
        } else if g.temp_celsius.is_some_and(|t| t >= HOT_CELSIUS) {
            Health::Hot
        } else {
            Health::Ok
        };
        cells.push(HeatCell {
            host_name: g.host_name.clone(),
            site: h.site.clone(),
            rack: h.rack.clone(),
            index: g.index,
            model: g.model.clone(),
            ts: g.ts,
            util_pct: g.util_pct,
            temp_celsius: g.temp_celsius,
            power_watts: g.power_watts,
            power_limit_watts: g.power_limit_watts,
            mem_used_bytes: g.mem_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
            health,
            faults_24h: n,
            scale: scale(metric, g),
        });
    }
    cells
}

/// What the fleet page reads from the database: every query it runs, run concurrently.
pub struct FleetRows {
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub energy_today_j: f64,
    pub faults: Vec<FaultCount>,
    pub alerts_firing: i64,
}

/// The fleet page's queries (the dashboard benchmark times exactly these).
pub async fn fleet_rows(store: &Store, now: DateTime<Utc>) -> Result<FleetRows, sqlx::Error> {
    let (hosts, mut gpus, energy_today_j, faults, alerts_firing) = tokio::try_join!(
        store.hosts_latest(),
        store.gpus_latest(None),
        store.energy_today(now),
        store.fault_counts(now - Duration::hours(FAULT_WINDOW_HOURS), None),
        store.alerts_firing(),
    )?;
    // GPUs in the hosts' order (site, rack, name), then by index.
    let pos: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    gpus.sort_by_cached_key(|g| (pos.get(g.host_name.as_str()).copied(), g.index));
    Ok(FleetRows {
        hosts,
        gpus,
        energy_today_j,
        faults,
        alerts_firing,
    })
}

/// Everything the fleet page shows.
pub async fn fleet(st: &AppState, metric: Metric) -> Result<FleetData, ApiError> {
    let now = Utc::now();
    let FleetRows {
        hosts,
        gpus,
        energy_today_j,
        faults,
        alerts_firing,
    } = fleet_rows(&st.store, now).await?;
    let cells = heat_cells(&hosts, &gpus, &faults, metric);
    let reporting: Vec<&GpuLatest> = gpus.iter().filter(|g| g.ts.is_some()).collect();
    let utils: Vec<f64> = reporting
        .iter()
        .filter_map(|g| g.util_pct.map(f64::from))
        .collect();
    Ok(FleetData {
        generated_at: now,
        metric,
        hosts_total: hosts.len(),
        hosts_up: hosts
            .iter()
            .filter(|h| {
                h.last_seen
                    .is_some_and(|t| (now - t).num_seconds() <= STALE_SECS)
            })
            .count(),
        gpus_total: gpus.len(),
        gpus_up: reporting.len(),
        mean_gpu_util_pct: (!utils.is_empty())
            .then(|| utils.iter().sum::<f64>() / utils.len() as f64),
        gpu_power_watts: reporting
            .iter()
            .filter_map(|g| g.power_watts.map(f64::from))
            .sum(),
        gpu_energy_today_kwh: energy_today_j / 3.6e6,
        gpus_faulty: cells.iter().filter(|c| c.health == Health::Fault).count(),
        alerts_firing,
        hosts,
        gpus: cells,
    })
}

/// A hardware event with what it means and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedEvent {
    pub host_name: String,
    pub index: Option<i16>,
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub code: i64,
    pub count: i32,
    pub message: String,
    pub title: String,
    /// What it means and NVIDIA's recommended action, from the XID table in `model::xid`.
    pub meaning: String,
    pub action: String,
}

fn explained(e: EventRow) -> ExplainedEvent {
    let d = crate::model::xid::describe_event(&e.kind, e.code);
    ExplainedEvent {
        title: title(&e.kind, e.code),
        meaning: d.meaning.to_string(),
        action: d.action.to_string(),
        host_name: e.host_name,
        index: e.index,
        ts: e.ts,
        kind: e.kind,
        code: e.code,
        count: e.count,
        message: e.message,
    }
}

/// Alerts resolved this recently still show on host and rack pages.
pub const RESOLVED_RECENT_HOURS: i64 = 24;

/// Host page data.
#[derive(Debug, Clone, Serialize)]
pub struct HostData {
    pub host: HostLatest,
    pub range: TimeRange,
    pub gpus: Vec<GpuLatest>,
    pub host_series: Vec<HostPoint>,
    pub gpu_series: Vec<GpuPoint>,
    pub events: Vec<ExplainedEvent>,
    /// Firing, pending and recently resolved alerts of the host and its GPUs.
    pub alerts: Vec<AlertTouching>,
    /// Anomalous minutes in the range, newest first (at most [`HOST_PAGE_ANOMALIES`]).
    pub anomalies: Vec<StoredScore>,
    /// The host's anomaly model, or why it has none (empty before the job saw the host).
    pub anomaly_models: Vec<ModelInfo>,
    /// Anomaly score and level over the range, one point per pixel column (at most one
    /// per minute: scores are per minute).
    pub anomaly_series: Vec<ScorePoint>,
}

/// Anomalous minutes listed on a host page; the API has them all.
pub const HOST_PAGE_ANOMALIES: i64 = 30;

/// What the host page reads from the database, queried concurrently.
pub struct HostRows {
    pub host: Option<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub host_series: Vec<HostPoint>,
    pub gpu_series: Vec<GpuPoint>,
    pub events: Vec<EventRow>,
    pub alerts: Vec<AlertTouching>,
    pub anomalies: Vec<StoredScore>,
    pub anomaly_models: Vec<ModelInfo>,
    pub anomaly_series: Vec<ScorePoint>,
}

/// The host page's queries (the dashboard benchmark times exactly these).
pub async fn host_rows(
    store: &Store,
    name: &str,
    range: &TimeRange,
    now: DateTime<Utc>,
) -> Result<HostRows, sqlx::Error> {
    let names = [name.to_string()];
    let filter = ScoreFilter {
        host: Some(name),
        from: range.from,
        to: range.to,
        min_score: None,
        anomalous: Some(true),
        limit: HOST_PAGE_ANOMALIES,
    };
    let (
        host,
        gpus,
        host_series,
        gpu_series,
        events,
        alerts,
        anomalies,
        anomaly_models,
        anomaly_series,
    ) = tokio::try_join!(
        store.host_latest(name),
        store.gpus_latest(Some(name)),
        store.host_series(
            &names,
            range.from,
            range.to,
            range.bucket_secs,
            range.source
        ),
        store.gpu_series(
            name,
            None,
            range.from,
            range.to,
            range.bucket_secs,
            range.source,
        ),
        store.events_between(&names, None, range.from, range.to, 200),
        store.alerts_touching(&names, now - Duration::hours(RESOLVED_RECENT_HOURS)),
        store.anomaly_scores(&filter),
        store.anomaly_models(Some(name)),
        store.anomaly_score_series(name, range.from, range.to, range.bucket_secs),
    )?;
    Ok(HostRows {
        host,
        gpus,
        host_series,
        gpu_series,
        events,
        alerts,
        anomalies,
        anomaly_models,
        anomaly_series,
    })
}

/// Everything the host page shows.
pub async fn host(st: &AppState, name: &str, range: TimeRange) -> Result<HostData, ApiError> {
    let r = host_rows(&st.store, name, &range, Utc::now()).await?;
    let host = r
        .host
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?}")))?;
    Ok(HostData {
        host,
        range,
        gpus: r.gpus,
        host_series: r.host_series,
        gpu_series: r.gpu_series,
        events: r.events.into_iter().map(explained).collect(),
        alerts: r.alerts,
        anomalies: r.anomalies,
        anomaly_models: r.anomaly_models,
        anomaly_series: r.anomaly_series,
    })
}

/// A stretch of time.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Throttle shading reads raw samples; past this range it is left out (raw history of
/// one GPU over days is too many rows for a page).
pub const THROTTLE_MAX_SECS: i64 = 24 * 3600;

/// GPU page data.
#[derive(Debug, Clone, Serialize)]
pub struct GpuData {
    pub host: HostLatest,
    pub gpu: GpuLatest,
    pub range: TimeRange,
    pub series: Vec<GpuPoint>,
    /// Periods in which clocks were throttled (null when the range is too long to tell).
    pub throttled: Option<Vec<Span>>,
    pub events: Vec<ExplainedEvent>,
}

/// Merge bucket start times into spans.
fn spans(buckets: &[DateTime<Utc>], bucket_secs: i64) -> Vec<Span> {
    let step = Duration::seconds(bucket_secs);
    let mut out: Vec<Span> = Vec::new();
    for &b in buckets {
        match out.last_mut() {
            Some(s) if s.to >= b => s.to = b + step,
            _ => out.push(Span {
                from: b,
                to: b + step,
            }),
        }
    }
    out
}

/// What the GPU page reads from the database, queried concurrently.
pub struct GpuRows {
    pub host: Option<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub series: Vec<GpuPoint>,
    /// Throttled buckets from raw samples, for rollup ranges up to `THROTTLE_MAX_SECS`.
    pub throttled: Option<Vec<DateTime<Utc>>>,
    pub events: Vec<EventRow>,
}

/// The GPU page's queries (the dashboard benchmark times exactly these).
pub async fn gpu_rows(
    store: &Store,
    name: &str,
    index: i16,
    range: &TimeRange,
) -> Result<GpuRows, sqlx::Error> {
    let span = (range.to - range.from).num_seconds();
    let throttle = async {
        if range.source != Source::Raw && span <= THROTTLE_MAX_SECS {
            store
                .throttled_buckets(name, index, range.from, range.to, range.bucket_secs)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let names = [name.to_string()];
    let (host, gpus, series, throttled, events) = tokio::try_join!(
        store.host_latest(name),
        store.gpus_latest(Some(name)),
        store.gpu_series(
            name,
            Some(index),
            range.from,
            range.to,
            range.bucket_secs,
            range.source,
        ),
        throttle,
        store.events_between(&names, Some(index), range.from, range.to, 200),
    )?;
    Ok(GpuRows {
        host,
        gpus,
        series,
        throttled,
        events,
    })
}

/// Everything the GPU page shows.
pub async fn gpu(
    st: &AppState,
    name: &str,
    index: i16,
    range: TimeRange,
) -> Result<GpuData, ApiError> {
    let r = gpu_rows(&st.store, name, index, &range).await?;
    let host = r
        .host
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?}")))?;
    let gpu = r
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .ok_or_else(|| ApiError::NotFound(format!("host {name:?} has no GPU {index}")))?;
    let throttled = match (range.source, r.throttled) {
        (Source::Raw, _) => {
            let b: Vec<DateTime<Utc>> = r
                .series
                .iter()
                .filter(|p| p.throttled == Some(true))
                .map(|p| p.ts)
                .collect();
            Some(spans(&b, range.bucket_secs))
        }
        (_, Some(b)) => Some(spans(&b, range.bucket_secs)),
        (_, None) => None,
    };
    Ok(GpuData {
        host,
        gpu,
        range,
        series: r.series,
        throttled,
        events: r.events.into_iter().map(explained).collect(),
    })
}

/// Rack page data.
#[derive(Debug, Clone, Serialize)]
pub struct RackData {
    pub site: String,
    pub rack: String,
    pub range: TimeRange,
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<HeatCell>,
    pub host_series: Vec<HostPoint>,
    pub events: Vec<ExplainedEvent>,
    /// Firing, pending and recently resolved alerts of the rack's hosts and their GPUs.
    pub alerts: Vec<AlertTouching>,
}

/// What the rack page reads from the database: its hosts, then the rest concurrently.
pub struct RackRows {
    pub hosts: Vec<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub faults: Vec<FaultCount>,
    pub host_series: Vec<HostPoint>,
    pub events: Vec<EventRow>,
    pub alerts: Vec<AlertTouching>,
}

/// The rack page's queries.
pub async fn rack_rows(
    store: &Store,
    site: &str,
    rack: &str,
    range: &TimeRange,
    now: DateTime<Utc>,
) -> Result<RackRows, sqlx::Error> {
    let hosts = store.hosts_in_rack(site, rack).await?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    if names.is_empty() {
        return Ok(RackRows {
            hosts,
            gpus: Vec::new(),
            faults: Vec::new(),
            host_series: Vec::new(),
            events: Vec::new(),
            alerts: Vec::new(),
        });
    }
    let (gpus, faults, host_series, events, alerts) = tokio::try_join!(
        store.gpus_latest_of(&names),
        store.fault_counts(now - Duration::hours(FAULT_WINDOW_HOURS), Some(&names)),
        store.host_series(
            &names,
            range.from,
            range.to,
            range.bucket_secs,
            range.source
        ),
        store.events_between(&names, None, range.from, range.to, 200),
        store.alerts_touching(&names, now - Duration::hours(RESOLVED_RECENT_HOURS)),
    )?;
    Ok(RackRows {
        hosts,
        gpus,
        faults,
        host_series,
        events,
        alerts,
    })
}

/// Everything the rack page shows.
pub async fn rack(
    st: &AppState,
    site: &str,
    rack: &str,
    range: TimeRange,
    metric: Metric,
) -> Result<RackData, ApiError> {
    let r = rack_rows(&st.store, site, rack, &range, Utc::now()).await?;
    if r.hosts.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no host in rack {rack:?} of site {site:?}"
        )));
    }
    let cells = heat_cells(&r.hosts, &r.gpus, &r.faults, metric);
    Ok(RackData {
        site: site.to_string(),
        rack: rack.to_string(),
        range,
        hosts: r.hosts,
        gpus: cells,
        host_series: r.host_series,
        events: r.events.into_iter().map(explained).collect(),
        alerts: r.alerts,
    })
}

/// Inventory page data.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryData {
    pub q: String,
    pub rows: Vec<InventoryRow>,
}

/// The inventory, filtered by `q`.
pub async fn inventory(st: &AppState, q: &str) -> Result<InventoryData, ApiError> {
    Ok(InventoryData {
        q: q.to_string(),
        rows: st.store.inventory(q.trim()).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_throttled_buckets_merge_into_one_span() {
        let t0: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let b = |s: i64| t0 + Duration::seconds(s);
        let s = spans(&[b(0), b(7), b(14), b(70)], 7);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].from, s[0].to), (b(0), b(21)));
        assert_eq!((s[1].from, s[1].to), (b(70), b(77)));
    }
}
