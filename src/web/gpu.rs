//! One GPU: utilization, memory, power, temperatures, clocks, throttling and its
//! hardware events (`/hosts/{name}/gpus/{index}`, `GET /api/v1/hosts/{name}/gpus/{index}`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::auth::{ApiUser, Csrf, PageUser};
use super::charts::{Axis, Overlay, Series};
use super::error::{ApiError, PageError};
use super::page::*;
use super::range::{RangeParams, TimeRange};
use super::AppState;
use crate::model::format::bytes;
use crate::store::queries::{EventRow, GpuLatest, HostLatest};
use crate::store::series::{GpuPoint, Source};
use crate::store::Store;

/// `/hosts/{name}/gpus/{index}`.
pub fn page_routes() -> Router<AppState> {
    Router::new().route("/hosts/{name}/gpus/{index}", get(page))
}

/// `GET /api/v1/hosts/{name}/gpus/{index}`.
pub fn api_routes() -> Router<AppState> {
    Router::new().route("/api/v1/hosts/{name}/gpus/{index}", get(json))
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
pub async fn rows(
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

#[derive(Template)]
#[template(path = "gpu.html")]
pub struct GpuPage {
    pub nav: Nav,
    pub host: HostRow,
    pub host_link: String,
    pub rack_link: String,
    pub gpu: GpuCell,
    pub driver_note: String,
    pub picker: Picker,
    pub charts: Vec<ChartView>,
    pub throttle_note: String,
    pub events: Vec<EventView>,
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    Path((name, index)): Path<(String, i16)>,
    Query(q): Query<RangeParams>,
) -> Result<Response, PageError> {
    let now = Utc::now();
    let r = q.resolve(now, "1h")?;
    let d = load(&st, &name, index, r.clone()).await?;
    render_off(move || {
        let query = r.query();
        let ov = Overlay {
            shaded: d
                .throttled
                .iter()
                .flatten()
                .map(|s| (s.from, s.to))
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
                Axis::Auto(fmt_bytes_axis),
                &ov,
            ),
            chart(
                "Power",
                vec![
                    one("mean", |p| p.power_watts),
                    one("max", |p| p.power_watts_max),
                ],
                &r,
                Axis::Auto(fmt_watts_axis),
                &ov,
            ),
            chart(
                "Temperature",
                vec![
                    one("GPU", |p| p.temp_celsius),
                    one("GPU max", |p| p.temp_celsius_max),
                    one("memory", |p| p.mem_temp_celsius),
                ],
                &r,
                Axis::Auto(fmt_celsius_axis),
                &ov,
            ),
            chart(
                "Clocks",
                vec![
                    one("SM", |p| p.sm_clock_mhz),
                    one("memory", |p| p.mem_clock_mhz),
                ],
                &r,
                Axis::Auto(fmt_mhz_axis),
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
        let throttle_note = match &d.throttled {
            Some(s) if s.is_empty() => "No clock throttling in this range.".to_string(),
            Some(s) => format!(
                "Shaded: clocks throttled (power cap, thermal or power brake), {} period{}.",
                s.len(),
                if s.len() == 1 { "" } else { "s" }
            ),
            None => format!(
                "Throttle shading is shown for ranges up to {} h (it is read from raw samples).",
                THROTTLE_MAX_SECS / 3600
            ),
        };
        let page = GpuPage {
            nav: Nav::new(&user, csrf, ""),
            host_link: format!("/hosts/{}?{query}", seg(&name)),
            rack_link: format!("/racks/{}/{}?{query}", seg(&d.host.site), seg(&d.host.rack)),
            host: host_row(&d.host, GpuSummary::default(), now),
            gpu: gpu_cell(&d.gpu),
            driver_note: d
                .gpu
                .memory_total_bytes
                .map(|b| format!("{} memory", bytes(Some(b as f64))))
                .unwrap_or_default(),
            picker: picker(
                format!("/hosts/{}/gpus/{index}", seg(&name)),
                &r,
                String::new(),
            ),
            charts,
            throttle_note,
            events: event_views(&d.events, &query),
        };
        render(&page)
    })
    .await
}

/// GPU page data.
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    Path((name, index)): Path<(String, i16)>,
    Query(q): Query<RangeParams>,
) -> Result<Json<GpuData>, ApiError> {
    let r = q.resolve(Utc::now(), "1h")?;
    Ok(Json(load(&st, &name, index, r).await?))
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
