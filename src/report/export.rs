//! The report as files: CSV and Parquet (one table, every level, written with polars)
//! and a printable HTML page (askama) with charts and tables.
//!
//! Columns carry their unit in the name (`_kwh`, `_kg`, `_pct`, `_hours`); money is in
//! the `currency` column's currency. docs/energy.md describes every column.

use std::fmt::Write as _;
use std::str::FromStr;

use askama::Template;
use polars::prelude::{Column, DataFrame};
use polars_io::prelude::{CsvWriter, ParquetWriter, SerWriter};

use super::energy::{digits12, EnergyReport, ReportRow};

/// File formats of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
    Html,
}

impl Format {
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Html => "html",
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            "html" => Ok(Format::Html),
            _ => Err(format!("format {s:?}: use csv, parquet or html")),
        }
    }
}

impl Format {
    /// The format to write to `out`: `given` (which must agree with the file's
    /// extension), else the extension's (`.csv`, `.parquet`, `.html`/`.htm`), else HTML
    /// for standard output ("-").
    pub fn for_output(given: Option<&str>, out: &std::path::Path) -> anyhow::Result<Format> {
        let given = given
            .map(str::parse::<Format>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let by_ext = match ext.as_deref() {
            Some("csv") => Some(Format::Csv),
            Some("parquet") => Some(Format::Parquet),
            Some("html" | "htm") => Some(Format::Html),
            _ => None,
        };
        match (given, by_ext) {
            (Some(g), Some(e)) if g != e => anyhow::bail!(
                "--format {} but --out {} ends in .{}: use one format",
                g.name(),
                out.display(),
                ext.unwrap_or_default()
            ),
            (Some(g), _) => Ok(g),
            (None, Some(e)) => Ok(e),
            (None, None) if out.as_os_str() == "-" => Ok(Format::Html),
            (None, None) => anyhow::bail!(
                "cannot tell the format from {}: pass --format csv, parquet or html",
                out.display()
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Html => "html",
        }
    }
}

/// Render the report in `format`.
pub fn render(report: &EnergyReport, format: Format) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        Format::Csv => to_csv(report)?,
        Format::Parquet => to_parquet(report)?,
        Format::Html => to_html(report)?.into_bytes(),
    })
}

/// Suggested file name, e.g. `rackwatch-energy-2026-W47.csv` (or `…-W47-site.csv`).
pub fn file_name(report: &EnergyReport, format: Format) -> String {
    let site: String = report
        .site
        .as_deref()
        .map(|s| {
            let s: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("-{s}")
        })
        .unwrap_or_default();
    // A running week's file is named so: a weekly import does not take it for the week.
    let partial = if report.partial() { "-partial" } else { "" };
    format!(
        "rackwatch-energy-{}{site}{partial}.{}",
        report.week,
        format.extension()
    )
}

/// The report as one table: every line of every level.
pub fn dataframe(report: &EnergyReport) -> anyhow::Result<DataFrame> {
    dataframe_with(report, str::to_string)
}

/// [`dataframe`] with the names (site, rack, pool, host, GPU uuid and model) written by
/// `text`.
fn dataframe_with(report: &EnergyReport, text: fn(&str) -> String) -> anyhow::Result<DataFrame> {
    let rows = &report.rows;
    let n = rows.len();
    let s = |f: fn(&ReportRow) -> &str| rows.iter().map(|r| text(f(r))).collect::<Vec<String>>();
    // Twelve significant digits are past every meter's precision; the arithmetic's last-bit
    // noise (a PUE of 1.3999999999999995) is not written.
    let f = |f: fn(&ReportRow) -> f64| rows.iter().map(|r| digits12(f(r))).collect::<Vec<f64>>();
    let o = |f: fn(&ReportRow) -> Option<f64>| {
        rows.iter()
            .map(|r| f(r).map(digits12))
            .collect::<Vec<Option<f64>>>()
    };
    let week = report.week.to_string();
    let tz = report.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let start = report.start.with_timezone(&tz).to_rfc3339();
    let end = report.end.with_timezone(&tz).to_rfc3339();
    // Hours are accounted up to here: `period_end` for a complete week, earlier for a
    // running one (empty before the energy job's first run).
    let until = report
        .accounted_until
        .map(|t| t.min(report.end).with_timezone(&tz).to_rfc3339());
    let columns = vec![
        Column::new("week".into(), vec![week.as_str(); n]),
        Column::new("period_start".into(), vec![start.as_str(); n]),
        Column::new("period_end".into(), vec![end.as_str(); n]),
        Column::new("accounted_until".into(), vec![until.as_deref(); n]),
        Column::new(
            "level".into(),
            rows.iter().map(|r| r.level).collect::<Vec<_>>(),
        ),
        Column::new("site".into(), s(|r| &r.site)),
        Column::new("rack".into(), s(|r| &r.rack)),
        Column::new("pool".into(), s(|r| &r.pool)),
        Column::new("host".into(), s(|r| &r.host)),
        Column::new(
            "gpu_index".into(),
            rows.iter().map(|r| r.gpu_index).collect::<Vec<_>>(),
        ),
        Column::new("gpu_uuid".into(), s(|r| &r.gpu_uuid)),
        Column::new("gpu_model".into(), s(|r| &r.gpu_model)),
        Column::new(
            "gpus".into(),
            rows.iter().map(|r| r.gpus).collect::<Vec<_>>(),
        ),
        Column::new("it_energy_kwh".into(), f(|r| r.it_energy_kwh)),
        Column::new("gpu_energy_kwh".into(), f(|r| r.gpu_energy_kwh)),
        Column::new("host_energy_kwh".into(), f(|r| r.host_energy_kwh)),
        Column::new("measured_energy_kwh".into(), f(|r| r.measured_energy_kwh)),
        Column::new("estimated_energy_kwh".into(), f(|r| r.estimated_energy_kwh)),
        Column::new("modeled_energy_kwh".into(), f(|r| r.modeled_energy_kwh)),
        Column::new("facility_energy_kwh".into(), f(|r| r.facility_energy_kwh)),
        Column::new("pue".into(), o(|r| r.pue)),
        Column::new(
            "pue_source".into(),
            rows.iter().map(|r| r.pue_source).collect::<Vec<_>>(),
        ),
        Column::new("carbon_kg".into(), f(|r| r.carbon_kg)),
        Column::new("cue_kg_per_kwh".into(), o(|r| r.cue_kg_per_kwh)),
        Column::new("cost".into(), o(|r| r.cost)),
        Column::new("currency".into(), s(|r| &r.currency)),
        Column::new("idle_gpu_energy_kwh".into(), f(|r| r.idle_gpu_energy_kwh)),
        Column::new("idle_gpu_cost".into(), o(|r| r.idle_gpu_cost)),
        Column::new("idle_gpu_carbon_kg".into(), f(|r| r.idle_gpu_carbon_kg)),
        Column::new("idle_gpu_hours".into(), f(|r| r.idle_gpu_hours)),
        Column::new("busy_gpu_hours".into(), f(|r| r.busy_gpu_hours)),
        Column::new(
            "energy_per_busy_gpu_hour_kwh".into(),
            o(|r| r.energy_per_busy_gpu_hour_kwh),
        ),
        Column::new("gpu_util_mean_pct".into(), o(|r| r.gpu_util_mean_pct)),
        Column::new(
            "power_throttled_hours".into(),
            f(|r| r.power_throttled_hours),
        ),
        Column::new(
            "thermal_throttled_hours".into(),
            f(|r| r.thermal_throttled_hours),
        ),
        Column::new("coverage_pct".into(), o(|r| r.coverage_pct)),
        Column::new(
            "counter_resets".into(),
            rows.iter().map(|r| r.counter_resets).collect::<Vec<_>>(),
        ),
        Column::new(
            "prev_week_it_energy_kwh".into(),
            o(|r| r.prev_week_it_energy_kwh),
        ),
        Column::new("wow_change_pct".into(), o(|r| r.wow_change_pct)),
    ];
    Ok(DataFrame::new(n, columns)?)
}

/// The CSV file: its names are written as spreadsheet text
/// ([`crate::model::format::spreadsheet_text`]).
pub fn to_csv(report: &EnergyReport) -> anyhow::Result<Vec<u8>> {
    let mut df = dataframe_with(report, crate::model::format::spreadsheet_text)?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .finish(&mut df)?;
    Ok(buf)
}

pub fn to_parquet(report: &EnergyReport) -> anyhow::Result<Vec<u8>> {
    let mut df = dataframe(report)?;
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf).finish(&mut df)?;
    Ok(buf)
}

/// A table line as display strings.
pub struct LineView {
    pub name: String,
    pub it_kwh: String,
    pub facility_kwh: String,
    pub cost: String,
    pub carbon: String,
    pub idle_kwh: String,
    pub idle_cost: String,
    pub util: String,
    pub per_busy_hour: String,
    pub coverage: String,
    pub wow: String,
}

/// What the report page and the dashboard's energy page show.
pub struct ReportView {
    pub title: String,
    pub period: String,
    pub kpis: Vec<(String, String, String)>,
    pub chart: String,
    pub sites: Vec<LineView>,
    pub top_energy: Vec<LineView>,
    pub top_idle: Vec<LineView>,
    /// Pools by energy, largest first.
    pub pools: Vec<LineView>,
    pub pools_idle: Vec<LineView>,
    pub generated: String,
}

#[derive(Template)]
#[template(path = "report/energy.html")]
pub struct ReportHtml<'a> {
    pub r: &'a EnergyReport,
    pub v: ReportView,
}

/// Energy in kWh everywhere in the report (a bill's unit; one unit to compare lines and
/// tiles by): `85.3 kWh`, from 1,000 on whole and grouped, `10,412 kWh`.
pub fn fmt_kwh(v: f64) -> String {
    if v.abs() < 1000.0 {
        format!("{v:.1} kWh")
    } else {
        format!("{} kWh", grouped(v, 0))
    }
}

/// `v` with `decimals` and its thousands grouped: `1,564.97`.
fn grouped(v: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, v.abs());
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut out = String::with_capacity(text.len() + whole.len() / 3 + 1);
    if v < 0.0 && text.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        out.push('-');
    }
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

fn fmt_money(v: Option<f64>, cur: &str) -> String {
    v.map_or("—".into(), |v| format!("{} {cur}", grouped(v, 2)))
}

fn fmt_opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}{unit}"))
}

fn line(r: &ReportRow) -> LineView {
    let name = match r.level {
        "fleet" => "Fleet".to_string(),
        "site" => {
            if r.site.is_empty() {
                "(no site)".into()
            } else {
                r.site.clone()
            }
        }
        "rack" => format!("{} / {}", r.site, r.rack),
        "pool" => {
            if r.pool.is_empty() {
                "(no pool)".into()
            } else {
                r.pool.clone()
            }
        }
        "host" => r.host.clone(),
        _ => format!("{} GPU {}", r.host, r.gpu_index.unwrap_or(-1)),
    };
    LineView {
        name,
        it_kwh: fmt_kwh(r.it_energy_kwh),
        facility_kwh: fmt_kwh(r.facility_energy_kwh),
        cost: fmt_money(r.cost, &r.currency),
        carbon: format!("{} kg", grouped(r.carbon_kg, 1)),
        idle_kwh: fmt_kwh(r.idle_gpu_energy_kwh),
        idle_cost: fmt_money(r.idle_gpu_cost, &r.currency),
        util: fmt_opt(r.gpu_util_mean_pct, " %", 0),
        per_busy_hour: fmt_opt(r.energy_per_busy_gpu_hour_kwh, " kWh", 3),
        coverage: fmt_opt(r.coverage_pct, " %", 1),
        wow: r
            .wow_change_pct
            .map_or("—".into(), |v| format!("{v:+.1} %")),
    }
}

/// The printable HTML report (also the body of the weekly mail).
pub fn to_html(report: &EnergyReport) -> anyhow::Result<String> {
    Ok(ReportHtml {
        r: report,
        v: view(report),
    }
    .render()?)
}

/// Display strings of the report.
pub fn view(report: &EnergyReport) -> ReportView {
    let t = &report.total();
    let tz: chrono_tz::Tz = report.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let title = match &report.site {
        Some(s) => format!("Energy report {} · site {s}", report.week),
        None => format!("Energy report {}", report.week),
    };
    let period = format!(
        "{} – {} ({})",
        report.start.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"),
        report.end.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"),
        report.time_zone
    );
    let kpis = vec![
        (
            "IT energy".into(),
            fmt_kwh(t.it_energy_kwh),
            format!(
                "GPU {} · hosts {}",
                fmt_kwh(t.gpu_energy_kwh),
                fmt_kwh(t.host_energy_kwh)
            ),
        ),
        (
            "Facility energy".into(),
            fmt_kwh(t.facility_energy_kwh),
            format!("PUE {} ({})", fmt_opt(t.pue, "", 2), t.pue_source),
        ),
        ("Cost".into(), fmt_money(t.cost, &t.currency), String::new()),
        (
            "Carbon".into(),
            format!("{} kg CO2e", grouped(t.carbon_kg, 1)),
            format!("CUE {}", fmt_opt(t.cue_kg_per_kwh, " kg/kWh", 3)),
        ),
        (
            "Idle GPU energy".into(),
            fmt_kwh(t.idle_gpu_energy_kwh),
            format!(
                "{} · {} kg CO2e",
                fmt_money(t.idle_gpu_cost, &t.currency),
                grouped(t.idle_gpu_carbon_kg, 1)
            ),
        ),
        (
            "Energy per busy GPU-hour".into(),
            fmt_opt(t.energy_per_busy_gpu_hour_kwh, " kWh", 3),
            format!(
                "{} busy GPU-hours, mean utilization {}",
                grouped(t.busy_gpu_hours, 0),
                fmt_opt(t.gpu_util_mean_pct, " %", 0)
            ),
        ),
        (
            "GPU-hours clocked down".into(),
            format!("{} by power", grouped(t.power_throttled_hours, 1)),
            format!("{} by heat", grouped(t.thermal_throttled_hours, 1)),
        ),
        (
            "Week over week".into(),
            t.wow_change_pct
                .map_or("—".into(), |v| format!("{v:+.1} %")),
            match t.prev_week_it_energy_kwh {
                None => "no data for last week".into(),
                Some(prev) if report.partial() => {
                    format!("same hours last week {}", fmt_kwh(prev))
                }
                Some(prev) => format!("last week {}", fmt_kwh(prev)),
            },
        ),
        (
            "Coverage".into(),
            fmt_opt(t.coverage_pct, " %", 1),
            format!("{} counter resets", t.counter_resets),
        ),
    ];
    ReportView {
        title,
        period,
        kpis,
        chart: day_chart(report),
        sites: report.level("site").map(line).collect(),
        top_energy: report
            .top("host", 10, |r| r.it_energy_kwh)
            .into_iter()
            .map(line)
            .collect(),
        top_idle: report
            .top("host", 10, |r| r.idle_gpu_energy_kwh)
            .into_iter()
            .map(line)
            .collect(),
        pools: report
            .top("pool", usize::MAX, |r| r.it_energy_kwh)
            .into_iter()
            .map(line)
            .collect(),
        pools_idle: report
            .top("pool", 10, |r| r.idle_gpu_energy_kwh)
            .into_iter()
            .map(line)
            .collect(),
        generated: report
            .generated_at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
    }
}

/// Stacked daily bars: busy GPU, idle GPU, host, facility overhead (Okabe–Ito colors).
/// Round ticks (1, 2 or 5 × 10^k apart) for an energy axis up to `max_kwh`, in kWh, and
/// their labels in kWh, MWh or GWh, whichever keeps them short.
fn energy_axis(max_kwh: f64) -> (Vec<f64>, Vec<String>) {
    let (unit, per_unit) = if max_kwh >= 1e7 {
        ("GWh", 1e6)
    } else if max_kwh >= 1e4 {
        ("MWh", 1e3)
    } else {
        ("kWh", 1.0)
    };
    let (ticks, decimals) = crate::model::format::axis_ticks(max_kwh / per_unit);
    let labels = ticks
        .iter()
        .map(|v| crate::model::format::num(Some(*v), decimals, unit))
        .collect();
    (ticks.iter().map(|v| v * per_unit).collect(), labels)
}

/// The stacked days, drawn twice as the dashboard's charts are: at the desktop width
/// and as the phone twin (`svg.chart.phone`, shown instead below the stylesheets'
/// phone width), each at about one unit a pixel so its labels read at the stylesheet's
/// size.
fn day_chart(r: &EnergyReport) -> String {
    let mut s = day_svg(r, 760.0, "chart");
    s.push_str(&day_svg(r, 360.0, "chart phone"));
    s.push_str("<p class=\"legend\">");
    for (name, color, _) in &DAY_PARTS {
        let _ = write!(
            s,
            r#"<span><i style="background:{color}"></i>{name}</span> "#
        );
    }
    s.push_str("</p>");
    s
}

type DayPart = (
    &'static str,
    &'static str,
    fn(&super::energy::DayTotals) -> f64,
);

/// The stacks of a day's bar, bottom up: name, colour, kWh.
const DAY_PARTS: [DayPart; 4] = [
    ("GPU busy", "#0072B2", |d| d.gpu_busy_kwh),
    ("GPU idle", "#D55E00", |d| d.gpu_idle_kwh),
    ("Hosts", "#009E73", |d| d.host_kwh),
    ("Facility overhead", "#999999", |d| d.overhead_kwh),
];

#[allow(non_snake_case)]
fn day_svg(r: &EnergyReport, W: f64, class: &str) -> String {
    const H: f64 = 220.0;
    // A phone's bar is too narrow for a date on one line: its weekday, and the day of the
    // month under it.
    let phone = W < 500.0;
    #[allow(non_snake_case)]
    let B: f64 = if phone { 44.0 } else { 28.0 };
    let parts = &DAY_PARTS;
    let max = r
        .days
        .iter()
        .map(|d| parts.iter().map(|p| (p.2)(d).max(0.0)).sum::<f64>())
        .fold(0.0f64, f64::max);
    let (ticks, labels) = energy_axis(max);
    let widest = labels
        .iter()
        // Room for the labels at the phone size of the stylesheet (15 units).
        .map(|l| crate::model::format::text_px(l, 15.0))
        .fold(0.0f64, f64::max);
    #[allow(non_snake_case)]
    let L = (widest + 10.0).max(56.0).ceil();
    let max = ticks.last().copied().unwrap_or(1.0).max(1e-9);
    let mut s = format!(
        r#"<svg class="{class}" viewBox="0 0 {W} {H}" role="img" aria-label="Energy per day, stacked: GPU busy, GPU idle, hosts, facility overhead"><title>Energy per day</title>"#
    );
    let plot_h = H - B - 10.0;
    for (v, label) in ticks.iter().zip(&labels) {
        let y = 10.0 + plot_h * (1.0 - v / max);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{L}" x2="{W}" y1="{y:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            L - 4.0,
            y + 4.0
        );
    }
    let n = r.days.len().max(1) as f64;
    let bw = (W - L) / n;
    for (i, d) in r.days.iter().enumerate() {
        let x = L + bw * i as f64 + bw * 0.15;
        let mut y = 10.0 + plot_h;
        for (name, color, get) in parts {
            let v = get(d).max(0.0);
            let h = plot_h * v / max;
            y -= h;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{} {name}: {v:.1} kWh</title></rect>"#,
                bw * 0.7,
                d.date
            );
        }
        let cx = x + bw * 0.35;
        let day = chrono::NaiveDate::parse_from_str(&d.date, "%Y-%m-%d").ok();
        let md = d.date.get(5..).unwrap_or(&d.date);
        let _ = match day {
            Some(day) if phone => write!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}<tspan x="{cx:.1}" dy="16">{}</tspan></text>"#,
                H - 26.0,
                day.format("%a"),
                day.format("%-d")
            ),
            Some(day) => write!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{} {md}</text>"#,
                H - 10.0,
                day.format("%a")
            ),
            None => write!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{md}</text>"#,
                H - 10.0
            ),
        };
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::{digits12, energy_axis, fmt_kwh, grouped};

    #[test]
    fn energy_reads_in_kwh_grouped_from_a_thousand() {
        assert_eq!(fmt_kwh(85.34), "85.3 kWh");
        assert_eq!(fmt_kwh(7396.4), "7,396 kWh");
        assert_eq!(fmt_kwh(10_412.5), "10,412 kWh");
        assert_eq!(fmt_kwh(1_176_000.0), "1,176,000 kWh");
        assert_eq!(fmt_kwh(-2500.0), "-2,500 kWh");
        assert_eq!(grouped(1564.971, 2), "1,564.97");
        assert_eq!(grouped(4173.25, 1), "4,173.2");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(-0.001, 1), "0.0");
    }

    #[test]
    fn report_figures_keep_twelve_digits_without_the_last_bits() {
        assert_eq!(digits12(1.3999999999999995), 1.4);
        assert_eq!(digits12(135.19666666666666), 135.196666667);
        assert_eq!(digits12(0.0), 0.0);
        assert_eq!(digits12(-2.5e-7), -2.5e-7);
        assert_eq!(digits12(1.0000000000004e9), 1.0e9);
    }

    #[test]
    fn energy_axis_labels_stay_short_at_any_fleet_size() {
        let (ticks, labels) = energy_axis(730.0);
        assert_eq!(labels.last().unwrap(), "800 kWh");
        assert_eq!(*ticks.last().unwrap(), 800.0);
        // 10,000 GPUs for a day: about 170 MWh.
        let (ticks, labels) = energy_axis(168_000.0);
        assert_eq!(labels.last().unwrap(), "200 MWh");
        assert_eq!(*ticks.last().unwrap(), 200_000.0);
        let (_, labels) = energy_axis(1.3e8);
        assert_eq!(labels.last().unwrap(), "150 GWh");
        assert!(labels.iter().all(|l| l.len() <= 9), "{labels:?}");
    }
}
