//! One GPU: utilization, memory, power, temperatures, clocks, throttling and its
//! hardware events (`/hosts/{name}/gpus/{index}`, `GET /api/v1/hosts/{name}/gpus/{index}`).

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{ApiUser, Csrf, PageUser};
use super::charts::{Axis, Overlay, Series, Shade};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::*;
use super::params::{ApiQuery, PageQuery};
use super::range::{RangeDoc, RangeParams, TimeRange};
use super::AppState;
use crate::model::format::bytes;
use crate::model::throttle;
use crate::store::queries::{EventRow, GpuLatest, HostLatest};
use crate::store::series::{GpuPoint, GpuRawExtra};
use crate::store::Store;

/// `/hosts/{name}/gpus/{index}`.
pub fn page_routes() -> Routes {
    Routes::new().get("/hosts/{name}/gpus/{index}", page)
}

/// `GET /api/v1/hosts/{name}/gpus/{index}`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(json))
}

/// A stretch of time in which clocks were slowed for one reason.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `power cap`, `thermal` or `power brake or HW slowdown`.
    pub reason: &'static str,
}

/// Throttle reasons as the GPU page shades them: (NVML bits, name, CSS class). Power
/// capping is the GPU working as designed at its limit; thermal slowdown means cooling
/// trouble; the power brake and HW slowdown are the board or the chassis pulling clocks.
pub const THROTTLE_KINDS: [(u64, &str, &str); 3] = [
    (throttle::SW_POWER_CAP, "power cap", "throttle power"),
    (throttle::THERMAL, "thermal", "throttle thermal"),
    (
        throttle::HW_POWER_BRAKE_SLOWDOWN | throttle::HW_SLOWDOWN,
        "power brake or HW slowdown",
        "throttle brake",
    ),
];

/// Throttle shading, fan speed and power limit read raw samples; past this range they
/// are left out (raw history of one GPU over more than a week is too many rows for a page).
pub const THROTTLE_MAX_SECS: i64 = 7 * 24 * 3600 + 3600;

/// GPU page data: every metric over the range, throttle periods, events with meaning
/// and action.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuData {
    pub host: HostLatest,
    pub gpu: GpuLatest,
    pub range: TimeRange,
    pub series: Vec<GpuPoint>,
    /// Periods in which clocks were throttled for at least half of a chart point's
    /// samples (null past 7 days: read from raw samples).
    pub throttled: Option<Vec<Span>>,
    /// Per throttle kind, the chart points where it slowed the clocks for under half of
    /// their samples (not shaded); none past 7 days.
    #[serde(skip)]
    pub brief: Vec<(&'static str, usize)>,
    pub events: Vec<ExplainedEvent>,
    /// More hardware events than listed are in the range: the newest 200 are listed, and
    /// `GET /api/v1/events` has them all.
    pub events_truncated: bool,

    /// The enforced power limit (the inventory's, else the highest sampled in the range).
    pub power_limit_watts: Option<f64>,
    /// Firing, pending and recently resolved (24 h) alerts of this GPU and of its host as
    /// a whole.
    pub alerts: Vec<crate::store::queries::AlertTouching>,
}

/// Spans per throttle reason from per-bucket reason bits: a span runs while the reason is
/// set and ends at the first bucket whose samples show it cleared. Buckets without
/// samples (agents sample every 5 to 30 s; narrow buckets fall between samples) neither
/// extend nor end a span.
fn reason_spans(extras: &[GpuRawExtra], bucket_secs: i64) -> Vec<Span> {
    let step = Duration::seconds(bucket_secs);
    let mut out = Vec::new();
    for (bits, reason, _) in THROTTLE_KINDS {
        let mut cur: Option<Span> = None;
        for e in extras {
            let Some(r) = e.reasons else { continue };
            if r as u64 & bits != 0 {
                match &mut cur {
                    Some(s) => s.to = e.ts + step,
                    None => {
                        cur = Some(Span {
                            from: e.ts,
                            to: e.ts + step,
                            reason,
                        })
                    }
                }
            } else if let Some(s) = cur.take() {
                out.push(s);
            }
        }
        out.extend(cur);
    }
    out
}

/// Fill the GPU's points that have no fan speed from raw buckets (both in time order).
fn fill_fan(series: &mut [GpuPoint], index: i16, extras: &[GpuRawExtra]) {
    let mut pts: Vec<&mut GpuPoint> = series.iter_mut().filter(|p| p.index == index).collect();
    if pts.iter().any(|p| p.fan_pct.is_some()) {
        return;
    }
    let mut j = 0;
    for i in 0..pts.len() {
        let end = pts.get(i + 1).map(|p| p.ts);
        let (mut sum, mut n) = (0.0, 0u32);
        while j < extras.len() && extras[j].ts < pts[i].ts {
            j += 1;
        }
        while j < extras.len() && end.is_none_or(|e| extras[j].ts < e) {
            if let Some(f) = extras[j].fan_pct {
                sum += f;
                n += 1;
            }
            j += 1;
        }
        if n > 0 {
            pts[i].fan_pct = Some(sum / f64::from(n));
        }
    }
}

/// What the GPU page reads from the database, queried concurrently.
pub struct GpuRows {
    pub host: Option<HostLatest>,
    pub gpus: Vec<GpuLatest>,
    pub series: Vec<GpuPoint>,
    /// Throttle reasons, fan and power limit from raw samples, for ranges up to
    /// `THROTTLE_MAX_SECS`.
    pub extras: Option<Vec<GpuRawExtra>>,
    pub events: Vec<EventRow>,
    pub alerts: Vec<crate::store::queries::AlertTouching>,
}

/// The GPU page's queries (the dashboard benchmark times exactly these).
pub async fn rows(
    store: &Store,
    name: &str,
    index: i16,
    range: &TimeRange,
) -> Result<GpuRows, sqlx::Error> {
    let span = (range.to - range.from).num_seconds();
    let throttle = async {
        if span <= THROTTLE_MAX_SECS {
            store
                .gpu_raw_extras(name, index, range.from, range.to, range.bucket_secs)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let names = [name.to_string()];
    let resolved_since =
        chrono::Utc::now() - chrono::Duration::hours(super::page::RESOLVED_RECENT_HOURS);
    let (host, gpus, series, extras, events, alerts) = tokio::try_join!(
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
        store.events_between(
            &names,
            Some(index),
            range.from,
            range.to,
            EVENTS_SHOWN as i64 + 1
        ),
        store.alerts_touching(&names, resolved_since),
    )?;
    Ok(GpuRows {
        host,
        gpus,
        series,
        extras,
        events,
        alerts: alerts
            .into_iter()
            .filter(|a| a.gpu.is_none_or(|g| g == index))
            .collect(),
    })
}

/// Everything the GPU page shows.
pub async fn load(
    st: &AppState,
    name: &str,
    index: i16,
    range: TimeRange,
) -> Result<GpuData, ApiError> {
    let r = rows(&st.store, name, index, &range).await?;
    let host = r
        .host
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?}")))?;
    let gpu = r
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .ok_or_else(|| ApiError::NotFound(format!("host {name:?} has no GPU {index}")))?;
    let throttled = r
        .extras
        .as_ref()
        .map(|x| reason_spans(x, range.bucket_secs));
    // Fan speed is kept in raw samples only: on rollup ranges each point takes the mean
    // fan speed of the raw buckets from its time to the next point's.
    let mut series = r.series;
    if let Some(x) = &r.extras {
        fill_fan(&mut series, index, x);
    }
    let power_limit = gpu.power_limit_watts.or_else(|| {
        r.extras
            .iter()
            .flatten()
            .filter_map(|e| e.power_limit_watts)
            .reduce(f64::max)
    });
    let brief = THROTTLE_KINDS
        .iter()
        .map(|(bits, reason, _)| {
            let n = r
                .extras
                .iter()
                .flatten()
                .filter(|e| {
                    e.seen.is_some_and(|b| b as u64 & bits != 0)
                        && e.reasons.is_none_or(|b| b as u64 & bits == 0)
                })
                .count();
            (*reason, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let (events, events_truncated) = newest_events(r.events);
    Ok(GpuData {
        host,
        gpu,
        range,
        series,
        throttled,
        brief,
        events: events.into_iter().map(explained).collect(),
        events_truncated,
        power_limit_watts: power_limit,
        alerts: r.alerts,
    })
}

#[derive(Template)]
#[template(path = "gpu.html")]
pub struct GpuPage {
    pub nav: Nav,
    pub host: HostRow,
    pub host_link: String,
    pub rack_link: String,
    /// Said when the host was taken out of the fleet.
    pub removed: String,
    pub gpu: GpuCell,
    pub driver_note: String,
    /// When the GPU does not report now (see the fleet's "GPUs reporting"): its newest
    /// sample's time (RFC 3339), which the figures above are from; empty when it reports.
    pub silent_since: String,
    pub picker: Picker,
    pub charts: Vec<ChartView>,
    pub throttle_note: String,
    /// Throttle shading is drawn (ranges up to 7 days): its key is shown.
    pub shading: bool,
    pub events: Vec<EventView>,
    /// The events API's link to all of them, when the list is cut (a host's or GPU's).
    pub events_all: String,
    pub events_truncated: bool,
    pub alerts: Vec<super::page::AlertTouchView>,
    pub alerts_hidden: usize,
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path((name, index)): Path<(String, String)>,
    PageQuery(q): PageQuery<RangeParams>,
) -> Result<Response, PageError> {
    let index = gpu_index(&name, &index)?;
    let now = Utc::now();
    let (r, problem) = q.resolve_page(now, "1h", false)?;
    let d = load(&st, &name, index, r.clone()).await?;
    let temp_refs = temperature_rules(&st.cfg.alerting.rules_file);
    render_off(move || {
        let query = r.query();
        let (alerts, alerts_hidden) = super::page::alert_views(&d.alerts, false, &query);
        let ov = Overlay {
            shaded: d
                .throttled
                .iter()
                .flatten()
                .map(|s| Shade {
                    from: s.from,
                    to: s.to,
                    class: THROTTLE_KINDS
                        .iter()
                        .find(|k| k.1 == s.reason)
                        .map_or("throttle", |k| k.2),
                    label: format!("throttled: {}", s.reason),
                })
                .collect(),
            marks: d
                .events
                .iter()
                .map(|e| (e.ts, format!("{}: {}", e.title, e.meaning)))
                .collect(),
            ..Overlay::default()
        };
        let one = |label: &str, f: GpuField| Series {
            label: label.to_string(),
            points: gpu_points(&d.series, index, f),
        };
        let mut charts = vec![
            chart(
                "Utilization",
                vec![one("SM", |p| p.util_pct), one("memory", |p| p.mem_util_pct)],
                &r,
                Axis::Percent,
                &ov,
            ),
            chart(
                "Memory used",
                vec![one("used", |p| p.mem_used_bytes)],
                &r,
                Axis::Bytes,
                &ov,
            ),
            chart(
                "Power",
                with_max(
                    one("mean", |p| p.power_watts),
                    one("max", |p| p.power_watts_max),
                    vec![],
                ),
                &r,
                Axis::Unit("W"),
                &Overlay {
                    refs: d
                        .power_limit_watts
                        .map(|l| (l, format!("power limit {l:.0} W")))
                        .into_iter()
                        .collect(),
                    ..ov.clone()
                },
            ),
            chart(
                "Temperature",
                with_max(
                    one("GPU", |p| p.temp_celsius),
                    one("GPU max", |p| p.temp_celsius_max),
                    vec![one("memory", |p| p.mem_temp_celsius)],
                ),
                &r,
                Axis::Unit("°C"),
                &Overlay {
                    refs: temp_refs,
                    ..ov.clone()
                },
            ),
            chart(
                "Clocks",
                vec![
                    one("SM", |p| p.sm_clock_mhz),
                    one("memory", |p| p.mem_clock_mhz),
                ],
                &r,
                Axis::Unit("MHz"),
                &ov,
            ),
        ];
        if d.series.iter().any(|p| p.fan_pct.is_some()) {
            charts.push(chart(
                "Fan speed",
                vec![one("fan", |p| p.fan_pct)],
                &r,
                Axis::Percent,
                &ov,
            ));
        }
        // Throttling that held for under half of a point's samples: not shaded, but said.
        let brief_note = if d.brief.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = d
                .brief
                .iter()
                .map(|(reason, n)| {
                    format!(
                        "{reason} in {}",
                        crate::model::format::count(*n, "point")
                    )
                })
                .collect();
            format!(
                " Brief {} (under half of each point's samples), not shaded.",
                parts.join(", ")
            )
        };
        let brief = &d.brief;
        let throttle_note = match &d.throttled {
            Some(s) if s.is_empty() && brief.is_empty() => {
                "No clock throttling in this range.".to_string()
            }
            Some(s) if s.is_empty() => format!("No sustained clock throttling in this range.{brief_note}"),
            Some(s) => {
                let count = |k: &str| s.iter().filter(|x| x.reason == k).count();
                let parts: Vec<String> = THROTTLE_KINDS
                    .iter()
                    .filter(|k| count(k.1) > 0)
                    .map(|k| {
                        let n = count(k.1);
                        format!("{} ({n} period{})", k.1, if n == 1 { "" } else { "s" })
                    })
                    .collect();
                format!("Clocks throttled by {}.{brief_note}", parts.join(", "))
            }
            None => "Throttle shading and fan speed are shown for ranges up to 7 days (they are read from raw samples).".to_string(),
        };
        let page = GpuPage {
            nav: Nav::new(&user, csrf, ""),
            host_link: format!("/hosts/{}?{query}", seg(&name)),
            rack_link: rack_link_of(&d.host, &query),
            removed: removed_note(&d.host),
            host: host_row(&d.host, GpuSummary::default(), now),
            gpu: gpu_cell(&d.gpu),
            silent_since: if super::page::gpu_reports(&d.gpu, Some(&d.host), now) {
                String::new()
            } else {
                d.gpu.ts.map(super::page::time_attr).unwrap_or_else(|| "-".into())
            },
            driver_note: d
                .gpu
                .memory_total_bytes
                .map(|b| format!("{} memory", bytes(Some(b as f64))))
                .unwrap_or_default(),
            picker: picker(
                format!("/hosts/{}/gpus/{index}", seg(&name)),
                &r,
                Vec::new(),
            )
            .with_problem(problem)
            .empty_if(d.series.is_empty()),
            charts,
            shading: d.throttled.is_some(),
            throttle_note,
            events: event_views(&d.events, &query, false),
            events_all: if d.events_truncated {
                all_events_link(&name, Some(index), r.from, r.to)
            } else {
                String::new()
            },
            events_truncated: d.events_truncated,
            alerts,
            alerts_hidden,
        };
        render(&page)
    })
    .await
}

/// A mean's series, its bucket maxima, then `rest`. At raw resolution a bucket holds one
/// sample and its maximum is its mean: the max line would only hide the mean's, so it
/// is left out.
fn with_max(mean: Series, max: Series, rest: Vec<Series>) -> Vec<Series> {
    let same = mean.points.len() == max.points.len()
        && mean
            .points
            .iter()
            .zip(&max.points)
            .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(1.0));
    let mut out = vec![mean];
    if !same {
        out.push(max);
    }
    out.extend(rest);
    out
}

/// A GPU index from the URL: a small whole number, else a 404 that says so (as a page
/// for people, JSON for the API).
fn gpu_index(host: &str, s: &str) -> Result<i16, ApiError> {
    s.parse::<i16>().ok().filter(|i| *i >= 0).ok_or_else(|| {
        ApiError::NotFound(format!(
            "host {host:?} has no GPU {s:?}: GPUs are numbered 0, 1, 2, …"
        ))
    })
}

/// Reference lines for the temperature chart: the alert rules that watch a GPU's
/// temperature from above (`gpu-hot alert > 85 °C`). NVML's slowdown temperature is not
/// reported by the agent, so the alert threshold is the line an operator can act on.
fn temperature_rules(path: &str) -> Vec<(f64, String)> {
    if path.is_empty() {
        return Vec::new();
    }
    let Ok(set) = crate::alert::rules::RuleSet::load(std::path::Path::new(path)) else {
        return Vec::new();
    };
    set.rules
        .iter()
        .filter_map(|r| match &r.kind {
            crate::alert::rules::RuleKind::Threshold(t)
                if t.metric.gpu
                    && t.metric.metric.name == "temp_celsius"
                    && t.op.upward()
                    && r.matchers.is_empty() =>
            {
                Some((
                    t.value,
                    format!("{} alert {} {:.0} °C", r.name, t.op.as_str(), t.value),
                ))
            }
            _ => None,
        })
        .collect()
}

/// GPU page: every metric over the range, throttle periods, events with meaning and
/// action.
#[utoipa::path(
    get,
    path = "/api/v1/hosts/{name}/gpus/{index}",
    operation_id = "gpu",
    tag = "hosts",
    params(
        ("name" = String, Path, description = "Host name."),
        ("index" = i16, Path, description = "GPU index."),
        RangeDoc,
    ),
    responses(
        (status = 200, description = "The GPU page's data.", body = GpuData),
        (status = 400, description = "A bad range.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "No such host or GPU (an index that is not a whole number from 0 names no GPU).", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path((name, index)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RangeParams>,
) -> Result<Json<GpuData>, ApiError> {
    let index = gpu_index(&name, &index)?;
    let r = q.resolve(Utc::now(), "1h")?;
    Ok(Json(load(&st, &name, index, r).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_line_equal_to_its_mean_is_left_out() {
        let t0: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let s = |label: &str, v: &[f64]| Series {
            label: label.into(),
            points: v
                .iter()
                .enumerate()
                .map(|(i, v)| (t0 + Duration::seconds(5 * i as i64), *v))
                .collect(),
        };
        let raw = with_max(
            s("mean", &[300.0, 310.0]),
            s("max", &[300.0, 310.0]),
            vec![],
        );
        assert_eq!(raw.len(), 1);
        let rolled = with_max(
            s("mean", &[300.0, 310.0]),
            s("max", &[320.0, 310.0]),
            vec![s("memory", &[60.0, 61.0])],
        );
        let labels: Vec<&str> = rolled.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels, ["mean", "max", "memory"]);
    }

    #[test]
    fn throttle_spans_run_until_a_sample_shows_the_reason_cleared() {
        let t0: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let b = |s: i64, r: Option<i64>| GpuRawExtra {
            ts: t0 + Duration::seconds(s),
            reasons: r,
            seen: r,
            fan_pct: None,
            power_limit_watts: None,
        };
        // Samples every 30 s in 7 s buckets: thermal (0x40) at 0, 30, 60, cleared at 90,
        // power cap (0x4) from 120; a bucket without a reason reading ends nothing.
        let x = [
            b(0, Some(0x40)),
            b(28, Some(0x40)),
            b(56, None),
            b(63, Some(0x40 | 0x4)),
            b(91, Some(0)),
            b(119, Some(0x4)),
        ];
        let s = reason_spans(&x, 7);
        let got: Vec<_> = s
            .iter()
            .map(|s| {
                (
                    s.reason,
                    (s.from - t0).num_seconds(),
                    (s.to - t0).num_seconds(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("power cap", 63, 70),
                ("power cap", 119, 126),
                ("thermal", 0, 70)
            ]
        );
    }
}
