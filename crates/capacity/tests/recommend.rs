//! The recommender's public API on synthetic pools whose right answers are known.

use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use rackwatch_capacity::{
    exhaustion, next_hour, plan, recommend, CapacityError, LeadBacktest, MarginBasis, MarginGrowth,
    MarginRule, Settings, ShortHistory, Step, Trend,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 4, 0, 0, 0).unwrap()
}

/// Deterministic pseudo-random numbers in [0, 1) (xorshift), so tests need no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A bursty training pool on 5-minute samples: a daily cycle, jobs that start and stop,
/// and a few gaps (monitor outages).
fn bursty_pool(days: usize) -> Vec<Option<f64>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut jobs = 0.0f64;
    (0..days * 288)
        .map(|i| {
            let hod = (i / 12) % 24;
            if rng.next() < 0.02 {
                jobs = (jobs + 8.0 * (rng.next() * 3.0).floor() - 8.0).clamp(0.0, 48.0);
            }
            let day = if (9..21).contains(&hod) { 16.0 } else { 4.0 };
            let v = 20.0 + day + jobs + (rng.next() * 3.0).floor();
            // a two-hour gap every fifth day
            ((i / 288) % 5 == 3 && (i % 288) < 24)
                .then_some(())
                .map_or(Some(v), |_| None)
        })
        .collect()
}

fn slot(now: DateTime<Utc>) -> usize {
    ((now - t0()).num_minutes() / 5) as usize
}

#[test]
fn decisions_never_read_samples_at_or_after_now() {
    let s = Settings::default();
    let v = bursty_pool(21);
    for now in [
        t0() + Duration::days(9) + Duration::hours(5),
        t0() + Duration::days(16),
        t0() + Duration::days(20) + Duration::hours(23),
    ] {
        let a = recommend(&v, Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        // the future replaced by something absurd, and cut off entirely
        let mut w = v.clone();
        for x in w[slot(now)..].iter_mut() {
            *x = Some(5000.0);
        }
        let b = recommend(&w, Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        let c = recommend(&v[..slot(now)], Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        assert_eq!(a, b, "future samples changed the decision at {now}");
        assert_eq!(a, c, "cutting the future changed the decision at {now}");
        // the last sample before now does matter: the test can fail
        let mut p = v.clone();
        p[slot(now) - 1] = Some(400.0);
        let d = next_hour(&p, Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        assert!(
            d.capacities[0] >= 400 && a.next_hour < 200,
            "a 400-GPU sample right before now gave {} (was {})",
            d.capacities[0],
            a.next_hour
        );
    }
}

/// 40 GPUs from 08:00 to 19:59, 24 GPUs at night, three weeks, hosts of 4 GPUs.
#[test]
fn diurnal_pool_gets_a_night_day_schedule() {
    let v: Vec<Option<f64>> = (0..21 * 288)
        .map(|i| {
            Some(if (8..20).contains(&((i / 12) % 24)) {
                40.0
            } else {
                24.0
            })
        })
        .collect();
    let s = Settings {
        host_size: 4,
        ..Settings::default()
    };
    let now = t0() + Duration::days(21);
    let d = plan(&v, Step::FIVE_MINUTES, t0(), now, 0, 168, &s).unwrap();
    assert!(d.method.starts_with("hour-of-day"), "chose {}", d.method);
    assert!(d.method.ends_with("x(1+0.20)"), "{}", d.method);
    for (k, &c) in d.capacities.iter().enumerate() {
        let h = (d.start + Duration::hours(k as i64)).hour() as usize;
        // analytic: the hour's demand x 1.2, the same margin all week; the hour-of-day
        // quantile pools each clock hour with its neighbours, so 07:00 and 20:00 keep the
        // day level (guard band)
        let level = if (7..21).contains(&h) { 40.0 } else { 24.0 };
        assert_eq!(
            c,
            hosts(level * 1.2, 4),
            "hour {h:02}:00, hour {k} of the plan"
        );
    }
    let night = d.capacities[3]; // 03:00
    let day = d.capacities[12]; // 12:00
    assert_eq!((night, day), (32, 48));
    // the same pool's evidence: the hour-of-day plan beats the VPA-style flat plan
    assert!(d.evidence.ours.cost < d.evidence.baseline_cost.cost);
    assert!(d.evidence.ours.hours >= 14.0 * 24.0);
}

/// A perfectly regular pool gets a weekly plan within one host of its demand, every hour of
/// the week: 40 GPUs 07:00-21:59 UTC and 16 at night on hosts of 8 GPUs, 28 days of
/// 5-minute history (the pool of the product's capacity page test), decided at any time of
/// day or week. A margin growing through the week in units of the mean demand (31 GPUs)
/// would hold 56 GPUs by day and 32 at night in the week's last days.
#[test]
fn regular_pool_gets_a_weekly_plan_within_one_host_of_its_demand() {
    let day = |h: u32| (7..22).contains(&h);
    let start = t0() + Duration::minutes(35);
    let v: Vec<Option<f64>> = (0..28 * 288)
        .map(|i| {
            let t = start + Duration::minutes(5 * i as i64);
            Some(if day(t.hour()) { 40.0 } else { 16.0 })
        })
        .collect();
    let s = Settings {
        host_size: 8,
        ..Settings::default()
    };
    for now_h in [0, 5, 9, 13, 22, 24 * 3 + 7, 24 * 5 + 18] {
        let history = Duration::days(21) + Duration::hours(now_h);
        let now = start + history;
        let n = slot(now) - slot(start);
        let d = plan(&v[..n], Step::FIVE_MINUTES, start, now, 0, 168, &s).unwrap();
        assert_eq!(d.capacities.len(), 168);
        for (k, &c) in d.capacities.iter().enumerate() {
            let hour = (d.start + Duration::hours(k as i64)).hour();
            assert_eq!(c % 8, 0, "whole hosts");
            // the schedule's hours start at the decision time and the hour-of-day level
            // reads each clock hour ±1 h, so the hours next to a change may take either level
            if [5, 6, 7, 21, 22, 23].contains(&hour) {
                assert!((16..=48).contains(&c), "edge hour {hour}: {c}");
                continue;
            }
            let want = if day(hour) { 40 } else { 16 };
            assert!(
                (want..=want + 8).contains(&c),
                "decided {now}: hour {k} ({hour:02}:00) holds {c}, demand {want}: {:?}",
                d.capacities
            );
        }
    }
    // the lead-time rule as the margin of the week from now breaks it late in the week
    let grown = Settings {
        plan_margin: MarginRule::LEAD_PLAN,
        ..s.clone()
    };
    let now = start + Duration::days(21);
    let d = plan(
        &v[..21 * 288],
        Step::FIVE_MINUTES,
        start,
        now,
        0,
        168,
        &grown,
    )
    .unwrap();
    assert_eq!((d.capacities[12], d.capacities[160]), (48, 56));
}

/// A pool with a day without demand gets the linear trend; its relative growth is GPUs
/// per day over its typical peak, not GPUs per day read as a fraction (+100 %/day for one
/// GPU a day).
#[test]
fn a_linear_trend_reports_its_growth_relative_to_the_level() {
    // daily peaks 20, 21, 22, … GPUs (one GPU a day), and day 3 without any demand
    let v: Vec<Option<f64>> = (0..14 * 288)
        .map(|i| {
            let day = i / 288;
            Some(if day == 3 { 0.0 } else { 20.0 + day as f64 })
        })
        .collect();
    let ex = exhaustion(
        &v,
        Step::FIVE_MINUTES,
        t0(),
        t0() + Duration::days(14),
        100.0,
        90,
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(ex.trend, Trend::Linear);
    assert!(
        (ex.growth_per_day - 1.0).abs() < 0.05,
        "{}",
        ex.growth_per_day
    );
    // the mean of the 14 daily peaks: (sum of 20..=33 − 23) / 14 = 24.9
    let mean = ((20..=33).sum::<i32>() - 23) as f64 / 14.0;
    assert!(
        (ex.relative_growth_per_day - ex.growth_per_day / mean).abs() < 1e-9,
        "{}",
        ex.relative_growth_per_day
    );
    // the exponential trend's relative growth is its own
    let g: Vec<Option<f64>> = (0..14 * 288)
        .map(|i| Some(20.0 * 1.01f64.powf(i as f64 / 288.0)))
        .collect();
    let ex = exhaustion(
        &g,
        Step::FIVE_MINUTES,
        t0(),
        t0() + Duration::days(14),
        100.0,
        90,
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(ex.trend, Trend::Exponential);
    assert_eq!(ex.relative_growth_per_day, ex.growth_per_day);
}

/// Daily peak grows 2 % a day with a ±5 % daily wiggle; capacity 100 GPUs.
#[test]
fn growing_pool_exhaustion_date_is_within_a_day() {
    let v: Vec<Option<f64>> = (0..20 * 288)
        .map(|i| {
            let days = i as f64 / 288.0;
            let wiggle = 1.0 + 0.05 * (2.0 * std::f64::consts::PI * days).sin();
            Some(50.0 * 1.02f64.powf(days) * wiggle)
        })
        .collect();
    let now = t0() + Duration::days(20);
    let ex = exhaustion(
        &v,
        Step::FIVE_MINUTES,
        t0(),
        now,
        100.0,
        90,
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(ex.trend, Trend::Exponential);
    assert!(
        (ex.growth_per_day - 0.02).abs() < 0.002,
        "growth {}",
        ex.growth_per_day
    );
    // analytic: the 20/21 quantile of a day's sine wiggle is sin(0.452 pi) = 0.989, so the
    // daily peak is 50 * 1.02^t * 1.0495; it reaches 100 at t = ln(100 / 52.47) / ln(1.02)
    let peak_factor = 1.0 + 0.05 * (std::f64::consts::PI * (20.0 / 21.0 - 0.5)).sin();
    let t_star = (100.0 / (50.0 * peak_factor)).ln() / 1.02f64.ln();
    let computed = t0() + Duration::seconds((t_star * 86_400.0) as i64);
    let got = ex.date.expect("a growing pool crosses its capacity");
    let off_h = (got - computed).num_minutes() as f64 / 60.0;
    assert!(
        off_h.abs() <= 24.0,
        "exhaustion {got}, computed {computed} ({off_h:+.1} h)"
    );
    // "needs N more GPUs by D": 60 days after now the peak is ~50 * 1.02^80 * 1.05 = 256
    let n = ex.needed_by(now + Duration::days(60));
    let want = 50.0 * 1.02f64.powf(80.0) * peak_factor - 100.0;
    assert!(
        (f64::from(n) - want).abs() <= 0.05 * want,
        "needed {n}, want {want:.0}"
    );
    // a flat pool never runs out
    let flat = vec![Some(30.0); 20 * 288];
    let ex = exhaustion(
        &flat,
        Step::FIVE_MINUTES,
        t0(),
        now,
        100.0,
        90,
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(ex.date, None);
    assert_eq!(ex.needed_by(now + Duration::days(30)), 0);
}

#[test]
fn bad_input_gives_clear_errors() {
    let v = bursty_pool(10);
    let now = t0() + Duration::days(9);
    let ok = Settings::default();
    let nh = |s: &Settings| next_hour(&v, Step::FIVE_MINUTES, t0(), now, s).unwrap_err();
    for price in [0.0, -3.0, f64::NAN, f64::INFINITY] {
        let e = nh(&Settings {
            price,
            ..ok.clone()
        });
        assert!(matches!(e, CapacityError::BadPrice(_)), "{e}");
        assert!(e.to_string().contains("price"));
    }
    assert_eq!(
        nh(&Settings {
            host_size: 0,
            ..ok.clone()
        }),
        CapacityError::ZeroHostSize
    );
    assert!(matches!(
        nh(&Settings {
            plan_margin: MarginRule {
                at_decision: -0.1,
                ..MarginRule::PLAN
            },
            ..ok.clone()
        }),
        CapacityError::BadSetting {
            name: "plan_margin.at_decision",
            ..
        }
    ));
    let e = nh(&Settings {
        lead_plan_margin: MarginRule {
            per_week: f64::NAN,
            ..MarginRule::LEAD_PLAN
        },
        ..ok.clone()
    });
    assert!(
        matches!(
            e,
            CapacityError::BadSetting {
                name: "lead_plan_margin.per_week",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("0 ..= 2"), "{e}");
    assert!(matches!(
        nh(&Settings {
            plan_methods: vec![],
            ..ok.clone()
        }),
        CapacityError::BadSetting {
            name: "plan_methods",
            ..
        }
    ));
    // empty history, all gaps, a decision before the first sample, a bad step
    assert_eq!(
        next_hour(&[], Step::FIVE_MINUTES, t0(), now, &ok).unwrap_err(),
        CapacityError::EmptyHistory { now }
    );
    // 40 minutes of history: less than the hour every recommendation is made in
    let young = t0() + Duration::minutes(40);
    let e = next_hour(&v[..8], Step::FIVE_MINUTES, t0(), young, &ok).unwrap_err();
    assert_eq!(
        e,
        CapacityError::ShortHistory {
            minutes: 40,
            now: young
        }
    );
    assert!(
        e.to_string().starts_with("only 40 min of demand history"),
        "{e}"
    );
    assert!(matches!(
        next_hour(&vec![None; 500], Step::FIVE_MINUTES, t0(), now, &ok).unwrap_err(),
        CapacityError::NoObservations { .. }
    ));
    assert!(matches!(
        next_hour(&v, Step::FIVE_MINUTES, t0(), t0() - Duration::hours(1), &ok).unwrap_err(),
        CapacityError::NowBeforeStart { .. }
    ));
    assert_eq!(
        next_hour(&v, Step::minutes_of(7), t0(), now, &ok).unwrap_err(),
        CapacityError::BadStep(7)
    );
    // negative and non-finite samples name their position
    let mut w = v.clone();
    w[100] = Some(-1.0);
    assert_eq!(
        next_hour(&w, Step::FIVE_MINUTES, t0(), now, &ok).unwrap_err(),
        CapacityError::BadValue {
            index: 100,
            value: -1.0
        }
    );
    w[100] = Some(f64::NAN);
    assert!(matches!(
        next_hour(&w, Step::FIVE_MINUTES, t0(), now, &ok).unwrap_err(),
        CapacityError::BadValue { index: 100, .. }
    ));
    // a 7-day lead from 3 days of history: an error by default, a plan when asked to extrapolate
    let short = t0() + Duration::days(3);
    let e = plan(&v, Step::FIVE_MINUTES, t0(), short, 168, 168, &ok).unwrap_err();
    assert_eq!(
        e,
        CapacityError::LeadLongerThanHistory {
            lead_hours: 168,
            history_hours: 72
        }
    );
    assert!(e.to_string().contains("lead time of 168 h"));
    let x = Settings {
        short_history: ShortHistory::Extrapolate,
        ..ok.clone()
    };
    let d = plan(&v, Step::FIVE_MINUTES, t0(), short, 168, 168, &x).unwrap();
    assert_eq!(d.capacities.len(), 168);
    assert_eq!(d.start, short + Duration::hours(168));
    // with no backtest possible it holds the peak of the 3 days, plus the lead's margin
    let seen: Vec<f64> = v[..slot(short)].iter().flatten().copied().collect();
    let peak = seen.iter().copied().fold(0.0, f64::max);
    let mean = seen.iter().sum::<f64>() / seen.len() as f64;
    assert!(d.method.starts_with("peak(all history)"), "{}", d.method);
    for (k, &c) in d.capacities.iter().enumerate() {
        let m = ok.lead_plan_margin.fraction(168, k);
        assert_eq!(c, hosts(peak + m * mean, 1), "hour {k}");
    }
    assert!(matches!(
        plan(&v, Step::FIVE_MINUTES, t0(), now, 0, 0, &ok).unwrap_err(),
        CapacityError::BadHorizon(0)
    ));
    // exhaustion needs a few days and a sane capacity
    assert!(matches!(
        exhaustion(
            &v,
            Step::FIVE_MINUTES,
            t0(),
            t0() + Duration::days(2),
            100.0,
            30,
            &ok
        )
        .unwrap_err(),
        CapacityError::BadSetting {
            name: "history",
            ..
        }
    ));
    assert!(matches!(
        exhaustion(&v, Step::FIVE_MINUTES, t0(), now, -5.0, 30, &ok).unwrap_err(),
        CapacityError::BadSetting {
            name: "capacity",
            ..
        }
    ));
}

/// Whole hosts of `host` GPUs holding at least `v` (a hair of tolerance, as the library).
fn hosts(v: f64, host: u32) -> u32 {
    ((v - 1e-6) / f64::from(host)).ceil() as u32 * host
}

#[test]
fn capacities_round_up_to_whole_hosts() {
    // a steady 13-GPU service: whole GPUs 13 next hour; the week from now 13 x 1.2 = 15.6
    // -> 16 every hour; the 7-day-ahead plan 13 + 13 x (0.20 + 0.10 x (168 + k) / 168):
    // 16.9 -> 17 at its first hour up to 18.2 -> 19 at its last
    let v = vec![Some(13.0); 15 * 288];
    let now = t0() + Duration::days(15);
    let d = Settings::default();
    let gpus = recommend(&v, Step::FIVE_MINUTES, t0(), now, &d).unwrap();
    assert_eq!(gpus.next_hour, 13);
    assert!(gpus.week_schedule.iter().all(|&c| c == 16));
    assert_eq!((gpus.lead_plan[0], gpus.lead_plan[167]), (17, 19));
    for host in [1, 5, 8, 13] {
        let s = Settings {
            host_size: host,
            ..d.clone()
        };
        let r = recommend(&v, Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        for k in 0..168 {
            assert_eq!(
                r.week_schedule[k],
                hosts(13.0 * 1.2, host),
                "host {host} hour {k}"
            );
            let lead = 13.0 * (1.0 + 0.20 + 0.10 * (168 + k) as f64 / 168.0);
            assert_eq!(r.lead_plan[k], hosts(lead, host), "host {host} hour {k}");
        }
    }
    // the first release's lead-time rule: level x (1 + 0.2 + 0.2 per week of lead), one
    // margin per plan, backtested at its own lead only
    let first = Settings {
        lead_plan_margin: MarginRule {
            basis: MarginBasis::Level,
            growth: MarginGrowth::PerPlan,
            at_decision: 0.20,
            per_week: 0.20,
        },
        lead_backtest: LeadBacktest::SameLead,
        ..Settings::default()
    };
    let gpus = recommend(&v, Step::FIVE_MINUTES, t0(), now, &first).unwrap();
    // 13 x 1.2 = 15.6 -> 16 per plan hour, 13 x 1.4 = 18.2 -> 19 for the 7-day-ahead plan
    assert!(gpus.week_schedule.iter().all(|&c| c == 16));
    assert!(gpus.lead_plan.iter().all(|&c| c == 19));
    for (host, next, week, lead) in [(8, 16, 16, 24), (5, 15, 20, 20), (13, 13, 26, 26)] {
        let s = Settings {
            host_size: host,
            ..first.clone()
        };
        let r = recommend(&v, Step::FIVE_MINUTES, t0(), now, &s).unwrap();
        assert_eq!(r.next_hour, next, "host {host}");
        assert!(r.week_schedule.iter().all(|&c| c == week), "host {host}");
        assert!(r.lead_plan.iter().all(|&c| c == lead), "host {host}");
    }
    // a bursty pool: every capacity a multiple of the host size
    let v = bursty_pool(21);
    let s = Settings {
        host_size: 8,
        ..Settings::default()
    };
    let r = recommend(&v, Step::FIVE_MINUTES, t0(), t0() + Duration::days(18), &s).unwrap();
    assert_eq!(r.next_hour % 8, 0);
    assert!(r
        .week_schedule
        .iter()
        .chain(&r.lead_plan)
        .all(|&c| c % 8 == 0 && c > 0));
}

#[test]
fn evidence_reports_real_backtests() {
    // steady pool: the recommender and the baselines cost nothing but the plan margin
    let v = vec![Some(13.0); 15 * 288];
    let now = t0() + Duration::days(15);
    let r = recommend(&v, Step::FIVE_MINUTES, t0(), now, &Settings::default()).unwrap();
    let a = &r.evidence.autoscale;
    // 15 days of history: the replay covers the last 14 days after the first two (the
    // last week calibrated on the week before it, the week before on its first day)
    assert_eq!(a.ours.hours, 13.0 * 24.0);
    assert_eq!((a.ours.cost, a.baseline_cost.cost), (0.0, 0.0));
    // 6 days (a new install): evidence over the 4 days after the first two
    let short = next_hour(
        &v[..6 * 288],
        Step::FIVE_MINUTES,
        t0(),
        t0() + Duration::days(6),
        &Settings::default(),
    )
    .unwrap();
    assert_eq!(short.evidence.ours.hours, 4.0 * 24.0);
    // plan: 13 + 0.2 x 13 = 15.6 -> 16 held for 13 demanded = 3 idle GPU-h per hour, cost
    // 3/13 per hour
    assert!((r.evidence.plan.ours.cost - 3.0 / 13.0).abs() < 1e-9);
    assert!((r.evidence.plan.ours.slack_pct - 100.0 * 3.0 / 16.0).abs() < 1e-9);
    assert_eq!(r.evidence.plan.ours.unserved_gpu_hours, 0.0);
    // a pool that steps from 10 to 30 GPUs two days ago: the replay shows the shortage
    let v: Vec<Option<f64>> = (0..15 * 288)
        .map(|i| Some(if i < 13 * 288 { 10.0 } else { 30.0 }))
        .collect();
    let r = recommend(&v, Step::FIVE_MINUTES, t0(), now, &Settings::default()).unwrap();
    assert_eq!(r.next_hour, 30);
    let a = &r.evidence.autoscale;
    assert!(a.ours.unserved_gpu_hours > 0.0 && a.ours.shortage_pct > 0.0);
    assert!(a.baseline_cost.unserved_gpu_hours > 0.0);
    assert!(r.evidence.plan.ours.unserved_gpu_hours > 0.0);
    // hourly samples give the same kind of answer as 5-minute ones
    let hourly: Vec<Option<f64>> = (0..15 * 24)
        .map(|h| Some(if h < 13 * 24 { 10.0 } else { 30.0 }))
        .collect();
    let h = next_hour(&hourly, Step::HOUR, t0(), now, &Settings::default()).unwrap();
    assert_eq!(h.capacities, vec![30]);
}

/// A lead-time plan is chosen by the backtest of its own lead and of plans decided at the
/// start of their week: from 10 days of history a 7-day lead has one same-lead origin and
/// eight lead-0 ones, and the evidence covers them all.
#[test]
fn lead_plans_are_backtested_from_both_leads() {
    let v = bursty_pool(10);
    let now = t0() + Duration::days(10);
    let lead_plan = |lead_backtest| {
        let s = Settings {
            lead_backtest,
            ..Settings::default()
        };
        plan(&v, Step::FIVE_MINUTES, t0(), now, 168, 168, &s).unwrap()
    };
    let pooled = lead_plan(LeadBacktest::PooledAsHeld);
    let same = lead_plan(LeadBacktest::SameLead);
    assert_eq!(pooled, lead_plan(Settings::default().lead_backtest));
    // same lead: one origin (day 2, its week cut at now after one day) = 24 h; pooled adds
    // the lead-0 origins of days 2..9 (their weeks cut at now: 1 + 2 + … + 8 days)
    assert_eq!(same.evidence.ours.hours, 24.0);
    assert!(
        pooled.evidence.ours.hours > 5.0 * same.evidence.ours.hours,
        "{} vs {}",
        pooled.evidence.ours.hours,
        same.evidence.ours.hours
    );
    assert_eq!(pooled.capacities.len(), 168);
}

/// The lead-0 origins of a lead-time plan's backtest carry the margin the plan will hold
/// (`PooledAsHeld`), not the one of a lead-0 plan: on a steady 13-GPU pool every replayed
/// hour holds 13 + 13 x (0.30 … 0.40) = 17 … 19 GPUs, i.e. at least 4 idle.
#[test]
fn pooled_lead_origins_carry_the_lead_plans_margin() {
    let v = vec![Some(13.0); 15 * 288];
    let now = t0() + Duration::days(15);
    let idle_per_hour = |lead_backtest| {
        let s = Settings {
            lead_backtest,
            ..Settings::default()
        };
        let d = plan(&v, Step::FIVE_MINUTES, t0(), now, 168, 168, &s).unwrap();
        let e = &d.evidence.ours;
        assert_eq!(e.unserved_gpu_hours, 0.0);
        e.idle_gpu_hours / e.hours
    };
    let as_held = idle_per_hour(LeadBacktest::PooledAsHeld);
    assert!((4.0..=6.0).contains(&as_held), "{as_held}");
    // at lead 0 the lead rule holds 13 + 13 x (0.20 … 0.30) = 16 … 17, the plan rule
    // 13 x 1.2 = 15.6 -> 16: 3 … 4 idle on the lead-0 origins
    for other in [LeadBacktest::PooledAtOrigin, LeadBacktest::PooledAsDecided] {
        let idle = idle_per_hour(other);
        assert!(idle < as_held - 0.3, "{other:?}: {idle} vs {as_held}");
    }
    // the same-lead origins alone: 17 … 19
    assert!(idle_per_hour(LeadBacktest::SameLead) >= 4.0);
}
