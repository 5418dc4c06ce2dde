//! The evaluator: turns rules and data into alert state changes, and state changes into
//! outbox notifications, in one transaction each.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};

use super::rules::{
    AbsentRule, AnomalyRule, CapacityRule, HardwareRule, Rule, RuleKind, RuleSet, ThresholdRule,
};
use super::{fingerprint, Labels};
use crate::analytics::anomaly::Explanation;
use crate::config::Config;
use crate::store::Store;

/// Re-firing this many times within an hour marks an alert flapping: its state is kept
/// current but no more mails go out until it settles, i.e. fires for [`SETTLE`] without
/// resolving (then it is mailed as firing, and reminded of as any other).
pub const FLAP_LIMIT: i32 = 3;

/// How long a flapping alert fires steadily before it counts as settled.
const SETTLE: Duration = Duration::hours(1);

/// What a rule observed for one series this round.
#[derive(Debug, Clone)]
struct Observation {
    labels: Labels,
    value: Option<f64>,
    /// The condition holds.
    active: bool,
    /// For threshold rules: the value is past the resolve threshold (safe side).
    clear: bool,
    at: DateTime<Utc>,
    occurrences: i32,
    description: String,
    /// For rules that judge `for` on stored data (anomaly): since when the condition has
    /// held and for how long, in data time. None: `for` counts evaluation rounds.
    held: Option<(DateTime<Utc>, Duration)>,
}

impl Observation {
    /// An alert no round observes any more (its pool, rack or labels are gone): it resolves.
    fn gone(labels: Labels, now: DateTime<Utc>, description: String) -> Observation {
        Observation {
            labels,
            value: None,
            active: false,
            clear: true,
            at: now,
            occurrences: 1,
            description,
            held: None,
        }
    }
}

/// The snapshot of an alert that travels in a notification.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AlertSnapshot {
    pub fingerprint: String,
    pub rule: String,
    pub severity: String,
    pub labels: Labels,
    pub summary: String,
    pub description: String,
    pub value: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub occurrences: i32,
}

#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    fingerprint: String,
    state: String,
    started_at: DateTime<Utc>,
    occurrences: i32,
    flaps: i32,
    labels: sqlx::types::Json<Labels>,
    rule: String,
}

/// One evaluation round. `full`: also threshold and absence rules (hardware events are
/// checked every round). `watching_since`: when this evaluator began watching (it became
/// the job leader); a host's silence is counted from then at the earliest.
pub async fn evaluate(
    store: &Store,
    rules: &RuleSet,
    cfg: &Config,
    now: DateTime<Utc>,
    watching_since: DateTime<Utc>,
    full: bool,
) -> anyhow::Result<()> {
    // Without rules (no rules file, or one being rewritten) nothing is judged, and the
    // open alerts stay as they are: a server started without the file resolves nothing.
    if rules.rules.is_empty() {
        return Ok(());
    }
    if full {
        resolve_orphans(store, rules, now).await?;
    }
    hardware(
        store,
        rules,
        late_commit_window(cfg.server.request_timeout_secs),
        now,
    )
    .await?;
    if full {
        for rule in &rules.rules {
            let mut obs = match &rule.kind {
                RuleKind::Threshold(t) => threshold_observations(store, rule, t, now).await?,
                RuleKind::Absent(a) => {
                    absent_observations(store, rule, a, now, watching_since).await?
                }
                RuleKind::Anomaly(a) => anomaly_observations(store, rule, a, now).await?,
                RuleKind::Capacity(c) => capacity_observations(store, cfg, rule, c, now).await?,
                RuleKind::Hardware(h) => {
                    resolve_quiet_hardware(store, rules, rule, h, now).await?;
                    continue;
                }
            };
            let existing = alerts_of(store, rule).await?;
            if matches!(
                rule.kind,
                RuleKind::Threshold(_) | RuleKind::Absent(_) | RuleKind::Anomaly(_)
            ) {
                relabeled(store, rule, &existing, &mut obs, now).await?;
            }
            apply(store, rules, rule, &existing, obs, now).await?;
        }
        settle_flapping(store, rules, now).await?;
        repeat_reminders(store, rules, cfg, now).await?;
    }
    Ok(())
}

/// Each host's labels by id; with `removed`, also of hosts taken out of the fleet (which
/// threshold and anomaly rules no longer judge: their alerts resolve in [`relabeled`]).
async fn host_labels(store: &Store, removed: bool) -> anyhow::Result<HashMap<i64, Labels>> {
    let rows = sqlx::query!(
        "SELECT id, name, site, rack, pool FROM hosts WHERE $1 OR removed_at IS NULL",
        removed
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut l = Labels::new();
            l.insert("host".into(), r.name);
            for (k, v) in [("site", r.site), ("rack", r.rack), ("pool", r.pool)] {
                if !v.is_empty() {
                    l.insert(k.into(), v);
                }
            }
            (r.id, l)
        })
        .collect())
}

/// Alerts of a rule no longer in the rules file: nothing judges them again, so a firing
/// one resolves (and says so, as any resolved alert) and a pending one is dropped.
async fn resolve_orphans(store: &Store, rules: &RuleSet, now: DateTime<Utc>) -> anyhow::Result<()> {
    let names: Vec<String> = rules.rules.iter().map(|r| r.name.clone()).collect();
    let mut tx = store.pool.begin().await?;
    sqlx::query!(
        "DELETE FROM alerts WHERE state = 'pending' AND NOT (rule = ANY($1))",
        &names
    )
    .execute(&mut *tx)
    .await?;
    let gone = sqlx::query_as!(
        FiringRow,
        r#"UPDATE alerts SET state = 'resolved', resolved_at = $2, updated_at = now(),
                  description = 'its rule was removed from the rules file'
            WHERE state = 'firing' AND NOT (rule = ANY($1))
        RETURNING fingerprint, rule, severity, labels AS "labels: sqlx::types::Json<Labels>",
                  summary, 'its rule was removed from the rules file' AS "description!", value,
                  started_at, occurrences"#,
        &names,
        now,
    )
    .fetch_all(&mut *tx)
    .await?;
    for a in gone {
        sqlx::query!(
            "UPDATE incidents SET resolved_at = $2 WHERE fingerprint = $1 AND resolved_at IS NULL",
            &a.fingerprint,
            now,
        )
        .execute(&mut *tx)
        .await?;
        tracing::info!(alert = %a.fingerprint, "resolved: its rule was removed from the rules file");
        let mut snap = a.snapshot();
        snap.resolved_at = Some(now);
        enqueue(&mut tx, rules, &snap, "resolved", now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Alerts of a per-host rule filed under labels its host no longer has (its site, rack or
/// pool changed), of a host taken out of the fleet, or that the rule no longer selects: no
/// round observes them again, so they resolve here; the host is judged under its labels of
/// now.
async fn relabeled(
    store: &Store,
    rule: &Rule,
    existing: &HashMap<String, AlertRow>,
    out: &mut Vec<Observation>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let seen: HashSet<String> = out
        .iter()
        .map(|o| fingerprint(&rule.name, &o.labels))
        .collect();
    let open: Vec<&AlertRow> = existing
        .iter()
        .filter(|(fp, a)| a.state != "resolved" && !seen.contains(*fp))
        .map(|(_, a)| a)
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let current: HashMap<String, Labels> = host_labels(store, true)
        .await?
        .into_values()
        .filter_map(|l| Some((l.get("host")?.clone(), l)))
        .collect();
    let removed: HashSet<String> =
        sqlx::query_scalar!("SELECT name FROM hosts WHERE removed_at IS NOT NULL")
            .fetch_all(&store.pool)
            .await?
            .into_iter()
            .collect();
    // A threshold alert whose host still reports, but not the alert's metric (a GPU pulled
    // for repair, a sensor gone), for NOT_REPORTED: nothing would resolve it otherwise.
    let unreported: HashSet<String> = match &rule.kind {
        RuleKind::Threshold(_) => {
            let fps: Vec<String> = open.iter().map(|a| a.fingerprint.clone()).collect();
            sqlx::query_scalar!(
                "SELECT a.fingerprint FROM alerts a JOIN hosts h ON h.name = a.labels->>'host'
                  WHERE a.fingerprint = ANY($1) AND a.state = 'firing' AND a.last_active_at < $2
                    AND h.last_heard > $3",
                &fps,
                now - NOT_REPORTED,
                now - Duration::minutes(2),
            )
            .fetch_all(&store.pool)
            .await?
            .into_iter()
            .collect()
        }
        _ => HashSet::new(),
    };
    for a in open {
        let Some(host) = a.labels.0.get("host") else {
            continue;
        };
        let mut was = a.labels.0.clone();
        was.remove("gpu");
        let description = match current.get(host) {
            // Its GPUs' and its own alerts end with it (its absence alert resolves above).
            Some(_) if removed.contains(host) => "the host was taken out of the fleet".to_string(),
            Some(l) if *l != was => {
                let now_labels: Vec<String> = l
                    .iter()
                    .filter(|(k, _)| k.as_str() != "host")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "the host's labels changed (now {}); it is judged under them",
                    if now_labels.is_empty() {
                        "none".to_string()
                    } else {
                        now_labels.join(", ")
                    }
                )
            }
            Some(l) if !rule.selects(l) => "the rule no longer selects the host".to_string(),
            _ if unreported.contains(&a.fingerprint) => {
                let what = match (&rule.kind, a.labels.0.get("gpu")) {
                    (RuleKind::Threshold(t), Some(g)) => {
                        format!("GPU {g} no longer reports {}", t.metric)
                    }
                    (RuleKind::Threshold(t), None) => {
                        format!("the host no longer reports {}", t.metric)
                    }
                    _ => "no longer reported".to_string(),
                };
                format!(
                    "{what} ({} min without a value while the host reports)",
                    NOT_REPORTED.num_minutes()
                )
            }
            _ => continue,
        };
        out.push(Observation::gone(a.labels.0.clone(), now, description));
    }
    Ok(())
}

/// How long a firing threshold alert waits for its metric from a host that reports
/// without it before it resolves.
const NOT_REPORTED: Duration = Duration::minutes(10);

/// How far before the watermark a round looks for events committed late: the longest an
/// ingest request (and its transaction) may run, plus a margin.
fn late_commit_window(request_timeout_secs: u64) -> Duration {
    Duration::seconds(request_timeout_secs.max(1) as i64 + 30)
}

/// New hardware events since the watermark → firing alerts, one per rule and GPU (or
/// host, for host-wide events); recurrences count up on the same alert, whose description
/// lists every kind and code seen while it fires. A rule with `per_code` splits them into
/// one alert per kind and XID code.
async fn hardware(
    store: &Store,
    rules: &RuleSet,
    late: Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let hw: Vec<(&Rule, &HardwareRule)> = rules
        .of_kind(|k| match k {
            RuleKind::Hardware(h) => Some(h),
            _ => None,
        })
        .collect();
    if hw.is_empty() {
        return Ok(());
    }
    let state = sqlx::query!(
        r#"SELECT watermark, seen AS "seen: sqlx::types::Json<Vec<SeenEvent>>"
             FROM job_state WHERE name = 'alert_events'"#
    )
    .fetch_optional(&store.pool)
    .await?;
    let (watermark, seen) = state.map_or((None, None), |s| (s.watermark, s.seen.map(|j| j.0)));
    // First run: look back a little, not at all history. A watermark written without the
    // seen events (a server before they were kept) is taken as it stands: looking back
    // from it would alert twice on what that server alerted on.
    let since = watermark.unwrap_or(now - Duration::minutes(10));
    let from = if watermark.is_none() || seen.is_some() {
        since - late
    } else {
        since
    };
    let mut seen = seen.unwrap_or_default();
    let keys: HashSet<EventKey> = seen.iter().map(SeenEvent::key).collect();
    let fetched = sqlx::query!(
        "SELECT host_id, gpu_index, ts, kind, code, message, count, received_at FROM hardware_events
          WHERE received_at > $1 ORDER BY received_at, ts LIMIT $2",
        from,
        5000 + keys.len() as i64,
    )
    .fetch_all(&store.pool)
    .await?;
    let last = fetched.last().map(|e| e.received_at);
    let events: Vec<_> = fetched
        .into_iter()
        .filter(|e| !keys.contains(&(e.host_id, e.gpu_index, e.ts, e.kind.as_str(), e.code)))
        .collect();
    // Nothing new: the watermark stays.
    let Some(last) = last.filter(|_| !events.is_empty()) else {
        return Ok(());
    };
    let last = last.max(since);
    let labels = host_labels(store, true).await?;
    // Per rule: observations, and for each the (host, GPU) its events came from.
    #[allow(clippy::type_complexity)]
    let mut by_rule: HashMap<&str, (Vec<Observation>, Vec<(i64, i16)>, &Rule, &HardwareRule)> =
        HashMap::new();
    for e in &events {
        let (host_id, gpu, ts, kind, code, message, count) = (
            &e.host_id,
            &e.gpu_index,
            &e.ts,
            &e.kind,
            &e.code,
            &e.message,
            &e.count,
        );
        let Some(base) = labels.get(host_id) else {
            continue;
        };
        let mut at_gpu = base.clone();
        if *gpu >= 0 {
            at_gpu.insert("gpu".into(), gpu.to_string());
        }
        for (rule, h) in &hw {
            let kinds = h.kinds();
            let kind_ok = kinds.is_empty() || kinds.iter().any(|k| k == kind);
            let code_ok = kind != "xid"
                || ((h.xid_codes.is_empty() || h.xid_codes.contains(code))
                    && !h.except_xid_codes.contains(code));
            let mut l = at_gpu.clone();
            if h.per_code {
                l.insert("event".into(), kind.clone());
                if kind == "xid" {
                    l.insert("xid".into(), code.to_string());
                }
            }
            if kind_ok && code_ok && rule.selects(&l) {
                let entry = by_rule
                    .entry(rule.name.as_str())
                    .or_insert_with(|| (Vec::new(), Vec::new(), rule, h));
                // Same alert twice in one round (a burst): count occurrences on one
                // observation, which describes the latest event.
                if let Some(o) = entry.0.iter_mut().find(|o| o.labels == l) {
                    o.occurrences += *count;
                    // It started with the earliest of the round's events (a batch shipped
                    // after an outage holds minutes of them), and counts them all.
                    if let Some((first, _)) = &mut o.held {
                        *first = (*first).min(*ts);
                    }
                    if *ts >= o.at {
                        o.at = *ts;
                        o.value = Some(*code as f64);
                        o.description = event_description(kind, *code, message);
                    }
                } else {
                    entry.0.push(Observation {
                        labels: l,
                        value: Some(*code as f64),
                        active: true,
                        clear: false,
                        at: *ts,
                        occurrences: *count,
                        description: event_description(kind, *code, message),
                        held: Some((*ts, Duration::zero())),
                    });
                    entry.1.push((*host_id, *gpu));
                }
            }
        }
    }
    let mut staged = Vec::with_capacity(by_rule.len());
    for (_, (mut obs, at, rule, h)) in by_rule {
        if !h.per_code {
            let seen = codes_seen(store, rule, h, &obs, &at).await?;
            for (o, seen) in obs.iter_mut().zip(seen) {
                if seen.len() > 1 || seen.first().is_some_and(|s| s.2 > 1) {
                    o.description = format!(
                        "{}.{} Latest: {}",
                        codes_text(&seen),
                        most_serious(&seen),
                        o.description
                    );
                }
            }
        }
        staged.push((rule, alerts_of(store, rule).await?, obs));
    }
    // The alerts, their notifications, the watermark and the seen events commit together:
    // a leader killed mid-round leaves the whole round to its successor, which neither
    // skips an event nor counts one twice.
    let mut tx = store.pool.begin().await?;
    for (rule, existing, obs) in staged {
        apply_in(&mut tx, rules, rule, &existing, obs, now).await?;
    }
    // Remembered once they are alerts, with the watermark they are behind; forgotten once
    // no round looks back that far.
    seen.extend(events.iter().map(|e| {
        SeenEvent(
            e.host_id,
            e.gpu_index,
            e.ts,
            e.kind.clone(),
            e.code,
            e.received_at,
        )
    }));
    seen.retain(|e| e.5 > last - late);
    sqlx::query!(
        "INSERT INTO job_state (name, watermark, seen) VALUES ('alert_events', $1, $2)
         ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, seen = EXCLUDED.seen,
                                          updated_at = now()",
        last,
        sqlx::types::Json(&seen) as _,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A hardware event the evaluator has alerted on: host, GPU, time, kind, code, and the
/// `received_at` it was fetched by. Stored as a JSON array in `job_state.seen`.
#[derive(Debug, Serialize, Deserialize)]
struct SeenEvent(i64, i16, DateTime<Utc>, String, i64, DateTime<Utc>);

/// An event's identity: host, GPU, time, kind, code.
type EventKey<'a> = (i64, i16, DateTime<Utc>, &'a str, i64);

impl SeenEvent {
    fn key(&self) -> EventKey<'_> {
        (self.0, self.1, self.2, self.3.as_str(), self.4)
    }
}

/// For each observation of a grouped hardware rule, the event kinds and codes of its GPU
/// (or host) that the rule matched since its alert fired (or, for a new alert, in the
/// last `resolve_after_secs`): (kind, code, occurrences), most frequent first.
///
/// Two queries for the whole round, whatever the number of alerts: a burst of XIDs over
/// a fleet is one round trip, not one per GPU (on Citus each would be a trip to a
/// worker). The events side is a join of the (host, GPU, window) list with
/// `hardware_events`, which Citus runs on the workers next to the rows.
async fn codes_seen(
    store: &Store,
    rule: &Rule,
    h: &HardwareRule,
    obs: &[Observation],
    at: &[(i64, i16)],
) -> anyhow::Result<Vec<Vec<(String, i64, i64)>>> {
    let fps: Vec<String> = obs
        .iter()
        .map(|o| crate::alert::fingerprint(&rule.name, &o.labels))
        .collect();
    let firing_since: HashMap<String, DateTime<Utc>> = sqlx::query!(
        "SELECT fingerprint, started_at FROM alerts WHERE fingerprint = ANY($1) AND state = 'firing'",
        &fps,
    )
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(|r| (r.fingerprint, r.started_at))
    .collect();
    let resolve_after = Duration::seconds(h.resolve_after_secs as i64);
    let hosts: Vec<i64> = at.iter().map(|a| a.0).collect();
    let gpus: Vec<i16> = at.iter().map(|a| a.1).collect();
    let since: Vec<DateTime<Utc>> = obs
        .iter()
        .zip(&fps)
        .map(|(o, fp)| {
            firing_since.get(fp).copied().unwrap_or_else(|| {
                o.held.map_or(o.at - resolve_after, |(first, _)| {
                    first.min(o.at - resolve_after)
                })
            })
        })
        .collect();
    let latest: Vec<DateTime<Utc>> = obs.iter().map(|o| o.at).collect();
    let rows = sqlx::query!(
        r#"SELECT w.i AS "i!", e.kind, e.code, sum(e.count)::int8 AS "n!"
             FROM hardware_events e
             JOIN unnest($1::int8[], $2::int2[], $3::timestamptz[], $4::timestamptz[])
                  WITH ORDINALITY AS w(host_id, gpu_index, since, latest, i)
               ON e.host_id = w.host_id AND e.gpu_index = w.gpu_index
              AND e.ts >= w.since AND e.ts <= w.latest
            WHERE e.host_id = ANY($1)
              AND (cardinality($5::text[]) = 0 OR e.kind = ANY($5))
              AND (e.kind <> 'xid' OR ((cardinality($6::int8[]) = 0 OR e.code = ANY($6)) AND NOT e.code = ANY($7)))
            GROUP BY w.i, e.kind, e.code"#,
        &hosts,
        &gpus,
        &since,
        &latest,
        &h.kinds(),
        &h.xid_codes,
        &h.except_xid_codes,
    )
    .fetch_all(&store.pool)
    .await?;
    let mut seen: Vec<Vec<(String, i64, i64)>> = vec![Vec::new(); obs.len()];
    for r in rows {
        if let Some(s) = usize::try_from(r.i - 1).ok().and_then(|i| seen.get_mut(i)) {
            s.push((r.kind, r.code, r.n));
        }
    }
    for s in &mut seen {
        // The most serious for the hardware first (an uncorrectable memory error before
        // the application faults around it), then the most frequent, then by kind and code.
        let urgency = |k: &str, c: i64| crate::model::xid::describe_event(k, c).action.urgency();
        s.sort_by(|a, b| {
            urgency(&b.0, b.1)
                .cmp(&urgency(&a.0, a.1))
                .then(b.2.cmp(&a.2))
                .then_with(|| (&a.0, a.1).cmp(&(&b.0, b.1)))
        });
    }
    Ok(seen)
}

/// "XID 31 ×3, XID 13 ×2, thermal_throttle ×1".
fn codes_text(seen: &[(String, i64, i64)]) -> String {
    seen.iter()
        .map(|(kind, code, n)| match kind.as_str() {
            "xid" => format!("XID {code} ×{n}"),
            k => format!("{k} ×{n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// " Most serious: XID 94 (meaning): action." when one of the codes seen asks more of the
/// hardware than all the others (empty otherwise): the latest event may be an
/// application fault that followed it.
fn most_serious(seen: &[(String, i64, i64)]) -> String {
    let d = |(k, c, _): &(String, i64, i64)| crate::model::xid::describe_event(k, *c);
    let Some(top) = seen.first() else {
        return String::new();
    };
    let first = d(top);
    if seen.len() < 2
        || seen[1..]
            .iter()
            .any(|s| d(s).action.urgency() >= first.action.urgency())
    {
        return String::new();
    }
    let name = match top.0.as_str() {
        "xid" => format!("XID {}", top.1),
        k => k.to_string(),
    };
    format!(
        " Most serious: {name} ({}): {}.",
        first.meaning, first.action
    )
}

/// What an event says, what it means and what to do, for the mail and the alerts page.
pub fn event_description(kind: &str, code: i64, message: &str) -> String {
    let d = crate::model::xid::describe_event(kind, code);
    let said = match kind {
        "xid" => format!("XID {code}: {}", message.trim_end_matches('.')),
        _ => message.trim_end_matches('.').to_string(),
    };
    // The meaning unless the message already says it.
    let meaning = if message.to_lowercase().contains(&d.meaning.to_lowercase()) {
        String::new()
    } else {
        format!(" Meaning: {}.", d.meaning)
    };
    format!("{said}.{meaning} Action: {}.", d.action)
}

/// How many seconds a host's clock is behind the server's (0 … 900): its last batch's
/// `sent_at` (the agent's clock) against when that batch arrived (`last_heard`).
const BEHIND: &str = "LEAST(GREATEST(COALESCE(EXTRACT(epoch FROM last_heard - (agent_stats->>'sent_at')::timestamptz), 0), 0), 900)";

async fn threshold_observations(
    store: &Store,
    rule: &Rule,
    t: &ThresholdRule,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Observation>> {
    let field = t.metric.metric.name;
    let threshold = t.value;
    let resolve = t.resolve_value.unwrap_or(threshold);
    // Each host's newest sample of the last 2 minutes, by the agent's clock: a host whose
    // clock is behind (its last batch's `sent_at` against when it arrived, at most 15
    // minutes counted) gets its window moved back by as much. Without such a host the
    // query is the plain 2-minute one.
    let window = now - Duration::minutes(2);
    let behind: HashMap<i64, f64> = sqlx::query_as::<_, (i64, f64)>(sqlx::AssertSqlSafe(format!(
        "SELECT id, {BEHIND}::float8 FROM hosts WHERE last_heard > $1 AND {BEHIND} > 0"
    )))
    .bind(window)
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .collect();
    let since = |host: i64| {
        window - Duration::milliseconds((behind.get(&host).copied().unwrap_or(0.0) * 1000.0) as i64)
    };
    let earliest = behind.keys().map(|h| since(*h)).min().unwrap_or(window);
    let skewed: Vec<i64> = behind.keys().copied().collect();
    // `field` is a name from the metric table, never text from the rules file.
    let (table, key, distinct) = if t.metric.gpu {
        ("gpu_samples", "gpu_index", "host_id, gpu_index")
    } else {
        ("host_samples", "-1::int2", "host_id")
    };
    let when = if skewed.is_empty() {
        "ts > $1"
    } else {
        "(ts > $1 OR (host_id = ANY($3) AND ts > $2))"
    };
    let sql = format!(
        "SELECT DISTINCT ON ({distinct}) host_id, {key}, ts, {field}::float8 FROM {table}
          WHERE {when} AND {field} IS NOT NULL ORDER BY {distinct}, ts DESC"
    );
    let mut q =
        sqlx::query_as::<_, (i64, i16, DateTime<Utc>, f64)>(sqlx::AssertSqlSafe(sql)).bind(window);
    if !skewed.is_empty() {
        q = q.bind(earliest).bind(&skewed);
    }
    let rows: Vec<(i64, i16, DateTime<Utc>, f64)> = q
        .fetch_all(&store.pool)
        .await?
        .into_iter()
        .filter(|(host, _, ts, _)| *ts > since(*host))
        .collect();
    let labels = host_labels(store, false).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(host, gpu, ts, v)| {
            let mut l = labels.get(&host)?.clone();
            if gpu >= 0 {
                l.insert("gpu".into(), gpu.to_string());
            }
            rule.selects(&l).then(|| Observation {
                labels: l,
                value: Some(v),
                active: t.op.holds(v, threshold),
                clear: t.op.clears(v, resolve),
                at: ts,
                occurrences: 1,
                description: t.metric.describe(v, t.op, threshold),
                held: None,
            })
        })
        .collect())
}

/// Hosts silent for longer than the rule's `after_secs`. Silence is counted from when this
/// evaluator began watching at the earliest: while no server ran, no host could report,
/// and after a server outage the agents need a few seconds to reconnect and ship what they
/// spooled; without this every host would fire at the first round after the outage. An
/// alert that is already firing resolves only on data (its real silence).
async fn absent_observations(
    store: &Store,
    rule: &Rule,
    a: &AbsentRule,
    now: DateTime<Utc>,
    watching_since: DateTime<Utc>,
) -> anyhow::Result<Vec<Observation>> {
    // Judged by arrival (the server's clock), not by the samples' own time: a host whose
    // clock is behind still reports.
    let rows = sqlx::query!(
        r#"SELECT id, COALESCE(last_heard, last_seen) AS last_seen,
                  removed_at IS NOT NULL AS "removed!" FROM hosts"#
    )
    .fetch_all(&store.pool)
    .await?;
    let labels = host_labels(store, true).await?;
    let after = Duration::seconds(a.after_secs as i64);
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let last = r.last_seen?;
            let l = labels.get(&r.id)?.clone();
            let silent = now - last;
            let watched = now - last.max(watching_since);
            rule.selects(&l).then(|| Observation {
                labels: l,
                value: Some(silent.num_seconds() as f64),
                // A host taken out of the fleet is not down: its alert resolves.
                active: watched > after && !r.removed,
                clear: silent <= after || r.removed,
                at: now,
                occurrences: 1,
                description: if r.removed {
                    "taken out of the fleet".into()
                } else {
                    format!(
                        "no data since {} ({} s)",
                        last.format("%Y-%m-%d %H:%M:%S UTC"),
                        silent.num_seconds()
                    )
                },
                held: None,
            })
        })
        .collect())
}

/// Pools whose plan a lead time ahead needs more GPUs than installed, or whose demand
/// trend reaches them within the rule's lead; racks whose power budget runs out within it.
/// Read from what the capacity job stored.
async fn capacity_observations(
    store: &Store,
    cfg: &Config,
    rule: &Rule,
    c: &CapacityRule,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Observation>> {
    let lead = Duration::days(i64::from(c.lead_days));
    let mut out = Vec::new();
    if c.pools {
        for r in store.recommendations(None).await? {
            let mut l = Labels::new();
            l.insert("pool".into(), r.pool.clone());
            // A pool may span sites: `site` selects the pools with hosts there; a pool
            // has no rack, so `rack` selects racks only.
            let selected = rule.matchers.iter().all(|(k, v)| match k.as_str() {
                "pool" => r.pool == *v,
                "site" => r.sites.contains(v),
                _ => false,
            });
            if !selected {
                continue;
            }
            // No plan this run (too little history, or a gap the recommender could not
            // read), or a plan from demand hours old (no host of the pool reports): an
            // alert of the pool is held as it is, not resolved as if the pool had left
            // the fleet, nor fired on old figures.
            if r.week_schedule.is_empty() || crate::analytics::capacity::stale(&r, now) {
                out.push(Observation {
                    labels: l,
                    value: None,
                    active: false,
                    clear: false,
                    at: r.computed_at,
                    occurrences: 1,
                    description: format!("pool {}: {}", r.pool, r.actions_now(now).join("; ")),
                    held: None,
                });
                continue;
            }
            let lead_peak = r.lead_plan.iter().copied().max().unwrap_or(0);
            let active = crate::analytics::capacity::short_within(&r, lead, now);
            out.push(Observation {
                labels: l,
                value: Some(f64::from(lead_peak - r.installed_gpus)),
                active,
                clear: !active,
                at: r.computed_at,
                occurrences: 1,
                description: format!("pool {}: {}", r.pool, r.actions_now(now).join("; ")),
                held: None,
            });
        }
    }
    if c.racks {
        for e in store.exhaustions(Some("rack")).await? {
            let (site, rack) = e.key.split_once('/').unwrap_or(("", &e.key));
            let mut l = Labels::new();
            l.insert("site".into(), site.to_string());
            l.insert("rack".into(), rack.to_string());
            if !rule.selects(&l) {
                continue;
            }
            let active = e.exhausted_at.is_some_and(|d| d <= now + lead);
            out.push(Observation {
                labels: l,
                value: Some(e.level_now / 1000.0),
                active,
                clear: !active,
                at: e.computed_at,
                occurrences: 1,
                description: format!(
                    "rack {}: {:.1} kW of a {:.1} kW budget, growing {:+.2} %/day; the budget {}",
                    e.key,
                    e.level_now / 1000.0,
                    e.capacity / 1000.0,
                    e.growth_per_day * 100.0,
                    crate::analytics::capacity::budget_outlook(
                        e.exhausted_at,
                        now,
                        cfg.capacity.horizon_days
                    )
                ),
                held: None,
            });
        }
    }
    // A pool that left the fleet (no host in it) or a rack no longer dated (its budget
    // removed) is observed no more: its alert resolves instead of firing on forever.
    let seen: HashSet<String> = out
        .iter()
        .map(|o| fingerprint(&rule.name, &o.labels))
        .collect();
    for (fp, a) in alerts_of(store, rule).await? {
        if a.state != "resolved" && !seen.contains(&fp) {
            out.push(Observation::gone(
                a.labels.0,
                now,
                "no longer in the capacity plan (no host in the pool, or no budget for the rack)"
                    .into(),
            ));
        }
    }
    Ok(out)
}

/// A host whose newest score is older than this is not judged (its scoring stopped, e.g.
/// no data): its anomaly alert stays as it is, like a threshold alert without samples.
const ANOMALY_STALE: Duration = Duration::minutes(10);
/// Missing minutes up to this long do not break a run of high scores (a late batch).
const ANOMALY_MAX_GAP: Duration = Duration::minutes(3);

struct ScoreRow {
    host_id: i64,
    ts: DateTime<Utc>,
    score: f32,
    threshold: f32,
    /// Only on each host's newest row: the others are judged by score alone.
    top: Option<sqlx::types::Json<Vec<Explanation>>>,
}

/// Per host: is the newest anomaly score above the level (the rule's `min_score`, else the
/// level stored with each score), since which minute has every score been above it, and
/// what drove the newest one.
async fn anomaly_observations(
    store: &Store,
    rule: &Rule,
    a: &AnomalyRule,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Observation>> {
    let for_ = Duration::seconds(a.for_secs as i64);
    // Newest first per host; `ts <= now` so a past instant can be evaluated.
    let rows: Vec<ScoreRow> = sqlx::query_as!(
        ScoreRow,
        r#"SELECT host_id, ts, score, threshold,
                CASE WHEN ts = max(ts) OVER (PARTITION BY host_id) THEN top END AS "top: sqlx::types::Json<Vec<Explanation>>"
           FROM anomaly_scores WHERE ts > $1 AND ts <= $2 ORDER BY host_id, ts DESC"#,
        now - for_ - ANOMALY_STALE,
        now,
    )
    .fetch_all(&store.pool)
    .await?;
    let labels = host_labels(store, false).await?;
    let level = |threshold: f32| a.level(threshold);
    let mut out = Vec::new();
    for host_rows in rows.chunk_by(|a, b| a.host_id == b.host_id) {
        let newest = &host_rows[0];
        let Some(l) = labels.get(&newest.host_id) else {
            continue;
        };
        if newest.ts < now - ANOMALY_STALE || !rule.selects(l) {
            continue;
        }
        let (score, lvl) = (f64::from(newest.score), level(newest.threshold));
        let active = score > lvl;
        // The run of minutes above the level that ends with the newest one.
        let mut since = newest.ts;
        for w in host_rows.windows(2) {
            let (newer, older) = (&w[0], &w[1]);
            if f64::from(older.score) <= level(older.threshold)
                || newer.ts - older.ts > ANOMALY_MAX_GAP
            {
                break;
            }
            since = older.ts;
        }
        // A score stands for its whole minute.
        let held = active.then(|| (since, newest.ts - since + Duration::minutes(1)));
        out.push(Observation {
            labels: l.clone(),
            value: Some(score),
            active,
            clear: score < a.resolve_below(lvl),
            at: newest.ts,
            occurrences: 1,
            description: anomaly_description(
                score,
                lvl,
                held.map(|h| h.1),
                newest.top.as_ref().map_or(&[][..], |t| t.0.as_slice()),
            ),
            held,
        });
    }
    Ok(out)
}

/// "anomaly score 14.2 (level 2.1) for 12 min; most unusual: gpu_temp_max_celsius 91 °C
/// on GPU 3 (typical 66 °C, 48 % of the score), …"
pub fn anomaly_description(
    score: f64,
    level: f64,
    held: Option<Duration>,
    top: &[Explanation],
) -> String {
    let mut s = format!("anomaly score {score:.1} (level {level:.1})");
    if let Some(h) = held {
        s.push_str(&format!(" for {} min", h.num_minutes()));
    }
    if !top.is_empty() {
        s.push_str("; most unusual: ");
        s.push_str(&crate::analytics::anomaly::anomaly_explanation(top));
    }
    s
}

/// Move alerts of `rule` (as `existing`, from [`alerts_of`]) through their states given this
/// round's observations, in one transaction.
async fn apply(
    store: &Store,
    rules: &RuleSet,
    rule: &Rule,
    existing: &HashMap<String, AlertRow>,
    obs: Vec<Observation>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut tx = store.pool.begin().await?;
    let seen: Vec<String> = obs
        .iter()
        .map(|o| fingerprint(&rule.name, &o.labels))
        .collect();
    apply_in(&mut tx, rules, rule, existing, obs, now).await?;
    // A pending alert this round did not observe (its host or GPU stopped reporting the
    // metric) starts over: `for` counts a condition seen throughout, and one sample over
    // the line hours later must not fire it at once.
    sqlx::query!(
        "DELETE FROM alerts WHERE rule = $1 AND state = 'pending' AND NOT (fingerprint = ANY($2))",
        &rule.name,
        &seen,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The alerts of `rule` as they stand, by fingerprint.
async fn alerts_of(store: &Store, rule: &Rule) -> anyhow::Result<HashMap<String, AlertRow>> {
    let existing: Vec<AlertRow> = sqlx::query_as!(
        AlertRow,
        r#"SELECT fingerprint, state, started_at, occurrences, flaps, labels AS "labels: sqlx::types::Json<Labels>", rule FROM alerts WHERE rule = $1"#,
        &rule.name,
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(existing
        .into_iter()
        .map(|a| (a.fingerprint.clone(), a))
        .collect())
}

/// `apply` inside the caller's transaction, against `existing` (`alerts_of`).
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    rule: &Rule,
    existing: &HashMap<String, AlertRow>,
    obs: Vec<Observation>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let for_ = Duration::seconds(rule.for_secs() as i64);
    for o in obs {
        let fp = fingerprint(&rule.name, &o.labels);
        let cur = existing.get(&fp);
        let state = cur.map(|a| a.state.as_str()).unwrap_or("none");
        match (state, o.active) {
            ("firing", true) => {
                sqlx::query!(
                    "UPDATE alerts SET last_active_at = $2, occurrences = occurrences + $3, value = $4, description = $5,
                            severity = $6, updated_at = now()
                      WHERE fingerprint = $1",
                    &fp,
                    now,
                    if matches!(rule.kind, RuleKind::Hardware(_)) { o.occurrences } else { 0 },
                    o.value,
                    &o.description,
                    &rule.severity,
                )
                .execute(&mut **tx)
                .await?;
            }
            ("firing", false) if o.clear => {
                // An alert no round observes any more says why it resolved.
                let why = o.value.is_none().then_some(o.description.as_str());
                resolve(tx, rules, rule, cur.expect("firing row"), now, why).await?;
            }
            ("firing", false) => {
                // Between the thresholds: hysteresis keeps it firing (under its rule's
                // severity of now).
                sqlx::query!(
                    "UPDATE alerts SET severity = $2 WHERE fingerprint = $1 AND severity <> $2",
                    &fp,
                    &rule.severity,
                )
                .execute(&mut **tx)
                .await?;
            }
            ("pending", true) => {
                let (since, held) = match o.held {
                    Some(h) => h,
                    None => {
                        let since = cur.expect("pending row").started_at;
                        (since, now - since)
                    }
                };
                if held >= for_ {
                    fire(tx, rules, rule, &fp, &o, since, now, cur).await?;
                } else {
                    // Pending: its value and detail follow the condition (a score still
                    // rising reads as it is now, not as when it first crossed).
                    sqlx::query!(
                        "UPDATE alerts SET value = $2, description = $3, last_active_at = $4, updated_at = now()
                          WHERE fingerprint = $1 AND state = 'pending'",
                        &fp,
                        o.value,
                        &o.description,
                        now,
                    )
                    .execute(&mut **tx)
                    .await?;
                }
            }
            ("pending", false) => {
                sqlx::query!(
                    "DELETE FROM alerts WHERE fingerprint = $1 AND state = 'pending'",
                    &fp
                )
                .execute(&mut **tx)
                .await?;
            }
            (_, true) => {
                // Rules judged on stored data know how long the condition has held already.
                let (since, held) = o.held.unwrap_or((o.at.min(now), Duration::zero()));
                if held >= for_ {
                    fire(tx, rules, rule, &fp, &o, since, now, cur).await?;
                } else {
                    let started = if o.held.is_some() { since } else { now };
                    sqlx::query!(
                        "INSERT INTO alerts (fingerprint, rule, severity, labels, state, value, summary, description, started_at, last_active_at)
                         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9)
                         ON CONFLICT (fingerprint) DO UPDATE SET state = 'pending', started_at = $8, last_active_at = $9,
                            value = $5, description = $7, resolved_at = NULL, fired_at = NULL, updated_at = now()",
                        &fp,
                        &rule.name,
                        &rule.severity,
                        sqlx::types::Json(&o.labels) as _,
                        o.value,
                        summary(rule),
                        &o.description,
                        started,
                        now,
                    )
                    .execute(&mut **tx)
                    .await?;
                }
            }
            (_, false) => {}
        }
    }
    Ok(())
}

fn summary(rule: &Rule) -> String {
    if rule.summary.is_empty() {
        rule.name.clone()
    } else {
        rule.summary.clone()
    }
}

#[allow(clippy::too_many_arguments)]
async fn fire(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    rule: &Rule,
    fp: &str,
    o: &Observation,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    prev: Option<&AlertRow>,
) -> anyhow::Result<()> {
    // Flapping: the firings that started within the last hour before this one (each a
    // re-fire when this one fires too).
    let flaps = match prev {
        Some(_) => sqlx::query_scalar!(
            r#"SELECT count(*)::int4 AS "n!" FROM incidents WHERE fingerprint = $1 AND started_at >= $2"#,
            fp,
            now - Duration::hours(1),
        )
        .fetch_one(&mut **tx)
        .await?,
        None => 0,
    };
    sqlx::query!(
        "INSERT INTO alerts (fingerprint, rule, severity, labels, state, value, summary, description, started_at, fired_at,
                             last_active_at, occurrences, flaps)
         VALUES ($1, $2, $3, $4, 'firing', $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (fingerprint) DO UPDATE SET state = 'firing', severity = $3, labels = $4, value = $5, summary = $6,
            description = $7, started_at = $8, fired_at = $9, last_active_at = $10, occurrences = $11, flaps = $12,
            resolved_at = NULL, acknowledged_by = NULL, acknowledged_at = NULL, updated_at = now()",
        fp,
        &rule.name,
        &rule.severity,
        sqlx::types::Json(&o.labels) as _,
        o.value,
        summary(rule),
        &o.description,
        since,
        now,
        now,
        o.occurrences.max(1),
        flaps,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO incidents (fingerprint, rule, severity, labels, summary, started_at, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        fp,
        &rule.name,
        &rule.severity,
        sqlx::types::Json(&o.labels) as _,
        summary(rule),
        since,
        &o.description,
    )
    .execute(&mut **tx)
    .await?;
    if flaps >= FLAP_LIMIT {
        tracing::info!(
            alert = fp,
            flaps,
            "alert is flapping; not mailing until it settles"
        );
        return Ok(());
    }
    let snap = AlertSnapshot {
        fingerprint: fp.to_string(),
        rule: rule.name.clone(),
        severity: rule.severity.clone(),
        labels: o.labels.clone(),
        summary: summary(rule),
        description: o.description.clone(),
        value: o.value,
        started_at: since,
        resolved_at: None,
        occurrences: o.occurrences.max(1),
    };
    enqueue(tx, rules, &snap, "firing", now).await
}

/// Resolve `a`; `why`, when given, replaces its description and goes into the resolved
/// notification (an alert resolved because its host or rule went away says so).
async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    rule: &Rule,
    a: &AlertRow,
    now: DateTime<Utc>,
    why: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE alerts SET state = 'resolved', resolved_at = $2, updated_at = now(),
                description = COALESCE($3, description)
          WHERE fingerprint = $1",
        &a.fingerprint,
        now,
        why,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "UPDATE incidents SET resolved_at = $2 WHERE fingerprint = $1 AND resolved_at IS NULL",
        &a.fingerprint,
        now,
    )
    .execute(&mut **tx)
    .await?;
    if a.flaps >= FLAP_LIMIT {
        return Ok(());
    }
    let snap = AlertSnapshot {
        fingerprint: a.fingerprint.clone(),
        rule: a.rule.clone(),
        severity: rule.severity.clone(),
        labels: a.labels.0.clone(),
        summary: summary(rule),
        description: why.unwrap_or_default().to_string(),
        value: None,
        started_at: a.started_at,
        resolved_at: Some(now),
        occurrences: a.occurrences,
    };
    enqueue(tx, rules, &snap, "resolved", now).await
}

/// Hardware alerts resolve after a quiet period without recurrences, once their GPU
/// has reported since its last event: a GPU that fell off the bus (or stopped reporting
/// after its fault) is quiet because it is gone, not because it recovered, so its alert
/// fires until it reports again or its host is taken out of the fleet.
async fn resolve_quiet_hardware(
    store: &Store,
    rules: &RuleSet,
    rule: &Rule,
    h: &HardwareRule,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let quiet: Vec<AlertRow> = sqlx::query_as!(
        AlertRow,
        r#"SELECT fingerprint, state, started_at, occurrences, flaps, labels AS "labels: sqlx::types::Json<Labels>", rule FROM alerts
          WHERE rule = $1 AND state = 'firing' AND last_active_at < $2"#,
        &rule.name,
        now - Duration::seconds(h.resolve_after_secs as i64),
    )
    .fetch_all(&store.pool)
    .await?;
    if quiet.is_empty() {
        return Ok(());
    }
    // Per GPU named by these alerts (hosts still in the fleet): its newest sample and its
    // newest event of this rule's kinds, both by the agent's clock.
    let gpu_of = |a: &AlertRow| {
        let l = &a.labels.0;
        l.get("host").cloned().zip(l.get("gpu").cloned())
    };
    let hosts: Vec<String> = quiet.iter().filter_map(gpu_of).map(|(h, _)| h).collect();
    let mut silent: HashSet<(String, String)> = HashSet::new();
    if !hosts.is_empty() {
        let oldest = quiet.iter().map(|a| a.started_at).min().unwrap_or(now) - Duration::hours(1);
        for r in sqlx::query!(
            r#"SELECT h.name, l.gpu_index, l.ts AS sample_ts, e.event_ts AS "event_ts!"
                 FROM hosts h
                 JOIN gpu_latest l ON l.host_id = h.id
                 JOIN (SELECT host_id, gpu_index, max(ts) AS event_ts FROM hardware_events
                        WHERE ts >= $3 AND host_id IN (SELECT id FROM hosts WHERE name = ANY($1))
                          AND (cardinality($2::text[]) = 0 OR kind = ANY($2))
                        GROUP BY host_id, gpu_index) e
                   ON e.host_id = l.host_id AND e.gpu_index = l.gpu_index
                WHERE h.name = ANY($1) AND h.removed_at IS NULL"#,
            &hosts,
            &h.kinds(),
            oldest,
        )
        .fetch_all(&store.pool)
        .await?
        {
            if r.sample_ts < r.event_ts {
                silent.insert((r.name, r.gpu_index.to_string()));
            }
        }
    }
    let quiet: Vec<AlertRow> = quiet
        .into_iter()
        .filter(|a| !gpu_of(a).is_some_and(|k| silent.contains(&k)))
        .collect();
    if quiet.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    for a in &quiet {
        resolve(&mut tx, rules, rule, a, now, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A firing alert as a notification reads it.
struct FiringRow {
    fingerprint: String,
    rule: String,
    severity: String,
    labels: sqlx::types::Json<Labels>,
    summary: String,
    description: String,
    value: Option<f64>,
    started_at: DateTime<Utc>,
    occurrences: i32,
}

impl FiringRow {
    fn snapshot(self) -> AlertSnapshot {
        AlertSnapshot {
            fingerprint: self.fingerprint,
            rule: self.rule,
            severity: self.severity,
            labels: self.labels.0,
            summary: self.summary,
            description: self.description,
            value: self.value,
            started_at: self.started_at,
            resolved_at: None,
            occurrences: self.occurrences,
        }
    }
}

/// Flapping alerts that have fired for [`SETTLE`] without resolving: mailed now as
/// firing (their re-fires were not), and flapping no more.
async fn settle_flapping(store: &Store, rules: &RuleSet, now: DateTime<Utc>) -> anyhow::Result<()> {
    let mut tx = store.pool.begin().await?;
    let settled = sqlx::query_as!(
        FiringRow,
        r#"UPDATE alerts SET flaps = 0, updated_at = now()
            WHERE state = 'firing' AND flaps >= $2 AND fired_at <= $1
        RETURNING fingerprint, rule, severity, labels AS "labels: sqlx::types::Json<Labels>", summary, description,
                  value, started_at, occurrences"#,
        now - SETTLE,
        FLAP_LIMIT,
    )
    .fetch_all(&mut *tx)
    .await?;
    for r in settled {
        tracing::info!(alert = %r.fingerprint, "flapping alert has fired steadily for an hour; mailing it");
        enqueue(&mut tx, rules, &r.snapshot(), "firing", now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Still firing and not acknowledged: reminders for alerts last mailed longer than
/// `repeat_interval` ago, and the first notice of alerts that fired while muted (a
/// silence, or their host down) once nothing mutes them any more.
async fn repeat_reminders(
    store: &Store,
    rules: &RuleSet,
    cfg: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    // `last_notified_at` before `fired_at`: not announced since it last fired.
    let due = sqlx::query_as!(
        FiringRow,
        r#"SELECT fingerprint, rule, severity, labels AS "labels: sqlx::types::Json<Labels>", summary, description, value, started_at, occurrences FROM alerts
          WHERE state = 'firing' AND acknowledged_at IS NULL AND flaps < $2
            AND (last_notified_at IS NULL OR last_notified_at < fired_at OR last_notified_at < $1)"#,
        now - Duration::seconds(cfg.alerting.repeat_interval_secs as i64),
        FLAP_LIMIT,
    )
    .fetch_all(&store.pool)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    for r in due {
        let a = r.snapshot();
        // Checked quietly: a muted alert is looked at again every round.
        if muted(&mut tx, rules, &a, now).await?.is_some()
            || rules.recipients(&routing_of(&a)).is_empty()
        {
            continue;
        }
        deliver(&mut tx, rules, &a, "firing", now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The labels routes and silences match: the alert's, its rule and its severity.
fn routing_of(a: &AlertSnapshot) -> BTreeMap<String, String> {
    let mut routing: BTreeMap<String, String> = a.labels.clone();
    routing.insert("rule".into(), a.rule.clone());
    routing.insert("severity".into(), a.severity.clone());
    routing
}

/// Why `a` is not to be mailed now: a silence matches it, or (a GPU's alert) its host
/// has stopped reporting.
async fn muted(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    a: &AlertSnapshot,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<&'static str>> {
    if super::silence::silenced(&mut **tx, &routing_of(a), now).await? {
        return Ok(Some("silenced"));
    }
    if a.labels.contains_key("gpu") {
        if let Some(host) = a.labels.get("host") {
            let absent: Vec<String> = rules
                .rules
                .iter()
                .filter(|r| matches!(r.kind, RuleKind::Absent(_)))
                .map(|r| r.name.clone())
                .collect();
            let host_down: bool = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM alerts a WHERE a.state = 'firing' AND a.labels->>'host' = $1
                   AND NOT (a.labels ? 'gpu') AND a.rule IN (SELECT unnest($2::text[]))) AS "down!""#,
                host,
                &absent,
            )
            .fetch_one(&mut **tx)
            .await?;
            if host_down {
                return Ok(Some("inhibited: its host is down"));
            }
        }
    }
    Ok(None)
}

/// Queue a notification unless muted ([`muted`]). A resolve of an alert that was mailed
/// since it fired is always sent: whoever got the first notice (a pager's incident
/// among them) hears that it ended, even from under a silence set meanwhile.
async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    a: &AlertSnapshot,
    kind: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let announced = kind == "resolved"
        && sqlx::query_scalar!(
            r#"SELECT last_notified_at >= fired_at AS "announced!" FROM alerts
                WHERE fingerprint = $1 AND last_notified_at IS NOT NULL AND fired_at IS NOT NULL"#,
            &a.fingerprint,
        )
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(false);
    if !announced {
        if let Some(why) = muted(tx, rules, a, now).await? {
            tracing::info!(alert = %a.fingerprint, kind, "{why}; no notification");
            return Ok(());
        }
    }
    deliver(tx, rules, a, kind, now).await
}

/// Queue a notification for each route that matches `a`, and note when.
async fn deliver(
    tx: &mut Transaction<'_, Postgres>,
    rules: &RuleSet,
    a: &AlertSnapshot,
    kind: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let routing = routing_of(a);
    let to = rules.recipients(&routing);
    if to.is_empty() {
        tracing::warn!(alert = %a.fingerprint, "no route matches; add a [[route]] without `match` as a default");
        return Ok(());
    }
    // One outbox row per destination: the mail's addresses together, each channel on
    // its own, so that each is delivered, retried and marked sent by itself.
    let (channels, mails): (Vec<String>, Vec<String>) = to
        .into_iter()
        .partition(|t| super::rules::channel_of(t).is_some());
    let mut destinations: Vec<Vec<String>> = channels.into_iter().map(|c| vec![c]).collect();
    if !mails.is_empty() {
        destinations.insert(0, mails);
    }
    for to in destinations {
        let group_key = format!("{}|{}", a.rule, to.join(","));
        sqlx::query!(
            "INSERT INTO notification_outbox (group_key, fingerprint, kind, recipients, alert) VALUES ($1, $2, $3, $4, $5)",
            group_key,
            &a.fingerprint,
            kind,
            &to,
            sqlx::types::Json(a) as _,
        )
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE alerts SET last_notified_at = $2 WHERE fingerprint = $1",
        &a.fingerprint,
        now,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
