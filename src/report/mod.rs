//! Reports for people outside the control room: the weekly energy-efficiency report
//! (figures, exports, the scheduled mail).

pub mod energy;
pub mod export;
pub mod inputs;
pub mod mail;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// An ISO 8601 week, e.g. `2026-W47` (Monday to Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsoWeek {
    pub year: i32,
    pub week: u32,
}

impl IsoWeek {
    /// The week that contains `t` in time zone `tz`.
    pub fn containing(t: DateTime<Utc>, tz: Tz) -> IsoWeek {
        let w = t.with_timezone(&tz).date_naive().iso_week();
        IsoWeek {
            year: w.year(),
            week: w.week(),
        }
    }

    pub fn monday(&self) -> NaiveDate {
        NaiveDate::from_isoywd_opt(self.year, self.week, chrono::Weekday::Mon)
            .expect("validated week")
    }

    /// The previous week.
    pub fn prev(&self) -> IsoWeek {
        let d = self.monday() - Duration::days(7);
        let w = d.iso_week();
        IsoWeek {
            year: w.year(),
            week: w.week(),
        }
    }

    /// The next week.
    pub fn next(&self) -> IsoWeek {
        let d = self.monday() + Duration::days(7);
        let w = d.iso_week();
        IsoWeek {
            year: w.year(),
            week: w.week(),
        }
    }

    /// First instant of the week in `tz` (Monday 00:00 local), as UTC.
    pub fn start(&self, tz: Tz) -> DateTime<Utc> {
        local_midnight(self.monday(), tz)
    }

    /// First instant after the week (next Monday 00:00 local), as UTC. A week that
    /// contains a daylight-saving change is 167 or 169 hours long.
    pub fn end(&self, tz: Tz) -> DateTime<Utc> {
        local_midnight(self.monday() + Duration::days(7), tz)
    }
}

/// The first instant of `day` in `tz`. Where midnight does not exist (a DST change at
/// 00:00), the day starts at the first valid local time after it.
pub fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).expect("midnight");
    for _ in 0..4 {
        if let Some(d) = tz.from_local_datetime(&t).earliest() {
            return d.with_timezone(&Utc);
        }
        t += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
}

impl fmt::Display for IsoWeek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-W{:02}", self.year, self.week)
    }
}

impl FromStr for IsoWeek {
    type Err = String;

    fn from_str(s: &str) -> Result<IsoWeek, String> {
        let bad = || format!("week {s:?} is not an ISO week like 2026-W47");
        let (y, w) = s.trim().split_once(['-']).ok_or_else(bad)?;
        let w = w.strip_prefix(['W', 'w']).ok_or_else(bad)?;
        let year: i32 = y.parse().map_err(|_| bad())?;
        let week: u32 = w.parse().map_err(|_| bad())?;
        if !(1970..=9999).contains(&year) {
            return Err(format!("week {s:?}: the year {year} is outside 1970–9999"));
        }
        if NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon).is_none() {
            return Err(format!("{year} has no ISO week {week}"));
        }
        Ok(IsoWeek { year, week })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_weeks() {
        let w: IsoWeek = "2026-W47".parse().unwrap();
        assert_eq!(w.to_string(), "2026-W47");
        assert_eq!(w.monday(), NaiveDate::from_ymd_opt(2026, 11, 16).unwrap());
        assert_eq!(w.prev().to_string(), "2026-W46");
        let first: IsoWeek = "2026-W01".parse().unwrap();
        assert_eq!(first.prev().to_string(), "2025-W52");
        assert!("2026-W54"
            .parse::<IsoWeek>()
            .unwrap_err()
            .contains("no ISO week"));
        assert!("2026-47".parse::<IsoWeek>().is_err());
        assert!("last week".parse::<IsoWeek>().is_err());
        // 2026 has 53 ISO weeks.
        assert!("2026-W53".parse::<IsoWeek>().is_ok());
        assert_eq!(
            "1900-W01".parse::<IsoWeek>().unwrap_err(),
            "week \"1900-W01\": the year 1900 is outside 1970–9999"
        );
    }

    #[test]
    fn week_bounds_follow_the_time_zone_and_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // DST ends on Sunday 2026-10-25: that week has 169 hours.
        let w: IsoWeek = "2026-W43".parse().unwrap();
        assert_eq!(w.start(berlin).to_rfc3339(), "2026-10-18T22:00:00+00:00");
        assert_eq!(w.end(berlin).to_rfc3339(), "2026-10-25T23:00:00+00:00");
        assert_eq!((w.end(berlin) - w.start(berlin)).num_hours(), 169);
        // DST starts on Sunday 2026-03-29: 167 hours.
        let w: IsoWeek = "2026-W13".parse().unwrap();
        assert_eq!((w.end(berlin) - w.start(berlin)).num_hours(), 167);
        // Sunday 23:30 local belongs to the week, Monday 00:30 to the next.
        let sun = berlin.with_ymd_and_hms(2026, 11, 22, 23, 30, 0).unwrap();
        assert_eq!(
            IsoWeek::containing(sun.with_timezone(&Utc), berlin).to_string(),
            "2026-W47"
        );
        let mon = berlin.with_ymd_and_hms(2026, 11, 23, 0, 30, 0).unwrap();
        assert_eq!(
            IsoWeek::containing(mon.with_timezone(&Utc), berlin).to_string(),
            "2026-W48"
        );
        // Where midnight does not exist (Santiago springs forward at 00:00).
        let scl: Tz = "America/Santiago".parse().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let t = local_midnight(d, scl).with_timezone(&scl);
        assert_eq!(t.date_naive(), d);
    }
}
