-- Receives take the oldest visible job, the lowest id first among equals: one index scan.
DROP INDEX jobs_by_visibility;
CREATE INDEX jobs_by_visibility ON jobs (visible_at_ms, video_id) WHERE dead_at_ms IS NULL;
