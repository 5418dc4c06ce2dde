//! The weekly energy report mail: after the configured local weekday and hour, last
//! week's report goes to `energy.report.recipients` with the HTML summary as the body
//! and the CSV, Parquet and HTML files attached. A row in `report_deliveries` is written
//! only after the SMTP server accepted the mail, so a week is sent once; a failure is
//! retried on the next run.

use chrono::{DateTime, Duration, Utc};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::energy::EnergyReport;
use super::export::{self, Format};
use super::IsoWeek;
use crate::alert::notify::{deliver_each, transport};
use crate::config::{parse_weekday, Config};
use crate::model::telemetry::{MailKind, Telemetry};
use crate::store::Store;

const KIND: &str = "energy_weekly";
/// How many weeks back a week no server mailed is still mailed.
const MISSED_WEEKS: usize = 4;

/// When the report of the week before `week` is due: `week`'s configured weekday and
/// hour, local time.
pub fn due_at(cfg: &Config, week: IsoWeek) -> DateTime<Utc> {
    let r = &cfg.energy.report;
    let days = parse_weekday(&r.send_weekday).map_or(0, |d| d.num_days_from_monday());
    let day = week.monday() + Duration::days(i64::from(days));
    super::local_midnight(day, cfg.energy.tz()) + Duration::hours(i64::from(r.send_hour))
}

/// Whether and when the weekly report is mailed, in words (the energy page's line).
pub async fn status(store: &Store, cfg: &Config) -> anyhow::Result<String> {
    let r = &cfg.energy.report;
    let when = format!(
        "each {} at {:02}:00 ({})",
        parse_weekday(&r.send_weekday).map_or_else(|| r.send_weekday.clone(), |d| format!("{d:?}")),
        r.send_hour,
        cfg.energy.time_zone
    );
    if r.recipients.is_empty() {
        return Ok(format!(
            "The weekly report is not mailed: set energy.report.recipients to mail it {when}."
        ));
    }
    if cfg.alerting.smtp.host.is_empty() {
        return Ok(
            "The weekly report is not mailed: energy.report.recipients is set, but alerting.smtp.host is not."
                .to_string(),
        );
    }
    let last = sqlx::query!(
        "SELECT period, sent_at FROM report_deliveries WHERE kind = $1 ORDER BY sent_at DESC LIMIT 1",
        KIND,
    )
    .fetch_optional(&store.pool)
    .await?;
    let to = crate::model::format::count(r.recipients.len(), "recipient");
    Ok(match last {
        Some(l) => format!(
            "The weekly report is mailed to {to} {when}; last: {} at {}.",
            l.period,
            l.sent_at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => format!("The weekly report is mailed to {to} {when}; none mailed yet."),
    })
}

/// Send last week's report if it is due and not sent yet, or first a week no server
/// mailed (down through its send window), up to [`MISSED_WEEKS`] back. Returns the week
/// sent.
pub async fn send_due(
    store: &Store,
    cfg: &Config,
    now: DateTime<Utc>,
    telemetry: &Telemetry,
) -> anyhow::Result<Option<IsoWeek>> {
    if cfg.energy.report.recipients.is_empty() {
        return Ok(None);
    }
    if cfg.alerting.smtp.host.is_empty() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("energy.report.recipients is set but alerting.smtp.host is not: the weekly energy report is not mailed");
        });
        return Ok(None);
    }
    if let Some(week) = resend_pending(store, cfg, now, telemetry).await? {
        return Ok(Some(week));
    }
    let this = IsoWeek::containing(now, cfg.energy.tz());
    if now < due_at(cfg, this) {
        return Ok(None);
    }
    let last = this.prev();
    // A week no server mailed (all down through its send window) goes first, the oldest
    // of them first, one a run, as far back as MISSED_WEEKS; then last week.
    let mailed: Vec<String> =
        sqlx::query_scalar!("SELECT period FROM report_deliveries WHERE kind = $1", KIND)
            .fetch_all(&store.pool)
            .await?;
    let newest_mailed = mailed
        .iter()
        .filter_map(|p| p.parse::<IsoWeek>().ok())
        .max();
    let mut week = last;
    if let Some(m) = newest_mailed.filter(|m| *m < last.prev()) {
        let mut oldest = last;
        for _ in 0..MISSED_WEEKS {
            oldest = oldest.prev();
        }
        week = m.next().max(oldest);
    }
    let sent: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM report_deliveries WHERE kind = $1 AND period = $2) AS "sent!""#,
        KIND,
        week.to_string(),
    )
    .fetch_one(&store.pool)
    .await?;
    if sent {
        return Ok(None);
    }
    crate::analytics::energy::run(store, &cfg.energy, now).await?;
    let report = super::energy::build(store, &cfg.energy, week, None, now).await?;
    // A week whose last hours are not accounted yet (mailed just after midnight, a time
    // zone half an hour off UTC's hours, rollups behind) waits for them: the mail goes
    // once, so it should be whole. After a day it goes as it is, marked partial.
    if week == last && report.partial() && now < due_at(cfg, this) + Duration::days(1) {
        tracing::info!(%week, accounted_until = ?report.accounted_until, "weekly energy report waits for its last hours to be accounted");
        return Ok(None);
    }
    let capacity = capacity_lines(store, cfg, now).await?;
    // The delivery is recorded in a transaction held open while the mail is sent: a second
    // server sending the same week at once (two leaders for a moment) waits on the row,
    // then finds it and sends nothing; a send that fails rolls the record back.
    let mut tx = store.pool.begin().await?;
    let claimed = sqlx::query!(
        "INSERT INTO report_deliveries (kind, period, recipients, sent_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, period) DO NOTHING",
        KIND,
        week.to_string(),
        cfg.energy.report.recipients.join(", "),
        now,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(None);
    }
    let sent = send(
        cfg,
        &report,
        &cfg.energy.report.recipients,
        &capacity,
        telemetry,
    )
    .await?;
    if let Some(e) = sent.nobody(cfg) {
        // Rolls the claim back: the week goes again at the next run.
        return Err(e);
    }
    // Who did not get it is named in the log and the audit entry. An address refused for
    // good is not sent to again; one deferred (a 4xx, a server that stopped answering
    // partway) waits in `pending` for [`resend_pending`].
    if !sent.missed.is_empty() {
        tracing::warn!(%week, "weekly energy report not delivered to {}", sent.missed.join("; "));
        sqlx::query!(
            "UPDATE report_deliveries SET recipients = $3, pending = $4 WHERE kind = $1 AND period = $2",
            KIND,
            week.to_string(),
            sent.to.join(", "),
            &sent.pending,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    store
        .audit(
            crate::store::audit::Entry::ok(
                crate::store::audit::SYSTEM,
                "report.mailed",
                &format!("energy report {week}"),
            )
            .details(serde_json::json!({ "recipients": sent.to, "not_delivered": sent.missed })),
        )
        .await?;
    tracing::info!(%week, recipients = sent.to.len(), "weekly energy report mailed");
    Ok(Some(week))
}

/// How long the addresses a week's mail was deferred for are tried again.
const PENDING_FOR: Duration = Duration::days(1);

/// A week mailed to some of its addresses while others were deferred goes to those again,
/// each energy run (every 5 minutes), for [`PENDING_FOR`] after it was first sent; then
/// they are given up, in the log and the audit log. Every week with addresses waiting is
/// tried; one that fails does not keep the others, or the week due now, from going.
/// Returns the newest week sent again.
async fn resend_pending(
    store: &Store,
    cfg: &Config,
    now: DateTime<Utc>,
    telemetry: &Telemetry,
) -> anyhow::Result<Option<IsoWeek>> {
    let waiting: Vec<String> = sqlx::query_scalar!(
        "SELECT period FROM report_deliveries WHERE kind = $1 AND pending <> '{}' ORDER BY sent_at",
        KIND,
    )
    .fetch_all(&store.pool)
    .await?;
    let mut resent = None;
    for period in waiting {
        match resend_week(store, cfg, now, telemetry, &period).await {
            Ok(Some(w)) => resent = Some(w),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(week = %period, "weekly energy report not sent again: {e:#}")
            }
        }
    }
    Ok(resent)
}

/// [`resend_pending`] for one week.
async fn resend_week(
    store: &Store,
    cfg: &Config,
    now: DateTime<Utc>,
    telemetry: &Telemetry,
    period: &str,
) -> anyhow::Result<Option<IsoWeek>> {
    // The row stays locked while the mail is sent: another server finds nothing to do.
    let mut tx = store.pool.begin().await?;
    let Some(row) = sqlx::query!(
        "SELECT pending, sent_at FROM report_deliveries
          WHERE kind = $1 AND period = $2 AND pending <> '{}' FOR UPDATE SKIP LOCKED",
        KIND,
        period,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let target = format!("energy report {period}");
    if now - row.sent_at > PENDING_FOR {
        sqlx::query!(
            "UPDATE report_deliveries SET pending = '{}' WHERE kind = $1 AND period = $2",
            KIND,
            period,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::warn!(week = %period, "weekly energy report given up for {} after a day of deferrals", row.pending.join(", "));
        store
            .audit(
                crate::store::audit::Entry::ok(
                    crate::store::audit::SYSTEM,
                    "report.mailed",
                    &target,
                )
                .outcome(crate::store::audit::Outcome::Failed)
                .details(serde_json::json!({ "given_up": row.pending })),
            )
            .await?;
        return Ok(None);
    }
    let week: IsoWeek = period
        .parse()
        .map_err(|e| anyhow::anyhow!("report_deliveries period {period:?}: {e}"))?;
    let report = super::energy::build(store, &cfg.energy, week, None, now).await?;
    let capacity = capacity_lines(store, cfg, now).await?;
    let sent = send(cfg, &report, &row.pending, &capacity, telemetry).await?;
    // Those refused for good by now leave the list; those deferred again stay.
    sqlx::query!(
        "UPDATE report_deliveries
            SET recipients = CASE WHEN $3 = '' THEN recipients ELSE recipients || ', ' || $3 END,
                pending = $4
          WHERE kind = $1 AND period = $2",
        KIND,
        period,
        sent.to.join(", "),
        &sent.pending,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if sent.to.is_empty() {
        tracing::warn!(%week, "weekly energy report still not delivered to {}", sent.missed.join("; "));
        return Ok(None);
    }
    store
        .audit(
            crate::store::audit::Entry::ok(crate::store::audit::SYSTEM, "report.mailed", &target)
                .details(serde_json::json!({ "recipients": sent.to, "not_delivered": sent.missed, "again": true })),
        )
        .await?;
    tracing::info!(%week, recipients = sent.to.len(), "weekly energy report mailed to the addresses deferred before");
    Ok(Some(week))
}

/// The capacity section of the weekly mail: per pool, what to do (the capacity job's
/// latest recommendation), then racks whose power budget runs out within the horizon.
pub async fn capacity_lines(
    store: &Store,
    cfg: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for r in store.recommendations(None).await? {
        // What the capacity job said, as on the page (with the racks' room and the hosts
        // to drain).
        let what = r.actions_now(now).join("; ");
        out.push(format!(
            "Pool {} ({} GPUs): {what}",
            r.pool, r.installed_gpus
        ));
    }
    for e in store.exhaustions(Some("rack")).await? {
        if e.exhausted_at.is_some() {
            out.push(format!(
                "Rack {}: {:.1} of {:.1} kW, the budget {}",
                e.key,
                e.level_now / 1000.0,
                e.capacity / 1000.0,
                crate::analytics::capacity::budget_outlook(
                    e.exhausted_at,
                    now,
                    cfg.capacity.horizon_days
                )
            ));
        }
    }
    Ok(out)
}

/// To whom [`send`] delivered the report, who did not get it and why, and which of those
/// were deferred (not refused for good): worth another try.
pub struct Sent {
    pub to: Vec<String>,
    pub missed: Vec<String>,
    pub pending: Vec<String>,
}

/// Mail `report` (and the capacity lines) to `to` through the configured SMTP server,
/// each address in an envelope of its own, timing the sends on `telemetry`. An address
/// the server refuses leaves the others their mail; [`Sent::nobody`] says when nobody
/// got it.
pub async fn send(
    cfg: &Config,
    report: &EnergyReport,
    to: &[String],
    capacity: &[String],
    telemetry: &Telemetry,
) -> anyhow::Result<Sent> {
    let smtp = &cfg.alerting.smtp;
    if smtp.host.is_empty() {
        anyhow::bail!("alerting.smtp.host is not set: the report cannot be mailed");
    }
    let msg = message(cfg, report, to, capacity)?;
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("alerting.smtp.from {:?}: {e}", smtp.from))?;
    let t = transport(smtp).map_err(anyhow::Error::msg)?;
    let results = deliver_each(
        &t,
        &from,
        to,
        &msg.formatted(),
        (MailKind::Report, telemetry),
        crate::alert::notify::exchange_limit(smtp),
        &mut None,
    )
    .await;
    let mut sent = Sent {
        to: Vec::new(),
        missed: Vec::new(),
        pending: Vec::new(),
    };
    for (r, res) in to.iter().zip(results) {
        match res {
            Ok(()) => sent.to.push(r.clone()),
            Err(u) => {
                sent.missed.push(format!("{r}: {}", u.error));
                if !u.for_good {
                    sent.pending.push(r.clone());
                }
            }
        }
    }
    Ok(sent)
}

impl Sent {
    /// Nobody got the mail: why, naming the SMTP server.
    pub fn nobody(&self, cfg: &Config) -> Option<anyhow::Error> {
        let smtp = &cfg.alerting.smtp;
        self.to.is_empty().then(|| {
            anyhow::anyhow!(
                "SMTP {}:{} ({}): {}",
                smtp.host,
                smtp.port,
                smtp.security,
                self.missed.join("; ")
            )
        })
    }
}

/// The mail: text and HTML summary with the capacity section, the three files attached.
pub fn message(
    cfg: &Config,
    report: &EnergyReport,
    to: &[String],
    capacity: &[String],
) -> anyhow::Result<Message> {
    let from: Mailbox = cfg
        .alerting
        .smtp
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("alerting.smtp.from {:?}: {e}", cfg.alerting.smtp.from))?;
    let t = report.total();
    let cost = t
        .cost
        .map(|c| format!(", {c:.2} {}", t.currency))
        .unwrap_or_default();
    let subject = format!(
        "Rackwatch energy report {}: {:.1} kWh IT, {:.1} kWh facility{cost}, {:.1} kg CO2e",
        report.week, t.it_energy_kwh, t.facility_energy_kwh, t.carbon_kg
    );
    let html = export::to_html(report)?;
    let mut text = format!(
        "{subject}\n\nIdle GPU energy: {:.1} kWh. Week over week: {}.\n",
        t.idle_gpu_energy_kwh,
        t.wow_change_pct
            .map_or("no data last week".into(), |v| format!("{v:+.1} %"))
    );
    for a in &report.actions {
        text.push_str(&format!("\n* {}. {}\n", a.title, a.detail));
    }
    text.push_str(&format!(
        "\nThe full report is attached (HTML, CSV, Parquet) and in the dashboard: {}/energy\n",
        cfg.public_url()
    ));
    let mut body_html = html.clone();
    if !capacity.is_empty() {
        text.push_str("\nCapacity\n");
        let mut items = String::new();
        for c in capacity {
            text.push_str(&format!("* {c}\n"));
            items.push_str(&format!("<li>{}</li>", html_escape(c)));
        }
        text.push_str(&format!(
            "Plans and evidence: {}/capacity\n",
            cfg.public_url()
        ));
        let section = format!(
            "<section><h2>Capacity</h2><ul>{items}</ul><p><a href=\"{}/capacity\">Plans and evidence</a></p></section>",
            cfg.public_url()
        );
        match body_html.rfind("</body>") {
            Some(i) => body_html.insert_str(i, &section),
            None => body_html.push_str(&section),
        }
    }
    let mut b = Message::builder().from(from).subject(subject);
    for r in to {
        b = b.to(r
            .parse::<Mailbox>()
            .map_err(|e| anyhow::anyhow!("recipient {r:?}: {e}"))?);
    }
    let mut mixed = MultiPart::mixed().multipart(
        MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(body_html),
            ),
    );
    for f in [Format::Csv, Format::Parquet, Format::Html] {
        let body = match f {
            Format::Html => html.clone().into_bytes(),
            _ => export::render(report, f)?,
        };
        let ct = ContentType::parse(f.content_type())
            .map_err(|e| anyhow::anyhow!("content type: {e}"))?;
        mixed = mixed.singlepart(Attachment::new(export::file_name(report, f)).body(body, ct));
    }
    Ok(b.multipart(mixed)?)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
