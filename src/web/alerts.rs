//! The alerts page: firing, pending and silenced alerts, silences and incident history;
//! operators acknowledge and silence from here.

use askama::Template;
use axum::extract::State;
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
use crate::alert::{location, AlertRow, Labels};
use crate::store::audit::Entry;
use crate::store::auth::{Role, User};
use axum::http::HeaderMap;

/// The alerts page and its forms (acknowledge, silence, expire).
pub fn page_routes() -> Routes {
    Routes::new()
        .get("/alerts", page)
        .post("/alerts/ack", acknowledge)
        .post("/silences", silence)
        .post("/silences/expire", expire)
}

/// `GET /api/v1/alerts`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(api))
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

async fn current(st: &AppState) -> Result<Vec<(AlertRow, bool)>, ApiError> {
    let rows = st.store.current_alerts().await?;
    let now = Utc::now();
    let mut out = Vec::with_capacity(rows.len());
    for a in rows {
        let mut l = a.labels.0.clone();
        l.insert("rule".into(), a.rule.clone());
        l.insert("severity".into(), a.severity.clone());
        let silenced = crate::alert::silence::silenced(&st.store.pool, &l, now).await?;
        out.push((a, silenced));
    }
    Ok(out)
}

/// An alert row for the template.
pub struct AlertView {
    pub fingerprint: String,
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
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

pub async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    _q: PageQuery<NoParams>,
) -> Result<Response, PageError> {
    let cur = current(&st).await?;
    let view = |(a, silenced): &(AlertRow, bool)| AlertView {
        fingerprint: a.fingerprint.clone(),
        severity: a.severity.clone(),
        state: a.state.clone(),
        summary: a.summary.clone(),
        location: location(&a.labels.0),
        link: place_link(&a.labels.0),
        description: a.description.clone(),
        since: ts(a.started_at),
        occurrences: a.occurrences,
        flapping: a.flaps >= 3,
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
    let silences = st
        .store
        .active_silences(Utc::now())
        .await?
        .into_iter()
        .map(|s| SilenceView {
            id: s.id,
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
    Ok(render(&AlertsPage {
        channels,
        can_act: user.role >= Role::Operator,
        nav: Nav::new(&user, csrf, "alerts"),
        firing,
        pending,
        silences,
        history,
    }))
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
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<AckForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    let n = sqlx::query!(
        "UPDATE alerts SET acknowledged_by = $2, acknowledged_at = now() WHERE fingerprint = $1 AND state = 'firing'",
        &f.fingerprint,
        &user.name,
    )
    .execute(&st.store.pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("no firing alert with that fingerprint".into()).into());
    }
    st.store
        .audit(Entry::ok(&user.name, "alert.acknowledged", &f.fingerprint).from(ip))
        .await?;
    Ok(Redirect::to("/alerts").into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceForm {
    /// `host=gpu-17, rule=gpu-xid`
    matchers: String,
    /// Hours.
    hours: f64,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    csrf: String,
}

pub async fn silence(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    PageForm(f): PageForm<SilenceForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    let items: Vec<String> = f
        .matchers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let m = crate::alert::silence::parse_matchers(&items).map_err(ApiError::BadRequest)?;
    let now = Utc::now();
    let end = crate::alert::silence::silence_end(now, f.hours).map_err(ApiError::BadRequest)?;
    let id = st
        .store
        .create_silence(&m, now, end, &user.name, &f.comment)
        .await
        .map_err(ApiError::Internal)?;
    st.store
        .audit(
            Entry::ok(&user.name, "silence.created", &format!("silence {id}"))
                .from(ip)
                .details(serde_json::json!({
                    "matchers": f.matchers, "until": end.to_rfc3339(), "comment": f.comment
                })),
        )
        .await?;
    Ok(Redirect::to("/alerts").into_response())
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
    PageForm(f): PageForm<ExpireForm>,
) -> Result<Response, PageError> {
    require_operator(&user)?;
    verify_csrf(&headers, &f.csrf)?;
    if !st.store.expire_silence(f.id).await? {
        return Err(ApiError::NotFound(format!("no active silence with id {}", f.id)).into());
    }
    st.store
        .audit(Entry::ok(&user.name, "silence.expired", &format!("silence {}", f.id)).from(ip))
        .await?;
    Ok(Redirect::to("/alerts").into_response())
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
    let cur = current(&st).await?;
    Ok(Json(
        cur.into_iter()
            .map(|(alert, silenced)| AlertEntry { alert, silenced })
            .collect(),
    ))
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
