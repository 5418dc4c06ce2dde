//! Retention of the history tables that are not partitioned by day: hardware events, and
//! the alert history (resolved alerts and incidents, ended silences, delivered mail).
//! Rows that still matter are kept whatever their age: a firing or pending alert, an open
//! incident, a silence whose end is not yet in the audit trail, a notification not yet
//! delivered.

use chrono::{DateTime, Utc};

use super::Store;

/// Rows deleted by one retention pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistoryDeleted {
    pub events: u64,
    pub alerts: u64,
    pub incidents: u64,
    pub silences: u64,
    pub notifications: u64,
}

impl HistoryDeleted {
    pub fn total(&self) -> u64 {
        self.events + self.alerts + self.incidents + self.silences + self.notifications
    }
}

impl Store {
    /// Delete hardware events stamped before `events_before`, and alert history that ended
    /// before `alerts_before`.
    pub async fn delete_history(
        &self,
        events_before: DateTime<Utc>,
        alerts_before: DateTime<Utc>,
    ) -> Result<HistoryDeleted, sqlx::Error> {
        let p = &self.pool;
        let rows = |r: sqlx::postgres::PgQueryResult| r.rows_affected();
        Ok(HistoryDeleted {
            events: rows(
                sqlx::query!("DELETE FROM hardware_events WHERE ts < $1", events_before)
                    .execute(p)
                    .await?,
            ),
            alerts: rows(
                sqlx::query!(
                    "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < $1",
                    alerts_before
                )
                .execute(p)
                .await?,
            ),
            incidents: rows(
                sqlx::query!(
                    "DELETE FROM incidents WHERE resolved_at < $1",
                    alerts_before
                )
                .execute(p)
                .await?,
            ),
            silences: rows(
                sqlx::query!(
                    "DELETE FROM silences WHERE ends_at < $1 AND end_recorded",
                    alerts_before
                )
                .execute(p)
                .await?,
            ),
            notifications: rows(
                sqlx::query!(
                    "DELETE FROM notification_outbox WHERE sent_at < $1",
                    alerts_before
                )
                .execute(p)
                .await?,
            ),
        })
    }
}
