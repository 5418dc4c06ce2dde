//! The GPU heatmap of the fleet and rack pages: each GPU a cell colored by a metric or
//! by health, grouped by site, rack and host, and the hosts' table rows beside it.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::charts::{heat_step_css, sequential_gradient, sequential_step, HEAT_STEP_CLASS};
use super::error::ApiError;
use super::page::{host_row, place_label, rack_path, seg, watts, GpuSummary, HostRow, HOT_CELSIUS};
use crate::model::format::{bytes, push_fixed};
use crate::store::queries::{GpuLatest, HostLatest};
use crate::store::series::FaultCount;

/// Window in which a hardware event marks a GPU faulty on the heatmap.
pub const FAULT_WINDOW_HOURS: i64 = 24;

/// What a heatmap cell is colored by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = HeatmapMetric)]
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

/// A GPU's health as the heatmap shows it, the most urgent first: lost (a hardware event
/// in the last 24 h and no sample now: fallen off the bus), hot now (a thermal event
/// explains it, it does not hide it), a hardware event in the last 24 h, no sample for
/// minutes (stale), or ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Hot,
    Fault,
    Stale,
    Lost,
}

/// One GPU on the fleet heatmap.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Whether the GPU reports now (its newest sample within a minute of its host's;
    /// see the fleet's "GPUs reporting"). A GPU that does not shows no value, only its
    /// faults or "no data".
    pub reporting: bool,
    /// Hardware events of this GPU in the last 24 h.
    pub faults_24h: i64,
    /// Position on the chosen metric's scale, 0–1 (null when unknown).
    pub scale: Option<f64>,
}

pub fn scale(metric: Metric, g: &GpuLatest) -> Option<f64> {
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
    now: DateTime<Utc>,
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
        let reporting = super::page::gpu_reports(g, Some(h), now);
        // A GPU that fell off the bus is lost, not one more fault; one that is merely
        // silent reads "no data", not its last values.
        let health = if !reporting {
            if n > 0 {
                Health::Lost
            } else {
                Health::Stale
            }
        } else if g.temp_celsius.is_some_and(|t| t >= HOT_CELSIUS) {
            Health::Hot
        } else if n > 0 {
            Health::Fault
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
            reporting,
            faults_24h: n,
            scale: if reporting { scale(metric, g) } else { None },
        });
    }
    cells
}

/// About what a page with this many heatmap cells (and per-host GPU summaries) weighs:
/// 242 KiB for 1,000 GPUs on 125 hosts.
pub fn heatmap_page_size(cells: usize) -> usize {
    32 * 1024 + 224 * cells
}

/// Host rows with their GPUs' summaries (heatmap cells, grouped by host once).
pub fn host_table_rows(
    hosts: &[HostLatest],
    cells: &[HeatCell],
    now: DateTime<Utc>,
) -> Vec<HostRow> {
    let mut by_host: HashMap<&str, Vec<&HeatCell>> = HashMap::new();
    for c in cells {
        by_host.entry(c.host_name.as_str()).or_default().push(c);
    }
    hosts
        .iter()
        .map(|h| {
            let gpus = by_host
                .remove(h.name.as_str())
                .map(|g| gpu_summary(&g))
                .unwrap_or_default();
            host_row(h, gpus, now)
        })
        .collect()
}

/// A heatmap cell.
pub struct CellView {
    pub href: String,
    /// Color class: a heatmap step (`q0` … `q32`) or a health color (`h-ok`, …).
    pub tone: &'static str,
    pub class: &'static str,
    pub text: String,
    pub label: String,
}

pub struct HostGroup {
    pub name: String,
    pub link: String,
    /// The host's URL segment, for its cells' links.
    host_seg: String,
    pub cells: Vec<CellView>,
}

pub struct RackGroup {
    pub site: String,
    pub name: String,
    pub link: String,
    pub hosts: Vec<HostGroup>,
}

pub struct SiteGroup {
    pub name: String,
    pub racks: Vec<RackGroup>,
}

/// Legend of the heatmap: a gradient with its ends, or the health swatches.
pub struct HeatLegend {
    pub gradient: String,
    /// CSS of the color steps the cells' classes name (see `heat_step_css`).
    pub step_css: &'static str,
    pub low: &'static str,
    pub high: &'static str,
    pub health: bool,
}

/// Okabe–Ito colors for health, each with a glyph so color is never the only cue.
pub fn health_style(h: Health) -> (&'static str, &'static str, &'static str) {
    // (class with the health colors (see heatmap.html), glyph, word)
    match h {
        Health::Ok => ("h-ok", "", "ok"),
        Health::Hot => ("h-hot", "▲", "hot"),
        Health::Fault => ("h-fault", "✖", "fault"),
        Health::Stale => ("h-stale", "?", "no data"),
        Health::Lost => ("h-lost", "⊘", "lost"),
    }
}

/// One heatmap cell; `host_seg` is the host's URL segment (computed once per host).
pub fn cell_view(c: &HeatCell, metric: Metric, query: &str, host_seg: &str) -> CellView {
    let (health_tone, glyph, word) = health_style(c.health);
    let tone = match (metric, c.scale) {
        (Metric::Health, _) | (_, None) => health_tone,
        (_, Some(f)) => HEAT_STEP_CLASS[sequential_step(f)],
    };
    let class = match c.health {
        Health::Ok => "cell",
        // Hot now and a hardware event in 24 h: both marks (the thermal event explains it).
        Health::Hot if c.faults_24h > 0 => "cell hot fault",
        Health::Hot => "cell hot",
        Health::Fault => "cell fault",
        Health::Stale => "cell stale",
        Health::Lost => "cell fault stale",
    };
    // `gpu-7 GPU 1: 97 % util, 91 °C, 350 W, memory 60.0 GiB; hot`, written in place:
    // the fleet page has a thousand of these.
    let mut label = String::with_capacity(c.host_name.len() + 96);
    let value = |label: &mut String, v: Option<f32>, unit: &str| match v {
        Some(v) => {
            push_fixed(label, f64::from(v), 0);
            label.push_str(unit);
        }
        None => label.push('–'),
    };
    let _ = write!(label, "{} GPU {}: ", c.host_name, c.index);
    value(&mut label, c.util_pct, " % util");
    label.push_str(", ");
    value(&mut label, c.temp_celsius, " °C");
    label.push_str(", ");
    value(&mut label, c.power_watts, " W");
    let _ = write!(
        label,
        ", memory {}; {word}",
        bytes(c.mem_used_bytes.map(|v| v as f64))
    );
    if c.faults_24h > 0 {
        let _ = write!(
            label,
            ", {} in 24 h",
            crate::model::format::count(c.faults_24h, "hardware event")
        );
    }
    if !c.reporting && c.health != Health::Stale {
        label.push_str(", not reporting (last values)");
    }
    CellView {
        href: format!("/hosts/{host_seg}/gpus/{}?{query}", c.index),
        tone,
        class,
        text: if c.health == Health::Hot && c.faults_24h > 0 {
            format!("{}{glyph}✖", c.index)
        } else {
            format!("{}{glyph}", c.index)
        },
        label,
    }
}

/// Group cells by site, rack and host (cells arrive ordered that way). GPU links carry
/// `query`; rack links also carry the metric when it is not the default, so the rack's
/// heatmap keeps the coloring it was reached by.
pub fn heatmap(cells: &[HeatCell], metric: Metric, query: &str) -> Vec<SiteGroup> {
    let rack_query = if metric == Metric::Util {
        query.to_string()
    } else {
        format!("{query}&metric={}", metric.key())
    };
    let mut sites: Vec<SiteGroup> = Vec::new();
    for c in cells {
        let site_name = place_label(&c.site, "no site");
        if sites.last().is_none_or(|s| s.name != site_name) {
            sites.push(SiteGroup {
                name: site_name,
                racks: Vec::new(),
            });
        }
        let site = sites.last_mut().expect("pushed");
        let rack_name = place_label(&c.rack, "no rack");
        if site.racks.last().is_none_or(|r| r.name != rack_name) {
            site.racks.push(RackGroup {
                site: c.site.clone(),
                name: rack_name,
                link: format!("{}?{rack_query}", rack_path(&c.site, &c.rack)),
                hosts: Vec::new(),
            });
        }
        let rack = site.racks.last_mut().expect("pushed");
        if rack.hosts.last().is_none_or(|h| h.name != c.host_name) {
            let host_seg = seg(&c.host_name);
            rack.hosts.push(HostGroup {
                name: c.host_name.clone(),
                link: format!("/hosts/{host_seg}?{query}"),
                host_seg,
                cells: Vec::new(),
            });
        }
        let host = rack.hosts.last_mut().expect("pushed");
        let cell = cell_view(c, metric, query, &host.host_seg);
        host.cells.push(cell);
    }
    sites
}

pub fn legend(metric: Metric) -> HeatLegend {
    let (low, high) = metric.scale();
    HeatLegend {
        gradient: sequential_gradient(),
        step_css: heat_step_css(),
        low,
        high,
        health: metric == Metric::Health,
    }
}

/// A metric tab of the heatmap.
pub struct MetricLink {
    pub key: &'static str,
    pub label: &'static str,
    pub current: bool,
    /// `?metric=temp`, plus the page's range where it has one.
    pub href: String,
}

pub fn metric_links(m: Metric, range_query: Option<&str>) -> Vec<MetricLink> {
    Metric::ALL
        .iter()
        .map(|x| MetricLink {
            key: x.key(),
            label: x.label(),
            current: *x == m,
            href: match range_query {
                Some(q) => format!("?metric={}&{q}", x.key()),
                None => format!("?metric={}", x.key()),
            },
        })
        .collect()
}

/// The fleet host table's summary of one host's GPUs.
pub fn gpu_summary(cells: &[&HeatCell]) -> GpuSummary {
    // A GPU that does not report now (fell off the bus, its host silent) has only its last
    // values: they count in no figure, as in the fleet's totals, and it is named.
    let live = || cells.iter().filter(|c| c.reporting);
    let silent = cells.len() - live().count();
    let utils: Vec<f64> = live().filter_map(|c| c.util_pct.map(f64::from)).collect();
    let max_util = utils.iter().copied().reduce(f64::max);
    let max_temp = live()
        .filter_map(|c| c.temp_celsius.map(f64::from))
        .reduce(f64::max);
    let powers: Vec<f64> = live()
        .filter_map(|c| c.power_watts.map(f64::from))
        .collect();
    let hot = live()
        .filter(|c| c.temp_celsius.is_some_and(|t| t >= HOT_CELSIUS))
        .count();
    let faulty = cells.iter().filter(|c| c.faults_24h > 0).count();
    let mut text = String::with_capacity(64);
    let _ = write!(
        text,
        "{} GPU{}",
        cells.len(),
        if cells.len() == 1 { "" } else { "s" }
    );
    if let Some(max) = max_util {
        text.push_str(" · util ");
        push_fixed(&mut text, utils.iter().sum::<f64>() / utils.len() as f64, 0);
        text.push_str(" % (max ");
        push_fixed(&mut text, max, 0);
        text.push_str(" %)");
    }
    if !powers.is_empty() {
        let _ = write!(text, " · {}", watts(powers.iter().sum()));
    }
    if let Some(t) = max_temp {
        text.push_str(" · max ");
        push_fixed(&mut text, t, 0);
        text.push_str(" °C");
    }
    if hot > 0 {
        let _ = write!(text, " · ▲ {hot} hot");
    }
    if faulty > 0 {
        let _ = write!(text, " · ✖ {faulty} with hardware events");
    }
    if silent > 0 && silent < cells.len() {
        let _ = write!(text, " · {silent} not reporting");
    }
    GpuSummary { text, hot: hot > 0 }
}
