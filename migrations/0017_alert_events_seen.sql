-- The hardware-fault evaluator's look-back (alert/eval.rs): the events it has turned into
-- alerts within the last look-back window, kept with its watermark so that a new job
-- leader or a restarted server looks back too without alerting on any of them twice.
-- A JSON array of [host_id, gpu_index, ts, kind, code, received_at]; NULL until the first
-- round of a server that keeps it.
ALTER TABLE job_state ADD COLUMN seen JSONB;
