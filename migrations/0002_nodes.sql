-- The nodes of the platform, each seen alive every few seconds: how many api and worker nodes
-- there are now (the queue's backlog per worker, the scaling signal of the worker group).
CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('all', 'api', 'worker')),
    seen_at_ms BIGINT NOT NULL
);
