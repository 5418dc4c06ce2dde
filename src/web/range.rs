//! The time range of a page, from its URL: a preset (`range=6h`) or a custom
//! `from`/`to`, so a copied link reproduces the view. Also decides whether charts read
//! raw samples or rollups, and how wide one bucket (one pixel column) is.

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::urlencode;
use super::charts::PLOT_PX;
use super::error::ApiError;
use crate::store::series::Source;

/// Preset ranges: (URL key, seconds, label).
pub const PRESETS: [(&str, i64, &str); 6] = [
    ("15m", 900, "15 min"),
    ("1h", 3600, "1 h"),
    ("6h", 6 * 3600, "6 h"),
    ("24h", 24 * 3600, "24 h"),
    ("7d", 7 * 86_400, "7 d"),
    ("30d", 30 * 86_400, "30 d"),
];

/// On a GPU's page, ranges up to this long read raw samples; longer ones read 1-minute
/// rollups. At 6 h a pixel column holds ~38 s, so raw samples still add detail a rollup
/// would hide.
pub const RAW_MAX_SECS: i64 = 6 * 3600;
/// Host and rack pages draw every GPU or host of the page on one chart, and read raw
/// samples only up to this range: from 1 h on, one point per minute (60 per hour) is as
/// much as eight overlaid lines can show, and reads 12× fewer rows.
pub const OVERVIEW_RAW_MAX_SECS: i64 = 30 * 60;
/// From this many seconds per pixel column (ranges over ~6 days), charts read the
/// 15-minute rollups.
pub const QUARTER_SECS: i64 = 900;
/// Longest custom range: the 1-minute rollups are kept 90 days.
pub const MAX_RANGE_DAYS: i64 = 90;

/// The largest `tzo`: 16 hours (time zones run from UTC−12 to UTC+14).
const MAX_TZO: i32 = 16 * 60;

/// The query parameters of a page with a range (host, GPU; the rack page adds its
/// heatmap's `metric`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    pub range: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The browser's `getTimezoneOffset()` in minutes, for `datetime-local` inputs.
    pub tzo: Option<i32>,
}

/// The range parameters of the host, GPU and rack endpoints as the API document lists
/// them (they are read by [`RangeParams`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeDoc {
    /// Preset: 15m, 1h, 6h, 24h, 7d or 30d (default 1h).
    #[param(example = "6h")]
    range: Option<String>,
    /// Custom start instead of a preset: RFC 3339, or YYYY-MM-DDTHH:MM in the viewer's
    /// zone with `tzo`. At most 90 days before `to`.
    #[param(example = "2026-11-23T06:00:00Z")]
    from: Option<String>,
    /// Custom end (default now).
    to: Option<String>,
    /// Minutes UTC − local, for YYYY-MM-DDTHH:MM times (a browser's
    /// `getTimezoneOffset()`).
    #[param(minimum = -960, maximum = 960)]
    tzo: Option<i32>,
}

/// A custom range a page could not show: why, and the times as typed (UTC).
#[derive(Debug, Clone)]
pub struct RangeProblem {
    pub why: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// A resolved range.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Preset key, or `custom`.
    #[schema(schema_with = range_keys)]
    pub key: String,
    /// Raw samples; 1-minute rollups; or 15-minute rollups when a point spans a
    /// quarter-hour or more (ranges over ~6 days). Rollup sources add the minutes the
    /// rollup job has not reached yet, rolled up from finer data. GPU pages read raw
    /// samples up to 6 h, host and rack pages up to 30 min.
    pub source: Source,
    /// Seconds per point (about one pixel column).
    pub bucket_secs: i64,
}

fn range_keys() -> utoipa::openapi::schema::Object {
    let mut keys: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
    keys.push("custom");
    crate::model::schema::one_of(&keys)
}

/// `tzo` within the world's time zones.
fn check_tzo(tzo: i32) -> Result<(), ApiError> {
    if tzo.abs() > MAX_TZO {
        return Err(ApiError::BadRequest(format!(
            "`tzo` = {tzo}: minutes of UTC − local time (a browser's getTimezoneOffset()), from −{MAX_TZO} to {MAX_TZO}"
        )));
    }
    Ok(())
}

/// A time from a query or form field: RFC 3339, or a `datetime-local` value in the viewer's
/// zone (`tzo` = UTC − local in minutes, as `getTimezoneOffset()` gives it).
pub fn parse_time(field: &str, s: &str, tzo: i32) -> Result<DateTime<Utc>, ApiError> {
    check_tzo(tzo)?;
    // Years a fleet's data can have: far ones would overflow the arithmetic on ranges.
    let sane = |t: Option<DateTime<Utc>>| match t {
        Some(t) if (1970..=9999).contains(&t.year()) => Ok(t),
        _ => Err(ApiError::BadRequest(format!(
            "`{field}` = {} is outside the years 1970 to 9999",
            crate::model::validate::quoted(s)
        ))),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return sane(Some(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            // datetime-local is the viewer's wall clock; tzo = UTC − local in minutes.
            return sane(
                n.and_utc()
                    .checked_add_signed(Duration::minutes(i64::from(tzo))),
            );
        }
    }
    // A `+` of an offset arrives as a space when the URL does not encode it.
    let plus = if s.contains(' ') {
        " (a `+` in a URL must be written %2B, or it reads as a space)"
    } else {
        ""
    };
    Err(ApiError::BadRequest(format!(
        "`{field}` = {} is not a time: use RFC 3339 (2026-11-23T12:00:00Z) or 2026-11-23T12:00{plus}",
        crate::model::validate::quoted(s)
    )))
}

impl RangeParams {
    /// The range these parameters ask for on a GPU page; `default_key` when none is given.
    pub fn resolve(&self, now: DateTime<Utc>, default_key: &str) -> Result<TimeRange, ApiError> {
        self.resolve_with(now, default_key, RAW_MAX_SECS)
    }

    /// The range for a host or rack page (rollups from `OVERVIEW_RAW_MAX_SECS` on).
    pub fn resolve_overview(
        &self,
        now: DateTime<Utc>,
        default_key: &str,
    ) -> Result<TimeRange, ApiError> {
        self.resolve_with(now, default_key, OVERVIEW_RAW_MAX_SECS)
    }

    /// The range for a page (`overview`: host and rack pages). A custom from/to that
    /// cannot be shown (the end before the start, a span over the limit) gives the
    /// default preset and what was wrong, for the picker to show next to the times as
    /// they were typed, instead of an error page; other bad parameters are errors.
    pub fn resolve_page(
        &self,
        now: DateTime<Utc>,
        default_key: &str,
        overview: bool,
    ) -> Result<(TimeRange, Option<RangeProblem>), ApiError> {
        let raw_max = if overview {
            OVERVIEW_RAW_MAX_SECS
        } else {
            RAW_MAX_SECS
        };
        let custom = [&self.from, &self.to]
            .iter()
            .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
        match self.resolve_with(now, default_key, raw_max) {
            Ok(r) => Ok((r, None)),
            Err(ApiError::BadRequest(why)) if custom => {
                let tzo = self.tzo.unwrap_or(0);
                let typed = |v: &Option<String>| {
                    v.as_deref()
                        .filter(|s| !s.is_empty())
                        .and_then(|s| parse_time("", s, tzo).ok())
                };
                let fallback = RangeParams::default().resolve_with(now, default_key, raw_max)?;
                Ok((
                    fallback,
                    Some(RangeProblem {
                        why,
                        from: typed(&self.from),
                        to: typed(&self.to),
                    }),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn resolve_with(
        &self,
        now: DateTime<Utc>,
        default_key: &str,
        raw_max_secs: i64,
    ) -> Result<TimeRange, ApiError> {
        let from = self.from.as_deref().filter(|s| !s.is_empty());
        let to = self.to.as_deref().filter(|s| !s.is_empty());
        let tzo = self.tzo.unwrap_or(0);
        check_tzo(tzo)?;
        // A parameter that would be ignored is an error: the range shown would not be the
        // one asked for.
        if from.is_none() {
            if let Some(t) = to {
                return Err(ApiError::BadRequest(format!(
                    "`to` = {} needs `from`: a range by times has a start (`from` alone ends now), and a preset (`range`) always ends now",
                    crate::model::validate::quoted(t)
                )));
            }
        } else if self.range.as_deref().is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::BadRequest(
                "give either `range` (a preset that ends now) or `from`/`to`, not both".into(),
            ));
        }
        let (from, to, key) = if let Some(f) = from {
            let from = parse_time("from", f, tzo)?;
            let to = match to {
                Some(t) => parse_time("to", t, tzo)?,
                None => now,
            };
            if from >= to {
                return Err(ApiError::BadRequest(
                    "the range's start (`from`) must be before its end (`to`)".into(),
                ));
            }
            if to - from > Duration::days(MAX_RANGE_DAYS) {
                return Err(ApiError::BadRequest(format!(
                    "ranges up to {MAX_RANGE_DAYS} days can be shown (rollups are kept that long)"
                )));
            }
            (from, to, "custom".to_string())
        } else {
            let key = self.range.as_deref().unwrap_or(default_key);
            let Some((k, secs, _)) = PRESETS.iter().find(|p| p.0 == key) else {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                return Err(ApiError::BadRequest(format!(
                    "unknown range {}; use one of {}, or from/to",
                    crate::model::validate::quoted(key),
                    known.join(", ")
                )));
            };
            (now - Duration::seconds(*secs), now, k.to_string())
        };
        let span = (to - from).num_seconds().max(1);
        let per_px = (span + PLOT_PX as i64 - 1) / PLOT_PX as i64;
        let source = if span <= raw_max_secs {
            Source::Raw
        } else if per_px < QUARTER_SECS {
            Source::Rollup1m
        } else {
            Source::Rollup15m
        };
        // Rollup buckets hold whole rollup rows: whole minutes (rounded up), or whole
        // quarter-hours no wider than a pixel column (so at least one point per column).
        let bucket_secs = match source {
            Source::Raw => per_px.max(5),
            Source::Rollup1m => (per_px + 59) / 60 * 60,
            Source::Rollup15m => per_px / QUARTER_SECS * QUARTER_SECS,
        };
        // Rollup points start on whole multiples of their width (a point stamped 11:47:00
        // holds the minutes from 11:47:00): the start moves back to one, by less than a
        // point.
        let from = match source {
            Source::Raw => from,
            Source::Rollup1m | Source::Rollup15m => {
                let off = from.timestamp().rem_euclid(bucket_secs);
                from - Duration::seconds(off)
                    - Duration::nanoseconds(i64::from(from.timestamp_subsec_nanos()))
            }
        };
        Ok(TimeRange {
            from,
            to,
            key,
            source,
            bucket_secs,
        })
    }
}

impl TimeRange {
    /// Query string that reproduces this range (`range=6h` or `from=…&to=…`).
    pub fn query(&self) -> String {
        if self.key == "custom" {
            format!(
                "from={}&to={}",
                urlencode(&self.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                urlencode(&self.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            )
        } else {
            format!("range={}", self.key)
        }
    }

    /// Longest time between two points still drawn connected.
    /// A fixed span with points `bucket_secs` apart (pages that are not live ranges).
    pub fn fixed(from: DateTime<Utc>, to: DateTime<Utc>, bucket_secs: i64) -> TimeRange {
        TimeRange {
            from,
            to,
            key: "custom".into(),
            source: Source::Rollup15m,
            bucket_secs,
        }
    }

    pub fn gap_secs(&self) -> i64 {
        (self.bucket_secs * 3).max(60)
    }

    /// `last 6 h` or the custom span, for headings.
    pub fn label(&self) -> String {
        match PRESETS.iter().find(|p| p.0 == self.key) {
            Some(p) => format!("last {}", p.2),
            None => format!(
                "{} – {} UTC",
                self.from.format("%Y-%m-%d %H:%M"),
                self.to.format("%Y-%m-%d %H:%M")
            ),
        }
    }

    /// What the charts were drawn from, for the page footer.
    pub fn source_label(&self) -> String {
        let src = match self.source {
            Source::Raw => "raw samples",
            Source::Rollup1m => "1-minute rollups",
            Source::Rollup15m => "15-minute rollups",
        };
        format!("{src}, {} per point", step(self.bucket_secs))
    }

    /// Whether the view moves with the clock (auto-refresh makes sense).
    pub fn is_live(&self) -> bool {
        self.key != "custom"
    }
}

/// A chart step in the largest whole unit: `39 s`, `75 min`, `2 h`.
fn step(secs: i64) -> String {
    if secs >= 7200 && secs % 3600 == 0 {
        format!("{} h", secs / 3600)
    } else if secs >= 120 && secs % 60 == 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// A link of the range picker.
pub struct PresetLink {
    pub key: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// The picker's links for `current`.
pub fn preset_links(current: &TimeRange) -> Vec<PresetLink> {
    PRESETS
        .iter()
        .map(|(k, _, l)| PresetLink {
            key: k,
            label: l,
            current: current.key == *k,
        })
        .collect()
}

/// An optional time query parameter (RFC 3339, or YYYY-MM-DDTHH:MM in UTC), `default`
/// when absent or empty.
pub fn parse_rfc3339(
    field: &str,
    v: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    match v {
        None | Some("") => Ok(default),
        // As the pages and the audit log take them: RFC 3339, or 2026-11-23T12:00 in UTC.
        Some(s) => parse_time(field, s, 0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chart_steps_read_in_their_largest_whole_unit() {
        assert_eq!(step(39), "39 s");
        assert_eq!(step(60), "60 s");
        assert_eq!(step(900), "15 min");
        assert_eq!(step(4500), "75 min");
        assert_eq!(step(7200), "2 h");
        assert_eq!(step(5400), "90 min");
    }

    use super::*;

    #[test]
    fn times_at_the_ends_of_the_calendar_are_a_bad_request_not_a_panic() {
        for (s, tzo) in [
            ("+262142-12-31T23:59", 960),
            ("-262143-01-01T00:00", -960),
            ("9999-12-31T23:59", 960),
            ("1969-12-31T23:59:59Z", 0),
        ] {
            match parse_time("from", s, tzo) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(m.contains("outside the years 1970 to 9999"), "{m}")
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        assert!(parse_time("from", "2026-11-23T12:00", -60).is_ok());
    }

    #[test]
    fn presets_custom_ranges_and_resolution() {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let p = RangeParams::default();
        let r = p.resolve(now, "1h").unwrap();
        assert_eq!((r.key.as_str(), r.source), ("1h", Source::Raw));
        assert_eq!(r.bucket_secs, 7, "3600 s over 568 px");
        assert_eq!(r.query(), "range=1h");
        let r = RangeParams {
            range: Some("7d".into()),
            ..Default::default()
        }
        .resolve(now, "1h")
        .unwrap();
        assert_eq!(r.source, Source::Rollup15m);
        assert_eq!(
            r.bucket_secs, 900,
            "7 d over 568 px: 1,065 s, whole quarter-hours"
        );
        let r = RangeParams {
            range: Some("30d".into()),
            ..Default::default()
        }
        .resolve(now, "1h")
        .unwrap();
        assert_eq!((r.source, r.bucket_secs), (Source::Rollup15m, 4500));
        let r = RangeParams {
            range: Some("24h".into()),
            ..Default::default()
        }
        .resolve(now, "1h")
        .unwrap();
        assert_eq!((r.source, r.bucket_secs), (Source::Rollup1m, 180));
        // Rollup points start on whole multiples of their width, whatever the clock says.
        let odd = now + Duration::milliseconds(59_028);
        let r = p.resolve_overview(odd, "1h").unwrap();
        assert_eq!(
            r.from,
            "2026-11-23T11:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(r.to, odd);
        // Host and rack pages read rollups from 1 h on, one point per minute.
        let r = p.resolve_overview(now, "1h").unwrap();
        assert_eq!((r.source, r.bucket_secs), (Source::Rollup1m, 60));
        let r = RangeParams {
            range: Some("15m".into()),
            ..Default::default()
        }
        .resolve_overview(now, "1h")
        .unwrap();
        assert_eq!((r.source, r.bucket_secs), (Source::Raw, 5));
        // A datetime-local from a browser two hours east of UTC (offset −120 min).
        let r = RangeParams {
            from: Some("2026-11-23T10:00".into()),
            to: Some("2026-11-23T11:30".into()),
            tzo: Some(-120),
            ..Default::default()
        }
        .resolve(now, "1h")
        .unwrap();
        assert_eq!(
            r.from,
            "2026-11-23T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(r.key, "custom");
        assert_eq!(
            r.query(),
            "from=2026-11-23T08%3A00%3A00Z&to=2026-11-23T09%3A30%3A00Z"
        );
        let bad = RangeParams {
            range: Some("2w".into()),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(matches!(bad, Err(ApiError::BadRequest(m)) if m.contains("15m, 1h")));
        let backwards = RangeParams {
            from: Some("2026-11-23T10:00:00Z".into()),
            to: Some("2026-11-23T09:00:00Z".into()),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(backwards.is_err());
        // An offset no time zone has is named, not clamped into a puzzling range error.
        let far = RangeParams {
            from: Some("2026-11-23T10:00".into()),
            tzo: Some(100_000),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(
            matches!(&far, Err(ApiError::BadRequest(m)) if m.starts_with("`tzo` = 100000: minutes of UTC")),
            "{far:?}"
        );
        // A parameter that would be ignored is refused: `to` alone, `range` with `from`.
        let to_alone = RangeParams {
            to: Some("garbage".into()),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(
            matches!(&to_alone, Err(ApiError::BadRequest(m)) if m.starts_with("`to` = \"garbage\" needs `from`")),
            "{to_alone:?}"
        );
        let both = RangeParams {
            range: Some("6h".into()),
            from: Some("2026-11-23T10:00:00Z".into()),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(
            matches!(&both, Err(ApiError::BadRequest(m)) if m.contains("not both")),
            "{both:?}"
        );
        // On a page, `to` alone shows the default range with the reason at the picker.
        let (r, problem) = RangeParams {
            to: Some("2026-11-23T11:00".into()),
            ..Default::default()
        }
        .resolve_page(now, "1h", true)
        .unwrap();
        assert_eq!(r.key, "1h");
        assert!(problem.unwrap().why.contains("needs `from`"));
        // A long bad value is cut in the error, not echoed whole.
        let long = RangeParams {
            range: Some("x".repeat(60_000)),
            ..Default::default()
        }
        .resolve(now, "1h");
        assert!(
            matches!(&long, Err(ApiError::BadRequest(m)) if m.len() < 300),
            "{long:?}"
        );
    }
}
