//! The outbox sender: groups due notifications and mails them over SMTP (lettre),
//! retrying with backoff. A row is marked sent only after the SMTP server accepted the
//! mail, in the same transaction that locked it, so a crash re-sends at most the mail
//! in flight and never loses one. Message-IDs are derived from the outbox ids, so a
//! re-send of the same group carries the same Message-ID.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use askama::Template;
use chrono::{DateTime, Duration, Utc};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::eval::AlertSnapshot;
use super::location;
use crate::config::{Config, SmtpConfig};
use crate::model::telemetry::{MailKind, Telemetry};
use crate::store::Store;

/// Build the SMTP transport from configuration.
pub fn transport(smtp: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match smtp.security.as_str() {
        "plain" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
            .map_err(|e| format!("alerting.smtp: {e}"))?,
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| format!("alerting.smtp: {e}"))?,
    };
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(StdDuration::from_secs(smtp.timeout_secs.max(1))));
    if !smtp.username.is_empty() {
        builder = builder.credentials(Credentials::new(
            smtp.username.clone(),
            smtp.password.expose().to_string(),
        ));
    }
    Ok(builder.build())
}

/// One alert as shown in a mail.
pub struct MailItem {
    pub status: &'static str,
    pub summary: String,
    pub severity: String,
    pub location: String,
    pub since: String,
    pub resolved: String,
    pub description: String,
    pub occurrences: i32,
    pub link: String,
}

#[derive(Template)]
#[template(path = "email/alert.txt")]
pub struct AlertText<'a> {
    pub headline: &'a str,
    pub items: &'a [MailItem],
    pub dashboard: &'a str,
}

#[derive(Template)]
#[template(path = "email/alert.html")]
pub struct AlertHtml<'a> {
    pub headline: &'a str,
    pub items: &'a [MailItem],
    pub dashboard: &'a str,
}

pub(crate) fn urlpath(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Subject line, headline and items of one grouped mail.
pub fn compose(
    rows: &[(String, AlertSnapshot)],
    public_url: &str,
) -> (String, String, Vec<MailItem>) {
    let items: Vec<MailItem> = rows
        .iter()
        .map(|(kind, a)| MailItem {
            status: if kind == "resolved" {
                "RESOLVED"
            } else {
                "FIRING"
            },
            summary: a.summary.clone(),
            severity: a.severity.clone(),
            location: location(&a.labels),
            since: a.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            resolved: a
                .resolved_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default(),
            description: a.description.clone(),
            occurrences: a.occurrences,
            link: alert_link(&a.labels, public_url),
        })
        .collect();
    let firing = items.iter().filter(|i| i.status == "FIRING").count();
    let resolved = items.len() - firing;
    let first = &rows[0].1;
    let status = if firing > 0 { "FIRING" } else { "RESOLVED" };
    let what = if items.len() == 1 {
        format!("{} — {}", first.summary, items[0].location)
    } else {
        let mut counts = Vec::new();
        if firing > 0 {
            counts.push(format!("{firing} firing"));
        }
        if resolved > 0 {
            counts.push(format!("{resolved} resolved"));
        }
        format!(
            "{}: {} ({} and {} more)",
            first.summary,
            counts.join(", "),
            items[0].location,
            items.len() - 1
        )
    };
    let subject = format!("[{status}:{}] {what}", first.severity.to_uppercase());
    (subject, what, items)
}

/// Hand `msg` to the SMTP server within `limit` in all, on a connection of its own (no
/// pool: an exchange cut off by the limit must not leave its connection to the next
/// mail), timed on `/metrics`
/// (`rackwatch_smtp_send_duration_seconds`). The transport's own timeout covers the
/// connection only: a server that accepts it and then goes silent (in the TLS handshake,
/// the greeting or a command) would hold the sender, and every channel behind it, for
/// good.
pub async fn deliver(
    t: &AsyncSmtpTransport<Tokio1Executor>,
    msg: Message,
    mail: MailKind,
    telemetry: &Telemetry,
    limit: StdDuration,
) -> Result<(), String> {
    let started = Instant::now();
    let sent = match tokio::time::timeout(limit, t.send(msg)).await {
        Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the SMTP server did not finish the exchange in {} s",
            limit.as_secs()
        )),
    };
    telemetry.mail_sent(mail, sent.is_ok(), started.elapsed().as_secs_f64());
    sent
}

/// The most one mail's whole SMTP exchange may take: six times the per-step timeout
/// (`alerting.smtp.timeout_secs`), for a connection, TLS, the commands and the data.
pub fn exchange_limit(smtp: &SmtpConfig) -> StdDuration {
    StdDuration::from_secs(smtp.timeout_secs.max(1) * 6)
}

/// Delivers the outbox.
pub struct Sender {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    group_wait: Duration,
    group_interval: Duration,
    /// Notifications unsent for longer are dropped ([`Sender::max_wait`]).
    max_wait: Duration,
    public_url: String,
    warned_unconfigured: bool,
    telemetry: Arc<Telemetry>,
    channels: std::collections::BTreeMap<String, crate::config::ChannelConfig>,
    http: reqwest::Client,
    /// One mail's whole SMTP exchange at most ([`exchange_limit`]).
    smtp_limit: StdDuration,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    group_key: String,
    kind: String,
    recipients: Vec<String>,
    alert: sqlx::types::Json<AlertSnapshot>,
    created_at: DateTime<Utc>,
    attempts: i32,
}

impl Sender {
    /// A sender for `cfg`'s SMTP server that times its sends on `telemetry`.
    pub fn new(cfg: &Config, telemetry: Arc<Telemetry>) -> Sender {
        let smtp = &cfg.alerting.smtp;
        let transport = if smtp.host.is_empty() {
            None
        } else {
            match transport(smtp) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!("{e}");
                    None
                }
            }
        };
        let from = smtp
            .from
            .parse::<Mailbox>()
            .map_err(|e| tracing::error!("alerting.smtp.from {:?}: {e}", smtp.from))
            .ok();
        Sender {
            transport,
            from,
            group_wait: Duration::seconds(cfg.alerting.group_wait_secs as i64),
            group_interval: Duration::seconds(cfg.alerting.group_interval_secs as i64),
            max_wait: Sender::max_wait(cfg.alerting.repeat_interval_secs),
            public_url: cfg.public_url(),
            warned_unconfigured: false,
            smtp_limit: exchange_limit(smtp),
            telemetry,
            channels: cfg.alerting.channels.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// How long a notification may wait unsent (no SMTP configured, a channel failing):
    /// a day, or two repeat intervals if longer. By then a still-firing alert has been
    /// queued again (every repeat interval), so what is dropped is stale: a "firing" or
    /// "resolved" notice days late would only bury the current ones once sending works.
    pub fn max_wait(repeat_interval_secs: u64) -> Duration {
        Duration::hours(24).max(Duration::seconds(2 * repeat_interval_secs as i64))
    }

    /// Send every due group: mails over SMTP, channel groups over HTTP. Returns the
    /// number of deliveries (a mail or a channel request) that succeeded. Notifications
    /// that waited longer than [`Sender::max_wait`] are dropped first, with the reason
    /// kept on their outbox row.
    pub async fn send_due(&mut self, store: &Store, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let hours = self.max_wait.num_hours();
        let why = format!("expired: not sent within {hours} h");
        let expired = sqlx::query!(
            "UPDATE notification_outbox SET sent_at = $1, last_error = $2
              WHERE sent_at IS NULL AND created_at < $3",
            now,
            &why,
            now - self.max_wait,
        )
        .execute(&store.pool)
        .await?
        .rows_affected();
        if expired > 0 {
            tracing::warn!(
                expired,
                "alert notifications waited more than {hours} h unsent and were dropped (firing alerts are queued again every repeat interval)"
            );
        }
        let smtp = match (self.transport.clone(), self.from.clone()) {
            (Some(t), Some(f)) => Some((t, f)),
            _ => None,
        };
        if smtp.is_none() && !self.warned_unconfigured {
            let waiting: i64 = sqlx::query_scalar!(
                r#"SELECT count(*) AS "n!" FROM notification_outbox WHERE sent_at IS NULL
                   AND NOT recipients[1] ~ '^(webhook|slack|pagerduty):'"#,
            )
            .fetch_one(&store.pool)
            .await?;
            if waiting > 0 {
                tracing::warn!(waiting, "alert mails are waiting in the outbox: configure alerting.smtp.host to send them");
                self.warned_unconfigured = true;
            }
        }
        // One transaction per group sent: a crash after a send repeats at most that one.
        let mut sent = 0;
        'round: loop {
            let mut tx = store.pool.begin().await?;
            let rows: Vec<OutboxRow> = sqlx::query_as!(
            OutboxRow,
            r#"SELECT id, group_key, kind, recipients, alert AS "alert: sqlx::types::Json<AlertSnapshot>", created_at, attempts
               FROM notification_outbox
              WHERE sent_at IS NULL AND next_attempt_at <= $1
                AND ($2 OR recipients[1] ~ '^(webhook|slack|pagerduty):')
                -- An alert's notices go out in order: a resolve queued while its firing
                -- notice waits out a retry waits with it (a receiver that got the resolve
                -- first would open an incident nothing closes).
                AND NOT EXISTS (SELECT 1 FROM notification_outbox o
                                 WHERE o.sent_at IS NULL AND o.fingerprint = notification_outbox.fingerprint
                                   AND o.recipients = notification_outbox.recipients
                                   AND o.id < notification_outbox.id AND o.next_attempt_at > $1)
              ORDER BY id LIMIT 2000 FOR UPDATE SKIP LOCKED"#,
            now,
            // Without SMTP, mail waits: it is not read, so however much of it waits, the
            // channels' messages behind it still go out.
            smtp.is_some(),
        )
        .fetch_all(&mut *tx)
        .await?;
            let mut groups: BTreeMap<(String, Vec<String>), Vec<OutboxRow>> = BTreeMap::new();
            for r in rows {
                groups
                    .entry((r.group_key.clone(), r.recipients.clone()))
                    .or_default()
                    .push(r);
            }
            for ((group_key, recipients), rows) in groups {
                let oldest = rows
                    .iter()
                    .map(|r| r.created_at)
                    .min()
                    .expect("non-empty group");
                if now - oldest < self.group_wait {
                    continue; // wait for the rest of the group
                }
                let last_sent: Option<DateTime<Utc>> =
                sqlx::query_scalar!(
                    "SELECT max(sent_at) FROM notification_outbox WHERE group_key = $1 AND message_id IS NOT NULL",
                    &group_key,
                )
                .fetch_one(&mut *tx)
                    .await?;
                if last_sent.is_some_and(|t| now - t < self.group_interval) {
                    continue;
                }
                // A silence created after queueing still applies, except to a resolve: one is
                // queued under a silence only for an alert whose firing was mailed, and whoever
                // got that hears that it ended.
                let mut live = Vec::new();
                for r in rows {
                    let mut l = r.alert.labels.clone();
                    l.insert("rule".into(), r.alert.rule.clone());
                    l.insert("severity".into(), r.alert.severity.clone());
                    // (A resolve whose firing notice was never sent, say one dropped as
                    // silenced while the mail server was down, keeps to the silence.)
                    let firing_sent = r.kind == "resolved"
                    && sqlx::query_scalar!(
                        r#"SELECT EXISTS (SELECT 1 FROM notification_outbox WHERE fingerprint = $1
                              AND kind = 'firing' AND message_id IS NOT NULL AND id < $2) AS "sent!""#,
                        &r.alert.fingerprint,
                        r.id,
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                    if !firing_sent && super::silence::silenced(&mut *tx, &l, now).await? {
                        sqlx::query!(
                        "UPDATE notification_outbox SET sent_at = $2, last_error = 'silenced before sending' WHERE id = $1",
                        r.id,
                        now,
                    )
                    .execute(&mut *tx)
                        .await?;
                    } else {
                        live.push(r);
                    }
                }
                if live.is_empty() {
                    continue;
                }
                let ids: Vec<i64> = live.iter().map(|r| r.id).collect();
                let snaps: Vec<(String, AlertSnapshot)> = live
                    .iter()
                    .map(|r| (r.kind.clone(), r.alert.0.clone()))
                    .collect();
                let message_id = format!(
                    "<rackwatch-outbox-{}-{}@rackwatch>",
                    ids[0],
                    ids[ids.len() - 1]
                );
                let channel = recipients.first().and_then(|t| super::rules::channel_of(t));
                let mut delivered: Option<(String, u64)> = None;
                let result = match (channel, &smtp) {
                    (Some((kind, name)), _) => match self.channels.get(name) {
                        Some(c) if c.kind == kind => {
                            super::channels::deliver(
                                &self.http,
                                name,
                                c,
                                &group_key,
                                &snaps,
                                &self.public_url,
                            )
                            .await
                        }
                        Some(c) => Err(super::channels::PartlySent {
                            sent: 0,
                            error: format!(
                        "route names {kind}:{name}, but alerting.channels.{name} is a {} channel",
                        c.kind
                    ),
                        }),
                        None => Err(super::channels::PartlySent {
                            sent: 0,
                            error: format!(
                        "no channel {name:?} in alerting.channels (the route names {kind}:{name})"
                    ),
                        }),
                    },
                    (None, Some((transport, from))) => {
                        match build_message(
                            from,
                            &recipients,
                            &snaps,
                            &self.public_url,
                            &message_id,
                        ) {
                            Ok(m) => deliver(
                                transport,
                                m,
                                MailKind::Alert,
                                &self.telemetry,
                                self.smtp_limit,
                            )
                            .await
                            .map_err(|error| super::channels::PartlySent { sent: 0, error }),
                            Err(error) => Err(super::channels::PartlySent { sent: 0, error }),
                        }
                    }
                    // Mail waits in the outbox until SMTP is configured (warned above).
                    (None, None) => continue,
                };
                match result {
                    Ok(()) => {
                        sqlx::query!(
                        "UPDATE notification_outbox SET sent_at = $2, message_id = $3, last_error = NULL WHERE id = ANY($1)",
                        &ids,
                        Utc::now(),
                        &message_id,
                    )
                    .execute(&mut *tx)
                        .await?;
                        sent += 1;
                        delivered = Some((
                            match channel {
                                Some(_) => recipients[0].clone(),
                                None => "email".to_string(),
                            },
                            ids.len() as u64,
                        ));
                        tracing::info!(group = %group_key, alerts = ids.len(), "alert notification sent");
                    }
                    Err(super::channels::PartlySent {
                        sent: done,
                        error: e,
                    }) => {
                        // The rows the channel took before the failure are sent; the rest
                        // wait for the retry, and, as any notice of a group sent to
                        // lately, for `group_interval_secs`.
                        let (took, ids) = ids.split_at(done.min(ids.len()));
                        let live = &live[took.len()..];
                        if !took.is_empty() {
                            sqlx::query!(
                                "UPDATE notification_outbox SET sent_at = $2, message_id = $3, last_error = NULL WHERE id = ANY($1)",
                                took,
                                Utc::now(),
                                &message_id,
                            )
                            .execute(&mut *tx)
                            .await?;
                            delivered = Some((recipients[0].clone(), took.len() as u64));
                        }
                        let attempts = live.iter().map(|r| r.attempts).max().unwrap_or(0) + 1;
                        let backoff = Duration::seconds((1i64 << attempts.min(8)).min(300));
                        tracing::warn!(group = %group_key, attempts, retry_in_s = backoff.num_seconds(), "alert notification not sent: {e}");
                        sqlx::query!(
                        "UPDATE notification_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE id = ANY($1)",
                        ids,
                        attempts,
                        now + backoff,
                        &e,
                    )
                    .execute(&mut *tx)
                        .await?;
                    }
                }
                // Sent or put off: this group is no longer due; look again for the next one.
                tx.commit().await?;
                if let Some((channel, n)) = delivered {
                    self.telemetry
                        .notifications_delivered
                        .get_or_create(&crate::model::telemetry::ChannelLabel { channel })
                        .inc_by(n);
                }
                continue 'round;
            }
            tx.commit().await?;
            return Ok(sent);
        }
    }
}

fn build_message(
    from: &Mailbox,
    to: &[String],
    rows: &[(String, AlertSnapshot)],
    public_url: &str,
    message_id: &str,
) -> Result<Message, String> {
    let (subject, headline, items) = compose(rows, public_url);
    let text = AlertText {
        headline: &headline,
        items: &items,
        dashboard: public_url,
    }
    .render()
    .map_err(|e| e.to_string())?;
    let html = AlertHtml {
        headline: &headline,
        items: &items,
        dashboard: public_url,
    }
    .render()
    .map_err(|e| e.to_string())?;
    let mut b = Message::builder()
        .from(from.clone())
        .subject(subject)
        .message_id(Some(message_id.to_string()));
    for t in to {
        b = b.to(t
            .parse::<Mailbox>()
            .map_err(|e| format!("recipient {t:?}: {e}"))?);
    }
    b.multipart(
        MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html),
            ),
    )
    .map_err(|e| e.to_string())
}

/// `rackwatch alerts test-email TO`: one mail through the configured SMTP server.
pub async fn send_test(cfg: &Config, to: &str) -> anyhow::Result<()> {
    let smtp = &cfg.alerting.smtp;
    if smtp.host.is_empty() {
        anyhow::bail!("alerting.smtp.host is not set");
    }
    let t = transport(smtp).map_err(anyhow::Error::msg)?;
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("alerting.smtp.from {:?}: {e}", smtp.from))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| anyhow::anyhow!("{to:?} is not an email address: {e}"))?;
    let msg = Message::builder()
        .from(from)
        .to(to)
        .subject("Rackwatch test mail")
        .header(ContentType::TEXT_PLAIN)
        .body(format!(
            "This is a test from Rackwatch. SMTP settings work: {}:{} ({}).\nDashboard: {}\n",
            smtp.host,
            smtp.port,
            smtp.security,
            cfg.public_url()
        ))?;
    t.send(msg).await.map_err(|e| {
        anyhow::anyhow!("SMTP {}:{} ({}): {e}", smtp.host, smtp.port, smtp.security)
    })?;
    Ok(())
}

/// `rackwatch alerts test-notify CHANNEL`: a made-up alert to one channel of
/// `alerting.channels` (PagerDuty: trigger, then resolve). Returns the channel's kind.
pub async fn send_test_channel(cfg: &Config, name: &str) -> anyhow::Result<String> {
    let Some(c) = cfg.alerting.channels.get(name) else {
        // Routes name channels as kind:name; this command takes the name.
        if let Some((kind, bare)) = super::rules::channel_of(name) {
            if cfg.alerting.channels.contains_key(bare) {
                anyhow::bail!("{name:?} is how routes name it; give the channel's name: {bare} (a {kind} channel)");
            }
        }
        let known: Vec<&str> = cfg.alerting.channels.keys().map(String::as_str).collect();
        anyhow::bail!(
            "no channel {name:?} in alerting.channels (configured: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let a = super::channels::test_alert();
    let mut rows = vec![("firing".to_string(), a.clone())];
    if c.kind == "pagerduty" {
        let mut r = a;
        r.resolved_at = Some(Utc::now());
        rows.push(("resolved".to_string(), r));
    }
    super::channels::deliver(
        &http,
        name,
        c,
        "test-notification",
        &rows,
        &cfg.public_url(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("channel {name} ({}): {e}", c.kind))?;
    Ok(c.kind.clone())
}

/// Delivery state of one destination kind: `email`, or a channel as routes name it
/// (`webhook:am`).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ChannelState {
    pub channel: String,
    /// Notifications delivered (outbox rows, each an alert's firing or resolved notice).
    pub delivered: i64,
    /// Waiting to be sent.
    pub pending: i64,
    /// Waiting after at least one failed attempt.
    pub failing: i64,
    pub last_delivered_at: Option<DateTime<Utc>>,
    /// The newest error of a waiting notification.
    pub last_error: Option<String>,
}

/// The outbox by destination: what was delivered, what waits, what fails.
pub async fn channel_states(store: &Store) -> Result<Vec<ChannelState>, sqlx::Error> {
    sqlx::query_as!(
        ChannelState,
        r#"SELECT CASE WHEN recipients[1] ~ '^(webhook|slack|pagerduty):' THEN recipients[1] ELSE 'email' END AS "channel!",
                count(*) FILTER (WHERE message_id IS NOT NULL) AS "delivered!",
                count(*) FILTER (WHERE sent_at IS NULL) AS "pending!",
                count(*) FILTER (WHERE sent_at IS NULL AND attempts > 0) AS "failing!",
                max(sent_at) FILTER (WHERE message_id IS NOT NULL) AS last_delivered_at,
                (array_agg(last_error ORDER BY id DESC) FILTER (WHERE sent_at IS NULL AND last_error IS NOT NULL))[1] AS last_error
           FROM notification_outbox GROUP BY 1 ORDER BY 1"#,
    )
    .fetch_all(&store.pool)
    .await
}

/// The dashboard page an alert is about: its GPU, its host, the pool's capacity page, the
/// rack, else the alerts page.
pub fn alert_link(labels: &crate::alert::Labels, public_url: &str) -> String {
    let get = |k: &str| labels.get(k).map(String::as_str);
    match (get("host"), get("gpu"), get("pool"), get("rack")) {
        (Some(h), Some(g), _, _) => {
            format!("{public_url}/hosts/{}/gpus/{}", urlpath(h), urlpath(g))
        }
        (Some(h), None, _, _) => format!("{public_url}/hosts/{}", urlpath(h)),
        (None, _, Some(p), _) => format!("{public_url}/capacity/pools/{}", urlpath(p)),
        // A rack with a power budget (configured by site and rack, neither empty).
        (None, _, None, Some(r)) => format!(
            "{public_url}/racks/{}/{}",
            urlpath(get("site").unwrap_or("-")),
            urlpath(r)
        ),
        _ => format!("{public_url}/alerts"),
    }
}
