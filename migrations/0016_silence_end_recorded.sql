-- The audit trail records a silence that ends on its own (`silence.expired` by `system`);
-- this marks the silences whose end is already recorded, so each end is recorded once.
ALTER TABLE silences ADD COLUMN end_recorded BOOLEAN NOT NULL DEFAULT false;
-- Silences that ended before this migration are history, not news.
UPDATE silences SET end_recorded = true WHERE ends_at <= now();
