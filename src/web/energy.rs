//! The energy page (weekly energy-efficiency reports, past weeks to download), the
//! report files, the report as JSON, and facility meter readings sent by site systems.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{require, urlencode, ApiUser, Csrf, PageUser};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::{render, Nav};
use super::params::{ApiQuery, NoParams, PageQuery};
use super::AppState;
use crate::report::energy::{self, EnergyReport};
use crate::report::export::{self, Format, ReportView};
use crate::report::inputs::{self, FacilityReading};
use crate::report::IsoWeek;
use crate::store::auth::Role;

/// The energy page and its report downloads.
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/energy", page)
        .get("/docs/energy", definitions)
        .get("/energy/reports/{file}", file)
}

/// The weekly report as JSON, and facility meter readings in.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(api)).routes(routes!(readings))
}

/// Weeks listed on the energy page.
const PAST_WEEKS: usize = 12;

/// Which report.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// ISO week in `energy.time_zone` (default: last week, or the running week when it
    /// already holds as many days of data, as on the dashboard).
    #[param(example = "2026-W47")]
    week: Option<String>,
    /// Only this site.
    site: Option<String>,
}

impl ReportQuery {
    async fn week(&self, st: &AppState, now: DateTime<Utc>) -> Result<IsoWeek, ApiError> {
        match self.week.as_deref().filter(|w| !w.is_empty()) {
            Some(w) => w.parse().map_err(ApiError::BadRequest),
            None => Ok(energy::default_week(&st.store, &st.cfg.energy, self.site(), now).await?),
        }
    }

    fn site(&self) -> Option<&str> {
        self.site.as_deref().filter(|s| !s.is_empty())
    }
}

async fn build(
    st: &AppState,
    week: IsoWeek,
    site: Option<&str>,
    now: DateTime<Utc>,
) -> Result<EnergyReport, ApiError> {
    let tz = st.cfg.energy.tz();
    let latest = IsoWeek::containing(now, tz);
    if week > latest {
        return Err(ApiError::BadRequest(format!(
            "week {week} has not started yet (it starts {} in {}); the latest week is {latest}",
            week.start(tz).with_timezone(&tz).format("%Y-%m-%d %H:%M"),
            st.cfg.energy.time_zone
        )));
    }
    let key = (week, site.map(str::to_string));
    if let Some(r) = st.energy_reports.get(&key) {
        return Ok(r);
    }
    let r = energy::build(&st.store, &st.cfg.energy, week, site, now)
        .await
        .map_err(|e| match e.downcast::<sqlx::Error>() {
            Ok(e) => ApiError::from(e),
            Err(e) if e.to_string().starts_with("no host belongs") => {
                ApiError::NotFound(e.to_string())
            }
            Err(e) => ApiError::Internal(e),
        })?;
    if week < latest && !r.partial() {
        st.energy_reports.put(key, &r);
    }
    Ok(r)
}

/// Reports of complete weeks (the page, its downloads and the API ask for the same week
/// again and again; a fleet's week takes seconds to build), each kept for
/// [`ReportCache::FRESH`]: hours re-accounted after late data show within that.
#[derive(Default)]
pub struct ReportCache {
    reports:
        std::sync::Mutex<std::collections::HashMap<ReportKey, (std::time::Instant, EnergyReport)>>,
}

/// A week, and its site (`None`: the fleet).
type ReportKey = (IsoWeek, Option<String>);

impl ReportCache {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(600);
    /// Weeks and sites kept at most.
    const MAX: usize = 32;

    fn get(&self, key: &ReportKey) -> Option<EnergyReport> {
        let map = self.reports.lock().expect("report cache");
        map.get(key)
            .filter(|(at, _)| at.elapsed() < Self::FRESH)
            .map(|(_, r)| r.clone())
    }

    /// Forget them all: facility readings arrived, which change past weeks.
    pub fn clear(&self) {
        self.reports.lock().expect("report cache").clear();
    }

    fn put(&self, key: ReportKey, r: &EnergyReport) {
        let mut map = self.reports.lock().expect("report cache");
        map.retain(|_, (at, _)| at.elapsed() < Self::FRESH);
        if map.len() < Self::MAX {
            map.insert(key, (std::time::Instant::now(), r.clone()));
        }
    }
}

fn file_link(week: IsoWeek, site: Option<&str>, f: Format) -> String {
    let q = site
        .map(|s| format!("?site={}", urlencode(s)))
        .unwrap_or_default();
    format!("/energy/reports/{week}.{}{q}", f.extension())
}

pub struct WeekLine {
    /// Anything measured in the week (weeks without data offer no downloads).
    pub has_data: bool,
    /// Days of the week with data.
    pub days: i64,
    pub week: String,
    pub selected: bool,
    pub link: String,
    pub it_kwh: String,
    pub gpu_kwh: String,
    pub idle_kwh: String,
    pub csv: String,
    pub parquet: String,
    pub html: String,
}

#[derive(Template)]
#[template(path = "energy.html")]
pub struct EnergyPage<'a> {
    pub nav: Nav,
    pub r: &'a EnergyReport,
    pub v: ReportView,
    pub weeks: Vec<WeekLine>,
    pub sites: Vec<(String, bool)>,
    pub links: (String, String, String),
    /// Days of the shown week with data (of 7), and whether the week is still running.
    pub data_days: i64,
    pub running: bool,
    /// For a running week: the complete hours are accounted up to here ("04:00 UTC");
    /// the figures lag by up to an hour and five minutes.
    pub accounted: String,
    /// Whether and when the weekly report is mailed.
    pub mail_status: String,
}

/// `GET /energy?week=2026-W47&site=S`
pub async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    PageQuery(q): PageQuery<ReportQuery>,
) -> Result<Response, PageError> {
    let now = Utc::now();
    let site = q.site();
    let tz = st.cfg.energy.tz();
    let mut weeks = vec![IsoWeek::containing(now, tz)];
    while weeks.len() < PAST_WEEKS {
        let w = weeks.last().expect("non-empty").prev();
        weeks.push(w);
    }
    let bounds: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        weeks.iter().map(|w| energy::week_hours(*w, tz)).collect();
    // Per week: energy, and on how many days of it anything was measured.
    let starts: Vec<DateTime<Utc>> = bounds.iter().map(|b| b.0).collect();
    let ends: Vec<DateTime<Utc>> = bounds.iter().map(|b| b.1).collect();
    // Every group holds a row: the sums are never null.
    let totals: Vec<(i64, f64, f64, f64, i64)> = sqlx::query!(
        r#"SELECT w.i AS "i!", sum(e.measured_j + e.estimated_j + e.modeled_j) AS "total!",
                COALESCE(sum(e.measured_j + e.estimated_j + e.modeled_j) FILTER (WHERE e.gpu_index >= 0), 0) AS "gpu!",
                sum(e.idle_j) AS "idle!",
                -- (a 169-hour week's last hour is its Sunday's)
                count(DISTINCT LEAST(6, floor(extract(epoch FROM e.hour - w.s) / 86400)))::int8 AS "days!"
           FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS w (s, e, i)
           JOIN energy_hourly e ON e.hour >= w.s AND e.hour < w.e
           JOIN hosts h ON h.id = e.host_id AND ($3::text IS NULL OR h.site = $3)
          GROUP BY w.i"#,
        &starts,
        &ends,
        site,
    )
    .fetch_all(&st.store.pool)
    .await?
    .into_iter()
    .map(|r| (r.i, r.total, r.gpu, r.idle, r.days))
    .collect();
    // Days with data in week i (1 = the running week).
    let days = |i: i64| {
        totals
            .iter()
            .find(|t| t.0 == i && t.1 > 0.0)
            .map_or(0, |t| t.4)
    };
    // Last week by default, unless the running week already holds as many days of data (a
    // new install whose history starts late last week): `energy::default_week`'s rule, on
    // the counts this page has already.
    let week = match q.week.as_deref().filter(|w| !w.is_empty()) {
        Some(_) => q.week(&st, now).await?,
        None => energy::choose_week(weeks[1], days(2), weeks[0], days(1)),
    };
    let running = week == weeks[0];
    let report = build(&st, week, site, now).await?;
    // A week older than the listed ones counts its days from its own report.
    let shown_days = weeks.iter().position(|w| *w == week).map_or_else(
        || {
            report
                .days
                .iter()
                .filter(|d| d.gpu_busy_kwh + d.gpu_idle_kwh + d.host_kwh > 0.0)
                .count() as i64
        },
        |i| days(i as i64 + 1),
    );
    let kwh = |j: f64| crate::report::export::fmt_kwh(j / 3.6e6);
    let lines = weeks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let t = totals.iter().find(|t| t.0 == i as i64 + 1);
            let site_q = site
                .map(|s| format!("&site={}", urlencode(s)))
                .unwrap_or_default();
            WeekLine {
                has_data: t.is_some_and(|t| t.1 > 0.0),
                days: t.map_or(0, |t| t.4),
                week: w.to_string(),
                selected: *w == week,
                link: format!("/energy?week={w}{site_q}"),
                it_kwh: t.map_or("—".into(), |t| kwh(t.1)),
                gpu_kwh: t.map_or("—".into(), |t| kwh(t.2)),
                idle_kwh: t.map_or("—".into(), |t| kwh(t.3)),
                csv: file_link(*w, site, Format::Csv),
                parquet: file_link(*w, site, Format::Parquet),
                html: file_link(*w, site, Format::Html),
            }
        })
        .collect();
    let all_sites: Vec<String> =
        sqlx::query_scalar!("SELECT DISTINCT site FROM hosts WHERE site <> '' ORDER BY 1")
            .fetch_all(&st.store.pool)
            .await?;
    let p = EnergyPage {
        nav: Nav::new(&user, csrf, "energy"),
        v: export::view(&report),
        r: &report,
        weeks: lines,
        sites: all_sites
            .into_iter()
            .map(|s| {
                let sel = Some(s.as_str()) == site;
                (s, sel)
            })
            .collect(),
        data_days: shown_days,
        running,
        accounted: report
            .accounted_until
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default(),
        mail_status: crate::report::mail::status(&st.store, &st.cfg)
            .await
            .map_err(ApiError::Internal)?,
        links: (
            file_link(week, site, Format::Csv),
            file_link(week, site, Format::Parquet),
            file_link(week, site, Format::Html),
        ),
    };
    Ok(render(&p))
}

/// docs/energy.md, compiled in: what every figure of the report means.
const ENERGY_DOC: &str = include_str!("../../docs/energy.md");

/// The definitions as HTML, rendered once.
static ENERGY_HTML: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| doc_html(ENERGY_DOC));

/// Markdown of the repository's docs as a page's HTML: tables and code blocks as such;
/// links to other files of `docs/` (which the server does not serve) keep their text only,
/// and raw HTML is shown as text.
fn doc_html(markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut kept = Vec::new();
    let events = Parser::new_ext(markdown, Options::ENABLE_TABLES).filter_map(|e| match e {
        Event::Start(Tag::Link { ref dest_url, .. }) => {
            let keep = dest_url.starts_with("https://") || dest_url.starts_with('/');
            kept.push(keep);
            keep.then_some(e)
        }
        Event::End(TagEnd::Link) => kept.pop().unwrap_or(false).then_some(e),
        Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
        e => Some(e),
    });
    // Tables and code blocks (diagrams) scroll sideways in their own box on a phone.
    let events = events.flat_map(|e| {
        let (before, after) = match &e {
            Event::Start(Tag::Table(_) | Tag::CodeBlock(_)) => {
                (Some(Event::Html(r#"<div class="scroll">"#.into())), None)
            }
            Event::End(TagEnd::Table | TagEnd::CodeBlock) => {
                (None, Some(Event::Html("</div>".into())))
            }
            _ => (None, None),
        };
        before.into_iter().chain(std::iter::once(e)).chain(after)
    });
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

#[derive(Template)]
#[template(path = "doc.html")]
pub struct DocPage {
    pub nav: Nav,
    pub title: &'static str,
    /// Rendered from the project's own Markdown (trusted, compiled in).
    pub html: &'static str,
}

/// `/docs/energy`: the definitions behind the energy report.
pub async fn definitions(
    PageUser(user): PageUser,
    csrf: Csrf,
    _q: PageQuery<NoParams>,
) -> Response {
    render(&DocPage {
        nav: Nav::new(&user, csrf, "energy"),
        title: "Energy report: definitions",
        html: ENERGY_HTML.as_str(),
    })
}

/// `GET /energy/reports/2026-W47.csv?site=S` (also `.parquet`, `.html`).
pub async fn file(
    State(st): State<AppState>,
    _u: ApiUser,
    Path(file): Path<String>,
    PageQuery(q): PageQuery<ReportQuery>,
) -> Result<Response, PageError> {
    let (week, ext) = file.rsplit_once('.').ok_or_else(|| {
        ApiError::NotFound(format!(
            "{file:?}: expected WEEK.csv, WEEK.parquet or WEEK.html"
        ))
    })?;
    let format: Format = ext.parse().map_err(ApiError::NotFound)?;
    // The name a running week's file is given (`…-partial`) reaches the same file.
    let week = week.strip_suffix("-partial").unwrap_or(week);
    let week: IsoWeek = week.parse().map_err(ApiError::BadRequest)?;
    let other = q.week.as_deref().filter(|w| !w.is_empty());
    if let Some(other) = other.filter(|w| w.parse::<IsoWeek>().ok() != Some(week)) {
        return Err(ApiError::BadRequest(format!(
            "the file name names the week ({week}); leave out `week` (it says {})",
            crate::model::validate::quoted(other)
        ))
        .into());
    }
    let now = Utc::now();
    let report = build(&st, week, q.site(), now).await?;
    // A table of zeros would read as a week that used no energy; the printable report
    // carries the note instead.
    if report.no_data() && format != Format::Html {
        return Err(ApiError::NotFound(format!(
            "no data in {week}{}: nothing was accounted (no host reported then, or its samples are past retention); /energy lists the weeks with data",
            q.site().map(|s| format!(" for site {s}")).unwrap_or_default()
        ))
        .into());
    }
    let body = export::render(&report, format).map_err(ApiError::Internal)?;
    let name = export::file_name(&report, format);
    let disposition = if format == Format::Html {
        format!("inline; filename=\"{name}\"")
    } else {
        format!("attachment; filename=\"{name}\"")
    };
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// The weekly report as the API answers it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EnergyReport)]
pub struct WeeklyReport {
    /// ISO week, e.g. 2026-W47.
    pub week: String,
    pub time_zone: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The site asked for; null for the whole fleet.
    pub site: Option<String>,
    /// The week is not over, or not accounted to its end yet.
    pub partial: bool,
    /// The week's hours are accounted up to here: `end` once the week is complete.
    pub accounted_until: Option<DateTime<Utc>>,
    /// GPU minutes below this utilization count as idle.
    pub idle_util_pct: f64,
    /// The fleet (or the chosen site) first, then sites, racks, pools, hosts, GPUs.
    pub rows: Vec<energy::ReportRow>,
    pub days: Vec<energy::DayTotals>,
    pub actions: Vec<energy::Action>,
    pub notes: Vec<String>,
}

/// Weekly energy-efficiency report: energy, PUE, carbon, cost and idle waste per fleet,
/// site, rack, pool, host and GPU.
///
/// The first row is the fleet, or the site when one is chosen. The same report as files:
/// `/energy/reports/{week}.csv`, `.parquet` or `.html`.
#[utoipa::path(
    get,
    path = "/api/v1/energy/weekly",
    operation_id = "energy_weekly",
    tag = "energy",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report.", body = WeeklyReport),
        (status = 400, description = "A bad week.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 404, description = "Unknown site.", body = ErrorBody),
    )
)]
pub async fn api(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Json<WeeklyReport>, ApiError> {
    let now = Utc::now();
    let week = q.week(&st, now).await?;
    let r = build(&st, week, q.site(), now).await?;
    Ok(Json(WeeklyReport {
        week: r.week.to_string(),
        partial: r.partial(),
        time_zone: r.time_zone,
        start: r.start,
        end: r.end,
        site: r.site,
        // This week's: its end once it is accounted through (as the CSV and Parquet say).
        accounted_until: r.accounted_until.map(|t| t.min(r.end)),
        idle_util_pct: r.idle_util_pct,
        rows: r.rows,
        days: r.days,
        actions: r.actions,
        notes: r.notes,
    }))
}

/// What happened to a batch of facility readings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadingsStored {
    pub stored: usize,
    pub rejected: usize,
    /// Why each rejected reading was refused, by its position in the batch (the first
    /// 1,000; `rejected` counts them all).
    pub errors: Vec<ReadingRejected>,
    /// Sites of stored readings that no host in the fleet reports: they are kept, but no
    /// report uses them until hosts report the site (check the spelling: `fra1`, not
    /// `FRA1`).
    pub unknown_sites: Vec<String>,
}

/// A reading that was not stored.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadingRejected {
    pub index: usize,
    pub reason: String,
}

/// Facility meter readings (operator or admin): energy each site drew from the grid over
/// an interval.
///
/// Hours they cover use the metered energy, so the site's PUE is measured. A reading for
/// the same site and start replaces the earlier one; invalid readings (a field of the
/// wrong type included) are reported by index while the valid ones are stored.
#[utoipa::path(
    post,
    path = "/api/v1/facility/readings",
    tag = "energy",
    request_body = Vec<FacilityReading>,
    responses(
        (status = 200, description = "Stored and rejected counts (some stored).", body = ReadingsStored),
        (status = 422, description = "Every reading was rejected: the same body, nothing stored (a script's `curl -f` notices).", body = ReadingsStored),
        (status = 400, description = "Not a JSON array (a reading that does not decode is rejected by index, with the field, and the others are stored).", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the operator role.", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
    )
)]
pub async fn readings(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    _q: super::params::ApiQuery<super::params::NoParams>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    require(&user, Role::Operator)?;
    // Each reading kept as its text: decoded from a parsed value, a field given twice
    // would keep its last value silently (`"site"` twice stored the reading for the second).
    let Readings(items) = super::body::json(
        &st,
        &headers,
        body,
        super::body::Shape::Array,
        "a JSON array of {site, start, end, energy_kwh}",
    )
    .await?;
    // A reading that does not decode is rejected at its index like one that fails its
    // checks; it does not sink the others.
    let mut rejected = Vec::new();
    let mut readings = Vec::with_capacity(items.len());
    let mut index = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let mut de = serde_json::Deserializer::from_str(item.get());
        match serde_path_to_error::deserialize::<_, FacilityReading>(&mut de) {
            Ok(r) => {
                index.push(i);
                readings.push(r);
            }
            Err(e) => rejected.push((i, super::body::field_error(e))),
        }
    }
    let (stored, refused) = inputs::store_readings(&st.store, &readings, Utc::now()).await?;
    if stored > 0 {
        st.energy_reports.clear();
    }
    let refused_at: std::collections::HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
    let kept: Vec<String> = readings
        .iter()
        .enumerate()
        .filter(|(i, _)| !refused_at.contains(i))
        .map(|(_, r)| r.site.clone())
        .collect();
    rejected.extend(refused.into_iter().map(|(i, why)| (index[i], why)));
    rejected.sort_by_key(|(i, _)| *i);
    let unknown_sites = inputs::sites_without_hosts(&st.store, &kept).await?;
    let status = if stored == 0 && !rejected.is_empty() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    let body = ReadingsStored {
        stored,
        unknown_sites,
        rejected: rejected.len(),
        errors: rejected
            .into_iter()
            .take(crate::model::validate::MAX_REJECTIONS_LISTED)
            .map(|(index, reason)| ReadingRejected { index, reason })
            .collect(),
    };
    Ok((status, Json(body)).into_response())
}

/// Readings one request may carry: a year of 15-minute readings of ten sites.
pub const MAX_READINGS: usize = 400_000;

/// A batch of readings, each kept as its text, refused at the first past [`MAX_READINGS`]
/// while it is read.
struct Readings(Vec<Box<serde_json::value::RawValue>>);

impl<'de> Deserialize<'de> for Readings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = Readings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a JSON array of at most {MAX_READINGS} readings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Readings, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = a.next_element::<Box<serde_json::value::RawValue>>()? {
                    if out.len() == MAX_READINGS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_READINGS} readings in one request; send them in parts"
                        )));
                    }
                    out.push(item);
                }
                Ok(Readings(out))
            }
        }
        d.deserialize_seq(Seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_render_as_html_without_dead_links_or_raw_html() {
        let h = doc_html("# T\n\nSee [B](BENCHMARKS.md) and [R](https://example.org).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nx -> y\n```\n\n<script>x</script>\n");
        assert!(h.contains("<h1>T</h1>"), "{h}");
        assert!(
            h.contains("See B and <a href=\"https://example.org\">R</a>"),
            "{h}"
        );
        assert!(
            h.contains("<div class=\"scroll\"><table>") && h.contains("<td>2</td>"),
            "{h}"
        );
        assert!(
            h.contains("<div class=\"scroll\">\n<pre><code>x -&gt; y\n</code></pre>\n</div>"),
            "{h}"
        );
        assert!(
            h.contains("&lt;script&gt;") && !h.contains("<script>"),
            "{h}"
        );
        let doc = ENERGY_HTML.as_str();
        assert!(
            doc.starts_with("<h1>") && !doc.contains("BENCHMARKS.md\""),
            "{doc}"
        );
    }
}
