-- When retraining a host's model last failed while its model was kept (a retrain that
-- fails keeps the working model and is retried hourly); NULL after a successful training.
ALTER TABLE anomaly_models ADD COLUMN retried_at TIMESTAMPTZ;
