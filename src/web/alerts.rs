//! The alerts page: firing, pending and silenced alerts, silences and incident history;
//! operators acknowledge and silence from here.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{verify_csrf, ApiUser, ClientAddr, Csrf, PageUser};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::{rack_path, render, seg, Nav};
use super::params::{ApiQuery, NoParams, PageForm, PageQuery};
use super::AppState;
use crate::alert::silence::Silence;
use crate::alert::{location, AlertRow, Labels};
use crate::store::audit::Entry;
use crate::store::auth::{Role, User};
use axum::http::HeaderMap;

/// The alerts page and its forms (acknowledge, silence, expire).
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/alerts", page)
        .post("/alerts/ack", acknowledge)
        .post("/alerts/unack", unacknowledge)
        .post("/silences", silence)
        .post("/silences/expire", expire)
}

/// `GET /api/v1/alerts`, acknowledging an alert, and silences.
pub fn api_routes() -> Routes {
    Routes::new()
        .routes(routes!(api))
        .routes(routes!(ack_api, unack_api))
        .routes(routes!(silences_api, create_silence_api))
        .routes(routes!(expire_api))
}

/// A pending or firing alert, with whether a silence mutes it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Alert)]
pub struct AlertEntry {
    #[serde(flatten)]
    pub alert: AlertRow,
    /// An active silence mutes its notifications.
    pub silenced: bool,
}

/// An incident (one firing period).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IncidentRow {
    pub rule: String,
    pub severity: String,
    pub labels: sqlx::types::Json<Labels>,
    pub summary: String,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// An alert row for the template.
pub struct AlertView {
    pub fingerprint: String,
    /// The row's id (`alert-` and a hash of the fingerprint): where the page returns to
    /// after an action on it.
    pub anchor: String,
    pub severity: String,
    pub state: String,
    pub summary: String,
    pub location: String,
    /// The page of its place ([`place_link`]).
    pub link: String,
    pub description: String,
    pub since: String,
    pub occurrences: i32,
    pub flapping: bool,
    pub silenced: bool,
    pub acked: String,
    /// Matchers of a silence for exactly this alert (`rule=…, host=…, gpu=…`).
    pub silence_matchers: String,
}

/// The page of an alert's place: its GPU, its host, its rack or its pool (none without).
pub fn place_link(labels: &Labels) -> String {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
    match (
        get("host"),
        get("gpu"),
        get("site"),
        get("rack"),
        get("pool"),
    ) {
        (Some(h), Some(g), ..) if g.parse::<u16>().is_ok() => {
            format!("/hosts/{}/gpus/{g}", seg(h))
        }
        (Some(h), ..) => format!("/hosts/{}", seg(h)),
        (None, _, Some(s), Some(r), _) => rack_path(s, r),
        (None, _, _, _, Some(p)) => format!("/capacity/pools/{}", seg(p)),
        _ => String::new(),
    }
}

/// Matchers that silence this alert and its like on the same GPU or host: the rule and
/// the alert's place (site, rack, host, gpu), never labels that vary (an XID code).
pub fn silence_matchers(rule: &str, labels: &Labels) -> String {
    let mut m = vec![format!("rule={rule}")];
    for k in ["host", "gpu"] {
        if let Some(v) = labels.get(k) {
            m.push(format!("{k}={v}"));
        }
    }
    if !labels.contains_key("host") {
        for k in ["site", "rack", "pool"] {
            if let Some(v) = labels.get(k) {
                m.push(format!("{k}={v}"));
            }
        }
    }
    m.join(", ")
}

pub struct SilenceView {
    pub id: i64,
    pub matchers: String,
    /// Its start when it is scheduled ahead; empty when it holds now.
    pub from: String,
    /// When it started holding, for one that holds now.
    pub started: String,
    pub until: String,
    pub author: String,
    pub comment: String,
}

pub struct IncidentView {
    pub summary: String,
    pub severity: String,
    pub location: String,
    pub started: String,
    pub ended: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
pub struct AlertsPage {
    pub nav: Nav,
    pub can_act: bool,
    pub firing: Vec<AlertView>,
    pub pending: Vec<AlertView>,
    pub silences: Vec<SilenceView>,
    pub history: Vec<IncidentView>,
    /// Delivery state of each notification channel (email, webhooks, Slack, PagerDuty).
    pub channels: Vec<crate::alert::notify::ChannelState>,
    /// No SMTP server is configured: alert mail waits in the outbox.
    pub mail_unsent: bool,
    /// The new-silence form: empty, or as sent with what was wrong.
    pub form: SilenceFormView,
    /// Why an action on an alert did nothing (it resolved, or someone else took it while
    /// the page was open).
    pub notice: Option<String>,
}

/// The new-silence form's fields, and the error of the last try (shown at the form).
pub struct SilenceFormView {
    pub error: Option<String>,
    pub matchers: String,
    pub start: String,
    pub hours: String,
    pub comment: String,
}

impl Default for SilenceFormView {
    fn default() -> Self {
        SilenceFormView {
            error: None,
            matchers: String::new(),
            start: String::new(),
            hours: "2".into(),
            comment: String::new(),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    super::page::time_attr(t)
}

pub async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    _q: PageQuery<NoParams>,
) -> Result<Response, PageError> {
    Ok(render(
        &alerts_page(&st, &user, csrf, SilenceFormView::default()).await?,
    ))
}

async fn alerts_page(
    st: &AppState,
    user: &User,
    csrf: Csrf,
    form: SilenceFormView,
) -> Result<AlertsPage, ApiError> {
    let cur = st.store.current_alerts_silenced(Utc::now()).await?;
    let view = |(a, silenced): &(AlertRow, bool)| AlertView {
        fingerprint: a.fingerprint.clone(),
        anchor: super::page::alert_anchor(&a.fingerprint),
        severity: a.severity.clone(),
        state: a.state.clone(),
        summary: a.summary.clone(),
        location: location(&a.labels.0),
        link: place_link(&a.labels.0),
        description: a.description.clone(),
        since: ts(a.started_at),
        occurrences: a.occurrences,
        flapping: a.flaps >= crate::alert::eval::FLAP_LIMIT,
        silenced: *silenced,
        acked: a.acknowledged_by.clone().unwrap_or_default(),
        silence_matchers: silence_matchers(&a.rule, &a.labels.0),
    };
    let firing = cur
        .iter()
        .filter(|(a, _)| a.state == "firing")
        .map(view)
        .collect();
    let pending = cur
        .iter()
        .filter(|(a, _)| a.state == "pending")
        .map(view)
        .collect();
    let now = Utc::now();
    let silences = st
        .store
        .active_silences(now)
        .await?
        .into_iter()
        .map(|s| SilenceView {
            id: s.id,
            from: if s.starts_at > now {
                ts(s.starts_at)
            } else {
                String::new()
            },
            started: ts(s.starts_at),
            matchers: s
                .matchers
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            until: ts(s.ends_at),
            author: s.author,
            comment: s.comment,
        })
        .collect();
    let history: Vec<IncidentRow> = sqlx::query_as!(
        IncidentRow,
        r#"SELECT rule, severity, labels AS "labels: sqlx::types::Json<Labels>", summary, started_at, resolved_at
             FROM incidents ORDER BY started_at DESC LIMIT 100"#,
    )
    .fetch_all(&st.store.pool)
    .await?;
    let history = history
        .into_iter()
        .map(|i| IncidentView {
            summary: i.summary,
            severity: i.severity,
            location: location(&i.labels.0),
            started: ts(i.started_at),
            ended: i.resolved_at.map(ts).unwrap_or_default(),
        })
        .collect();
    let channels = crate::alert::notify::channel_states(&st.store).await?;
    Ok(AlertsPage {
        channels,
        mail_unsent: st.cfg.alerting.smtp.host.trim().is_empty(),
        can_act: user.role >= Role::Operator,
        nav: Nav::new(user, csrf, "alerts"),
        firing,
        pending,
        silences,
        history,
        form,
        notice: None,
    })
}

fn require_operator(user: &User) -> Result<(), ApiError> {
    if user.role >= Role::Operator {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "acknowledging and silencing need the operator or admin role".into(),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckForm {
    fingerprint: String,
    #[serde(default)]
    csrf: String,
}

pub async fn acknowledge(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<AckForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    let done = ack(&st, &user, ip, &f.fingerprint).await.map(|_| ());
    back_to_alerts(&st, &user, csrf, &f.fingerprint, done).await
}

/// After an action on an alert: back to the list at its row (focus and the reader's place
/// stay with the alert acted on); when the alert changed meanwhile (it resolved, or
/// someone acknowledged it first), the list as it is now with the reason above it,
/// instead of a bare error page.
async fn back_to_alerts(
    st: &AppState,
    user: &User,
    csrf: Csrf,
    fingerprint: &str,
    done: Result<(), ApiError>,
) -> Result<Response, PageError> {
    match done {
        Ok(()) => Ok(Redirect::to(&format!(
            "/alerts#{}",
            super::page::alert_anchor(fingerprint)
        ))
        .into_response()),
        Err(e @ (ApiError::NotFound(_) | ApiError::Conflict(_))) => {
            let mut page = alerts_page(st, user, csrf, SilenceFormView::default()).await?;
            page.notice = Some(format!("{e}; the list below is as it is now."));
            let mut resp = render(&page);
            *resp.status_mut() = e.status();
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

/// Take back an acknowledgement (made by mistake, or the person is off shift): the alert
/// is unhandled again and its reminders resume.
pub async fn unacknowledge(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<AckForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    let done = unack(&st, &user, ip, &f.fingerprint).await;
    back_to_alerts(&st, &user, csrf, &f.fingerprint, done).await
}

/// Clear a firing alert's acknowledgement and record it (with who had it) in the audit
/// trail; 404 unless one with `fingerprint` is firing and acknowledged.
async fn unack(
    st: &AppState,
    user: &User,
    ip: Option<std::net::IpAddr>,
    fingerprint: &str,
) -> Result<(), ApiError> {
    let was = sqlx::query_scalar!(
        r#"UPDATE alerts a SET acknowledged_by = NULL, acknowledged_at = NULL
             FROM (SELECT fingerprint, acknowledged_by FROM alerts
                    WHERE fingerprint = $1 AND state = 'firing' AND acknowledged_by IS NOT NULL
                    FOR UPDATE) old
            WHERE a.fingerprint = old.fingerprint
        RETURNING old.acknowledged_by AS "was!""#,
        fingerprint,
    )
    .fetch_optional(&st.store.pool)
    .await?
    .ok_or_else(|| {
        ApiError::NotFound("no firing, acknowledged alert with that fingerprint".into())
    })?;
    st.store
        .audit(
            Entry::ok(&user.name, "alert.unacknowledged", fingerprint)
                .from(ip)
                .details(serde_json::json!({ "was_acknowledged_by": was })),
        )
        .await?;
    Ok(())
}

/// An acknowledged alert.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Acknowledged {
    pub fingerprint: String,
    pub acknowledged_by: String,
    pub acknowledged_at: DateTime<Utc>,
}

/// Acknowledge a firing alert and record it in the audit trail; 404 unless one with
/// `fingerprint` is firing.
async fn ack(
    st: &AppState,
    user: &User,
    ip: Option<std::net::IpAddr>,
    fingerprint: &str,
) -> Result<Acknowledged, ApiError> {
    let at = sqlx::query_scalar!(
        r#"UPDATE alerts SET acknowledged_by = $2, acknowledged_at = now()
            WHERE fingerprint = $1 AND state = 'firing' AND acknowledged_by IS NULL
        RETURNING acknowledged_at AS "at!""#,
        fingerprint,
        &user.name,
    )
    .fetch_optional(&st.store.pool)
    .await?;
    let Some(at) = at else {
        // Already taken, or not firing: say which.
        let taken = sqlx::query!(
            r#"SELECT acknowledged_by AS "by!", acknowledged_at AS "at!" FROM alerts
                WHERE fingerprint = $1 AND state = 'firing' AND acknowledged_by IS NOT NULL"#,
            fingerprint
        )
        .fetch_optional(&st.store.pool)
        .await?;
        return Err(match taken {
            Some(t) => ApiError::Conflict(format!(
                "already acknowledged by {} at {}",
                t.by,
                t.at.format("%Y-%m-%d %H:%M:%S UTC")
            )),
            None => ApiError::NotFound(format!("no firing alert with fingerprint {fingerprint:?}")),
        });
    };
    st.store
        .audit(Entry::ok(&user.name, "alert.acknowledged", fingerprint).from(ip))
        .await?;
    Ok(Acknowledged {
        fingerprint: fingerprint.to_string(),
        acknowledged_by: user.name.clone(),
        acknowledged_at: at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceForm {
    /// `host=gpu-17, rule=gpu-xid`
    matchers: String,
    /// Hours (text: a typo comes back next to the form with what was typed).
    hours: String,
    #[serde(default)]
    comment: String,
    /// A start ahead (`datetime-local` in the viewer's zone); empty: now.
    #[serde(default)]
    start: String,
    /// UTC − local time in minutes, filled in by the page's script.
    #[serde(default)]
    tzo: i32,
    #[serde(default)]
    csrf: String,
}

pub async fn silence(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    csrf: Csrf,
    PageForm(f): PageForm<SilenceForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    let made = async {
        let items: Vec<String> = f
            .matchers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let m = crate::alert::silence::parse_matchers(&items).map_err(ApiError::BadRequest)?;
        let start = match f.start.trim() {
            "" => None,
            t => Some(super::range::parse_time("start", t, f.tzo)?),
        };
        let hours: f64 = f.hours.trim().parse().map_err(|_| {
            ApiError::BadRequest(format!("hours: {:?} is not a number of hours", f.hours))
        })?;
        create_silence(&st, &user, ip, m, (start, hours), &f.comment).await
    }
    .await;
    match made {
        // Kept (a host being installed may be silenced ahead), but a misspelt name mutes
        // nothing: the list says so above it.
        Ok(s) => {
            let notes = crate::alert::silence::unknown_targets(&st.store, &s.matchers).await?;
            if notes.is_empty() {
                return Ok(Redirect::to("/alerts").into_response());
            }
            let mut page = alerts_page(&st, &user, csrf, SilenceFormView::default()).await?;
            page.notice = Some(format!(
                "Silence {} created. Note: {}.",
                s.id,
                notes.join("; ")
            ));
            Ok(render(&page))
        }
        // What was wrong goes next to the form, with what was typed.
        Err(ApiError::BadRequest(why)) => {
            let form = SilenceFormView {
                error: Some(form_words(&why)),
                matchers: f.matchers,
                start: f.start,
                hours: f.hours,
                comment: f.comment,
            };
            let page = alerts_page(&st, &user, csrf, form).await?;
            Ok((StatusCode::BAD_REQUEST, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// An error of [`create_silence`] (which names fields as the API spells them) in the
/// words of the page's form: `Starts: …`, `Matchers: rule: …`.
fn form_words(why: &str) -> String {
    for (api, label) in [
        ("starts_at: ", "Starts: "),
        ("start: ", "Starts: "),
        ("hours: ", "Hours: "),
        ("comment: ", "Comment: "),
        ("matchers.", "Matchers: "),
    ] {
        if let Some(rest) = why.strip_prefix(api) {
            return format!("{label}{rest}");
        }
    }
    why.to_string()
}

/// Store a silence of `hours` from `start` (now when `None`; a past one is refused) and record it in the
/// audit trail.
async fn create_silence(
    st: &AppState,
    user: &User,
    ip: Option<std::net::IpAddr>,
    m: Labels,
    (start, hours): (Option<DateTime<Utc>>, f64),
    comment: &str,
) -> Result<Silence, ApiError> {
    use crate::alert::silence::{check_comment, silence_end, silence_start};
    // Each error names its field as the API spells it.
    let bad = |field: &'static str| move |e: String| ApiError::BadRequest(format!("{field}: {e}"));
    // Named as the API spells the field: `matchers.rule`.
    crate::alert::silence::check_rule(&m, &st.cfg.alerting.rules_file)
        .map_err(|e| ApiError::BadRequest(format!("matchers.{e}")))?;
    check_comment(comment).map_err(bad("comment"))?;
    let now = silence_start(Utc::now(), start).map_err(bad("starts_at"))?;
    let end = silence_end(now, hours).map_err(bad("hours"))?;
    let s = st
        .store
        .create_silence(&m, now, end, &user.name, comment)
        .await
        .map_err(ApiError::Internal)?;
    let text: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    st.store
        .audit(
            Entry::ok(&user.name, "silence.created", &format!("silence {}", s.id))
                .from(ip)
                .details(serde_json::json!({
                    "matchers": text.join(", "), "from": s.starts_at.to_rfc3339(),
                    "until": s.ends_at.to_rfc3339(), "comment": comment
                })),
        )
        .await?;
    Ok(s)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireForm {
    id: i64,
    #[serde(default)]
    csrf: String,
}

pub async fn expire(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    csrf: Csrf,
    PageForm(f): PageForm<ExpireForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    match end_silence(&st, &user, ip, f.id).await {
        Ok(_) => Ok(Redirect::to("/alerts").into_response()),
        // Ended meanwhile (its end came, or another operator ended it): the list as it is.
        Err(ApiError::NotFound(_)) => {
            let mut page = alerts_page(&st, &user, csrf, SilenceFormView::default()).await?;
            page.notice = Some(format!(
                "Silence {} has already ended or been cancelled; the list below is as it is now.",
                f.id
            ));
            let mut resp = render(&page);
            *resp.status_mut() = StatusCode::NOT_FOUND;
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

/// End an active silence now, or cancel one scheduled ahead, and record it in the audit
/// trail (`silence.expired`, `silence.cancelled`); 404 when none has `id`.
async fn end_silence(
    st: &AppState,
    user: &User,
    ip: Option<std::net::IpAddr>,
    id: i64,
) -> Result<Silence, ApiError> {
    let (s, cancelled) = st.store.expire_silence(id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("no active or scheduled silence with id {id}"))
    })?;
    let action = if cancelled {
        "silence.cancelled"
    } else {
        "silence.expired"
    };
    st.store
        .audit(Entry::ok(&user.name, action, &format!("silence {id}")).from(ip))
        .await?;
    Ok(s)
}

/// Pending and firing alerts (the alerts page), most severe first, each with whether a
/// silence mutes it.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    operation_id = "alerts",
    tag = "alerts",
    responses(
        (status = 200, description = "The alerts.", body = Vec<AlertEntry>),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
    )
)]
pub async fn api(
    State(st): State<AppState>,
    _u: ApiUser,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Vec<AlertEntry>>, ApiError> {
    let cur = st.store.current_alerts_silenced(Utc::now()).await?;
    Ok(Json(
        cur.into_iter()
            .map(|(alert, silenced)| AlertEntry { alert, silenced })
            .collect(),
    ))
}

/// Acknowledge a firing alert (operator or admin): it stays firing, and the alerts page
/// and API show who took it.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{fingerprint}/ack",
    operation_id = "acknowledge_alert",
    tag = "alerts",
    params(("fingerprint" = String, Path, description = "The alert's fingerprint (`GET /api/v1/alerts`).")),
    responses(
        (status = 200, description = "Acknowledged.", body = Acknowledged),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the operator role.", body = ErrorBody),
        (status = 404, description = "No firing alert has that fingerprint.", body = ErrorBody),
        (status = 409, description = "Someone already acknowledged it (named in the error).", body = ErrorBody),
    )
)]
pub async fn ack_api(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    ClientAddr(ip): ClientAddr,
    Path(fingerprint): Path<String>,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Acknowledged>, ApiError> {
    require_operator(&user)?;
    Ok(Json(ack(&st, &user, ip, &fingerprint).await?))
}

/// Take back the acknowledgement of a firing alert: it counts as unhandled again and its
/// reminders resume.
#[utoipa::path(
    delete,
    path = "/api/v1/alerts/{fingerprint}/ack",
    operation_id = "unacknowledge_alert",
    tag = "alerts",
    params(("fingerprint" = String, Path, description = "The alert's fingerprint (`GET /api/v1/alerts`).")),
    responses(
        (status = 204, description = "The acknowledgement is gone."),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the operator role.", body = ErrorBody),
        (status = 404, description = "No firing, acknowledged alert has that fingerprint.", body = ErrorBody),
    )
)]
pub async fn unack_api(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    ClientAddr(ip): ClientAddr,
    Path(fingerprint): Path<String>,
    _q: ApiQuery<NoParams>,
) -> Result<StatusCode, ApiError> {
    require_operator(&user)?;
    unack(&st, &user, ip, &fingerprint).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Silences not yet over, scheduled ones included, by start.
#[utoipa::path(
    get,
    path = "/api/v1/silences",
    operation_id = "silences",
    tag = "alerts",
    responses(
        (status = 200, description = "The silences not yet over (a future `starts_at` is a scheduled one).", body = Vec<Silence>),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
    )
)]
pub async fn silences_api(
    State(st): State<AppState>,
    _u: ApiUser,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Vec<Silence>>, ApiError> {
    Ok(Json(st.store.active_silences(Utc::now()).await?))
}

/// A new silence, as asked for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Labels an alert must all equal to be muted: site, rack, pool, host, gpu, rule,
    /// severity, event, xid.
    #[schema(example = json!({"host": "gpu-17", "rule": "gpu-xid"}))]
    #[serde(deserialize_with = "unique_labels")]
    pub matchers: std::collections::BTreeMap<String, String>,
    /// When it starts, for a maintenance window ahead (at most 90 days); now when left
    /// out. A time more than 5 minutes past is refused.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// How long it lasts from its start: at least 1 second (1/3600) and at most 2,160 hours
    /// (90 days).
    pub hours: f64,
    /// Why (at most 1,000 characters).
    #[serde(default)]
    pub comment: String,
}

/// An object of label → value strings in which no label comes twice (a silence matches
/// all of its matchers, so `host=a, host=b` would match nothing).
fn unique_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    struct Labels;
    impl<'de> serde::de::Visitor<'de> for Labels {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of label: value strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut m = std::collections::BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, String>()? {
                if m.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "label {k} is given twice; a silence mutes alerts that match all of its matchers, so make one silence for each"
                    )));
                }
                m.insert(k, v);
            }
            Ok(m)
        }
    }
    d.deserialize_map(Labels)
}

/// Mute the notifications of matching alerts for `hours`, from now or from `starts_at`
/// (a maintenance window ahead; operator or admin). Alerts keep firing and show as
/// silenced while it holds.
#[utoipa::path(
    post,
    path = "/api/v1/silences",
    operation_id = "create_silence",
    tag = "alerts",
    request_body = NewSilence,
    responses(
        (status = 201, description = "The silence, with notes on names no host carries.", body = CreatedSilence),
        (status = 400, description = "A bad matcher, start, duration or comment, named.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the operator role.", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`.", body = ErrorBody),
    )
)]
pub async fn create_silence_api(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    ClientAddr(ip): ClientAddr,
    _q: ApiQuery<NoParams>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<CreatedSilence>), ApiError> {
    require_operator(&user)?;
    let new: NewSilence = super::body::json(
        &st,
        &headers,
        body,
        super::body::Shape::Object,
        r#"{"matchers": {"host": "gpu-17"}, "hours": 2, "comment": "…"}"#,
    )
    .await?;
    let mut m = Labels::new();
    for (k, v) in &new.matchers {
        crate::alert::silence::add_matcher(&mut m, k, v).map_err(|e| {
            // `matchers.gpu: …`, whether or not the reason starts with the label.
            let why = e.strip_prefix(&format!("{k}: ")).unwrap_or(&e);
            ApiError::BadRequest(format!("matchers.{k}: {why}"))
        })?;
    }
    crate::alert::silence::check_matchers(&m)
        .map_err(|e| ApiError::BadRequest(format!("matchers: {e}")))?;
    let window = (new.starts_at, new.hours);
    let silence = create_silence(&st, &user, ip, m, window, &new.comment).await?;
    let notes = crate::alert::silence::unknown_targets(&st.store, &silence.matchers).await?;
    Ok((StatusCode::CREATED, Json(CreatedSilence { silence, notes })))
}

/// A new silence, with what its matchers name that no host of the fleet carries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedSilence {
    #[serde(flatten)]
    pub silence: Silence,
    /// One note per matcher no host carries now (a host, site, rack or pool name): the
    /// silence is kept, and mutes nothing until one does. Empty when every name is known.
    pub notes: Vec<String>,
}

/// End a silence now, or cancel one scheduled ahead (operator or admin). An ended silence
/// comes back with its new end; a cancelled one as it was planned.
#[utoipa::path(
    delete,
    path = "/api/v1/silences/{id}",
    operation_id = "expire_silence",
    tag = "alerts",
    params(("id" = i64, Path, description = "The silence's id.")),
    responses(
        (status = 200, description = "The silence, ended or cancelled.", body = Silence),
        (status = 400, description = "The id is not a number.", body = ErrorBody),
        (status = 401, description = "Not logged in.", body = ErrorBody),
        (status = 403, description = "Needs the operator role.", body = ErrorBody),
        (status = 404, description = "No active or scheduled silence has that id.", body = ErrorBody),
    )
)]
pub async fn expire_api(
    State(st): State<AppState>,
    ApiUser(user): ApiUser,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<String>,
    _q: ApiQuery<NoParams>,
) -> Result<Json<Silence>, ApiError> {
    require_operator(&user)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("silence id {id:?} is not a number")))?;
    Ok(Json(end_silence(&st, &user, ip, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alerts_place_links_its_gpu_host_rack_or_pool() {
        let labels = |kv: &[(&str, &str)]| -> Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let gpu = labels(&[
            ("site", "fra1"),
            ("rack", "r2"),
            ("host", "gpu 7"),
            ("gpu", "3"),
        ]);
        assert_eq!(place_link(&gpu), "/hosts/gpu%207/gpus/3");
        assert_eq!(location(&gpu), "fra1 / r2 / gpu 7 / GPU 3");
        let host = labels(&[("host", "gpu-7"), ("pool", "train")]);
        assert_eq!(place_link(&host), "/hosts/gpu-7");
        assert_eq!(location(&host), "gpu-7");
        let rack = labels(&[("site", "fra1"), ("rack", "r2")]);
        assert_eq!(place_link(&rack), rack_path("fra1", "r2"));
        let pool = labels(&[("pool", "train-a")]);
        assert_eq!(place_link(&pool), "/capacity/pools/train-a");
        assert_eq!(location(&pool), "pool train-a");
        assert_eq!(place_link(&labels(&[("rule", "x")])), "");
    }
}
