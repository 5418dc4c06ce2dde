//! Numbers with units, for pages, mails and reports. Binary prefixes for memory, decimal
//! for rates.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// `1 host`, `2 hosts`: a count with its noun.
pub fn count<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Append `v` with `decimals` digits after the point, exactly as `format!("{v:.N}")`
/// would. Pages print thousands of numbers (chart coordinates, heatmap labels), and the
/// standard exact formatting often falls back to a slow bignum algorithm; away from a
/// rounding tie, rounding the scaled value as an integer gives the same digits.
pub fn push_fixed(out: &mut String, v: f64, decimals: usize) {
    const SCALE: [f64; 3] = [1.0, 10.0, 100.0];
    if decimals < SCALE.len() && v.is_finite() && v.abs() < 1e12 {
        let t = v.abs() * SCALE[decimals];
        if (t - t.floor() - 0.5).abs() > 1e-6 {
            let r = t.round() as u64;
            let p = SCALE[decimals] as u64;
            if v.is_sign_negative() {
                out.push('-');
            }
            let _ = write!(out, "{}", r / p);
            if decimals > 0 {
                let _ = write!(out, ".{:0w$}", r % p, w = decimals);
            }
            return;
        }
    }
    let _ = write!(out, "{v:.decimals$}");
}

/// `12.3 GiB`
pub fn bytes(v: Option<f64>) -> String {
    let Some(v) = v else { return "–".into() };
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v;
    let mut i = 0;
    while x >= 1024.0 && i < U.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    num(Some(x), usize::from(i > 0), U[i])
}

/// `12.3 MB/s`
pub fn rate(v: Option<f64>) -> String {
    let Some(v) = v else { return "–".into() };
    const U: [&str; 5] = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let mut x = v;
    let mut i = 0;
    while x >= 1000.0 && i < U.len() - 1 {
        x /= 1000.0;
        i += 1;
    }
    num(Some(x), usize::from(i > 0), U[i])
}

/// A number with a unit and fixed decimals, or a dash.
pub fn num(v: Option<f64>, decimals: usize, unit: &str) -> String {
    let Some(x) = v else { return "–".into() };
    let mut s = String::with_capacity(8 + unit.len());
    push_fixed(&mut s, x, decimals);
    if !unit.is_empty() {
        s.push(' ');
        s.push_str(unit);
    }
    s
}

/// `42 s ago`, `3 min ago`, `never`.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "never".into() };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(Some(85_899_345_920.0)), "80.0 GiB");
        assert_eq!(bytes(Some(512.0)), "512 B");
        assert_eq!(rate(Some(12_345_678.0)), "12.3 MB/s");
        assert_eq!(num(Some(650.46), 0, "W"), "650 W");
        assert_eq!(num(None, 0, "W"), "–");
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        assert_eq!(
            age(Some(now - chrono::Duration::seconds(42)), now),
            "42 s ago"
        );
        assert_eq!(age(Some(now - chrono::Duration::hours(3)), now), "3 h ago");
    }

    #[test]
    fn fixed_formatting_matches_the_standard_library() {
        let mut values = vec![
            0.0,
            -0.0,
            0.05,
            0.15,
            0.25,
            0.5,
            1.5,
            2.5,
            -0.4,
            -1.25,
            2.675,
            153.5,
            64.5,
            99.95,
            1e11,
            -3.25159,
            1e13,
            f64::NAN,
            f64::INFINITY,
            1.0 / 3.0,
        ];
        let mut x = 0.123_456_7_f64;
        for _ in 0..2000 {
            x = (x * 7919.0 + 0.618).fract() * 1000.0 - 200.0;
            values.push(x);
            values.push((x * 10.0).round() / 10.0 + 0.05);
        }
        for v in values {
            for d in 0..4 {
                let mut s = String::new();
                push_fixed(&mut s, v, d);
                assert_eq!(s, format!("{v:.d$}"), "{v} with {d} decimals");
            }
        }
    }
}

/// The tick step of an axis that reaches `max` in at most five steps: 1, 2 or 5 × 10^k.
pub fn nice_step(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// Round ticks from 0 to at least `max` (1, 2 or 5 × 10^k apart, at most five steps), and
/// the decimals that tell them apart.
pub fn axis_ticks(max: f64) -> (Vec<f64>, usize) {
    let step = nice_step(max);
    let top = if max > 0.0 {
        (max / step - 1e-9).ceil().max(1.0) * step
    } else {
        step
    };
    let n = (top / step).round() as usize;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    ((0..=n).map(|i| i as f64 * step).collect(), decimals)
}

/// About how wide `s` is in pixels at `font_px` in the dashboard's sans-serif font: digits
/// and most letters are about 0.6 em, narrow ones less, wide ones more. Errs on the wide
/// side so that labels placed with it are not clipped.
pub fn text_px(s: &str, font_px: f64) -> f64 {
    s.chars()
        .map(|c| match c {
            ' ' | '.' | ',' | ':' | 'i' | 'l' | 'I' | '1' | '|' | '\'' => 0.36,
            'm' | 'w' | 'M' | 'W' | '%' | '°' => 0.9,
            c if c.is_ascii_uppercase() => 0.7,
            _ => 0.6,
        })
        .sum::<f64>()
        * font_px
}

/// The first `max` characters of `s`, when it has more (`None` when it fits).
pub fn longer_than(s: &str, max: usize) -> Option<&str> {
    s.char_indices().nth(max).map(|(i, _)| &s[..i])
}

/// A text cell for a CSV file that people open in a spreadsheet: one that starts like a
/// formula (`=`, `+`, `-`, `@`, tab or carriage return) gets a leading `'`, which
/// spreadsheets show as text instead of evaluating (names come from agents, and a host
/// named `=HYPERLINK(…)` must not run in a planner's spreadsheet).
pub fn spreadsheet_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tick_tests {
    use super::*;

    #[test]
    fn spreadsheet_text_keeps_formulas_from_running() {
        assert_eq!(spreadsheet_text("=2+3"), "'=2+3");
        assert_eq!(spreadsheet_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(spreadsheet_text("-1+2"), "'-1+2");
        assert_eq!(spreadsheet_text("\t=1"), "'\t=1");
        assert_eq!(spreadsheet_text("gpu-17"), "gpu-17");
        assert_eq!(spreadsheet_text(""), "");
    }

    #[test]
    fn ticks_are_round_and_reach_the_maximum() {
        assert_eq!(
            axis_ticks(1645.0).0,
            vec![0.0, 500.0, 1000.0, 1500.0, 2000.0]
        );
        assert_eq!(axis_ticks(1234.0).0, vec![0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(
            axis_ticks(100.0).0,
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(axis_ticks(7.3).0, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        let (t, d) = axis_ticks(0.9);
        assert_eq!((t.len(), d), (6, 1));
        assert!((t[5] - 1.0).abs() < 1e-9);
        // Nothing to show: one step, no repeated labels.
        assert_eq!(axis_ticks(0.0).0, vec![0.0, 1.0]);
        for m in [0.03, 1.0, 3.7, 42.0, 411.0, 823.0, 4.55, 1e6] {
            let (t, _) = axis_ticks(m);
            let step = t[1];
            let mant = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|x| (mant - x).abs() < 1e-6),
                "{m}: {t:?}"
            );
            assert!(*t.last().unwrap() >= m && t.len() <= 6, "{m}: {t:?}");
        }
        assert!(text_px("1645 kWh", 11.0) > text_px("164 kWh", 11.0));
    }
}
