//! Facility inputs of the energy report: meter readings (API and CLI) and hourly grid
//! carbon intensity (CSV import). Every value is validated; a bad line is reported with
//! its position and never stops the good ones.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Deserialize;

use crate::store::Store;

/// Energy a site drew from the grid over `[start, end)`.
#[derive(Debug, Clone, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"site": "fra1", "start": "2026-11-23T10:00:00Z",
                          "end": "2026-11-23T11:00:00Z", "energy_kwh": 412.5}))]
pub struct FacilityReading {
    pub site: String,
    pub start: DateTime<Utc>,
    /// After `start`, at most 31 days later, not in the future.
    pub end: DateTime<Utc>,
    /// Energy the site's meter counted over the interval.
    #[schema(minimum = 0)]
    pub energy_kwh: f64,
}

/// Longest interval one reading may cover.
pub(crate) const MAX_READING_DAYS: i64 = 31;

impl FacilityReading {
    /// Why this reading cannot be stored, if it cannot.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        if self.site.trim().is_empty() || self.site.len() > 128 {
            return Err("site must be 1 to 128 characters".into());
        }
        // Postgres cannot store U+0000; one such reading must not sink the others.
        if self.site.chars().any(crate::model::validate::hidden_char) {
            return Err("site contains control or text-direction characters".into());
        }
        if self.end <= self.start {
            return Err(format!(
                "end {} is not after start {}",
                self.end, self.start
            ));
        }
        if self.end - self.start > Duration::days(MAX_READING_DAYS) {
            return Err(format!("interval longer than {MAX_READING_DAYS} days"));
        }
        if self.end > now + Duration::minutes(5) {
            return Err(format!("end {} is in the future", self.end));
        }
        if !self.energy_kwh.is_finite() || self.energy_kwh < 0.0 {
            return Err(format!(
                "energy_kwh {} must be a non-negative number",
                self.energy_kwh
            ));
        }
        // 1 GW for the whole interval: far above any site, catches Wh sent as kWh.
        let hours = (self.end - self.start).num_seconds() as f64 / 3600.0;
        if self.energy_kwh > 1e6 * hours {
            return Err(format!(
                "energy_kwh {:.4e} over {hours:.2} h is more than 1 GW: check the unit (kWh)",
                self.energy_kwh
            ));
        }
        Ok(())
    }
}

/// Store the valid readings (a reading for the same site and start replaces the old
/// one); returns how many were stored and, for the others, their position and reason.
///
/// A site's readings are checked and stored under a lock per site, so two uploads at
/// once cannot both pass the overlap check; up to [`READINGS_PER_COMMIT`] of them in one
/// transaction (a commit per reading made a year of quarter-hours outlast the request
/// timeout).
pub async fn store_readings(
    store: &Store,
    readings: &[FacilityReading],
    now: DateTime<Utc>,
) -> Result<(usize, Vec<(usize, String)>), sqlx::Error> {
    let mut rejected = Vec::new();
    let mut stored = 0;
    let mut valid: Vec<(usize, &FacilityReading)> = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        match r.check(now) {
            Ok(()) => valid.push((i, r)),
            Err(e) => rejected.push((i, e)),
        }
    }
    // Each site's readings in the order sent.
    valid.sort_by(|a, b| a.1.site.cmp(&b.1.site).then(a.0.cmp(&b.0)));
    for chunk in valid.chunk_by(|a, b| a.1.site == b.1.site) {
        for part in chunk.chunks(READINGS_PER_COMMIT) {
            let site = &part[0].1.site;
            let mut tx = store.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('facility_readings:' || $1))")
                .bind(site)
                .execute(&mut *tx)
                .await?;
            for &(i, r) in part {
                // A reading that overlaps another of the site (not the one it replaces,
                // and the ones stored before it in this transaction included) would
                // count the overlap twice.
                let overlap = sqlx::query!(
                    "SELECT start_ts, end_ts FROM facility_readings
                      WHERE site = $1 AND start_ts <> $2 AND start_ts < $3 AND end_ts > $2
                        AND start_ts > $2 - interval '31 days'
                      ORDER BY start_ts LIMIT 1",
                    &r.site,
                    r.start,
                    r.end,
                )
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(o) = overlap {
                    rejected.push((
                        i,
                        format!(
                            "overlaps the stored reading of site {} from {} to {}: readings must not overlap; to correct that one, send it again with its start",
                            r.site,
                            o.start_ts.to_rfc3339(),
                            o.end_ts.to_rfc3339()
                        ),
                    ));
                    continue;
                }
                sqlx::query!(
                    "INSERT INTO facility_readings (site, start_ts, end_ts, energy_kwh) VALUES ($1, $2, $3, $4)
             ON CONFLICT (site, start_ts) DO UPDATE SET end_ts = EXCLUDED.end_ts,
                 energy_kwh = EXCLUDED.energy_kwh, received_at = now()",
                    &r.site,
                    r.start,
                    r.end,
                    r.energy_kwh,
                )
                .execute(&mut *tx)
                .await?;
                stored += 1;
            }
            tx.commit().await?;
        }
    }
    rejected.sort_by_key(|(i, _)| *i);
    Ok((stored, rejected))
}

/// Readings stored in one transaction, at most.
const READINGS_PER_COMMIT: usize = 1000;

/// Of `sites`, those no host in the fleet reports (sorted, once each): their readings
/// and carbon hours are stored, but no report uses them until hosts report the site, so
/// a typo (`FRA1` for `fra1`) would go unnoticed.
pub async fn sites_without_hosts(
    store: &Store,
    sites: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let mut sites = sites.to_vec();
    sites.sort();
    sites.dedup();
    sqlx::query_scalar!(
        r#"SELECT s AS "site!" FROM unnest($1::text[]) AS s
            WHERE NOT EXISTS (SELECT 1 FROM hosts h WHERE h.site = s AND h.removed_at IS NULL)
            ORDER BY 1"#,
        &sites
    )
    .fetch_all(&store.pool)
    .await
}

/// An hour and its value.
pub type HourValue = (DateTime<Utc>, f64);
/// A 1-based line number and what is wrong with the line.
pub type LineError = (usize, String);

/// Parse a carbon-intensity CSV: a header naming `hour` (RFC 3339, the start of the
/// hour) and `g_co2_per_kwh`, then one line per hour. Returns the good rows and the bad
/// lines (1-based line number, reason).
pub fn parse_carbon_csv(text: &str) -> (Vec<HourValue>, Vec<LineError>) {
    // A spreadsheet's "CSV UTF-8" starts with a byte-order mark, and may quote fields.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let field = |f: &str| {
        let f = f.trim();
        f.strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(f)
            .trim()
            .to_string()
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bad.push((
            1,
            "empty file: expected a header `hour,g_co2_per_kwh`".into(),
        ));
        return (good, bad);
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| field(c).to_ascii_lowercase())
        .collect();
    let (Some(hi), Some(gi)) = (
        cols.iter().position(|c| c == "hour"),
        cols.iter().position(|c| c == "g_co2_per_kwh"),
    ) else {
        bad.push((
            1,
            format!("header {header:?} must name the columns `hour` and `g_co2_per_kwh`"),
        ));
        return (good, bad);
    };
    // Each hour once: the first line that gave it, for the error of a repeat.
    let mut seen: std::collections::HashMap<DateTime<Utc>, usize> = Default::default();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<String> = line.split(',').map(field).collect();
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        let (Some(h), Some(g)) = (f.get(hi), f.get(gi)) else {
            bad.push((
                n,
                format!("expected {} fields, found {}", cols.len(), f.len()),
            ));
            continue;
        };
        let hour = match DateTime::parse_from_rfc3339(h) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                bad.push((n, format!("hour {h:?} is not an RFC 3339 time: {e}")));
                continue;
            }
        };
        if hour.duration_trunc(Duration::hours(1)).ok() != Some(hour) {
            bad.push((n, format!("hour {h:?} is not the start of an hour")));
            continue;
        }
        if let Some(first) = seen.insert(hour, n) {
            seen.insert(hour, first);
            bad.push((
                n,
                format!("hour {h:?} is given again (first on line {first})"),
            ));
            continue;
        }
        match g.parse::<f64>() {
            // No grid is below 1 g CO2e/kWh but one that is exactly 0 (a contract):
            // 0.4 is kg/kWh, which would make carbon 1,000 times too low.
            Ok(v) if v > 0.0 && v < 1.0 => bad.push((
                n,
                format!(
                    "g_co2_per_kwh {g:?} is below 1: the unit is grams per kWh (0.4 kg/kWh is 400)"
                ),
            )),
            Ok(v) if v.is_finite() && (0.0..=5000.0).contains(&v) => good.push((hour, v)),
            _ => bad.push((
                n,
                format!("g_co2_per_kwh {g:?} must be a number between 0 and 5000"),
            )),
        }
    }
    (good, bad)
}

/// Store hourly intensities of `site` (replacing values of the same hours).
pub async fn store_carbon(
    store: &Store,
    site: &str,
    rows: &[(DateTime<Utc>, f64)],
) -> Result<u64, sqlx::Error> {
    let (hours, values): (Vec<DateTime<Utc>>, Vec<f64>) = rows.iter().copied().unzip();
    Ok(sqlx::query!(
        "INSERT INTO grid_intensity (site, hour, g_co2_per_kwh)
         SELECT $1, h, g FROM unnest($2::timestamptz[], $3::float8[]) AS t (h, g)
         ON CONFLICT (site, hour) DO UPDATE SET g_co2_per_kwh = EXCLUDED.g_co2_per_kwh",
        site,
        &hours,
        &values,
    )
    .execute(&store.pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carbon_csv_reports_bad_lines_and_keeps_good_ones() {
        let (good, bad) = parse_carbon_csv(
            "hour,g_co2_per_kwh\n2026-11-16T00:00:00Z,320\n2026-11-16T01:00:00+01:00,abc\n\
             2026-11-16T01:30:00Z,300\nyesterday,1\n2026-11-16T02:00:00Z,-5\n2026-11-16T03:00:00Z,280.5\n",
        );
        assert_eq!(good.len(), 2);
        assert_eq!(good[1].1, 280.5);
        let lines: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, vec![3, 4, 5, 6]);
        assert!(bad[1].1.contains("start of an hour"), "{bad:?}");
        let (_, bad) = parse_carbon_csv("time,value\n");
        assert!(bad[0].1.contains("hour"), "{bad:?}");
        // An hour given twice (here once in another offset) is a bad line, not a database
        // error that sinks the file.
        let (good, bad) = parse_carbon_csv(
            "hour,g_co2_per_kwh\n2026-11-16T00:00:00Z,320\n2026-11-16T01:00:00+01:00,310\n",
        );
        assert_eq!(good.len(), 1);
        assert_eq!(
            bad,
            vec![(
                3,
                "hour \"2026-11-16T01:00:00+01:00\" is given again (first on line 2)".to_string()
            )]
        );
    }

    #[test]
    fn carbon_csv_takes_a_spreadsheets_bom_and_quotes_and_refuses_kg() {
        let (good, bad) = parse_carbon_csv(
            "\u{feff}\"hour\",\"g_co2_per_kwh\"\n\"2026-11-16T00:00:00Z\",\"320\"\n2026-11-16T01:00:00Z,0.4\n2026-11-16T02:00:00Z,0\n",
        );
        assert_eq!(good.len(), 2, "{bad:?}");
        assert_eq!(good[0].1, 320.0);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 3);
        assert!(bad[0].1.contains("grams per kWh"), "{bad:?}");
    }

    #[test]
    fn readings_are_checked() {
        let now = Utc::now();
        let r = FacilityReading {
            site: "fra1".into(),
            start: now - Duration::hours(2),
            end: now - Duration::hours(1),
            energy_kwh: 500.0,
        };
        assert!(r.check(now).is_ok());
        let mut b = r.clone();
        b.end = b.start;
        assert!(b.check(now).unwrap_err().contains("not after"));
        let mut b = r.clone();
        b.energy_kwh = f64::NAN;
        assert!(b.check(now).is_err());
        let mut b = r.clone();
        b.energy_kwh = 5e6;
        assert!(b.check(now).unwrap_err().contains("1 GW"));
        let mut b = r.clone();
        b.site = " ".into();
        assert!(b.check(now).is_err());
        let mut b = r;
        b.site = "fra\u{0}1".into();
        assert!(b.check(now).unwrap_err().contains("control"));
    }
}
