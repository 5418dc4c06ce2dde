//! Line charts rendered on the server as SVG: axes, grid, one polyline per series,
//! down-sampled to the pixel width (mean per pixel column), gaps left open.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::model::format::{axis_ticks, num, push_fixed, text_px};

/// Okabe–Ito palette: distinguishable with the common color-vision deficiencies.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// How values are shown on the y axis. Ticks are round numbers (1, 2 or 5 × 10^k apart)
/// in the unit the labels show.
#[derive(Clone, Copy)]
pub enum Axis {
    /// 0–100 %.
    Percent,
    /// From 0 to the data's maximum, in this unit (`W`, `°C`, `MHz`, `GPUs`, or none).
    Unit(&'static str),
    /// Bytes, in the binary unit of the maximum (`GiB`).
    Bytes,
    /// Bytes per second, in the decimal unit of the maximum (`MB/s`).
    Rate,
}

impl Axis {
    /// The tick values and their labels for data reaching `max`.
    pub fn ticks(self, max: f64) -> Vec<(f64, String)> {
        let scaled = |base: f64, units: &[&str]| {
            let mut i = 0;
            while max >= base.powi(i as i32 + 1) * 0.999 && i + 1 < units.len() {
                i += 1;
            }
            let k = base.powi(i as i32);
            let (t, d) = axis_ticks(max / k);
            t.into_iter()
                .map(|v| (v * k, num(Some(v), d, units[i])))
                .collect()
        };
        match self {
            Axis::Percent => axis_ticks(100.0)
                .0
                .into_iter()
                .map(|v| (v, format!("{v:.0} %")))
                .collect(),
            Axis::Unit(u) => {
                let (t, d) = axis_ticks(max);
                t.into_iter().map(|v| (v, num(Some(v), d, u))).collect()
            }
            Axis::Bytes => scaled(1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"]),
            Axis::Rate => scaled(1000.0, &["B/s", "kB/s", "MB/s", "GB/s", "TB/s"]),
        }
    }
}

const W: f64 = 640.0;
const H: f64 = 180.0;
/// Font size of axis labels, in the chart's units, that margins are measured for: the
/// stylesheet draws them at 11 on wide screens and at 14 on phones (where a chart is
/// scaled down to about 360 px), so room is made for 14.
const FONT: f64 = 14.0;
/// The narrowest left margin (y labels), and the margin when the labels are wider.
const ML_MIN: f64 = 40.0;
const ML: f64 = 64.0;
const MR: f64 = 8.0;
const MT: f64 = 8.0;
const MB: f64 = 22.0; // bottom margin (time labels)
/// Width of the plotting area in pixels: one bucket of a series per column.
pub const PLOT_PX: usize = Size::NORMAL.plot_px();

/// The left margin that holds the widest y label: 64 (most charts, so that charts stacked
/// on a page line up in time), wider in steps of 8 when a label needs it.
fn left_margin(labels: &[String]) -> f64 {
    let widest = labels
        .iter()
        .map(|l| text_px(l, FONT))
        .fold(0.0f64, f64::max);
    let need = widest + 10.0;
    if need <= ML {
        ML.max(ML_MIN)
    } else {
        (need / 8.0).ceil() * 8.0
    }
}

/// A shaded time span behind the lines: its CSS class (`throttle power`) and what it is.
#[derive(Clone)]
pub struct Shade {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub class: &'static str,
    pub label: String,
}

/// Things drawn behind and over the lines of a chart, on the same time axis.
#[derive(Default, Clone)]
pub struct Overlay {
    /// Shaded time spans (throttle periods, one class per reason).
    pub shaded: Vec<Shade>,
    /// Marks on the time axis (hardware events): time and a label.
    pub marks: Vec<(DateTime<Utc>, String)>,
    /// Shaded bands between a low and a high line (forecast intervals), drawn first.
    pub bands: Vec<Band>,
    /// Horizontal reference lines (an alert threshold): value and label.
    pub refs: Vec<(f64, String)>,
    /// Series (by index) drawn by their highest value in each pixel column instead of
    /// the mean: a peak that sizes capacity stays as high on a phone as on a desktop.
    pub peaks: Vec<usize>,
}

/// A band between two lines on the same times, e.g. a forecast's 80 % interval.
#[derive(Clone)]
pub struct Band {
    pub label: String,
    /// (time, low, high), in time order.
    pub points: Vec<(DateTime<Utc>, f64, f64)>,
    /// Fill opacity (the wider interval lighter).
    pub opacity: f64,
}

/// Render a chart. `gap` is the longest time between two points drawn as connected.
pub fn line_chart(
    title: &str,
    series: &[Series],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    axis: Axis,
    gap_secs: i64,
) -> String {
    line_chart_with(title, series, from, to, axis, gap_secs, &Overlay::default())
}

/// Where the time axis is labelled, as (time, fraction of the span, text anchor). Ranges
/// labelled with dates only (four days or more) get ticks at UTC midnights a whole
/// number of days apart (1, 2, 3, 7, 14 or 28: about `steps` + 1 of them), so the dates
/// step evenly; shorter ranges, whose labels show the time of day, get `steps` + 1 evenly
/// spaced ones from edge to edge. `w` and `x0`, `pw` (the plotting area) keep a date's
/// label inside the chart.
fn time_ticks(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    steps: i32,
    (w, x0, pw): (f64, f64, f64),
) -> Vec<(DateTime<Utc>, f64, &'static str)> {
    let span = (to - from).num_milliseconds().max(1) as f64;
    let (_, kind) = time_format(span);
    // A label's half width at the axis font, to keep labels near an edge inside the chart.
    let half = text_px(
        if kind == "time" {
            "00:00 UTC"
        } else {
            "Nov 23 00:00 UTC"
        },
        FONT,
    ) / 2.0;
    let anchor_at = |f: f64| {
        let x = x0 + pw * f;
        // A label centred near the plot's left edge would run under the value axis's
        // bottom label ("0 %"): it starts at its tick instead.
        if x + half > w {
            "end"
        } else if x - half < x0 {
            "start"
        } else {
            "middle"
        }
    };
    if kind != "date" {
        // Round times of day (UTC): every 1, 2, 5, 10, 15 or 30 minutes or 1, 2, 3, 6 or
        // 12 hours, as many as fit, so 15 minutes read 04:50, 04:55, … and a day 06:00,
        // 12:00, … instead of times a range happened to start at.
        let every_ms: i64 = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440]
            .into_iter()
            .map(|m| m * 60_000)
            .find(|e| span / *e as f64 <= f64::from(steps + 1))
            .unwrap_or(86_400_000);
        let t0 = from.timestamp_millis();
        let first =
            t0.div_euclid(every_ms) * every_ms + if t0 % every_ms == 0 { 0 } else { every_ms };
        return std::iter::successors(Some(first), |t| Some(t + every_ms))
            .take_while(|t| *t <= to.timestamp_millis())
            .filter_map(DateTime::<Utc>::from_timestamp_millis)
            .map(|t| {
                let f = (t - from).num_milliseconds() as f64 / span;
                (t, f, anchor_at(f))
            })
            .collect();
    }
    let day = 86_400_000.0;
    let every = [1, 2, 3, 7, 14, 28]
        .into_iter()
        .find(|d| span / (f64::from(*d) * day) <= f64::from(steps + 1))
        .unwrap_or(28);
    let midnight = from
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(from, |m| m.and_utc());
    let first = if midnight < from {
        midnight + chrono::Duration::days(1)
    } else {
        midnight
    };
    // A date label ("Nov 23 UTC") is about 10 characters wide at the axis font.
    let half = text_px("Nov 23 UTC", FONT) / 2.0;
    std::iter::successors(Some(first), |t| {
        Some(*t + chrono::Duration::days(every.into()))
    })
    .take_while(|t| *t <= to)
    .map(|t| {
        let f = (t - from).num_milliseconds() as f64 / span;
        let x = x0 + pw * f;
        let anchor = if x + half > w {
            "end"
        } else if x - half < x0 {
            "start"
        } else {
            "middle"
        };
        (t, f, anchor)
    })
    .collect()
}

/// Time-axis labels: dates over two days or more (with the time of day up to four
/// days), the time of day on shorter ranges.
fn time_format(span_ms: f64) -> (&'static str, &'static str) {
    if span_ms >= 4.0 * 86_400_000.0 {
        ("%b %d", "date")
    } else if span_ms >= 2.0 * 86_400_000.0 {
        ("%b %d %H:%M", "datetime")
    } else {
        ("%H:%M", "time")
    }
}

/// A chart with shaded spans and event marks; charts of a page share their geometry
/// (unless a chart's labels need a wider margin), so charts stacked vertically line up
/// in time.
pub fn line_chart_with(
    title: &str,
    series: &[Series],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    axis: Axis,
    gap_secs: i64,
    overlay: &Overlay,
) -> String {
    line_chart_sized(
        title,
        series,
        from,
        to,
        axis,
        gap_secs,
        overlay,
        Size::NORMAL,
    )
}

/// The drawing size of a line chart, in the SVG's units (it is scaled to its box).
#[derive(Clone, Copy)]
pub struct Size {
    pub w: f64,
    pub h: f64,
    /// The SVG's classes (`chart`; `chart phone` for the phone twin).
    pub class: &'static str,
    /// Units of width per drawn point: 1 (a point per pixel column at the normal size),
    /// 2 on the phone twin, whose 328 units are about 300 CSS pixels.
    pub per_point: f64,
}

impl Size {
    /// The size of every dashboard chart: two side by side on a desktop, one on a phone.
    pub const NORMAL: Size = Size {
        w: W,
        h: H,
        class: "chart",
        per_point: 1.0,
    };
    /// A dashboard chart's twin for phones, drawn next to it and shown instead of it below
    /// 700 px: on a phone the normal chart shrinks to about 0.55 × its units (axis labels
    /// about 7 px), this one to about 0.9 × (about 12 px), and it is taller for its width.
    pub const PHONE: Size = Size {
        w: 400.0,
        h: 240.0,
        class: "chart phone",
        per_point: 2.0,
    };
    /// A chart as wide as a desktop page (drawn next to a normal one for phones).
    pub const WIDE: Size = Size {
        w: 2.0 * W,
        h: 1.4 * H,
        class: "chart",
        per_point: 1.0,
    };

    /// Pixels of the plotting area at the usual left margin: one bucket per column.
    pub const fn plot_px(self) -> usize {
        (self.w - ML - MR) as usize
    }
}

/// [`line_chart_with`] at another size; the time axis gets a label every 160 units.
#[allow(clippy::too_many_arguments)]
pub fn line_chart_sized(
    title: &str,
    series: &[Series],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    axis: Axis,
    gap_secs: i64,
    overlay: &Overlay,
    size: Size,
) -> String {
    let Size {
        w,
        h,
        class,
        per_point,
    } = size;
    let ph = h - MT - MB;
    let span = (to - from).num_milliseconds().max(1) as f64;
    let data_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(
            overlay
                .bands
                .iter()
                .flat_map(|b| b.points.iter().map(|p| p.2)),
        )
        .chain(overlay.refs.iter().map(|r| r.0))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let has_data = series.iter().any(|s| !s.points.is_empty())
        || overlay.bands.iter().any(|b| !b.points.is_empty());
    // All zero (an idle network): one tick at 0 and the line along it, no made-up scale.
    let ticks = if !has_data {
        Vec::new()
    } else if data_max <= 0.0 && !matches!(axis, Axis::Percent) {
        axis.ticks(0.0).into_iter().take(1).collect()
    } else {
        axis.ticks(data_max)
    };
    let ymax = ticks.last().map_or(1.0, |t| t.0).max(1e-12);
    let labels: Vec<String> = ticks.iter().map(|t| t.1.clone()).collect();
    let ml = left_margin(&labels);
    let pw = w - ml - MR;
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg class="{class}" viewBox="0 0 {w} {h}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(title)
    );
    let _ = write!(svg, "<title>{}</title>", escape(title));
    let x_of =
        |t: DateTime<Utc>| ml + ((t - from).num_milliseconds() as f64 / span).clamp(0.0, 1.0) * pw;
    let y_of = |v: f64| MT + ph - (v / ymax).clamp(0.0, 1.0) * ph;
    for b in &overlay.bands {
        // On the lines' columns: each column's lowest low and highest high at its centre,
        // so a line drawn through the same column (its mean or peak) stays inside its band.
        let cols = band_columns(&b.points, from, span, (pw / per_point) as usize);
        if cols.is_empty() {
            continue;
        }
        let x_col = |c: usize| ml + (c as f64 + 0.5) * per_point;
        let mut d = String::new();
        for (i, (c, _, hi)) in cols.iter().enumerate() {
            d.push(if i == 0 { 'M' } else { 'L' });
            let _ = write!(d, "{:.1},{:.1} ", x_col(*c), y_of(*hi));
        }
        for (c, lo, _) in cols.iter().rev() {
            let _ = write!(d, "L{:.1},{:.1} ", x_col(*c), y_of(*lo));
        }
        let _ = write!(
            svg,
            r#"<path class="band" d="{}Z" fill="{}" fill-opacity="{:.2}" stroke="none"><title>{}</title></path>"#,
            d,
            PALETTE[0],
            b.opacity,
            escape(&b.label)
        );
    }
    // Spans of one kind that touch at this drawing size are one rectangle: a week of
    // raw throttle periods would otherwise be hundreds, most narrower than a point.
    let mut merged: Vec<(&Shade, f64, f64)> = Vec::new();
    for s in &overlay.shaded {
        let (x1, x2) = (x_of(s.from), x_of(s.to).max(x_of(s.from) + 1.0));
        match merged.last_mut() {
            Some((m, _, end))
                if m.class == s.class && m.label == s.label && x1 <= *end + per_point =>
            {
                *end = end.max(x2);
            }
            _ => merged.push((s, x1, x2)),
        }
    }
    for (s, x1, x2) in merged {
        let _ = write!(
            svg,
            r#"<rect class="{}" x="{x1:.1}" y="{MT}" width="{:.1}" height="{ph}"><title>{}</title></rect>"#,
            s.class,
            x2 - x1,
            escape(&s.label)
        );
    }
    if ticks.is_empty() {
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{ml}" x2="{}" y1="{:.1}" y2="{:.1}"/><text class="nodata" x="{:.1}" y="{:.1}" text-anchor="middle">no data in this range</text>"#,
            w - MR,
            MT + ph,
            MT + ph,
            ml + pw / 2.0,
            MT + ph / 2.0
        );
    }
    for (v, label) in &ticks {
        let y = y_of(*v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="ylab" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            w - MR,
            ml - 6.0,
            // The top label stays inside the chart at the larger (phone) size too.
            (y + 4.0).max(FONT + 1.0),
            escape(label)
        );
    }
    let (fmt, kind) = time_format(span);
    let steps = ((w / 160.0).floor() as i32).max(2);
    for (t, f, anchor) in time_ticks(from, to, steps, (w, ml, pw)) {
        let x = ml + pw * f;
        let _ = write!(
            svg,
            r#"<text class="xlab" x="{x:.1}" y="{}" text-anchor="{anchor}"><tspan data-utc="{}" data-fmt="{kind}">{} UTC</tspan></text>"#,
            h - 6.0,
            t.to_rfc3339(),
            t.format(fmt)
        );
    }
    // Reference lines under the data; their labels go on top of everything (event marks
    // included), on a halo of the card's colour, so nothing drawn later crosses them.
    let mut ref_labels = String::new();
    for (v, label) in &overlay.refs {
        let y = y_of(*v);
        let _ = write!(
            svg,
            r#"<g class="ref"><line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><title>{}</title></g>"#,
            w - MR,
            escape(label)
        );
        let _ = write!(
            ref_labels,
            r#"<g class="ref"><text x="{}" y="{:.1}" text-anchor="end">{}</text></g>"#,
            w - MR - 2.0,
            (y - 3.0).max(MT + 9.0),
            escape(label)
        );
    }
    for (si, s) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let cols = downsample(
            &s.points,
            from,
            span,
            (pw / per_point) as usize,
            overlay.peaks.contains(&si),
        );
        // Each drawn point is the last time of its column: the points of continuous data
        // in neighbouring columns are up to two columns' time apart, beyond the data's
        // own spacing.
        let gap_ms = gap_secs as f64 * 1000.0 + 2.0 * per_point * span / pw;
        let mut path = String::new();
        // A point joined to neither neighbour would be an invisible "M x,y": draw a dot.
        let mut dots: Vec<(f64, f64)> = Vec::new();
        let mut prev: Option<DateTime<Utc>> = None;
        let mut alone: Option<(f64, f64)> = None;
        for (col, t, v) in cols {
            let x = ml + (col as f64 + 0.5) * per_point;
            let y = y_of(v);
            let connect = prev.is_some_and(|pt| (t - pt).num_milliseconds() as f64 <= gap_ms);
            if connect {
                alone = None;
            } else if let Some(d) = alone.replace((x, y)) {
                dots.push(d);
            }
            path.push(if connect { 'L' } else { 'M' });
            push_fixed(&mut path, x, 1);
            path.push(',');
            push_fixed(&mut path, y, 1);
            path.push(' ');
            prev = Some(t);
        }
        dots.extend(alone);
        if !path.is_empty() {
            let _ = write!(
                svg,
                r#"<path d="{}" fill="none" stroke="{color}" stroke-width="1.5"><title>{}</title></path>"#,
                path.trim_end(),
                escape(&s.label)
            );
        }
        for (x, y) in dots {
            let _ = write!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.6" fill="{color}"/>"#
            );
        }
    }
    // Marks closer than their own width (8 units) at this size are one mark that says how
    // many it stands for: an XID storm would otherwise draw dozens of lines on one spot,
    // each with its meaning.
    let mut marks: Vec<(f64, &str, usize)> = Vec::new();
    let mut sorted: Vec<(f64, &str)> = overlay
        .marks
        .iter()
        .map(|(t, l)| (x_of(*t), l.as_str()))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (x, label) in sorted {
        match marks.last_mut() {
            Some((x0, _, n)) if x - *x0 < 8.0 => *n += 1,
            _ => marks.push((x, label, 1)),
        }
    }
    for (x, label, n) in marks {
        let more = if n > 1 {
            format!(" (and {} more here)", n - 1)
        } else {
            String::new()
        };
        let _ = write!(
            svg,
            r#"<g class="event"><line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{:.1}"/><path d="M{:.1},{:.1} l4,6 h-8 z"/><title>{}{more}</title></g>"#,
            MT + ph,
            x,
            MT + ph,
            escape(label)
        );
    }
    svg.push_str(&ref_labels);
    svg.push_str("</svg>");
    svg
}

/// One row of a strip chart: a label and its points.
pub struct StripRow {
    pub label: String,
    pub href: String,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// Small multiples in one picture: one row per GPU (or host), time across, each column
/// colored on the viridis scale from `lo` to `hi`. Eight GPUs read at a glance where
/// eight lines in one chart tangle.
///
/// Drawn once for every screen: the labels, links and time axis are HTML at the
/// stylesheet's sizes, and each row's colors are a small SVG of `STRIP_COLS` columns that
/// stretches to the row's width. Neighbouring columns of the same color step (of the
/// heatmap's 33) are one rectangle, so a GPU busy all hour is one.
pub fn strip_chart(
    title: &str,
    rows: &[StripRow],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    (lo, hi): (f64, f64),
    unit: &str,
) -> String {
    let span = (to - from).num_milliseconds().max(1) as f64;
    let mut html = String::with_capacity(1024 + rows.len() * 1024);
    let _ = write!(
        html,
        r#"<figure class="strip" role="group" aria-label="{}">"#,
        escape(title)
    );
    for r in rows {
        let cols = downsample(&r.points, from, span, STRIP_COLS, false);
        // Points sparser than the columns (1-minute rollups over an hour) fill the columns
        // up to the next point, unless the next point is more than twice the usual step
        // away (a gap in the data stays empty).
        let mut steps: Vec<i64> = cols
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).num_milliseconds())
            .collect();
        steps.sort_unstable();
        let usual = steps.get(steps.len() / 2).copied().unwrap_or(0);
        let mut cells = String::new();
        // The run being drawn: first column, column after it, color step.
        let mut run: Option<(usize, usize, usize)> = None;
        let flush = |cells: &mut String, (a, b, step): (usize, usize, usize)| {
            let _ = write!(
                cells,
                r#"<rect x="{a}" width="{}" height="1" fill="{}"/>"#,
                b - a,
                step_color(step)
            );
        };
        let (mut sum, mut peak) = (0.0, f64::MIN);
        for (k, &(col, t, v)) in cols.iter().enumerate() {
            let step = sequential_step((v - lo) / (hi - lo).max(1e-9));
            let end = match cols.get(k + 1) {
                Some(&(next, nt, _)) if (nt - t).num_milliseconds() <= 2 * usual => next,
                _ => col + 1,
            };
            run = match run {
                Some((a, b, s)) if s == step && b == col => Some((a, end, s)),
                other => {
                    if let Some(done) = other {
                        flush(&mut cells, done);
                    }
                    Some((col, end, step))
                }
            };
            sum += v;
            peak = peak.max(v);
        }
        if let Some(done) = run {
            flush(&mut cells, done);
        }
        let what = if cols.is_empty() {
            "no data".to_string()
        } else {
            // Kilowatts with a decimal (a 700 W GPU is 0.7 kW); the rest are whole.
            let d = usize::from(unit == "kW");
            format!(
                "mean {}, highest {}",
                num(Some(sum / cols.len() as f64), d, unit),
                num(Some(peak), d, unit)
            )
        };
        let (tag, href) = if r.href.is_empty() {
            ("div", String::new())
        } else {
            ("a", format!(r#" href="{}""#, escape(&r.href)))
        };
        let _ = write!(
            html,
            r#"<{tag} class="srow"{href} title="{}: {}"><span>{}</span><svg viewBox="0 0 {STRIP_COLS} 1" preserveAspectRatio="none" shape-rendering="crispEdges" aria-hidden="true">{cells}</svg></{tag}>"#,
            escape(&r.label),
            escape(&what),
            escape(&r.label)
        );
    }
    // Five labels; phones show every other one. Anchors keep a date inside the row as
    // it is on a phone (about 300 px).
    let (fmt, kind) = time_format(span);
    html.push_str(r#"<div class="saxis">"#);
    for (i, (t, f, anchor)) in time_ticks(from, to, 4, (300.0, 0.0, 300.0))
        .into_iter()
        .enumerate()
    {
        let place = match anchor {
            "end" => format!("right:{:.1}%", (1.0 - f) * 100.0),
            _ => format!("left:{:.1}%", f * 100.0),
        };
        let odd = if i % 2 == 1 { " odd" } else { "" };
        let _ = write!(
            html,
            r#"<span class="{anchor}{odd}" style="{place}" data-utc="{}" data-fmt="{kind}">{} UTC</span>"#,
            t.to_rfc3339(),
            t.format(fmt)
        );
    }
    html.push_str("</div></figure>");
    html
}

/// Columns of a strip chart's row: 10 minutes each over a day, 25 s over an hour.
const STRIP_COLS: usize = 144;

/// The fill of a sequential color step (see `sequential_step`).
fn step_color(step: usize) -> &'static str {
    static COLORS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let colors = COLORS.get_or_init(|| {
        (0..HEAT_STEPS)
            .map(|i| sequential_color(i as f64 / (HEAT_STEPS - 1) as f64).0)
            .collect()
    });
    &colors[step.min(HEAT_STEPS - 1)]
}

/// A small line of one series (GPU table), no axes; values scaled to `ymax`.
pub fn sparkline(
    points: &[(DateTime<Utc>, f64)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    gap_secs: i64,
    ymax: f64,
    label: &str,
) -> String {
    const SW: f64 = 120.0;
    const SH: f64 = 24.0;
    let span = (to - from).num_milliseconds().max(1) as f64;
    let cols = downsample(points, from, span, SW as usize, false);
    // As on the full charts: points further apart than the data's gap (plus two columns)
    // are not joined, so an outage shows as a break.
    let gap_ms = gap_secs as f64 * 1000.0 + 2.0 * span / SW;
    let mut path = String::new();
    let mut prev: Option<DateTime<Utc>> = None;
    // A point joined to neither neighbour would be an invisible "M x,y": a dot instead.
    let mut dots = String::new();
    let mut alone: Option<(f64, f64)> = None;
    let dot = |out: &mut String, (x, y): (f64, f64)| {
        out.push_str(&format!(
            r#"<circle cx="{x:.0}" cy="{y:.1}" r="1.5" fill="{}"/>"#,
            PALETTE[0]
        ));
    };
    for (c, t, v) in &cols {
        let y = SH - 1.0 - (v / ymax.max(1e-9)).clamp(0.0, 1.0) * (SH - 2.0);
        let connect = prev.is_some_and(|pt| (*t - pt).num_milliseconds() as f64 <= gap_ms);
        prev = Some(*t);
        if connect {
            alone = None;
        } else if let Some(d) = alone.replace((*c as f64, y)) {
            dot(&mut dots, d);
        }
        path.push(if connect { 'L' } else { 'M' });
        push_fixed(&mut path, *c as f64, 0);
        path.push(',');
        push_fixed(&mut path, y, 1);
        path.push(' ');
    }
    if let Some(d) = alone {
        dot(&mut dots, d);
    }
    format!(
        r#"<svg class="spark" viewBox="0 0 {SW} {SH}" width="{SW}" height="{SH}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>{dots}</svg>"#,
        escape(label),
        path.trim_end(),
        PALETTE[0]
    )
}

/// Viridis at nine stops: perceptually uniform and readable with the common
/// color-vision deficiencies (and in greyscale).
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// Background and text color for `frac` in [0, 1] on the viridis scale.
pub fn sequential_color(frac: f64) -> (String, &'static str) {
    let f = if frac.is_finite() {
        frac.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = f * (VIRIDIS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
    let k = pos - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * k).round() as u8;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let c = (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2));
    // Dark text on the light (yellow-green) end, light text on the dark end.
    let text = if f > 0.55 { "#000" } else { "#fff" };
    (format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2), text)
}

/// Steps of the heatmap's color scale. Cells carry a class (`q0` … `q32`) with one CSS
/// rule per step instead of an inline color: on a thousand-GPU fleet page that is about
/// 40 KB less to build, send and parse, and 33 steps of viridis read as continuous.
pub const HEAT_STEPS: usize = 33;

/// Class names of the heatmap steps, low to high.
pub const HEAT_STEP_CLASS: [&str; HEAT_STEPS] = [
    "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11", "q12", "q13", "q14",
    "q15", "q16", "q17", "q18", "q19", "q20", "q21", "q22", "q23", "q24", "q25", "q26", "q27",
    "q28", "q29", "q30", "q31", "q32",
];

/// The heatmap step of `frac` in [0, 1] (nearest; non-finite is the low end).
pub fn sequential_step(frac: f64) -> usize {
    let f = if frac.is_finite() {
        frac.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (f * (HEAT_STEPS - 1) as f64).round() as usize
}

/// The CSS rules of the heatmap steps (`.heat .q7{background:…;color:…}`), built once.
pub fn heat_step_css() -> &'static str {
    static CSS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSS.get_or_init(|| {
        let mut css = String::with_capacity(HEAT_STEPS * 48);
        for (i, class) in HEAT_STEP_CLASS.iter().enumerate() {
            let (bg, fg) = sequential_color(i as f64 / (HEAT_STEPS - 1) as f64);
            css.push_str(&format!(".heat .{class}{{background:{bg};color:{fg}}}"));
        }
        css
    })
}

/// CSS gradient of the sequential scale, for legends.
pub fn sequential_gradient() -> String {
    let stops: Vec<String> = VIRIDIS
        .iter()
        .map(|(r, g, b)| format!("#{r:02x}{g:02x}{b:02x}"))
        .collect();
    format!("linear-gradient(to right, {})", stops.join(", "))
}

/// Mean (or with `peak`, the highest) of the points falling in each pixel column:
/// (column, last time, value).
/// The column of `width` that time `t` falls in, on a chart from `from` over `span_ms`;
/// None outside the chart.
fn column(t: DateTime<Utc>, from: DateTime<Utc>, span_ms: f64, width: usize) -> Option<usize> {
    let frac = (t - from).num_milliseconds() as f64 / span_ms;
    (0.0..=1.0)
        .contains(&frac)
        .then(|| ((frac * width as f64) as usize).min(width.saturating_sub(1)))
}

/// A band's points on `width` columns as [`downsample`] puts a line's: per column, the
/// lowest low and the highest high.
fn band_columns(
    points: &[(DateTime<Utc>, f64, f64)],
    from: DateTime<Utc>,
    span_ms: f64,
    width: usize,
) -> Vec<(usize, f64, f64)> {
    let mut out: Vec<(usize, f64, f64)> = Vec::new();
    for &(t, lo, hi) in points {
        if !(lo.is_finite() && hi.is_finite()) {
            continue;
        }
        let Some(col) = column(t, from, span_ms, width) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.0 == col => {
                last.1 = last.1.min(lo);
                last.2 = last.2.max(hi);
            }
            _ => out.push((col, lo, hi)),
        }
    }
    out
}

fn downsample(
    points: &[(DateTime<Utc>, f64)],
    from: DateTime<Utc>,
    span_ms: f64,
    width: usize,
    peak: bool,
) -> Vec<(usize, DateTime<Utc>, f64)> {
    let mut out: Vec<(usize, DateTime<Utc>, f64, u32)> = Vec::new();
    for &(t, v) in points {
        if !v.is_finite() {
            continue;
        }
        let Some(col) = column(t, from, span_ms, width) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.0 == col => {
                last.1 = t;
                if peak {
                    last.2 = last.2.max(v);
                } else {
                    last.2 += v;
                    last.3 += 1;
                }
            }
            _ => out.push((col, t, v, 1)),
        }
    }
    out.into_iter()
        .map(|(c, t, s, n)| (c, t, s / f64::from(n)))
        .collect()
}

/// 1, 2, 2.5 or 5 × 10^k at or above `v` (and at least 1).
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_sparkline_breaks_at_an_outage() {
        let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        let to = from + Duration::hours(1);
        // Every 5 s, except for 40 minutes in the middle.
        let pts: Vec<(DateTime<Utc>, f64)> = (0..720)
            .map(|i| (from + Duration::seconds(5 * i), 50.0))
            .filter(|(t, _)| {
                *t < from + Duration::minutes(10) || *t >= from + Duration::minutes(50)
            })
            .collect();
        let svg = sparkline(&pts, from, to, 15, 100.0, "GPU 0");
        let d = &svg[svg.find(" d=\"").unwrap()..];
        assert_eq!(d.matches('M').count(), 2, "{svg}");
        // Without the outage: one line.
        let all: Vec<_> = (0..720)
            .map(|i| (from + Duration::seconds(5 * i), 50.0))
            .collect();
        let svg = sparkline(&all, from, to, 15, 100.0, "GPU 0");
        let d = &svg[svg.find(" d=\"").unwrap()..];
        assert_eq!(d.matches('M').count(), 1, "{svg}");
        assert!(!svg.contains("<circle"), "{svg}");
        // One sample between outages is a dot, not an invisible move.
        let one = [(from + Duration::minutes(30), 40.0)];
        let svg = sparkline(&one, from, to, 15, 100.0, "GPU 0");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
    }

    #[test]
    fn strip_rows_merge_equal_colors_keep_gaps_and_link() {
        let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::hours(1);
        let at = |s: i64| from + chrono::Duration::seconds(s);
        // Busy all hour, one sample every 10 s: one rectangle across the row.
        let busy: Vec<_> = (0..360).map(|i| (at(i * 10), 100.0)).collect();
        // Idle for the first half, nothing for 20 minutes, then half busy.
        let mut gappy: Vec<_> = (0..180).map(|i| (at(i * 10), 0.0)).collect();
        gappy.extend((300..360).map(|i| (at(i * 10), 50.0)));
        let rows = [
            StripRow {
                label: "GPU 0".into(),
                href: "/hosts/a/gpus/0".into(),
                points: busy,
            },
            StripRow {
                label: "GPU 1".into(),
                href: String::new(),
                points: gappy,
            },
            StripRow {
                label: "GPU <2>".into(),
                href: String::new(),
                points: Vec::new(),
            },
        ];
        let html = strip_chart("GPU utilization", &rows, from, to, (0.0, 100.0), "%");
        let row = |i: usize| html.split("class=\"srow\"").nth(i + 1).unwrap();
        assert!(
            row(0)
                .starts_with(r#" href="/hosts/a/gpus/0" title="GPU 0: mean 100 %, highest 100 %""#),
            "{}",
            row(0)
        );
        assert_eq!(row(0).matches("<rect").count(), 1);
        assert!(row(0).contains(&format!(
            r#"<rect x="0" width="{STRIP_COLS}" height="1" fill="{}"/>"#,
            step_color(HEAT_STEPS - 1)
        )));
        // Two runs, the idle half and the last 10 minutes, with the gap between them empty.
        assert_eq!(row(1).matches("<rect").count(), 2, "{}", row(1));
        assert!(row(1).contains(&format!(
            r#"<rect x="0" width="72" height="1" fill="{}"/>"#,
            step_color(0)
        )));
        assert!(row(1).contains(r#"<rect x="120" width="24""#), "{}", row(1));
        assert!(html.contains(
            r#"<div class="srow" title="GPU &lt;2&gt;: no data"><span>GPU &lt;2&gt;</span>"#
        ));
        // Five time labels from edge to edge, every other one marked for phones to drop.
        assert_eq!(html.matches("data-fmt=\"time\"").count(), 5);
        assert_eq!(html.matches(" odd\"").count(), 2);
        assert!(html.contains(r#"<span class="start" style="left:0.0%" data-utc="2026-11-23T00:00:00+00:00" data-fmt="time">00:00 UTC</span>"#));
        assert!(html.contains(r#"<span class="end" style="right:0.0%""#));
    }

    #[test]
    fn throttle_spans_that_touch_at_the_drawn_size_are_one_rectangle() {
        let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::days(7);
        let span = |m: i64, class| Shade {
            from: from + chrono::Duration::minutes(m),
            to: from + chrono::Duration::minutes(m + 1),
            class,
            label: format!("throttled: {class}"),
        };
        // 300 one-minute thermal periods a minute apart (5 units of 568 for 10 hours), then
        // one power-cap period a day later.
        let mut shaded: Vec<Shade> = (0..300).map(|i| span(2 * i, "throttle thermal")).collect();
        shaded.push(span(2 * 1440, "throttle power"));
        let ov = Overlay {
            shaded,
            ..Overlay::default()
        };
        let pts = vec![(from, 1.0), (to, 2.0)];
        let s = [Series {
            label: "x".into(),
            points: pts,
        }];
        // Continuous quarter-hour data over the week is one line at both sizes (the phone
        // twin's columns hold 2 units' worth of time each), with no lone dots.
        let quarters = Series {
            label: "q".into(),
            points: (0..7 * 96)
                .map(|i| (from + chrono::Duration::minutes(15 * i), 50.0))
                .collect(),
        };
        for size in [Size::NORMAL, Size::PHONE] {
            let svg = line_chart_sized(
                "t",
                std::slice::from_ref(&quarters),
                from,
                to,
                Axis::Percent,
                900,
                &Overlay::default(),
                size,
            );
            assert!(
                !svg.contains("<circle")
                    && svg.matches(" M").count() + svg.matches("\"M").count() == 1,
                "{svg}"
            );
        }
        for size in [Size::NORMAL, Size::PHONE] {
            let svg = line_chart_sized("t", &s, from, to, Axis::Percent, 86_400, &ov, size);
            assert_eq!(
                svg.matches(r#"<rect class="throttle thermal""#).count(),
                1,
                "{svg}"
            );
            assert_eq!(svg.matches(r#"<rect class="throttle power""#).count(), 1);
        }
        // Marks: three events within minutes of each other on a week are one mark that
        // says so; a day later, another.
        let ov = Overlay {
            marks: vec![
                (from + chrono::Duration::minutes(600), "XID 79".into()),
                (from + chrono::Duration::minutes(602), "XID 13".into()),
                (from + chrono::Duration::minutes(605), "XID 13".into()),
                (from + chrono::Duration::minutes(2040), "XID 48".into()),
            ],
            ..ov
        };
        let svg = line_chart_sized("t", &s, from, to, Axis::Percent, 86_400, &ov, Size::NORMAL);
        assert_eq!(svg.matches(r#"<g class="event">"#).count(), 2, "{svg}");
        assert!(
            svg.contains("<title>XID 79 (and 2 more here)</title>"),
            "{svg}"
        );
        assert!(svg.contains("<title>XID 48</title>"), "{svg}");
        // A range of 59 minutes draws each of its 30 periods apart.
        let hour = line_chart_sized(
            "t",
            &s,
            from,
            from + chrono::Duration::minutes(59),
            Axis::Percent,
            60,
            &ov,
            Size::NORMAL,
        );
        assert_eq!(
            hour.matches(r#"<rect class="throttle thermal""#).count(),
            30
        );
    }

    #[test]
    fn date_labels_step_through_whole_days() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let geometry = (W, ML, W - ML - MR);
        // Seven days from 06:00: every other UTC midnight, evenly spaced, inside the chart.
        let ticks = time_ticks(
            t("2026-11-23T06:00:00Z"),
            t("2026-11-30T06:00:00Z"),
            4,
            geometry,
        );
        let days: Vec<String> = ticks
            .iter()
            .map(|x| x.0.format("%m-%d %H:%M").to_string())
            .collect();
        assert_eq!(
            days,
            ["11-24 00:00", "11-26 00:00", "11-28 00:00", "11-30 00:00"]
        );
        let gaps: Vec<f64> = ticks.windows(2).map(|p| p[1].1 - p[0].1).collect();
        assert!(gaps.iter().all(|g| (g - gaps[0]).abs() < 1e-9), "{gaps:?}");
        assert!(ticks.iter().all(|x| (0.0..=1.0).contains(&x.1)));
        // The last one sits near the right edge: its label ends there instead of past it.
        assert_eq!(ticks.last().unwrap().2, "end");
        // Four weeks on a wide chart: weekly.
        let wide = time_ticks(
            t("2026-11-01T00:00:00Z"),
            t("2026-11-29T00:00:00Z"),
            8,
            (2.0 * W, ML, 2.0 * W - ML - MR),
        );
        let days: Vec<u32> = wide.iter().map(|x| chrono::Datelike::day(&x.0)).collect();
        assert_eq!(days, [1, 8, 15, 22, 29]);
        // The first sits at the plot's left edge: it starts there, clear of the value
        // axis's labels; the others are centred on their ticks.
        assert_eq!(wide[0].2, "start");
        assert_eq!(wide[1].2, "middle");
        // A week on a phone's chart (2 steps): every third day, not one lone label.
        let phone = time_ticks(
            t("2026-11-29T03:00:00Z"),
            t("2026-12-06T03:00:00Z"),
            2,
            geometry,
        );
        let days: Vec<u32> = phone.iter().map(|x| chrono::Datelike::day(&x.0)).collect();
        assert_eq!(days, [30, 3, 6]);
        // Six hours: every two hours on the hour, edge to edge.
        let short = time_ticks(
            t("2026-11-23T00:00:00Z"),
            t("2026-11-23T06:00:00Z"),
            4,
            geometry,
        );
        let hours: Vec<String> = short
            .iter()
            .map(|x| x.0.format("%H:%M").to_string())
            .collect();
        assert_eq!(hours, ["00:00", "02:00", "04:00", "06:00"]);
        assert_eq!(
            (short[0].2, short[3].2, short[1].2),
            ("start", "end", "middle")
        );
        // A day from 04:15: every six hours on round hours, no time twice.
        let day = time_ticks(
            t("2026-11-23T04:15:00Z"),
            t("2026-11-24T04:15:00Z"),
            4,
            geometry,
        );
        let hours: Vec<String> = day
            .iter()
            .map(|x| x.0.format("%H:%M").to_string())
            .collect();
        assert_eq!(hours, ["06:00", "12:00", "18:00", "00:00"]);
        // Fifteen minutes from 04:49:22: every five minutes on the minute.
        let quarter = time_ticks(
            t("2026-11-23T04:49:22Z"),
            t("2026-11-23T05:04:22Z"),
            4,
            geometry,
        );
        let minutes: Vec<String> = quarter
            .iter()
            .map(|x| x.0.format("%H:%M:%S").to_string())
            .collect();
        assert_eq!(minutes, ["04:50:00", "04:55:00", "05:00:00"]);
    }

    #[test]
    fn downsampling_averages_per_column_and_titles_are_escaped() {
        let from: DateTime<Utc> = "2026-11-23T11:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::hours(1);
        let pts: Vec<_> = (0..720)
            .map(|i| {
                (
                    from + chrono::Duration::seconds(i * 5),
                    (i % 2) as f64 * 100.0,
                )
            })
            .collect();
        let cols = downsample(&pts, from, 3_600_000.0, 568, false);
        assert!(cols.len() <= 568);
        // Two samples per column on average: the mean of 0 and 100 shows up.
        assert!(cols.iter().any(|c| (c.2 - 50.0).abs() < 1e-9));
        // Drawn by peaks, a column holding a 100 shows 100, never a mean.
        let peaks = downsample(&pts, from, 3_600_000.0, 568, true);
        assert_eq!(peaks.len(), cols.len());
        assert!(peaks.iter().all(|c| c.2 == 0.0 || c.2 == 100.0));
        assert!(peaks.iter().filter(|c| c.2 == 100.0).count() > cols.len() / 2);
        let svg = line_chart(
            "<b>cpu</b>",
            &[Series {
                label: "x\"y".into(),
                points: pts,
            }],
            from,
            to,
            Axis::Percent,
            30,
        );
        assert!(svg.contains("&lt;b&gt;cpu"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("x&quot;y"));
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(sequential_color(0.0), ("#440154".to_string(), "#fff"));
        assert_eq!(sequential_color(1.0), ("#fde725".to_string(), "#000"));
        assert_eq!(sequential_step(0.0), 0);
        assert_eq!(sequential_step(1.0), HEAT_STEPS - 1);
        assert_eq!(sequential_step(f64::NAN), 0);
        assert_eq!(sequential_step(0.5), 16);
        let css = heat_step_css();
        assert!(
            css.starts_with(".heat .q0{background:#440154;color:#fff}"),
            "{css}"
        );
        assert!(
            css.ends_with(".heat .q32{background:#fde725;color:#000}"),
            "{css}"
        );
        assert_eq!(css.matches("background:").count(), HEAT_STEPS);
    }

    /// A forecast line inside its band at every time stays inside it as drawn: both on
    /// the same columns, however many points share one.
    #[test]
    fn a_line_inside_its_band_is_drawn_inside_it() {
        let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::days(7);
        // 5-minute points, a day's wave: about 3.5 points per column of the phone chart.
        let pts: Vec<(DateTime<Utc>, f64)> = (0..2016)
            .map(|i| {
                let t = from + chrono::Duration::minutes(5 * i);
                (
                    t,
                    20.0 + 10.0 * (i as f64 / 288.0 * std::f64::consts::TAU).sin(),
                )
            })
            .collect();
        let ov = Overlay {
            bands: vec![Band {
                label: "80 %".into(),
                points: pts.iter().map(|(t, v)| (*t, v - 0.5, v + 0.5)).collect(),
                opacity: 0.2,
            }],
            ..Overlay::default()
        };
        let series = [Series {
            label: "forecast".into(),
            points: pts.clone(),
        }];
        for size in [Size::WIDE, Size::PHONE] {
            let svg = line_chart_sized("t", &series, from, to, Axis::Unit(""), 300, &ov, size);
            let path = |class: &str| -> Vec<(f64, f64)> {
                let at = svg
                    .find(class)
                    .unwrap_or_else(|| panic!("{class} in {svg}"));
                let d = &svg[at + 5..];
                let d = &d[d.find(" d=\"").unwrap() + 4..];
                let d = &d[..d.find('"').unwrap()];
                d.split(['M', 'L', 'Z'])
                    .filter_map(|p| {
                        let (x, y) = p.trim().split_once(',')?;
                        Some((x.parse().ok()?, y.parse().ok()?))
                    })
                    .collect()
            };
            let band = path("<path class=\"band\"");
            let line = path("<path d=\"");
            let half = band.len() / 2;
            let (hi, lo) = (&band[..half], &band[half..]);
            for (x, y) in &line {
                let i = hi
                    .iter()
                    .position(|p| p.0 == *x)
                    .unwrap_or_else(|| panic!("{x} not a band column"));
                let j = lo.iter().position(|p| p.0 == *x).unwrap();
                // SVG y grows downwards: the high edge is above (smaller y) the line.
                assert!(
                    hi[i].1 <= *y && *y <= lo[j].1,
                    "x {x}: {} {y} {}",
                    hi[i].1,
                    lo[j].1
                );
            }
        }
    }

    #[test]
    fn bands_are_filled_between_their_lines_and_long_ranges_show_dates() {
        let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::days(7);
        let ov = Overlay {
            bands: vec![Band {
                label: "80 %".into(),
                points: vec![(from, 10.0, 30.0), (to, 20.0, 40.0)],
                opacity: 0.2,
            }],
            ..Overlay::default()
        };
        let svg = line_chart_with("t", &[], from, to, Axis::Unit(""), 3600, &ov);
        // The band sets the scale (0 to 40 in steps of 10) and is one closed path: the high
        // line out, the low line back, on the centres of the lines' columns.
        assert!(
            svg.contains(
                r#"<path class="band" d="M64.5,45.5 L631.5,8.0 L631.5,83.0 L64.5,120.5 Z""#
            ),
            "{svg}"
        );
        assert!(
            svg.contains("Nov 23 UTC") && svg.contains(r#"data-fmt="date""#),
            "{svg}"
        );
        let short = line_chart_with(
            "t",
            &[],
            from,
            from + chrono::Duration::hours(6),
            Axis::Percent,
            60,
            &Overlay::default(),
        );
        assert!(
            short.contains(">00:00 UTC<") && short.contains(r#"data-fmt="time""#),
            "{short}"
        );
    }

    #[test]
    fn overlays_sit_on_the_time_axis() {
        let from: DateTime<Utc> = "2026-11-23T11:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::hours(1);
        let ov = Overlay {
            shaded: vec![Shade {
                from: from + chrono::Duration::minutes(30),
                to,
                class: "throttle",
                label: "throttled".into(),
            }],
            marks: vec![(from + chrono::Duration::minutes(15), "XID 79 <bus>".into())],
            ..Overlay::default()
        };
        let svg = line_chart_with("t", &[], from, to, Axis::Percent, 30, &ov);
        // Half-way along the 568 px plot that starts at x = 64.
        assert!(
            svg.contains(r#"<rect class="throttle" x="348.0" y="8" width="284.0""#),
            "{svg}"
        );
        assert!(svg.contains(r#"x1="206.0""#), "{svg}");
        assert!(svg.contains("XID 79 &lt;bus&gt;"));
    }

    #[test]
    fn ticks_are_round_labels_fit_and_lone_points_show() {
        let from: DateTime<Utc> = "2026-11-23T11:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::days(7);
        // Round ticks (0 … 500 MB/s, not 411 / 823), and the margin holds the widest label.
        let svg = line_chart(
            "t",
            &[Series {
                label: "a".into(),
                points: vec![(from + chrono::Duration::hours(1), 4.1e8)],
            }],
            from,
            to,
            Axis::Rate,
            60,
        );
        assert!(svg.contains(">500 MB/s<"), "{svg}");
        assert!(!svg.contains(">411"), "{svg}");
        let lab_x: f64 = svg
            .split(r#"<text class="ylab" x=""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|x| x.parse().ok())
            .unwrap();
        assert!(
            lab_x >= text_px("500 MB/s", FONT),
            "label right edge {lab_x} leaves room for the label"
        );
        // One point alone (joined to nothing) is a dot, not an invisible move.
        assert!(svg.contains("<circle "), "{svg}");
        // Seven days from 11:00: dates on the time axis, at midnights.
        assert!(svg.contains(r#"data-fmt="date""#) && svg.contains("Nov 24 UTC"));
        assert!(
            svg.contains(r#"data-utc="2026-11-24T00:00:00+00:00""#),
            "{svg}"
        );
        // No data: no made-up axis ("1 B/s, 1 B/s, 0 B/s"), a note instead.
        let empty = line_chart("t", &[], from, to, Axis::Rate, 60);
        assert!(empty.contains("no data in this range") && !empty.contains("B/s"));
        let idle = line_chart(
            "t",
            &[Series {
                label: "rx".into(),
                points: vec![(from, 0.0), (from + chrono::Duration::hours(1), 0.0)],
            }],
            from,
            to,
            Axis::Rate,
            7200,
        );
        assert_eq!(idle.matches(r#"<text class="ylab""#).count(), 1, "{idle}");
        assert!(
            idle.contains(">0 B/s<") && !idle.contains(">1 B/s<"),
            "{idle}"
        );
        // Bytes in binary units, on round steps of that unit.
        let t = Axis::Bytes.ticks(80.0 * 1024f64.powi(3));
        assert_eq!(t.last().unwrap().1, "80 GiB");
        assert_eq!(t[1].1, "20 GiB");
    }

    #[test]
    fn gaps_break_the_line() {
        let from: DateTime<Utc> = "2026-11-23T11:00:00Z".parse().unwrap();
        let to = from + chrono::Duration::hours(1);
        let pts = vec![
            (from + chrono::Duration::seconds(60), 10.0),
            (from + chrono::Duration::seconds(65), 10.0),
            (from + chrono::Duration::seconds(1800), 10.0),
        ];
        let svg = line_chart(
            "t",
            &[Series {
                label: "a".into(),
                points: pts,
            }],
            from,
            to,
            Axis::Percent,
            30,
        );
        assert_eq!(
            svg.matches(" M").count() + svg.matches("\"M").count(),
            2,
            "{svg}"
        );
    }
}
