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

/// Why one recipient has not got a mail.
#[derive(Debug, Clone)]
pub struct Undelivered {
    /// The address is refused for good: sending to it again cannot help (see
    /// [`deliver_each`]).
    pub for_good: bool,
    pub error: String,
}

/// Hand the formatted mail `bytes` to the SMTP server once per recipient, each in an
/// envelope of its own: an address the server refuses (550 no such user) fails only
/// itself, not the rest of the list, as one envelope for all would. Returns one result
/// per address of `to`, in order.
///
/// Each exchange has `limit` in all, on a connection of its own (no pool: an exchange
/// cut off by the limit must not leave its connection to the next mail), and is timed
/// on `/metrics` (`rackwatch_smtp_send_duration_seconds`). The transport's own timeout
/// covers the connection only: a server that accepts it and then goes silent (in the
/// TLS handshake, the greeting or a command) would hold the sender, and every channel
/// behind it, for good. A failure before the server answered anything (no connection,
/// TLS, the limit) is the server's, not the address's: it is kept in `server_down`, and
/// the addresses after it, in this call and in later calls given the same
/// `server_down`, are failed with it, not tried one by one.
///
/// An address is refused for good ([`refused_for_good`]) when it is none, or when the
/// server refused it with a 5xx reply that names the address as the trouble (an enhanced
/// status code 5.1.1 to 5.1.6 or 5.1.10, a bad destination mailbox or system), or with a
/// 5xx without an enhanced code while it took the mail for another
/// address of `to`. Any other refusal may be the server's (a quota, a policy, the sender
/// or the login, which configuration fixes) and is retried, as 4xx replies are.
pub async fn deliver_each(
    t: &AsyncSmtpTransport<Tokio1Executor>,
    from: &Mailbox,
    to: &[String],
    bytes: &[u8],
    (mail, telemetry): (MailKind, &Telemetry),
    limit: StdDuration,
    server_down: &mut Option<String>,
) -> Vec<Result<(), Undelivered>> {
    let mut out = Vec::with_capacity(to.len());
    let mut refused_5xx = Vec::new();
    for r in to {
        if let Some(e) = server_down.as_ref() {
            out.push(Err(Undelivered {
                for_good: false,
                error: e.clone(),
            }));
            continue;
        }
        let envelope = r
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|m| {
                lettre::address::Envelope::new(Some(from.email.clone()), vec![m.email])
                    .map_err(|e| e.to_string())
            });
        let envelope = match envelope {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(Undelivered {
                    for_good: true,
                    error: format!("{r:?} is not an email address: {e}"),
                }));
                continue;
            }
        };
        let started = Instant::now();
        let sent = match tokio::time::timeout(limit, t.send_raw(&envelope, bytes)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let error = e.to_string();
                if e.status().is_none() {
                    *server_down = Some(error.clone());
                }
                if e.is_permanent() {
                    // Settled below, once it is known whether another address went.
                    refused_5xx.push(out.len());
                }
                Err(Undelivered {
                    for_good: false,
                    error,
                })
            }
            Err(_) => {
                let error = format!(
                    "the SMTP server did not finish the exchange in {} s",
                    limit.as_secs()
                );
                *server_down = Some(error.clone());
                Err(Undelivered {
                    for_good: false,
                    error,
                })
            }
        };
        telemetry.mail_sent(mail, sent.is_ok(), started.elapsed().as_secs_f64());
        out.push(sent);
    }
    let someone_got_it = out.iter().any(Result::is_ok);
    for i in refused_5xx {
        if let Err(u) = &mut out[i] {
            u.for_good = refused_for_good(&u.error, someone_got_it);
        }
    }
    out
}

/// Whether a 5xx reply refuses its address for good: its enhanced status code (RFC 3463)
/// puts the trouble on the recipient's address: 5.1.1 to 5.1.6 and 5.1.10 (bad mailbox,
/// bad system, bad syntax, ambiguous, moved, null MX). Not 5.1.0 ("other address
/// status", which servers also give a sender they refuse), the sender's 5.1.7 and 5.1.8,
/// nor codes servers make up (Exchange's 5.1.90: the sender's daily limit). Without an
/// enhanced code, when the same server took the mail for another address
/// (`someone_got_it`). Any other enhanced code (a quota, a policy, the message) is not
/// about the address.
fn refused_for_good(reply: &str, someone_got_it: bool) -> bool {
    match enhanced_code(reply) {
        Some((5, 1, detail)) => matches!(detail, 1..=6 | 10),
        Some(_) => false,
        None => someone_got_it,
    }
}

/// The first enhanced status code (`class.subject.detail`, RFC 3463) in an SMTP reply.
fn enhanced_code(reply: &str) -> Option<(u8, u16, u16)> {
    reply
        .split(|c: char| c.is_whitespace() || matches!(c, ':' | '(' | ')' | ';' | ','))
        .find_map(|w| {
            let mut p = w.split('.');
            let code = (
                p.next()?.parse::<u8>().ok()?,
                p.next()?.parse::<u16>().ok()?,
                p.next()?.parse::<u16>().ok()?,
            );
            (p.next().is_none() && matches!(code.0, 2 | 4 | 5)).then_some(code)
        })
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
    /// Channels (as routes name them) that asked to be left alone (`Retry-After`), until
    /// when: every group bound for one waits, not only the one that was told.
    held: BTreeMap<String, DateTime<Utc>>,
}

/// What [`Sender::mail_group`] delivered: mails that reached someone, and outbox rows
/// that reached their first recipient.
struct Mailed {
    mails: usize,
    rows: u64,
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
    delivered_to: Vec<String>,
    /// Address → the server's reply that refused it for good.
    refused: sqlx::types::Json<BTreeMap<String, String>>,
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
            held: BTreeMap::new(),
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
            r#"SELECT id, group_key, kind, recipients, alert AS "alert: sqlx::types::Json<AlertSnapshot>", created_at, attempts,
                    delivered_to, refused AS "refused: sqlx::types::Json<BTreeMap<String, String>>"
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
                    // A mail that reached part of its route counts from then.
                    "SELECT max(COALESCE(delivered_at, sent_at)) FROM notification_outbox WHERE group_key = $1 AND message_id IS NOT NULL",
                    &group_key,
                )
                .fetch_one(&mut *tx)
                    .await?;
                // Within the group's interval only mail already taken by part of its route
                // goes, to the addresses that deferred it: that is not a new notice of the
                // group. New notices wait.
                let mut rows = rows;
                if last_sent.is_some_and(|t| now - t < self.group_interval) {
                    rows.retain(|r| !r.delivered_to.is_empty());
                    if rows.is_empty() {
                        continue;
                    }
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
                let Some((kind, name)) =
                    recipients.first().and_then(|t| super::rules::channel_of(t))
                else {
                    // Mail waits in the outbox until SMTP is configured (warned above).
                    let Some((transport, from)) = &smtp else {
                        continue;
                    };
                    let done = self
                        .mail_group(
                            &mut tx,
                            transport,
                            from,
                            &group_key,
                            &recipients,
                            &live,
                            now,
                        )
                        .await?;
                    tx.commit().await?;
                    sent += done.mails;
                    if done.rows > 0 {
                        self.telemetry
                            .notifications_delivered
                            .get_or_create(&crate::model::telemetry::ChannelLabel {
                                channel: "email".into(),
                            })
                            .inc_by(done.rows);
                    }
                    continue 'round;
                };
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
                if self.held.get(&recipients[0]).is_some_and(|t| *t > now) {
                    continue; // the channel asked for time (Retry-After)
                }
                let mut delivered: Option<(String, u64)> = None;
                let result = match self.channels.get(name) {
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
                    Some(c) => Err(super::channels::PartlySent::none(format!(
                        "route names {kind}:{name}, but alerting.channels.{name} is a {} channel",
                        c.kind
                    ))),
                    None => Err(super::channels::PartlySent::none(format!(
                        "no channel {name:?} in alerting.channels (the route names {kind}:{name})"
                    ))),
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
                        delivered = Some((recipients[0].clone(), ids.len() as u64));
                        tracing::info!(group = %group_key, alerts = ids.len(), "alert notification sent");
                    }
                    Err(super::channels::PartlySent {
                        sent: done,
                        error: e,
                        retry_after,
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
                        // No sooner than the channel's Retry-After (a rate limit), up
                        // to the longest backoff, 5 minutes: a page held back longer
                        // than that on a receiver's word is worse than a refused retry.
                        let asked = retry_after
                            .map(|w| Duration::seconds(w.as_secs().min(300) as i64))
                            .unwrap_or_default();
                        let backoff =
                            Duration::seconds((1i64 << attempts.min(8)).min(300)).max(asked);
                        if retry_after.is_some() {
                            self.held.insert(recipients[0].clone(), now + asked);
                        }
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

    /// Mail one due group of the outbox: each recipient gets the group's notices it has
    /// not got yet, in an envelope of its own ([`deliver_each`]), and each row records
    /// who has it. A row is sent once every recipient has it or refused it for good;
    /// until then it waits for a retry, for the others only.
    #[allow(clippy::too_many_arguments)]
    async fn mail_group(
        &self,
        tx: &mut sqlx::PgConnection,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        from: &Mailbox,
        group_key: &str,
        recipients: &[String],
        live: &[OutboxRow],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Mailed> {
        // Who waits for which rows: everyone for all of them, but after a partial
        // delivery only those not reached yet, for the rows they lack.
        let mut waiting: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
        for r in recipients {
            let rows: Vec<usize> = (0..live.len())
                .filter(|&i| !live[i].delivered_to.contains(r) && !live[i].refused.contains_key(r))
                .collect();
            if !rows.is_empty() {
                waiting.entry(rows).or_default().push(r.clone());
            }
        }
        let mut delivered: Vec<Vec<String>> = live.iter().map(|r| r.delivered_to.clone()).collect();
        let mut refused: Vec<BTreeMap<String, String>> =
            live.iter().map(|r| r.refused.0.clone()).collect();
        let mut message_ids: Vec<Option<String>> = vec![None; live.len()];
        let mut failure: Option<String> = None;
        // A server that does not answer fails every address after it, in every mail.
        let mut server_down: Option<String> = None;
        let mut mails = 0;
        for (rows, who) in &waiting {
            let snaps: Vec<(String, AlertSnapshot)> = rows
                .iter()
                .map(|&i| (live[i].kind.clone(), live[i].alert.0.clone()))
                .collect();
            let message_id = format!(
                "<rackwatch-outbox-{}-{}@rackwatch>",
                live[rows[0]].id,
                live[rows[rows.len() - 1]].id
            );
            // The To: header names the whole route, as one mail to all would.
            let bytes = match build_message(from, recipients, &snaps, &self.public_url, &message_id)
            {
                Ok(m) => m.formatted(),
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            let results = deliver_each(
                transport,
                from,
                who,
                &bytes,
                (MailKind::Alert, &self.telemetry),
                self.smtp_limit,
                &mut server_down,
            )
            .await;
            let mut reached = false;
            for (r, res) in who.iter().zip(results) {
                match res {
                    Ok(()) => {
                        reached = true;
                        for &i in rows {
                            delivered[i].push(r.clone());
                            message_ids[i].get_or_insert_with(|| message_id.clone());
                        }
                    }
                    Err(u) if u.for_good => {
                        tracing::warn!(group = %group_key, "alert mail refused for good by the mail server for {r}: {}", u.error);
                        for &i in rows {
                            refused[i].insert(r.clone(), u.error.clone());
                        }
                    }
                    Err(u) => failure = Some(format!("{r}: {}", u.error)),
                }
            }
            if reached {
                mails += 1;
            }
        }
        // Rows in the same state are updated together.
        // (sent, who has it, who refused it, its Message-ID, reached someone now)
        type State = (
            bool,
            Vec<String>,
            BTreeMap<String, String>,
            Option<String>,
            bool,
        );
        let mut states: BTreeMap<State, Vec<i64>> = BTreeMap::new();
        let mut attempts = 0;
        let mut rows_reached = 0;
        for (i, row) in live.iter().enumerate() {
            let done = recipients
                .iter()
                .all(|r| delivered[i].contains(r) || refused[i].contains_key(r));
            if !done {
                attempts = attempts.max(row.attempts + 1);
            }
            if row.delivered_to.is_empty() && !delivered[i].is_empty() {
                rows_reached += 1;
            }
            let reached_now = delivered[i].len() > row.delivered_to.len();
            states
                .entry((
                    done,
                    std::mem::take(&mut delivered[i]),
                    std::mem::take(&mut refused[i]),
                    message_ids[i].take(),
                    reached_now,
                ))
                .or_default()
                .push(row.id);
        }
        let backoff = Duration::seconds((1i64 << attempts.min(8)).min(300));
        let sent_at = Utc::now();
        for ((done, delivered_to, refused, message_id, reached_now), ids) in states {
            // Why the row waits, then who will never get it and why.
            let error: Vec<String> = (!done)
                .then(|| failure.clone())
                .flatten()
                .into_iter()
                .chain(
                    refused
                        .iter()
                        .map(|(r, why)| format!("{r} refused for good: {why}")),
                )
                .collect();
            let error = (!error.is_empty()).then(|| error.join("; "));
            sqlx::query!(
                "UPDATE notification_outbox
                    SET delivered_to = $2, refused = $3, message_id = COALESCE(message_id, $4),
                        sent_at = CASE WHEN $5::bool THEN $6::timestamptz END,
                        attempts = CASE WHEN $5 THEN attempts ELSE $7::int END,
                        next_attempt_at = CASE WHEN $5 THEN next_attempt_at ELSE $8::timestamptz END,
                        last_error = $9::text,
                        delivered_at = CASE WHEN $10::bool THEN $6 ELSE delivered_at END
                  WHERE id = ANY($1)",
                &ids,
                &delivered_to,
                sqlx::types::Json(&refused) as _,
                message_id,
                done,
                sent_at,
                attempts,
                now + backoff,
                error,
                reached_now,
            )
            .execute(&mut *tx)
            .await?;
        }
        match &failure {
            Some(e) => {
                tracing::warn!(group = %group_key, attempts, retry_in_s = backoff.num_seconds(), "alert mail not sent: {e}")
            }
            None if mails > 0 => {
                tracing::info!(group = %group_key, alerts = live.len(), "alert notification sent")
            }
            None => {}
        }
        Ok(Mailed {
            mails,
            rows: rows_reached,
        })
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
    /// Mails sent in the last day that some recipient's server refused for good (the
    /// other recipients got them), and the newest refusal.
    pub refused: i64,
    pub last_refusal: Option<String>,
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
                (array_agg(last_error ORDER BY id DESC) FILTER (WHERE sent_at IS NULL AND last_error IS NOT NULL))[1] AS last_error,
                count(*) FILTER (WHERE refused <> '{}' AND sent_at > now() - interval '1 day') AS "refused!",
                (array_agg(last_error ORDER BY id DESC) FILTER (WHERE refused <> '{}' AND sent_at > now() - interval '1 day'
                    AND last_error LIKE '%refused for good%'))[1] AS last_refusal
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

#[cfg(test)]
mod tests {
    use super::refused_for_good;

    #[test]
    fn a_refusal_is_for_good_when_it_names_the_recipient() {
        // Postfix, Exchange and Gmail phrasings of an unknown mailbox: for good, even when
        // nobody else on the route got the mail.
        for reply in [
            "permanent error (550): 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
            "permanent error (550): 5.1.10 RESOLVER.ADR.RecipientNotFound; not found",
            "permanent error (550): 5.1.1 The email account that you tried to reach does not exist.",
        ] {
            assert!(refused_for_good(reply, false), "{reply}");
        }
        // The sender, the login, a policy or a quota: retried, even when someone else on the
        // route got the mail (a quota reached partway through the list).
        for reply in [
            "permanent error (550): 5.1.0 <alerts@x>: Sender address rejected: not owned by user",
            "permanent error (553): 5.1.7 <alerts@bad>: Sender address rejected",
            "permanent error (553): 5.1.8 Bad sender's system address",
            "permanent error (535): 5.7.8 Username and Password not accepted",
            "permanent error (554): 5.7.1 Relay access denied",
            "permanent error (550): 5.4.5 Daily sending quota exceeded",
            "permanent error (550): 5.1.90 Your message can't be sent because you've reached your daily limit",
        ] {
            assert!(!refused_for_good(reply, false), "{reply}");
            assert!(!refused_for_good(reply, true), "{reply}");
        }
        // No enhanced code: for good only when the server took the mail for another address.
        let bare = "permanent error (550): Requested action not taken: mailbox unavailable";
        assert!(!refused_for_good(bare, false));
        assert!(refused_for_good(bare, true));
        // An address or a version in the text is not a status code.
        assert!(!refused_for_good(
            "permanent error (550): host 10.0.0.1 said no (Postfix 3.7.1.2)",
            false
        ));
    }
}
