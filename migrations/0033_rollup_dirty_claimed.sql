-- A late-minute mark is claimed by the rollup run redoing it and deleted only once the
-- redo succeeded: a run that dies mid-way (a crash, a deploy, a failover) leaves its
-- claims, taken again after 15 minutes. A mark set again while claimed (more late
-- samples) clears the claim, so the run that claimed it keeps it for the next round.
ALTER TABLE rollup_dirty ADD COLUMN claimed_at TIMESTAMPTZ;
