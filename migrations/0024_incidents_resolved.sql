-- Host and rack pages list the incidents resolved in the last 24 hours: by time.
CREATE INDEX incidents_resolved ON incidents (resolved_at) WHERE resolved_at IS NOT NULL;
