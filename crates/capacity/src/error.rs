//! The one error type of the recommender's public API.

use chrono::{DateTime, Utc};

/// Why a recommendation could not be made. Every variant names the bad value and what a
/// good one looks like; nothing in the recommender panics on bad input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CapacityError {
    /// The price of an unserved GPU-hour is zero, negative or not finite.
    #[error("price of an unserved GPU-hour must be a finite number > 0 (in idle GPU-hours, default 20), got {0}")]
    BadPrice(f64),
    /// The host size is zero.
    #[error("host size must be at least 1 GPU (1 = whole GPUs)")]
    ZeroHostSize,
    /// The sample spacing does not divide an hour.
    #[error("a step of {0} minutes does not divide an hour; use 1, 5, 10, 15, 30 or 60 minutes")]
    BadStep(u32),
    /// A numeric setting is outside its range.
    #[error("setting {name} = {value}: {why}")]
    BadSetting {
        /// field of [`crate::Settings`]
        name: &'static str,
        /// the value given
        value: f64,
        /// what is allowed
        why: &'static str,
    },
    /// No sample starts before the decision time.
    #[error("empty history: no demand sample starts before the decision time {now}")]
    EmptyHistory {
        /// the decision time
        now: DateTime<Utc>,
    },
    /// The history before the decision time is shorter than one whole hour, the unit every
    /// recommendation is made in.
    #[error(
        "only {minutes} min of demand history before {now}: a recommendation needs one whole hour"
    )]
    ShortHistory {
        /// minutes of history before the decision time
        minutes: u32,
        /// the decision time
        now: DateTime<Utc>,
    },
    /// Every sample before the decision time is a gap.
    #[error("history has no observed value: all {slots} samples before {now} are gaps")]
    NoObservations {
        /// samples before the decision time
        slots: usize,
        /// the decision time
        now: DateTime<Utc>,
    },
    /// A sample is negative or not finite (a gap must be `None`).
    #[error("history sample {index} is {value}: demand must be a finite number >= 0 (use None for a gap)")]
    BadValue {
        /// position in the history slice
        index: usize,
        /// the offending value
        value: f64,
    },
    /// The decision time lies before the first sample.
    #[error("decision time {now} is before the first sample at {start}")]
    NowBeforeStart {
        /// the decision time
        now: DateTime<Utc>,
        /// time of the first sample
        start: DateTime<Utc>,
    },
    /// A plan with a lead time was asked from less history than the lead time.
    #[error("lead time of {lead_hours} h is longer than the {history_hours} h of history before the decision; \
             collect more history, shorten the lead or set Settings::short_history = ShortHistory::Extrapolate")]
    LeadLongerThanHistory {
        /// the lead time asked for
        lead_hours: u32,
        /// whole hours of history before the decision time
        history_hours: usize,
    },
    /// The schedule length is zero or longer than the supported maximum.
    #[error("schedule length of {0} hours is not supported; use 1 ..= 8784 hours")]
    BadHorizon(usize),
}
