-- Originals being stored for uploads not yet committed, and the node storing each. The upload's
-- commit removes its note in the same transaction; a note whose node is no longer alive names
-- a file no record will ever refer to, which any node then deletes.
CREATE TABLE pending_blobs (
    key      TEXT PRIMARY KEY,
    node_id  TEXT NOT NULL,
    since_ms BIGINT NOT NULL
);
